/* config.h — Lyra's configuration: YAML file, schema versions, env and flags.
 *
 * Sources, lowest precedence first: built-in defaults, the YAML file
 * ($LYRA_HOME/lyra.yaml or --config), environment LYRA_<SECTION>_<KEY>
 * (e.g. LYRA_SERVER_PORT, LYRA_MODELS_MAX_LOADED), then command-line flags
 * (applied by the CLI through lyra_config_set()).  No file is needed.
 *
 * The file carries `schema_version`.  Loading never writes: an older file is
 * migrated in memory (file_schema_version tells the caller, who should say
 * so), and only lyra_config_migrate_file() rewrites it, keeping the original
 * beside it as `<file>.v<N>.bak`.  Unknown keys, wrong types and values out
 * of range are errors reported as "file:line:col: ...".  Ranges the worker
 * also enforces (ctx_size, parallel, threads, gpu_layers) come from
 * core/limits.h, so a config that validates is one the worker accepts.
 *
 * The modules behind this API: core/yamldoc (the file as a tree with
 * positions; YAML out), core/config_keys (the table of keys), and
 * core/config_migrate (the schema steps).
 *
 * Secrets (auth.admin_key) come only from the environment (LYRA_ADMIN_KEY) or
 * a file named by auth.admin_key_file; a secret in the YAML file is an error,
 * and secrets are never written back nor shown by lyra_config_dump().
 *
 * The struct is plain data: read its fields directly.  Strings are owned by
 * the config and freed by lyra_config_free().
 *
 * Thread-safety: a loaded config is read-only and may be read from any
 * thread; load/set/free are not thread-safe. */
#ifndef LYRA_CONFIG_H
#define LYRA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define LYRA_CONFIG_SCHEMA_VERSION 3

#define LYRA_KEEP_ALIVE_DEFAULT (-2) /* an entry's keep_alive_s: use models.keep_alive_s */
#define LYRA_KEEP_ALIVE_NEVER (-1)

struct lyra_model_entry {
    char *name;          /* required */
    char *path;          /* required; relative paths resolve against models.dir */
    char **aliases;      /* n_aliases strings */
    size_t n_aliases;
    int ctx_size;        /* 0 = models.ctx_size */
    int parallel;        /* 0 = models.parallel */
    int threads;         /* 0 = models.threads */
    int gpu_layers;      /* -1 = models.gpu_layers */
    char *chat_template; /* NULL = template from the GGUF */
    bool embeddings;
    bool pinned;
    int keep_alive_s;    /* LYRA_KEEP_ALIVE_DEFAULT (-2) = models.keep_alive_s; -1 never; 0 after each request */
    char **fallback;     /* models served instead when this one cannot load, in order */
    size_t n_fallback;
    double temperature;  /* < 0 = unset */
    double top_p;        /* < 0 = unset */
    int top_k;           /* < 0 = unset */
};

struct lyra_config {
    int schema_version;
    char *home;        /* LYRA_HOME: --home, env LYRA_HOME, else ~/.local/share/lyra */
    char *file;        /* the YAML file that was read, NULL if none */
    int file_schema_version; /* the version the file was written in (0 without a file); below
                                schema_version means it was migrated in memory, not on disk */

    struct {
        char *host;                /* default 127.0.0.1 */
        int port;                  /* default 8000 */
        char **cors_origins;       /* default none; "*" allows any */
        size_t n_cors_origins;
        char **allowed_hosts;      /* Host names accepted besides loopback ones (DNS-rebinding guard) */
        size_t n_allowed_hosts;
        char **trusted_proxies;    /* addresses/CIDRs whose X-Forwarded-For is believed; default none */
        size_t n_trusted_proxies;
        bool allow_remote_without_auth; /* default false: a non-loopback host with auth off is refused */
        int threads;               /* HTTP worker threads; 0 = lyra_cpu_usable() */
        size_t max_body_bytes;     /* default 8 MiB */
        size_t max_header_bytes;   /* default 16 KiB */
        int idle_timeout_s;        /* default 30: idle/slow connections are closed */
        int drain_timeout_s;       /* default 10: shutdown waits this long for in-flight requests */
        int max_connections;       /* default 1024 */
    } server;

    struct {
        char *dir;                 /* default $LYRA_HOME/models */
        char *default_model;       /* NULL = first available */
        int max_loaded;            /* default 4 */
        int keep_alive_s;          /* default 300: idle models unload after this; 0 = after each
                                      request, -1 = never (schema 2's 0 is migrated to -1) */
        uint64_t memory_budget;    /* bytes, 0 = memory_budget_percent of what the system allows;
                                      YAML accepts "4GiB", "512MB" */
        int memory_budget_percent; /* default 80: of min(MemTotal, cgroup memory.max) when
                                      memory_budget is 0 */
        int queue_depth;           /* default 64: requests waiting per model; more get 429 */
        int queue_timeout_s;       /* default 60: a request waiting for room this long gets 503 */
        bool restore_resident;     /* default false: load the models resident at the last stop again */
        int parallel;              /* slots per model, default 4 */
        int threads;               /* 0 = lyra_cpu_usable(): affinity and cgroup quota */
        int gpu_layers;            /* default -1 = all that fit; 0 = CPU only */
        int ctx_size;              /* default 4096 */
        int load_timeout_s;        /* default 120: a worker not ready by then is killed */
        int heartbeat_timeout_s;   /* default 10: a worker silent this long is hung */
        int progress_timeout_s;    /* default 60: no decode step this long with work pending = hung */
        int stop_timeout_s;        /* default 5: each step of stopping a worker (EOF, SIGTERM, SIGKILL) */
        int circuit_backoff_s;     /* default 30: a model failing 3 times in 60 s is refused this long */
        struct lyra_model_entry *entries;
        size_t n_entries;
    } models;

