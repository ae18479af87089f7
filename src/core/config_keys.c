/* config_keys.c — the table of keys and the typed handling of their values.
 *
 * Every source of a value ends in store_text() (scalar text from the file,
 * a variable or a flag) or store_null(), so the file, the environment and
 * flags accept exactly the same spellings and report the same ranges.
 * models.entries is a list of mappings with its own table (entry_keys[])
 * over struct lyra_model_entry. */
#include "core/config_keys.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/limits.h"
#include "core/util.h"

#define WHERE_MAX 512 /* origin prefixes; messages are cut to the error buffer anyway */

/* ---------------------------------------------------------------- tables */

/* Offsets that fail to compile when the field's C type does not match. */
#define FIELD(st, f, ctype) (offsetof(st, f) + _Generic(((st *)0)->f, ctype: 0))
#define C(f, ctype) FIELD(struct lyra_config, f, ctype)
#define E(f, ctype) FIELD(struct lyra_model_entry, f, ctype)

#define STR(s, k, d, fl, h) {#s, #k, LYRA_KT_STR, C(s.k, char *), 0, d, 0, 0, NULL, fl, h}
#define ENUM(s, k, d, ch, h) {#s, #k, LYRA_KT_ENUM, C(s.k, char *), 0, d, 0, 0, ch, 0, h}
/* Longest a time in seconds may be: the code works in milliseconds in an
 * int (about 24 days). */
#define LYRA_MAX_SECONDS (INT_MAX / 1000)

