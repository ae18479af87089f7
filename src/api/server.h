/* server.h — the daemon's composition root: struct lyra_server owns the
 * modules (store, event bus, HTTP server) and hands each what it uses.
 * Handlers receive the server as their ctx.
 *
 * Start-up order: the exposure checks (a non-loopback address without auth:
 * refused; the Host guard built),
 * home directory (created private, checked writable, locked against a
 * second daemon), database (created private, migrated; an unclean previous
 * session is detected), event bus (seq continues after the stored mark),
 * auth (principals and keys, the first admin's key, the audit log),
 * HTTP listener (bound, so a port in use fails here), then serving.  Any
 * failure is reported through err and everything opened so far is closed.
 *
 * Thread-safety: lyra_server_open/run/close from the main thread only;
 * handlers read the server from HTTP threads (its fields are set before
 * serving starts, `state` is atomic). */
#ifndef LYRA_SERVER_H
#define LYRA_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "api/evstream.h"
#include "api/metrics.h"
#include "auth/audit.h"
#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "core/config.h"
#include "core/conversations.h"
#include "core/error.h"
#include "core/events.h"
#include "core/store.h"
#include "core/trace.h"
#include "http/http.h"
#include "jobs/jobs.h"
#include "jobs/model_jobs.h"
#include "jobs/pull.h"
#include "models/manager.h"
#include "sys/gpu.h"
#include "sys/memory.h"
#include "sys/watchdog.h"
#include "models/watch.h"
#include "models/registry.h"
#include "sys/proc.h"

enum lyra_server_state {
    LYRA_SERVER_STARTING,
    LYRA_SERVER_READY,
    LYRA_SERVER_DRAINING,
};

struct lyra_server {
    const struct lyra_config *cfg;   /* borrowed */
    struct lyra_store *store;
    struct lyra_bus *bus;
    struct lyra_evlog *evlog;         /* every event also in the database, for replay across restarts */
    struct lyra_evstream *evstream;  /* GET /events/ws and GET /events (one loop thread) */
    struct lyra_http *http;
    struct lyra_hostcheck *hostcheck; /* the Host guard; NULL serves any Host */
    struct lyra_auth *auth;           /* principals, keys, roles (auth/auth.h) */
    struct lyra_audit *audit;         /* the append-only audit log (auth/audit.h) */
    struct lyra_ratelimit *auth_fail; /* back-off for failed authentication (auth/ratelimit.h) */
    struct lyra_ratelimit *audit_denials; /* bounds the audit rows of repeated denials per principal and address */
    const char *anonymous_role;       /* role of requests without a key; NULL = a key is required */
    struct lyra_registry *registry;
    struct lyra_manager *manager;
    /* Background jobs: created after the store and bus, started after the
     * manager (its types use it), freed before the manager stops. */
    struct lyra_jobs *jobs;
    struct lyra_model_jobs_options model_jobs;
    struct lyra_pull_options pull;     /* the "pull" job type's options (borrowed by it) */
    struct lyra_memsource *memsource; /* system memory (or LYRA_FAKE_MEMINFO's fake) */
    struct lyra_watchdog *watchdog;   /* NULL when watchdog.enabled is false */
    bool recovered;                   /* the previous run did not stop cleanly */
    struct lyra_gpu_source *gpus;     /* probed at start (or LYRA_FAKE_GPUS); NULL with gpu.enabled false */
    struct lyra_models_watch *models_watch; /* refreshes the registry when models.dir changes */
    struct lyra_trace_ring *traces;  /* recent request traces (GET /traces) */
    struct lyra_conv_claims *chat_turns; /* conversations with a /chat turn in flight */
    struct lyra_metrics *metrics;    /* GET /metrics; created before the manager */
    struct lyra_server_metrics m;    /* its families (api/metrics.h) */
    char session_id[40];
    int64_t started_us;              /* monotonic */
    int64_t started_wall_ms;
    atomic_int state;
    int lock_fd;                     /* flock on $LYRA_HOME/lyra.lock */
    char *state_file;                /* $LYRA_HOME/serve.json while serving */
    pthread_mutex_t sample_lock;     /* guards last_sample */
    struct lyra_proc_sample last_sample;
    uint64_t last_cpu_busy, last_cpu_total; /* /proc/stat at the previous /status (under sample_lock) */
};

/* Opens everything and binds the listener; does not serve yet. */
int lyra_server_open(struct lyra_server **out, const struct lyra_config *cfg, struct lyra_err *err);

/* Serves until one of `stop_signals` arrives (the caller has blocked them
 * in every thread), then stops with lyra_server_stop and returns 0. */
int lyra_server_run(struct lyra_server *srv, const sigset_t *stop_signals);

/* The orderly stop: stop accepting (new requests on kept-alive connections
 * get 503 and Connection: close), give requests in flight
 * server.drain_timeout_s (a second stop signal cuts that short), then end
 * every job and stop every worker, and let those last answers go out.
 * The HTTP server itself is stopped by lyra_server_close. */
void lyra_server_stop(struct lyra_server *srv, int sig, const sigset_t *stop_signals);

/* Closes everything; marks the session clean when `clean`.  NULL is a no-op. */
void lyra_server_close(struct lyra_server *srv, bool clean);