    struct {
        bool enabled;              /* default true */
        int interval_ms;           /* default 1000 */
        int warn_percent;          /* default 85 */
        int critical_percent;      /* default 95 */
        int psi_warn_percent;      /* default 20: memory pressure (PSI some avg10) that warns; 0 = off */
        int psi_critical_percent;  /* default 50 */
        uint64_t min_available;    /* default 64 MiB: less available is critical whatever the percent */
        bool kill_busy;            /* default true: when critical with nothing idle to unload, stop the
                                      largest unpinned busy model */
    } watchdog;

    struct {
        bool enabled;              /* default true: probe GPU devices at start */
        int probe_timeout_s;       /* default 15: the device probe subprocess is killed after this */
        uint64_t reserve;          /* default 512 MiB of VRAM left free per device */
    } gpu;

    struct {
        bool enabled;              /* default false: no key required on loopback */
        char *anonymous_role;      /* default "user": what a request without a key may do while auth is off */
        int max_failures;          /* default 10 failed authentications per address before a block */
        int failure_window_s;      /* default 60 */
        int max_block_s;           /* default 300: blocks double from 1 s up to this */
        char *admin_key;           /* secret: env LYRA_ADMIN_KEY or admin_key_file only */
        char *admin_key_file;
    } auth;

    struct {
        int ring_size;             /* default 10000 events kept in memory for replay */
        int keep;                  /* default 10000 events kept in the database (replay across restarts) */
        int client_queue;          /* default 1024 events queued per stream client before a stream.gap */
        size_t client_queue_bytes; /* default 1 MiB of event text per stream client, replay included */
        int ws_ping_ms;            /* default 30000: WebSocket ping interval */
        int ws_pong_timeout_ms;    /* default 30000: no pong this long after a ping closes the client */
        int sse_ping_ms;           /* default 15000: SSE keep-alive comment interval */
        size_t ring_bytes;         /* default 16 MiB: the replay ring's byte budget */
        size_t max_payload_bytes;  /* default 64 KiB: largest POST /events payload */
    } events;

    struct {
        int max_concurrent;        /* default 4 */
    } jobs;

    struct {
        char *level;               /* debug|info|warn|error, default info */
        char *format;              /* json|text|auto, default auto (text on a tty) */
        char *file;                /* NULL = stderr */
    } log;
};

/* Fills *cfg with defaults, then the YAML file, then the environment, and
 * validates the result.  `home` (may be NULL) is the --home flag; `file` (may
 * be NULL) the --config flag, else $LYRA_HOME/lyra.yaml if it exists.
 * `environ_` is the environment to read (NULL = the process's own; tests
 * pass their own array).  `flags` is reserved and must be 0.  An old-schema
 * file is migrated in memory only; nothing is ever written.  On failure
 * *cfg is left freed/zeroed and err says "file:line:col: ...". */
int lyra_config_load(struct lyra_config *cfg, const char *home, const char *file,
                     char *const *environ_, unsigned flags, struct lyra_err *err);

/* Sets one key by its dotted name ("server.port") from text, with the same
 * type checks as the file; used for flags.  `origin` names the source in
 * error messages ("--port"). */
int lyra_config_set(struct lyra_config *cfg, const char *key, const char *value,
                    const char *origin, struct lyra_err *err);

/* Checks cross-field rules (port range, percent order, ...). */
int lyra_config_validate(const struct lyra_config *cfg, struct lyra_err *err);

/* Migrates the YAML file at `path` to the current schema on disk, keeping the
 * original bytes as `<path>.v<N>.bak`.  Nothing is written unless the
 * migrated document loads; both files are written atomically with the
 * original's permissions.  Comments of the original are not kept (they stay
 * in the backup).  *from_version (may be NULL) receives the old version
 * (equal to the current one when nothing was done). */
int lyra_config_migrate_file(const char *path, int *from_version, struct lyra_err *err);

/* Writes the effective configuration as YAML (secrets shown as "<set>" or
 * omitted).  Returns a malloc'd string the caller frees. */
char *lyra_config_dump(const struct lyra_config *cfg);

/* Frees everything owned by cfg and zeroes it.  NULL is a no-op. */
void lyra_config_free(struct lyra_config *cfg);

#endif