#define INT(s, k, d, lo, hi, h) {#s, #k, LYRA_KT_INT, C(s.k, int), 0, d, lo, hi, NULL, 0, h}
#define INTF(s, k, d, lo, hi, fl, h) {#s, #k, LYRA_KT_INT, C(s.k, int), 0, d, lo, hi, NULL, fl, h}
#define BOOL(s, k, d, h) {#s, #k, LYRA_KT_BOOL, C(s.k, bool), 0, d, 0, 0, NULL, 0, h}
#define SIZE(s, k, d, lo, h) {#s, #k, LYRA_KT_SIZE, C(s.k, size_t), 0, d, lo, 0, NULL, 0, h}
#define U64(s, k, d, h) {#s, #k, LYRA_KT_U64, C(s.k, uint64_t), 0, d, 0, 0, NULL, 0, h}
#define LIST(s, k, h) \
    {#s, #k, LYRA_KT_LIST, C(s.k, char **), C(s.n_##k, size_t), NULL, 0, 0, NULL, 0, h}

/* "0 = default" sits next to the shared ranges that start at 1. */
_Static_assert(LYRA_LIMIT_PARALLEL_MIN == 1 && LYRA_LIMIT_THREADS_MIN == 1,
               "parallel and threads accept 0 as 'default' right below their range");
_Static_assert(LYRA_LIMIT_GPU_LAYERS_MIN == -1, "gpu_layers -1 means all layers / inherit");

/* Keys of the file, grouped by section in the order the dump writes them. */
static const struct lyra_config_key config_keys[] = {
    STR(server, host, "127.0.0.1", 0, "address to listen on"),
    INT(server, port, "8000", 0, 65535, "TCP port; 0 picks a free port (see serve.json)"),
    LIST(server, cors_origins, "origins allowed by CORS; \"*\" allows any"),
    LIST(server, allowed_hosts, "Host header names accepted besides loopback (public names of this server)"),
    LIST(server, trusted_proxies,
         "reverse proxies (addresses or CIDR blocks) whose X-Forwarded-For names the client"),
    BOOL(server, allow_remote_without_auth, "false", "serve a non-loopback address with auth off (unsafe)"),
    INT(server, threads, "0", 0, 4096, "HTTP worker threads; 0 = the CPUs this process may use"),
    SIZE(server, max_body_bytes, "8MiB", 1, "largest request body accepted"),
    SIZE(server, max_header_bytes, "16KiB", 1, "largest request header block accepted"),
    INT(server, idle_timeout_s, "30", 1, LYRA_MAX_SECONDS, "idle or slow connections are closed after this"),
    INT(server, drain_timeout_s, "10", 0, LYRA_MAX_SECONDS, "shutdown waits this long for requests in flight"),
    INT(server, max_connections, "1024", 1, INT_MAX, "concurrent connections accepted"),
    STR(models, dir, "models", LYRA_KF_HOME_DEF, "directory of GGUF models"),
    STR(models, default_model, NULL, 0, "model used when a request names none; null = first available"),
    INT(models, max_loaded, "4", 1, INT_MAX, "models kept loaded at once"),
    INT(models, keep_alive_s, "300", -1, INT_MAX,
        "idle models are unloaded after this; 0 = after each request, -1 = never"),
    U64(models, memory_budget, "0", "memory all loaded models may use; 0 = memory_budget_percent of the system's"),
    INT(models, memory_budget_percent, "80", 1, 100,
        "with memory_budget 0: percent of min(MemTotal, cgroup memory.max) models may use"),
    INT(models, queue_depth, "64", 1, INT_MAX, "requests waiting per model; more are refused with 429"),
    INT(models, queue_timeout_s, "60", 1, LYRA_MAX_SECONDS, "a request waiting for room this long gets 503"),
    BOOL(models, restore_resident, "false", "load the models resident at the last stop again at start"),
    INT(models, parallel, "4", LYRA_LIMIT_PARALLEL_MIN, LYRA_LIMIT_PARALLEL_MAX,
        "request slots per model"),
    INT(models, threads, "0", 0, LYRA_LIMIT_THREADS_MAX,
        "inference threads; 0 = the CPUs this process may use"),
    INT(models, gpu_layers, "-1", LYRA_LIMIT_GPU_LAYERS_MIN, LYRA_LIMIT_GPU_LAYERS_MAX,
        "layers offloaded to the GPU; -1 = all that fit, 0 = CPU only"),
    INTF(models, ctx_size, "4096", LYRA_LIMIT_CTX_MIN, LYRA_LIMIT_CTX_MAX, LYRA_KF_ZERO,
         "context length; 0 = the model's own"),
    INT(models, load_timeout_s, "120", 1, LYRA_MAX_SECONDS, "a worker not ready after this is killed"),
    INT(models, heartbeat_timeout_s, "10", 1, LYRA_MAX_SECONDS, "a worker silent this long is killed as hung"),
    INT(models, progress_timeout_s, "60", 1, LYRA_MAX_SECONDS,
        "a worker with work but no decode step this long is hung"),
    INT(models, stop_timeout_s, "5", 1, LYRA_MAX_SECONDS, "each step of stopping a worker: EOF, SIGTERM, SIGKILL"),
    INT(models, circuit_backoff_s, "30", 1, LYRA_MAX_SECONDS, "a model that failed 3 times in 60 s is refused this long"),
    {"models", "entries", LYRA_KT_ENTRIES, C(models.entries, struct lyra_model_entry *),
     C(models.n_entries, size_t), NULL, 0, 0, NULL, 0, "models declared by name"},
    BOOL(watchdog, enabled, "true", "watch memory and shed load near the limit"),
    INT(watchdog, interval_ms, "1000", 1, INT_MAX, "how often memory is sampled"),
    INT(watchdog, warn_percent, "85", 1, 100, "memory use that warns and unloads idle models, least recently used first"),
    INT(watchdog, critical_percent, "95", 1, 100, "memory use that refuses new loads and unloads every idle model"),
    INT(watchdog, psi_warn_percent, "20", 0, 100, "memory pressure (PSI some avg10) that warns; 0 = ignore PSI"),
    INT(watchdog, psi_critical_percent, "50", 0, 100, "memory pressure that is critical; 0 = ignore"),
    U64(watchdog, min_available, "64MiB", "less available memory than this is critical"),
    BOOL(watchdog, kill_busy, "true", "when critical and nothing idle is left, stop the largest busy model"),
    BOOL(gpu, enabled, "true", "probe GPU devices at start (in a subprocess)"),
    INT(gpu, probe_timeout_s, "15", 1, LYRA_MAX_SECONDS, "the device probe is killed after this"),
    U64(gpu, reserve, "512MiB", "VRAM left free on each device"),
    BOOL(auth, enabled, "false", "require a key on every route but the health probes"),
    STR(auth, anonymous_role, "user", 0, "role of requests without a key while auth is off (loopback only)"),
    INT(auth, max_failures, "10", 1, INT_MAX, "failed authentications from one address before it is blocked"),
    INT(auth, failure_window_s, "60", 1, LYRA_MAX_SECONDS, "the window those failures are counted in"),
    INT(auth, max_block_s, "300", 1, LYRA_MAX_SECONDS, "the longest block (it doubles from 1 s per further failure)"),
    STR(auth, admin_key, NULL, LYRA_KF_SECRET, "secret: env LYRA_ADMIN_KEY or auth.admin_key_file"),
    STR(auth, admin_key_file, NULL, 0, "file holding the admin key"),
    INT(events, ring_size, "10000", 1, INT_MAX, "events kept in memory for replay"),
    INT(events, keep, "10000", 1, INT_MAX, "events kept in the database, for replay across restarts"),
    INT(events, client_queue, "1024", 1, INT_MAX, "events queued per stream client; beyond, it gets a stream.gap"),
    SIZE(events, client_queue_bytes, "1MiB", 4096, "event text queued per stream client, a replay included"),
    INT(events, ws_ping_ms, "30000", 10, INT_MAX, "WebSocket ping interval"),
    INT(events, ws_pong_timeout_ms, "30000", 10, INT_MAX, "a WebSocket client silent this long after a ping is closed"),
    INT(events, sse_ping_ms, "15000", 10, INT_MAX, "SSE keep-alive comment interval"),
    SIZE(events, ring_bytes, "16MiB", 4096, "byte budget of the replay ring"),
    SIZE(events, max_payload_bytes, "64KiB", 16, "largest payload POST /events accepts"),
    INT(jobs, max_concurrent, "4", 1, INT_MAX, "background jobs run at once (each type has its own limit too)"),
    ENUM(log, level, "info", "debug|info|warn|error", "debug, info, warn or error"),
    ENUM(log, format, "auto", "json|text|auto", "json, text or auto (text on a tty)"),
    STR(log, file, NULL, 0, "log file; null = stderr"),
};

#define EF(k, type, ctype, d, lo, hi, fl, h) {NULL, #k, type, E(k, ctype), 0, d, lo, hi, NULL, fl, h}

/* Fields of one models.entries item. */
static const struct lyra_config_key entry_keys[] = {
    EF(name, LYRA_KT_STR, char *, NULL, 0, 0, LYRA_KF_REQUIRED, "model name"),
    EF(path, LYRA_KT_STR, char *, NULL, 0, 0, LYRA_KF_REQUIRED, "GGUF file; relative to models.dir"),
    {NULL, "aliases", LYRA_KT_LIST, E(aliases, char **), E(n_aliases, size_t), NULL, 0, 0, NULL, 0,
     "other names"},
    EF(ctx_size, LYRA_KT_INT, int, "0", LYRA_LIMIT_CTX_MIN, LYRA_LIMIT_CTX_MAX, LYRA_KF_ZERO,
       "0 = models.ctx_size"),
    EF(parallel, LYRA_KT_INT, int, "0", 0, LYRA_LIMIT_PARALLEL_MAX, 0, "0 = models.parallel"),
    EF(threads, LYRA_KT_INT, int, "0", 0, LYRA_LIMIT_THREADS_MAX, 0, "0 = models.threads"),
    EF(gpu_layers, LYRA_KT_INT, int, "-1", LYRA_LIMIT_GPU_LAYERS_MIN, LYRA_LIMIT_GPU_LAYERS_MAX, 0,
       "-1 = models.gpu_layers"),
    EF(chat_template, LYRA_KT_STR, char *, NULL, 0, 0, 0, "null = template from the GGUF"),
    EF(embeddings, LYRA_KT_BOOL, bool, "false", 0, 0, 0, "serve embeddings"),
    EF(pinned, LYRA_KT_BOOL, bool, "false", 0, 0, 0, "loaded at start and never unloaded"),
    EF(keep_alive_s, LYRA_KT_INT, int, "-2", -2, INT_MAX, 0,
       "-2 = models.keep_alive_s, -1 = never, 0 = after each request"),
    {NULL, "fallback", LYRA_KT_LIST, E(fallback, char **), E(n_fallback, size_t), NULL, 0, 0, NULL, 0,
     "models that serve instead when this one cannot load"},
    EF(temperature, LYRA_KT_DOUBLE, double, NULL, 0, 100, LYRA_KF_UNSET,
       "default sampling temperature"),
    EF(top_p, LYRA_KT_DOUBLE, double, NULL, 0, 1, LYRA_KF_UNSET, "default top-p"),
    EF(top_k, LYRA_KT_INT, int, NULL, 0, INT_MAX, LYRA_KF_UNSET, "default top-k"),
};

#define N_CONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])
#define N_ENTRY_KEYS (sizeof entry_keys / sizeof entry_keys[0])

/* A table with its length, so that helpers serve the config and an entry. */
struct keyset {
    const struct lyra_config_key *keys;
    size_t n;
};
static const struct keyset CONFIG_SET = {config_keys, N_CONFIG_KEYS};
static const struct keyset ENTRY_SET = {entry_keys, N_ENTRY_KEYS};

const struct lyra_config_key *lyra_config_keys_all(size_t *n)
{
    *n = N_CONFIG_KEYS;
    return config_keys;
}

const struct lyra_config_key *lyra_config_keys_entry_fields(size_t *n)
{
    *n = N_ENTRY_KEYS;
    return entry_keys;
}

/* ------------------------------------------------------- small helpers */

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory reading the configuration");
}

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Frees a secret after wiping it, so that it does not linger in freed memory. */
static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* ---------------------------------------------------------- value parsing */

