/* manager.c — models to workers: the model table, lazy loads, job routing,
 * retries, the circuit breaker, eviction and keep-alive.
 *
 * Everything here except the public entry points runs on the supervisor
 * loop thread (m->loop), which owns the model table, every worker (through
 * supervisor/wproc.h) and every job's routing state, so none of it is
 * locked.  Entry points hand work to the loop with lyra_loop_post (submit,
 * cancel, release: no waiting) or lyra_loop_call (status, load, unload:
 * they wait for an answer).  The per-token path is: wproc reads and checks
 * a frame → on_frame finds the job → the job's callback, under the job's own
 * mutex only.
 *
 * A job is referenced by its caller (until lyra_job_release) and by the
 * manager (until its terminal frame was delivered).  job->lock serialises
 * the callback with the caller's release, so that after release returns the
 * callback never runs again. */
#include "models/manager.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/util.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "supervisor/wproc.h"

#define COMP "models"

enum wstate { W_LOADING, W_READY, W_STOPPING };
static const char *const wstate_names[] = {"loading", "loaded", "stopping"};

struct lyra_job {
    atomic_int refs;          /* the caller's and the manager's */
    pthread_mutex_t lock;     /* recursive: callback vs release */
    bool released;            /* under lock */
    struct lyra_manager *m;
    uint64_t id;
    char model[128];
    char *text;               /* the frame, serialised once at submit */
    size_t len;
    lyra_job_fn fn;
    void *ud;
    json_t *fallback;         /* terminal error prepared at submit: the end cannot fail */
    /* Loop thread only: */
    bool terminal, handed, started_load, queued;
    int attempts;
    double load_ms;
    struct mworker *w;
    struct lyra_job *next;    /* in w->pending or w->inflight */
};

struct model_state;

struct mworker {
    struct lyra_manager *m;
    struct model_state *ms;
    const struct lyra_model *model; /* the snapshot it serves */
    struct lyra_wproc *proc;
    enum wstate state;
    struct lyra_job *pending, **pending_tail; /* not handed yet: waits for ready or a restart */
    struct lyra_job *inflight;
    int n_inflight;
    json_t *ready;
    int64_t started_us, last_used_us;
    double load_ms;
    const char *stop_reason;
    bool stale;                /* its file changed: restart once drained */
    struct mworker *next;      /* m->workers */
};

struct model_state {
    char name[128];
    struct mworker *w;         /* the worker new jobs go to, or NULL */
    char *last_error;
    int64_t crash_us[LYRA_MANAGER_CRASH_LIMIT];
    int n_crashes;
    int64_t open_until_us;
    bool failed;
    bool crashed_before;       /* the next start publishes worker.restarted */
    struct model_state *next;
};

struct lyra_manager {
    struct lyra_manager_options opts;
    char *worker_exe;
    struct lyra_loop *loop;
    atomic_uint_fast64_t next_id;
    atomic_bool closing;
    /* Loop thread only: */
    struct model_state *models;
    struct mworker *workers;   /* all live ones, stopping included */
    int n_workers;
    struct lyra_timer *reaper;
    /* Shutdown hand-shake with the caller of lyra_manager_shutdown. */
    pthread_mutex_t gone_lock;
    pthread_cond_t gone_cond;
    bool all_gone;
    bool shut_down;
};

static void enqueue(struct lyra_manager *m, struct lyra_job *job);
static const struct lyra_wproc_ops wproc_ops;

/* ------------------------------------------------------------------ */
/* Jobs                                                               */

static struct lyra_job *job_ref(struct lyra_job *job)
{
    atomic_fetch_add(&job->refs, 1);
    return job;
}

static void job_unref(struct lyra_job *job)
{
    if (atomic_fetch_sub(&job->refs, 1) != 1)
        return;
    json_decref(job->fallback);
    free(job->text);
    pthread_mutex_destroy(&job->lock);
    free(job);
}

/* Hands a frame to the job's callback unless the caller released it. */
static void job_deliver(struct lyra_job *job, const json_t *frame)
{
    pthread_mutex_lock(&job->lock);
    if (!job->released && job->fn)
        job->fn(job, frame, job->ud);
    pthread_mutex_unlock(&job->lock);
}

/* Ends the job with an error frame (the job is already off every list).
 * If the frame cannot be built, the one prepared at submit is sent. */
