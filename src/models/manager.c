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
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/util.h"
#include "models/cache.h"
#include "models/estimate.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "supervisor/wproc.h"
#include "sys/memory.h"

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
    char origin[128];         /* the model the request named (fallbacks are its settings') */
    /* Loop thread only: */
    bool terminal, handed, started_load, queued;
    bool admin_load;          /* {"type":"load"}: ends when the worker is ready */
    bool counted;             /* counted as a cache hit or miss */
    int keep_alive_s;         /* the request's keep_alive_s (LYRA_KEEP_ALIVE_UNSET: none) */
    bool accepted;            /* passed the queue-depth check (a re-route does not check again) */
    int attempts;
    int n_fallbacks;          /* fallback models tried */
    double load_ms;
    int64_t enqueued_us;      /* when it started waiting for its worker */
    struct mworker *w;
    struct model_state *waiting_in; /* in ms->waiting: waits for room in the cache */
    struct lyra_job *next;    /* in w->pending, w->inflight or ms->waiting */
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
    bool draining;             /* admin unload of a busy worker: stop once idle, take nothing new */
    bool gpu_retry;            /* its load failed on the GPU: its jobs go to a retry with fewer layers */
    int gpu_layers;            /* what it was started with */
    int n_slots;               /* from its ready frame (0 before) */
    uint64_t est_host, est_device; /* the estimate it was admitted with */
    uint64_t rss;              /* last measured resident set (bytes), 0 before the first sample */
    int keep_alive_s;          /* set by the last request that named one; LYRA_KEEP_ALIVE_UNSET: the model's */
    struct mworker *next;      /* m->workers */
};

/* How long an idle worker stays: the last request's keep_alive_s (Ollama's
 * semantics: each request may say), else its model's setting. */
static int worker_keep_alive(const struct mworker *w)
{
    return w->keep_alive_s != LYRA_KEEP_ALIVE_UNSET ? w->keep_alive_s : w->model->settings.keep_alive_s;
}

struct model_state {
    char name[128];
    struct mworker *w;         /* the worker new jobs go to, or NULL */
    char *last_error;
    int64_t crash_us[LYRA_MANAGER_CRASH_LIMIT];
    int n_crashes;
    int64_t open_until_us;
    bool failed;
    bool crashed_before;       /* the next start publishes worker.restarted */
    int pin;                   /* PIN_CONFIG (the entry's `pinned`), PIN_ON, PIN_OFF */
    int64_t pin_reload_us;     /* a pinned model that failed is loaded again from then on */
    int gpu_layers_next;       /* GPU_AUTO, or the layers to try after a failed GPU load */
    struct lyra_job *waiting, **waiting_tail; /* waiting for room in the cache, oldest first */
    int n_waiting;
    struct model_state *next;
};

enum { PIN_CONFIG, PIN_ON, PIN_OFF };
#define GPU_AUTO (-2)
#define MAX_FALLBACKS 4

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
    int mem_level;             /* the watchdog's last word: 0 ok, 1 warning, 2 critical */
    struct lyra_cache_counts counts; /* resident/held/budget filled on request */
    json_t *last_fallback;
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

const char *lyra_job_requested_model(const struct lyra_job *job)
{
    return job->origin;
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
    ms->gpu_layers_next = GPU_AUTO;
    ms->waiting_tail = &ms->waiting;
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

static bool ms_pinned(const struct model_state *ms, const struct lyra_model *model)
{
    return ms->pin == PIN_ON || (ms->pin == PIN_CONFIG && model && model->settings.pinned);
}

static bool worker_pinned(const struct mworker *w)
{
    return ms_pinned(w->ms, w->model);
}

static bool worker_idle(const struct mworker *w)
{
    return w->state == W_READY && w->n_inflight == 0 && !w->pending;
}

/* What a worker holds as far as the budget goes: the estimate it was
 * admitted with until a measurement shows more. */
static uint64_t worker_bytes(const struct mworker *w)
{
    return w->rss > w->est_host ? w->rss : w->est_host;
}

/* A worker process's own memory beside what models/estimate.c counts (the
 * libraries, the C runtime, thread stacks): measured on tiny, docs/gpu.md. */
#define WORKER_BASE_BYTES ((uint64_t)32 << 20)

/* The GGUF's estimate of what the model holds in RAM and on the GPU with
 * gpu_layers on the GPU (-1 = all); without metadata, the file's size and
 * a margin. */
static void estimate(const struct lyra_model *model, int gpu_layers, uint64_t *host, uint64_t *device)
{
    struct lyra_estimate e;
    struct lyra_err err = {0};
    *device = 0;
    if (!model->info ||
        lyra_estimate_model(model->info, model->settings.ctx_size, model->settings.parallel, &e, &err) < 0) {
        *host = model->size_bytes + ((uint64_t)64 << 20);
        return;
    }
    int g = gpu_layers < 0 ? e.n_layers + 1 : gpu_layers;
    *host = lyra_estimate_host_bytes(&e, g) + WORKER_BASE_BYTES;
    *device = lyra_estimate_device_bytes(&e, g);
    lyra_estimate_clear(&e);
}

/* The most layers that fit free_b of VRAM, or -1 (no metadata: llama.cpp
 * decides). */
static int fit_layers(const struct lyra_manager *m, const struct lyra_model *model, uint64_t free_b)
{
    struct lyra_estimate e;
    struct lyra_err err = {0};
    if (!model->info ||
        lyra_estimate_model(model->info, model->settings.ctx_size, model->settings.parallel, &e, &err) < 0)
        return -1;
    int g = lyra_estimate_fit_layers(&e, free_b, m->opts.vram_reserve);
    lyra_estimate_clear(&e);
    return g;
}

/* The live workers as the cache policy sees them; *n receives the count.
 * NULL when there are none or on allocation failure. */
static struct lyra_cache_entry *cache_view(struct lyra_manager *m, struct mworker ***ws, size_t *n)
{
    *n = 0;
    *ws = NULL;
    if (!m->n_workers)
        return NULL;
    struct lyra_cache_entry *e = calloc((size_t)m->n_workers, sizeof *e);
    *ws = calloc((size_t)m->n_workers, sizeof **ws);
    if (!e || !*ws) {
        free(e);
        free(*ws);
        *ws = NULL;
        return NULL;
    }
    for (struct mworker *w = m->workers; w; w = w->next) {
        e[*n] = (struct lyra_cache_entry){.bytes = worker_bytes(w), .last_used_us = w->last_used_us,
                                          .pinned = worker_pinned(w),
                                          .busy = w->n_inflight > 0 || w->pending != NULL || w->draining ||
                                                  w->ms->n_waiting > 0,
                                          .loading = w->state == W_LOADING, .stopping = w->state == W_STOPPING};
        (*ws)[(*n)++] = w;
    }
    return e;
}

static void publish_residency(struct lyra_manager *m);

/* Unloads a worker for the cache (or the watchdog, or an admin). */
static void evict(struct lyra_manager *m, struct mworker *w, enum lyra_evict_reason why, const char *detail)
{
    if (w->state == W_STOPPING)
        return;
    m->counts.evictions[why]++;
    const char *reason = lyra_evict_reason_name(why);
    lyra_bus_publish(m->opts.bus, "cache.evicted", "models",
                     json_pack("{s:s, s:s, s:I, s:s}", "model", w->ms->name, "reason", reason, "bytes",
                               (json_int_t)worker_bytes(w), "detail", detail));
    lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s, s:s}", "model", w->ms->name, "reason", reason),
             "unloading %s (%s): %s", w->ms->name, reason, detail);
    stop_worker(w, why == LYRA_EVICT_LRU || why == LYRA_EVICT_BUDGET ? "evicted" : reason);
}