/* Parses "1024", "512MB" (10^6), "4GiB" (2^30), ... Units are
 * case-insensitive; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024.
 * Returns 0, -1 for bad syntax, -2 for overflow. */
static int parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},           {"B", 1},           {"KB", 1000ull},    {"KiB", 1ull << 10},
        {"MB", 1000000ull}, {"MiB", 1ull << 20}, {"GB", 1000000000ull}, {"GiB", 1ull << 30},
        {"TB", 1000000000000ull}, {"TiB", 1ull << 40},
    };
    if (!isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -2;
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].mult)
                return -2;
            *out = v * units[i].mult;
            return 0;
        }
    }
    return -1;
}

static bool parse_double(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return false;
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return errno == 0 && *end == '\0' && isfinite(*out);
}

/* The canonical spelling of s among "a|b|c" (case-insensitive), or NULL. */
static const char *match_choice(const char *choices, const char *s, char *tmp, size_t tmpsz)
{
    size_t n = strlen(s);
    for (const char *c = choices; *c;) {
        size_t len = strcspn(c, "|");
        if (len == n && strncasecmp(c, s, n) == 0 && len < tmpsz) {
            memcpy(tmp, c, len);
            tmp[len] = '\0';
            return tmp;
        }
        c += len + (c[len] == '|');
    }
    return NULL;
}

/* Splits "a, b,c" into a new list of trimmed, non-empty items.
 * Returns 0 or LYRA_ENOMEM; *out is NULL when the list is empty. */
static int split_list(const char *s, char ***out, size_t *n_out)
{
    char **list = NULL;
    size_t n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        const char *a = s, *b = s + len;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (b > a) {
            char **grown = realloc(list, (n + 1) * sizeof *list);
            char *item = grown ? strndup(a, (size_t)(b - a)) : NULL;
            if (grown)
                list = grown;
            if (!item) {
                free_list(list, n);
                return LYRA_ENOMEM;
            }
            list[n++] = item;
        }
        s += len + (s[len] == ',');
    }
    *out = list;
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------ storing a value */

static void *field_of(void *base, const struct lyra_config_key *k)
{
    return (char *)base + k->off;
}

static size_t *count_of(void *base, const struct lyra_config_key *k)
{
    return (size_t *)((char *)base + k->off_n);
}

static const char *type_name(const struct lyra_config_key *k)
{
    switch (k->type) {
    case LYRA_KT_STR: return "a string";
    case LYRA_KT_ENUM: return "a string";
    case LYRA_KT_INT: return "an integer";
    case LYRA_KT_BOOL: return "true or false";
    case LYRA_KT_SIZE:
    case LYRA_KT_U64: return "a size (like 1024, 512MB or 4GiB)";
    case LYRA_KT_DOUBLE: return "a number";
    case LYRA_KT_LIST: return "a list of strings";
    case LYRA_KT_ENTRIES: return "a list of models (mappings with name and path)";
    }
    return "a value";
}

