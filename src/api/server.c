/* server.c — opens, runs and closes the daemon's modules in order. */
#include "api/server.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "api/authz.h"
#include "core/conversations.h"
#include "core/evlog.h"
#include "core/log.h"
#include "core/util.h"
#include "proto/messages.h"
#include "sys/cpu.h"
#include "sys/proc.h"

#define EVENT_SEQ_KEY "event_seq_reserved"

/* The listen address 0.0.0.0 or :: (every interface). */
static bool is_wildcard(const char *host)
{
    unsigned char a[16], zero[16] = {0};
    const char *h = host;
    char buf[64];
    size_t n = strlen(host);
    if (n >= 2 && n < sizeof buf && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        h = buf;
    }
    return (inet_pton(AF_INET, h, a) == 1 && memcmp(a, zero, 4) == 0) ||
           (inet_pton(AF_INET6, h, a) == 1 && memcmp(a, zero, 16) == 0);
}

/* What the daemon exposes, decided before anything is opened
 * (docs/security.md, "Modes"):
 *  - auth.enabled: every route but the health probes needs a key;
 *  - auth off on a loopback address: requests without a key act with
 *    auth.anonymous_role;
 *  - auth off on a non-loopback address: refused, unless
 *    server.allow_remote_without_auth says the exposure is wanted;
 *  - the Host guard (http/hostcheck.h), for anonymous requests: on
 *    loopback, loopback names plus server.allowed_hosts; on a non-loopback
 *    address any Host, unless server.allowed_hosts is set, which then
 *    applies with the listen address added (so clients using the address
 *    itself still pass). */
static int open_guard(struct lyra_server *srv, struct lyra_err *err)
{
    const struct lyra_config *cfg = srv->cfg;
    const char *host = cfg->server.host;
    srv->anonymous_role = cfg->auth.enabled ? NULL : cfg->auth.anonymous_role;
    if (srv->anonymous_role && !srv->anonymous_role[0])
        srv->anonymous_role = NULL;
    bool loopback = lyra_hostcheck_addr_is_loopback(host);
    if (!loopback && !cfg->auth.enabled && !cfg->server.allow_remote_without_auth)
        return lyra_err_set(err, LYRA_EPERM,
                            "refusing to listen on %.*s with authentication off: it is not a loopback "
                            "address, so anyone who can reach this machine could use the API and drive "
                            "the models; turn authentication on (auth.enabled: true, env "
                            "LYRA_AUTH_ENABLED=true), listen on 127.0.0.1 or ::1, or accept the risk with "
                            "server.allow_remote_without_auth: true (env LYRA_SERVER_ALLOW_REMOTE_WITHOUT_AUTH=true)",
                            (int)lyra_utf8_clip(host, 64), host);
    if (!loopback && !cfg->auth.enabled)
        lyra_log(LYRA_LOG_WARN, "server", NULL,
                 json_pack("{s:o, s:b, s:i}", "host", lyra_log_string(host), "auth", 0, "allowed_hosts",
                           (int)cfg->server.n_allowed_hosts),
                 "listening on non-loopback address %.*s WITHOUT authentication "
                 "(server.allow_remote_without_auth): anyone who can reach it acts with role %s%s",
                 (int)lyra_utf8_clip(host, 64), host, srv->anonymous_role ? srv->anonymous_role : "(none)",
                 cfg->server.n_allowed_hosts ? "" : "; any Host header is served");
    if (!loopback && cfg->server.n_allowed_hosts == 0)
        return 0;
    size_t n = cfg->server.n_allowed_hosts;
    char **list = calloc(n + 1, sizeof *list);
    if (!list)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    if (n)
        memcpy(list, cfg->server.allowed_hosts, n * sizeof *list);
    if (!loopback && !is_wildcard(host) && !strchr(host, '%')) /* not a zone: never in Host */
        list[n++] = cfg->server.host;
    int rc = lyra_hostcheck_new(list, n, &srv->hostcheck, err);
    free(list);
    return rc;
}

/* Creates LYRA_HOME, proves it writable and takes an exclusive lock so two
 * daemons never share one database.  Created private (0700); an existing
 * home that others can read is kept as it is, with a warning. */
