/* jobs.c — background jobs over HTTP (jobs/jobs.h):
 *   GET  /jobs?state=&type=&limit=   jobs, newest first (limit 1..10000, default 100)
 *   GET  /jobs/{id}                  one job (404 job_not_found)
 *   POST /jobs {type, params}        queues a job of a type clients may submit
 *                                    directly (warmup, verify, unload) → 202
 *   POST /jobs/{id}/cancel           cancels a queued or running job (404, 409
 *                                    job_finished when it already ended)
 *   POST /models/{name}/warmup|verify → 202 with the job
 * A 202 carries the job as GET /jobs/{id} shows it, and Location: /jobs/{id}. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/authz.h"
#include "api/server.h"
#include "core/util.h"

/* Types a client may submit through POST /jobs; others (a pull) have their
 * own endpoint with its own checks. */
static bool submittable(const char *type)
{
    static const char *const types[] = {"warmup", "verify", "unload"};
    for (size_t i = 0; type && i < sizeof types / sizeof *types; i++)
        if (strcmp(type, types[i]) == 0)
            return true;
    return false;
}

static bool known_state(const char *s)
{
    static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    for (size_t i = 0; i < sizeof states / sizeof *states; i++)
        if (strcmp(s, states[i]) == 0)
            return true;
    return false;
}

static bool have_jobs(struct lyra_server *srv, struct lyra_http_req *req)
{
    if (srv->jobs)
        return true;
    lyra_http_send_error(req, 503, "unavailable", "the job scheduler is not running");
    return false;
}

/* Answers a submit: 202 with the job, or the error. */
static void answer_submit(struct lyra_server *srv, struct lyra_http_req *req, int rc, const char *id,
                          const struct lyra_err *err)
{
    if (rc < 0) {
        int status = rc == LYRA_EINVAL ? 400 : rc == LYRA_ENOTFOUND ? 400 : lyra_err_http_status(rc);
        const char *code = rc == LYRA_EINVAL         ? "invalid_parameter"
                           : rc == LYRA_ENOTFOUND    ? "unknown_job_type"
                           : rc == LYRA_EUNAVAILABLE ? "shutting_down"
                                                     : "internal";
        lyra_http_send_error(req, status, code, "%s", err->msg[0] ? err->msg : lyra_strerror(rc));
        return;
    }
    json_t *job = lyra_jobs_get(srv->jobs, id);
    char loc[64];
    lyra_fmt(loc, sizeof loc, "/jobs/%s", id);
    lyra_http_add_header(req, "Location", loc);
    lyra_http_send_json(req, 202, job ? job : json_pack("{s:s, s:s}", "id", id, "state", "queued"));
}

void lyra_api_jobs_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_jobs(srv, req))
        return;
    const char *state = lyra_http_query(req, "state");
    const char *type = lyra_http_query(req, "type");
    const char *limit_s = lyra_http_query(req, "limit");
    if (state && !known_state(state)) {
        lyra_http_send_error(
            req, 400, "invalid_parameter",
            "state must be one of queued, running, succeeded, failed, cancelled (got '%.*s')",
            (int)lyra_utf8_clip(state, 32), state);
        return;
    }
    long limit = 100;
    if (limit_s) {
        char *end;
        errno = 0;
        limit = strtol(limit_s, &end, 10);
        if (errno || *end || !*limit_s || limit < 1 || limit > 10000) {
            lyra_http_send_error(req, 400, "invalid_parameter", "limit must be an integer from 1 to 10000");
            return;
        }
    }
    json_t *list = lyra_jobs_list(srv->jobs, state, type && *type ? type : NULL, (int)limit);
    if (!list) {
        lyra_http_send_error(req, 500, "internal", "the jobs cannot be read");
        return;
    }
    lyra_http_send_json(req, 200, json_pack("{s:o}", "jobs", list));
}

void lyra_api_jobs_get(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_jobs(srv, req))
        return;
    const char *id = lyra_http_param(req, "id");
    json_t *job = lyra_jobs_get(srv->jobs, id);
    if (!job) {
        lyra_http_send_error(req, 404, "job_not_found", "job '%.*s' not found", (int)lyra_utf8_clip(id, 64),
                             id);
        return;
    }
    lyra_http_send_json(req, 200, job);
}

