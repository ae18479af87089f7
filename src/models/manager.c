/* manager.c — worker processes per model: spawn, I/O thread, job routing,
 * crash handling with one retry and a circuit breaker.
 *
 * Locking: one manager mutex (m->lock) guards the model table, every
 * worker's state and job lists, and reference counts of workers.  A job's
 * own recursive mutex (job->lock) serialises its callback with its release.
 * Frames are written under the worker's write_lock.  Order: m->lock is never
 * held while taking job->lock or write_lock, nor while calling a callback. */
#include "models/manager.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "sys/proc.h"
#include "worker/protocol.h"

enum worker_state { W_LOADING, W_READY, W_DEAD };

struct lyra_job {
    atomic_int refs;            /* the caller's and the manager's */
    pthread_mutex_t lock;       /* recursive: callback vs release */
    struct lyra_manager *m;
    uint64_t id;
    char model[128];
    json_t *msg;                /* what to send (without id), kept for a retry */
    unsigned flags;
    lyra_job_fn fn;
    void *ud;
    bool released, terminal, started;
    int attempts;
    double load_ms;
    bool started_load;          /* this job's submission started the worker */
    struct worker *w;           /* the worker it is queued on or running on */
    struct lyra_job *next;      /* in w->pending or w->inflight */
};

struct worker {
    struct lyra_manager *m;
    struct model_state *ms;
    const struct lyra_model *model; /* registry reference */
    pid_t pid;
    int fd;
    enum worker_state state;
    int refs;                    /* I/O thread + senders in progress (m->lock) */
    pthread_mutex_t write_lock;
    struct lyra_job *pending;    /* FIFO until ready */
    struct lyra_job *inflight;
    int n_inflight;
    char *fatal;                 /* the worker's own load-failure message */
    json_t *ready;               /* its ready frame */
    int64_t started_us, last_used_us;
    double load_ms;
    bool unloading;
    const char *unload_reason;
};

struct model_state {
    char name[128];
    struct worker *w;            /* live worker or NULL */
    char *last_error;
    int64_t crash_us[LYRA_MANAGER_CRASH_LIMIT]; /* ring of recent crash times */
    int n_crashes;               /* total */
    int64_t open_until_us;       /* circuit open while now < this */
    bool failed;                 /* last worker failed (state "failed") */
    bool crashed_before;         /* next start publishes worker.restarted */
    struct model_state *next;
};

struct lyra_manager {
    struct lyra_manager_options opts;
    char *worker_exe;
    pthread_mutex_t lock;
    pthread_cond_t workers_gone;
    struct model_state *models;
    int n_workers;               /* live I/O threads */
    uint64_t next_id;
    bool closing;
    pthread_cond_t reaper_wake;  /* signalled when closing */
    pthread_t reaper;
    bool reaper_running;
};

/* ------------------------------------------------------------------ */
/* Jobs                                                               */

static void job_unref(struct lyra_job *job)
{
    if (atomic_fetch_sub(&job->refs, 1) == 1) {
        json_decref(job->msg);
        pthread_mutex_destroy(&job->lock);
        free(job);
    }
}

/* Hands a frame to the job's callback unless the caller released it. */
static void job_deliver(struct lyra_job *job, const json_t *frame)
{
    pthread_mutex_lock(&job->lock);
    if (!job->released && job->fn)
        job->fn(job, frame, job->ud);
    pthread_mutex_unlock(&job->lock);
}

