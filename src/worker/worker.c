/* worker.c — `lyra worker`: argument parsing, start-up (backends, model,
 * "ready" or "fatal"), and the loop that moves frames between the daemon's
 * socket and the engine.
 *
 * One thread does everything.  When a slot is busy the loop polls the socket
 * without blocking before every step; when all is idle it blocks in poll.
 * Replies produced while handling input or during a step are queued in one
 * frame writer and flushed once, so a step costs one write(2) whatever the
 * number of streams.  SIGTERM sets the process's stop flag (the one global
 * CONVENTIONS allows), wakes poll through a self-pipe and aborts a running
 * llama_decode through the context's abort callback. */
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/limits.h"
#include "core/log.h"
#include "core/util.h"
#include "models/estimate.h"
#include "models/gguf.h"
#include "sys/cpu.h"
#include "ggml-backend.h"
#include "llama.h"
#include "worker/engine.h"
#include "worker/heartbeat.h"
#include "worker/llamalog.h"
#include "proto/frame.h"

#define COMP "worker"

#ifndef LYRA_BACKEND_DIR
#define LYRA_BACKEND_DIR "deps/llama/lib"
#endif

static volatile sig_atomic_t stop_flag;
static int wake_fd = -1; /* write end of the self-pipe */

static void on_sigterm(int sig)
{
    (void)sig;
    int saved = errno;
    stop_flag = 1;
    if (wake_fd >= 0) {
        ssize_t n = write(wake_fd, "x", 1);
        (void)n;
    }
    errno = saved;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lyra worker --fd N --model PATH [options]\n"
            "       lyra worker --probe-devices\n"
            "\n"
            "Serves one model over the socket inherited as fd N (started by `lyra serve`;\n"
            "protocol in docs/worker.md).\n"
            "\n"
            "options:\n"
            "  --fd N              socket to the daemon (required)\n"
            "  --heartbeat-fd N    socket for heartbeats (sent every --heartbeat-ms, default 1000)\n"
            "  --model PATH        GGUF file (required)\n"
            "  --name NAME         model name reported in \"ready\"\n"
            "  --ctx N             context per slot in tokens (default 4096, capped at the\n"
            "                      model's training context)\n"
            "  --parallel N        slots = concurrent requests (default 4)\n"
            "  --threads N         CPU threads (default: the CPUs this process may use)\n"
            "  --gpu-layers N      layers to offload, -1 = all (default -1)\n"
            "  --batch N           tokens per decode step (default 2048)\n"
            "  --ubatch N          tokens per micro-batch (default 512)\n"
            "  --embeddings        accept embed requests (mean pooling)\n"
            "  --kv-unified        one KV buffer shared by all slots\n"
            "  --chat-template T   chat template name or text (default: the model's)\n"
            "  --probe-devices     print the ggml devices as one JSON line and exit\n"
            "                      (run by the daemon at start; docs/gpu.md)\n"
            "\n"
            "environment: LYRA_BACKEND_DIR (ggml backend plug-ins), LYRA_WORKER_VERBOSE=1\n"
            "(llama.cpp's log on stderr), LYRA_WORKER_LOG_LEVEL (default info),\n"
            "LYRA_WORKER_GRAMMAR_BUDGET_MS (per-token grammar budget, default 500),\n"
            "LYRA_FAKE_GPU_FAIL_LAYERS=N (test only: a load with --gpu-layers above N\n"
            "or -1 fails like a GPU out of memory).\n");
}

struct opts {
    char why[256];       /* the usage error, for stderr and a "fatal" frame */
    int fd;
    int heartbeat_fd;    /* -1 = no heartbeat */
    int heartbeat_ms;
    struct lyra_engine_config cfg;
};

static bool parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

#define arg_error(o, ...) lyra_fmt((o)->why, sizeof (o)->why, "lyra worker: " __VA_ARGS__)

