/* routes.c — every HTTP endpoint in one table: method, path, handler and the
 * permission a caller needs (auth/auth.h has the catalogue):
 *   ""      public: no credentials needed or checked (the health probes);
 *   "self"  any authenticated caller (the anonymous principal included when
 *           anonymous access is on);
 *   other   that permission, checked before the handler runs (default deny:
 *           an unknown permission name is held by admin alone).
 * Handlers that act on one model also check the caller's model patterns.
 * Adding an endpoint touches this table and the file of its resource. */
#include "api/ollama.h"
#include "api/server.h"
#include "api/ui.h"

const struct lyra_route lyra_routes[] = {
    {"GET", "/", lyra_api_root, "self"},
    {"GET", "/health", lyra_api_health, ""},
    {"GET", "/health/ready", lyra_api_ready, ""},
    {"GET", "/status", lyra_api_status, "status.read"},
    {"GET", "/traces", lyra_api_traces, "status.read"},
    {"GET", "/metrics", lyra_api_metrics, "metrics.read"},
    {"GET", "/events/recent", lyra_api_events_recent, "events.read"},
    {"POST", "/events", lyra_api_events_publish, "events.publish"},
    {"GET", "/events", lyra_api_events_sse, "events.read"},
    {"GET", "/events/ws", lyra_api_events_ws, "events.read"},
    {"GET", "/models", lyra_api_models_list, "models.read"},
    {"GET", "/models/{name}", lyra_api_models_get, "models.read"},
    {"DELETE", "/models/{name}", lyra_api_models_delete, "models.delete"},
    {"POST", "/models/pull", lyra_api_models_pull, "models.pull"},
    {"POST", "/models/{name}/load", lyra_api_models_load, "models.load"},
    {"POST", "/models/{name}/unload", lyra_api_models_unload, "models.load"},
    {"POST", "/models/{name}/pin", lyra_api_models_pin, "models.pin"},
    {"POST", "/models/{name}/unpin", lyra_api_models_unpin, "models.pin"},
    {"POST", "/models/{name}/warmup", lyra_api_models_warmup, "models.load"},
    {"POST", "/models/{name}/verify", lyra_api_models_verify, "models.load"},
    {"GET", "/jobs", lyra_api_jobs_list, "jobs.read"},
    {"POST", "/jobs", lyra_api_jobs_submit, "jobs.submit"},
    {"GET", "/jobs/{id}", lyra_api_jobs_get, "jobs.read"},
    {"POST", "/jobs/{id}/cancel", lyra_api_jobs_cancel, "jobs.cancel"},
    {"GET", "/v1/models", lyra_api_openai_models, "models.read"},
    {"POST", "/v1/chat/completions", lyra_api_openai_chat, "chat"},
    {"POST", "/v1/completions", lyra_api_openai_completions, "chat"},
    {"POST", "/v1/embeddings", lyra_api_openai_embeddings, "chat"},
    {"POST", "/chat", lyra_api_chat, "chat"},
    {"GET", "/conversations", lyra_api_conversations_list, "conversations.read"},
    {"GET", "/conversations/{id}", lyra_api_conversations_get, "conversations.read"},
    {"DELETE", "/conversations/{id}", lyra_api_conversations_delete, "conversations.write"},
    /* RBAC (api/permissions.c) */
    {"GET", "/permissions", lyra_api_permissions_get, "self"},
    {"GET", "/permissions/check/{permission}", lyra_api_permissions_check, "self"},
    {"POST", "/permissions/grant", lyra_api_permissions_grant, "permissions.manage"},
    {"POST", "/permissions/revoke", lyra_api_permissions_revoke, "permissions.manage"},
    {"GET", "/users", lyra_api_users_list, "permissions.manage"},
    {"POST", "/users", lyra_api_users_add, "permissions.manage"},
    {"DELETE", "/users/{name}", lyra_api_users_remove, "permissions.manage"},
    {"POST", "/users/{name}/role", lyra_api_users_set_role, "permissions.manage"},
    {"GET", "/keys", lyra_api_keys_list, "permissions.manage"},
    {"POST", "/keys", lyra_api_keys_create, "permissions.manage"},
    {"DELETE", "/keys/{id}", lyra_api_keys_revoke, "permissions.manage"},
    {"GET", "/roles", lyra_api_roles_list, "permissions.manage"},
    {"POST", "/roles", lyra_api_roles_create, "permissions.manage"},
    {"DELETE", "/roles/{name}", lyra_api_roles_delete, "permissions.manage"},
    {"GET", "/audit", lyra_api_audit_list, "audit.read"},
    /* The web dashboard (api/ui.c): public, the page holds no data and every
     * call it makes sends the user's key. */
    {"GET", "/ui", lyra_api_ui_index, ""},
    {"GET", "/ui/", lyra_api_ui_index, ""},
    {"GET", "/ui/{file}", lyra_api_ui_file, ""},
    /* Ollama-compatible API (api/ollama.c; HEAD / is GET / above) */
    {"POST", "/api/chat", lyra_api_ollama_chat, "chat"},
    {"POST", "/api/generate", lyra_api_ollama_generate, "chat"},
    {"POST", "/api/embed", lyra_api_ollama_embed, "chat"},
    {"POST", "/api/embeddings", lyra_api_ollama_embeddings, "chat"},
    {"GET", "/api/tags", lyra_api_ollama_tags, "models.read"},
    {"GET", "/api/ps", lyra_api_ollama_ps, "models.read"},
    {"POST", "/api/show", lyra_api_ollama_show, "models.read"},
    {"POST", "/api/pull", lyra_api_ollama_pull, "models.pull"},
    {"DELETE", "/api/delete", lyra_api_ollama_delete, "models.delete"},
    {"GET", "/api/version", lyra_api_ollama_version, "self"},
};
const size_t lyra_n_routes = sizeof lyra_routes / sizeof *lyra_routes;
