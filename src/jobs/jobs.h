/* jobs.h — background jobs: typed, persisted in SQLite, run by a pool with a
 * concurrency limit per type, with progress, cancellation, and resumption
 * after a restart.
 *
 * A job is {id, type, state, params, progress {done, total, rate, eta_s},
 * created, started, finished, error, result}.  States: queued → running →
 * succeeded | failed | cancelled.  Every transition is written to the
 * database and published on the bus: job.queued, job.started, job.progress
 * (at most 4 per second per job), job.succeeded, job.failed, job.cancelled,
 * with {id, type, state, progress, error?, result?} as data.
 *
 * A job type supplies a runner that does the work on one of the pool's
 * threads (blocking I/O is fine there).  It reports progress and checks
 * cancellation through the context, and may save resume state (a small
 * JSON object: a partial file and its size) that is persisted and handed
 * back when the job runs again after a crash or restart.  At start, jobs
 * found running or queued in the database go again if their type is
 * resumable, else they fail with "interrupted by a restart".
 *
 * Persistence: submit, get, list and cancel wait on the store (call them
 * from HTTP handler threads or the main thread, never from the supervisor
 * loop or the database thread); state changes made by the pool are queued
 * writes (lyra_store_submit) queued before their event is published, so a
 * client that reads a job after seeing its event sees that state.
 * Progress is written with its event (at most 4 per second); get and list
 * show the live progress of a job that runs.
 *
 * Thread-safety: every function is thread-safe except new/free. */
#ifndef LYRA_JOBS_H
#define LYRA_JOBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"

struct lyra_store;
struct lyra_jobs;

/* What a runner gets.  Valid during the run only. */
struct lyra_job_ctx {
    const char *id;
    const json_t *params;      /* the job's parameters (borrowed) */
    const json_t *resume;      /* state saved by an earlier, interrupted run, or NULL */
    /* Progress in the runner's unit (bytes for a download); total 0 = unknown. */
    void (*progress)(struct lyra_job_ctx *c, uint64_t done, uint64_t total);
    /* True once the job was cancelled (or the daemon stops): return soon. */
    bool (*cancelled)(struct lyra_job_ctx *c);
    /* Persists resume state (copied); call it as often as useful. */
    void (*save_resume)(struct lyra_job_ctx *c, const json_t *state);
    void *impl; /* the scheduler's */
};

/* Does the work.  Returns 0 with *result (a new reference, may be NULL), or
 * a negative LYRA_E* with err set (the job fails with err's message).  A
 * runner that stops because ctx->cancelled() said so returns
 * LYRA_EUNAVAILABLE: the job ends cancelled (or, at a daemon stop, stays
 * to be resumed). */
typedef int (*lyra_job_run_fn)(struct lyra_job_ctx *ctx, json_t **result, struct lyra_err *err, void *ud);

struct lyra_job_type {
    const char *name;     /* "pull", "warmup", "verify", "unload" */
    int max_concurrent;   /* jobs of this type running at once (>= 1) */
    bool resumable;       /* run again after a restart (else failed "interrupted") */
    lyra_job_run_fn run;
    void *ud;
    /* Optional: checks params at submit (LYRA_EINVAL with err: HTTP 400),
     * so that a job that can never run is refused rather than queued to
     * fail.  Runs on the submitter's thread; NULL accepts anything. */
    int (*validate)(const json_t *params, struct lyra_err *err, void *ud);
};

struct lyra_jobs_options {
    struct lyra_store *store; /* borrowed: jobs table */
    struct lyra_bus *bus;     /* borrowed */
    int max_concurrent;       /* jobs.max_concurrent: all types together */
};

int lyra_jobs_new(const struct lyra_jobs_options *o, struct lyra_jobs **out, struct lyra_err *err);
/* Registers a type (copied) before lyra_jobs_start. */
int lyra_jobs_register(struct lyra_jobs *j, const struct lyra_job_type *t);
/* Resumes or fails what an earlier run left, then starts the pool. */
int lyra_jobs_start(struct lyra_jobs *j, struct lyra_err *err);
/* Queues a job (params reference taken); id_out gets its id.  LYRA_ENOTFOUND
 * for an unknown type. */
int lyra_jobs_submit(struct lyra_jobs *j, const char *type, json_t *params, char id_out[40], struct lyra_err *err);
/* A job as JSON (new reference) or NULL when unknown. */
json_t *lyra_jobs_get(struct lyra_jobs *j, const char *id);
/* Jobs, newest first (new reference); state/type filters may be NULL. */
json_t *lyra_jobs_list(struct lyra_jobs *j, const char *state, const char *type, int limit);
/* Cancels a queued or running job: 0; LYRA_ENOTFOUND; LYRA_EEXISTS when it
 * already finished (HTTP 409). */
int lyra_jobs_cancel(struct lyra_jobs *j, const char *id, struct lyra_err *err);
/* Cancels what runs (runners see cancelled()), waits for the pool, frees.
 * Running resumable jobs stay "running" in the database so that the next
 * start resumes them.  NULL is a no-op. */
void lyra_jobs_free(struct lyra_jobs *j);

#endif
