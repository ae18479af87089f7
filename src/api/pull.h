/* pull.h — POST /models/pull: validates {source, name?, sha256?} and queues
 * a "pull" job (jobs/pull.h).
 *
 * Written against the job scheduler and the pull options rather than
 * struct lyra_server; the route's handler, lyra_api_models_pull (server.h),
 * passes srv->jobs and srv->pull.
 *
 * Thread-safety: runs on any HTTP thread (the scheduler is thread-safe;
 * the options are read-only). */
#ifndef LYRA_API_PULL_H
#define LYRA_API_PULL_H

#include "http/http.h"
#include "jobs/jobs.h"
#include "jobs/pull.h"

/* Answers the request: 202 {"job": {...}} with Location: /jobs/ID; 400
 * invalid_field (bad JSON, a bad field: the message names it), 409
 * model_exists (NAME.gguf is already in models.dir), 503 unavailable (no
 * scheduler, or no "pull" type registered).  jobs and po are borrowed;
 * jobs may be NULL (503). */
void lyra_api_models_pull_with(struct lyra_http_req *req, struct lyra_jobs *jobs,
                               const struct lyra_pull_options *po);

#endif
