/* models.c — the model registry and cache over HTTP:
 *   GET /models            every model the daemon knows, with state and metadata
 *                          (?state=loaded|loading|available|... filters)
 *   GET /models/{name}     one model (name or alias) with all its GGUF metadata
 *   POST /models/{name}/load     load it (waits until loaded)
 *   POST /models/{name}/unload   unload it (?force=true: even with requests running)
 *   POST /models/{name}/pin      pin it (never unloaded) and load it
 *   POST /models/{name}/unpin    unpin it
 *   GET /v1/models         valid models in OpenAI's list shape
 * Each listing first refreshes the registry, which re-reads only files whose
 * size or mtime changed, so a model copied into models.dir shows up at once.
 * State is the worker's (loading, loaded, stopping, failed) while one runs
 * or has just failed, else "available" for a valid file and "invalid"
 * (with the reason) for one that is not. */
#include <string.h>

#include <stdlib.h>

#include "api/infer.h"
#include "api/authz.h"
#include "api/server.h"
#include "core/log.h"
#include "core/util.h"

static void refresh(struct lyra_server *srv)
{
    struct lyra_err err = {0};
    if (lyra_registry_refresh(srv->registry, NULL, &err) < 0)
        lyra_log(LYRA_LOG_WARN, "models", NULL, NULL, "models dir: %s", err.msg);
}

/* A model as JSON with its state.  While a worker serves it, the metadata
 * is that of the file the worker loaded, even if the file was replaced
 * since ("file_changed": true until the worker restarts on the new one). */
static json_t *with_state(struct lyra_server *srv, const struct lyra_model *m, unsigned flags)
{
    const struct lyra_model *served = lyra_manager_served_model(srv->manager, m->name);
    json_t *info = lyra_manager_model_info(srv->manager, m->name);
    const char *state = json_string_value(json_object_get(info, "state"));
    json_t *j = lyra_registry_model_to_json(served ? served : m, flags);
    if (j) {
        json_object_update(j, info); /* pinned, pid, in_flight, idle_s, estimate/measured bytes, ... */
        json_object_set_new(j, "state", json_string(state ? state : m->valid ? "available" : "invalid"));
        json_object_set_new(j, "file_changed", json_boolean(served && served != m));
    }
    json_decref(info);
    lyra_registry_unref(served);
    return j;
}

/* The states a model can be listed in; a filter outside them is a typo
 * that would otherwise answer an empty list as if nothing matched. */
static bool known_state(const char *s)
{
    static const char *const states[] = {"loading", "loaded", "stopping", "failed", "available", "invalid"};
    for (size_t i = 0; i < sizeof states / sizeof *states; i++)
        if (strcmp(s, states[i]) == 0)
            return true;
    return false;
}

void lyra_api_models_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const char *want = lyra_http_query(req, "state");
    if (want && !known_state(want)) {
        lyra_http_send_error(
            req, 400, "invalid_parameter",
            "state must be one of loading, loaded, stopping, failed, available, invalid (got '%.*s')",
            (int)lyra_utf8_clip(want, 32), want);
        return;
    }
    refresh(srv);
    const struct lyra_model **models = NULL;
    size_t n = 0;
    if (lyra_registry_list(srv->registry, &models, &n) < 0) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!lyra_authz_may(req, srv, "models.read", models[i]->name))
            continue;
        json_t *j = with_state(srv, models[i], 0);
        if (want && j && strcmp(json_string_value(json_object_get(j, "state")) ?: "", want) != 0) {
            json_decref(j);
            continue;
        }
        json_array_append_new(list, j);
    }
    lyra_registry_list_free(models, n);
    lyra_http_send_json(req, 200,
                        json_pack("{s:o, s:s}", "models", list, "dir", lyra_registry_dir(srv->registry)));
}

void lyra_api_models_get(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    refresh(srv);
    const char *name = lyra_http_param(req, "name");
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        lyra_http_send_error(req, 404, "model_not_found", "model '%s' not found in %s or the configuration",
                             name, lyra_registry_dir(srv->registry));
        return;
    }
    if (lyra_authz_require(req, srv, "models.read", m->name))
        lyra_http_send_json(req, 200, with_state(srv, m, LYRA_REGISTRY_JSON_GGUF));
    lyra_registry_unref(m);
}

void lyra_api_openai_models(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    refresh(srv);
    const struct lyra_model **models = NULL;
    size_t n = 0;
    if (lyra_registry_list(srv->registry, &models, &n) < 0) {
        lyra_http_send_json(req, 500,
                            json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", "out of memory", "type",
                                      "server_error", "param", "code", "internal"));
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!models[i]->valid || !lyra_authz_may(req, srv, "models.read", models[i]->name))
            continue;
        json_array_append_new(
            data, json_pack("{s:s, s:s, s:I, s:s}", "id", models[i]->name, "object", "model", "created",
                            (json_int_t)(models[i]->mtime_ns / 1000000000LL), "owned_by", "lyra"));
    }
    lyra_registry_list_free(models, n);
    lyra_http_send_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

/* ---- POST /models/{name}/load|unload|pin|unpin --------------------- */

static json_t *load_full(const struct lyra_infer_result *r, void *ud)
{
    struct lyra_server *srv = ud;
    json_t *info = lyra_manager_model_info(srv->manager, r->model);
    json_t *body = json_pack("{s:s}", "model", r->model);
    if (body)
        json_object_update(body, info);
    json_decref(info);
    return body;
}