static bool nullable(const struct lyra_config_key *k)
{
    return (k->type == LYRA_KT_STR && !k->def && !(k->flags & LYRA_KF_REQUIRED)) ||
           k->type == LYRA_KT_LIST || k->type == LYRA_KT_ENTRIES || (k->flags & LYRA_KF_UNSET);
}

static void free_entries(struct lyra_model_entry *e, size_t n);

/* Frees whatever the field owns and resets it to empty/NULL. */
static void clear_field(void *base, const struct lyra_config_key *k)
{
    void *f = field_of(base, k);
    if (k->type == LYRA_KT_STR || k->type == LYRA_KT_ENUM) {
        if (k->flags & LYRA_KF_SECRET)
            free_secret(*(char **)f);
        else
            free(*(char **)f);
        *(char **)f = NULL;
    } else if (k->type == LYRA_KT_LIST) {
        free_list(*(char ***)f, *count_of(base, k));
        *(char ***)f = NULL;
        *count_of(base, k) = 0;
    } else if (k->type == LYRA_KT_ENTRIES) {
        free_entries(*(struct lyra_model_entry **)f, *count_of(base, k));
        *(struct lyra_model_entry **)f = NULL;
        *count_of(base, k) = 0;
    }
}

/* Sets the field to its null meaning (NULL, empty, or -1 for UNSET).
 * `where` prefixes the error ("file:3:9: server.port", "env LYRA_X"). */
static int store_null(void *base, const struct lyra_config_key *k, const char *where,
                      struct lyra_err *err)
{
    if (!nullable(k))
        return lyra_err_set(err, LYRA_ECONFIG, "%s: expected %s, got null", where, type_name(k));
    clear_field(base, k);
    if (k->type == LYRA_KT_INT)
        *(int *)field_of(base, k) = -1;
    else if (k->type == LYRA_KT_DOUBLE)
        *(double *)field_of(base, k) = -1;
    return 0;
}

static int range_error(const struct lyra_config_key *k, const char *where, const char *text,
                       struct lyra_err *err)
{
    if (k->max > k->min && k->max < INT_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is out of range (%s%.15g..%.15g)", where,
                            text, k->flags & LYRA_KF_ZERO ? "0 or " : "", k->min, k->max);
    return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is out of range (must be at least %.15g)",
                        where, text, k->min);
}

/* True when an integer lies within a key's range. */
static bool int_in_range(const struct lyra_config_key *k, long long v)
{
    return (v >= k->min && v <= k->max) || ((k->flags & LYRA_KF_ZERO) && v == 0);
}

/* Parses a number-like text into the field; the field is untouched on error. */
static int store_number(void *base, const struct lyra_config_key *k, const char *text,
                        const char *where, struct lyra_err *err)
{
    void *f = field_of(base, k);
    long long ll;
    double d;
    uint64_t u;
    int rc;
    switch (k->type) {
    case LYRA_KT_INT:
        if (!lyra_yamldoc_int(text, &ll))
            break;
        if (!int_in_range(k, ll))
            return range_error(k, where, text, err);
        *(int *)f = (int)ll;
        return 0;
    case LYRA_KT_BOOL:
        return lyra_yamldoc_bool(text, (bool *)f)
                   ? 0
                   : lyra_err_set(err, LYRA_ECONFIG, "%s: expected true or false, got '%s'",
                                  where, text);
    case LYRA_KT_DOUBLE:
        if (!parse_double(text, &d))
            break;
        if (d < k->min || d > k->max)
            return range_error(k, where, text, err);
        *(double *)f = d;
        return 0;
    default: /* SIZE, U64 */
        rc = parse_size(text, &u);
        if (rc == -1)
            break;
        if (rc == -2 || (k->type == LYRA_KT_SIZE && u > SIZE_MAX))
            return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is too large", where, text);
        if (u < (uint64_t)k->min)
            return range_error(k, where, text, err);
        if (k->type == LYRA_KT_SIZE)
            *(size_t *)f = (size_t)u;
        else
            *(uint64_t *)f = u;
        return 0;
    }
    return lyra_err_set(err, LYRA_ECONFIG, "%s: expected %s, got '%s'", where, type_name(k), text);
}

/* Parses text (from the file, env or a flag) into the field of base.
 * Strings: an empty text means null where the key allows it.  Lists: text is
 * comma-separated.  The field is left as it was on error. */
static int store_text(void *base, const struct lyra_config_key *k, const char *text,
                      const char *where, struct lyra_err *err)
{
    char canon[32];
    const char *v = text;
    char *s;
    char **list;
    size_t n;
    switch (k->type) {
    case LYRA_KT_STR:
    case LYRA_KT_ENUM:
        if (!*text && nullable(k))
            return store_null(base, k, where, err);
        if (k->type == LYRA_KT_ENUM && !(v = match_choice(k->choices, text, canon, sizeof canon)))
            return lyra_err_set(err, LYRA_ECONFIG, "%s: expected one of %s, got '%s'", where,
                                k->choices, text);
        if (!(s = strdup(v)))
            return nomem(err);
        clear_field(base, k);
        *(char **)field_of(base, k) = s;
        return 0;
    case LYRA_KT_LIST:
        if (split_list(text, &list, &n))
            return nomem(err);
        clear_field(base, k);
        *(char ***)field_of(base, k) = list;
        *count_of(base, k) = n;
        return 0;
    case LYRA_KT_ENTRIES:
        return lyra_err_set(err, LYRA_ECONFIG, "%s: models.entries can only be set in the file",
                            where);
    default:
        return store_number(base, k, text, where, err);
    }
}