static int prepare_home(struct lyra_server *srv, struct lyra_err *err)
{
    const char *home = srv->cfg->home;
    int rc = lyra_mkdirs(home);
    if (rc < 0)
        return lyra_err_set(err, LYRA_EIO, "LYRA_HOME %s cannot be created: %s", home, strerror(-rc));
    if (access(home, W_OK | X_OK) < 0)
        return lyra_err_set(err, LYRA_EIO, "LYRA_HOME %s is not writable: %s", home, strerror(errno));
    struct stat st;
    if (stat(home, &st) == 0 && (st.st_mode & 077))
        lyra_warn("server", "LYRA_HOME %s can be read by other users (mode %04o): it holds conversations and "
                  "keys; chmod 700 it", home, (unsigned)(st.st_mode & 07777));
    char *lock_path = lyra_path_join(home, "lyra.lock");
    if (!lock_path)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    srv->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (srv->lock_fd < 0) {
        rc = lyra_err_set(err, LYRA_EIO, "cannot open %s: %s", lock_path, strerror(errno));
        free(lock_path);
        return rc;
    }
    if (flock(srv->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = lyra_err_set(err, LYRA_EBUSY, "another lyra serve is running with LYRA_HOME %s (%s is locked)", home,
                          lock_path);
        free(lock_path);
        return rc;
    }
    free(lock_path);
    return 0;
}

/* Store callback (database thread): the reservation is durable or failed. */
static void seq_reserved(int rc, const struct lyra_err *err, uint64_t through, void *ud)
{
    struct lyra_server *srv = ud;
    if (rc < 0)
        lyra_log(LYRA_LOG_ERROR, "events", NULL,
                 json_pack("{s:I, s:s}", "through", (json_int_t)through, "error", err ? err->msg : ""),
                 "cannot reserve event sequence numbers (retrying): %s", err ? err->msg : "");
    lyra_bus_reserved(srv->bus, through, rc == 0);
}

/* Bus callback (any publishing thread, the supervisor loop included):
 * queues a durable write of the new high-water mark; never waits. */
static void reserve_seq(struct lyra_bus *bus, uint64_t through, void *ud)
{
    struct lyra_server *srv = ud;
    if (lyra_store_meta_set_u64_async(srv->store, EVENT_SEQ_KEY, through, LYRA_STORE_DURABLE, seq_reserved,
                                      srv) < 0)
        lyra_bus_reserved(bus, through, false);
}

/* The event bus, numbered after every number an earlier run can have used:
 * after a clean end the stored mark is the last number used; after an
 * unclean one it is a reservation that numbers may have exceeded by up to
 * LYRA_BUS_SEQ_MARGIN (events.h).  The first block is reserved durably here,
 * before any number is used. */
static int open_bus(struct lyra_server *srv, bool unclean, struct lyra_err *err)
{
    uint64_t mark = 0;
    int rc = lyra_store_meta_get_u64(srv->store, EVENT_SEQ_KEY, &mark, err);
    if (rc < 0 && rc != LYRA_ENOTFOUND)
        return rc;
    uint64_t start_after = unclean ? mark + LYRA_BUS_SEQ_MARGIN : mark;
    uint64_t through = start_after + LYRA_BUS_SEQ_BLOCK;
    struct lyra_err e2 = {0};
    if (lyra_store_meta_set_u64(srv->store, EVENT_SEQ_KEY, through, LYRA_STORE_DURABLE, &e2) < 0)
        return lyra_err_set(err, LYRA_EDB, "cannot reserve event sequence numbers: %s", e2.msg);
    const struct lyra_config *cfg = srv->cfg;
    struct lyra_bus_options bo = {
        .ring_size = (size_t)cfg->events.ring_size,
        .ring_bytes = cfg->events.ring_bytes,
        .start_after = start_after,
        .reserved_through = through,
        .reserve = reserve_seq,
        .reserve_ud = srv,
        .block = LYRA_BUS_SEQ_BLOCK,
        .wait_ms = LYRA_BUS_WAIT_MS,
        .retry_ms = LYRA_BUS_RETRY_MS,
        .margin = LYRA_BUS_SEQ_MARGIN, /* what the start after an unclean end skips */
    };
    srv->bus = lyra_bus_new(&bo);
    return srv->bus ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}

static int open_state(struct lyra_server *srv, struct lyra_err *err)
{
    char *db_path = lyra_path_join(srv->cfg->home, "lyra.db");
    if (!db_path)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    /* Created private before SQLite opens it: SQLite would create it 0644
     * less the umask, and gives its -wal and -shm the database's mode. */
    int fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    srv->store = lyra_store_open(db_path, err);
    free(db_path);
    if (!srv->store)
        return LYRA_EDB;

    struct lyra_session_info prev;
    int n_unclean = 0;
    int rc = lyra_store_session_begin(srv->store, LYRA_VERSION, srv->session_id, &prev, &n_unclean, err);
    if (rc < 0)
        return rc;

    rc = open_bus(srv, n_unclean > 0, err);
    if (rc < 0)
        return rc;
    rc = lyra_evlog_new(srv->bus, srv->store, (uint64_t)srv->cfg->events.keep, &srv->evlog, err);
    if (rc < 0)
        return rc;
    if (!(srv->chat_turns = lyra_conv_claims_new()))
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");

    srv->recovered = n_unclean > 0;
    if (n_unclean > 0) {
        char started[40];
        lyra_format_ts(prev.started_ms, started, sizeof started);
        lyra_log(LYRA_LOG_WARN, "state", NULL,
                 json_pack("{s:s, s:i, s:s, s:i}", "previous_session", prev.id, "previous_pid", prev.pid,
                           "previous_started", started, "unclean_sessions", n_unclean),
                 "previous run did not shut down cleanly; recovering");
        lyra_bus_publish(srv->bus, "system.recovered", "state",
                         json_pack("{s:s, s:s, s:i, s:s, s:i}", "previous_session", prev.id, "previous_started",
                                   started, "previous_pid", prev.pid, "previous_version", prev.version,
                                   "unclean_sessions", n_unclean));
    }
    return 0;
}

/* Principals, keys and roles (auth/auth.h), the audit log and the
 * failed-authentication back-off.  After the store and the bus.  A key
 * generated for the first admin is printed here, once, on stderr (not
 * through the log: logs never carry secrets). */
static int open_auth(struct lyra_server *srv, struct lyra_err *err)
{
    const struct lyra_config *cfg = srv->cfg;
    struct lyra_auth_options ao = {
        .store = srv->store,
        .home = cfg->home,
        .bootstrap_key = cfg->auth.admin_key,
        .anonymous_role = srv->anonymous_role,
    };
    int rc = lyra_auth_open(&ao, &srv->auth, err);
    if (rc < 0)
        return rc;
    char key[LYRA_AUTH_KEY_BUF];
    const char *path = NULL;
    if (lyra_auth_bootstrap_key(srv->auth, key, &path) == 0) {
        fprintf(stderr,
                "\nlyra: created the first admin, principal \"admin\", with this API key (shown once; also "
                "saved in %s, mode 0600):\n\n    %s\n\n",
                path ? path : "LYRA_HOME/admin.key", key);
        fflush(stderr);
        sodium_memzero(key, sizeof key);
    }
    if (!(srv->audit = lyra_audit_new(srv->store, srv->bus)))
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    struct lyra_ratelimit_options ro = {
        .threshold = cfg->auth.max_failures,
        .window_ms = (int64_t)cfg->auth.failure_window_s * 1000,
        .max_block_ms = (int64_t)cfg->auth.max_block_s * 1000,
    };
    if (!(srv->auth_fail = lyra_ratelimit_new(&ro)))
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    /* A client that repeats a refused request may not grow the append-only
     * audit log as fast as it can send: past 20 denials in 10 s, the rows
     * of one principal at one address pause (10 s, doubling to a minute);
     * lyra_auth_failures_total still counts every one. */
    struct lyra_ratelimit_options dro = {
        .threshold = 20, .window_ms = 10000, .base_block_ms = 10000, .max_block_ms = 60000};
    if (!(srv->audit_denials = lyra_ratelimit_new(&dro)))
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    if (srv->anonymous_role)
        lyra_log(LYRA_LOG_INFO, "auth", NULL, json_pack("{s:s}", "anonymous_role", srv->anonymous_role),
                 "authentication is off: requests without a key act with role %s (auth.enabled: true requires "
                 "a key)", srv->anonymous_role);
    return 0;
}

/* The registry is scanned once here so that start-up logs what was found;
 * an unreadable models dir is logged, not fatal (config entries still work). */
/* The memory all workers may hold: models.memory_budget, else
 * memory_budget_percent of what the system allows. */
static uint64_t memory_budget(struct lyra_server *srv)
{
    const struct lyra_config *cfg = srv->cfg;
    if (cfg->models.memory_budget)
        return cfg->models.memory_budget;
    struct lyra_mem_reading r;
    lyra_memsource_read(srv->memsource, &r);
    return lyra_mem_limit(&r) / 100 * (uint64_t)cfg->models.memory_budget_percent;
}

/* Manager hooks (supervisor thread) into /metrics. */
static void hook_loaded(const char *model, double load_s, void *ud)
{
    struct lyra_server *srv = ud;
    lyra_metric_observe(srv->m.load_seconds, (const char *const[]){model}, load_s);
}

static void hook_queue_wait(const char *model, double wait_s, void *ud)
{
    struct lyra_server *srv = ud;
    lyra_metric_observe(srv->m.queue_wait, (const char *const[]){model}, wait_s);
}

static void hook_restarted(const char *model, void *ud)
{
    struct lyra_server *srv = ud;
    lyra_metric_add(srv->m.worker_restarts, (const char *const[]){model}, 1);
}

/* GPU placement: the GPU with the most free memory is where models go
 * (llama.cpp's split across several GPUs is its own business). */
static uint64_t hook_vram_free(bool *live, void *ud)
{
    struct lyra_server *srv = ud;
    struct lyra_gpu_device *devs = NULL;
    size_t n = 0;
    uint64_t best = 0;
    *live = false;
    if (!srv->gpus || lyra_gpu_list(srv->gpus, &devs, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (devs[i].memory_free > best) {
            best = devs[i].memory_free;
            *live = devs[i].utilization_percent >= 0; /* NVML read it just now */
        }
    }
    free(devs);
    return best;
}

#define RESIDENCY_KEY "models.residency"

/* The resident and pinned sets, stored on every change so that the next
 * start can load them again (a crash included). */
static void hook_residency(const json_t *state, void *ud)
{
    struct lyra_server *srv = ud;
    char *text = json_dumps(state, JSON_COMPACT);
    if (text)
        lyra_store_meta_set_text_async(srv->store, RESIDENCY_KEY, text, 0);
    free(text);
}

/* At scrape: the cache's counters as the manager keeps them (one truth
 * for /status and /metrics). */
static void collect_cache(struct lyra_metrics *reg, void *ud)
{
    struct lyra_server *srv = ud;
    struct lyra_cache_counts c;
    if (!srv->manager || lyra_manager_cache_counts(srv->manager, &c) < 0)
        return;
    lyra_metric_set(srv->m.cache_hits, NULL, (double)c.hits);
    lyra_metric_set(srv->m.cache_misses, NULL, (double)c.misses);
    for (int r = 0; r < LYRA_EVICT_N; r++)
        lyra_metric_set(srv->m.cache_evictions, (const char *const[]){lyra_evict_reason_name(r)},
                        (double)c.evictions[r]);
    lyra_metric_set(srv->m.models_resident, NULL, c.resident);
    lyra_metric_set(srv->m.memory_budget, NULL, (double)c.budget_bytes);
}

/* Watchdog thread: every sample goes to the manager, which sheds load
 * while the level is not ok. */
static void on_memory_sample(const struct lyra_mem_reading *r, enum lyra_mem_level level, void *ud)
{
    struct lyra_server *srv = ud;
    lyra_manager_memory_level(srv->manager, (int)level);
}

static int start_watchdog(struct lyra_server *srv, struct lyra_err *err)
{
    const struct lyra_config *cfg = srv->cfg;
    if (!cfg->watchdog.enabled) {
        lyra_log(LYRA_LOG_WARN, "memory", NULL, NULL, "the memory watchdog is off (watchdog.enabled: false)");
        return 0;
    }
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, srv->memsource);
    o.bus = srv->bus;
    o.interval_ms = cfg->watchdog.interval_ms;
    o.warn_percent = cfg->watchdog.warn_percent;
    o.critical_percent = cfg->watchdog.critical_percent;
    o.psi_warn = cfg->watchdog.psi_warn_percent;
    o.psi_critical = cfg->watchdog.psi_critical_percent;
    o.min_available_bytes = cfg->watchdog.min_available;
    o.on_sample = on_memory_sample;
    o.ud = srv;
    return lyra_watchdog_new(&o, &srv->watchdog, err);
}

/* A start-up load ended (pinned or restored model): only failures matter. */
static void preload_done(struct lyra_job *job, const json_t *frame, void *ud)
{
    const char *type = json_string_value(json_object_get(frame, "type"));
    if (type && strcmp(type, "error") == 0)
        lyra_log(LYRA_LOG_WARN, "models", NULL, json_pack("{s:s}", "model", lyra_job_model(job)),
                 "could not load %s at start: %s", lyra_job_model(job),
                 json_string_value(json_object_get(frame, "message")));
    if (lyra_msg_is_terminal(lyra_msg_kind_of(frame)))
        lyra_job_release(job);
}

/* Starts the load of one model without waiting for it. */
void lyra_server_preload(struct lyra_server *srv, const char *name)
{
    struct lyra_job *job;
    struct lyra_err err = {0};
    if (lyra_manager_submit(srv->manager, name, json_pack("{s:s}", "type", "load"), preload_done, NULL, &job, &err) < 0)
        lyra_log(LYRA_LOG_WARN, "models", NULL, json_pack("{s:s}", "model", name), "cannot load %s at start: %s", name,
                 err.msg);
}

static bool in_list(const json_t *list, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) if (json_is_string(v) && strcmp(json_string_value(v), name) == 0) return true;
    return false;
}

