/* manager.h — the model manager: one `lyra worker` process per resident
 * model, started lazily by the first request, supervised, and fed requests.
 *
 * A request is a job: the caller submits a worker message without "id"
 * ({"type":"generate", "messages"|"prompt", "params"} or {"type":"embed",
 * "inputs"}) for a model name or alias.  {"type":"load"} is a job that only
 * loads the model: it ends with {"type":"status","state":"loaded",...} as
 * soon as the worker is ready and is never sent to it.  The manager resolves the model,
 * starts its worker if none is running (concurrent first requests share one
 * load; `model.loading` / `model.loaded` are published), queues the job
 * until the worker is ready, assigns the id and forwards it.  Every frame the
 * worker sends for the job (started, token, done, error, embedding, tokens,
 * status) is handed to the job's callback, ending with exactly one terminal
 * frame (done, error, embedding, tokens or status) — also when the worker
 * dies, hangs or the daemon shuts down, through a frame prepared when the
 * job was submitted, so that the end of a job cannot fail.
 *
 * Failures reach the callback as error frames in the worker's own shape
 * ({"type":"error","code":...,"message":...,"status":HTTP}, plus
 * "retry_after_s" where waiting helps):
 *   - model_load_failed (500): the worker could not load the model; message
 *     is the worker's own reason (e.g. llama.cpp's "tensor ... not within the
 *     file bounds"); model_load_timeout (503): not ready within
 *     models.load_timeout_s.
 *   - worker_crashed (502): the worker died with the job handed to it (exit
 *     status or signal in the message); worker_hung (502): it missed its
 *     heartbeat or progress deadline and was killed; worker_protocol_error
 *     (502): it broke the protocol and was killed.  A job whose frame had not
 *     reached the worker yet is retried once on a fresh worker instead; a
 *     job the worker may have acted on is never retried (a request that kills
 *     its worker must not kill the next one too).
 *   - model_unavailable (503, retry_after_s): the circuit is open — the
 *     model's worker failed LYRA_MANAGER_CRASH_LIMIT times within
 *     LYRA_MANAGER_CRASH_WINDOW_S seconds; requests are refused for the
 *     back-off period, then the next one starts a fresh worker.
 *   - shutting_down (503): the daemon is stopping.
 * Failures publish `worker.crashed` / `worker.hung` / `model.failed`; the
 * model goes to state "failed" and the next request starts a new worker.
 *
 * Threads: one supervisor loop thread (core/loop.h) owns every worker
 * process, socket, timer and the model table; callers hand it work through
 * its queue and read state through lyra_loop_call.  Job callbacks run on
 * that thread, in frame order per job: they must not block (no disk, no
 * waiting on other threads) and may call lyra_manager_cancel() and
 * lyra_job_release().  Every function here is thread-safe. */
#ifndef LYRA_MANAGER_H
#define LYRA_MANAGER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"
#include "models/cache.h"
#include "models/registry.h"

#define LYRA_MANAGER_CRASH_LIMIT 3
#define LYRA_MANAGER_CRASH_WINDOW_S 60

struct lyra_manager;
struct lyra_job;

/* Called with each frame for the job (borrowed: incref to keep). */
typedef void (*lyra_job_fn)(struct lyra_job *job, const json_t *frame, void *ud);

/* What the manager tells its owner (all optional).  They run on the
 * supervisor thread and must not block. */
struct lyra_manager_hooks {
    void (*loaded)(const char *model, double load_s, void *ud);     /* a worker became ready */
    void (*queue_wait)(const char *model, double wait_s, void *ud); /* a request reached its worker */
    void (*restarted)(const char *model, void *ud);                 /* a worker started after a crash */
    /* The resident and pinned sets changed: {"resident":[names],"pinned":[names]} (borrowed). */
    void (*residency)(const json_t *state, void *ud);
    /* Free memory of the GPU that models go to, in bytes; 0 = no GPU.
     * *live says whether the number is current (NVML) or from the start-up
     * probe, from which the manager then subtracts its workers' estimates. */
    uint64_t (*vram_free)(bool *live, void *ud);
    void *ud;
};

