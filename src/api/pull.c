/* pull.c — POST /models/pull (see api/pull.h): the parameters are checked
 * here, before a job exists, so that a bad name or an existing model is a
 * 400/409 to the caller rather than a failed job; the download itself is
 * the job's (jobs/pull.c). */
#include "api/pull.h"

#include <string.h>

#include "api/server.h"

#include <stdio.h>

void lyra_api_models_pull_with(struct lyra_http_req *req, struct lyra_jobs *jobs,
                               const struct lyra_pull_options *po)
{
    json_t *body = NULL;
    if (lyra_http_read_json(req, &body) < 0)
        return;
    struct lyra_err err = {0};
    /* A local path makes the daemon open a file of its host: only for a
     * caller on this host (a remote one could probe or copy any file). */
    const char *src = json_string_value(json_object_get(body, "source"));
    if (src && !strstr(src, "://") && !lyra_http_peer_loopback(req)) {
        lyra_http_send_error(req, 403, "local_source_forbidden",
                             "a local path as source is accepted only from a client on this host; use http(s):// "
                             "or hf://");
        json_decref(body);
        return;
    }
    int rc = lyra_pull_check_params(po, body, &err);
    if (rc < 0) {
        bool exists = rc == LYRA_EEXISTS;
        lyra_http_send_error(req, exists ? 409 : 400, exists ? "model_exists" : "invalid_field", "%s",
                             err.msg);
        json_decref(body);
        return;
    }
    if (!jobs) {
        lyra_http_send_error(req, 503, "unavailable", "the job scheduler is not running");
        json_decref(body);
        return;
    }
    char id[40];
    rc = lyra_jobs_submit(jobs, "pull", body, id, &err); /* takes body */
    if (rc < 0) {
        lyra_http_send_error(req, rc == LYRA_ENOTFOUND ? 503 : lyra_err_http_status(rc),
                             rc == LYRA_ENOTFOUND ? "unavailable" : "internal", "cannot queue the pull: %s",
                             err.msg[0] ? err.msg : lyra_strerror(rc));
        return;
    }
    json_t *job = lyra_jobs_get(jobs, id);
    if (!job)
        job = json_pack("{s:s, s:s, s:s}", "id", id, "type", "pull", "state", "queued");
    char location[64];
    snprintf(location, sizeof location, "/jobs/%s", id);
    lyra_http_add_header(req, "Location", location);
    lyra_http_send_json(req, 202, json_pack("{s:o?}", "job", job));
}

void lyra_api_models_pull(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    lyra_api_models_pull_with(req, srv->jobs, &srv->pull);
}