static void job_fail(struct lyra_job *job, const char *code, int status, int retry_after_s, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void job_fail(struct lyra_job *job, const char *code, int status, int retry_after_s, const char *fmt, ...)
{
    if (job->terminal)
        return;
    job->terminal = true;
    char msg[LYRA_ERR_MSG_MAX * 2];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *f = json_pack("{s:s, s:I, s:s, s:s, s:i}", "type", "error", "id", (json_int_t)job->id, "code", code,
                          "message", msg, "status", status);
    if (f && retry_after_s > 0)
        json_object_set_new(f, "retry_after_s", json_integer(retry_after_s));
    job_deliver(job, f ? f : job->fallback);
    json_decref(f);
    job_unref(job); /* the manager's hold */
}

/* A "done" with finish_reason "cancelled" for a job the worker never saw. */
static void job_cancelled_here(struct lyra_job *job)
{
    if (job->terminal)
        return;
    job->terminal = true;
    json_t *f = json_pack("{s:s, s:I, s:s, s:{s:i, s:i, s:i}}", "type", "done", "id", (json_int_t)job->id,
                          "finish_reason", "cancelled", "usage", "prompt_tokens", 0, "completion_tokens", 0,
                          "cached_tokens", 0);
    job_deliver(job, f ? f : job->fallback);
    json_decref(f);
    job_unref(job);
}

const char *lyra_job_model(const struct lyra_job *job)
{
    return job->model;
}

double lyra_job_load_ms(const struct lyra_job *job)
{
    return job->started_load ? job->load_ms : 0.0;
}

static bool list_remove(struct lyra_job **head, struct lyra_job *job)
{
    for (struct lyra_job **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            job->next = NULL;
            return true;
        }
    }
    return false;
}

static struct lyra_job *find_inflight(struct mworker *w, uint64_t id)
{
    for (struct lyra_job *j = w->inflight; j; j = j->next)
        if (j->id == id)
            return j;
    return NULL;
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
    lyra_fmt(ms->name, sizeof ms->name, "%s", name);
    ms->next = m->models;
    m->models = ms;
    return ms;
}

static int backoff_s(const struct lyra_manager *m)
{
    return m->opts.circuit_backoff_s > 0 ? m->opts.circuit_backoff_s : 30;
}

/* Records a failure; opens the circuit after LIMIT of them in WINDOW. */
static void record_crash(struct lyra_manager *m, struct model_state *ms)
{
    int64_t now = lyra_now_us();
    ms->crash_us[ms->n_crashes % LYRA_MANAGER_CRASH_LIMIT] = now;
    ms->n_crashes++;
    if (ms->n_crashes >= LYRA_MANAGER_CRASH_LIMIT) {
        int64_t oldest = ms->crash_us[ms->n_crashes % LYRA_MANAGER_CRASH_LIMIT];
        if (now - oldest <= (int64_t)LYRA_MANAGER_CRASH_WINDOW_S * 1000000)
            ms->open_until_us = now + (int64_t)backoff_s(m) * 1000000;
    }
}

static int circuit_wait_s(const struct model_state *ms)
{
    int64_t now = lyra_now_us();
    return ms->open_until_us > now ? (int)((ms->open_until_us - now) / 1000000) + 1 : 0;
}

/* ------------------------------------------------------------------ */
/* Workers                                                            */

static void stop_worker(struct mworker *w, const char *reason)
{
    if (w->state == W_STOPPING)
        return;
    w->state = W_STOPPING;
    w->stop_reason = reason;
    if (w->ms->w == w)
        w->ms->w = NULL;
    lyra_wproc_stop(w->proc, reason);
}

/* Unloads the least recently used idle worker when max_loaded is reached. */
static void make_room(struct lyra_manager *m)
{
    int live = 0;
    struct mworker *lru = NULL;
    for (struct mworker *w = m->workers; w; w = w->next) {
        if (w->state == W_STOPPING)
            continue;
        live++;
        if (w->state == W_READY && w->n_inflight == 0 && !w->pending && !w->model->settings.pinned &&
            (!lru || w->last_used_us < lru->last_used_us))
            lru = w;
    }
    if (live >= m->opts.max_loaded && lru) {
        lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s, s:i}", "model", lru->ms->name, "max_loaded",
                                                     m->opts.max_loaded),
                 "unloading %s: models.max_loaded (%d) reached", lru->ms->name, m->opts.max_loaded);
        stop_worker(lru, "evicted");
    }
}

