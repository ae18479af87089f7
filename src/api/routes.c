/* routes.c — every HTTP endpoint in one table: method, path, handler and the
 * permission a caller needs ("" = public).  Adding an endpoint touches this
 * table and the file of its resource. */
#include "api/server.h"

const struct lyra_route lyra_routes[] = {
    {"GET", "/", lyra_api_root, ""},
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
    {"POST", "/models/pull", lyra_api_models_pull, "models.manage"},
    {"POST", "/models/{name}/load", lyra_api_models_load, "models.manage"},
    {"POST", "/models/{name}/unload", lyra_api_models_unload, "models.manage"},
    {"POST", "/models/{name}/pin", lyra_api_models_pin, "models.manage"},
    {"POST", "/models/{name}/unpin", lyra_api_models_unpin, "models.manage"},
    {"POST", "/models/{name}/warmup", lyra_api_models_warmup, "jobs.manage"},
    {"POST", "/models/{name}/verify", lyra_api_models_verify, "jobs.manage"},
    {"GET", "/jobs", lyra_api_jobs_list, "jobs.read"},
    {"POST", "/jobs", lyra_api_jobs_submit, "jobs.manage"},
    {"GET", "/jobs/{id}", lyra_api_jobs_get, "jobs.read"},
    {"POST", "/jobs/{id}/cancel", lyra_api_jobs_cancel, "jobs.manage"},
    {"GET", "/v1/models", lyra_api_openai_models, "models.read"},
    {"POST", "/v1/chat/completions", lyra_api_openai_chat, "inference"},
    {"POST", "/v1/completions", lyra_api_openai_completions, "inference"},
    {"POST", "/v1/embeddings", lyra_api_openai_embeddings, "inference"},
    {"POST", "/chat", lyra_api_chat, "chat"},
    {"GET", "/conversations", lyra_api_conversations_list, "conversations.read"},
    {"GET", "/conversations/{id}", lyra_api_conversations_get, "conversations.read"},
    {"DELETE", "/conversations/{id}", lyra_api_conversations_delete, "conversations.write"},
};
const size_t lyra_n_routes = sizeof lyra_routes / sizeof *lyra_routes;