static void job_fail(struct lyra_job *job, const char *code, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_fail(struct lyra_job *job, const char *code, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *f = json_pack("{s:s, s:I, s:s, s:s, s:i}", "type", "error", "id", (json_int_t)job->id, "code", code,
                          "message", msg, "status", status);
    job_deliver(job, f);
    json_decref(f);
}

const char *lyra_job_model(const struct lyra_job *job)
{
    return job->model;
}

double lyra_job_load_ms(const struct lyra_job *job)
{
    return job->started_load ? job->load_ms : 0.0;
}

static char *job_frame_text(struct lyra_job *job)
{
    json_t *copy = json_copy(job->msg);
    if (!copy)
        return NULL;
    json_object_set_new(copy, "id", json_integer((json_int_t)job->id));
    char *s = json_dumps(copy, JSON_COMPACT);
    json_decref(copy);
    return s;
}

/* ------------------------------------------------------------------ */
/* Model table                                                        */

static struct model_state *model_state_get(struct lyra_manager *m, const char *name, bool create)
{
    for (struct model_state *ms = m->models; ms; ms = ms->next)
        if (strcmp(ms->name, name) == 0)
            return ms;
    if (!create)
        return NULL;
    struct model_state *ms = calloc(1, sizeof *ms);
    if (!ms)
        return NULL;
    snprintf(ms->name, sizeof ms->name, "%s", name);
    ms->next = m->models;
    m->models = ms;
    return ms;
}

/* Records a crash; opens the circuit after LIMIT crashes in WINDOW. */
static void record_crash(struct model_state *ms)
{
    int64_t now = lyra_now_us();
    ms->crash_us[ms->n_crashes % LYRA_MANAGER_CRASH_LIMIT] = now;
    ms->n_crashes++;
    if (ms->n_crashes >= LYRA_MANAGER_CRASH_LIMIT) {
        int64_t oldest = ms->crash_us[ms->n_crashes % LYRA_MANAGER_CRASH_LIMIT];
        if (now - oldest <= (int64_t)LYRA_MANAGER_CRASH_WINDOW_S * 1000000)
            ms->open_until_us = now + (int64_t)LYRA_MANAGER_BACKOFF_S * 1000000;
    }
}

/* ------------------------------------------------------------------ */
/* Workers                                                            */

static void worker_unref_locked(struct worker *w)
{
    if (--w->refs > 0)
        return;
    lyra_registry_unref(w->model);
    json_decref(w->ready);
    free(w->fatal);
    pthread_mutex_destroy(&w->write_lock);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
}

static int send_text(struct worker *w, const char *text)
{
    size_t len = strlen(text);
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                            (unsigned char)len};
    pthread_mutex_lock(&w->write_lock);
    int rc = 0;
    const unsigned char *parts[2] = {hdr, (const unsigned char *)text};
    size_t lens[2] = {4, len};
    for (int i = 0; i < 2 && rc == 0; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            ssize_t n = send(w->fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                rc = LYRA_EIO;
                break;
            }
            off += (size_t)n;
        }
    }
    pthread_mutex_unlock(&w->write_lock);
    return rc;
}

static void *worker_io_main(void *arg);

/* Spawns `lyra worker` for the model.  Called with m->lock held; only
 * async-signal-safe calls happen in the child before exec. */
static struct worker *worker_start(struct lyra_manager *m, struct model_state *ms, const struct lyra_model *model,
                                   struct lyra_err *err)
{
    struct worker *w = calloc(1, sizeof *w);
    if (!w) {
        lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    w->m = m;
    w->ms = ms;
    w->model = lyra_registry_ref(model);
    w->fd = -1;
    pthread_mutex_init(&w->write_lock, NULL);

    char ctx[16], par[16], thr[16], ngl[16];
    snprintf(ctx, sizeof ctx, "%d", model->settings.ctx_size > 0 ? model->settings.ctx_size : 4096);
    snprintf(par, sizeof par, "%d", model->settings.parallel > 0 ? model->settings.parallel : 4);
    snprintf(thr, sizeof thr, "%d", model->settings.threads > 0 ? model->settings.threads : 1);
    snprintf(ngl, sizeof ngl, "%d", model->settings.gpu_layers);
    const char *argv[24] = {m->worker_exe, "worker", "--fd", "3", "--model", model->path, "--name", model->name,
                            "--ctx", ctx, "--parallel", par, "--threads", thr, "--gpu-layers", ngl};
    int argc = 16;
    if (model->settings.embeddings)
        argv[argc++] = "--embeddings";
    if (model->settings.chat_template) {
        argv[argc++] = "--chat-template";
        argv[argc++] = model->settings.chat_template;
    }
    argv[argc] = NULL;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        lyra_err_set(err, LYRA_EIO, "socketpair: %s", strerror(errno));
        w->refs = 1;
        worker_unref_locked(w);
        return NULL;
    }
    sigset_t all;
    sigemptyset(&all);
    pid_t pid = fork();
    if (pid == 0) {
        /* No PR_SET_PDEATHSIG: it fires when the forking *thread* exits
         * (an HTTP thread), not the daemon.  The worker exits on EOF of its
         * socket instead, which the kernel delivers when the daemon dies. */
        setpgid(0, 0);                    /* a terminal's ^C goes to the daemon, which drains */
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        int fd = sv[1] == 3 ? 3 : dup2(sv[1], 3); /* dup2 clears CLOEXEC */
        if (fd != 3)
            _exit(126);
        if (sv[1] == 3)
            fcntl(3, F_SETFD, 0);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        lyra_err_set(err, LYRA_EIO, "fork: %s", strerror(errno));
        w->refs = 1;
        worker_unref_locked(w);
        return NULL;
    }
    w->pid = pid;
    w->fd = sv[0];
    w->state = W_LOADING;
    w->started_us = w->last_used_us = lyra_now_us();
    w->refs = 1; /* the I/O thread's */
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker_io_main, w) != 0) {
        pthread_attr_destroy(&attr);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        lyra_err_set(err, LYRA_ENOMEM, "cannot start the worker's I/O thread");
        worker_unref_locked(w);
        return NULL;
    }
    pthread_attr_destroy(&attr);
    m->n_workers++;
    ms->w = w;
    ms->failed = false;
    lyra_bus_publish(m->opts.bus, ms->crashed_before ? "worker.restarted" : "model.loading", "models",
                     json_pack("{s:s, s:i}", "model", ms->name, "pid", (int)pid));
    if (ms->crashed_before)
        lyra_bus_publish(m->opts.bus, "model.loading", "models", json_pack("{s:s, s:i}", "model", ms->name, "pid", (int)pid));
    lyra_log(LYRA_LOG_INFO, "models", NULL, json_pack("{s:s, s:i, s:s}", "model", ms->name, "pid", (int)pid, "path", model->path),
             "starting worker for %s", ms->name);
    return w;
}