/* The layers to offload for a start of `model`: what a failed GPU load
 * left to try, else the configured count, else (-1, "all that fit") what
 * the estimate says fits the GPU's free memory; 0 without a GPU. */
static int choose_gpu_layers(struct lyra_manager *m, struct model_state *ms, const struct lyra_model *model)
{
    if (ms->gpu_layers_next != GPU_AUTO)
        return ms->gpu_layers_next;
    if (model->settings.gpu_layers >= 0)
        return model->settings.gpu_layers;
    bool live = false;
    uint64_t free_b = m->opts.hooks.vram_free ? m->opts.hooks.vram_free(&live, m->opts.hooks.ud) : 0;
    if (!free_b)
        return 0;
    for (const struct mworker *w = m->workers; !live && w; w = w->next)
        free_b = free_b > w->est_device ? free_b - w->est_device : 0;
    return fit_layers(m, model, free_b);
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
    w->keep_alive_s = LYRA_KEEP_ALIVE_UNSET;
    w->model = lyra_registry_ref(model);
    w->pending_tail = &w->pending;
    const struct lyra_model_settings *st = &model->settings;
    char ctx[16], par[16], thr[16], ngl[16];
    snprintf(ctx, sizeof ctx, "%d", st->ctx_size > 0 ? st->ctx_size : 4096);
    snprintf(par, sizeof par, "%d", st->parallel > 0 ? st->parallel : 4);
    snprintf(thr, sizeof thr, "%d", st->threads > 0 ? st->threads : 1);
    w->gpu_layers = choose_gpu_layers(m, ms, model);
    estimate(model, w->gpu_layers, &w->est_host, &w->est_device);
    snprintf(ngl, sizeof ngl, "%d", w->gpu_layers);
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
    m->counts.loads++;
    int pid = (int)lyra_wproc_pid(w->proc);
    if (ms->crashed_before) {
        lyra_bus_publish(m->opts.bus, "worker.restarted", "models", json_pack("{s:s, s:i}", "model", ms->name, "pid", pid));
        if (m->opts.hooks.restarted)
            m->opts.hooks.restarted(ms->name, m->opts.hooks.ud);
    }
    lyra_bus_publish(m->opts.bus, "model.loading", "models",
                     json_pack("{s:s, s:i, s:i, s:I}", "model", ms->name, "pid", pid, "gpu_layers", w->gpu_layers,
                               "estimate_bytes", (json_int_t)w->est_host));
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
    if (job->keep_alive_s != LYRA_KEEP_ALIVE_UNSET)
        w->keep_alive_s = job->keep_alive_s;
    job->w = w;
    job->next = w->inflight;
    w->inflight = job;
    w->n_inflight++;
    w->last_used_us = lyra_now_us();
    struct lyra_manager *m = w->m;
    if (m->opts.hooks.queue_wait && job->enqueued_us)
        m->opts.hooks.queue_wait(job->model, (double)(w->last_used_us - job->enqueued_us) / 1e6, m->opts.hooks.ud);
    int rc = lyra_wproc_send(w->proc, job->id, job->text, job->len);
    if (rc < 0) {
        list_remove(&w->inflight, job);
        w->n_inflight--;
        job_fail(job, "internal", 500, 0, "cannot send the request to the worker for %s: %s", job->model,
                 lyra_strerror(rc));
    }
}

/* Ends an admin load job: the worker is ready. */
static void job_loaded(struct lyra_job *job, struct mworker *w)
{
    if (job->terminal)
        return;
    job->terminal = true;
    job->w = NULL;
    json_t *f = json_pack("{s:s, s:I, s:s, s:s, s:i, s:f, s:i}", "type", "status", "id", (json_int_t)job->id, "model",
                          w->ms->name, "state", "loaded", "pid", (int)lyra_wproc_pid(w->proc), "load_ms", w->load_ms,
                          "gpu_layers", w->gpu_layers);
    job_deliver(job, f ? f : job->fallback);
    json_decref(f);
    job_unref(job);
}