/* Applies the defaults of a table to base (zeroed).  HOME_DEF defaults are
 * joined to home. */
static int set_defaults(void *base, struct keyset ks, const char *home, struct lyra_err *err)
{
    for (size_t i = 0; i < ks.n; i++) {
        const struct lyra_config_key *k = &ks.keys[i];
        int rc;
        if (!k->def) {
            rc = nullable(k) ? store_null(base, k, k->name, err) : 0;
        } else if (k->flags & LYRA_KF_HOME_DEF) {
            char *p = lyra_path_join(home, k->def);
            rc = p ? store_text(base, k, p, k->name, err) : nomem(err);
            free(p);
        } else {
            rc = store_text(base, k, k->def, k->name, err);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* Frees every field a table owns in base. */
static void free_fields(void *base, struct keyset ks)
{
    for (size_t i = 0; i < ks.n; i++)
        clear_field(base, &ks.keys[i]);
}

static void free_entries(struct lyra_model_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free_fields(&e[i], ENTRY_SET);
    free(e);
}

/* The row named `name` (in `section` for the config table), or NULL. */
static const struct lyra_config_key *find_key(struct keyset ks, const char *section,
                                              const char *name)
{
    for (size_t i = 0; i < ks.n; i++)
        if ((!section || !strcmp(ks.keys[i].section, section)) && !strcmp(ks.keys[i].name, name))
            return &ks.keys[i];
    return NULL;
}

const struct lyra_config_key *lyra_config_keys_find(const char *section, const char *name)
{
    return section && name ? find_key(CONFIG_SET, section, name) : NULL;
}

static bool section_known(const char *section)
{
    for (size_t i = 0; i < N_CONFIG_KEYS; i++)
        if (!strcmp(config_keys[i].section, section))
            return true;
    return false;
}

int lyra_config_keys_defaults(struct lyra_config *cfg, const char *home, struct lyra_err *err)
{
    return set_defaults(cfg, CONFIG_SET, home, err);
}

void lyra_config_keys_free(struct lyra_config *cfg)
{
    free_fields(cfg, CONFIG_SET);
}

/* --------------------------------------------------- applying a document */

/* Rejects a key that appears twice in one mapping. */
static int check_duplicates(const struct lyra_ynode *map, const char *file, const char *label,
                            struct lyra_err *err)
{
    for (size_t i = 1; i < lyra_yamldoc_pairs(map); i++) {
        for (size_t j = 0; j < i; j++) {
            const struct lyra_ynode *k = map->kids[2 * i];
            if (strcmp(k->text, map->kids[2 * j]->text))
                continue;
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: duplicate key '%s' in %s", file,
                                k->line, k->col, k->text, label);
        }
    }
    return 0;
}

/* Stores a YAML list of strings into a LIST field. */
static int store_seq(void *base, const struct lyra_config_key *k, const struct lyra_ynode *seq,
                     const char *file, const char *label, struct lyra_err *err)
{
    char **list = seq->n ? calloc(seq->n, sizeof *list) : NULL;
    if (seq->n && !list)
        return nomem(err);
    for (size_t i = 0; i < seq->n; i++) {
        const struct lyra_ynode *it = seq->kids[i];
        int rc = 0;
        if (it->kind != LYRA_YNODE_SCALAR || lyra_yamldoc_is_null(it))
            rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s[%zu]: expected a string, got %s",
                              file, it->line, it->col, label, i,
                              it->kind == LYRA_YNODE_SCALAR ? "null" : lyra_yamldoc_kind_name(it));
        else if (!(list[i] = strdup(it->text)))
            rc = nomem(err);
        if (rc) {
            free_list(list, i);
            return rc;
        }
    }
    clear_field(base, k);
    *(char ***)field_of(base, k) = list;
    *count_of(base, k) = seq->n;
    return 0;
}

static int store_entries(void *cfg, const struct lyra_config_key *k, const struct lyra_ynode *seq,
                         const char *file, struct lyra_err *err);

/* Stores the value node of `key` (a row of a table) into base.  label is
 * the dotted name used in messages ("server.port", "models.entries[0].name"). */
static int store_node(void *base, const struct lyra_config_key *k, const struct lyra_ynode *key,
                      const struct lyra_ynode *val, const char *file, const char *label,
                      struct lyra_err *err)
{
    char where[WHERE_MAX];
    lyra_fmt(where, sizeof where, "%s:%d:%d: %s", file, val->line, val->col, label);
    if (k->flags & LYRA_KF_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG,
                            "%s:%d:%d: %s: secrets must not be written in the config file; "
                            "set env LYRA_ADMIN_KEY or auth.admin_key_file",
                            file, key->line, key->col, label);
    if (lyra_yamldoc_is_null(val))
        return store_null(base, k, where, err);
    if (k->type == LYRA_KT_ENTRIES && val->kind == LYRA_YNODE_SEQ)
        return store_entries(base, k, val, file, err);
    if (k->type == LYRA_KT_LIST && val->kind == LYRA_YNODE_SEQ)
        return store_seq(base, k, val, file, label, err);
    if (val->kind != LYRA_YNODE_SCALAR || k->type == LYRA_KT_ENTRIES || k->type == LYRA_KT_LIST)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: expected %s, got %s", where, type_name(k),
                            lyra_yamldoc_kind_name(val));
    return store_text(base, k, val->text, where, err);
}

/* The name or alias of e that is already taken by one of prev[0..n), or NULL. */
static const char *taken_id(const struct lyra_model_entry *prev, size_t n,
                            const struct lyra_model_entry *e)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t a = 0; a <= e->n_aliases; a++) {
            const char *id = a == 0 ? e->name : e->aliases[a - 1];
            if (!strcmp(prev[i].name, id))
                return id;
            for (size_t b = 0; b < prev[i].n_aliases; b++)
                if (!strcmp(prev[i].aliases[b], id))
                    return id;
        }
    }
    return NULL;
}

