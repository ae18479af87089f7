/* model_jobs.h — the job types that act on models through the manager:
 *
 *   "warmup" {model}: loads the model (if no worker serves it) and generates
 *       one token from "Hello", so that the first real request finds it
 *       resident and warm.  Result {model, load_ms (0 when it was resident
 *       already), token, ms (the whole job)}.
 *   "verify" {model}: the same check — the file loads and generates — but
 *       leaves residency as it was: a model that was not loaded before is
 *       unloaded again.  Result as warmup's plus {unloaded}.
 *   "unload" {model, at | after_s}: a scheduled unload; waits until `at`
 *       (wall clock, milliseconds since the epoch) or `after_s` seconds
 *       after the job first started, then unloads the model (reason admin;
 *       a busy model drains first).  Resumable: the due time is saved as
 *       resume state, so an unload scheduled before a restart still fires
 *       after it (at once if its time passed meanwhile).  Result {model,
 *       was_loaded, state: "available" | "draining" | "stopping"}; a pinned
 *       model fails the job.
 *
 * Warmup and verify wait for their terminal frame on a condvar with a
 * deadline (timeout_s) and stop early when the job is cancelled or the
 * daemon stops (the manager's job is then released, which cancels it).
 * Neither is resumable: interrupted, they fail.
 *
 * Thread-safety: register once, before lyra_jobs_start; the runners run on
 * the pool's threads. */
#ifndef LYRA_MODEL_JOBS_H
#define LYRA_MODEL_JOBS_H

#include "jobs/jobs.h"

struct lyra_manager;

struct lyra_model_jobs_options {
    struct lyra_manager *manager; /* borrowed; must outlive the scheduler's pool */
    int timeout_s;                /* warmup/verify: load + one token within (0 = 300) */
    int unload_timeout_ms;        /* unload: wait for the worker to exit (0 = 30000) */
    int max_concurrent;           /* per type (0 = 2) */
};

/* Registers "warmup", "verify" and "unload".  `o` is borrowed: the runners
 * read it, so it must outlive the scheduler (struct lyra_server holds it). */
int lyra_model_jobs_register(struct lyra_jobs *j, const struct lyra_model_jobs_options *o);

#endif