/* Pinned models (configured or pinned at run time before) are resident from
 * the start; with models.restore_resident, so are the models resident when
 * the daemon last stopped, cleanly or not. */
static void restore_models(struct lyra_server *srv)
{
    char *text = NULL;
    struct lyra_err err = {0};
    json_t *saved = lyra_store_meta_get_text(srv->store, RESIDENCY_KEY, &text, &err) == 0
                        ? json_loads(text, 0, NULL) : NULL;
    free(text);
    json_t *pinned = json_object_get(saved, "pinned"), *resident = json_object_get(saved, "resident");
    json_t *loaded = json_array();
    for (size_t i = 0; i < srv->cfg->models.n_entries; i++)
        if (srv->cfg->models.entries[i].pinned && loaded)
            json_array_append_new(loaded, json_string(srv->cfg->models.entries[i].name));
    size_t i;
    json_t *v;
    json_array_foreach(pinned, i, v) {
        const char *name = json_string_value(v);
        if (name && lyra_manager_pin(srv->manager, name, true, &err) == 0 && !in_list(loaded, name))
            json_array_append_new(loaded, json_string(name));
    }
    json_array_foreach(srv->cfg->models.restore_resident ? resident : NULL, i, v) {
        const char *name = json_string_value(v);
        if (name && !in_list(loaded, name))
            json_array_append_new(loaded, json_string(name));
    }
    json_array_foreach(loaded, i, v)
        lyra_server_preload(srv, json_string_value(v));
    if (json_array_size(loaded)) {
        char *names = json_dumps(loaded, JSON_COMPACT);
        lyra_log(srv->recovered ? LYRA_LOG_WARN : LYRA_LOG_INFO, "models", NULL,
                 json_pack("{s:o, s:b}", "models", json_deep_copy(loaded), "after_unclean_stop", srv->recovered),
                 "loading %s at start%s", names ? names : "models",
                 srv->recovered ? " (restoring after an unclean stop)" : "");
        free(names);
        lyra_bus_publish(srv->bus, "models.restored", "models",
                         json_pack("{s:o, s:b}", "models", json_deep_copy(loaded), "after_unclean_stop", srv->recovered));
    }
    json_decref(loaded);
    json_decref(saved);
}