/* Hands a job to a ready worker. */
static void dispatch(struct mworker *w, struct lyra_job *job)
{
    job->load_ms = w->load_ms;
    if (job->keep_alive_s != LYRA_KEEP_ALIVE_UNSET)
        w->keep_alive_s = job->keep_alive_s;
    if (job->admin_load)
        job_loaded(job, w);
    else
        send_job(w, job);
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

static void admit(struct lyra_manager *m);

/* A worker may have become idle: an unload waiting for it, keep_alive 0,
 * and models waiting for room (an idle worker can make room). */
static void after_idle(struct lyra_manager *m, struct mworker *w)
{
    if (w->stale && w->state == W_READY && w->n_inflight == 0) {
        stop_worker(w, "file changed"); /* its pending jobs go to the worker on the new file */
        return;
    }
    if (!worker_idle(w))
        return;
    if (w->draining) {
        evict(m, w, LYRA_EVICT_ADMIN, "unloaded by request once its requests ended");
    } else if (worker_keep_alive(w) == 0 && !worker_pinned(w)) {
        evict(m, w, LYRA_EVICT_IDLE, "keep_alive is 0: unloaded after its request");
    }
    admit(m);
}

static void on_ready(struct lyra_wproc *proc, const json_t *frame, void *ud)
{
    struct mworker *w = ud;
    struct lyra_manager *m = w->m;
    if (w->state == W_STOPPING)
        return;
    w->state = W_READY;
    w->ready = json_deep_copy(frame);
    w->load_ms = (double)(lyra_now_us() - w->started_us) / 1000.0;
    w->n_slots = (int)json_integer_value(json_object_get(frame, "n_slots"));
    if (m->opts.hooks.loaded)
        m->opts.hooks.loaded(w->ms->name, w->load_ms / 1000.0, m->opts.hooks.ud);
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
        dispatch(w, j);
    }
    publish_residency(m);
    after_idle(m, w); /* an admin load alone leaves it idle: keep_alive 0, waiting models */
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
        after_idle(w->m, w);
    }
}

/* Settles the jobs of a worker that is gone.  A job the worker may have
 * seen fails; one that never reached it goes again (at most twice in all)
 * unless the daemon is closing or the model's circuit is open. */
static bool try_fallback(struct lyra_manager *m, struct lyra_job *job, const char *why);

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
            } else if (never_seen && w->gpu_retry) {
                j->attempts--; /* the load goes again with fewer GPU layers: not the request's fault */
                *retry_tail = j;
                retry_tail = &j->next;
            } else if (never_seen && (e->was_ready || w->stale) && j->attempts < 2 && circuit_wait_s(ms) == 0) {
                *retry_tail = j;
                retry_tail = &j->next;
            } else if (expected && w->stop_reason && strcmp(w->stop_reason, "watchdog") == 0) {
                job_fail(j, "memory_critical", 503, 10,
                         "model '%s' was stopped by the memory watchdog: the system is out of memory", j->model);
            } else if (expected) {
                job_fail(j, "model_unloaded", 503, 0, "model '%s' was unloaded while the request ran", j->model);
            } else if (!e->was_ready && try_fallback(m, j, reason)) {
                /* served by the next model of its fallback chain */
            } else if (!e->was_ready && e->why == LYRA_WPROC_LOAD_TIMEOUT) {
                job_fail(j, "model_load_timeout", 503, 0, "model '%s' did not load: %s", j->model, reason);
            } else if (!e->was_ready) {
                job_fail(j, "model_load_failed", 500, 0, "model '%s' failed to load: %s", j->model, reason);
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
    /* A load that failed on the GPU goes again with half the layers, then
     * on the CPU, before it counts as a failure of the model. */
    if (!expected && !e->was_ready && w->gpu_layers != 0 && !atomic_load(&m->closing) && !w->stale) {
        int n_layers = w->model->info ? (int)w->model->info->block_count : 0;
        int from = w->gpu_layers, to = from > 1 ? from / 2 : from < 0 && n_layers > 1 ? n_layers / 2 : 0;
        ms->gpu_layers_next = to;
        w->gpu_retry = true;
        m->counts.gpu_fallbacks++;
        json_decref(m->last_fallback);
        m->last_fallback = json_pack("{s:s, s:s, s:i, s:i, s:s, s:I}", "model", ms->name, "kind", to ? "gpu_layers" : "cpu",
                                     "gpu_layers_from", from, "gpu_layers_to", to, "error", reason, "at_ms",
                                     (json_int_t)lyra_wall_ms());
        lyra_bus_publish(m->opts.bus, "model.fallback", "models",
                         json_pack("{s:s, s:s, s:i, s:i, s:s}", "model", ms->name, "to", to ? "fewer gpu layers" : "cpu",
                                   "gpu_layers_from", from, "gpu_layers_to", to, "error", reason));
        lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i, s:i}", "model", ms->name, "from", from, "to", to),
                 "load of %s with %d GPU layers failed (%s): trying %d%s", ms->name, from, reason, to,
                 to ? " layers" : " (CPU only)");
    }
    if (w->gpu_retry) {
        /* settled below: the jobs go to the retry */
    } else if (expected) {
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
    bool was_resident = e->was_ready;
    w->state = W_STOPPING;
    settle_jobs(m, w, e, expected, reason);
    worker_free(m, w);
    if (was_resident)
        publish_residency(m);
    admit(m); /* its memory is back */
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

static void add_waiting(struct model_state *ms, struct lyra_job *job)
{
    job->waiting_in = ms;
    job->next = NULL;
    *ms->waiting_tail = job;
    ms->waiting_tail = &job->next;
    ms->n_waiting++;
}

static void remove_waiting(struct model_state *ms, struct lyra_job *job)
{
    if (list_remove(&ms->waiting, job)) {
        ms->n_waiting--;
        ms->waiting_tail = &ms->waiting;
        while (*ms->waiting_tail)
            ms->waiting_tail = &(*ms->waiting_tail)->next;
    }
    job->waiting_in = NULL;
}

static struct lyra_job *take_waiting(struct model_state *ms)
{
    struct lyra_job *all = ms->waiting;
    ms->waiting = NULL;
    ms->waiting_tail = &ms->waiting;
    ms->n_waiting = 0;
    for (struct lyra_job *j = all; j; j = j->next)
        j->waiting_in = NULL;
    return all;
}

/* Fails every job waiting for room for ms (each may still go to a fallback
 * model when `fallback` is set). */
static void fail_waiting(struct lyra_manager *m, struct model_state *ms, bool fallback, const char *code, int status,
                         int retry_after_s, const char *msg)
{
    for (struct lyra_job *j = take_waiting(ms), *next; j; j = next) {
        next = j->next;
        j->next = NULL;
        if (!fallback || !try_fallback(m, j, msg))
            job_fail(j, code, status, retry_after_s, "model '%s': %s", j->model, msg);
    }
}

static void count_request(struct lyra_manager *m, struct lyra_job *job, bool hit)
{
    if (job->admin_load || job->counted)
        return;
    job->counted = true;
    if (hit)
        m->counts.hits++;
    else
        m->counts.misses++;
}

/* Requests waiting for a model beyond those its worker is serving. */
static int queued_for(const struct model_state *ms)
{
    int n = ms->n_waiting;
    const struct mworker *w = ms->w;
    if (w) {
        for (const struct lyra_job *j = w->pending; j; j = j->next)
            n++;
        if (w->n_slots && w->n_inflight > w->n_slots)
            n += w->n_inflight - w->n_slots;
    }
    return n;
}

/* Routes a job to its model's worker; without one it waits for room in the
 * cache (admit). */
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
        char why[LYRA_ERR_MSG_MAX + 128];
        lyra_fmt(why, sizeof why, "model '%s' failed %d times within %d s; retry in %d s (last error: %s)", ms->name,
                 LYRA_MANAGER_CRASH_LIMIT, LYRA_MANAGER_CRASH_WINDOW_S, wait,
                 ms->last_error ? ms->last_error : "unknown");
        if (!try_fallback(m, job, why))
            job_fail(job, "model_unavailable", 503, wait, "%s", why);
        return;
    }
    job->attempts++;
    if (!job->enqueued_us)
        job->enqueued_us = lyra_now_us();
    if (!job->accepted && queued_for(ms) >= m->opts.queue_depth) {
        job_fail(job, "queue_full", 429, 1, "model '%s' has %d requests waiting (models.queue_depth); retry later",
                 ms->name, queued_for(ms));
        return;
    }
    job->accepted = true;
    struct mworker *w = ms->w;
    if (w && !w->draining) {
        bool ready = w->state == W_READY && !w->stale;
        count_request(m, job, ready);
        if (ready)
            dispatch(w, job);
        else
            add_pending(w, job);
        return;
    }
    count_request(m, job, false);
    if (m->mem_level >= LYRA_MEM_LEVEL_CRITICAL) {
        job_fail(job, "memory_critical", 503, 10,
                 "model '%s' is not loaded and memory is critically low: no model is loaded until it recovers",
                 ms->name);
        return;
    }
    add_waiting(ms, job);
    admit(m);
}