/* Parses argv into o; returns -1 on a usage error (o->why says what), 1 for
 * --help. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    static const struct {
        const char *name;
        long lo, hi;
        size_t off;
    } ints[] = {
        {"--fd", 0, INT_MAX, offsetof(struct opts, fd)},
        {"--heartbeat-fd", 0, INT_MAX, offsetof(struct opts, heartbeat_fd)},
        {"--heartbeat-ms", 10, 60000, offsetof(struct opts, heartbeat_ms)},
        /* the ranges the configuration validates against (core/limits.h) */
        {"--ctx", LYRA_LIMIT_CTX_MIN, LYRA_LIMIT_CTX_MAX, offsetof(struct opts, cfg.ctx)},
        {"--parallel", LYRA_LIMIT_PARALLEL_MIN, LYRA_LIMIT_PARALLEL_MAX, offsetof(struct opts, cfg.parallel)},
        {"--threads", LYRA_LIMIT_THREADS_MIN, LYRA_LIMIT_THREADS_MAX, offsetof(struct opts, cfg.threads)},
        {"--gpu-layers", LYRA_LIMIT_GPU_LAYERS_MIN, LYRA_LIMIT_GPU_LAYERS_MAX,
         offsetof(struct opts, cfg.gpu_layers)},
        {"--batch", LYRA_LIMIT_BATCH_MIN, LYRA_LIMIT_BATCH_MAX, offsetof(struct opts, cfg.batch)},
        {"--ubatch", LYRA_LIMIT_UBATCH_MIN, LYRA_LIMIT_UBATCH_MAX, offsetof(struct opts, cfg.ubatch)},
    };
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i], *val = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return 1;
        if (strcmp(arg, "--embeddings") == 0) {
            o->cfg.embeddings = true;
            continue;
        }
        if (strcmp(arg, "--kv-unified") == 0) {
            o->cfg.kv_unified = true;
            continue;
        }
        char *eq = strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[i + 1];
        bool matched = false;
        for (size_t k = 0; k < sizeof ints / sizeof *ints && !matched; k++) {
            if (strlen(ints[k].name) != nlen || strncmp(arg, ints[k].name, nlen) != 0)
                continue;
            matched = true;
            if (!val || !parse_int(val, ints[k].lo, ints[k].hi, (int *)((char *)o + ints[k].off))) {
                arg_error(o, "%.*s needs an integer between %ld and %ld", (int)nlen, arg, ints[k].lo,
                          ints[k].hi);
                return -1;
            }
        }
        const char **str = NULL;
        if (!matched) {
            if (nlen == 7 && strncmp(arg, "--model", 7) == 0)
                str = &o->cfg.model_path;
            else if (nlen == 6 && strncmp(arg, "--name", 6) == 0)
                str = &o->cfg.name;
            else if (nlen == 15 && strncmp(arg, "--chat-template", 15) == 0)
                str = &o->cfg.chat_template;
            if (!str) {
                arg_error(o, "unknown option '%.*s'", (int)lyra_utf8_clip(arg, 64), arg);
                return -1;
            }
            if (!val) {
                arg_error(o, "%s needs a value", arg);
                return -1;
            }
            *str = val;
        }
        if (!eq)
            i++;
    }
    if (o->fd < 0 || !o->cfg.model_path) {
        arg_error(o, "--fd and --model are required");
        return -1;
    }
    return 0;
}

/* The value of "--fd N" or "--fd=N" in argv, or -1. */
static int fd_argument(int argc, char **argv)
{
    int fd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc)
            parse_int(argv[i + 1], 0, INT_MAX, &fd);
        else if (strncmp(argv[i], "--fd=", 5) == 0)
            parse_int(argv[i] + 5, 0, INT_MAX, &fd);
    }
    return fd;
}

/* Reports a start-up failure to the daemon (best effort) and the log. */
static void send_fatal(int fd, const char *msg)
{
    lyra_error(COMP, "%s", msg);
    if (fd < 0)
        return;
    json_t *m = json_pack("{s:s, s:s}", "type", "fatal", "message", msg);
    if (m)
        lyra_frame_write(fd, m, NULL);
    json_decref(m);
}

/* Sink: replies are queued in the frame writer and flushed by the loop. */
static int sink_send(void *ud, const json_t *msg)
{
    struct lyra_err err;
    int rc = lyra_frame_writer_add(ud, msg, &err);
    if (rc < 0)
        lyra_error(COMP, "cannot queue a reply: %s", err.msg);
    return rc;
}

static int sink_send_raw(void *ud, const char *json, size_t len)
{
    return lyra_frame_writer_add_raw(ud, json, len, NULL);
}

/* Reads what the socket has and hands every complete frame to the engine.
 * Returns 0, 1 at end of file, or an exit status (1 or 2) on failure. */