static json_t *error_body(const char *code, const char *message, int status, void *ud)
{
    return json_pack("{s:{s:s, s:s}}", "error", "code", code ? code : "internal", "message",
                     message ? message : "error");
}

static const struct lyra_infer_format load_format = {.full = load_full, .error = error_body};

/* The named model as the registry knows it, when the caller may act on
 * it with `permission` (its role's model patterns); otherwise NULL with an
 * answered 404 or 403. */
static const struct lyra_model *find_allowed(struct lyra_server *srv, struct lyra_http_req *req,
                                             const char *permission)
{
    refresh(srv);
    const char *name = lyra_http_param(req, "name");
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m)
        lyra_http_send_error(req, 404, "model_not_found", "model '%.*s' not found in %s or the configuration",
                             (int)lyra_utf8_clip(name, 128), name, lyra_registry_dir(srv->registry));
    else if (!lyra_authz_require(req, srv, permission, m->name)) {
        lyra_registry_unref(m);
        m = NULL;
    }
    return m;
}

/* Loads through the request path (queue, cache admission, GPU placement,
 * deadlines) with a job that ends when the worker is ready. */
static void start_load(struct lyra_server *srv, struct lyra_http_req *req, const struct lyra_model *m)
{
    struct lyra_infer_options o = {.model = m->name,
                                   .msg = json_pack("{s:s}", "type", "load"),
                                   .stream = false,
                                   .id_prefix = "load-",
                                   .fmt = &load_format,
                                   .ud = srv};
    lyra_infer_start(srv, req, &o);
}

void lyra_api_models_load(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const struct lyra_model *m = find_allowed(srv, req, "models.load");
    if (m)
        start_load(srv, req, m);
    lyra_registry_unref(m);
}

void lyra_api_models_unload(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    /* ?force= is checked first: a typo ("yes") must not quietly mean
     * "not forced". */
    const char *f = lyra_http_query(req, "force");
    bool force = f && (strcmp(f, "true") == 0 || strcmp(f, "1") == 0);
    if (f && !force && strcmp(f, "false") != 0 && strcmp(f, "0") != 0) {
        lyra_http_send_error(req, 400, "invalid_parameter", "force must be true, false, 1 or 0 (got '%.*s')",
                             (int)lyra_utf8_clip(f, 32), f);
        return;
    }
    const struct lyra_model *m = find_allowed(srv, req, "models.load");
    if (!m)
        return;
    bool was_loaded = false;
    /* An idle worker exits within milliseconds of its EOF; the bound is
     * the stop's own escalation (EOF, SIGTERM, SIGKILL). */
    int rc = lyra_manager_unload(srv->manager, m->name, force, srv->cfg->models.stop_timeout_s * 3000 + 1000,
                                 &was_loaded);
    if (rc == LYRA_EBUSY)
        lyra_http_send_json(req, 202,
                            json_pack("{s:s, s:s, s:b, s:s}", "model", m->name, "state", "draining",
                                      "was_loaded", 1, "message",
                                      "requests are running: it unloads when they end (?force=true "
                                      "stops it now)"));
    else if (rc == LYRA_EPERM)
        lyra_http_send_error(req, 409, "model_pinned",
                             "model '%s' is pinned: unpin it first (or ?force=true)", m->name);
    else if (rc == 0 || rc == LYRA_ETIMEOUT)
        lyra_http_send_json(req, 200,
                            json_pack("{s:s, s:s, s:b}", "model", m->name, "state",
                                      rc == 0 ? "available" : "stopping", "was_loaded", was_loaded));
    else
        lyra_http_send_error(req, 503, "shutting_down", "the server is shutting down");
    lyra_registry_unref(m);
}

static void pin(struct lyra_http_req *req, struct lyra_server *srv, bool on)
{
    const struct lyra_model *m = find_allowed(srv, req, "models.pin");
    if (!m)
        return;
    /* Pinning promises residency: for a file that cannot load, answer as
     * /load does rather than store a pin that every start would retry. */
    if (on && !m->valid) {
        lyra_http_send_error(req, 422, "model_invalid", "model '%s' cannot be used: %s", m->name,
                             m->error ? m->error : "invalid");
        lyra_registry_unref(m);
        return;
    }
    struct lyra_err err = {0};
    int rc = lyra_manager_pin(srv->manager, m->name, on, &err);
    if (rc < 0)
        lyra_http_send_error(req, rc == LYRA_ENOTFOUND ? 404 : 503,
                             rc == LYRA_ENOTFOUND ? "model_not_found" : "unavailable", "%s", err.msg);
    else if (on && m->valid)
        start_load(srv, req, m); /* a pinned model is resident */
    else {
        json_t *info = lyra_manager_model_info(srv->manager, m->name);
        json_t *body = json_pack("{s:s}", "model", m->name);
        json_object_update(body, info);
        json_decref(info);
        /* No worker: the state is the file's, as GET /models says it. */
        if (body && !json_string_value(json_object_get(body, "state")))
            json_object_set_new(body, "state", json_string(m->valid ? "available" : "invalid"));
        lyra_http_send_json(req, 200, body);
    }
    lyra_registry_unref(m);
}

void lyra_api_models_pin(struct lyra_http_req *req, void *ctx)
{
    pin(req, ctx, true);
}

void lyra_api_models_unpin(struct lyra_http_req *req, void *ctx)
{
    pin(req, ctx, false);
}
