/* system.c — GET /, /health, /health/ready and /status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "api/server.h"
#include "core/util.h"

/* A load slower than this is reported in /status warnings[]. */
#define LYRA_SLOW_LOAD_MS 30000.0

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
/* Liveness, public.  auth_required tells a client (the dashboard) whether
 * it must sign in before anything else answers — what any request's 401
 * would say anyway. */
void lyra_api_health(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    static const char open_body[] = "{\"status\":\"ok\",\"auth_required\":false}";
    static const char keyed_body[] = "{\"status\":\"ok\",\"auth_required\":true}";
    const char *body = srv && srv->auth && !srv->anonymous_role ? keyed_body : open_body;
    size_t len = strlen(body);
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, body, len + 1);
    lyra_http_send(req, 200, "application/json", copy, copy ? len : 0);
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

/* The system's CPU time from /proc/stat's first line: busy and total
 * jiffies.  False when it cannot be read. */
static bool system_cpu(uint64_t *busy, uint64_t *total)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return false;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7]);
    fclose(f);
    if (n < 4)
        return false;
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    *busy = *total - v[3] - v[4]; /* idle and iowait */
    return true;
}

/* Proactive alerts: what an operator should look at now. */
static json_t *warnings(struct lyra_server *srv, const json_t *models, const char *level)
{
    json_t *w = json_array();
    if (level && strcmp(level, "ok") != 0)
        json_array_append_new(w, json_pack("{s:s, s:s, s:s}", "code", "memory_high", "level", level, "message",
                                           strcmp(level, "critical") == 0
                                               ? "memory is critically low: new loads are refused and idle models unloaded"
                                               : "memory use is above watchdog.warn_percent: idle models are unloaded"));
    struct statvfs vfs;
    const char *dir = lyra_registry_dir(srv->registry);
    if (dir && statvfs(dir, &vfs) == 0 && vfs.f_blocks) {
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize, total = (uint64_t)vfs.f_blocks * vfs.f_frsize;
        if (avail < ((uint64_t)1 << 30) || avail < total / 20)
            json_array_append_new(w, json_pack("{s:s, s:s, s:I, s:s}", "code", "models_disk_low", "path", dir,
                                               "available_bytes", (json_int_t)avail, "message",
                                               "the models directory has less than 1 GiB or 5% free: downloads fail"));
    }
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m) {
        const char *name = json_string_value(json_object_get(m, "name"));
        double load_ms = json_number_value(json_object_get(m, "load_ms"));
        if (load_ms > LYRA_SLOW_LOAD_MS)
            json_array_append_new(w, json_pack("{s:s, s:s, s:f, s:s}", "code", "slow_load", "model", name, "load_ms",
                                               load_ms, "message", "the model took more than 30 s to load"));
        if (json_integer_value(json_object_get(m, "circuit_open_s")) > 0)
            json_array_append_new(w, json_pack("{s:s, s:s, s:O?, s:s}", "code", "crash_loop", "model", name,
                                               "last_error", json_object_get(m, "last_error"), "message",
                                               "the model failed 3 times within 60 s and is refused for a while"));
    }
    return w;
}

void lyra_api_status(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    struct lyra_proc_sample now = {0}, before;
    lyra_proc_self_sample(&now);
    /* CPU % over the time since the previous /status (or since start). */
    uint64_t busy = 0, total = 0;
    bool have_cpu = system_cpu(&busy, &total);
    pthread_mutex_lock(&srv->sample_lock);
    before = srv->last_sample;
    srv->last_sample = now;
    uint64_t d_busy = busy - srv->last_cpu_busy, d_total = total - srv->last_cpu_total;
    if (have_cpu) {
        srv->last_cpu_busy = busy;
        srv->last_cpu_total = total;
    }
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
    /* CPU of the daemon and of the system since the previous /status. */
    json_object_set_new(body, "cpu",
                        json_pack("{s:f, s:o, s:i}", "process_percent", lyra_proc_cpu_percent(&before, &now),
                                  "system_percent",
                                  have_cpu && d_total ? json_real(100.0 * (double)d_busy / (double)d_total) : json_null(),
                                  "cpus", (int)sysconf(_SC_NPROCESSORS_ONLN)));
    /* Memory: the system and its cgroup, the daemon, each worker. */
    struct lyra_mem_reading r;
    lyra_memsource_read(srv->memsource, &r);
    json_t *mem = json_object_get(body, "memory");
    uint64_t workers = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(body, "models"), i, m)
        workers += (uint64_t)json_integer_value(json_object_get(m, "rss_bytes"));
    json_object_set_new(mem, "limit_bytes", json_integer((json_int_t)lyra_mem_limit(&r)));
    json_object_set_new(mem, "used_bytes", json_integer((json_int_t)lyra_mem_used(&r)));
    json_object_set_new(mem, "used_percent", json_real(lyra_mem_used_percent(&r)));
    json_object_set_new(mem, "daemon_bytes", json_integer((json_int_t)now.rss_bytes));
    json_object_set_new(mem, "workers_bytes", json_integer((json_int_t)workers));
    json_object_set_new(mem, "cgroup", r.cgroup_max ? json_pack("{s:I, s:I}", "current_bytes", (json_int_t)r.cgroup_current,
                                                                "max_bytes", (json_int_t)r.cgroup_max)
                                                    : json_null());
    json_object_set_new(mem, "psi_some_avg10", r.psi_some_avg10 >= 0 ? json_real(r.psi_some_avg10) : json_null());
    json_object_set_new(mem, "watchdog", json_string(srv->watchdog ? lyra_mem_level_name(lyra_watchdog_level(srv->watchdog))
                                                                   : "off"));
    struct lyra_gpu_device *devs = NULL;
    size_t n_devs = 0;
    if (srv->gpus && lyra_gpu_list(srv->gpus, &devs, &n_devs) == 0) {
        json_object_set_new(body, "gpu", lyra_gpu_to_json(devs, n_devs));
        free(devs);
    } else {
        json_object_set_new(body, "gpu", json_array());
    }
    json_object_set_new(body, "warnings",
                        warnings(srv, json_object_get(body, "models"), json_string_value(json_object_get(body, "memory_level"))));
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