static int open_registry(struct lyra_server *srv, struct lyra_err *err)
{
    int rc = lyra_registry_new(srv->cfg, &srv->registry, err);
    if (rc < 0)
        return rc;
    struct lyra_err scan_err = {0};
    if (lyra_registry_refresh(srv->registry, NULL, &scan_err) < 0)
        lyra_warn("models", "%s", scan_err.msg);
    lyra_log(LYRA_LOG_INFO, "models", NULL,
             json_pack("{s:o, s:I}", "dir", lyra_log_string(lyra_registry_dir(srv->registry)), "models",
                       (json_int_t)lyra_registry_count(srv->registry)),
             "%zu model(s) known", lyra_registry_count(srv->registry));
    /* Workers are this same binary run as `lyra worker`, unless
     * LYRA_WORKER_EXE names another program speaking the same protocol (a
     * wrapper such as numactl, or the test suite's misbehaving fake). */
    char exe[4096];
    const char *override = getenv("LYRA_WORKER_EXE");
    if (override && *override) {
        lyra_fmt(exe, sizeof exe, "%s", override);
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0)
            return lyra_err_set(err, LYRA_EIO, "cannot find the lyra binary (/proc/self/exe): %s", strerror(errno));
        exe[n] = '\0';
    }
    const struct lyra_config *cfg = srv->cfg;
    if ((rc = lyra_memsource_from_env(&srv->memsource, err)) < 0)
        return rc;
    /* GPUs, probed in a subprocess: a failed probe leaves none (logged). */
    if (cfg->gpu.enabled) {
        struct lyra_err gerr = {0};
        rc = lyra_gpu_from_env(exe, cfg->gpu.probe_timeout_s * 1000, &srv->gpus, &gerr);
        if (rc == LYRA_ENOMEM || rc == LYRA_EINVAL)
            return lyra_err_set(err, rc, "%s", gerr.msg);
    }
    struct lyra_manager_options mo = {.worker_exe = exe, .registry = srv->registry, .bus = srv->bus,
                                      .max_loaded = cfg->models.max_loaded,
                                      .memory_budget = memory_budget(srv),
                                      .queue_depth = cfg->models.queue_depth,
                                      .queue_timeout_s = cfg->models.queue_timeout_s,
                                      .kill_busy = cfg->watchdog.kill_busy,
                                      .hooks = {.loaded = hook_loaded, .queue_wait = hook_queue_wait,
                                                .restarted = hook_restarted, .residency = hook_residency,
                                                .vram_free = hook_vram_free, .ud = srv},
                                      .vram_reserve = cfg->gpu.reserve,
                                      .load_timeout_s = cfg->models.load_timeout_s,
                                      .heartbeat_timeout_s = cfg->models.heartbeat_timeout_s,
                                      .progress_timeout_s = cfg->models.progress_timeout_s,
                                      .stop_timeout_s = cfg->models.stop_timeout_s,
                                      .circuit_backoff_s = cfg->models.circuit_backoff_s};
    rc = lyra_manager_new(&mo, &srv->manager, err);
    if (rc < 0)
        return rc;
    lyra_log(LYRA_LOG_INFO, "models", NULL,
             json_pack("{s:i, s:I}", "max_loaded", cfg->models.max_loaded, "budget_bytes", (json_int_t)mo.memory_budget),
             "model cache: at most %d resident, memory budget %" PRIu64 " MiB", cfg->models.max_loaded,
             mo.memory_budget >> 20);
    if ((rc = lyra_metrics_add_collector(srv->metrics, collect_cache, srv)) < 0)
        return lyra_err_set(err, rc, "out of memory");
    if ((rc = start_watchdog(srv, err)) < 0)
        return rc;
    restore_models(srv);
    /* After the manager, which listens to the registry's changes. */
    return lyra_models_watch_new(srv->registry, &srv->models_watch, err);
}