/* The route table (api/routes.c). */
extern const struct lyra_route lyra_routes[];
extern const size_t lyra_n_routes;

/* Handlers (api/system.c). */
void lyra_api_root(struct lyra_http_req *req, void *ctx);
void lyra_api_health(struct lyra_http_req *req, void *ctx);
void lyra_api_ready(struct lyra_http_req *req, void *ctx);
void lyra_api_status(struct lyra_http_req *req, void *ctx);
void lyra_api_traces(struct lyra_http_req *req, void *ctx);
/* Handlers (api/metrics.c). */
void lyra_api_metrics(struct lyra_http_req *req, void *ctx);
/* Handlers (api/events.c). */
void lyra_api_events_recent(struct lyra_http_req *req, void *ctx);
void lyra_api_events_publish(struct lyra_http_req *req, void *ctx);
void lyra_api_events_ws(struct lyra_http_req *req, void *ctx);
void lyra_api_events_sse(struct lyra_http_req *req, void *ctx);
/* Handlers (api/models.c). */
void lyra_api_models_list(struct lyra_http_req *req, void *ctx);
void lyra_api_models_get(struct lyra_http_req *req, void *ctx);
void lyra_api_models_load(struct lyra_http_req *req, void *ctx);
void lyra_api_models_pull(struct lyra_http_req *req, void *ctx);
void lyra_api_models_unload(struct lyra_http_req *req, void *ctx);
void lyra_api_models_pin(struct lyra_http_req *req, void *ctx);
void lyra_api_models_unpin(struct lyra_http_req *req, void *ctx);
void lyra_api_openai_models(struct lyra_http_req *req, void *ctx);
/* Handlers (api/jobs.c). */
void lyra_api_jobs_list(struct lyra_http_req *req, void *ctx);
void lyra_api_jobs_get(struct lyra_http_req *req, void *ctx);
void lyra_api_jobs_submit(struct lyra_http_req *req, void *ctx);
void lyra_api_jobs_cancel(struct lyra_http_req *req, void *ctx);
void lyra_api_models_warmup(struct lyra_http_req *req, void *ctx);
void lyra_api_models_verify(struct lyra_http_req *req, void *ctx);
/* Handlers (api/openai.c). */
void lyra_api_openai_chat(struct lyra_http_req *req, void *ctx);
void lyra_api_openai_completions(struct lyra_http_req *req, void *ctx);
void lyra_api_openai_embeddings(struct lyra_http_req *req, void *ctx);
/* Handlers (api/chat.c). */
void lyra_api_chat(struct lyra_http_req *req, void *ctx);
void lyra_api_conversations_list(struct lyra_http_req *req, void *ctx);
void lyra_api_conversations_get(struct lyra_http_req *req, void *ctx);
void lyra_api_conversations_delete(struct lyra_http_req *req, void *ctx);

void lyra_api_models_delete(struct lyra_http_req *req, void *ctx);
/* Deletes model m's file (api/audit.c; DELETE /models/{name} and Ollama's
 * /api/delete): refuses a models.entries model, a pinned or busy one and a
 * file outside models.dir; unloads an idle loaded one first; unlinks (a
 * symlink loses the link, its target stays); refreshes the registry and
 * publishes model.deleted.  0, or -1 with the answer's status, code and
 * message in d. */
struct lyra_model_delete {
    bool was_loaded;
    int status;
    const char *code; /* static */
    char msg[512];
};
int lyra_server_delete_model(struct lyra_server *srv, const struct lyra_model *m, struct lyra_model_delete *d);
/* Handlers (api/permissions.c): RBAC — the caller's grants, checks, grant
 * and revoke, users, keys, roles. */
void lyra_api_permissions_get(struct lyra_http_req *req, void *ctx);
void lyra_api_permissions_check(struct lyra_http_req *req, void *ctx);
void lyra_api_permissions_grant(struct lyra_http_req *req, void *ctx);
void lyra_api_permissions_revoke(struct lyra_http_req *req, void *ctx);
void lyra_api_users_list(struct lyra_http_req *req, void *ctx);
void lyra_api_users_add(struct lyra_http_req *req, void *ctx);
void lyra_api_users_remove(struct lyra_http_req *req, void *ctx);
void lyra_api_users_set_role(struct lyra_http_req *req, void *ctx);
void lyra_api_keys_list(struct lyra_http_req *req, void *ctx);
void lyra_api_keys_create(struct lyra_http_req *req, void *ctx);
void lyra_api_keys_revoke(struct lyra_http_req *req, void *ctx);
void lyra_api_roles_list(struct lyra_http_req *req, void *ctx);
void lyra_api_roles_create(struct lyra_http_req *req, void *ctx);
void lyra_api_roles_delete(struct lyra_http_req *req, void *ctx);
/* Handlers (api/audit.c). */
void lyra_api_audit_list(struct lyra_http_req *req, void *ctx);

double lyra_server_uptime_s(const struct lyra_server *srv);
const char *lyra_server_state_name(int state);

/* Starts loading a model without waiting (pinned and restored models at
 * start); a failure is logged. */
void lyra_server_preload(struct lyra_server *srv, const char *name);

#endif