/* Unloads the least recently used idle worker when max_loaded is reached.
 * m->lock held. */
static void make_room(struct lyra_manager *m)
{
    int live = 0;
    struct worker *lru = NULL;
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        struct worker *w = ms->w;
        if (!w || w->state == W_DEAD || w->unloading)
            continue;
        live++;
        if (w->state == W_READY && w->n_inflight == 0 && !w->pending && !w->model->settings.pinned &&
            (!lru || w->last_used_us < lru->last_used_us))
            lru = w;
    }
    if (live < m->opts.max_loaded || !lru)
        return;
    lru->unloading = true;
    lru->unload_reason = "evicted";
    shutdown(lru->fd, SHUT_WR); /* EOF: the worker exits; its I/O thread cleans up */
}

/* ------------------------------------------------------------------ */
/* The I/O thread                                                     */

static struct lyra_job *take_job(struct worker *w, uint64_t id, bool remove)
{
    for (struct lyra_job **pp = &w->inflight; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct lyra_job *job = *pp;
            if (remove) {
                *pp = job->next;
                job->next = NULL;
                w->n_inflight--;
            }
            return job;
        }
    }
    return NULL;
}

static void on_ready(struct worker *w, json_t *frame)
{
    struct lyra_manager *m = w->m;
    pthread_mutex_lock(&m->lock);
    w->state = W_READY;
    w->ready = json_incref(frame);
    w->load_ms = (double)(lyra_now_us() - w->started_us) / 1000.0;
    /* The queued jobs become in flight (in order) before any is sent, so
     * the replies, read on this same thread later, find them. */
    struct lyra_job *queued = w->pending;
    w->pending = NULL;
    size_t n = 0;
    for (struct lyra_job *j = queued; j; j = j->next)
        n++;
    struct lyra_job **send = n ? calloc(n, sizeof *send) : NULL;
    size_t i = 0;
    while (queued) {
        struct lyra_job *j = queued;
        queued = j->next;
        j->load_ms = w->load_ms;
        j->next = w->inflight;
        w->inflight = j;
        w->n_inflight++;
        if (send) {
            send[i++] = j;
            atomic_fetch_add(&j->refs, 1); /* kept alive until sent */
        } else { /* out of memory: send under the lock rather than never */
            char *text = job_frame_text(j);
            if (text)
                send_text(w, text);
            free(text);
        }
    }
    lyra_bus_publish(m->opts.bus, "model.loaded", "models",
                     json_pack("{s:s, s:i, s:f, s:O?, s:O?, s:O?}", "model", w->ms->name, "pid", (int)w->pid, "load_ms",
                               w->load_ms, "n_ctx_slot", json_object_get(frame, "n_ctx_slot"), "n_slots",
                               json_object_get(frame, "n_slots"), "devices", json_object_get(frame, "devices")));
    pthread_mutex_unlock(&m->lock);
    for (size_t k = 0; k < i; k++) {
        char *text = job_frame_text(send[k]);
        if (text)
            send_text(w, text);
        free(text);
        job_unref(send[k]);
    }
    free(send);
}