static struct mworker *worker_start(struct lyra_manager *m, struct model_state *ms, const struct lyra_model *model,
                                    struct lyra_err *err)
{
    struct mworker *w = calloc(1, sizeof *w);
    if (!w) {
        lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    w->m = m;
    w->ms = ms;
    w->model = lyra_registry_ref(model);
    w->pending_tail = &w->pending;
    const struct lyra_model_settings *st = &model->settings;
    char ctx[16], par[16], thr[16], ngl[16];
    snprintf(ctx, sizeof ctx, "%d", st->ctx_size > 0 ? st->ctx_size : 4096);
    snprintf(par, sizeof par, "%d", st->parallel > 0 ? st->parallel : 4);
    snprintf(thr, sizeof thr, "%d", st->threads > 0 ? st->threads : 1);
    snprintf(ngl, sizeof ngl, "%d", st->gpu_layers);
    const char *args[20] = {"worker", "--model", model->path, "--name", model->name, "--ctx", ctx,
                            "--parallel", par, "--threads", thr, "--gpu-layers", ngl};
    int n = 13;
    if (st->embeddings)
        args[n++] = "--embeddings";
    if (st->chat_template) {
        args[n++] = "--chat-template";
        args[n++] = st->chat_template;
    }
    args[n] = NULL;
    struct lyra_wproc_spec spec = {
        .exe = m->worker_exe,
        .args = args,
        .model = ms->name,
        .load_timeout_ms = m->opts.load_timeout_s * 1000,
        .heartbeat_timeout_ms = m->opts.heartbeat_timeout_s * 1000,
        .progress_timeout_ms = m->opts.progress_timeout_s * 1000,
        .stop_timeout_ms = m->opts.stop_timeout_s * 1000,
    };
    if (lyra_wproc_spawn(m->loop, &spec, &wproc_ops, w, &w->proc, err) < 0) {
        lyra_registry_unref(w->model);
        free(w);
        return NULL;
    }
    w->state = W_LOADING;
    w->started_us = w->last_used_us = lyra_now_us();
    w->next = m->workers;
    m->workers = w;
    m->n_workers++;
    ms->w = w;
    ms->failed = false;
    int pid = (int)lyra_wproc_pid(w->proc);
    if (ms->crashed_before)
        lyra_bus_publish(m->opts.bus, "worker.restarted", "models", json_pack("{s:s, s:i}", "model", ms->name, "pid", pid));
    lyra_bus_publish(m->opts.bus, "model.loading", "models", json_pack("{s:s, s:i}", "model", ms->name, "pid", pid));
    lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s, s:i, s:s}", "model", ms->name, "pid", pid, "path", model->path),
             "starting worker for %s", ms->name);
    return w;
}

