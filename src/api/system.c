/* system.c — GET /, /health, /health/ready and /status. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/server.h"
#include "core/util.h"

const char *lyra_server_state_name(int state)
{
    switch (state) {
    case LYRA_SERVER_STARTING: return "starting";
    case LYRA_SERVER_READY: return "ready";
    case LYRA_SERVER_DRAINING: return "draining";
    }
    return "unknown";
}

double lyra_server_uptime_s(const struct lyra_server *srv)
{
    return (double)(lyra_now_us() - srv->started_us) / 1e6;
}

void lyra_api_root(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    lyra_http_send_json(req, 200,
                        json_pack("{s:s, s:s, s:s, s:s, s:f}", "name", "Lyra", "version", LYRA_VERSION,
                                  "status", lyra_server_state_name(atomic_load(&srv->state)), "session_id",
                                  srv->session_id, "uptime_s", lyra_server_uptime_s(srv)));
}

/* Liveness: answers as long as the process serves HTTP at all. */
void lyra_api_health(struct lyra_http_req *req, void *ctx)
{
    static const char body[] = "{\"status\":\"ok\"}";
    char *copy = malloc(sizeof body);
    if (copy)
        memcpy(copy, body, sizeof body);
    lyra_http_send(req, 200, "application/json", copy, copy ? sizeof body - 1 : 0);
}

/* Readiness: 503 while starting or draining, so a load balancer stops
 * sending before the daemon stops answering. */
void lyra_api_ready(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    int state = atomic_load(&srv->state);
    if (state != LYRA_SERVER_READY) {
        lyra_http_add_header(req, "Retry-After", "1");
        lyra_http_send_json(req, 503, json_pack("{s:s}", "status", lyra_server_state_name(state)));
        return;
    }
    lyra_http_send_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

void lyra_api_status(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    struct lyra_proc_sample now = {0}, before;
    lyra_proc_self_sample(&now);
    /* CPU % over the time since the previous /status (or since start). */
    pthread_mutex_lock(&srv->sample_lock);
    before = srv->last_sample;
    srv->last_sample = now;
    pthread_mutex_unlock(&srv->sample_lock);
    uint64_t mem_total = 0, mem_avail = 0;
    lyra_sys_memory(&mem_total, &mem_avail);
    char started[40];
    lyra_format_ts(srv->started_wall_ms, started, sizeof started);

    json_t *body = json_pack(
        "{s:s, s:s, s:s, s:f, s:{s:s, s:s, s:i}, s:{s:i, s:f, s:I, s:i}, s:{s:I, s:I, s:i}, s:{s:I}, "
        "s:{s:i}}",
        "name", "Lyra", "version", LYRA_VERSION, "status", lyra_server_state_name(atomic_load(&srv->state)),
        "uptime_s", lyra_server_uptime_s(srv),
        "session", "id", srv->session_id, "started", started, "pid", (int)getpid(),
        "process", "pid", (int)getpid(), "cpu_percent", lyra_proc_cpu_percent(&before, &now), "rss_bytes",
        (json_int_t)now.rss_bytes, "threads", now.threads,
        "memory", "total_bytes", (json_int_t)mem_total, "available_bytes", (json_int_t)mem_avail, "cpus",
        (int)sysconf(_SC_NPROCESSORS_ONLN),
        "events", "last_seq", (json_int_t)lyra_bus_last_seq(srv->bus),
        "http", "in_flight", lyra_http_in_flight(srv->http));
    /* Numbering and the replay ring, and turns holding their conversation. */
    struct lyra_bus_stats bs;
    lyra_bus_stats(srv->bus, &bs);
    json_t *ev = json_object_get(body, "events");
    json_object_set_new(ev, "reserved_through", json_integer((json_int_t)bs.reserved_through));
    json_object_set_new(ev, "reservation_failing", json_boolean(bs.failing));
    json_object_set_new(ev, "reservation_failures", json_integer((json_int_t)bs.reservation_failures));
    json_object_set_new(ev, "unreserved", json_integer((json_int_t)bs.unreserved));
    json_object_set_new(ev, "dropped", json_integer((json_int_t)bs.dropped));
    json_object_set_new(ev, "first_seq", json_integer((json_int_t)bs.first_seq));
    json_object_set_new(ev, "ring_count", json_integer((json_int_t)bs.ring_count));
    json_object_set_new(ev, "ring_bytes", json_integer((json_int_t)bs.ring_bytes));
    json_object_set_new(
        body, "chat",
        json_pack("{s:I}", "turns_in_flight", (json_int_t)lyra_conv_claims_count(srv->chat_turns)));
    /* Resident models: state, pid, memory, slots, requests in flight. */
    json_object_set_new(body, "models", lyra_manager_status(srv->manager));
    /* The cache (resident, budget, hits, misses, evictions), queues per
     * model, fallbacks and the watchdog's level. */
    json_t *cache = lyra_manager_cache_status(srv->manager);
    json_object_update(body, cache);
    json_decref(cache);
    lyra_http_send_json(req, 200, body);
}

/* GET /traces?limit=N&id=REQUEST_OR_TRACE_ID — recent request traces,
 * newest first. */
void lyra_api_traces(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const char *ls = lyra_http_query(req, "limit");
    long limit = 100;
    if (ls) {
        char *end;
        limit = strtol(ls, &end, 10);
        if (*end || limit < 1 || limit > 1000) {
            lyra_http_send_error(req, 400, "invalid_parameter", "limit must be an integer from 1 to 1000");
            return;
        }
    }
    lyra_http_send_json(req, 200, json_pack("{s:o}", "traces",
                                            lyra_trace_list(srv->traces, (size_t)limit, lyra_http_query(req, "id"))));
}
