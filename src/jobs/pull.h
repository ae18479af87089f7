/* pull.h — the "pull" job type: fetches a GGUF model into models.dir.
 *
 * Params {source, name?, sha256?}.  Sources:
 *   http:// or https:// URL           downloaded with libcurl
 *   hf://ORG/REPO/PATH/FILE.gguf      {hf_endpoint}/ORG/REPO/resolve/main/PATH/FILE.gguf,
 *                                     with "Authorization: Bearer TOKEN" when a token is
 *                                     set (the token is never logged nor put in an event)
 *   anything else                     a local file path, copied
 * NAME is params.name, else the file name without ".gguf".
 *
 * A download goes to models_dir/.partial/NAME.gguf.part, with a sidecar
 * NAME.gguf.part.json {url, bytes, etag, last_modified} that is also saved
 * as the job's resume state (ctx->save_resume).  A later run of the job
 * (after a restart) or a new pull of the same source and name continues it
 * with a Range request (If-Range: the validator saved); a server that
 * answers 200 instead of 206 sends the whole file again and the download
 * restarts from zero.  A dropped connection is retried (Range) a few times
 * while it makes progress.
 *
 * Before any byte is written the free space of models.dir is checked
 * (statvfs) against the size still to come plus a reserve (1 GiB or 5 % of
 * the file system, whichever is larger): a file that does not fit is
 * refused.  When done: sha256 checked (when given), GGUF validated
 * (models/gguf.h), fsync, atomic rename into models_dir/NAME.gguf (never
 * over an existing file), fsync of the directory, registry refresh, then a
 * `model.added` event {name, path, bytes, sha256, source}.
 *
 * Failures (job error message; code):
 *   not GGUF              partial removed ("not a GGUF model: ...", LYRA_EPARSE)
 *   wrong sha256          partial removed (LYRA_EINVAL)
 *   disk full on write    partial KEPT for resume, the message says so (LYRA_EIO)
 *   not enough space      refused before writing (LYRA_ETOOBIG)
 *   HTTP 4xx/5xx          "HTTP 404 from URL" (LYRA_EIO); partial kept
 *   stalled transfer      below 1 KiB/s for low_speed_time_s (LYRA_ETIMEOUT); partial kept
 *   cancelled             LYRA_EUNAVAILABLE (jobs.h), partial kept
 *   NAME.gguf exists      LYRA_EEXISTS; a pull of NAME already running: LYRA_EBUSY
 *
 * Thread-safety: lyra_pull_run may run on several threads at once (two
 * pulls of the same NAME exclude each other with a lock on the partial).
 * libcurl must have been initialised (curl_global_init) before threads
 * start: lyra_pull_register does it. */
#ifndef LYRA_PULL_H
#define LYRA_PULL_H

#include <jansson.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"
#include "jobs/jobs.h"

struct lyra_registry;

#define LYRA_PULL_NAME_MAX 128 /* bytes in a model name */
#define LYRA_PULL_HF_ENDPOINT "https://huggingface.co"

struct lyra_pull_options {
    const char *models_dir;         /* required */
    struct lyra_registry *registry; /* refreshed after a pull; NULL = none */
    struct lyra_bus *bus;           /* model.added goes here; NULL = none */
    const char *hf_token;           /* NULL = no Authorization header (the daemon passes env HF_TOKEN) */
    const char *hf_endpoint;        /* NULL: env LYRA_HF_ENDPOINT, else LYRA_PULL_HF_ENDPOINT */
    /* Tuning, 0 = the default. */
    uint64_t min_free_bytes; /* free space to keep in models.dir; default max(1 GiB, 5 %) */
    int low_speed_time_s;    /* a transfer below 1 KiB/s this long fails; default 60 */
    int connect_timeout_s;   /* default 30 */
    int max_retries;         /* retries of a dropped transfer that made progress; default 5 */
    int retry_delay_ms;      /* before a retry, times the attempt number; default 1000 */
};

/* Registers the "pull" type (resumable, up to 2 at once) on `jobs`.  `o`
 * and the strings it points to are borrowed and must outlive `jobs` (the
 * server keeps them in its struct).  Initialises libcurl.  Returns 0, or a
 * negative LYRA_E* with err set.  Call from the main thread before
 * lyra_jobs_start. */
int lyra_pull_register(struct lyra_jobs *jobs, const struct lyra_pull_options *o, struct lyra_err *err);

/* Checks params before a job is queued, for POST /models/pull: `source` a
 * non-empty string, `name` (given or derived) without '/', not starting
 * with '.', at most LYRA_PULL_NAME_MAX bytes, valid UTF-8, `sha256` 64 hex
 * digits when present, no other keys, and models_dir/NAME.gguf not there
 * yet.  Returns 0, LYRA_EINVAL (HTTP 400) or LYRA_EEXISTS (409) with err
 * saying which field is wrong.  `o` may be NULL (no existence check). */
int lyra_pull_check_params(const struct lyra_pull_options *o, const json_t *params, struct lyra_err *err);

/* The model name a source gives ("hf://a/b/c.Q4.gguf" -> "c.Q4") into out
 * (cap bytes).  Returns 0 or LYRA_EINVAL (nothing usable, or too long). */
int lyra_pull_default_name(const char *source, char *out, size_t cap);

/* The URL to fetch for `source`: an http(s) URL as is, hf:// resolved on
 * `hf_endpoint` (NULL: env LYRA_HF_ENDPOINT, else huggingface.co).  *url
 * gets a malloc'd string (caller frees), NULL for a local path.  Returns 0,
 * LYRA_EINVAL for a malformed hf:// source, LYRA_ENOMEM. */
int lyra_pull_resolve(const char *source, const char *hf_endpoint, char **url, struct lyra_err *err);

/* The runner (lyra_job_run_fn); ud is the const struct lyra_pull_options *.
 * *result on success: {name, path, bytes, sha256, source, resumed_from}
 * (resumed_from: bytes of an earlier partial that were kept, 0 if none). */
int lyra_pull_run(struct lyra_job_ctx *ctx, json_t **result, struct lyra_err *err, void *ud);

#endif
