/* gpu.c — the device probe subprocess, its output, and NVML.
 *
 * The probe is a short-lived child read through two pipes with one deadline
 * for everything (output, exit); past it the child's process group is
 * SIGKILLed, so a driver stuck in initialisation cannot hold the daemon's
 * start.  NVML is reached through dlopen so that the daemon has no link-time
 * dependency on the NVIDIA driver; its calls are serialised by the source's
 * mutex. */
#include "sys/gpu.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "supervisor/wproc.h"

#define COMP "gpu"
#define PROBE_OUT_MAX (1u << 20) /* one JSON line for a handful of devices */
#define PROBE_ERR_KEEP 2048      /* the tail of its stderr, for the reason */

/* ---- NVML (declared here: no header is needed to dlopen it) --------------- */

struct nvml_memory {
    unsigned long long total, free, used;
};
struct nvml_utilization {
    unsigned int gpu, memory;
};
#define NVML_SUCCESS 0
#define NVML_TEMPERATURE_GPU 0

struct nvml {
    void *lib;
    int (*shutdown)(void);
    int (*count)(unsigned int *);
    int (*by_index)(unsigned int, void **);
    int (*by_bus_id)(const char *, void **);
    int (*memory)(void *, struct nvml_memory *);
    int (*utilization)(void *, struct nvml_utilization *);
    int (*temperature)(void *, int, unsigned int *);
};

struct lyra_gpu_source {
    pthread_mutex_t mu;
    struct lyra_gpu_device *devs;
    size_t n;
    struct nvml *nvml; /* NULL without NVML */
    void **handles;    /* n NVML device handles, NULL where unmatched */
};

/* Opens NVML and initialises it; NULL when it is not installed or does not
 * start (no NVIDIA driver: the normal case on most machines). */
static struct nvml *nvml_open(void)
{
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return NULL;
    struct nvml *m = calloc(1, sizeof *m);
    int (*init)(void) = (int (*)(void))dlsym(lib, "nvmlInit_v2");
    if (m) {
        m->lib = lib;
        m->shutdown = (int (*)(void))dlsym(lib, "nvmlShutdown");
        m->count = (int (*)(unsigned int *))dlsym(lib, "nvmlDeviceGetCount_v2");
        m->by_index = (int (*)(unsigned int, void **))dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
        m->by_bus_id = (int (*)(const char *, void **))dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2");
        m->memory = (int (*)(void *, struct nvml_memory *))dlsym(lib, "nvmlDeviceGetMemoryInfo");
        m->utilization =
            (int (*)(void *, struct nvml_utilization *))dlsym(lib, "nvmlDeviceGetUtilizationRates");
        m->temperature = (int (*)(void *, int, unsigned int *))dlsym(lib, "nvmlDeviceGetTemperature");
    }
    if (!m || !init || !m->shutdown || !m->count || !m->by_index || !m->by_bus_id || !m->memory ||
        !m->utilization || !m->temperature || init() != NVML_SUCCESS) {
        free(m);
        dlclose(lib);
        return NULL;
    }
    return m;
}

static void nvml_close(struct nvml *m)
{
    if (!m)
        return;
    m->shutdown();
    dlclose(m->lib);
    free(m);
}

/* Matches every device to an NVML handle (gpu.h says how). */
static void nvml_match(struct lyra_gpu_source *s)
{
    unsigned int count = 0;
    if (s->nvml->count(&count) != NVML_SUCCESS)
        count = 0;
    bool any_bus_id = false;
    for (size_t i = 0; i < s->n; i++) {
        if (!s->devs[i].pci_bus_id[0])
            continue;
        any_bus_id = true;
        void *h = NULL;
        if (s->nvml->by_bus_id(s->devs[i].pci_bus_id, &h) == NVML_SUCCESS)
            s->handles[i] = h;
    }
    if (!any_bus_id && count == s->n)
        for (size_t i = 0; i < s->n; i++) {
            void *h = NULL;
            if (s->nvml->by_index((unsigned int)i, &h) == NVML_SUCCESS)
                s->handles[i] = h;
        }
}

/* Fresh NVML numbers for the matched devices; called with s->mu held. */
static void nvml_refresh(struct lyra_gpu_source *s)
{
    for (size_t i = 0; s->nvml && i < s->n; i++) {
        if (!s->handles[i])
            continue;
        struct lyra_gpu_device *d = &s->devs[i];
        struct nvml_memory mem;
        if (s->nvml->memory(s->handles[i], &mem) == NVML_SUCCESS) {
            d->memory_free = mem.free;
            if (mem.total)
                d->memory_total = mem.total;
        }
        struct nvml_utilization u;
        d->utilization_percent = s->nvml->utilization(s->handles[i], &u) == NVML_SUCCESS ? (int)u.gpu : -1;
        unsigned int t;
        d->temperature_c =
            s->nvml->temperature(s->handles[i], NVML_TEMPERATURE_GPU, &t) == NVML_SUCCESS ? (int)t : -1;
    }
}