static void worker_free(struct lyra_manager *m, struct mworker *w)
{
    for (struct mworker **pp = &m->workers; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    m->n_workers--;
    if (w->ms->w == w)
        w->ms->w = NULL;
    lyra_registry_unref(w->model);
    json_decref(w->ready);
    free(w);
}

/* Sends a job now.  The job joins in-flight even if the send fails: the
 * worker is then dying and its exit settles the job. */
static void send_job(struct mworker *w, struct lyra_job *job)
{
    job->w = w;
    job->next = w->inflight;
    w->inflight = job;
    w->n_inflight++;
    w->last_used_us = lyra_now_us();
    int rc = lyra_wproc_send(w->proc, job->id, job->text, job->len);
    if (rc < 0) {
        list_remove(&w->inflight, job);
        w->n_inflight--;
        job_fail(job, "internal", 500, 0, "cannot send the request to the worker for %s: %s", job->model,
                 lyra_strerror(rc));
    }
}

static void add_pending(struct mworker *w, struct lyra_job *job)
{
    job->w = w;
    job->next = NULL;
    job->queued = true;
    *w->pending_tail = job;
    w->pending_tail = &job->next;
}

static struct lyra_job *take_pending(struct mworker *w)
{
    struct lyra_job *all = w->pending;
    w->pending = NULL;
    w->pending_tail = &w->pending;
    for (struct lyra_job *j = all; j; j = j->next)
        j->queued = false;
    return all;
}

/* Takes every job off w: returns the in-flight ones and puts the ones still
 * waiting (never handed) into *pending.  The jobs' links are cleared as the
 * caller walks them (next is read first). */
static struct lyra_job *detach_jobs(struct mworker *w, struct lyra_job **pending)
{
    struct lyra_job *inflight = w->inflight;
    *pending = take_pending(w);
    w->inflight = NULL;
    w->n_inflight = 0;
    return inflight;
}

/* ------------------------------------------------------------------ */
/* Worker events (wproc ops)                                          */

static void on_ready(struct lyra_wproc *proc, const json_t *frame, void *ud)
{
    struct mworker *w = ud;
    struct lyra_manager *m = w->m;
    if (w->state == W_STOPPING)
        return;
    w->state = W_READY;
    w->ready = json_deep_copy(frame);
    w->load_ms = (double)(lyra_now_us() - w->started_us) / 1000.0;
    /* Copies, not references: the event outlives the frame and is read on
     * other threads (a json_t is shared across threads only when no thread
     * will change or release its part of it concurrently). */
    lyra_bus_publish(m->opts.bus, "model.loaded", "models",
                     json_pack("{s:s, s:i, s:f, s:o?, s:o?, s:o?}", "model", w->ms->name, "pid",
                               (int)lyra_wproc_pid(proc), "load_ms", w->load_ms, "n_ctx_slot",
                               json_deep_copy(json_object_get(frame, "n_ctx_slot")), "n_slots",
                               json_deep_copy(json_object_get(frame, "n_slots")), "devices",
                               json_deep_copy(json_object_get(frame, "devices"))));
    if (w->stale) { /* the file changed while it loaded: start again */
        stop_worker(w, "file changed");
        return;
    }
    struct lyra_job *j = take_pending(w), *next;
    for (; j; j = next) {
        next = j->next;
        j->load_ms = w->load_ms;
        send_job(w, j);
    }
}

static void on_handed(struct lyra_wproc *proc, uint64_t id, void *ud)
{
    struct lyra_job *job = find_inflight(ud, id);
    if (job)
        job->handed = true;
}

static void on_frame(struct lyra_wproc *proc, enum lyra_msg_kind kind, uint64_t id, const json_t *frame, void *ud)
{
    struct mworker *w = ud;
    struct lyra_job *job = find_inflight(w, id);
    if (!job)
        return; /* failed here meanwhile (shutdown); the worker's answer is late */
    w->last_used_us = lyra_now_us();
    job->handed = true;
    bool terminal = lyra_msg_is_terminal(kind);
    if (terminal) {
        list_remove(&w->inflight, job);
        w->n_inflight--;
        job->terminal = true;
    }
    job_deliver(job, frame);
    if (terminal) {
        job_unref(job); /* the manager's hold */
        if (w->stale && w->n_inflight == 0 && w->state == W_READY)
            stop_worker(w, "file changed");
    }
}

/* Settles the jobs of a worker that is gone.  A job the worker may have
 * seen fails; one that never reached it goes again (at most twice in all)
 * unless the daemon is closing or the model's circuit is open. */
static void settle_jobs(struct lyra_manager *m, struct mworker *w, const struct lyra_wproc_exit *e, bool expected,
                        const char *reason)
{
    struct model_state *ms = w->ms;
    bool closing = atomic_load(&m->closing);
    struct lyra_job *retry = NULL, **retry_tail = &retry;
    struct lyra_job *lists[2];
    lists[0] = detach_jobs(w, &lists[1]);
    for (int k = 0; k < 2; k++) {
        for (struct lyra_job *j = lists[k], *next; j; j = next) {
            next = j->next;
            j->next = NULL;
            j->w = NULL;
            bool never_seen = k == 1 || !j->handed;
            if (closing) {
                job_fail(j, "shutting_down", 503, 0, "the server is shutting down");
            } else if (never_seen && (e->was_ready || w->stale) && j->attempts < 2 && circuit_wait_s(ms) == 0) {
                *retry_tail = j;
                retry_tail = &j->next;
            } else if (!e->was_ready && e->why == LYRA_WPROC_LOAD_TIMEOUT) {
                job_fail(j, "model_load_timeout", 503, 0, "model '%s' did not load: %s", j->model, reason);
            } else if (!e->was_ready) {
                job_fail(j, "model_load_failed", 500, 0, "model '%s' failed to load: %s", j->model, reason);
            } else if (expected) {
                job_fail(j, "model_unloaded", 503, 0, "model '%s' was unloaded while the request ran", j->model);
            } else if (e->why == LYRA_WPROC_HUNG) {
                job_fail(j, "worker_hung", 502, 0, "the worker for %s %s; it was killed", j->model, reason);
            } else if (e->why == LYRA_WPROC_PROTOCOL) {
                job_fail(j, "worker_protocol_error", 502, 0, "the worker for %s was killed: %s", j->model, reason);
            } else if (never_seen) {
                int wait = circuit_wait_s(ms);
                job_fail(j, wait ? "model_unavailable" : "worker_crashed", wait ? 503 : 502, wait,
                         "the worker for %s %s before it took the request", j->model, reason);
            } else {
                job_fail(j, "worker_crashed", 502, 0, "the worker for %s (pid %d) %s while serving the request",
                         j->model, (int)lyra_wproc_pid(w->proc), reason);
            }
        }
    }
    for (struct lyra_job *j = retry, *next; j; j = next) {
        next = j->next;
        j->next = NULL;
        if (j->attempts > 0 && !w->stale)
            lyra_log(LYRA_LOG_INFO, COMP, NULL,
                     json_pack("{s:s, s:I}", "model", j->model, "job", (json_int_t)j->id),
                     "request %" PRIu64 " never reached the worker: sending it to a fresh one", j->id);
        enqueue(m, j);
    }
}

static void on_exit_(struct lyra_wproc *proc, const struct lyra_wproc_exit *e, void *ud)
{
    struct mworker *w = ud;
    struct lyra_manager *m = w->m;
    struct model_state *ms = w->ms;
    int pid = (int)lyra_wproc_pid(proc);
    bool expected = e->why == LYRA_WPROC_STOPPED;
    char reason[LYRA_ERR_MSG_MAX + 64];
    if (!e->was_ready && e->fatal)
        lyra_fmt(reason, sizeof reason, "%s", e->fatal);
    else if (e->fatal)
        lyra_fmt(reason, sizeof reason, "%s (%s)", e->reason, e->fatal);
    else
        lyra_fmt(reason, sizeof reason, "%s", e->reason);

    /* A worker whose file was replaced under it (written in place: the
     * mapping it reads from changes, SIGBUS) failed because of the file, not
     * of itself: not counted against the model. */
    bool file_changed = w->stale && !expected;
    if (expected) {
        lyra_bus_publish(m->opts.bus, "model.unloaded", "models",
                         json_pack("{s:s, s:i, s:s}", "model", ms->name, "pid", pid, "reason",
                                   w->stop_reason ? w->stop_reason : "requested"));
    } else {
        free(ms->last_error);
        ms->last_error = strdup(reason);
        ms->failed = true;
        ms->crashed_before = e->was_ready;
        if (!file_changed)
            record_crash(m, ms);
        bool open = circuit_wait_s(ms) > 0;
        if (!e->was_ready) {
            lyra_bus_publish(m->opts.bus, "model.failed", "models",
                             json_pack("{s:s, s:i, s:s, s:b}", "model", ms->name, "pid", pid, "error", reason,
                                       "circuit_open", open));
            lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s}", "model", ms->name), "load of %s failed: %s",
                     ms->name, reason);
        } else {
            const char *type = e->why == LYRA_WPROC_HUNG ? "worker.hung" : "worker.crashed";
            lyra_bus_publish(m->opts.bus, type, "models",
                             json_pack("{s:s, s:i, s:s, s:i, s:i, s:b}", "model", ms->name, "pid", pid, "reason",
                                       reason, "status",
                                       WIFEXITED(e->status) ? WEXITSTATUS(e->status) : 128 + WTERMSIG(e->status),
                                       "in_flight", w->n_inflight, "circuit_open", open));
            lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i}", "model", ms->name, "pid", pid),
                     "worker for %s %s", ms->name, reason);
        }
    }
    if (ms->w == w)
        ms->w = NULL;
    w->state = W_STOPPING;
    settle_jobs(m, w, e, expected, reason);
    worker_free(m, w);
    if (atomic_load(&m->closing) && m->n_workers == 0) {
        pthread_mutex_lock(&m->gone_lock);
        m->all_gone = true;
        pthread_cond_broadcast(&m->gone_cond);
        pthread_mutex_unlock(&m->gone_lock);
    }
}