/* Fills *e (zeroed) from one item of models.entries. */
static int parse_entry(struct lyra_model_entry *e, const struct lyra_ynode *item, size_t idx,
                       const char *file, struct lyra_err *err)
{
    char label[WHERE_MAX], field[WHERE_MAX];
    lyra_fmt(label, sizeof label, "models.entries[%zu]", idx);
    int rc = set_defaults(e, ENTRY_SET, "", err);
    if (!rc && item->kind != LYRA_YNODE_MAP)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s: expected a mapping with name and "
                            "path, got %s", file, item->line, item->col, label,
                            lyra_yamldoc_kind_name(item));
    if (!rc)
        rc = check_duplicates(item, file, label, err);
    for (size_t i = 0; !rc && i < lyra_yamldoc_pairs(item); i++) {
        const struct lyra_ynode *key = item->kids[2 * i];
        const struct lyra_config_key *k = find_key(ENTRY_SET, NULL, key->text);
        if (!k)
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown key '%s' in %s", file,
                                key->line, key->col, key->text, label);
        lyra_fmt(field, sizeof field, "%s.%s", label, key->text);
        rc = store_node(e, k, key, item->kids[2 * i + 1], file, field, err);
    }
    for (size_t i = 0; !rc && i < N_ENTRY_KEYS; i++) {
        const struct lyra_config_key *k = &entry_keys[i];
        if ((k->flags & LYRA_KF_REQUIRED) && !*(char **)field_of(e, k))
            rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s: missing required key '%s'", file,
                              item->line, item->col, label, k->name);
    }
    return rc;
}

/* Parses models.entries into a new array and replaces the field. */
static int store_entries(void *cfg, const struct lyra_config_key *k, const struct lyra_ynode *seq,
                         const char *file, struct lyra_err *err)
{
    struct lyra_model_entry *es = seq->n ? calloc(seq->n, sizeof *es) : NULL;
    if (seq->n && !es)
        return nomem(err);
    int rc = 0;
    size_t n = 0;
    for (; !rc && n < seq->n; n++) {
        const struct lyra_ynode *item = seq->kids[n];
        rc = parse_entry(&es[n], item, n, file, err);
        const char *dup = rc ? NULL : taken_id(es, n, &es[n]);
        if (dup)
            rc = lyra_err_set(err, LYRA_ECONFIG,
                              "%s:%d:%d: models.entries[%zu]: duplicate model name '%s'", file,
                              item->line, item->col, n, dup);
    }
    if (rc) {
        free_entries(es, n);
        return rc;
    }
    clear_field(cfg, k);
    *(struct lyra_model_entry **)field_of(cfg, k) = es;
    *count_of(cfg, k) = n;
    return 0;
}

/* Applies one section's mapping to cfg. */
static int apply_section(struct lyra_config *cfg, const struct lyra_ynode *skey,
                         const struct lyra_ynode *map, const char *file, struct lyra_err *err)
{
    const char *sec = skey->text;
    if (lyra_yamldoc_is_null(map))
        return 0;
    if (map->kind != LYRA_YNODE_MAP)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: section '%s' must be a mapping, got %s",
                            file, map->line, map->col, sec, lyra_yamldoc_kind_name(map));
    char label[WHERE_MAX];
    lyra_fmt(label, sizeof label, "section '%s'", sec);
    int rc = check_duplicates(map, file, label, err);
    for (size_t i = 0; !rc && i < lyra_yamldoc_pairs(map); i++) {
        const struct lyra_ynode *key = map->kids[2 * i];
        const struct lyra_config_key *k = find_key(CONFIG_SET, sec, key->text);
        if (!k)
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown key '%s' in section '%s'",
                                file, key->line, key->col, key->text, sec);
        lyra_fmt(label, sizeof label, "%s.%s", sec, key->text);
        rc = store_node(cfg, k, key, map->kids[2 * i + 1], file, label, err);
    }
    return rc;
}

int lyra_config_keys_apply(struct lyra_config *cfg, const struct lyra_ynode *root,
                           const char *file, struct lyra_err *err)
{
    if (!root)
        return 0;
    if (root->kind != LYRA_YNODE_MAP)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: expected a mapping of sections", file,
                            root->line, root->col);
    int rc = check_duplicates(root, file, "the top level", err);
    for (size_t i = 0; !rc && i < lyra_yamldoc_pairs(root); i++) {
        const struct lyra_ynode *key = root->kids[2 * i];
        if (!strcmp(key->text, "schema_version"))
            continue;
        if (!section_known(key->text))
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown section '%s'", file,
                                key->line, key->col, key->text);
        rc = apply_section(cfg, key, root->kids[2 * i + 1], file, err);
    }
    return rc;
}

/* ----------------------------------------------------- env and flags */

/* Compares the lower-case name with n bytes of s in upper case. */
static bool upper_eq(const char *lower, const char *s, size_t n)
{
    if (strlen(lower) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (toupper((unsigned char)lower[i]) != s[i])
            return false;
    return true;
}

/* The section whose upper-case name and '_' start s, or NULL; *len
 * receives the length of that prefix. */
static const char *env_section(const char *s, size_t *len)
{
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        const char *sec = config_keys[i].section;
        size_t n = strlen(sec);
        if (upper_eq(sec, s, n) && s[n] == '_') {
            *len = n + 1;
            return sec;
        }
    }
    return NULL;
}