/* The event stream's policy: a client sees what its principal may. */
static bool stream_visible(void *ud, const void *who, const char *type, const json_t *data)
{
    return lyra_authz_event_visible(ud, who, type, data) == LYRA_AUTHZ_SHOW;
}

static bool stream_still_valid(void *ud, const void *who)
{
    struct lyra_server *srv = ud;
    const struct lyra_principal *p = who;
    return p->name[0] && lyra_auth_still_valid(srv->auth, p);
}

/* The live stream's loop; before the HTTP server, whose handlers use it. */
static int open_evstream(struct lyra_server *srv, struct lyra_err *err)
{
    struct lyra_evstream_options o = {
        .bus = srv->bus,
        .store = srv->store,
        .max_queued = (size_t)srv->cfg->events.client_queue,
        .max_queued_bytes = srv->cfg->events.client_queue_bytes,
        .ws_ping_ms = srv->cfg->events.ws_ping_ms,
        .ws_pong_timeout_ms = srv->cfg->events.ws_pong_timeout_ms,
        .sse_ping_ms = srv->cfg->events.sse_ping_ms,
        .visible = stream_visible,
        .still_valid = stream_still_valid,
        .policy_ud = srv,
        .who_size = sizeof(struct lyra_principal),
    };
    return lyra_evstream_new(&o, &srv->evstream, err);
}