static const struct lyra_wproc_ops wproc_ops = {
    .on_ready = on_ready, .on_frame = on_frame, .on_handed = on_handed, .on_exit = on_exit_};

/* ------------------------------------------------------------------ */
/* Routing (loop thread)                                              */

/* Routes a job to its model's worker, starting one if needed. */
static void enqueue(struct lyra_manager *m, struct lyra_job *job)
{
    if (atomic_load(&m->closing)) {
        job_fail(job, "shutting_down", 503, 0, "the server is shutting down");
        return;
    }
    struct model_state *ms = model_state_get(m, job->model, true);
    if (!ms) {
        job_fail(job, "internal", 500, 0, "out of memory");
        return;
    }
    int wait = circuit_wait_s(ms);
    if (wait > 0) {
        job_fail(job, "model_unavailable", 503, wait,
                 "model '%s' failed %d times within %d s; retry in %d s (last error: %s)", ms->name,
                 LYRA_MANAGER_CRASH_LIMIT, LYRA_MANAGER_CRASH_WINDOW_S, wait,
                 ms->last_error ? ms->last_error : "unknown");
        return;
    }
    job->attempts++;
    struct mworker *w = ms->w;
    if (!w) {
        /* The newest snapshot: a retry after a restart serves the new file. */
        const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, job->model);
        if (!model || !model->valid) {
            job_fail(job, model ? "model_invalid" : "model_not_found", model ? 422 : 404, 0, "model '%s' %s%s",
                     job->model, model ? "cannot be used: " : "is gone",
                     model && model->error ? model->error : "");
            lyra_registry_unref(model);
            return;
        }
        make_room(m);
        struct lyra_err err = {0};
        w = worker_start(m, ms, model, &err);
        lyra_registry_unref(model);
        if (!w) {
            job_fail(job, "internal", 500, 0, "cannot start a worker for %s: %s", job->model, err.msg);
            return;
        }
        job->started_load = job->attempts == 1;
    }
    if (w->state == W_LOADING || w->stale)
        add_pending(w, job);
    else {
        job->load_ms = w->load_ms;
        send_job(w, job);
    }
}

static void task_submit(void *ud)
{
    struct lyra_job *job = ud;
    enqueue(job->m, job);
}

static void cancel_on_loop(struct lyra_job *job)
{
    if (job->terminal || !job->w)
        return;
    struct mworker *w = job->w;
    if (job->queued) {
        list_remove(&w->pending, job);
        w->pending_tail = &w->pending;
        while (*w->pending_tail)
            w->pending_tail = &(*w->pending_tail)->next;
        job->queued = false;
        job->w = NULL;
        job_cancelled_here(job);
        return;
    }
    lyra_wproc_cancel(w->proc, job->id);
}

static void task_cancel(void *ud)
{
    struct lyra_job *job = ud;
    cancel_on_loop(job);
    job_unref(job);
}