/* ---- sources --------------------------------------------------------------- */

/* A source owning devs (taken). */
static struct lyra_gpu_source *source_new(struct lyra_gpu_device *devs, size_t n, bool with_nvml)
{
    struct lyra_gpu_source *s = calloc(1, sizeof *s);
    if (!s) {
        free(devs);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->devs = devs;
    s->n = n;
    if (with_nvml && n > 0) {
        s->handles = calloc(n, sizeof *s->handles);
        s->nvml = s->handles ? nvml_open() : NULL;
        if (s->nvml) {
            nvml_match(s);
            nvml_refresh(s);
        }
    }
    return s;
}

void lyra_gpu_free(struct lyra_gpu_source *s)
{
    if (!s)
        return;
    nvml_close(s->nvml);
    pthread_mutex_destroy(&s->mu);
    free(s->handles);
    free(s->devs);
    free(s);
}

int lyra_gpu_list(struct lyra_gpu_source *s, struct lyra_gpu_device **devs, size_t *n)
{
    *devs = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    nvml_refresh(s);
    int rc = 0;
    if (s->n > 0) {
        *devs = malloc(s->n * sizeof **devs);
        if (*devs) {
            memcpy(*devs, s->devs, s->n * sizeof **devs);
            *n = s->n;
        } else {
            rc = LYRA_ENOMEM;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void log_devices(const struct lyra_gpu_source *s, const char *what)
{
    if (s->n == 0) {
        lyra_info(COMP, "no GPU found: models run on the CPU");
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        const struct lyra_gpu_device *d = &s->devs[i];
        lyra_info(COMP, "%s%s %d: %s (%s), %.1f GiB total, %.1f GiB free%s", what, d->type, d->index, d->name,
                  d->description, (double)d->memory_total / (1 << 30), (double)d->memory_free / (1 << 30),
                  s->handles && s->handles[i] ? ", NVML" : "");
    }
}

/* ---- JSON ------------------------------------------------------------------ */

/* Copies text into a fixed field, cut on a character boundary. */
static void copy_text(char *dst, size_t cap, const char *src)
{
    if (!src)
        src = "";
    size_t len = lyra_utf8_clip(src, cap - 1);
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static bool get_u64(const json_t *o, const char *key, uint64_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static int get_small(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
    return x < 0 || x > 1000 ? -1 : (int)x;
}

static bool valid_type(const char *t)
{
    return t && (strcmp(t, "gpu") == 0 || strcmp(t, "igpu") == 0 || strcmp(t, "accel") == 0);
}

int lyra_gpu_parse_probe(const char *text, size_t len, struct lyra_gpu_device **devs, size_t *n,
                         struct lyra_err *err)
{
    *devs = NULL;
    *n = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        json_t *m = json_loadb(p, (size_t)(le - p), 0, NULL);
        p = le + 1;
        const json_t *arr = json_object_get(m, "devices");
        const char *type = json_string_value(json_object_get(m, "type"));
        if (!type || strcmp(type, "devices") != 0 || !json_is_array(arr)) {
            json_decref(m);
            continue;
        }
        size_t total = json_array_size(arr), k = 0;
        struct lyra_gpu_device *out = total ? calloc(total, sizeof *out) : NULL;
        if (total && !out) {
            json_decref(m);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < total; i++) {
            const json_t *d = json_array_get(arr, i);
            const char *dt = json_string_value(json_object_get(d, "type"));
            if (!json_is_object(d) || !dt || strcmp(dt, "cpu") == 0 || !valid_type(dt))
                continue; /* CPUs, and kinds this version does not place on */
            struct lyra_gpu_device *g = &out[k];
            g->index = (int)k;
            copy_text(g->name, sizeof g->name, json_string_value(json_object_get(d, "name")));
            copy_text(g->description, sizeof g->description,
                      json_string_value(json_object_get(d, "description")));
            copy_text(g->type, sizeof g->type, dt);
            copy_text(g->pci_bus_id, sizeof g->pci_bus_id,
                      json_string_value(json_object_get(d, "device_id")));
            if (!get_u64(d, "memory_total", &g->memory_total) ||
                !get_u64(d, "memory_free", &g->memory_free)) {
                free(out);
                json_decref(m);
                return lyra_err_set(err, LYRA_EPARSE,
                                    "device %zu of the probe has no memory_total/memory_free", i);
            }
            g->utilization_percent = g->temperature_c = -1;
            k++;
        }
        json_decref(m);
        if (k == 0) {
            free(out);
            out = NULL;
        }
        *devs = out;
        *n = k;
        return 0;
    }
    return lyra_err_set(err, LYRA_EPARSE, "no {\"type\":\"devices\"} line in the probe's output");
}

int lyra_gpu_fake(const char *json, struct lyra_gpu_source **out, struct lyra_err *err)
{
    *out = NULL;
    json_error_t jerr;
    json_t *arr = json_loads(json ? json : "", 0, &jerr);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return lyra_err_set(err, LYRA_EPARSE, "fake GPUs: not a JSON array: %s", arr ? "" : jerr.text);
    }
    size_t n = json_array_size(arr);
    struct lyra_gpu_device *devs = n ? calloc(n, sizeof *devs) : NULL;
    if (n && !devs) {
        json_decref(arr);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(arr, i);
        struct lyra_gpu_device *g = &devs[i];
        const char *name = json_string_value(json_object_get(d, "name"));
        const char *type = json_string_value(json_object_get(d, "type"));
        if (!name || !get_u64(d, "total", &g->memory_total) || (type && !valid_type(type))) {
            free(devs);
            json_decref(arr);
            return lyra_err_set(
                err, LYRA_EPARSE,
                "fake GPU %zu: needs \"name\" and \"total\" (bytes); \"type\" is gpu, igpu or accel", i);
        }
        if (!get_u64(d, "free", &g->memory_free))
            g->memory_free = g->memory_total;
        g->index = (int)i;
        copy_text(g->name, sizeof g->name, name);
        copy_text(g->description, sizeof g->description,
                  json_string_value(json_object_get(d, "description")));
        copy_text(g->type, sizeof g->type, type ? type : "gpu");
        copy_text(g->pci_bus_id, sizeof g->pci_bus_id, json_string_value(json_object_get(d, "pci_bus_id")));
        g->utilization_percent = get_small(d, "utilization");
        g->temperature_c = get_small(d, "temperature");
    }
    json_decref(arr);
    *out = source_new(devs, n, false);
    if (!*out)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    log_devices(*out, "fake ");
    return 0;
}

/* ---- the probe subprocess -------------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
};

/* Appends what fits within cap; a tail buffer (keep_tail) drops its older
 * half instead of refusing. */
static void buf_add(struct buf *b, const char *p, size_t n, bool keep_tail)
{
    if (keep_tail && b->len + n > b->cap) {
        if (n >= b->cap) {
            p += n - b->cap;
            n = b->cap;
            b->len = 0;
        } else {
            size_t drop = b->len + n - b->cap;
            memmove(b->data, b->data + drop, b->len - drop);
            b->len -= drop;
        }
    }
    if (n > b->cap - b->len)
        n = b->cap - b->len;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* The last non-empty line of a child's stderr, clipped, into out. */
static void last_line(const struct buf *b, char *out, size_t cap)
{
    size_t e = b->len;
    while (e > 0 && (b->data[e - 1] == '\n' || b->data[e - 1] == '\r' || b->data[e - 1] == ' '))
        e--;
    size_t s = e;
    while (s > 0 && b->data[s - 1] != '\n')
        s--;
    char line[256];
    size_t n = e - s < sizeof line - 1 ? e - s : sizeof line - 1;
    memcpy(line, b->data + s, n);
    line[n] = '\0';
    if (n == 0) {
        out[0] = '\0';
        return;
    }
    size_t keep = lyra_utf8_clip(line, 200);
    snprintf(out, cap, ": %.*s", (int)keep, line);
}

static void kill_child(pid_t pid)
{
    kill(-pid, SIGKILL); /* its process group: a helper it forked too */
    kill(pid, SIGKILL);
}

/* Runs the probe; fills *out_buf with its stdout.  Returns 0 or an error
 * with err set (the child is reaped in every case). */
static int run_probe(const char *exe, int timeout_ms, struct buf *out_buf, struct lyra_err *err)
{
    int op[2] = {-1, -1}, ep[2] = {-1, -1};
    if (pipe2(op, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (op[i] >= 0)
                close(op[i]);
            if (ep[i] >= 0)
                close(ep[i]);
        }
        return lyra_err_set(err, LYRA_EIO, "cannot create a pipe: %s", strerror(e));
    }
    char **envp = lyra_wproc_environment(environ);
    char *argv[] = {(char *)exe, "worker", "--probe-devices", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, op[1], 1);
    posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    pid_t pid = -1;
    int src = envp ? posix_spawn(&pid, exe, &fa, &attr, argv, envp) : ENOMEM;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(envp);
    close(op[1]);
    close(ep[1]);
    if (src != 0) {
        close(op[0]);
        close(ep[0]);
        return lyra_err_set(err, LYRA_EIO, "cannot start %s: %s", exe, strerror(src));
    }

    char errdata[PROBE_ERR_KEEP];
    struct buf eb = {errdata, 0, sizeof errdata};
    int64_t deadline = lyra_now_ms() + timeout_ms;
    bool timed_out = false;
    struct pollfd p[2] = {{.fd = op[0], .events = POLLIN}, {.fd = ep[0], .events = POLLIN}};
    while (p[0].fd >= 0 || p[1].fd >= 0) {
        int64_t left = deadline - lyra_now_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int pr = poll(p, 2, (int)left);
        if (pr < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2 && pr > 0; i++) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t r = read(p[i].fd, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                continue;
            }
            buf_add(i == 0 ? out_buf : &eb, chunk, (size_t)r, i == 1);
        }
    }
    int status = 0;
    for (;;) {
        if (timed_out) {
            kill_child(pid);
            waitpid(pid, &status, 0);
            break;
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        if (lyra_now_ms() >= deadline) {
            timed_out = true;
            continue;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (p[i].fd >= 0)
            close(p[i].fd);

    char why[224];
    last_line(&eb, why, sizeof why);
    if (timed_out)
        return lyra_err_set(err, LYRA_ETIMEOUT, "the device probe did not finish in %d ms and was killed%s",
                            timeout_ms, why);
    if (WIFSIGNALED(status))
        return lyra_err_set(err, LYRA_EIO, "the device probe was killed by signal %d (%s)%s",
                            WTERMSIG(status), strsignal(WTERMSIG(status)), why);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return lyra_err_set(err, LYRA_EIO, "the device probe exited with status %d%s",
                            WIFEXITED(status) ? WEXITSTATUS(status) : -1, why);
    return 0;
}

int lyra_gpu_probe(const char *worker_exe, int timeout_ms, struct lyra_gpu_source **out, struct lyra_err *err)
{
    *out = NULL;
    if (!worker_exe || !*worker_exe || timeout_ms < 1)
        return lyra_err_set(err, LYRA_EINVAL, "GPU probe: no worker executable or no time to run it");
    struct buf ob = {malloc(PROBE_OUT_MAX), 0, PROBE_OUT_MAX};
    if (!ob.data)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    struct lyra_err e = {0};
    struct lyra_gpu_device *devs = NULL;
    size_t n = 0;
    int rc = run_probe(worker_exe, timeout_ms, &ob, &e);
    if (rc == 0)
        rc = lyra_gpu_parse_probe(ob.data, ob.len, &devs, &n, &e);
    free(ob.data);
    if (rc == LYRA_ENOMEM) {
        if (err)
            *err = e;
        return rc;
    }
    *out = source_new(rc == 0 ? devs : NULL, rc == 0 ? n : 0, rc == 0);
    if (!*out)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    if (rc < 0) {
        lyra_warn(COMP, "GPU probe failed, models run on the CPU: %s", e.msg);
        if (err)
            *err = e;
        return rc;
    }
    log_devices(*out, "");
    return 0;
}

int lyra_gpu_from_env(const char *worker_exe, int timeout_ms, struct lyra_gpu_source **out,
                      struct lyra_err *err)
{
    const char *fake = getenv("LYRA_FAKE_GPUS");
    if (fake && *fake)
        return lyra_gpu_fake(fake, out, err);
    return lyra_gpu_probe(worker_exe, timeout_ms, out, err);
}

json_t *lyra_gpu_to_json(const struct lyra_gpu_device *devs, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        const struct lyra_gpu_device *d = &devs[i];
        json_t *util = d->utilization_percent >= 0 ? json_integer(d->utilization_percent) : json_null();
        json_t *temp = d->temperature_c >= 0 ? json_integer(d->temperature_c) : json_null();
        json_t *bus = d->pci_bus_id[0] ? json_string(d->pci_bus_id) : json_null();
        json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:o?, s:I, s:I, s:o?, s:o?}", "index", d->index, "name",
                              d->name, "description", d->description, "type", d->type, "pci_bus_id", bus,
                              "memory_total", (json_int_t)d->memory_total, "memory_free",
                              (json_int_t)d->memory_free, "utilization_percent", util, "temperature_c", temp);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}