/* Applies one LYRA_<SECTION>_<KEY>=value.  var is the whole "NAME=value". */
static int apply_env_var(struct lyra_config *cfg, const char *sec, const char *var,
                         size_t name_len, const char *key, size_t key_len, struct lyra_err *err)
{
    char where[WHERE_MAX], lower[128];
    lyra_fmt(where, sizeof where, "env %.*s", (int)name_len, var); /* cut at '=' */
    const struct lyra_config_key *k = NULL;
    for (size_t i = 0; i < N_CONFIG_KEYS && !k; i++)
        if (!strcmp(config_keys[i].section, sec) && upper_eq(config_keys[i].name, key, key_len))
            k = &config_keys[i];
    if (!k) {
        size_t n = key_len < sizeof lower - 1 ? key_len : sizeof lower - 1;
        for (size_t i = 0; i < n; i++)
            lower[i] = (char)tolower((unsigned char)key[i]);
        lower[n] = '\0';
        lower[lyra_utf8_clip(lower, n)] = '\0';
        return lyra_err_set(err, LYRA_ECONFIG, "%s: unknown key %s.%s", where, sec, lower);
    }
    if (k->flags & LYRA_KF_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: the admin key is read from LYRA_ADMIN_KEY",
                            where);
    return store_text(cfg, k, var + name_len + 1, where, err);
}

int lyra_config_keys_apply_env(struct lyra_config *cfg, char *const *env, struct lyra_err *err)
{
    for (; env && *env; env++) {
        const char *var = *env, *eq = strchr(var, '=');
        size_t plen;
        if (strncmp(var, "LYRA_", 5) || !eq)
            continue;
        const char *sec = env_section(var + 5, &plen);
        if (!sec || var + 5 + plen > eq)
            continue;
        const char *key = var + 5 + plen;
        int rc = apply_env_var(cfg, sec, var, (size_t)(eq - var), key, (size_t)(eq - key), err);
        if (rc)
            return rc;
    }
    return 0;
}

int lyra_config_keys_set(struct lyra_config *cfg, const char *key, const char *text,
                         const char *where, struct lyra_err *err)
{
    const char *dot = key ? strchr(key, '.') : NULL;
    const struct lyra_config_key *k = NULL;
    char sec[32];
    if (!where)
        where = key ? key : "set";
    if (dot && (size_t)(dot - key) < sizeof sec) {
        memcpy(sec, key, (size_t)(dot - key));
        sec[dot - key] = '\0';
        k = find_key(CONFIG_SET, sec, dot + 1);
    }
    if (!cfg || !k)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: unknown key '%s'", where, key ? key : "(null)");
    if (k->flags & LYRA_KF_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: secrets cannot be set here; set env "
                            "LYRA_ADMIN_KEY or auth.admin_key_file", where);
    return text ? store_text(cfg, k, text, where, err) : store_null(cfg, k, where, err);
}

/* ------------------------------------------------------------ checking */

/* Checks one field against its row; label names it in the message. */
static int check_field(const void *base, const struct lyra_config_key *k, const char *label,
                       struct lyra_err *err)
{
    const void *f = (const char *)base + k->off;
    char num[64];
    char canon[32];
    const char *s;
    switch (k->type) {
    case LYRA_KT_INT:
        if ((k->flags & LYRA_KF_UNSET) && *(const int *)f < 0)
            return 0;
        snprintf(num, sizeof num, "%d", *(const int *)f);
        return int_in_range(k, *(const int *)f) ? 0 : range_error(k, label, num, err);
    case LYRA_KT_DOUBLE:
        if ((k->flags & LYRA_KF_UNSET) && *(const double *)f < 0)
            return 0;
        snprintf(num, sizeof num, "%g", *(const double *)f);
        return !(*(const double *)f >= k->min && *(const double *)f <= k->max)
                   ? range_error(k, label, num, err) : 0;
    case LYRA_KT_SIZE:
        snprintf(num, sizeof num, "%zu", *(const size_t *)f);
        return *(const size_t *)f < (size_t)k->min ? range_error(k, label, num, err) : 0;
    case LYRA_KT_ENUM:
        s = *(char *const *)f;
        return s && match_choice(k->choices, s, canon, sizeof canon)
                   ? 0 : lyra_err_set(err, LYRA_ECONFIG, "%s: expected one of %s", label, k->choices);
    case LYRA_KT_STR:
        s = *(char *const *)f;
        return (k->def || (k->flags & LYRA_KF_REQUIRED)) && (!s || !*s)
                   ? lyra_err_set(err, LYRA_ECONFIG, "%s: must not be empty", label) : 0;
    default:
        return 0;
    }
}

/* Checks every field of base against a table. */
static int check_fields(const void *base, struct keyset ks, const char *prefix,
                        struct lyra_err *err)
{
    char label[WHERE_MAX];
    for (size_t i = 0; i < ks.n; i++) {
        const struct lyra_config_key *k = &ks.keys[i];
        lyra_fmt(label, sizeof label, "%s%s%s%s", prefix, k->section ? k->section : "",
                 k->section ? "." : "", k->name);
        int rc = check_field(base, k, label, err);
        if (rc)
            return rc;
    }
    return 0;
}

int lyra_config_keys_check(const struct lyra_config *cfg, struct lyra_err *err)
{
    int rc = check_fields(cfg, CONFIG_SET, "", err);
    for (size_t i = 0; !rc && i < cfg->models.n_entries; i++) {
        const struct lyra_model_entry *e = &cfg->models.entries[i];
        char prefix[64];
        snprintf(prefix, sizeof prefix, "models.entries[%zu].", i);
        rc = check_fields(e, ENTRY_SET, prefix, err);
        const char *dup = rc ? NULL : taken_id(cfg->models.entries, i, e);
        if (dup)
            rc = lyra_err_set(err, LYRA_ECONFIG, "models.entries[%zu]: duplicate model name '%s'",
                              i, dup);
    }
    return rc;
}