static void task_release(void *ud)
{
    struct lyra_job *job = ud;
    cancel_on_loop(job);
    job_unref(job); /* the caller's hold */
}

/* ------------------------------------------------------------------ */
/* Public entry points                                                */

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

/* Looks a model up, rescanning the models dir once when it is unknown (a
 * file copied in a moment ago is servable at once, watcher or not). */
static const struct lyra_model *resolve(struct lyra_manager *m, const char *name)
{
    const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, name);
    if (!model && lyra_registry_refresh(m->opts.registry, NULL, NULL) >= 0)
        model = lyra_registry_lookup(m->opts.registry, name);
    return model;
}

int lyra_manager_submit(struct lyra_manager *m, const char *model_name, json_t *msg, lyra_job_fn fn, void *ud,
                        struct lyra_job **out, struct lyra_err *err)
{
    *out = NULL;
    if (atomic_load(&m->closing)) {
        json_decref(msg);
        return lyra_err_set(err, LYRA_EUNAVAILABLE, "the server is shutting down");
    }
    const struct lyra_model *model = resolve(m, model_name);
    if (!model) {
        json_decref(msg);
        return lyra_err_set(err, LYRA_ENOTFOUND, "model '%.*s' not found", (int)lyra_utf8_clip(model_name, 128),
                            model_name);
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
    job->m = m;
    job->fn = fn;
    job->ud = ud;
    job->id = atomic_fetch_add(&m->next_id, 1) + 1;
    lyra_fmt(job->model, sizeof job->model, "%s", model->name);
    apply_default_sampling(msg, &model->settings);
    json_object_set_new(msg, "id", json_integer((json_int_t)job->id));
    job->text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    job->fallback = json_pack("{s:s, s:I, s:s, s:s, s:i}", "type", "error", "id", (json_int_t)job->id, "code",
                              "internal", "message", "the request failed and its error could not be reported",
                              "status", 500);
    lyra_registry_unref(model);
    int rc = 0;
    if (!job->text || !job->fallback)
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    else if ((job->len = strlen(job->text)) > LYRA_FRAME_MAX)
        rc = lyra_err_set(err, LYRA_ETOOBIG, "the request is %zu bytes once encoded; a worker takes at most %u",
                          job->len, LYRA_FRAME_MAX);
    if (rc < 0) {
        json_decref(job->fallback);
        free(job->text);
        free(job);
        return rc;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&job->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    atomic_init(&job->refs, 2);
    *out = job;
    if (lyra_loop_post(m->loop, task_submit, job) < 0) {
        *out = NULL;
        atomic_store(&job->refs, 1);
        job_unref(job);
        return lyra_err_set(err, LYRA_EUNAVAILABLE, "the server is shutting down");
    }
    return 0;
}

void lyra_manager_cancel(struct lyra_job *job)
{
    job_ref(job);
    if (lyra_loop_post(job->m->loop, task_cancel, job) < 0)
        job_unref(job);
}

void lyra_job_release(struct lyra_job *job)
{
    if (!job)
        return;
    pthread_mutex_lock(&job->lock);
    job->released = true;
    pthread_mutex_unlock(&job->lock);
    if (lyra_loop_post(job->m->loop, task_release, job) < 0)
        job_unref(job); /* the loop is gone: every job ended at shutdown */
}

/* ------------------------------------------------------------------ */
/* Model files that changed                                           */

struct changed_names {
    struct lyra_manager *m;
    size_t n;
    char **names;
};

/* A model whose file changed or vanished: its worker serves what it loaded
 * until its requests are done, then stops; the next request (or one that
 * arrived meanwhile, held back) starts a worker on the file as it is now. */
static void task_models_changed(void *ud)
{
    struct changed_names *c = ud;
    for (size_t i = 0; i < c->n; i++) {
        struct model_state *ms = model_state_get(c->m, c->names[i], false);
        struct mworker *w = ms ? ms->w : NULL;
        if (w && !w->stale && w->state != W_STOPPING) {
            w->stale = true;
            lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s}", "model", ms->name),
                     "the file of %s changed: its worker restarts once its requests are done (%d running)",
                     ms->name, w->n_inflight);
            if (w->state == W_READY && w->n_inflight == 0)
                stop_worker(w, "file changed");
        }
        free(c->names[i]);
    }
    free(c->names);
    free(c);
}

/* Registry listener (any thread): hands the names to the loop. */
static void on_registry_change(const struct lyra_registry_changes *ch, void *ud)
{
    struct lyra_manager *m = ud;
    struct changed_names *c = calloc(1, sizeof *c);
    size_t total = ch->n_changed + ch->n_removed;
    if (!c || !total || !(c->names = calloc(total, sizeof *c->names))) {
        free(c);
        return;
    }
    c->m = m;
    for (size_t i = 0; i < ch->n_changed; i++)
        if ((c->names[c->n] = strdup(ch->changed[i])))
            c->n++;
    for (size_t i = 0; i < ch->n_removed; i++)
        if ((c->names[c->n] = strdup(ch->removed[i])))
            c->n++;
    if (lyra_loop_post(m->loop, task_models_changed, c) < 0) {
        for (size_t i = 0; i < c->n; i++)
            free(c->names[i]);
        free(c->names);
        free(c);
    }
}