/* Background jobs (jobs/jobs.h).  After the manager: the model job types
 * use it, and jobs resumed from the last run may start at once. */
static int open_jobs(struct lyra_server *srv, struct lyra_err *err)
{
    struct lyra_jobs_options jo = {.store = srv->store, .bus = srv->bus,
                                   .max_concurrent = srv->cfg->jobs.max_concurrent};
    int rc = lyra_jobs_new(&jo, &srv->jobs, err);
    if (rc < 0)
        return rc;
    srv->model_jobs = (struct lyra_model_jobs_options){
        .manager = srv->manager,
        .timeout_s = srv->cfg->models.load_timeout_s + 60,
        .unload_timeout_ms = srv->cfg->models.stop_timeout_s * 3000 + 1000,
    };
    if ((rc = lyra_model_jobs_register(srv->jobs, &srv->model_jobs)) < 0)
        return lyra_err_set(err, rc, "jobs: cannot register the model job types");
    /* Model downloads; the Hugging Face token is a secret: env only. */
    const char *hf = getenv("HF_TOKEN");
    srv->pull = (struct lyra_pull_options){
        .models_dir = lyra_registry_dir(srv->registry),
        .registry = srv->registry,
        .bus = srv->bus,
        .hf_token = hf && *hf ? hf : NULL,
    };
    if ((rc = lyra_pull_register(srv->jobs, &srv->pull, err)) < 0)
        return rc;
    return lyra_jobs_start(srv->jobs, err);
}

static int open_http(struct lyra_server *srv, struct lyra_err *err)
{
    const struct lyra_config *cfg = srv->cfg;
    int rc = open_evstream(srv, err);
    if (rc < 0)
        return rc;
    struct lyra_http_options opts = {
        .host = cfg->server.host,
        .port = cfg->server.port,
        .threads = cfg->server.threads > 0 ? cfg->server.threads : lyra_cpu_usable(),
        .max_body_bytes = cfg->server.max_body_bytes,
        .max_header_bytes = cfg->server.max_header_bytes,
        .idle_timeout_s = cfg->server.idle_timeout_s,
        .request_timeout_s = cfg->server.idle_timeout_s * 2,
        .max_connections = cfg->server.max_connections,
        .cors_origins = cfg->server.cors_origins,
        .n_cors_origins = cfg->server.n_cors_origins,
        .trusted_proxies = cfg->server.trusted_proxies,
        .n_trusted_proxies = cfg->server.n_trusted_proxies,
        .hostcheck = srv->hostcheck,
        .authorize = lyra_authz_authorize,
        .on_response = lyra_authz_on_response,
        .requests_total = srv->m.http_requests,
    };
    srv->http = lyra_http_new(&opts, lyra_routes, lyra_n_routes, srv, err);
    return srv->http ? 0 : (err ? err->code : LYRA_EIO);
}