struct lyra_manager_options {
    const char *worker_exe;         /* the lyra binary to run as `lyra worker` */
    struct lyra_registry *registry; /* borrowed */
    struct lyra_bus *bus;           /* borrowed */
    int max_loaded;                 /* resident models at most (hard limit; cache.h) */
    uint64_t memory_budget;         /* bytes all workers may hold (hard limit); 0 = none */
    int queue_depth;                /* requests waiting per model; more get 429 queue_full (0 = 64) */
    int queue_timeout_s;            /* waiting for room this long gets 503 queue_timeout (0 = 60) */
    bool kill_busy;                 /* watchdog's last resort (watchdog.kill_busy) */
    uint64_t vram_reserve;          /* VRAM left free on the GPU when layers are placed (gpu.reserve) */
    struct lyra_manager_hooks hooks;
    int load_timeout_s;             /* worker ready within (models.load_timeout_s) */
    int heartbeat_timeout_s;        /* models.heartbeat_timeout_s */
    int progress_timeout_s;         /* models.progress_timeout_s */
    int stop_timeout_s;             /* models.stop_timeout_s: EOF → SIGTERM → SIGKILL steps */
    int circuit_backoff_s;          /* refuse a failing model this long (0 = 30) */
};

int lyra_manager_new(const struct lyra_manager_options *opts, struct lyra_manager **out, struct lyra_err *err);

/* Ends every job (queued or running) with `shutting_down` (503), stops
 * every worker (EOF, then SIGTERM and SIGKILL on the stop timeout; with
 * `now`, SIGKILL at once) and waits until all are reaped.  Afterwards
 * submit fails with LYRA_EUNAVAILABLE and no callback runs any more.
 * Idempotent. */
void lyra_manager_shutdown(struct lyra_manager *m, bool now);

/* The same in parts, for a caller that watches for impatience meanwhile:
 * begin (jobs end, workers are asked to stop; returns at once; idempotent),
 * kill (SIGKILL every worker now), wait (true once every worker was reaped,
 * false after timeout_ms). */
void lyra_manager_begin_shutdown(struct lyra_manager *m);
void lyra_manager_kill_workers(struct lyra_manager *m);
bool lyra_manager_wait_workers(struct lyra_manager *m, int timeout_ms);

/* Shuts down (if not done) and frees.  NULL is a no-op. */
void lyra_manager_free(struct lyra_manager *m);

/* A request may carry "keep_alive_s" (integer: -1 keep loaded, 0 unload
 * once idle, N seconds idle): from then on the model's worker stays that
 * long after its last request (until another request says otherwise or the
 * worker goes), instead of the model's keep_alive_s.  The manager takes
 * the field off the frame. */
#define LYRA_KEEP_ALIVE_UNSET (-2)

/* Submits `msg` (reference taken) for `model`.  On success *out is the job,
 * which the caller holds until lyra_job_release(); the callback may run
 * before this returns, on the supervisor thread.  Errors (nothing
 * submitted, callback never called): LYRA_ENOTFOUND unknown model (after a
 * rescan of the models dir); LYRA_EINVAL the model's file is invalid and
 * it has no fallback (err names the reason; with fallbacks, the request goes
 * down the chain); LYRA_ETOOBIG the message exceeds the frame limit;
 * LYRA_EUNAVAILABLE shutting down; LYRA_ENOMEM.  Everything else (circuit
 * open, failed load) arrives as the job's terminal error frame. */
int lyra_manager_submit(struct lyra_manager *m, const char *model, json_t *msg, lyra_job_fn fn, void *ud,
                        struct lyra_job **out, struct lyra_err *err);

/* Asks the worker to stop the job; its terminal frame (done/cancelled)
 * still comes through the callback. */
void lyra_manager_cancel(struct lyra_job *job);

/* Drops the caller's hold.  When it returns the callback is not running
 * and will not be called again.  A job released before its terminal frame
 * is cancelled.  Must not be called while holding a lock the callback
 * takes (except from the callback itself). */
void lyra_job_release(struct lyra_job *job);

/* The model that serves the job: the resolved name, or the fallback model
 * it went to.  It may change on the supervisor thread until the job's
 * first frame: read it in the callback or after a frame was delivered
 * (valid until release). */
const char *lyra_job_model(const struct lyra_job *job);

/* The resolved name of the model the request named; fixed at submit, may
 * be read at any time until release. */
