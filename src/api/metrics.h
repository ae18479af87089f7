/* metrics.h (api) — the daemon's metric families, defined in one place
 * (api/metrics.c, listed in docs/metrics.md), and GET /metrics.
 *
 * lyra_server_metrics_init registers every family in a registry and keeps
 * the pointers in a struct lyra_server_metrics, which the server holds as
 * srv->m; the code that observes a value calls lyra_metric_observe /
 * lyra_metric_add on the family it needs, e.g.
 *     lyra_metric_observe(srv->m.load_seconds, (const char *const[]){name}, s);
 * Label values are given in the order noted by each field.  A field is
 * NULL only if its registration failed (out of memory), and lyra_metric_*
 * on NULL are no-ops.
 *
 * Thread-safety: init from one thread before serving; the families are
 * then used from any thread (core/metrics.h). */
#ifndef LYRA_API_METRICS_H
#define LYRA_API_METRICS_H

#include "core/error.h"
#include "core/metrics.h"

/* Eviction reasons of lyra_cache_evictions_total{reason} are those of
 * models/cache.h (lyra_evict_reason_name); each is rendered (at 0) from the
 * start. */

struct lyra_server_metrics {
    /* HTTP layer (http/http.c): one per response queued. */
    struct lyra_metric *http_requests; /* counter {route, method, code} */
    struct lyra_metric *auth_failures; /* counter {reason}: 401/403/429 of the RBAC checks */
    /* Inference (api/infer.c): once per request, at its terminal frame. */
    struct lyra_metric *request_duration;  /* histogram {route, model}, seconds */
    struct lyra_metric *ttft;              /* histogram {model}, seconds */
    struct lyra_metric *tokens_per_second; /* histogram {model} */
    struct lyra_metric *generated_tokens;  /* counter {model} */
    struct lyra_metric *prompt_tokens;     /* counter {model} */
    /* The model manager (wired by its owner). */
    struct lyra_metric *load_seconds;    /* histogram {model}, seconds */
    struct lyra_metric *queue_wait;      /* histogram {model}, seconds */
    struct lyra_metric *worker_restarts; /* counter {model} */
    struct lyra_metric *cache_hits;      /* counter: a request found its model resident */
    struct lyra_metric *cache_misses;    /* counter: a request had to load its model */
    struct lyra_metric *cache_evictions; /* counter {reason}: LYRA_EVICT_* */
    struct lyra_metric *models_resident; /* gauge */
    struct lyra_metric *memory_budget;   /* gauge, bytes */
    /* Process (a collector in api/metrics.c, at each scrape). */
    struct lyra_metric *process_rss; /* gauge, bytes */
    struct lyra_metric *process_cpu; /* counter, seconds */
    struct lyra_metric *up;          /* gauge, 1 */
    struct lyra_metric *build_info;  /* gauge {version}, 1 */
};

/* Registers every family in reg, fills *out, sets lyra_up and
 * lyra_build_info, and adds the process collector.  reg is borrowed; the
 * pointers in *out live as long as reg. */
int lyra_server_metrics_init(struct lyra_metrics *reg, struct lyra_server_metrics *out, struct lyra_err *err);

#endif