/* Writes $LYRA_HOME/serve.json so clients (the CLI, tests) find the daemon. */
static void write_state_file(struct lyra_server *srv)
{
    srv->state_file = lyra_path_join(srv->cfg->home, "serve.json");
    if (!srv->state_file)
        return;
    const char *host = srv->cfg->server.host;
    bool v6 = strchr(host, ':') != NULL;
    char url[256];
    snprintf(url, sizeof url, "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", lyra_http_port(srv->http));
    json_t *j = json_pack("{s:i, s:s, s:i, s:s, s:s, s:s}", "pid", (int)getpid(), "host", host, "port",
                          lyra_http_port(srv->http), "url", url, "session_id", srv->session_id, "version",
                          LYRA_VERSION);
    char *s = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    if (s && lyra_write_file_atomic(srv->state_file, s, strlen(s), 0600) < 0)
        lyra_warn("server", "cannot write %s: %s", srv->state_file, strerror(errno));
    free(s);
}

int lyra_server_open(struct lyra_server **out, const struct lyra_config *cfg, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    srv->cfg = cfg;
    srv->lock_fd = -1;
    srv->started_us = lyra_now_us();
    srv->started_wall_ms = lyra_wall_ms();
    atomic_store(&srv->state, LYRA_SERVER_STARTING);
    pthread_mutex_init(&srv->sample_lock, NULL);
    lyra_proc_self_sample(&srv->last_sample);

    srv->traces = lyra_trace_ring_new(256);
    if (!srv->traces) {
        free(srv);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    /* Metrics first: every module opened after it may count into them. */
    int rc = lyra_metrics_new(&srv->metrics, err);
    if (rc == 0)
        rc = lyra_server_metrics_init(srv->metrics, &srv->m, err);
    if (rc == 0)
        rc = open_guard(srv, err);
    if (rc == 0)
        rc = prepare_home(srv, err);
    if (rc == 0)
        rc = open_state(srv, err);
    if (rc == 0)
        rc = open_auth(srv, err);
    if (rc == 0)
        rc = open_registry(srv, err);
    if (rc == 0)
        rc = open_jobs(srv, err);
    if (rc == 0)
        rc = open_http(srv, err);
    if (rc < 0) {
        /* Nothing was served: a failed start is not a crash of the session. */
        lyra_server_close(srv, true);
        return rc;
    }
    *out = srv;
    return 0;
}

int lyra_server_run(struct lyra_server *srv, const sigset_t *stop_signals)
{
    struct lyra_err err = {0};
    if (lyra_http_start(srv->http, &err) < 0) {
        lyra_error("server", "%s", err.msg);
        return err.code;
    }
    atomic_store(&srv->state, LYRA_SERVER_READY);
    double startup_ms = (double)(lyra_now_us() - srv->started_us) / 1000.0;
    lyra_bus_publish(srv->bus, "system.startup", "server",
                     json_pack("{s:s, s:s, s:i, s:f}", "version", LYRA_VERSION, "session_id", srv->session_id,
                               "port", lyra_http_port(srv->http), "startup_ms", startup_ms));
    /* serve.json tells clients the daemon is up: written last, so that one
     * reading it finds system.startup already published. */
    write_state_file(srv);
    lyra_log(LYRA_LOG_INFO, "server", NULL,
             json_pack("{s:o, s:i, s:o, s:s, s:f}", "host", lyra_log_string(srv->cfg->server.host), "port",
                       lyra_http_port(srv->http), "home", lyra_log_string(srv->cfg->home), "session_id",
                       srv->session_id, "startup_ms", startup_ms),
             "listening on %s:%d", srv->cfg->server.host, lyra_http_port(srv->http));

    int sig = 0;
    while (sigwait(stop_signals, &sig) != 0)
        ;
    lyra_server_stop(srv, sig, stop_signals);
    return 0;
}

/* Waits until no HTTP request is in flight, at most timeout_ms; a second
 * stop signal ends the wait at once (an operator who presses Ctrl-C again
 * does not want to wait).  Returns the requests still in flight. */
static int wait_requests(struct lyra_server *srv, int timeout_ms, const sigset_t *stop_signals, bool *again)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    while (lyra_http_in_flight(srv->http) > 0 && !*again) {
        int64_t left = deadline - lyra_now_ms();
        if (left <= 0)
            break;
        int step = left < 50 ? (int)left : 50;
        struct timespec ts = {0, (long)step * 1000000L};
        if (stop_signals && sigtimedwait(stop_signals, NULL, &ts) > 0) {
            *again = true;
            lyra_warn("server", "second stop signal: not waiting for requests any longer");
        }
    }
    return lyra_http_in_flight(srv->http);
}