static int pump_input(int fd, struct lyra_frame_reader *rd, struct lyra_engine *e)
{
    bool eof = false;
    struct lyra_err err = {0};
    for (;;) {
        int n = lyra_frame_reader_read(rd, fd, &err);
        if (n == LYRA_EBUSY)
            break;
        if (n == 0) {
            eof = true;
            break;
        }
        if (n < 0) {
            lyra_error(COMP, "reading from the daemon: %s", err.msg);
            return 1;
        }
    }
    for (;;) {
        json_t *msg;
        int rc = lyra_frame_reader_next(rd, &msg, &err);
        if (rc < 0) {
            lyra_error(COMP, "protocol violation by the daemon: %s; exiting", err.msg);
            return 2;
        }
        if (!msg)
            break;
        rc = lyra_engine_handle(e, msg);
        json_decref(msg);
        if (rc < 0)
            return 1;
    }
    if (eof) {
        if (lyra_frame_reader_eof(rd, &err) < 0)
            lyra_warn(COMP, "daemon closed the socket: %s", err.msg);
        return -1;
    }
    return 0;
}

/* Writes what the socket takes without blocking.  Returns 0 (all out or
 * some left for POLLOUT), -1 when the daemon went away (a normal end), or 1
 * on another write error. */
static int flush(struct lyra_frame_writer *w, int fd)
{
    struct lyra_err err = {0};
    int rc = lyra_frame_writer_send(w, fd, &err);
    if (rc == 0 || rc == LYRA_EBUSY)
        return 0;
    if (strstr(err.msg, strerror(EPIPE)) || strstr(err.msg, strerror(ECONNRESET))) {
        lyra_info(COMP, "daemon went away; exiting");
        return -1;
    }
    lyra_error(COMP, "writing to the daemon: %s", err.msg);
    return 1;
}

static void heartbeat_progress(void *ud)
{
    lyra_heartbeat_step(ud);
}

/* Replies waiting beyond this stop the decoding (input is still read) until
 * the daemon has taken some: output never grows without bound. */
#define OUTPUT_HIGH_WATER (16u << 20)

/* The loop: read whatever the daemon sent, run one step when there is work,
 * write what the socket takes.  It never blocks on a write, so a daemon that
 * is itself writing to us (a long request) is always read. */
static int serve(int fd, int wake_rd, struct lyra_engine *e, struct lyra_frame_writer *w, struct lyra_heartbeat *hb)
{
    struct lyra_frame_reader *rd = lyra_frame_reader_new();
    if (!rd)
        return 1;
    int status = 0;
    for (;;) {
        if (stop_flag) {
            lyra_info(COMP, "SIGTERM received; exiting");
            break;
        }
        size_t pending = lyra_frame_writer_pending(w);
        bool step = lyra_engine_busy(e) && pending < OUTPUT_HIGH_WATER;
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN | (pending ? POLLOUT : 0)},
                              {.fd = wake_rd, .events = POLLIN}};
        int pr = poll(p, 2, step ? 0 : -1);
        if (pr < 0 && errno != EINTR) {
            lyra_error(COMP, "poll: %s", strerror(errno));
            status = 1;
            break;
        }
        if (stop_flag)
            continue;
        if (pr > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            int rc = pump_input(fd, rd, e);
            if (rc != 0) {
                if (rc < 0)
                    lyra_info(COMP, "daemon closed the socket; exiting");
                status = rc < 0 ? 0 : rc;
                break;
            }
        }
        if (step) {
            if (lyra_engine_step(e) < 0) {
                status = 1;
                break;
            }
            lyra_heartbeat_step(hb);
        }
        lyra_heartbeat_set_busy(hb, lyra_engine_busy(e));
        int rc = flush(w, fd);
        if (rc != 0) {
            status = rc < 0 ? 0 : rc;
            break;
        }
    }
    lyra_frame_reader_free(rd);
    return status;
}

/* Where the ggml backends (libggml-cpu.so, libggml-cuda.so) are: env
 * LYRA_BACKEND_DIR; else, for an installed binary (`make install`:
 * PREFIX/bin/lyra and PREFIX/lib/lyra/, wherever PREFIX or DESTDIR put
 * them), the lib/lyra beside its bin; else the build's pinned deps. */
static const char *backend_dir(void)
{
    const char *dir = getenv("LYRA_BACKEND_DIR");
    if (dir && *dir)
        return dir;
    static char installed[PATH_MAX]; /* the worker's main thread only */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char probe[PATH_MAX + 32];
            snprintf(probe, sizeof probe, "%s/../lib/lyra/libggml-base.so.0", exe);
            if (access(probe, R_OK) == 0 &&
                snprintf(installed, sizeof installed, "%s/../lib/lyra", exe) < (int)sizeof installed)
                return installed;
        }
    }
    return LYRA_BACKEND_DIR;
}

static const char *device_type_name(enum ggml_backend_dev_type t)
{
    switch (t) {
    case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
    case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
    case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
    case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
    default: return "other";
    }
}