/* Starts the loads the cache has room for, oldest waiting request first
 * (so that a large model is not starved by small ones), stopping idle
 * models when that makes room.  Runs whenever room may have appeared: a
 * worker exited or became idle, a request arrived, every second. */
static void admit(struct lyra_manager *m)
{
    if (atomic_load(&m->closing))
        return;
    for (;;) {
        struct model_state *ms = NULL;
        for (struct model_state *c = m->models; c; c = c->next)
            if (c->waiting && !(c->w && c->w->draining) && (!ms || c->waiting->enqueued_us < ms->waiting->enqueued_us))
                ms = c;
        if (!ms)
            return;
        if (ms->w) { /* started meanwhile (an admin load, a retry) */
            for (struct lyra_job *j = take_waiting(ms), *next; j; j = next) {
                next = j->next;
                j->attempts--;
                enqueue(m, j);
            }
            continue;
        }
        if (m->mem_level >= LYRA_MEM_LEVEL_CRITICAL) {
            fail_waiting(m, ms, false, "memory_critical", 503, 10,
                         "memory is critically low: no model is loaded until it recovers");
            continue;
        }
        const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, ms->name);
        if (!model || !model->valid) {
            char why[LYRA_ERR_MSG_MAX + 64];
            lyra_fmt(why, sizeof why, "%s%s", model ? "cannot be used: " : "is gone",
                     model && model->error ? model->error : "");
            fail_waiting(m, ms, true, model ? "model_invalid" : "model_not_found", model ? 422 : 404, 0, why);
            lyra_registry_unref(model);
            continue;
        }
        uint64_t host, device;
        estimate(model, choose_gpu_layers(m, ms, model), &host, &device);
        struct mworker **ws;
        size_t n;
        struct lyra_cache_entry *view = cache_view(m, &ws, &n);
        size_t *victims = n ? calloc(n, sizeof *victims) : NULL;
        if (n && (!view || !victims)) {
            free(view);
            free(ws);
            free(victims);
            lyra_registry_unref(model);
            return; /* out of memory: the next pass tries again */
        }
        struct lyra_cache_limits lim = {.max_loaded = m->opts.max_loaded, .budget_bytes = m->opts.memory_budget};
        struct lyra_cache_plan plan;
        lyra_cache_plan(&lim, view, n, host, victims, &plan);
        if (plan.verdict == LYRA_CACHE_EVICT) {
            char detail[200];
            lyra_fmt(detail, sizeof detail, "making room for %s", ms->name);
            for (size_t i = 0; i < plan.n_victims; i++)
                evict(m, ws[victims[i]], plan.reason, detail);
        }
        free(view);
        free(ws);
        free(victims);
        if (plan.verdict == LYRA_CACHE_NEVER) {
            char why[256];
            lyra_fmt(why, sizeof why,
                     "needs about %" PRIu64 " MiB but the memory budget is %" PRIu64 " MiB, %" PRIu64
                     " MiB of it held by pinned models",
                     host >> 20, m->opts.memory_budget >> 20, plan.pinned_bytes >> 20);
            lyra_registry_unref(model);
            fail_waiting(m, ms, true, "insufficient_memory", 503, 0, why);
            continue;
        }
        if (plan.verdict == LYRA_CACHE_WAIT || (plan.verdict == LYRA_CACHE_EVICT && !plan.start_now)) {
            lyra_registry_unref(model);
            return; /* room comes when a worker exits or becomes idle */
        }
        struct lyra_err err = {0};
        struct mworker *w = worker_start(m, ms, model, &err);
        lyra_registry_unref(model);
        if (!w) {
            char why[LYRA_ERR_MSG_MAX + 64];
            lyra_fmt(why, sizeof why, "cannot start a worker: %s", err.msg);
            fail_waiting(m, ms, false, "internal", 500, 0, why);
            continue;
        }
        bool first = true;
        for (struct lyra_job *j = take_waiting(ms), *next; j; j = next) {
            next = j->next;
            j->started_load = first && j->attempts == 1;
            first = false;
            add_pending(w, j);
        }
    }
}

