/* manager.h — the model manager: one `lyra worker` process per resident
 * model, started lazily by the first request, supervised, and fed requests.
 *
 * A request is a job: the caller submits a worker message without "id"
 * ({"type":"generate", "messages"|"prompt", "params"} or {"type":"embed",
 * "inputs"}) for a model name or alias.  The manager resolves the model,
 * starts its worker if none is running (concurrent first requests share one
 * load; `model.loading` / `model.loaded` are published), queues the job
 * until the worker is ready, assigns the id and forwards it.  Every frame the
 * worker sends for the job (started, token, done, error, embedding, tokens)
 * is handed to the job's callback, ending with exactly one terminal frame
 * (done, error, embedding or tokens).
 *
 * Failures reach the callback as error frames in the worker's own shape
 * ({"type":"error","code":...,"message":...,"status":HTTP}):
 *   - model_load_failed (500): the worker could not load the model; message
 *     is the worker's own reason (e.g. llama.cpp's "tensor ... not within the
 *     file bounds").
 *   - worker_crashed (502): the worker died with the job in flight (exit
 *     status or signal in the message).  A job marked retryable that had not
 *     started yet is first retried once on a fresh worker.
 * A model whose worker crashed LYRA_MANAGER_CRASH_LIMIT times within
 * LYRA_MANAGER_CRASH_WINDOW_S seconds is refused for a back-off period
 * (circuit open): lyra_manager_submit() fails with LYRA_EUNAVAILABLE and
 * *retry_after_s set.  Crashes publish `worker.crashed`; the model goes to
 * state "failed" and the next request starts a new worker.
 *
 * Thread-safety: every function is thread-safe.  Callbacks run on the
 * worker's I/O thread (one per worker), in frame order per job; they must
 * not block, and may call lyra_manager_cancel()/lyra_job_release(). */
#ifndef LYRA_MANAGER_H
#define LYRA_MANAGER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"
#include "models/registry.h"

#define LYRA_MANAGER_CRASH_LIMIT 3
#define LYRA_MANAGER_CRASH_WINDOW_S 60
#define LYRA_MANAGER_BACKOFF_S 30

struct lyra_manager;
struct lyra_job;

/* Called with each frame for the job (borrowed: incref to keep). */
typedef void (*lyra_job_fn)(struct lyra_job *job, const json_t *frame, void *ud);

struct lyra_manager_options {
    const char *worker_exe;        /* the lyra binary to exec as `lyra worker` */
    struct lyra_registry *registry; /* borrowed */
    struct lyra_bus *bus;          /* borrowed */
    int max_loaded;                /* resident models at most; the least recently used idle one is unloaded */
    int keep_alive_s;              /* a model idle this long is unloaded (0 = never), unless pinned */
};

int lyra_manager_new(const struct lyra_manager_options *opts, struct lyra_manager **out, struct lyra_err *err);
/* Stops every worker (closing its socket, then SIGKILL after 2 s) and
 * fails the jobs still in flight.  NULL is a no-op. */
void lyra_manager_free(struct lyra_manager *m);

enum lyra_job_flags {
    LYRA_JOB_RETRYABLE = 1 << 0,  /* may be re-sent once if the worker dies before "started" */
};

/* Submits `msg` (reference taken) for `model`.  On success *out is the job,
 * which the caller holds until lyra_job_release(); the callback may run
 * before this returns.  Errors (nothing submitted, callback never called):
 * LYRA_ENOTFOUND unknown model; LYRA_EINVAL the model's file is invalid
 * (err names the reason); LYRA_EUNAVAILABLE circuit open (*retry_after_s);
 * LYRA_ENOMEM; LYRA_EIO the worker could not be spawned. */
int lyra_manager_submit(struct lyra_manager *m, const char *model, json_t *msg, unsigned flags, lyra_job_fn fn,
                        void *ud, struct lyra_job **out, int *retry_after_s, struct lyra_err *err);

/* Asks the worker to stop the job; its terminal frame (done/cancelled) still
 * comes through the callback. */
void lyra_manager_cancel(struct lyra_job *job);

/* Drops the caller's hold; after it the callback is no longer called.  May
 * be called before the terminal frame (then the job is cancelled). */
void lyra_job_release(struct lyra_job *job);

/* The resolved model name of a job (valid until release). */
const char *lyra_job_model(const struct lyra_job *job);

/* Load time of the worker that serves the job when the job's submission
 * started that load, else 0 (for the "model load" span of traces). */
double lyra_job_load_ms(const struct lyra_job *job);

/* Resident and recently failed models: [{name, state (loading|loaded|
 * failed), pid, load_ms, in_flight, crashes, last_error, circuit_open_s,
 * rss_bytes, slots, n_ctx_slot}] (new reference). */
json_t *lyra_manager_status(struct lyra_manager *m);

/* State of one model: "loading", "loaded", "failed" or NULL when no worker
 * was started for it (available). */
const char *lyra_manager_model_state(struct lyra_manager *m, const char *name);

/* Starts the model's worker now (without a request); waits up to
 * timeout_ms for it to be ready.  Unloads an idle worker.  Return 0, or the
 * error as for submit / LYRA_EBUSY (jobs in flight) / LYRA_ETIMEOUT. */
int lyra_manager_load(struct lyra_manager *m, const char *model, int timeout_ms, struct lyra_err *err);
int lyra_manager_unload(struct lyra_manager *m, const char *model, struct lyra_err *err);

#endif
