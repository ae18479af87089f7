/* models.c — the model registry over HTTP:
 *   GET /models            every model the daemon knows, with state and metadata
 *   GET /models/{name}     one model (name or alias) with all its GGUF metadata
 *   GET /v1/models         valid models in OpenAI's list shape
 * Each listing first refreshes the registry, which re-reads only files whose
 * size or mtime changed, so a model copied into models.dir shows up at once.
 * State is the worker's (loading, loaded, stopping, failed) while one runs
 * or has just failed, else "available" for a valid file and "invalid"
 * (with the reason) for one that is not. */
#include <string.h>

#include "api/server.h"
#include "core/log.h"

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
    const char *state = lyra_manager_model_state(srv->manager, m->name);
    json_t *j = lyra_registry_model_to_json(served ? served : m, flags);
    if (j) {
        json_object_set_new(j, "state", json_string(state ? state : m->valid ? "available" : "invalid"));
        json_object_set_new(j, "file_changed", json_boolean(served && served != m));
    }
    lyra_registry_unref(served);
    return j;
}

void lyra_api_models_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    refresh(srv);
    const struct lyra_model **models = NULL;
    size_t n = 0;
    if (lyra_registry_list(srv->registry, &models, &n) < 0) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, with_state(srv, models[i], 0));
    lyra_registry_list_free(models, n);
    lyra_http_send_json(req, 200, json_pack("{s:o, s:s}", "models", list, "dir", lyra_registry_dir(srv->registry)));
}

void lyra_api_models_get(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    refresh(srv);
    const char *name = lyra_http_param(req, "name");
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        lyra_http_send_error(req, 404, "model_not_found", "model '%s' not found in %s or the configuration", name,
                             lyra_registry_dir(srv->registry));
        return;
    }
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
        lyra_http_send_json(req, 500, json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", "out of memory",
                                                "type", "server_error", "param", "code", "internal"));
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!models[i]->valid)
            continue;
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", models[i]->name, "object", "model",
                                              "created", (json_int_t)(models[i]->mtime_ns / 1000000000LL),
                                              "owned_by", "lyra"));
    }
    lyra_registry_list_free(models, n);
    lyra_http_send_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}