/* Sends a job whose model cannot be loaded to the next model of the
 * requested model's fallback chain (models.entries[].fallback).  False
 * when there is none left (the caller fails the job). */
static bool try_fallback(struct lyra_manager *m, struct lyra_job *job, const char *why)
{
    if (job->admin_load || job->terminal || atomic_load(&m->closing) || job->n_fallbacks >= MAX_FALLBACKS)
        return false;
    const struct lyra_model *origin = lyra_registry_lookup(m->opts.registry, job->origin);
    if (!origin)
        return false;
    bool found = false;
    size_t i = (size_t)job->n_fallbacks;
    for (; i < origin->settings.n_fallback && i < MAX_FALLBACKS && !found; i++) {
        const struct lyra_model *fb = lyra_registry_lookup(m->opts.registry, origin->settings.fallback[i]);
        if (fb && fb->valid && strcmp(fb->name, job->model) != 0 && strcmp(fb->name, origin->name) != 0) {
            char from[128];
            lyra_fmt(from, sizeof from, "%s", job->model);
            lyra_fmt(job->model, sizeof job->model, "%s", fb->name);
            found = true;
            m->counts.fallbacks++;
            json_decref(m->last_fallback);
            m->last_fallback = json_pack("{s:s, s:s, s:s, s:s, s:I}", "model", origin->name, "kind", "model", "to",
                                         fb->name, "error", why, "at_ms", (json_int_t)lyra_wall_ms());
            lyra_bus_publish(m->opts.bus, "model.fallback", "models",
                             json_pack("{s:s, s:s, s:s, s:s, s:I}", "model", origin->name, "from", from, "to",
                                       fb->name, "error", why, "request", (json_int_t)job->id));
            lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:s}", "model", from, "to", fb->name),
                     "request %" PRIu64 " for %s goes to its fallback %s: %s", job->id, from, fb->name, why);
        }
        lyra_registry_unref(fb);
    }
    job->n_fallbacks = (int)i;
    lyra_registry_unref(origin);
    if (!found)
        return false;
    job->attempts = 0;
    enqueue(m, job);
    return true;
}

static void task_submit(void *ud)
{
    struct lyra_job *job = ud;
    enqueue(job->m, job);
}

static void cancel_on_loop(struct lyra_job *job)
{
    if (!job->terminal && job->waiting_in) {
        remove_waiting(job->waiting_in, job);
        job_cancelled_here(job);
        return;
    }
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

/* A new job for `model` (borrowed) with msg (reference taken), held twice:
 * by its caller and by the manager.  NULL with err set on failure. */
static struct lyra_job *job_build(struct lyra_manager *m, const struct lyra_model *model, json_t *msg, lyra_job_fn fn,
                                  void *ud, struct lyra_err *err)
{
    struct lyra_job *job = calloc(1, sizeof *job);
    if (!job) {
        json_decref(msg);
        lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    job->m = m;
    job->fn = fn;
    job->ud = ud;
    job->id = atomic_fetch_add(&m->next_id, 1) + 1;
    lyra_fmt(job->model, sizeof job->model, "%s", model->name);
    lyra_fmt(job->origin, sizeof job->origin, "%s", model->name);
    const char *type = json_string_value(json_object_get(msg, "type"));
    job->admin_load = type && strcmp(type, "load") == 0;
    apply_default_sampling(msg, &model->settings);
    /* keep_alive_s is the manager's (how long the worker stays idle), not
     * the worker's: taken off the frame. */
    json_t *ka = json_object_get(msg, "keep_alive_s");
    job->keep_alive_s = json_is_integer(ka) && json_integer_value(ka) >= -1 && json_integer_value(ka) <= INT_MAX
                            ? (int)json_integer_value(ka)
                            : LYRA_KEEP_ALIVE_UNSET;
    json_object_del(msg, "keep_alive_s");
    json_object_set_new(msg, "id", json_integer((json_int_t)job->id));
    job->text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    job->fallback = json_pack("{s:s, s:I, s:s, s:s, s:i}", "type", "error", "id", (json_int_t)job->id, "code",
                              "internal", "message", "the request failed and its error could not be reported",
                              "status", 500);
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
        return NULL;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&job->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    atomic_init(&job->refs, 2);
    return job;
}

/* Loop thread: a job the manager starts itself (a pinned model loaded
 * again); internal_done lets go of the caller's hold when it ends. */
static struct lyra_job *job_new(struct lyra_manager *m, const char *name, json_t *msg, lyra_job_fn fn, void *ud)
{
    const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, name);
    struct lyra_err err = {0};
    struct lyra_job *job = model ? job_build(m, model, msg, fn, ud, &err) : NULL;
    if (!model)
        json_decref(msg);
    lyra_registry_unref(model);
    return job;
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
    /* An invalid file with a fallback chain is not refused here: admit()
     * fails it with model_invalid and sends it down the chain. */
    if (!model->valid && model->settings.n_fallback == 0) {
        int rc = lyra_err_set(err, LYRA_EINVAL, "model '%s' cannot be used: %s", model->name,
                              model->error ? model->error : "invalid file");
        lyra_registry_unref(model);
        json_decref(msg);
        return rc;
    }
    struct lyra_job *job = job_build(m, model, msg, fn, ud, err);
    lyra_registry_unref(model);
    if (!job)
        return err ? err->code : LYRA_ENOMEM;
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

/* Resident set size of a process from /proc/<pid>/statm (one short read:
 * cheap enough for the loop thread once a second). */
static uint64_t statm_rss(pid_t pid)
{
    char path[64], buf[128];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    unsigned long long size = 0, resident = 0;
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = '\0';
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* A job the manager makes itself (a pinned model loaded again): it lets go
 * of the job when it ends. */
static void internal_done(struct lyra_job *job, const json_t *frame, void *ud)
{
    if (!lyra_msg_is_terminal(lyra_msg_kind_of(frame)))
        return;
    const char *type = json_string_value(json_object_get(frame, "type"));
    if (type && strcmp(type, "error") == 0)
        lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s}", "model", job->model), "pinned model %s did not load: %s",
                 job->model, json_string_value(json_object_get(frame, "message")));
    lyra_job_release(job);
}

static struct lyra_job *job_new(struct lyra_manager *m, const char *name, json_t *msg, lyra_job_fn fn, void *ud);

/* Pinned means resident: a pinned model whose worker failed (crashed,
 * hung, could not load) is loaded again once its circuit allows, at most
 * once per circuit back-off (so a model that cannot load is retried, not
 * hammered).  One that was unloaded by request stays unloaded until the
 * next request or start. */
static void reload_pinned(struct lyra_manager *m, int64_t now)
{
    if (m->mem_level >= LYRA_MEM_LEVEL_CRITICAL)
        return;
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        if (ms->w || ms->waiting || !ms->failed || circuit_wait_s(ms) > 0 || now < ms->pin_reload_us)
            continue;
        const struct lyra_model *model = lyra_registry_lookup(m->opts.registry, ms->name);
        bool pinned = model && model->valid && ms_pinned(ms, model);
        lyra_registry_unref(model);
        if (!pinned)
            continue;
        ms->pin_reload_us = now + (int64_t)backoff_s(m) * 1000000;
        struct lyra_job *job = job_new(m, ms->name, json_pack("{s:s}", "type", "load"), internal_done, NULL);
        if (!job)
            continue;
        lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s}", "model", ms->name),
                 "pinned model %s is not resident after a failure: loading it again", ms->name);
        enqueue(m, job);
    }
}