void lyra_server_stop(struct lyra_server *srv, int sig, const sigset_t *stop_signals)
{
    atomic_store(&srv->state, LYRA_SERVER_DRAINING);
    int in_flight = lyra_http_in_flight(srv->http);
    lyra_log(LYRA_LOG_INFO, "server", NULL, json_pack("{s:i, s:i}", "signal", sig, "in_flight", in_flight),
             "%s received: draining", strsignal(sig));
    lyra_bus_publish(srv->bus, "system.shutdown", "server",
                     json_pack("{s:s, s:i}", "reason", strsignal(sig), "in_flight", in_flight));
    /* 1. No new work: the listener closes, requests on kept-alive
     *    connections get 503 with Connection: close. */
    lyra_http_quiesce(srv->http);
    lyra_http_set_draining(srv->http);
    /* Event streams never finish by themselves: WebSocket clients get close
     * 1001 and SSE streams end now, and the stream loop is joined, so that
     * the drain below waits only for real requests. */
    lyra_evstream_shutdown(srv->evstream, 2000);
    /* 2. Requests in flight get server.drain_timeout_s to finish. */
    bool again = false;
    int left = wait_requests(srv, srv->cfg->server.drain_timeout_s * 1000, stop_signals, &again);
    if (left > 0)
        lyra_warn("server", "%d request(s) still running after %d s: ending them", left,
                  srv->cfg->server.drain_timeout_s);
    /* 3. Producers before consumers: background jobs first (they feed
     *    the manager; resumable ones stay for the next start), then every
     *    request job ends (parked requests get 503, streams an error chunk
     *    and [DONE]) and every worker stops. */
    lyra_jobs_free(srv->jobs);
    srv->jobs = NULL;
    lyra_watchdog_free(srv->watchdog); /* it feeds the manager */
    srv->watchdog = NULL;
    lyra_manager_begin_shutdown(srv->manager);
    if (again)
        lyra_manager_kill_workers(srv->manager);
    /* Workers stop on the stop timeout's escalation; a stop signal meanwhile
     * kills them at once. */
    while (!lyra_manager_wait_workers(srv->manager, 50)) {
        struct timespec zero = {0, 0};
        if (!again && stop_signals && sigtimedwait(stop_signals, NULL, &zero) > 0) {
            again = true;
            lyra_warn("server", "second stop signal: killing the workers now");
            lyra_manager_kill_workers(srv->manager);
        }
    }
    /* 4. The answers just produced reach their clients; then the HTTP
     *    server may go (lyra_server_close). */
    left = wait_requests(srv, 2000, NULL, &again);
    if (left > 0)
        lyra_warn("server", "%d request(s) did not complete: their connections are closed", left);
}

void lyra_server_close(struct lyra_server *srv, bool clean)
{
    if (!srv)
        return;
    /* Workers first (no-op after lyra_server_stop): nothing may feed the
     * HTTP server while it stops. */
    lyra_jobs_free(srv->jobs); /* before the manager it feeds */
    srv->jobs = NULL;
    lyra_watchdog_free(srv->watchdog);
    srv->watchdog = NULL;
    lyra_manager_shutdown(srv->manager, false);
    /* The stream loop before the HTTP server: its upgraded sockets and
     * streams must be closed before libmicrohttpd stops (no-op after
     * lyra_server_stop). */
    lyra_evstream_shutdown(srv->evstream, 0);
    lyra_http_free(srv->http);
    lyra_evstream_free(srv->evstream);
    lyra_hostcheck_free(srv->hostcheck);
    lyra_ratelimit_free(srv->auth_fail);
    lyra_ratelimit_free(srv->audit_denials);
    lyra_models_watch_free(srv->models_watch);
    lyra_manager_free(srv->manager);
    lyra_memsource_free(srv->memsource);
    lyra_gpu_free(srv->gpus);
    if (srv->state_file) {
        unlink(srv->state_file);
        free(srv->state_file);
    }
    if (srv->store && srv->session_id[0] && clean) {
        /* One durable transaction: a run recorded as clean always has its
         * last number stored, and the next run starts right after it. */
        struct lyra_err err = {0};
        if (lyra_store_session_end(srv->store, srv->session_id, srv->bus ? EVENT_SEQ_KEY : NULL,
                                   srv->bus ? lyra_bus_last_seq(srv->bus) : 0, &err) < 0)
            lyra_warn("state",
                      "the session cannot be closed cleanly (the next start skips event numbers): %s",
                      err.msg);
    }
    lyra_registry_free(srv->registry);
    lyra_trace_ring_free(srv->traces);
    /* The store first: its last callbacks (reservations) report to the bus. */
    lyra_evlog_free(srv->evlog); /* its last write goes to the store */
    lyra_audit_free(srv->audit);  /* its last rows too */
    lyra_auth_free(srv->auth);
    lyra_store_close(srv->store);
    lyra_bus_free(srv->bus);
    lyra_conv_claims_free(srv->chat_turns);
    if (srv->lock_fd >= 0)
        close(srv->lock_fd);
    /* Last: everything above may have counted into it until it stopped. */
    lyra_metrics_free(srv->metrics);
    pthread_mutex_destroy(&srv->sample_lock);
    free(srv);
}