static void on_job_frame(struct worker *w, json_t *frame, const char *type)
{
    struct lyra_manager *m = w->m;
    uint64_t id = (uint64_t)json_integer_value(json_object_get(frame, "id"));
    bool terminal = strcmp(type, "done") == 0 || strcmp(type, "error") == 0 || strcmp(type, "embedding") == 0 ||
                    strcmp(type, "tokens") == 0 || strcmp(type, "status") == 0;
    pthread_mutex_lock(&m->lock);
    struct lyra_job *job = take_job(w, id, terminal);
    if (job) {
        atomic_fetch_add(&job->refs, 1);
        if (strcmp(type, "started") == 0)
            job->started = true;
        if (terminal)
            job->terminal = true;
        w->last_used_us = lyra_now_us();
    }
    pthread_mutex_unlock(&m->lock);
    if (!job)
        return; /* a job released and cancelled meanwhile */
    job_deliver(job, frame);
    if (terminal)
        job_unref(job); /* the manager's hold */
    job_unref(job);
}

static int resubmit_locked(struct lyra_manager *m, struct lyra_job *job, struct lyra_err *err);

/* The worker is gone: reap it and settle its jobs. */
static void on_worker_exit(struct worker *w)
{
    struct lyra_manager *m = w->m;
    int status = 0;
    for (int i = 0; i < 200; i++) { /* up to 2 s for a clean exit */
        if (waitpid(w->pid, &status, WNOHANG) == w->pid)
            goto reaped;
        usleep(10000);
    }
    kill(w->pid, SIGKILL);
    waitpid(w->pid, &status, 0);
reaped:;
    char how[96];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof how, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
    bool clean_exit = WIFEXITED(status) && WEXITSTATUS(status) == 0;

    pthread_mutex_lock(&m->lock);
    bool was_loading = w->state == W_LOADING;
    bool expected = w->unloading && clean_exit;
    w->state = W_DEAD;
    struct model_state *ms = w->ms;
    if (ms->w == w)
        ms->w = NULL;
    struct lyra_job *jobs = w->inflight, *pending = w->pending;
    w->inflight = w->pending = NULL;
    w->n_inflight = 0;
    char reason[1200];
    if (was_loading)
        snprintf(reason, sizeof reason, "%s", w->fatal ? w->fatal : how);
    else
        snprintf(reason, sizeof reason, "worker for %s (pid %d) %s", ms->name, (int)w->pid, how);
    if (!expected) {
        free(ms->last_error);
        ms->last_error = strdup(reason);
        ms->failed = true;
        ms->crashed_before = !was_loading;
        record_crash(ms);
    }
    /* Jobs that may go again: retryable, not started, first attempt. */
    struct lyra_job *fail = NULL, *next;
    struct lyra_job *all[2] = {pending, jobs};
    for (int k = 0; k < 2; k++) {
        for (struct lyra_job *j = all[k]; j; j = next) {
            next = j->next;
            j->next = NULL;
            struct lyra_err rerr = {0};
            if (!was_loading && !expected && (j->flags & LYRA_JOB_RETRYABLE) && !j->started && j->attempts < 2 &&
                !j->released && !m->closing && ms->open_until_us <= lyra_now_us() &&
                resubmit_locked(m, j, &rerr) == 0)
                continue;
            j->terminal = true;
            j->next = fail;
            fail = j;
        }
    }
    if (expected) {
        lyra_bus_publish(m->opts.bus, "model.unloaded", "models",
                         json_pack("{s:s, s:i, s:s}", "model", ms->name, "pid", (int)w->pid, "reason",
                                   w->unload_reason ? w->unload_reason : "requested"));
    } else if (was_loading) {
        lyra_bus_publish(m->opts.bus, "model.failed", "models",
                         json_pack("{s:s, s:i, s:s}", "model", ms->name, "pid", (int)w->pid, "error", reason));
        lyra_log(LYRA_LOG_WARN, "models", NULL, json_pack("{s:s}", "model", ms->name), "load failed: %s", reason);
    } else {
        lyra_bus_publish(m->opts.bus, "worker.crashed", "models",
                         json_pack("{s:s, s:i, s:s, s:i, s:b}", "model", ms->name, "pid", (int)w->pid, "reason", how,
                                   "status", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                                   "circuit_open", ms->open_until_us > lyra_now_us()));
        lyra_log(LYRA_LOG_WARN, "models", NULL, json_pack("{s:s, s:i}", "model", ms->name, "pid", (int)w->pid),
                 "worker crashed: %s", how);
    }
    m->n_workers--;
    pthread_cond_broadcast(&m->workers_gone);
    worker_unref_locked(w);
    pthread_mutex_unlock(&m->lock);

    for (struct lyra_job *j = fail; j; j = next) {
        next = j->next;
        if (was_loading)
            job_fail(j, "model_load_failed", 500, "model '%s' failed to load: %s", j->model, reason);
        else if (expected || m->closing)
            job_fail(j, "model_unloaded", 503, "model '%s' was unloaded while the request ran", j->model);
        else
            job_fail(j, "worker_crashed", 502, "%s while serving the request", reason);
        job_unref(j);
    }
}