/* Every second: measure the workers, unload those idle past their
 * keep_alive, end waits past models.queue_timeout_s, admit. */
static void reap_idle(void *ud)
{
    struct lyra_manager *m = ud;
    int64_t now = lyra_now_us();
    for (struct mworker *w = m->workers, *next; w; w = next) {
        next = w->next;
        uint64_t rss = statm_rss(lyra_wproc_pid(w->proc));
        if (rss)
            w->rss = rss;
        int ka = worker_keep_alive(w);
        if (w->draining || !worker_idle(w) || worker_pinned(w) || ka < 0 || now - w->last_used_us < (int64_t)ka * 1000000)
            continue;
        char detail[96];
        lyra_fmt(detail, sizeof detail, "idle for %d s (keep_alive_s)", ka);
        evict(m, w, LYRA_EVICT_IDLE, detail);
    }
    reload_pinned(m, now);
    int64_t limit_us = (int64_t)m->opts.queue_timeout_s * 1000000;
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        for (struct lyra_job *j = ms->waiting, *next; j; j = next) {
            next = j->next;
            if (now - j->enqueued_us < limit_us)
                continue;
            remove_waiting(ms, j);
            job_fail(j, "queue_timeout", 503, 5,
                     "model '%s' waited %d s for room in the model cache (every resident model is busy or pinned); "
                     "retry later", j->model, m->opts.queue_timeout_s);
        }
    }
    admit(m);
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
    if (m->opts.queue_depth < 1)
        m->opts.queue_depth = 64;
    if (m->opts.queue_timeout_s < 1)
        m->opts.queue_timeout_s = 60;
    m->counts.budget_bytes = m->opts.memory_budget;
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
    for (struct model_state *ms = m->models; ms; ms = ms->next)
        fail_waiting(m, ms, false, "shutting_down", 503, 0, "the server is shutting down");
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
    json_decref(m->last_fallback);
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
    if (j)
        json_object_set_new(j, "keep_alive_s", json_integer(worker_keep_alive(w)));
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
    /* RSS and PSS from /proc are read here, off the loop thread (PSS walks
     * the process's mappings). */
    size_t i;
    json_t *j;
    json_array_foreach(c.list, i, j) {
        json_t *pid = json_object_get(j, "pid");
        uint64_t rss = 0, pss = 0;
        if (pid && lyra_proc_memory((int)json_integer_value(pid), &rss, &pss) == 0) {
            json_object_set_new(j, "rss_bytes", json_integer((json_int_t)rss));
            json_object_set_new(j, "pss_bytes", json_integer((json_int_t)pss));
        }
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

/* ------------------------------------------------------------------ */
/* The cache: residency, pins, the watchdog, unloads                  */

/* Tells the owner the resident and pinned sets (for the restore at the
 * next start).  Not while closing: the set at the stop is the one to keep. */
static void publish_residency(struct lyra_manager *m)
{
    if (!m->opts.hooks.residency || atomic_load(&m->closing))
        return;
    json_t *resident = json_array(), *pinned = json_array();
    for (struct mworker *w = m->workers; w && resident; w = w->next)
        if (w->state == W_READY)
            json_array_append_new(resident, json_string(w->ms->name));
    for (struct model_state *ms = m->models; ms && pinned; ms = ms->next)
        if (ms->pin == PIN_ON)
            json_array_append_new(pinned, json_string(ms->name));
    json_t *state = json_pack("{s:o?, s:o?}", "resident", resident, "pinned", pinned);
    if (state)
        m->opts.hooks.residency(state, m->opts.hooks.ud);
    json_decref(state);
}

static bool any_stopping(const struct lyra_manager *m)
{
    for (const struct mworker *w = m->workers; w; w = w->next)
        if (w->state == W_STOPPING)
            return true;
    return false;
}

static void memory_on_loop(void *ud)
{
    struct lyra_manager *m = ud;
    if (atomic_load(&m->closing) || m->mem_level == LYRA_MEM_LEVEL_OK)
        return;
    /* Memory comes back only once a victim's process has exited: while one
     * is stopping, stop nothing more (the next sample decides again). */
    if (any_stopping(m))
        return;
    struct mworker **ws;
    size_t n;
    struct lyra_cache_entry *view = cache_view(m, &ws, &n);
    if (!view)
        return;
    bool critical = m->mem_level >= LYRA_MEM_LEVEL_CRITICAL;
    long i = lyra_cache_lru_idle(view, n);
    if (i >= 0 && !critical) {
        evict(m, ws[i], LYRA_EVICT_WATCHDOG, "memory use above watchdog.warn_percent");
    } else if (i >= 0) {
        for (size_t k = 0; k < n; k++)
            if (!view[k].pinned && !view[k].busy && !view[k].loading && !view[k].stopping)
                evict(m, ws[k], LYRA_EVICT_WATCHDOG, "memory use critical");
    } else if (critical && m->opts.kill_busy && (i = lyra_cache_largest_busy(view, n)) >= 0) {
        struct mworker *w = ws[i];
        int waiting = queued_for(w->ms);
        lyra_log(LYRA_LOG_WARN, COMP, NULL,
                 json_pack("{s:s, s:i, s:i}", "model", w->ms->name, "in_flight", w->n_inflight, "waiting", waiting),
                 "memory is critical and no idle model is left: killing the worker of %s (%d requests running, %d "
                 "waiting)", w->ms->name, w->n_inflight, waiting);
        evict(m, w, LYRA_EVICT_WATCHDOG, "memory critical: the largest busy model was stopped (watchdog.kill_busy)");
        lyra_wproc_kill(w->proc);
    }
    for (struct model_state *ms = m->models; critical && ms; ms = ms->next)
        fail_waiting(m, ms, false, "memory_critical", 503, 10,
                     "memory is critically low: no model is loaded until it recovers");
    free(view);
    free(ws);
}

static void memory_level_task(void *ud)
{
    struct { struct lyra_manager *m; int level; } *t = ud;
    t->m->mem_level = t->level;
    memory_on_loop(t->m);
    free(t);
}

void lyra_manager_memory_level(struct lyra_manager *m, int level)
{
    struct { struct lyra_manager *m; int level; } *t = malloc(sizeof *t);
    if (!t)
        return;
    t->m = m;
    t->level = level;
    if (lyra_loop_post(m->loop, memory_level_task, t) < 0)
        free(t);
}

struct unload_call {
    struct lyra_manager *m;
    const char *name;
    bool force, was_loaded, busy, gone, pinned;
    pid_t pid;
};

static void unload_on_loop(void *ud)
{
    struct unload_call *c = ud;
    struct model_state *ms = model_state_get(c->m, c->name, false);
    struct mworker *w = ms ? ms->w : NULL;
    if (!w) {
        return;
    }
    c->was_loaded = true;
    c->pid = lyra_wproc_pid(w->proc);
    if (worker_pinned(w) && !c->force) {
        c->pinned = true;
        return;
    }
    if (c->force || worker_idle(w) || w->state == W_LOADING) {
        evict(c->m, w, LYRA_EVICT_ADMIN, c->force ? "unloaded by request (force)" : "unloaded by request");
    } else {
        w->draining = true;
        c->busy = true;
    }
}

static void pid_gone_on_loop(void *ud)
{
    struct unload_call *c = ud;
    c->gone = true;
    for (struct mworker *w = c->m->workers; w; w = w->next)
        if (lyra_wproc_pid(w->proc) == c->pid)
            c->gone = false;
}

int lyra_manager_unload(struct lyra_manager *m, const char *name, bool force, int timeout_ms, bool *was_loaded)
{
    struct unload_call c = {.m = m, .name = name, .force = force};
    *was_loaded = false;
    if (lyra_loop_call(m->loop, unload_on_loop, &c) < 0)
        return LYRA_EUNAVAILABLE;
    *was_loaded = c.was_loaded;
    if (!c.was_loaded)
        return 0;
    if (c.pinned)
        return LYRA_EPERM;
    if (c.busy)
        return LYRA_EBUSY;
    /* The worker exits within milliseconds when idle (EOF); the stop's
     * own escalation bounds it otherwise. */
    int64_t deadline = lyra_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        if (lyra_loop_call(m->loop, pid_gone_on_loop, &c) < 0 || c.gone)
            return 0;
        if (lyra_now_us() >= deadline)
            return LYRA_ETIMEOUT;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

struct pin_call {
    struct lyra_manager *m;
    const char *name;
    bool pinned, ok;
};

static void pin_on_loop(void *ud)
{
    struct pin_call *c = ud;
    struct model_state *ms = model_state_get(c->m, c->name, true);
    if (!ms)
        return;
    ms->pin = c->pinned ? PIN_ON : PIN_OFF;
    c->ok = true;
    publish_residency(c->m);
}

int lyra_manager_pin(struct lyra_manager *m, const char *name, bool pinned, struct lyra_err *err)
{
    const struct lyra_model *model = resolve(m, name);
    if (!model)
        return lyra_err_set(err, LYRA_ENOTFOUND, "model '%.*s' not found", (int)lyra_utf8_clip(name, 128), name);
    struct pin_call c = {.m = m, .name = model->name, .pinned = pinned};
    int rc = lyra_loop_call(m->loop, pin_on_loop, &c);
    lyra_registry_unref(model);
    if (rc < 0)
        return lyra_err_set(err, LYRA_EUNAVAILABLE, "the server is shutting down");
    return c.ok ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}

/* ---- state for /status, /metrics and /models ---------------------- */

static void counts_on_loop(void *ud)
{
    struct lyra_manager *m = *(struct lyra_manager **)ud;
    struct lyra_cache_counts *out = (struct lyra_cache_counts *)((struct lyra_manager **)ud)[1];
    *out = m->counts;
    out->resident = 0;
    out->held_bytes = 0;
    for (struct mworker *w = m->workers; w; w = w->next) {
        out->held_bytes += worker_bytes(w);
        if (w->state != W_STOPPING)
            out->resident++;
    }
}

int lyra_manager_cache_counts(struct lyra_manager *m, struct lyra_cache_counts *out)
{
    memset(out, 0, sizeof *out);
    void *args[2] = {m, out};
    return lyra_loop_call(m->loop, counts_on_loop, args) < 0 ? LYRA_EUNAVAILABLE : 0;
}

struct cache_call {
    struct lyra_manager *m;
    json_t *out;
};

static void cache_status_on_loop(void *ud)
{
    struct cache_call *c = ud;
    struct lyra_manager *m = c->m;
    int64_t now = lyra_now_us();
    json_t *resident = json_array(), *pinned = json_array(), *queues = json_object(), *ev = json_object();
    uint64_t held = 0;
    for (struct mworker *w = m->workers; w && resident; w = w->next) {
        held += worker_bytes(w);
        json_array_append_new(
            resident, json_pack("{s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:b, s:i, s:f}", "model", w->ms->name, "state",
                                wstate_names[w->state], "pid", (int)lyra_wproc_pid(w->proc), "bytes",
                                (json_int_t)worker_bytes(w), "estimate_bytes", (json_int_t)w->est_host,
                                "estimate_device_bytes", (json_int_t)w->est_device, "measured_bytes",
                                (json_int_t)w->rss, "pinned", worker_pinned(w), "gpu_layers", w->gpu_layers,
                                "idle_s", (double)(now - w->last_used_us) / 1e6));
    }
    for (struct model_state *ms = m->models; ms; ms = ms->next) {
        const struct lyra_model *model = ms->w ? lyra_registry_ref(ms->w->model) : lyra_registry_lookup(m->opts.registry, ms->name);
        if (ms_pinned(ms, model) && pinned)
            json_array_append_new(pinned, json_string(ms->name));
        lyra_registry_unref(model);
        int pending = 0;
        for (const struct lyra_job *j = ms->w ? ms->w->pending : NULL; j; j = j->next)
            pending++;
        if (queues && (ms->n_waiting || ms->w))
            json_object_set_new(queues, ms->name,
                                json_pack("{s:i, s:i, s:i, s:i, s:i}", "waiting", ms->n_waiting, "pending", pending,
                                          "in_flight", ms->w ? ms->w->n_inflight : 0, "slots",
                                          ms->w ? ms->w->n_slots : 0, "depth", m->opts.queue_depth));
    }
    for (int r = 0; ev && r < LYRA_EVICT_N; r++)
        json_object_set_new(ev, lyra_evict_reason_name(r), json_integer((json_int_t)m->counts.evictions[r]));
    /* The largest resident models (by bytes), at most 3. */
    json_t *largest = json_array();
    size_t n = resident ? json_array_size(resident) : 0;
    bool taken[64] = {0};
    for (int k = 0; largest && k < 3; k++) {
        long best = -1;
        for (size_t i = 0; i < n && i < 64; i++) {
            json_t *e = json_array_get(resident, i);
            if (!taken[i] && (best < 0 || json_integer_value(json_object_get(e, "bytes")) >
                                             json_integer_value(json_object_get(json_array_get(resident, (size_t)best), "bytes"))))
                best = (long)i;
        }
        if (best < 0)
            break;
        taken[best] = true;
        json_t *e = json_array_get(resident, (size_t)best);
        json_array_append_new(largest, json_pack("{s:O, s:O}", "model", json_object_get(e, "model"), "bytes",
                                                 json_object_get(e, "bytes")));
    }
    uint64_t requests = m->counts.hits + m->counts.misses;
    c->out = json_pack(
        "{s:{s:o?, s:I, s:I, s:I, s:I, s:o, s:I, s:o?, s:o?, s:o?, s:i}, s:o?, s:{s:I, s:I, s:O?}, s:s}", "cache",
        "resident", resident, "budget_bytes", (json_int_t)m->opts.memory_budget, "held_bytes", (json_int_t)held,
        "hits", (json_int_t)m->counts.hits, "misses", (json_int_t)m->counts.misses, "hit_ratio",
        requests ? json_real((double)m->counts.hits / (double)requests) : json_null(), "loads",
        (json_int_t)m->counts.loads, "evictions", ev, "largest", largest, "pinned", pinned, "max_loaded",
        m->opts.max_loaded, "queues", queues, "fallbacks", "count", (json_int_t)m->counts.fallbacks, "gpu",
        (json_int_t)m->counts.gpu_fallbacks, "last", m->last_fallback, "memory_level",
        m->mem_level == LYRA_MEM_LEVEL_CRITICAL  ? "critical"
        : m->mem_level == LYRA_MEM_LEVEL_WARNING ? "warning"
                                                 : "ok");
}

json_t *lyra_manager_cache_status(struct lyra_manager *m)
{
    struct cache_call c = {.m = m};
    if (lyra_loop_call(m->loop, cache_status_on_loop, &c) < 0 || !c.out)
        return json_object();
    return c.out;
}

struct info_call {
    struct lyra_manager *m;
    const char *name;
    json_t *out;
};

static void info_on_loop(void *ud)
{
    struct info_call *c = ud;
    struct model_state *ms = model_state_get(c->m, c->name, false);
    const struct lyra_model *model = ms && ms->w ? lyra_registry_ref(ms->w->model)
                                                 : lyra_registry_lookup(c->m->opts.registry, c->name);
    bool pinned = ms ? ms_pinned(ms, model) : model && model->settings.pinned;
    int ka = model ? model->settings.keep_alive_s : -1;
    c->out = json_pack("{s:o, s:b, s:i}", "state", ms && state_name(ms) ? json_string(state_name(ms)) : json_null(),
                       "pinned", pinned, "keep_alive_s", ka);
    if (c->out && model && !(ms && ms->w)) {
        uint64_t host, device;
        estimate(model, ms ? choose_gpu_layers(c->m, ms, model) : 0, &host, &device);
        json_object_set_new(c->out, "estimate_bytes", json_integer((json_int_t)host));
    }
    lyra_registry_unref(model);
    if (c->out && ms && ms->w) {
        struct mworker *w = ms->w;
        json_t *x = json_pack("{s:i, s:i, s:f, s:I, s:I, s:I, s:i, s:o}", "pid", (int)lyra_wproc_pid(w->proc),
                              "in_flight", w->n_inflight, "idle_s", (double)(lyra_now_us() - w->last_used_us) / 1e6,
                              "estimate_bytes", (json_int_t)w->est_host, "estimate_device_bytes",
                              (json_int_t)w->est_device, "measured_bytes", (json_int_t)w->rss, "gpu_layers",
                              w->gpu_layers, "load_ms", w->state != W_LOADING ? json_real(w->load_ms) : json_null());
        json_object_update(c->out, x);
        json_decref(x);
    }
}

json_t *lyra_manager_model_info(struct lyra_manager *m, const char *name)
{
    struct info_call c = {.m = m, .name = name};
    if (lyra_loop_call(m->loop, info_on_loop, &c) < 0 || !c.out)
        return json_object();
    return c.out;
}