void lyra_api_jobs_cancel(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_jobs(srv, req))
        return;
    const char *id = lyra_http_param(req, "id");
    struct lyra_err err = {0};
    int rc = lyra_jobs_cancel(srv->jobs, id, &err);
    if (rc == LYRA_ENOTFOUND) {
        lyra_http_send_error(req, 404, "job_not_found", "%s", err.msg);
        return;
    }
    if (rc == LYRA_EEXISTS) {
        lyra_http_send_error(req, 409, "job_finished", "%s", err.msg);
        return;
    }
    if (rc < 0) {
        lyra_http_send_error(req, lyra_err_http_status(rc), "internal", "%s", err.msg);
        return;
    }
    /* A running job ends once its runner sees the cancel (runners check
     * every 100 ms or so): wait a little for that, so the answer usually
     * shows the end; a runner slower than that answers "running". */
    json_t *job = lyra_jobs_get(srv->jobs, id);
    for (int i = 0;
         i < 40 && job && strcmp(json_string_value(json_object_get(job, "state")) ?: "", "running") == 0;
         i++) {
        json_decref(job);
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        job = lyra_jobs_get(srv->jobs, id);
    }
    lyra_http_send_json(req, 200, job ? job : json_pack("{s:s}", "id", id));
}

void lyra_api_jobs_submit(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_jobs(srv, req))
        return;
    json_t *body = NULL;
    if (lyra_http_read_json(req, &body) < 0)
        return;
    const char *type = json_string_value(json_object_get(body, "type"));
    json_t *params = json_object_get(body, "params");
    if (!json_is_object(body) || !type) {
        lyra_http_send_error(req, 400, "invalid_request",
                             "the body must be {\"type\": \"...\", \"params\": {...}}");
    } else if (!submittable(type)) {
        lyra_http_send_error(req, 400, "unknown_job_type",
                             "jobs of type '%.*s' cannot be submitted here (warmup, verify, unload)",
                             (int)lyra_utf8_clip(type, 32), type);
    } else if (params && !json_is_object(params)) {
        lyra_http_send_error(req, 400, "invalid_parameter", "params must be an object");
    } else if (!lyra_authz_require(req, srv, "models.load",
                                   json_string_value(json_object_get(params, "model")) ?: "")) {
        /* every submittable type acts on a model: the caller needs models.load for it */
    } else {
        char id[40];
        struct lyra_err err = {0};
        int rc = lyra_jobs_submit(srv->jobs, type, params ? json_incref(params) : json_object(), id, &err);
        answer_submit(srv, req, rc, id, &err);
    }
    json_decref(body);
}

/* POST /models/{name}/warmup|verify: the name resolved by the registry
 * (an alias becomes its model), 404 for an unknown one. */
static void model_job(struct lyra_http_req *req, struct lyra_server *srv, const char *type)
{
    if (!have_jobs(srv, req))
        return;
    const char *name = lyra_http_param(req, "name");
    struct lyra_err err = {0};
    if (lyra_registry_refresh(srv->registry, NULL, &err) < 0)
        err.msg[0] = '\0'; /* a scan failure is logged by the listing; the lookup still answers */
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        lyra_http_send_error(req, 404, "model_not_found", "model '%.*s' not found in %s or the configuration",
                             (int)lyra_utf8_clip(name, 128), name, lyra_registry_dir(srv->registry));
        return;
    }
    if (!lyra_authz_require(req, srv, "models.load", m->name)) {
        lyra_registry_unref(m);
        return;
    }
    char id[40];
    int rc = lyra_jobs_submit(srv->jobs, type, json_pack("{s:s}", "model", m->name), id, &err);
    lyra_registry_unref(m);
    answer_submit(srv, req, rc, id, &err);
}

void lyra_api_models_warmup(struct lyra_http_req *req, void *ctx)
{
    model_job(req, ctx, "warmup");
}

void lyra_api_models_verify(struct lyra_http_req *req, void *ctx)
{
    model_job(req, ctx, "verify");
}