/* `lyra worker --probe-devices`: loads the ggml backends exactly as a model
 * load does and prints one line, {"type":"devices","devices":[...]}, on
 * stdout.  It runs in its own process (sys/gpu.c) so that a GPU driver that
 * crashes or hangs while initialising costs the daemon nothing but this
 * child.  llama.cpp's log stays off stdout (LYRA_WORKER_VERBOSE=1 copies it
 * to stderr).  Returns the exit status: 0, or 1 when the line cannot be
 * built. */
static int probe_devices(void)
{
    const char *verbose = getenv("LYRA_WORKER_VERBOSE");
    lyra_llamalog_install(verbose && strcmp(verbose, "1") == 0);
    ggml_backend_load_all_from_path(backend_dir());
    json_t *devs = json_array();
    size_t n = ggml_backend_dev_count();
    for (size_t i = 0; devs && i < n; i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        struct ggml_backend_dev_props props = {0};
        ggml_backend_dev_get_props(dev, &props);
        size_t mfree = 0, mtotal = 0;
        ggml_backend_dev_memory(dev, &mfree, &mtotal);
        /* Driver text may be anything: jansson refuses invalid UTF-8, so an
         * odd name must not lose the whole line. */
        json_t *d = json_pack("{s:s?, s:s?, s:s, s:I, s:I, s:s?}", "name", props.name, "description",
                              props.description, "type", device_type_name(props.type), "memory_total",
                              (json_int_t)mtotal, "memory_free", (json_int_t)mfree, "device_id", props.device_id);
        if (!d)
            d = json_pack("{s:s, s:s, s:I, s:I}", "name", "(unprintable)", "type", device_type_name(props.type),
                          "memory_total", (json_int_t)mtotal, "memory_free", (json_int_t)mfree);
        if (!d || json_array_append_new(devs, d) < 0) {
            json_decref(devs);
            devs = NULL;
        }
    }
    json_t *m = devs ? json_pack("{s:s, s:o}", "type", "devices", "devices", devs) : NULL;
    char *line = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!line) {
        fprintf(stderr, "lyra worker: cannot build the device list\n");
        return 1;
    }
    int rc = printf("%s\n", line) < 0 || fflush(stdout) != 0 ? 1 : 0;
    free(line);
    return rc;
}

/* LYRA_FAKE_GPU_FAIL_LAYERS=N (test only): a load asking for more than N GPU
 * layers (or -1, all) fails before anything is loaded, with the kind of
 * message a real CUDA out-of-memory gives, so that the daemon's retry with
 * fewer layers and its fallback to the CPU can be tested without a GPU.  The
 * bytes are the estimate (models/estimate.h) of what those layers need.
 * Returns true and writes the message when the load is to fail. */
static bool fake_gpu_failure(const struct lyra_engine_config *cfg, char *msg, size_t len)
{
    const char *env = getenv("LYRA_FAKE_GPU_FAIL_LAYERS");
    int limit;
    if (!env || !*env || !parse_int(env, 0, INT_MAX, &limit))
        return false;
    if (cfg->gpu_layers >= 0 && cfg->gpu_layers <= limit)
        return false;
    uint64_t bytes = 0;
    int layers = cfg->gpu_layers;
    struct lyra_gguf_info *info = NULL;
    struct lyra_estimate est;
    if (lyra_gguf_read(cfg->model_path, &info, NULL) == 0 &&
        lyra_estimate_model(info, cfg->ctx, cfg->parallel, &est, NULL) == 0) {
        if (layers < 0 || layers > est.n_layers + 1)
            layers = est.n_layers + 1;
        bytes = lyra_estimate_device_bytes(&est, layers);
        lyra_estimate_clear(&est);
    }
    lyra_gguf_info_free(info);
    lyra_fmt(msg, len, "fake GPU: out of memory allocating %llu bytes for %d layers (LYRA_FAKE_GPU_FAIL_LAYERS=%d)",
             (unsigned long long)bytes, layers, limit);
    return true;
}