static void *worker_io_main(void *arg)
{
    struct worker *w = arg;
    struct lyra_frame_reader *r = lyra_frame_reader_new();
    while (r) {
        int n = lyra_frame_reader_read(r, w->fd, NULL);
        if (n <= 0)
            break; /* end of file or error: the worker is gone */
        json_t *frame;
        int rc;
        while ((rc = lyra_frame_reader_next(r, &frame, NULL)) == 0 && frame) {
            const char *type = json_string_value(json_object_get(frame, "type"));
            if (!type) {
            } else if (strcmp(type, "ready") == 0) {
                on_ready(w, frame);
            } else if (strcmp(type, "fatal") == 0) {
                const char *msg = json_string_value(json_object_get(frame, "message"));
                pthread_mutex_lock(&w->m->lock);
                free(w->fatal);
                w->fatal = strdup(msg ? msg : "unknown error");
                pthread_mutex_unlock(&w->m->lock);
            } else {
                on_job_frame(w, frame, type);
            }
            json_decref(frame);
        }
        if (rc < 0) {
            lyra_log(LYRA_LOG_ERROR, "models", NULL, NULL, "protocol error from worker %d: killing it", (int)w->pid);
            kill(w->pid, SIGKILL);
            break;
        }
    }
    lyra_frame_reader_free(r);
    on_worker_exit(w);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Submission                                                         */

/* Queues the job on the model's worker, starting one if needed.  m->lock
 * held.  Returns the worker to send to now (a ref taken), or NULL when the
 * job waits for the load or on error (rc in *rc). */
static struct worker *enqueue_locked(struct lyra_manager *m, struct lyra_job *job, const struct lyra_model *model,
                                     int *rc, struct lyra_err *err)
{
    struct model_state *ms = model_state_get(m, model->name, true);
    *rc = 0;
    if (!ms) {
        *rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    struct worker *w = ms->w;
    if (!w || w->state == W_DEAD || w->unloading) {
        make_room(m);
        w = worker_start(m, ms, model, err);
        if (!w) {
            *rc = err ? err->code : LYRA_EIO;
            return NULL;
        }
        job->started_load = true;
    }
    job->w = w;
    job->attempts++;
    w->last_used_us = lyra_now_us();
    if (w->state == W_LOADING) {
        struct lyra_job **pp = &w->pending;
        while (*pp)
            pp = &(*pp)->next;
        *pp = job;
        return NULL;
    }
    job->next = w->inflight;
    w->inflight = job;
    w->n_inflight++;
    w->refs++;
    return w;
}

static void send_now(struct lyra_manager *m, struct worker *w, struct lyra_job *job)
{
    char *text = job_frame_text(job);
    if (text)
        send_text(w, text); /* a failure shows as EOF on the I/O thread */
    free(text);
    pthread_mutex_lock(&m->lock);
    worker_unref_locked(w);
    pthread_mutex_unlock(&m->lock);
}

static int resubmit_locked(struct lyra_manager *m, struct lyra_job *job, struct lyra_err *err)
{
    const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, job->model);
    if (!model)
        return lyra_err_set(err, LYRA_ENOTFOUND, "model '%s' is gone", job->model);
    int rc;
    struct worker *w = enqueue_locked(m, job, model, &rc, err);
    lyra_registry_unref(model);
    if (w) { /* cannot send under m->lock: the new worker is loading anyway */
        w->refs--;
    }
    lyra_log(LYRA_LOG_INFO, "models", NULL, json_pack("{s:s, s:I}", "model", job->model, "job", (json_int_t)job->id),
             "retrying a request on a fresh worker");
    return rc;
}

/* Fills sampling values the request left out with the model's configured
 * defaults (models.entries: temperature, top_p, top_k). */
static void apply_default_sampling(json_t *msg, const struct lyra_model_settings *st)
{
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!type || strcmp(type, "generate") != 0)
        return;
    json_t *params = json_object_get(msg, "params");
    if (!json_is_object(params)) {
        params = json_object();
        json_object_set_new(msg, "params", params);
    }
    if (st->temperature >= 0 && !json_object_get(params, "temperature"))
        json_object_set_new(params, "temperature", json_real(st->temperature));
    if (st->top_p >= 0 && !json_object_get(params, "top_p"))
        json_object_set_new(params, "top_p", json_real(st->top_p));
    if (st->top_k >= 0 && !json_object_get(params, "top_k"))
        json_object_set_new(params, "top_k", json_integer(st->top_k));
}

