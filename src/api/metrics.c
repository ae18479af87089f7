/* metrics.c (api) — every metric family of the daemon, and GET /metrics.
 * docs/metrics.md describes each one; a family added here belongs there. */
#include "api/metrics.h"

#include "models/cache.h"

#include <stdlib.h>
#include <string.h>

#include "api/server.h"
#include "sys/proc.h"

#define N(a) (sizeof(a) / sizeof *(a))

/* Seconds from a fast answer to a long generation. */
static const double duration_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double ttft_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double rate_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};
static const double load_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double queue_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

/* At each scrape: this process's resident memory and CPU time. */
static void collect_process(struct lyra_metrics *reg, void *ud)
{
    struct lyra_server_metrics *sm = ud;
    struct lyra_proc_sample s;
    if (lyra_proc_self_sample(&s) == 0) {
        lyra_metric_set(sm->process_rss, NULL, (double)s.rss_bytes);
        lyra_metric_set(sm->process_cpu, NULL, (double)s.cpu_us / 1e6);
    }
}

int lyra_server_metrics_init(struct lyra_metrics *reg, struct lyra_server_metrics *out, struct lyra_err *err)
{
    memset(out, 0, sizeof *out);
    static const char *const http_labels[] = {"route", "method", "code", NULL};
    static const char *const route_model[] = {"route", "model", NULL};
    static const char *const model[] = {"model", NULL};
    static const char *const reason[] = {"reason", NULL};
    static const char *const version[] = {"version", NULL};
    const enum lyra_metric_type C = LYRA_METRIC_COUNTER, G = LYRA_METRIC_GAUGE, H = LYRA_METRIC_HISTOGRAM;
    struct {
        struct lyra_metric **slot;
        enum lyra_metric_type type;
        const char *name, *help;
        const char *const *labels;
        const double *buckets;
        size_t n_buckets;
    } defs[] = {
        {&out->http_requests, C, "lyra_http_requests_total",
         "HTTP responses sent, by route pattern (\"unmatched\" when no route matched), method and status "
         "code.",
         http_labels, NULL, 0},
        {&out->auth_failures, C, "lyra_auth_failures_total",
         "Requests refused by authentication or authorization, by reason (missing_key, malformed_key, "
         "invalid_key, expired_key, revoked_key, forbidden, model_forbidden, blocked).",
         reason, NULL, 0},
        {&out->request_duration, H, "lyra_request_duration_seconds",
         "Time from an inference request's start to its last frame (queue, load, prompt, generation).",
         route_model, duration_buckets, N(duration_buckets)},
        {&out->ttft, H, "lyra_time_to_first_token_seconds",
         "Time from an inference request's start to its first generated token.", model, ttft_buckets,
         N(ttft_buckets)},
        {&out->tokens_per_second, H, "lyra_tokens_per_second",
         "Generation rate (tokens per second) of each completed generation.", model, rate_buckets,
         N(rate_buckets)},
        {&out->generated_tokens, C, "lyra_generated_tokens_total", "Tokens generated (completion tokens).",
         model, NULL, 0},
        {&out->prompt_tokens, C, "lyra_prompt_tokens_total", "Prompt tokens of completed requests.", model,
         NULL, 0},
        {&out->load_seconds, H, "lyra_model_load_seconds", "Time to load a model into a worker.", model,
         load_buckets, N(load_buckets)},
        {&out->queue_wait, H, "lyra_queue_wait_seconds", "Time a request waited for a slot of its model.",
         model, queue_buckets, N(queue_buckets)},
        {&out->worker_restarts, C, "lyra_worker_restarts_total", "Workers that died and were started again.",
         model, NULL, 0},
        {&out->cache_hits, C, "lyra_cache_hits_total", "Requests whose model was already resident.", NULL,
         NULL, 0},
        {&out->cache_misses, C, "lyra_cache_misses_total", "Requests that had to load their model.", NULL,
         NULL, 0},
        {&out->cache_evictions, C, "lyra_cache_evictions_total",
         "Resident models unloaded, by reason (lru, budget, idle, watchdog, admin).", reason, NULL, 0},
        {&out->models_resident, G, "lyra_models_resident", "Models loaded in a worker now.", NULL, NULL, 0},
        {&out->memory_budget, G, "lyra_memory_budget_bytes", "Memory the model cache may use.", NULL, NULL,
         0},
        {&out->process_rss, G, "lyra_process_resident_memory_bytes", "Resident memory of the daemon process.",
         NULL, NULL, 0},
        {&out->process_cpu, C, "lyra_process_cpu_seconds_total",
         "User and system CPU time of the daemon process.", NULL, NULL, 0},
        {&out->up, G, "lyra_up", "1 while the daemon serves.", NULL, NULL, 0},
        {&out->build_info, G, "lyra_build_info", "Always 1; the version is in the label.", version, NULL, 0},
    };
    for (size_t i = 0; i < N(defs); i++) {
        *defs[i].slot = lyra_metrics_family(reg, defs[i].type, defs[i].name, defs[i].help, defs[i].labels,
                                            defs[i].buckets, defs[i].n_buckets);
        if (!*defs[i].slot)
            return lyra_err_set(err, LYRA_ENOMEM, "cannot register metric %s", defs[i].name);
    }
    const char *reasons[LYRA_EVICT_N];
    for (int r = 0; r < LYRA_EVICT_N; r++)
        reasons[r] = lyra_evict_reason_name(r);
    for (size_t i = 0; i < N(reasons); i++)
        lyra_metric_add(out->cache_evictions, (const char *const[]){reasons[i]}, 0);
    lyra_metric_set(out->up, NULL, 1);
    lyra_metric_set(out->build_info, (const char *const[]){LYRA_VERSION}, 1);
    collect_process(reg, out); /* real values before the first scrape too */
    if (lyra_metrics_add_collector(reg, collect_process, out) < 0)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    return 0;
}

void lyra_api_metrics(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    char *text = lyra_metrics_render(srv->metrics);
    if (!text) {
        lyra_http_send_error(req, 500, "internal", "out of memory while rendering the metrics");
        return;
    }
    lyra_http_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
}