int lyra_cmd_worker(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--probe-devices") == 0)
            return probe_devices();
    struct opts o = {
        .fd = -1,
        .heartbeat_fd = -1,
        .heartbeat_ms = 1000,
        .cfg = {.ctx = 4096, .parallel = 4, .threads = 0, .gpu_layers = -1, .batch = 2048, .ubatch = 512},
    };
    int prc = parse_args(argc, argv, &o);
    if (prc != 0) {
        if (prc < 0) {
            /* The daemon learns why from a "fatal" frame, not from an exit
             * status; --fd is looked up alone since parsing stopped early. */
            fprintf(stderr, "%s\n", o.why);
            int fd = fd_argument(argc, argv);
            if (fd >= 0 && fcntl(fd, F_GETFD) >= 0)
                send_fatal(fd, o.why);
        }
        usage(prc > 0 ? stdout : stderr);
        return prc > 0 ? 0 : 2;
    }
    if (fcntl(o.fd, F_GETFD) < 0) {
        fprintf(stderr, "lyra worker: --fd %d is not an open file descriptor\n", o.fd);
        return 2;
    }
    /* The heartbeat runs from the start, so that a load that hangs is told
     * from one that is slow. */
    struct lyra_heartbeat *hb = NULL;
    if (o.heartbeat_fd >= 0) {
        fcntl(o.heartbeat_fd, F_SETFD, FD_CLOEXEC);
        hb = lyra_heartbeat_start(o.heartbeat_fd, o.heartbeat_ms);
    }
    const char *level = getenv("LYRA_WORKER_LOG_LEVEL");
    struct lyra_err err = {0};
    if (lyra_log_open(level && *level ? level : "info", "auto", NULL, &err) < 0)
        lyra_log_open("info", "auto", NULL, NULL);
    if (o.cfg.threads == 0)
        o.cfg.threads = (int)lyra_limit_clamp(LYRA_LIMIT_THREADS, lyra_cpu_usable());

    /* The daemon decides when we stop: SIGINT from a terminal's Ctrl-C goes
     * to the whole process group and must not kill requests it drains. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
        send_fatal(o.fd, "cannot create a pipe");
        lyra_heartbeat_stop(hb);
        return 1;
    }
    wake_fd = pipefd[1];
    struct sigaction sa = {.sa_handler = on_sigterm};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    fcntl(o.fd, F_SETFD, FD_CLOEXEC);
    fcntl(o.fd, F_SETFL, fcntl(o.fd, F_GETFL) | O_NONBLOCK);

    const char *verbose = getenv("LYRA_WORKER_VERBOSE");
    lyra_llamalog_install(verbose && strcmp(verbose, "1") == 0);
    const char *dir = backend_dir();
    int64_t t0 = lyra_now_us();
    ggml_backend_load_all_from_path(dir);
    llama_backend_init();

    int status = 1;
    struct lyra_engine *e = NULL;
    struct lyra_frame_writer *w = lyra_frame_writer_new();
    if (!w) {
        send_fatal(o.fd, "out of memory");
        goto out;
    }
    if (ggml_backend_dev_count() == 0) {
        char msg[PATH_MAX + 64];
        snprintf(msg, sizeof msg, "no ggml backends found in %s (set LYRA_BACKEND_DIR)", dir);
        send_fatal(o.fd, msg);
        goto out;
    }
    char fake[256];
    if (fake_gpu_failure(&o.cfg, fake, sizeof fake)) {
        send_fatal(o.fd, fake);
        goto out;
    }
    o.cfg.stop = &stop_flag;
    o.cfg.progress = hb ? heartbeat_progress : NULL; /* a long decode is progress too */
    const char *budget = getenv("LYRA_WORKER_GRAMMAR_BUDGET_MS");
    if (budget && *budget && parse_int(budget, 0, 3600000, &o.cfg.grammar_budget_ms))
        o.cfg.grammar_budget_set = true;
    o.cfg.progress_ud = hb;
    struct lyra_engine_sink sink = {sink_send, sink_send_raw, w};
    if (lyra_engine_new(&o.cfg, &sink, &e, &err) < 0) {
        send_fatal(o.fd, stop_flag ? "terminated while loading the model" : err.msg);
        goto out;
    }
    double load_ms = (double)(lyra_now_us() - t0) / 1000.0;
    json_t *ready = lyra_engine_ready(e, load_ms);
    int rc = ready ? lyra_frame_writer_add(w, ready, &err) : LYRA_ENOMEM;
    json_decref(ready);
    if (rc < 0) {
        send_fatal(o.fd, "cannot build the ready message");
        goto out;
    }
    lyra_info(COMP, "model %s ready in %.0f ms (%d slots, %d threads)", o.cfg.model_path, load_ms,
              o.cfg.parallel, o.cfg.threads);
    struct lyra_err ferr = {0};
    rc = lyra_frame_writer_flush(w, o.fd, &ferr); /* "ready": blocking is fine, nothing else is pending */
    status = rc != 0 ? 0 : serve(o.fd, pipefd[0], e, w, hb);
out:
    lyra_heartbeat_stop(hb);
    lyra_engine_free(e);
    lyra_frame_writer_free(w);
    llama_backend_free();
    wake_fd = -1;
    close(pipefd[0]);
    close(pipefd[1]);
    return status;
}