int lyra_manager_submit(struct lyra_manager *m, const char *model_name, json_t *msg, unsigned flags, lyra_job_fn fn,
                        void *ud, struct lyra_job **out, int *retry_after_s, struct lyra_err *err)
{
    *out = NULL;
    const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, model_name);
    if (!model) {
        json_decref(msg);
        return lyra_err_set(err, LYRA_ENOTFOUND, "model '%s' not found", model_name);
    }
    if (!model->valid) {
        int rc = lyra_err_set(err, LYRA_EINVAL, "model '%s' cannot be used: %s", model->name,
                              model->error ? model->error : "invalid file");
        lyra_registry_unref(model);
        json_decref(msg);
        return rc;
    }
    struct lyra_job *job = calloc(1, sizeof *job);
    if (!job) {
        lyra_registry_unref(model);
        json_decref(msg);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    apply_default_sampling(msg, &model->settings);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&job->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    atomic_init(&job->refs, 2);
    job->m = m;
    job->msg = msg;
    job->flags = flags;
    job->fn = fn;
    job->ud = ud;
    snprintf(job->model, sizeof job->model, "%s", model->name);

    pthread_mutex_lock(&m->lock);
    struct model_state *ms = model_state_get(m, model->name, true);
    int64_t now = lyra_now_us();
    if (ms && ms->open_until_us > now) {
        int wait_s = (int)((ms->open_until_us - now) / 1000000) + 1;
        pthread_mutex_unlock(&m->lock);
        if (retry_after_s)
            *retry_after_s = wait_s;
        int rc = lyra_err_set(err, LYRA_EUNAVAILABLE,
                              "model '%s' crashed %d times within %d s; retry in %d s (last error: %s)", model->name,
                              LYRA_MANAGER_CRASH_LIMIT, LYRA_MANAGER_CRASH_WINDOW_S, wait_s,
                              ms->last_error ? ms->last_error : "unknown");
        lyra_registry_unref(model);
        atomic_store(&job->refs, 1);
        job_unref(job);
        return rc;
    }
    job->id = ++m->next_id;
    int rc = 0;
    struct worker *w = enqueue_locked(m, job, model, &rc, err);
    pthread_mutex_unlock(&m->lock);
    lyra_registry_unref(model);
    if (rc < 0) {
        atomic_store(&job->refs, 1);
        job_unref(job);
        return rc;
    }
    *out = job;
    if (w)
        send_now(m, w, job);
    return 0;
}