const char *lyra_job_requested_model(const struct lyra_job *job);

/* Load time of the worker that serves the job when the job's submission
 * started that load, else 0 (for the "model load" span of traces).  Valid
 * once the job started or ended. */
double lyra_job_load_ms(const struct lyra_job *job);

/* Resident and recently failed models: [{name, state (loading|loaded|
 * stopping|failed), pid, load_ms, in_flight, crashes, last_error,
 * circuit_open_s, rss_bytes, n_slots, n_ctx_slot, idle_s, devices}] (new
 * reference). */
json_t *lyra_manager_status(struct lyra_manager *m);

/* The watchdog's levels (sys/watchdog.h uses the same numbers). */
enum { LYRA_MEM_LEVEL_OK = 0, LYRA_MEM_LEVEL_WARNING = 1, LYRA_MEM_LEVEL_CRITICAL = 2 };

/* Cache counters for /status and /metrics. */
struct lyra_cache_counts {
    uint64_t hits;   /* requests served by a resident worker */
    uint64_t misses; /* requests that needed a load */
    uint64_t loads;  /* worker starts, admin and restore loads included */
    uint64_t evictions[LYRA_EVICT_N];
    uint64_t fallbacks;     /* requests served by a fallback model */
    uint64_t gpu_fallbacks; /* loads retried with fewer GPU layers or on the CPU */
    int resident;
    uint64_t held_bytes, budget_bytes;
};
/* 0, or LYRA_EUNAVAILABLE once the manager has stopped (out is zeroed). */
int lyra_manager_cache_counts(struct lyra_manager *m, struct lyra_cache_counts *out);

/* {cache:{resident:[...], budget_bytes, held_bytes, hits, misses, hit_ratio,
 * loads, evictions:{lru,budget,idle,watchdog,admin}, largest:[...],
 * pinned:[...]}, queues:{model:{waiting, pending, in_flight, slots}},
 * fallbacks:{count, gpu, last}, memory_level} (new reference). */
json_t *lyra_manager_cache_status(struct lyra_manager *m);

/* One model's residency: {state, pinned, pid, in_flight, idle_s,
 * keep_alive_s, estimate_bytes, measured_bytes, gpu_layers, load_ms}; the
 * state is null and pid absent when no worker runs (new reference). */
json_t *lyra_manager_model_info(struct lyra_manager *m, const char *name);

/* The watchdog's level (0 ok, 1 warning, 2 critical).  Warning: the least
 * recently used idle unpinned model is unloaded, one per call, while it
 * lasts.  Critical: new loads are refused (503 memory_critical), every idle
 * unpinned model is unloaded, and with kill_busy, when nothing idle is
 * left, the worker of the largest unpinned busy model is killed (its
 * requests end with 503 memory_critical).  Call it on every sample. */
void lyra_manager_memory_level(struct lyra_manager *m, int level);

/* Unloads `name` (reason admin).  An idle worker (or any, with force) is
 * stopped and waited for up to timeout_ms: 0 once it exited.  A busy one
 * takes no new requests (they wait for the next load), finishes what it
 * runs and then stops: LYRA_EBUSY at once.  *was_loaded tells whether a
 * worker ran.  LYRA_ETIMEOUT if it had not exited in time; LYRA_EPERM for
 * a pinned model without force (unpin it first). */
int lyra_manager_unload(struct lyra_manager *m, const char *name, bool force, int timeout_ms, bool *was_loaded);

/* Pins or unpins a model at run time (over its configured `pinned`).  A
 * pinned model is never unloaded; pinning does not load it (submit a
 * {"type":"load"} job for that).  LYRA_ENOTFOUND for an unknown model. */
int lyra_manager_pin(struct lyra_manager *m, const char *name, bool pinned, struct lyra_err *err);

/* State of one model: "loading", "loaded", "stopping", "failed" or NULL when
 * no worker was started for it (available).  A static string. */
const char *lyra_manager_model_state(struct lyra_manager *m, const char *name);

/* The registry snapshot the model's worker serves (a new reference the
 * caller releases with lyra_registry_unref), or NULL when none runs: the
 * metadata of what is loaded, even after the file was replaced. */
const struct lyra_model *lyra_manager_served_model(struct lyra_manager *m, const char *name);

#endif