/* ------------------------------------------------------------------ */
/* Keep-alive                                                         */

static void reap_idle(void *ud)
{
    struct lyra_manager *m = ud;
    int64_t limit_us = (int64_t)m->opts.keep_alive_s * 1000000;
    int64_t now = lyra_now_us();
    for (struct mworker *w = m->workers, *next; w; w = next) {
        next = w->next;
        if (w->state != W_READY || w->n_inflight > 0 || w->pending || w->model->settings.pinned ||
            now - w->last_used_us < limit_us)
            continue;
        lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s, s:i}", "model", w->ms->name, "keep_alive_s",
                                                     m->opts.keep_alive_s),
                 "unloading %s: idle for %d s", w->ms->name, m->opts.keep_alive_s);
        stop_worker(w, "idle");
    }
    m->reaper = atomic_load(&m->closing) ? NULL : lyra_loop_timer(m->loop, 1000, reap_idle, m);
}

static void start_reaper(void *ud)
{
    struct lyra_manager *m = ud;
    m->reaper = lyra_loop_timer(m->loop, 1000, reap_idle, m);
}

/* ------------------------------------------------------------------ */
/* Manager                                                            */

int lyra_manager_new(const struct lyra_manager_options *opts, struct lyra_manager **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_manager *m = calloc(1, sizeof *m);
    if (!m)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    m->opts = *opts;
    if (m->opts.max_loaded < 1)
        m->opts.max_loaded = 1;
    if (m->opts.load_timeout_s < 1)
        m->opts.load_timeout_s = 120;
    if (m->opts.heartbeat_timeout_s < 1)
        m->opts.heartbeat_timeout_s = 10;
    if (m->opts.progress_timeout_s < 1)
        m->opts.progress_timeout_s = 60;
    if (m->opts.stop_timeout_s < 1)
        m->opts.stop_timeout_s = 5;
    m->worker_exe = strdup(opts->worker_exe);
    pthread_mutex_init(&m->gone_lock, NULL);
    pthread_cond_init(&m->gone_cond, NULL);
    int rc = m->worker_exe ? lyra_loop_new("lyra-supervise", &m->loop, err)
                           : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    if (rc < 0) {
        pthread_cond_destroy(&m->gone_cond);
        pthread_mutex_destroy(&m->gone_lock);
        free(m->worker_exe);
        free(m);
        return rc;
    }
    if (m->opts.keep_alive_s > 0)
        lyra_loop_post(m->loop, start_reaper, m);
    lyra_registry_set_listener(m->opts.registry, on_registry_change, m);
    *out = m;
    return 0;
}

/* Fails every job and stops every worker (loop thread). */
static void shutdown_on_loop(void *ud)
{
    struct lyra_manager *m = ud;
    lyra_loop_timer_cancel(m->loop, m->reaper);
    m->reaper = NULL;
    for (struct mworker *w = m->workers; w; w = w->next) {
        struct lyra_job *lists[2];
        lists[0] = detach_jobs(w, &lists[1]);
        for (int k = 0; k < 2; k++) {
            for (struct lyra_job *j = lists[k], *next; j; j = next) {
                next = j->next;
                j->next = NULL;
                j->w = NULL;
                job_fail(j, "shutting_down", 503, 0, "the server is shutting down");
            }
        }
        if (w->state != W_STOPPING)
            stop_worker(w, "shutdown");
    }
    if (m->n_workers == 0) {
        pthread_mutex_lock(&m->gone_lock);
        m->all_gone = true;
        pthread_cond_broadcast(&m->gone_cond);
        pthread_mutex_unlock(&m->gone_lock);
    }
}

static void kill_all_on_loop(void *ud)
{
    struct lyra_manager *m = ud;
    for (struct mworker *w = m->workers; w; w = w->next)
        lyra_wproc_kill(w->proc);
}

void lyra_manager_begin_shutdown(struct lyra_manager *m)
{
    if (!m || m->shut_down)
        return;
    m->shut_down = true;
    atomic_store(&m->closing, true);
    lyra_loop_call(m->loop, shutdown_on_loop, m);
}

void lyra_manager_kill_workers(struct lyra_manager *m)
{
    lyra_loop_call(m->loop, kill_all_on_loop, m);
}