void lyra_manager_cancel(struct lyra_job *job)
{
    struct lyra_manager *m = job->m;
    pthread_mutex_lock(&m->lock);
    struct worker *w = job->w;
    bool was_pending = false;
    if (w && !job->terminal) {
        for (struct lyra_job **pp = &w->pending; *pp; pp = &(*pp)->next) {
            if (*pp == job) {
                *pp = job->next;
                job->next = NULL;
                job->terminal = true;
                was_pending = true;
                break;
            }
        }
    }
    bool send_cancel = w && !job->terminal && !was_pending && w->state == W_READY;
    if (send_cancel)
        w->refs++;
    pthread_mutex_unlock(&m->lock);
    if (was_pending) {
        json_t *f = json_pack("{s:s, s:I, s:s, s:{s:i, s:i, s:i}}", "type", "done", "id", (json_int_t)job->id,
                              "finish_reason", "cancelled", "usage", "prompt_tokens", 0, "completion_tokens", 0,
                              "cached_tokens", 0);
        job_deliver(job, f);
        json_decref(f);
        job_unref(job); /* the manager's hold */
    } else if (send_cancel) {
        char text[64];
        snprintf(text, sizeof text, "{\"type\":\"cancel\",\"id\":%llu}", (unsigned long long)job->id);
        send_text(w, text);
        pthread_mutex_lock(&m->lock);
        worker_unref_locked(w);
        pthread_mutex_unlock(&m->lock);
    }
}

void lyra_job_release(struct lyra_job *job)
{
    if (!job)
        return;
    pthread_mutex_lock(&job->lock);
    job->released = true;
    pthread_mutex_unlock(&job->lock);
    pthread_mutex_lock(&job->m->lock);
    bool terminal = job->terminal;
    pthread_mutex_unlock(&job->m->lock);
    if (!terminal)
        lyra_manager_cancel(job);
    job_unref(job);
}

/* ------------------------------------------------------------------ */
/* Keep-alive                                                         */

/* Unloads models idle for keep_alive_s (no job queued or running, not
 * pinned), checking once a second.  The worker exits on EOF; its I/O thread
 * publishes model.unloaded with reason "idle". */
static void *reaper_main(void *arg)
{
    struct lyra_manager *m = arg;
    pthread_mutex_lock(&m->lock);
    while (!m->closing) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&m->reaper_wake, &m->lock, &ts);
        int64_t limit_us = (int64_t)m->opts.keep_alive_s * 1000000;
        int64_t now = lyra_now_us();
        for (struct model_state *ms = m->models; ms && !m->closing; ms = ms->next) {
            struct worker *w = ms->w;
            if (!w || w->state != W_READY || w->unloading || w->n_inflight > 0 || w->pending ||
                w->model->settings.pinned || now - w->last_used_us < limit_us)
                continue;
            w->unloading = true;
            w->unload_reason = "idle";
            shutdown(w->fd, SHUT_WR);
            lyra_log(LYRA_LOG_INFO, "models", NULL, json_pack("{s:s, s:i}", "model", ms->name, "keep_alive_s",
                                                             m->opts.keep_alive_s),
                     "unloading %s: idle for %d s", ms->name, m->opts.keep_alive_s);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Manager                                                            */

int lyra_manager_new(const struct lyra_manager_options *opts, struct lyra_manager **out, struct lyra_err *err)
{
    struct lyra_manager *m = calloc(1, sizeof *m);
    if (!m)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    m->opts = *opts;
    if (m->opts.max_loaded < 1)
        m->opts.max_loaded = 1;
    m->worker_exe = strdup(opts->worker_exe);
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->workers_gone, NULL);
    pthread_cond_init(&m->reaper_wake, NULL);
    if (m->opts.keep_alive_s > 0 && pthread_create(&m->reaper, NULL, reaper_main, m) == 0)
        m->reaper_running = true;
    *out = m;
    return 0;
}

void lyra_manager_free(struct lyra_manager *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->closing = true;
    pthread_cond_signal(&m->reaper_wake);
    pthread_mutex_unlock(&m->lock);
    if (m->reaper_running)
        pthread_join(m->reaper, NULL);
    pthread_mutex_lock(&m->lock);
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        if (ms->w && ms->w->state != W_DEAD) {
            ms->w->unloading = true;
            ms->w->unload_reason = "shutdown";
            shutdown(ms->w->fd, SHUT_WR);
        }
    }
    while (m->n_workers > 0)
        pthread_cond_wait(&m->workers_gone, &m->lock);
    pthread_mutex_unlock(&m->lock);
    struct model_state *ms = m->models, *next;
    for (; ms; ms = next) {
        next = ms->next;
        free(ms->last_error);
        free(ms);
    }
    pthread_cond_destroy(&m->workers_gone);
    pthread_cond_destroy(&m->reaper_wake);
    pthread_mutex_destroy(&m->lock);
    free(m->worker_exe);
    free(m);
}