/* ---------------------------------------------------------------- dump */

/* "4GiB" for exact multiples of a binary unit, else the number of bytes. */
static void format_size(uint64_t v, char *out, size_t n)
{
    static const char *const units[] = {"TiB", "GiB", "MiB", "KiB"};
    for (int i = 0; i < 4; i++) {
        uint64_t m = 1ull << (10 * (4 - i));
        if (v && v % m == 0) {
            snprintf(out, n, "%llu%s", (unsigned long long)(v / m), units[i]);
            return;
        }
    }
    snprintf(out, n, "%llu", (unsigned long long)v);
}

/* The shortest text that reads back as exactly v. */
static void format_double(double v, char *out, size_t n)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static struct lyra_ynode *scalar(const char *text, bool plain)
{
    return lyra_yamldoc_node(LYRA_YNODE_SCALAR, text, plain, 0, 0);
}

static struct lyra_ynode *value_node(const void *base, const struct lyra_config_key *k);

/* Appends key: value to map, freeing map and returning NULL on failure. */
static struct lyra_ynode *add_pair(struct lyra_ynode *map, const char *key, struct lyra_ynode *val)
{
    if (lyra_yamldoc_map_insert(map, lyra_yamldoc_pairs(map), scalar(key, true), val)) {
        lyra_yamldoc_free(map);
        return NULL;
    }
    return map;
}

/* A model entry as a mapping; unset optional fields are left out. */
static struct lyra_ynode *entry_node(const struct lyra_model_entry *e)
{
    struct lyra_ynode *map = lyra_yamldoc_node(LYRA_YNODE_MAP, NULL, false, 0, 0);
    for (size_t j = 0; map && j < N_ENTRY_KEYS; j++) {
        const struct lyra_config_key *k = &entry_keys[j];
        const void *f = (const char *)e + k->off;
        if ((k->flags & LYRA_KF_UNSET) &&
            (k->type == LYRA_KT_INT ? *(const int *)f < 0 : *(const double *)f < 0))
            continue;
        map = add_pair(map, k->name, value_node(e, k));
    }
    return map;
}

/* A sequence of strings (LIST) or of model entries (ENTRIES). */
static struct lyra_ynode *seq_node(const void *base, const struct lyra_config_key *k)
{
    const void *f = (const char *)base + k->off;
    size_t n = *(const size_t *)((const char *)base + k->off_n);
    struct lyra_ynode *seq = lyra_yamldoc_node(LYRA_YNODE_SEQ, NULL, false, 0, 0);
    for (size_t i = 0; seq && i < n; i++) {
        struct lyra_ynode *item = k->type == LYRA_KT_LIST
            ? scalar((*(char **const *)f)[i], false)
            : entry_node(&(*(struct lyra_model_entry *const *)f)[i]);
        if (lyra_yamldoc_push(seq, item)) {
            lyra_yamldoc_free(seq);
            seq = NULL;
        }
    }
    return seq;
}

/* The value of a field as a node (NULL when out of memory). */
static struct lyra_ynode *value_node(const void *base, const struct lyra_config_key *k)
{
    const void *f = (const char *)base + k->off;
    char tmp[64];
    const char *s = tmp;
    switch (k->type) {
    case LYRA_KT_STR:
    case LYRA_KT_ENUM:
        s = *(char *const *)f;
        return s ? scalar(s, false) : scalar("~", true);
    case LYRA_KT_INT: snprintf(tmp, sizeof tmp, "%d", *(const int *)f); break;
    case LYRA_KT_BOOL: s = *(const bool *)f ? "true" : "false"; break;
    case LYRA_KT_SIZE: format_size(*(const size_t *)f, tmp, sizeof tmp); break;
    case LYRA_KT_U64: format_size(*(const uint64_t *)f, tmp, sizeof tmp); break;
    case LYRA_KT_DOUBLE: format_double(*(const double *)f, tmp, sizeof tmp); break;
    case LYRA_KT_LIST:
    case LYRA_KT_ENTRIES: return seq_node(base, k);
    }
    return scalar(s, true);
}

struct lyra_ynode *lyra_config_keys_tree(const struct lyra_config *cfg)
{
    char ver[16];
    snprintf(ver, sizeof ver, "%d", LYRA_CONFIG_SCHEMA_VERSION);
    struct lyra_ynode *root = lyra_yamldoc_node(LYRA_YNODE_MAP, NULL, false, 0, 0), *sec = NULL;
    if (root)
        root = add_pair(root, "schema_version", scalar(ver, true));
    for (size_t i = 0; root && i < N_CONFIG_KEYS; i++) {
        const struct lyra_config_key *k = &config_keys[i];
        if (k->flags & LYRA_KF_SECRET)
            continue;
        if (!sec || strcmp(k->section, config_keys[i - 1].section)) {
            sec = lyra_yamldoc_node(LYRA_YNODE_MAP, NULL, false, 0, 0);
            if (!(root = add_pair(root, k->section, sec)))
                break; /* sec went with root */
        }
        struct lyra_ynode *v = value_node(cfg, k);
        if (v)
            v->comment = k->help;
        if (lyra_yamldoc_map_insert(sec, lyra_yamldoc_pairs(sec), scalar(k->name, true), v)) {
            lyra_yamldoc_free(root);
            root = NULL;
        }
    }
    return root;
}