bool lyra_manager_wait_workers(struct lyra_manager *m, int timeout_ms)
{
    struct timespec deadline;
    lyra_deadline_in(&deadline, timeout_ms);
    pthread_mutex_lock(&m->gone_lock);
    while (!m->all_gone && pthread_cond_timedwait(&m->gone_cond, &m->gone_lock, &deadline) == 0)
        ;
    bool gone = m->all_gone;
    pthread_mutex_unlock(&m->gone_lock);
    return gone;
}

void lyra_manager_shutdown(struct lyra_manager *m, bool now)
{
    if (!m)
        return;
    lyra_manager_begin_shutdown(m);
    if (now) /* the operator insisted (a second signal): no escalation */
        lyra_manager_kill_workers(m);
    /* Every worker ends within 2 stop timeouts (EOF, SIGTERM, SIGKILL); the
     * loop's own timers do the escalation. */
    while (!lyra_manager_wait_workers(m, 1000))
        ;
}

void lyra_manager_free(struct lyra_manager *m)
{
    if (!m)
        return;
    lyra_manager_shutdown(m, false);
    lyra_registry_set_listener(m->opts.registry, NULL, NULL);
    lyra_loop_free(m->loop); /* joins: no callback runs after this */
    for (struct model_state *ms = m->models, *next; ms; ms = next) {
        next = ms->next;
        free(ms->last_error);
        free(ms);
    }
    pthread_cond_destroy(&m->gone_cond);
    pthread_mutex_destroy(&m->gone_lock);
    free(m->worker_exe);
    free(m);
}

/* ------------------------------------------------------------------ */
/* State for other threads (through lyra_loop_call)                   */

static const char *state_name(const struct model_state *ms)
{
    if (ms->w)
        return wstate_names[ms->w->state];
    return ms->failed ? "failed" : NULL;
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

struct status_call {
    struct lyra_manager *m;
    json_t *list;
};

static json_t *worker_json(const struct mworker *w, int64_t now)
{
    json_t *j = json_pack("{s:s, s:i, s:i, s:o, s:f, s:b}", "state", wstate_names[w->state], "pid",
                          (int)lyra_wproc_pid(w->proc), "in_flight", w->n_inflight, "load_ms",
                          w->state != W_LOADING ? json_real(w->load_ms) : json_null(), "idle_s",
                          (double)(now - w->last_used_us) / 1e6, "stale", w->stale);
    if (j && w->ready) { /* copies: the status is sent on an HTTP thread after w may be gone */
        json_object_set_new(j, "n_slots", json_deep_copy(json_object_get(w->ready, "n_slots")));
        json_object_set_new(j, "n_ctx_slot", json_deep_copy(json_object_get(w->ready, "n_ctx_slot")));
        json_object_set_new(j, "devices", json_deep_copy(json_object_get(w->ready, "devices")));
    }
    return j;
}

static void status_on_loop(void *ud)
{
    struct status_call *c = ud;
    int64_t now = lyra_now_us();
    c->list = json_array();
    for (struct model_state *ms = c->m->models; ms && c->list; ms = ms->next) {
        const char *state = state_name(ms);
        if (!state)
            continue;
        json_t *j = json_pack("{s:s, s:s, s:i, s:s?, s:i}", "name", ms->name, "state", state, "crashes",
                              ms->n_crashes, "last_error", ms->last_error, "circuit_open_s", circuit_wait_s(ms));
        if (j && ms->w) {
            json_t *wj = worker_json(ms->w, now);
            json_object_update(j, wj);
            json_object_set_new(j, "state", json_string(state));
            json_decref(wj);
        }
        json_array_append_new(c->list, j);
    }
}

json_t *lyra_manager_status(struct lyra_manager *m)
{
    struct status_call c = {.m = m};
    if (lyra_loop_call(m->loop, status_on_loop, &c) < 0)
        return json_array();
    /* RSS from /proc is read here, off the loop thread. */
    size_t i;
    json_t *j;
    json_array_foreach(c.list, i, j) {
        json_t *pid = json_object_get(j, "pid");
        if (pid)
            json_object_set_new(j, "rss_bytes", json_integer((json_int_t)pid_rss((pid_t)json_integer_value(pid))));
    }
    return c.list;
}

struct state_call {
    struct lyra_manager *m;
    const char *name;
    const char *state;
    const struct lyra_model *served;
};

static void state_on_loop(void *ud)
{
    struct state_call *c = ud;
    struct model_state *ms = model_state_get(c->m, c->name, false);
    c->state = ms ? state_name(ms) : NULL;
    if (ms && ms->w)
        c->served = lyra_registry_ref(ms->w->model);
}

const char *lyra_manager_model_state(struct lyra_manager *m, const char *name)
{
    struct state_call c = {.m = m, .name = name};
    lyra_loop_call(m->loop, state_on_loop, &c);
    lyra_registry_unref(c.served);
    return c.state;
}

const struct lyra_model *lyra_manager_served_model(struct lyra_manager *m, const char *name)
{
    struct state_call c = {.m = m, .name = name};
    lyra_loop_call(m->loop, state_on_loop, &c);
    return c.served;
}