static const char *state_name(const struct model_state *ms)
{
    if (ms->w && ms->w->state == W_LOADING)
        return "loading";
    if (ms->w && ms->w->state == W_READY && !ms->w->unloading)
        return "loaded";
    if (ms->failed)
        return "failed";
    return NULL;
}

const char *lyra_manager_model_state(struct lyra_manager *m, const char *name)
{
    pthread_mutex_lock(&m->lock);
    struct model_state *ms = model_state_get(m, name, false);
    const char *s = ms ? state_name(ms) : NULL;
    pthread_mutex_unlock(&m->lock);
    return s;
}

static uint64_t pid_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    unsigned long long kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

json_t *lyra_manager_status(struct lyra_manager *m)
{
    json_t *list = json_array();
    pthread_mutex_lock(&m->lock);
    int64_t now = lyra_now_us();
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        const char *state = state_name(ms);
        if (!state)
            continue;
        struct worker *w = ms->w;
        json_t *j = json_pack("{s:s, s:s, s:i, s:s?, s:i}", "name", ms->name, "state", state, "crashes", ms->n_crashes,
                              "last_error", ms->last_error, "circuit_open_s",
                              ms->open_until_us > now ? (int)((ms->open_until_us - now) / 1000000) + 1 : 0);
        if (w) {
            json_object_set_new(j, "pid", json_integer(w->pid));
            json_object_set_new(j, "in_flight", json_integer(w->n_inflight));
            json_object_set_new(j, "load_ms", w->state == W_READY ? json_real(w->load_ms) : json_null());
            json_object_set_new(j, "rss_bytes", json_integer((json_int_t)pid_rss(w->pid)));
            json_object_set_new(j, "idle_s", json_real((double)(now - w->last_used_us) / 1e6));
            if (w->ready) {
                json_object_set(j, "n_slots", json_object_get(w->ready, "n_slots"));
                json_object_set(j, "n_ctx_slot", json_object_get(w->ready, "n_ctx_slot"));
                json_object_set(j, "devices", json_object_get(w->ready, "devices"));
            }
        }
        json_array_append_new(list, j);
    }
    pthread_mutex_unlock(&m->lock);
    return list;
}

static void noop_fn(struct lyra_job *job, const json_t *frame, void *ud)
{
}

int lyra_manager_load(struct lyra_manager *m, const char *model, int timeout_ms, struct lyra_err *err)
{
    /* A status request is the cheapest job: it waits for the load like any
     * other and answers at once. */
    struct lyra_job *job = NULL;
    int rc = lyra_manager_submit(m, model, json_pack("{s:s}", "type", "status"), 0, noop_fn, NULL, &job, NULL, err);
    if (rc < 0)
        return rc;
    int64_t deadline = lyra_now_ms() + timeout_ms;
    const char *state = NULL;
    while (lyra_now_ms() < deadline) {
        state = lyra_manager_model_state(m, lyra_job_model(job));
        if (state && strcmp(state, "loading") != 0)
            break;
        usleep(5000);
    }
    bool ok = state && strcmp(state, "loaded") == 0;
    if (!ok) {
        pthread_mutex_lock(&m->lock);
        struct model_state *ms = model_state_get(m, lyra_job_model(job), false);
        rc = lyra_err_set(err, state ? LYRA_EIO : LYRA_ETIMEOUT, "model '%s' did not load: %s", lyra_job_model(job),
                          ms && ms->last_error ? ms->last_error : state ? state : "timed out");
        pthread_mutex_unlock(&m->lock);
    }
    lyra_job_release(job);
    return ok ? 0 : rc;
}

int lyra_manager_unload(struct lyra_manager *m, const char *name, struct lyra_err *err)
{
    const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, name);
    const char *resolved = model ? model->name : name;
    pthread_mutex_lock(&m->lock);
    struct model_state *ms = model_state_get(m, resolved, false);
    int rc = 0;
    if (!ms || !ms->w || ms->w->unloading)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "model '%s' is not loaded", name);
    else if (ms->w->n_inflight > 0 || ms->w->pending)
        rc = lyra_err_set(err, LYRA_EBUSY, "model '%s' has %d request(s) running", name, ms->w->n_inflight);
    else {
        ms->w->unloading = true;
        ms->w->unload_reason = "requested";
        shutdown(ms->w->fd, SHUT_WR);
    }
    pthread_mutex_unlock(&m->lock);
    lyra_registry_unref(model);
    return rc;
}
