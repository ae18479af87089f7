/* config.c — Lyra's configuration: defaults, YAML file, environment, flags.
 *
 * One table of keys (config_keys[]) drives everything: defaults, the file,
 * LYRA_<SECTION>_<KEY> variables, lyra_config_set(), validation, dump and
 * free.  Each row names the field by its offset in struct lyra_config, its
 * type, its default written as text (parsed by the same code as the file) and
 * a help line.  models.entries is a list of maps with its own table
 * (entry_keys[]) over struct lyra_model_entry.  Adding a key means adding a
 * field to config.h and one row here.
 *
 * The file is read with libyaml's event parser into a small tree of nodes
 * that remember their 1-based line and column, so every complaint reads
 * "file:line:col: ...".  Schema migrations rewrite that tree one version step
 * at a time (migrations[]); the tree is written back as YAML by a small
 * writer that quotes whatever is not plainly safe. */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

extern char **environ;

#define MAX_FILE_BYTES (4u << 20)  /* a config file bigger than this is a mistake */
#define MAX_SECRET_BYTES (64u << 10)
#define MAX_DEPTH 32               /* nesting deeper than this is rejected, not recursed */
#define WHERE_MAX 512              /* error prefixes are cut to the error buffer anyway */

/* ---------------------------------------------------------------- tables */

enum ktype {
    T_STR,     /* char *; NULL when the default is NULL and the value is null/empty */
    T_ENUM,    /* char *, one of k->choices */
    T_INT,     /* int within [min, max] */
    T_BOOL,    /* bool */
    T_SIZE,    /* size_t, "4GiB", "512MB", "1024"; >= min */
    T_U64,     /* uint64_t, same syntax as T_SIZE */
    T_DOUBLE,  /* double within [min, max] */
    T_LIST,    /* char ** with a size_t count at off_n */
    T_ENTRIES, /* struct lyra_model_entry * with a size_t count at off_n */
};

enum kflags {
    F_SECRET = 1 << 0,   /* never read from the file or flags, never written */
    F_HOME_DEF = 1 << 1, /* the default is a path relative to LYRA_HOME */
    F_REQUIRED = 1 << 2, /* a model entry must set it */
    F_UNSET = 1 << 3,    /* null means "unset" (-1); unset values are not dumped */
};

struct keydef {
    const char *section; /* config_keys: the section; entry_keys: NULL */
    const char *name;
    enum ktype type;
    size_t off;          /* offset of the field */
    size_t off_n;        /* T_LIST, T_ENTRIES: offset of the count */
    const char *def;     /* default as text, parsed like a file value; NULL = none */
    double min, max;     /* T_INT, T_DOUBLE range; T_SIZE, T_U64 minimum in min */
    const char *choices; /* T_ENUM: "a|b|c" */
    unsigned flags;
    const char *help;
};

/* Offsets that fail to compile when the field's C type does not match. */
#define FIELD(st, f, ctype) (offsetof(st, f) + _Generic(((st *)0)->f, ctype: 0))
#define C(f, ctype) FIELD(struct lyra_config, f, ctype)
#define E(f, ctype) FIELD(struct lyra_model_entry, f, ctype)

#define STR(s, k, d, fl, h) {#s, #k, T_STR, C(s.k, char *), 0, d, 0, 0, NULL, fl, h}
#define ENUM(s, k, d, ch, h) {#s, #k, T_ENUM, C(s.k, char *), 0, d, 0, 0, ch, 0, h}
#define INT(s, k, d, lo, hi, h) {#s, #k, T_INT, C(s.k, int), 0, d, lo, hi, NULL, 0, h}
#define BOOL(s, k, d, h) {#s, #k, T_BOOL, C(s.k, bool), 0, d, 0, 0, NULL, 0, h}
#define SIZE(s, k, d, lo, h) {#s, #k, T_SIZE, C(s.k, size_t), 0, d, lo, 0, NULL, 0, h}
#define U64(s, k, d, h) {#s, #k, T_U64, C(s.k, uint64_t), 0, d, 0, 0, NULL, 0, h}
#define LIST(s, k, h) {#s, #k, T_LIST, C(s.k, char **), C(s.n_##k, size_t), NULL, 0, 0, NULL, 0, h}

/* Keys of the file, grouped by section in the order dump writes them. */
static const struct keydef config_keys[] = {
    STR(server, host, "127.0.0.1", 0, "address to listen on"),
    INT(server, port, "8000", 0, 65535, "TCP port; 0 picks a free port (see serve.json)"),
    LIST(server, cors_origins, "origins allowed by CORS; \"*\" allows any"),
    LIST(server, allowed_hosts, "Host header names accepted besides loopback (public names of this server)"),
    BOOL(server, allow_remote_without_auth, "false", "serve a non-loopback address with auth off (unsafe)"),
    INT(server, threads, "0", 0, 4096, "HTTP worker threads; 0 = number of cores"),
    SIZE(server, max_body_bytes, "8MiB", 1, "largest request body accepted"),
    SIZE(server, max_header_bytes, "16KiB", 1, "largest request header block accepted"),
    INT(server, idle_timeout_s, "30", 1, INT_MAX, "idle or slow connections are closed after this"),
    INT(server, drain_timeout_s, "10", 0, INT_MAX, "shutdown waits this long for requests in flight"),
    INT(server, max_connections, "1024", 1, INT_MAX, "concurrent connections accepted"),
    STR(models, dir, "models", F_HOME_DEF, "directory of GGUF models"),
    STR(models, default_model, NULL, 0, "model used when a request names none; null = first available"),
    INT(models, max_loaded, "4", 1, INT_MAX, "models kept loaded at once"),
    INT(models, keep_alive_s, "300", 0, INT_MAX, "idle models are unloaded after this"),
    U64(models, memory_budget, "0", "memory all loaded models may use; 0 = no budget"),
    INT(models, parallel, "4", 1, INT_MAX, "request slots per model"),
    INT(models, threads, "0", 0, 4096, "inference threads; 0 = number of cores"),
    INT(models, gpu_layers, "-1", -1, INT_MAX, "layers offloaded to the GPU; -1 = all that fit, 0 = CPU only"),
    INT(models, ctx_size, "4096", 0, INT_MAX, "context length; 0 = the model's own"),
    INT(models, load_timeout_s, "120", 1, INT_MAX, "a worker not ready after this is killed"),
    INT(models, heartbeat_timeout_s, "10", 1, INT_MAX, "a worker silent this long is killed as hung"),
    INT(models, progress_timeout_s, "60", 1, INT_MAX, "a worker with work but no decode step this long is hung"),
    INT(models, stop_timeout_s, "5", 1, INT_MAX, "each step of stopping a worker: EOF, SIGTERM, SIGKILL"),
    {"models", "entries", T_ENTRIES, C(models.entries, struct lyra_model_entry *),
     C(models.n_entries, size_t), NULL, 0, 0, NULL, 0, "models declared by name"},
    BOOL(watchdog, enabled, "true", "watch memory and shed load near the limit"),
    INT(watchdog, interval_ms, "1000", 1, INT_MAX, "how often memory is sampled"),
    INT(watchdog, warn_percent, "85", 1, 100, "memory use that logs a warning"),
    INT(watchdog, critical_percent, "95", 1, 100, "memory use that unloads idle models"),
    BOOL(auth, enabled, "false", "require a key; off: no key required on loopback"),
    STR(auth, admin_key, NULL, F_SECRET, "secret: env LYRA_ADMIN_KEY or auth.admin_key_file"),
    STR(auth, admin_key_file, NULL, 0, "file holding the admin key"),
    INT(events, ring_size, "1024", 1, INT_MAX, "events kept for replay"),
    SIZE(events, ring_bytes, "16MiB", 4096, "byte budget of the replay ring"),
    SIZE(events, max_payload_bytes, "64KiB", 16, "largest payload POST /events accepts"),
    INT(jobs, max_concurrent, "2", 1, INT_MAX, "background jobs run at once"),
    ENUM(log, level, "info", "debug|info|warn|error", "debug, info, warn or error"),
    ENUM(log, format, "auto", "json|text|auto", "json, text or auto (text on a tty)"),
    STR(log, file, NULL, 0, "log file; null = stderr"),
};

/* Fields of one models.entries item. */
static const struct keydef entry_keys[] = {
    {NULL, "name", T_STR, E(name, char *), 0, NULL, 0, 0, NULL, F_REQUIRED, "model name"},
    {NULL, "path", T_STR, E(path, char *), 0, NULL, 0, 0, NULL, F_REQUIRED,
     "GGUF file; relative to models.dir"},
    {NULL, "aliases", T_LIST, E(aliases, char **), E(n_aliases, size_t), NULL, 0, 0, NULL, 0,
     "other names"},
    {NULL, "ctx_size", T_INT, E(ctx_size, int), 0, "0", 0, INT_MAX, NULL, 0, "0 = model default"},
    {NULL, "parallel", T_INT, E(parallel, int), 0, "0", 0, INT_MAX, NULL, 0, "0 = models.parallel"},
    {NULL, "threads", T_INT, E(threads, int), 0, "0", 0, 4096, NULL, 0, "0 = models.threads"},
    {NULL, "gpu_layers", T_INT, E(gpu_layers, int), 0, "-1", -1, INT_MAX, NULL, 0,
     "-1 = models.gpu_layers"},
    {NULL, "chat_template", T_STR, E(chat_template, char *), 0, NULL, 0, 0, NULL, 0,
     "null = template from the GGUF"},
    {NULL, "embeddings", T_BOOL, E(embeddings, bool), 0, "false", 0, 0, NULL, 0, "serve embeddings"},
    {NULL, "pinned", T_BOOL, E(pinned, bool), 0, "false", 0, 0, NULL, 0, "never unloaded"},
    {NULL, "temperature", T_DOUBLE, E(temperature, double), 0, NULL, 0, 100, NULL, F_UNSET,
     "default sampling temperature"},
    {NULL, "top_p", T_DOUBLE, E(top_p, double), 0, NULL, 0, 1, NULL, F_UNSET, "default top-p"},
    {NULL, "top_k", T_INT, E(top_k, int), 0, NULL, 0, INT_MAX, NULL, F_UNSET, "default top-k"},
};

#define N_CONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])
#define N_ENTRY_KEYS (sizeof entry_keys / sizeof entry_keys[0])

/* A table with its length, so helpers serve both the config and an entry. */
struct keyset {
    const struct keydef *keys;
    size_t n;
};
static const struct keyset CONFIG_SET = {config_keys, N_CONFIG_KEYS};
static const struct keyset ENTRY_SET = {entry_keys, N_ENTRY_KEYS};

/* ------------------------------------------------------- small utilities */

/* Growable string; an allocation failure is sticky and checked at the end. */
struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Returns the malloc'd contents (caller frees), or NULL after a failure. */
static char *buf_take(struct buf *b)
{
    if (b->oom || !b->p) {
        free(b->p);
        return b->oom ? NULL : strdup("");
    }
    return b->p;
}

/* Value of NAME in an environment array, or NULL. */
static const char *env_get(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (; env && *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

/* "dir/name" in a new string (caller frees), or NULL when out of memory. */
static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    bool slash = n > 0 && dir[n - 1] == '/';
    size_t len = n + (slash ? 0 : 1) + strlen(name) + 1;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "%s%s%s", dir, slash ? "" : "/", name);
    return p;
}

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory reading the configuration");
}

/* Frees a list of n strings. */
static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Frees a secret after wiping it, so it does not linger in freed memory. */
static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* ---------------------------------------------------------- value parsing */

/* A plain (unquoted) YAML scalar that means null. */
static bool is_null_word(const char *s)
{
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

/* Parses a whole decimal integer; false on junk or overflow of long long. */
static bool parse_ll(const char *s, long long *out)
{
    if (!*s || isspace((unsigned char)*s))
        return false;
    char *end;
    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno == 0 && *end == '\0';
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i]) || !strcasecmp(s, no[i])) {
            *out = !strcasecmp(s, yes[i]);
            return true;
        }
    }
    return false;
}

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

static void *field_of(void *base, const struct keydef *k)
{
    return (char *)base + k->off;
}

static size_t *count_of(void *base, const struct keydef *k)
{
    return (size_t *)((char *)base + k->off_n);
}

static const char *type_name(const struct keydef *k)
{
    switch (k->type) {
    case T_STR: return "a string";
    case T_ENUM: return "a string";
    case T_INT: return "an integer";
    case T_BOOL: return "true or false";
    case T_SIZE:
    case T_U64: return "a size (like 1024, 512MB or 4GiB)";
    case T_DOUBLE: return "a number";
    case T_LIST: return "a list of strings";
    case T_ENTRIES: return "a list of models (mappings with name and path)";
    }
    return "a value";
}

static bool nullable(const struct keydef *k)
{
    return (k->type == T_STR && !k->def && !(k->flags & F_REQUIRED)) || k->type == T_LIST ||
           k->type == T_ENTRIES || (k->flags & F_UNSET);
}

static void free_entries(struct lyra_model_entry *e, size_t n);

/* Frees whatever the field owns and resets it to empty/NULL. */
static void clear_field(void *base, const struct keydef *k)
{
    void *f = field_of(base, k);
    if (k->type == T_STR || k->type == T_ENUM) {
        if (k->flags & F_SECRET)
            free_secret(*(char **)f);
        else
            free(*(char **)f);
        *(char **)f = NULL;
    } else if (k->type == T_LIST) {
        free_list(*(char ***)f, *count_of(base, k));
        *(char ***)f = NULL;
        *count_of(base, k) = 0;
    } else if (k->type == T_ENTRIES) {
        free_entries(*(struct lyra_model_entry **)f, *count_of(base, k));
        *(struct lyra_model_entry **)f = NULL;
        *count_of(base, k) = 0;
    }
}

/* Sets the field to its null meaning (NULL, empty, or -1 for F_UNSET).
 * `where` prefixes the error ("file:3:9: server.port", "env LYRA_X"). */
static int store_null(void *base, const struct keydef *k, const char *where, struct lyra_err *err)
{
    if (!nullable(k))
        return lyra_err_set(err, LYRA_ECONFIG, "%s: expected %s, got null", where, type_name(k));
    clear_field(base, k);
    if (k->type == T_INT)
        *(int *)field_of(base, k) = -1;
    else if (k->type == T_DOUBLE)
        *(double *)field_of(base, k) = -1;
    return 0;
}

static int range_error(const struct keydef *k, const char *where, const char *text,
                       struct lyra_err *err)
{
    if (k->max > k->min && k->max < INT_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is out of range (%.15g..%.15g)", where,
                            text, k->min, k->max);
    return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is out of range (must be at least %.15g)",
                        where, text, k->min);
}

/* Parses a number-like text into the field; the field is untouched on error. */
static int store_number(void *base, const struct keydef *k, const char *text, const char *where,
                        struct lyra_err *err)
{
    void *f = field_of(base, k);
    long long ll;
    double d;
    uint64_t u;
    int rc;
    switch (k->type) {
    case T_INT:
        if (!parse_ll(text, &ll))
            break;
        if (ll < k->min || ll > k->max)
            return range_error(k, where, text, err);
        *(int *)f = (int)ll;
        return 0;
    case T_BOOL:
        return parse_bool(text, (bool *)f) ? 0 : lyra_err_set(err, LYRA_ECONFIG,
            "%s: expected true or false, got '%s'", where, text);
    case T_DOUBLE:
        if (!parse_double(text, &d))
            break;
        if (d < k->min || d > k->max)
            return range_error(k, where, text, err);
        *(double *)f = d;
        return 0;
    default: /* T_SIZE, T_U64 */
        rc = parse_size(text, &u);
        if (rc == -1)
            break;
        if (rc == -2 || (k->type == T_SIZE && u > SIZE_MAX))
            return lyra_err_set(err, LYRA_ECONFIG, "%s: %s is too large", where, text);
        if (u < (uint64_t)k->min)
            return range_error(k, where, text, err);
        if (k->type == T_SIZE)
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
static int store_text(void *base, const struct keydef *k, const char *text, const char *where,
                      struct lyra_err *err)
{
    char canon[32];
    const char *v = text;
    char *s;
    char **list;
    size_t n;
    switch (k->type) {
    case T_STR:
    case T_ENUM:
        if (!*text && nullable(k))
            return store_null(base, k, where, err);
        if (k->type == T_ENUM && !(v = match_choice(k->choices, text, canon, sizeof canon)))
            return lyra_err_set(err, LYRA_ECONFIG, "%s: expected one of %s, got '%s'", where,
                                k->choices, text);
        if (!(s = strdup(v)))
            return nomem(err);
        clear_field(base, k);
        *(char **)field_of(base, k) = s;
        return 0;
    case T_LIST:
        if (split_list(text, &list, &n))
            return nomem(err);
        clear_field(base, k);
        *(char ***)field_of(base, k) = list;
        *count_of(base, k) = n;
        return 0;
    case T_ENTRIES:
        return lyra_err_set(err, LYRA_ECONFIG, "%s: models.entries can only be set in the file",
                            where);
    default:
        return store_number(base, k, text, where, err);
    }
}

/* Applies the defaults of a table to base (zeroed).  F_HOME_DEF defaults are
 * joined to home. */
static int set_defaults(void *base, struct keyset ks, const char *home, struct lyra_err *err)
{
    for (size_t i = 0; i < ks.n; i++) {
        const struct keydef *k = &ks.keys[i];
        int rc;
        if (!k->def) {
            rc = nullable(k) ? store_null(base, k, k->name, err) : 0;
        } else if (k->flags & F_HOME_DEF) {
            char *p = path_join(home, k->def);
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

/* The row for section.name, or NULL. */
static const struct keydef *find_key(struct keyset ks, const char *section, const char *name)
{
    for (size_t i = 0; i < ks.n; i++)
        if ((!section || !strcmp(ks.keys[i].section, section)) && !strcmp(ks.keys[i].name, name))
            return &ks.keys[i];
    return NULL;
}

static bool section_known(const char *section)
{
    for (size_t i = 0; i < N_CONFIG_KEYS; i++)
        if (!strcmp(config_keys[i].section, section))
            return true;
    return false;
}

/* ------------------------------------------------------------- YAML tree */

enum nkind { N_SCALAR, N_MAP, N_SEQ };

/* A parsed YAML node.  Maps keep key, value, key, value, ... in kids. */
struct node {
    enum nkind kind;
    char *text;          /* N_SCALAR */
    bool plain;          /* unquoted scalar: "", "~" and "null" mean null */
    int line, col;       /* 1-based position in the file */
    const char *comment; /* static help text the writer puts after the value */
    struct node **kids;
    size_t n, cap;
};

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n);
}

/* A new node; text (may be NULL) is copied.  NULL when out of memory. */
static struct node *node_new(enum nkind kind, const char *text, bool plain, int line, int col)
{
    struct node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    *n = (struct node){.kind = kind, .plain = plain, .line = line, .col = col};
    if (text && !(n->text = strdup(text))) {
        free(n);
        return NULL;
    }
    return n;
}

/* Appends kid to n, taking it (freed on failure).  Returns 0 or LYRA_ENOMEM. */
static int node_push(struct node *n, struct node *kid)
{
    if (!kid)
        return LYRA_ENOMEM;
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 8;
        struct node **k = realloc(n->kids, cap * sizeof *k);
        if (!k) {
            node_free(kid);
            return LYRA_ENOMEM;
        }
        n->kids = k;
        n->cap = cap;
    }
    n->kids[n->n++] = kid;
    return 0;
}

/* Appends key: val to a map, taking both (freed on failure). */
static int map_add(struct node *map, struct node *key, struct node *val)
{
    if (node_push(map, key)) {
        node_free(val);
        return LYRA_ENOMEM;
    }
    if (node_push(map, val)) {
        node_free(map->kids[--map->n]);
        return LYRA_ENOMEM;
    }
    return 0;
}

static bool node_is_null(const struct node *n)
{
    return n->kind == N_SCALAR && n->plain && is_null_word(n->text);
}

static size_t map_pairs(const struct node *map)
{
    return map->n / 2;
}

static const char *map_key(const struct node *map, size_t i)
{
    return map->kids[2 * i]->text;
}

/* Index of the pair with key `key`, or SIZE_MAX. */
static size_t map_find(const struct node *map, const char *key)
{
    for (size_t i = 0; map && i < map_pairs(map); i++)
        if (!strcmp(map_key(map, i), key))
            return i;
    return SIZE_MAX;
}

/* The value for key, or NULL. */
static struct node *map_get(const struct node *map, const char *key)
{
    size_t i = map_find(map, key);
    return i == SIZE_MAX ? NULL : map->kids[2 * i + 1];
}

/* Inserts key: val as pair i, taking both (freed on failure). */
static int map_insert(struct node *map, size_t i, struct node *key, struct node *val)
{
    if (map_add(map, key, val))
        return LYRA_ENOMEM;
    memmove(&map->kids[2 * i + 2], &map->kids[2 * i], (map->n - 2 * i - 2) * sizeof *map->kids);
    map->kids[2 * i] = key;
    map->kids[2 * i + 1] = val;
    return 0;
}

/* Removes and frees pair i. */
static void map_remove(struct node *map, size_t i)
{
    node_free(map->kids[2 * i]);
    node_free(map->kids[2 * i + 1]);
    memmove(&map->kids[2 * i], &map->kids[2 * i + 2], (map->n - 2 * i - 2) * sizeof *map->kids);
    map->n -= 2;
}

/* ---------------------------------------------------------- YAML reading */

struct reader {
    yaml_parser_t parser;
    const char *file;
    struct lyra_err *err;
};

/* Reports the parser's own error with its position. */
static int yaml_fail(struct reader *r)
{
    const yaml_parser_t *p = &r->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return nomem(r->err);
    if (p->error == YAML_READER_ERROR)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s: %s at byte %zu", r->file,
                            p->problem ? p->problem : "unreadable input", p->problem_offset);
    if (p->context)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s (%s at line %zu, column %zu)",
                            r->file, p->problem_mark.line + 1, p->problem_mark.column + 1,
                            p->problem ? p->problem : "syntax error", p->context,
                            p->context_mark.line + 1, p->context_mark.column + 1);
    return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s", r->file, p->problem_mark.line + 1,
                        p->problem_mark.column + 1, p->problem ? p->problem : "syntax error");
}

static int next_event(struct reader *r, yaml_event_t *ev)
{
    return yaml_parser_parse(&r->parser, ev) ? 0 : yaml_fail(r);
}

static int fail_at(struct reader *r, const yaml_event_t *ev, const char *what)
{
    return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s", r->file,
                        ev->start_mark.line + 1, ev->start_mark.column + 1, what);
}

static int build_node(struct reader *r, yaml_event_t *ev, int depth, struct node **out);

/* Reads the items of a sequence or map into n up to its end event. */
static int build_children(struct reader *r, struct node *n, int depth)
{
    yaml_event_t ev;
    for (size_t i = 0;; i++) {
        int rc = next_event(r, &ev);
        if (rc)
            return rc;
        if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        if (n->kind == N_MAP && i % 2 == 0 && ev.type != YAML_SCALAR_EVENT) {
            rc = fail_at(r, &ev, "keys must be plain strings");
            yaml_event_delete(&ev);
            return rc;
        }
        struct node *kid;
        if ((rc = build_node(r, &ev, depth + 1, &kid)))
            return rc;
        if (node_push(n, kid))
            return nomem(r->err);
    }
}

/* Builds the node that starts with *ev (deleted here) and its children. */
static int build_node(struct reader *r, yaml_event_t *ev, int depth, struct node **out)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    int rc = 0;
    *out = NULL;
    if (depth > MAX_DEPTH) {
        rc = fail_at(r, ev, "nesting is too deep");
    } else if (ev->type == YAML_SCALAR_EVENT) {
        const char *v = (const char *)ev->data.scalar.value;
        if (strlen(v) != ev->data.scalar.length)
            rc = fail_at(r, ev, "strings must not contain NUL characters");
        else if (!(*out = node_new(N_SCALAR, v,
                                   ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, line, col)))
            rc = nomem(r->err);
    } else if (ev->type == YAML_SEQUENCE_START_EVENT || ev->type == YAML_MAPPING_START_EVENT) {
        enum nkind kind = ev->type == YAML_SEQUENCE_START_EVENT ? N_SEQ : N_MAP;
        if (!(*out = node_new(kind, NULL, false, line, col)))
            rc = nomem(r->err);
    } else if (ev->type == YAML_ALIAS_EVENT) {
        rc = fail_at(r, ev, "aliases (*name) are not supported");
    } else {
        rc = fail_at(r, ev, "unexpected YAML event");
    }
    yaml_event_delete(ev);
    if (!rc && (*out)->kind != N_SCALAR)
        rc = build_children(r, *out, depth);
    if (rc) {
        node_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Reads events from after STREAM-START: an empty stream, or one document. */
static int build_stream(struct reader *r, struct node **root)
{
    yaml_event_t ev;
    int rc = next_event(r, &ev);
    if (rc || ev.type == YAML_STREAM_END_EVENT) {
        if (!rc)
            yaml_event_delete(&ev);
        return rc;
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if ((rc = next_event(r, &ev)) || (rc = build_node(r, &ev, 0, root)))
        return rc;
    if ((rc = next_event(r, &ev)))
        return rc;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if ((rc = next_event(r, &ev)))
        return rc;
    if (ev.type != YAML_STREAM_END_EVENT)
        rc = fail_at(r, &ev, "only one YAML document is allowed");
    yaml_event_delete(&ev);
    return rc;
}

/* Parses text into a tree (caller frees with node_free).  *root is NULL for
 * an empty document.  The top level must be a mapping. */
static int parse_yaml(const char *text, size_t len, const char *file, struct node **root,
                      struct lyra_err *err)
{
    struct reader r = {.file = file, .err = err};
    yaml_event_t ev;
    *root = NULL;
    if (!yaml_parser_initialize(&r.parser))
        return nomem(err);
    yaml_parser_set_input_string(&r.parser, (const unsigned char *)text, len);
    int rc = next_event(&r, &ev);
    if (!rc) {
        yaml_event_delete(&ev); /* STREAM-START */
        rc = build_stream(&r, root);
    }
    yaml_parser_delete(&r.parser);
    if (!rc && *root && node_is_null(*root)) {
        node_free(*root);
        *root = NULL;
    } else if (!rc && *root && (*root)->kind != N_MAP) {
        rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: expected a mapping of sections", file,
                          (*root)->line, (*root)->col);
    }
    if (rc) {
        node_free(*root);
        *root = NULL;
    }
    return rc;
}

/* Reads a whole file (caller frees *out); *mode receives its permissions. */
static int read_file(const char *path, size_t limit, char **out, size_t *len, mode_t *mode,
                     struct lyra_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lyra_err_set(err, errno == ENOENT ? LYRA_ENOTFOUND : LYRA_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    int rc = 0;
    char *p = NULL;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        rc = lyra_err_set(err, LYRA_EIO, "%s: not a regular file", path);
    else if ((size_t)st.st_size > limit)
        rc = lyra_err_set(err, LYRA_ETOOBIG, "%s: larger than %zu bytes", path, limit);
    else if (!(p = malloc((size_t)st.st_size + 1)))
        rc = nomem(err);
    size_t got = 0;
    while (!rc && got < (size_t)st.st_size) {
        ssize_t n = read(fd, p + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, n ? strerror(errno) : "short read");
        else
            got += (size_t)n;
    }
    close(fd);
    if (rc) {
        free(p);
        return rc;
    }
    p[got] = '\0';
    *out = p;
    *len = got;
    if (mode)
        *mode = st.st_mode & 07777;
    return 0;
}

/* Reads and parses a config file into a tree. */
static int load_tree(const char *path, struct node **root, struct lyra_err *err)
{
    char *text;
    size_t len;
    int rc = read_file(path, MAX_FILE_BYTES, &text, &len, NULL, err);
    if (rc)
        return rc;
    rc = parse_yaml(text, len, path, root, err);
    free(text);
    return rc;
}

/* --------------------------------------------------- applying the tree */

static const char *kind_name(const struct node *n)
{
    return n->kind == N_MAP ? "a mapping" : n->kind == N_SEQ ? "a list" : "a scalar";
}

/* Rejects a key that appears twice in one mapping. */
static int check_duplicates(const struct node *map, const char *file, const char *label,
                            struct lyra_err *err)
{
    for (size_t i = 1; i < map_pairs(map); i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(map_key(map, i), map_key(map, j)))
                continue;
            const struct node *k = map->kids[2 * i];
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: duplicate key '%s' in %s", file,
                                k->line, k->col, k->text, label);
        }
    }
    return 0;
}

/* Stores a YAML list of strings into a T_LIST field. */
static int store_seq(void *base, const struct keydef *k, const struct node *seq,
                     const char *file, const char *label, struct lyra_err *err)
{
    char **list = seq->n ? calloc(seq->n, sizeof *list) : NULL;
    if (seq->n && !list)
        return nomem(err);
    for (size_t i = 0; i < seq->n; i++) {
        const struct node *it = seq->kids[i];
        int rc = 0;
        if (it->kind != N_SCALAR || node_is_null(it))
            rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s[%zu]: expected a string, got %s",
                              file, it->line, it->col, label, i,
                              it->kind == N_SCALAR ? "null" : kind_name(it));
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

static int store_entries(void *cfg, const struct keydef *k, const struct node *seq,
                         const char *file, struct lyra_err *err);

/* Stores the value node of `key` (a row of a table) into base.  label is
 * the dotted name used in messages ("server.port", "models.entries[0].name"). */
static int store_node(void *base, const struct keydef *k, const struct node *key,
                      const struct node *val, const char *file, const char *label,
                      struct lyra_err *err)
{
    char where[WHERE_MAX];
    snprintf(where, sizeof where, "%s:%d:%d: %s", file, val->line, val->col, label);
    if (k->flags & F_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG,
                            "%s:%d:%d: %s: secrets must not be written in the config file; "
                            "set env LYRA_ADMIN_KEY or auth.admin_key_file",
                            file, key->line, key->col, label);
    if (node_is_null(val))
        return store_null(base, k, where, err);
    if (k->type == T_ENTRIES && val->kind == N_SEQ)
        return store_entries(base, k, val, file, err);
    if (k->type == T_LIST && val->kind == N_SEQ)
        return store_seq(base, k, val, file, label, err);
    if (val->kind != N_SCALAR || k->type == T_ENTRIES || k->type == T_LIST)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: expected %s, got %s", where, type_name(k),
                            kind_name(val));
    return store_text(base, k, val->text, where, err);
}

/* Applies one section's mapping to cfg. */
static int apply_section(struct lyra_config *cfg, const struct node *skey,
                         const struct node *map, const char *file, struct lyra_err *err)
{
    const char *sec = skey->text;
    if (node_is_null(map))
        return 0;
    if (map->kind != N_MAP)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: section '%s' must be a mapping, got %s",
                            file, map->line, map->col, sec, kind_name(map));
    char label[WHERE_MAX];
    snprintf(label, sizeof label, "section '%s'", sec);
    int rc = check_duplicates(map, file, label, err);
    for (size_t i = 0; !rc && i < map_pairs(map); i++) {
        const struct node *key = map->kids[2 * i];
        const struct keydef *k = find_key(CONFIG_SET, sec, key->text);
        if (!k)
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown key '%s' in section '%s'",
                                file, key->line, key->col, key->text, sec);
        snprintf(label, sizeof label, "%s.%s", sec, key->text);
        rc = store_node(cfg, k, key, map->kids[2 * i + 1], file, label, err);
    }
    return rc;
}

/* Applies a whole (current-version) tree to cfg; schema_version is skipped. */
static int apply_root(struct lyra_config *cfg, const struct node *root, const char *file,
                      struct lyra_err *err)
{
    if (!root)
        return 0;
    int rc = check_duplicates(root, file, "the top level", err);
    for (size_t i = 0; !rc && i < map_pairs(root); i++) {
        const struct node *key = root->kids[2 * i];
        if (!strcmp(key->text, "schema_version"))
            continue;
        if (!section_known(key->text))
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown section '%s'", file,
                                key->line, key->col, key->text);
        rc = apply_section(cfg, key, root->kids[2 * i + 1], file, err);
    }
    return rc;
}

/* ------------------------------------------------------- models.entries */

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
static int parse_entry(struct lyra_model_entry *e, const struct node *item, size_t idx,
                       const char *file, struct lyra_err *err)
{
    char label[WHERE_MAX];
    snprintf(label, sizeof label, "models.entries[%zu]", idx);
    int rc = set_defaults(e, ENTRY_SET, "", err);
    if (!rc && item->kind != N_MAP)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s: expected a mapping with name and "
                            "path, got %s", file, item->line, item->col, label, kind_name(item));
    if (!rc)
        rc = check_duplicates(item, file, label, err);
    for (size_t i = 0; !rc && i < map_pairs(item); i++) {
        const struct node *key = item->kids[2 * i];
        const struct keydef *k = find_key(ENTRY_SET, NULL, key->text);
        if (!k)
            return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: unknown key '%s' in %s", file,
                                key->line, key->col, key->text, label);
        snprintf(label, sizeof label, "models.entries[%zu].%s", idx, key->text);
        rc = store_node(e, k, key, item->kids[2 * i + 1], file, label, err);
        snprintf(label, sizeof label, "models.entries[%zu]", idx);
    }
    for (size_t i = 0; !rc && i < N_ENTRY_KEYS; i++) {
        const struct keydef *k = &entry_keys[i];
        if ((k->flags & F_REQUIRED) && !*(char **)field_of(e, k))
            rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s: missing required key '%s'", file,
                              item->line, item->col, label, k->name);
    }
    return rc;
}

/* Parses models.entries into a new array and replaces the field. */
static int store_entries(void *cfg, const struct keydef *k, const struct node *seq,
                         const char *file, struct lyra_err *err)
{
    struct lyra_model_entry *es = seq->n ? calloc(seq->n, sizeof *es) : NULL;
    if (seq->n && !es)
        return nomem(err);
    int rc = 0;
    size_t n = 0;
    for (; !rc && n < seq->n; n++) {
        const struct node *item = seq->kids[n];
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

/* ------------------------------------------------------ schema versions */

/* Reads schema_version (absent = 1; a file without any key is current,
 * since there is nothing to migrate). */
static int read_version(const struct node *root, const char *file, int *version,
                        struct lyra_err *err)
{
    if (!root || !root->n) {
        *version = LYRA_CONFIG_SCHEMA_VERSION;
        return 0;
    }
    const struct node *v = map_get(root, "schema_version");
    long long ll = 1;
    if (v && (v->kind != N_SCALAR || !parse_ll(v->text, &ll) || ll < 1))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: schema_version: expected a positive "
                            "integer, got '%s'", file, v->line, v->col,
                            v->kind == N_SCALAR ? v->text : kind_name(v));
    if (ll > LYRA_CONFIG_SCHEMA_VERSION)
        return lyra_err_set(err, LYRA_EUNSUPPORTED, "%s:%d:%d: schema_version %lld was written by "
                            "a newer Lyra; this one reads up to %d", file, v->line, v->col, ll,
                            LYRA_CONFIG_SCHEMA_VERSION);
    *version = (int)ll;
    return 0;
}

/* The mapping of a section, or NULL when absent or not a mapping (apply
 * reports the latter). */
static struct node *section_map(const struct node *root, const char *name)
{
    struct node *s = map_get(root, name);
    return s && s->kind == N_MAP ? s : NULL;
}

/* Renames key `from` to `to` in a section map; both present is an error. */
static int rename_key(struct node *map, const char *sec, const char *from, const char *to,
                      const char *file, struct lyra_err *err)
{
    size_t i = map_find(map, from);
    if (i == SIZE_MAX)
        return 0;
    struct node *key = map->kids[2 * i];
    if (map_find(map, to) != SIZE_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s.%s (schema 1) and %s.%s are both "
                            "set; keep only %s", file, key->line, key->col, sec, from, sec, to, to);
    char *t = strdup(to);
    if (!t)
        return nomem(err);
    free(key->text);
    key->text = t;
    return 0;
}

/* Splits "HOST:PORT", "[V6]:PORT" or ":PORT" into host (NULL when empty)
 * and port, both malloc'd.  Returns 0, LYRA_EINVAL (bad syntax) or LYRA_ENOMEM. */
static int split_listen(const char *s, char **host, char **port)
{
    const char *h = s, *colon;
    size_t hlen;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return LYRA_EINVAL;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':'))
            return LYRA_EINVAL; /* no port, or an IPv6 address without brackets */
        hlen = (size_t)(colon - s);
    }
    const char *p = colon + 1;
    if (!*p || strspn(p, "0123456789") != strlen(p))
        return LYRA_EINVAL;
    *host = hlen ? strndup(h, hlen) : NULL;
    *port = strdup(p);
    if (!*port || (hlen && !*host)) {
        free(*host);
        free(*port);
        return LYRA_ENOMEM;
    }
    return 0;
}

/* v1 server.listen "HOST:PORT" -> v2 server.host + server.port. */
static int migrate_listen(struct node *server, const char *file, struct lyra_err *err)
{
    size_t i = map_find(server, "listen");
    if (i == SIZE_MAX)
        return 0;
    struct node *key = server->kids[2 * i], *val = server->kids[2 * i + 1];
    char *host = NULL, *port = NULL;
    if (map_get(server, "host") || map_get(server, "port"))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: server.listen (schema 1) cannot be "
                            "combined with server.host or server.port", file, key->line, key->col);
    int rc = val->kind == N_SCALAR ? split_listen(val->text, &host, &port) : LYRA_EINVAL;
    if (rc == LYRA_ENOMEM)
        return nomem(err);
    if (rc)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: server.listen: expected \"HOST:PORT\" "
                            "or \"[IPV6]:PORT\", got %s", file, val->line, val->col,
                            val->kind == N_SCALAR ? val->text : kind_name(val));
    int l = val->line, c = val->col;
    map_remove(server, i);
    rc = map_insert(server, i, node_new(N_SCALAR, "port", true, l, c),
                    node_new(N_SCALAR, port, true, l, c));
    if (!rc && host)
        rc = map_insert(server, i, node_new(N_SCALAR, "host", true, l, c),
                        node_new(N_SCALAR, host, false, l, c));
    free(host);
    free(port);
    return rc ? nomem(err) : 0;
}

/* v1 log.json true|false -> v2 log.format json|text. */
static int migrate_log_json(struct node *log, const char *file, struct lyra_err *err)
{
    size_t i = map_find(log, "json");
    if (i == SIZE_MAX)
        return 0;
    struct node *val = log->kids[2 * i + 1];
    bool json;
    if (map_find(log, "format") != SIZE_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: log.json (schema 1) and log.format are "
                            "both set; keep only log.format", file, log->kids[2 * i]->line,
                            log->kids[2 * i]->col);
    if (val->kind != N_SCALAR || !parse_bool(val->text, &json))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: log.json: expected true or false",
                            file, val->line, val->col);
    char *k = strdup("format"), *v = strdup(json ? "json" : "text");
    if (!k || !v) {
        free(k);
        free(v);
        return nomem(err);
    }
    free(log->kids[2 * i]->text);
    log->kids[2 * i]->text = k;
    free(val->text);
    val->text = v;
    val->plain = true;
    return 0;
}

/* Schema 1 -> 2: server.listen split, models.path -> dir,
 * models.max_models -> max_loaded, log.json -> log.format. */
static int migrate_v1_v2(struct node *root, const char *file, struct lyra_err *err)
{
    struct node *server = section_map(root, "server");
    struct node *models = section_map(root, "models");
    struct node *log = section_map(root, "log");
    int rc = 0;
    if (server)
        rc = migrate_listen(server, file, err);
    if (!rc && models)
        rc = rename_key(models, "models", "path", "dir", file, err);
    if (!rc && models)
        rc = rename_key(models, "models", "max_models", "max_loaded", file, err);
    if (!rc && log)
        rc = migrate_log_json(log, file, err);
    return rc;
}

/* One step per version: migrations[v - 1] turns version v into v + 1. */
typedef int (*migrate_fn)(struct node *root, const char *file, struct lyra_err *err);
static const migrate_fn migrations[] = {
    migrate_v1_v2,
};
_Static_assert(sizeof migrations / sizeof migrations[0] == LYRA_CONFIG_SCHEMA_VERSION - 1,
               "one migration per schema version step");

/* Sets schema_version to the current one, as the first key. */
static int put_version(struct node *root, struct lyra_err *err)
{
    size_t i = map_find(root, "schema_version");
    if (i != SIZE_MAX)
        map_remove(root, i);
    char v[16];
    snprintf(v, sizeof v, "%d", LYRA_CONFIG_SCHEMA_VERSION);
    if (map_insert(root, 0, node_new(N_SCALAR, "schema_version", true, 1, 1),
                   node_new(N_SCALAR, v, true, 1, 1)))
        return nomem(err);
    return 0;
}

/* Migrates a tree of version `from` to the current version in place. */
static int migrate_tree(struct node *root, int from, const char *file, struct lyra_err *err)
{
    for (int v = from; v < LYRA_CONFIG_SCHEMA_VERSION; v++) {
        int rc = migrations[v - 1](root, file, err);
        if (rc)
            return rc;
    }
    return put_version(root, err);
}

/* ----------------------------------------------------------- YAML writer */

/* True when s can be written without quotes and reads back as the same
 * string: a conservative character set, never a null word. */
static bool plain_safe(const char *s)
{
    if (!*s || is_null_word(s) || !(isalnum((unsigned char)*s) || *s == '/' || *s == '.' ||
                                    (*s == '-' && isdigit((unsigned char)s[1]))))
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._/+-", *s))
            return false;
    return true;
}

/* The code point of the well-formed UTF-8 sequence of n (2..4) bytes at p,
 * or -1. */
static long utf8_cp(const unsigned char *p, int n)
{
    static const long min[] = {0, 0, 0x80, 0x800, 0x10000};
    long cp = p[0] & (0x7f >> n);
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    return cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? -1 : cp;
}

/* Code points YAML only carries escaped: the C1 controls (libyaml refuses
 * them raw), the line breaks a double-quoted scalar would fold into a
 * space (NEL, LS, PS), the BOM and the non-characters U+FFFE/U+FFFF. */
static bool yaml_escaped(long cp)
{
    return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe ||
           cp == 0xffff;
}

/* Writes a scalar: plain when safe, else double-quoted with escapes, so
 * that it reads back as exactly the same string. */
static void write_scalar(struct buf *b, const struct node *n)
{
    if (node_is_null(n)) {
        buf_puts(b, "~");
        return;
    }
    if (plain_safe(n->text)) {
        buf_puts(b, n->text);
        return;
    }
    buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)n->text; *p; p++) {
        int len = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : *p >= 0xc0 ? 2 : 1;
        long cp = len > 1 && strnlen((const char *)p, (size_t)len) == (size_t)len ? utf8_cp(p, len) : -1;
        if (*p == '"' || *p == '\\')
            buf_printf(b, "\\%c", *p);
        else if (*p == '\n')
            buf_puts(b, "\\n");
        else if (*p == '\t')
            buf_puts(b, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            buf_printf(b, "\\x%02x", *p);
        else if (cp >= 0 && yaml_escaped(cp)) {
            buf_printf(b, "\\u%04lx", cp);
            p += len - 1;
        } else
            buf_add(b, (const char *)p, 1);
    }
    buf_puts(b, "\"");
}

static void write_comment(struct buf *b, const struct node *n)
{
    if (n->comment)
        buf_printf(b, "  # %s", n->comment);
    buf_puts(b, "\n");
}

static void write_map(struct buf *b, const struct node *map, int indent, bool inline_first);

/* Writes the value of a "key:" already written, then the line end. */
static void write_value(struct buf *b, const struct node *v, int indent)
{
    if (v->kind == N_SCALAR || v->n == 0) {
        buf_puts(b, " ");
        if (v->kind == N_SCALAR)
            write_scalar(b, v);
        else
            buf_puts(b, v->kind == N_SEQ ? "[]" : "{}");
        write_comment(b, v);
        return;
    }
    write_comment(b, v);
    if (v->kind == N_MAP) {
        write_map(b, v, indent + 2, false);
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct node *it = v->kids[i];
        buf_printf(b, "%*s- ", indent + 2, "");
        if (it->kind == N_MAP && it->n) {
            write_map(b, it, indent + 4, true);
        } else if (it->kind == N_SCALAR) {
            write_scalar(b, it);
            buf_puts(b, "\n");
        } else {
            buf_puts(b, it->kind == N_SEQ ? "[]\n" : "{}\n"); /* not produced by Lyra */
        }
    }
}

/* Writes the pairs of a map at `indent`; with inline_first the first key
 * follows a "- " the caller wrote. */
static void write_map(struct buf *b, const struct node *map, int indent, bool inline_first)
{
    for (size_t i = 0; i < map_pairs(map); i++) {
        if (i > 0 || !inline_first)
            buf_printf(b, "%*s", indent, "");
        write_scalar(b, map->kids[2 * i]);
        buf_puts(b, ":");
        write_value(b, map->kids[2 * i + 1], indent);
    }
}

/* ------------------------------------------------- migrating the file */

/* Flushes the directory holding path, so a rename in it survives a crash.
 * Best effort: some file systems refuse fsync on directories. */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Writes data to path atomically: a temp file in the same directory, fsync,
 * rename, then fsync of the directory.  The temp file is removed on error. */
static int write_atomic(const char *path, const char *data, size_t len, mode_t mode,
                        struct lyra_err *err)
{
    char *tmp = malloc(strlen(path) + 8);
    if (!tmp)
        return nomem(err);
    sprintf(tmp, "%s.XXXXXX", path);
    int fd = mkstemp(tmp), rc = 0;
    if (fd < 0) {
        rc = lyra_err_set(err, LYRA_EIO, "%s: cannot create a temporary file: %s", path,
                          strerror(errno));
        free(tmp);
        return rc;
    }
    for (size_t off = 0; !rc && off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno != EINTR)
            rc = lyra_err_set(err, LYRA_EIO, "%s: %s", tmp, strerror(errno));
        else if (n > 0)
            off += (size_t)n;
    }
    if (!rc && (fchmod(fd, mode) || fsync(fd)))
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s", tmp, strerror(errno));
    if (close(fd) && !rc)
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path))
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    free(tmp);
    if (!rc)
        sync_dir(path);
    return rc;
}

/* Applies a migrated tree to a scratch config, so that a file which would
 * not load is never written. */
static int check_tree(const struct node *root, const char *file, struct lyra_err *err)
{
    struct lyra_config scratch;
    memset(&scratch, 0, sizeof scratch);
    int rc = set_defaults(&scratch, CONFIG_SET, "/", err);
    if (!rc)
        rc = apply_root(&scratch, root, file, err);
    lyra_config_free(&scratch);
    return rc;
}

/* The tree as YAML after a header (malloc'd; NULL when out of memory). */
static char *render_tree(const struct node *root, const char *header)
{
    struct buf b = {0};
    buf_puts(&b, header);
    if (root)
        write_map(&b, root, 0, false);
    return buf_take(&b);
}

/* Migrates the parsed file to the current version, copies the original
 * bytes to <path>.v<N>.bak and replaces the file.  Nothing is written unless
 * the migrated document loads. */
static int rewrite_file(const char *path, const char *orig, size_t len, mode_t mode,
                        struct node *root, int version, struct lyra_err *err)
{
    int rc = migrate_tree(root, version, path, err);
    if (!rc)
        rc = check_tree(root, path, err);
    if (rc)
        return rc;
    size_t blen = strlen(path) + 32;
    char *bak = malloc(blen), *header = malloc(blen + 128), *out = NULL;
    if (bak && header) {
        snprintf(bak, blen, "%s.v%d.bak", path, version);
        const char *base = strrchr(bak, '/');
        snprintf(header, blen + 128, "# Migrated by Lyra from schema_version %d to %d; the "
                 "original is in %s\n", version, LYRA_CONFIG_SCHEMA_VERSION, base ? base + 1 : bak);
        out = render_tree(root, header);
    }
    if (!out)
        rc = nomem(err);
    if (!rc)
        rc = write_atomic(bak, orig, len, mode, err);
    if (!rc)
        rc = write_atomic(path, out, strlen(out), mode, err);
    free(bak);
    free(header);
    free(out);
    return rc;
}

int lyra_config_migrate_file(const char *path, int *from_version, struct lyra_err *err)
{
    char *text = NULL;
    size_t len;
    mode_t mode;
    struct node *root = NULL;
    int version = LYRA_CONFIG_SCHEMA_VERSION;
    int rc = read_file(path, MAX_FILE_BYTES, &text, &len, &mode, err);
    if (!rc)
        rc = parse_yaml(text, len, path, &root, err);
    if (!rc)
        rc = read_version(root, path, &version, err);
    if (!rc && version < LYRA_CONFIG_SCHEMA_VERSION)
        rc = rewrite_file(path, text, len, mode, root, version, err);
    if (!rc && from_version)
        *from_version = version;
    node_free(root);
    free(text);
    return rc;
}

/* ----------------------------------------------------------- environment */

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
    snprintf(where, sizeof where, "env %.*s", (int)name_len, var);
    const struct keydef *k = NULL;
    for (size_t i = 0; i < N_CONFIG_KEYS && !k; i++)
        if (!strcmp(config_keys[i].section, sec) && upper_eq(config_keys[i].name, key, key_len))
            k = &config_keys[i];
    if (!k) {
        size_t n = key_len < sizeof lower - 1 ? key_len : sizeof lower - 1;
        for (size_t i = 0; i < n; i++)
            lower[i] = (char)tolower((unsigned char)key[i]);
        lower[n] = '\0';
        return lyra_err_set(err, LYRA_ECONFIG, "%s: unknown key %s.%s", where, sec, lower);
    }
    if (k->flags & F_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: the admin key is read from LYRA_ADMIN_KEY",
                            where);
    return store_text(cfg, k, var + name_len + 1, where, err);
}

/* Applies every LYRA_<SECTION>_<KEY> variable.  Variables that do not start
 * with a known section (LYRA_HOME, LYRA_ADMIN_KEY, ...) are not keys. */
static int apply_env(struct lyra_config *cfg, char *const *env, struct lyra_err *err)
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

/* --------------------------------------------------------------- secrets */

/* Reads the admin key from path, without its trailing newline (caller frees
 * with free_secret).  Errors name the path, never the content. */
static int read_secret(const char *path, char **out, struct lyra_err *err)
{
    struct lyra_err e;
    char *text;
    size_t len;
    int rc = read_file(path, MAX_SECRET_BYTES, &text, &len, NULL, &e);
    if (rc)
        return lyra_err_set(err, rc, "auth.admin_key_file: %s", e.msg);
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    if (!len || strlen(text) != len) {
        explicit_bzero(text, len);
        free(text);
        return lyra_err_set(err, LYRA_ECONFIG, "auth.admin_key_file: %s: %s", path,
                            len ? "the key contains a NUL byte" : "the file is empty");
    }
    *out = text;
    return 0;
}

/* Sets auth.admin_key from LYRA_ADMIN_KEY, else from auth.admin_key_file. */
static int resolve_secret(struct lyra_config *cfg, char *const *env, struct lyra_err *err)
{
    const char *key = env_get(env, "LYRA_ADMIN_KEY");
    char *s = NULL;
    if (key && *key) {
        if (!(s = strdup(key)))
            return nomem(err);
    } else if (cfg->auth.admin_key_file) {
        int rc = read_secret(cfg->auth.admin_key_file, &s, err);
        if (rc)
            return rc;
    } else {
        return 0;
    }
    free_secret(cfg->auth.admin_key);
    cfg->auth.admin_key = s;
    return 0;
}

/* ------------------------------------------------------------ loading */

/* LYRA_HOME: the argument, else env LYRA_HOME, else $HOME/.local/share/lyra. */
static int resolve_home(const char *home, char *const *env, char **out, struct lyra_err *err)
{
    const char *h = env_get(env, "HOME");
    if (!home || !*home)
        home = env_get(env, "LYRA_HOME");
    if (home && *home)
        *out = strdup(home);
    else if (h && *h)
        *out = path_join(h, ".local/share/lyra");
    else
        return lyra_err_set(err, LYRA_ECONFIG, "cannot find Lyra's home: set LYRA_HOME or HOME");
    return *out ? 0 : nomem(err);
}

/* The file to read: `file` (must exist), else <home>/lyra.yaml when it
 * exists, else none (*out NULL). */
static int find_file(const char *home, const char *file, char **out, struct lyra_err *err)
{
    struct stat st;
    *out = NULL;
    if (file) {
        if (stat(file, &st))
            return lyra_err_set(err, errno == ENOENT ? LYRA_ENOTFOUND : LYRA_EIO,
                                "config file %s: %s", file, strerror(errno));
        *out = strdup(file);
        return *out ? 0 : nomem(err);
    }
    char *p = path_join(home, "lyra.yaml");
    if (!p)
        return nomem(err);
    /* ENOTDIR: home is not a directory; no file here, and the daemon's own
     * check of LYRA_HOME reports that clearly. */
    if (stat(p, &st) && (errno == ENOENT || errno == ENOTDIR))
        free(p);
    else
        *out = p;
    return 0;
}

/* Reads cfg->file into cfg, migrating an old schema on disk (flag) or in
 * memory. */
static int load_file(struct lyra_config *cfg, unsigned flags, struct lyra_err *err)
{
    struct node *root = NULL;
    int version = LYRA_CONFIG_SCHEMA_VERSION, from;
    int rc = load_tree(cfg->file, &root, err);
    if (!rc)
        rc = read_version(root, cfg->file, &version, err);
    if (!rc && version < LYRA_CONFIG_SCHEMA_VERSION && (flags & LYRA_CONFIG_MIGRATE)) {
        node_free(root);
        root = NULL;
        rc = lyra_config_migrate_file(cfg->file, &from, err);
        if (!rc)
            rc = load_tree(cfg->file, &root, err);
        if (!rc)
            rc = read_version(root, cfg->file, &version, err);
    }
    if (!rc && version < LYRA_CONFIG_SCHEMA_VERSION)
        rc = migrate_tree(root, version, cfg->file, err);
    if (!rc)
        rc = apply_root(cfg, root, cfg->file, err);
    node_free(root);
    return rc;
}

int lyra_config_load(struct lyra_config *cfg, const char *home, const char *file,
                     char *const *environ_, unsigned flags, struct lyra_err *err)
{
    char *const *env = environ_ ? environ_ : environ;
    if (!cfg)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_load: no config");
    memset(cfg, 0, sizeof *cfg);
    cfg->schema_version = LYRA_CONFIG_SCHEMA_VERSION;
    int rc = resolve_home(home, env, &cfg->home, err);
    if (!rc)
        rc = set_defaults(cfg, CONFIG_SET, cfg->home, err);
    if (!rc)
        rc = find_file(cfg->home, file, &cfg->file, err);
    if (!rc && cfg->file)
        rc = load_file(cfg, flags, err);
    if (!rc)
        rc = apply_env(cfg, env, err);
    if (!rc)
        rc = resolve_secret(cfg, env, err);
    if (!rc)
        rc = lyra_config_validate(cfg, err);
    if (rc)
        lyra_config_free(cfg);
    return rc;
}

/* ----------------------------------------------------------- set, check */

/* A flag naming the key file reads it now: flags beat LYRA_ADMIN_KEY.
 * cfg is unchanged on error. */
static int set_key_file(struct lyra_config *cfg, const struct keydef *k, const char *value,
                        const char *where, struct lyra_err *err)
{
    char *secret = NULL;
    int rc = value && *value ? read_secret(value, &secret, err) : 0;
    if (!rc)
        rc = value ? store_text(cfg, k, value, where, err) : store_null(cfg, k, where, err);
    if (rc) {
        free_secret(secret);
        return rc;
    }
    if (secret) {
        free_secret(cfg->auth.admin_key);
        cfg->auth.admin_key = secret;
    }
    return 0;
}

int lyra_config_set(struct lyra_config *cfg, const char *key, const char *value,
                    const char *origin, struct lyra_err *err)
{
    const char *where = origin ? origin : key, *dot = key ? strchr(key, '.') : NULL;
    const struct keydef *k = NULL;
    char sec[32];
    if (dot && (size_t)(dot - key) < sizeof sec) {
        memcpy(sec, key, (size_t)(dot - key));
        sec[dot - key] = '\0';
        k = find_key(CONFIG_SET, sec, dot + 1);
    }
    if (!cfg || !k)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: unknown key '%s'", where ? where : "set",
                            key ? key : "(null)");
    if (k->flags & F_SECRET)
        return lyra_err_set(err, LYRA_ECONFIG, "%s: secrets cannot be set here; set env "
                            "LYRA_ADMIN_KEY or auth.admin_key_file", where);
    if (k->off == offsetof(struct lyra_config, auth.admin_key_file))
        return set_key_file(cfg, k, value, where, err);
    return value ? store_text(cfg, k, value, where, err) : store_null(cfg, k, where, err);
}

/* Checks one field against its row (for values written into the struct
 * directly); label names it in the message. */
static int check_field(const void *base, const struct keydef *k, const char *label,
                       struct lyra_err *err)
{
    const void *f = (const char *)base + k->off;
    char num[64];
    char canon[32];
    const char *s;
    switch (k->type) {
    case T_INT:
        if ((k->flags & F_UNSET) && *(const int *)f < 0)
            return 0;
        snprintf(num, sizeof num, "%d", *(const int *)f);
        return *(const int *)f < k->min || *(const int *)f > k->max
                   ? range_error(k, label, num, err) : 0;
    case T_DOUBLE:
        if ((k->flags & F_UNSET) && *(const double *)f < 0)
            return 0;
        snprintf(num, sizeof num, "%g", *(const double *)f);
        return !(*(const double *)f >= k->min && *(const double *)f <= k->max)
                   ? range_error(k, label, num, err) : 0;
    case T_SIZE:
        snprintf(num, sizeof num, "%zu", *(const size_t *)f);
        return *(const size_t *)f < (size_t)k->min ? range_error(k, label, num, err) : 0;
    case T_ENUM:
        s = *(char *const *)f;
        return s && match_choice(k->choices, s, canon, sizeof canon) ? 0
               : lyra_err_set(err, LYRA_ECONFIG, "%s: expected one of %s", label, k->choices);
    case T_STR:
        s = *(char *const *)f;
        return (k->def || (k->flags & F_REQUIRED)) && (!s || !*s)
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
        const struct keydef *k = &ks.keys[i];
        snprintf(label, sizeof label, "%s%s%s%s", prefix, k->section ? k->section : "",
                 k->section ? "." : "", k->name);
        int rc = check_field(base, k, label, err);
        if (rc)
            return rc;
    }
    return 0;
}

int lyra_config_validate(const struct lyra_config *cfg, struct lyra_err *err)
{
    if (!cfg)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_validate: no config");
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
    if (!rc && cfg->watchdog.warn_percent > cfg->watchdog.critical_percent)
        rc = lyra_err_set(err, LYRA_ECONFIG, "watchdog.warn_percent (%d) must not exceed "
                          "watchdog.critical_percent (%d)", cfg->watchdog.warn_percent,
                          cfg->watchdog.critical_percent);
    return rc;
}

/* ------------------------------------------------------------------ dump */

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

static struct node *value_node(const void *base, const struct keydef *k);

/* A model entry as a map node; unset optional fields are left out. */
static struct node *entry_node(const struct lyra_model_entry *e)
{
    struct node *map = node_new(N_MAP, NULL, false, 0, 0);
    for (size_t j = 0; map && j < N_ENTRY_KEYS; j++) {
        const struct keydef *k = &entry_keys[j];
        const void *f = (const char *)e + k->off;
        if ((k->flags & F_UNSET) &&
            (k->type == T_INT ? *(const int *)f < 0 : *(const double *)f < 0))
            continue;
        if (map_add(map, node_new(N_SCALAR, k->name, true, 0, 0), value_node(e, k))) {
            node_free(map);
            map = NULL;
        }
    }
    return map;
}

/* A sequence node of strings (T_LIST) or of model entries (T_ENTRIES). */
static struct node *seq_node(const void *base, const struct keydef *k)
{
    const void *f = (const char *)base + k->off;
    size_t n = *(const size_t *)((const char *)base + k->off_n);
    struct node *seq = node_new(N_SEQ, NULL, false, 0, 0);
    for (size_t i = 0; seq && i < n; i++) {
        struct node *item = k->type == T_LIST
            ? node_new(N_SCALAR, (*(char **const *)f)[i], false, 0, 0)
            : entry_node(&(*(struct lyra_model_entry *const *)f)[i]);
        if (node_push(seq, item)) {
            node_free(seq);
            seq = NULL;
        }
    }
    return seq;
}

/* The value of a field as a node for the writer (NULL when out of memory). */
static struct node *value_node(const void *base, const struct keydef *k)
{
    const void *f = (const char *)base + k->off;
    char tmp[64];
    const char *s = tmp;
    switch (k->type) {
    case T_STR:
    case T_ENUM:
        s = *(char *const *)f;
        return s ? node_new(N_SCALAR, s, false, 0, 0) : node_new(N_SCALAR, "~", true, 0, 0);
    case T_INT: snprintf(tmp, sizeof tmp, "%d", *(const int *)f); break;
    case T_BOOL: s = *(const bool *)f ? "true" : "false"; break;
    case T_SIZE: format_size(*(const size_t *)f, tmp, sizeof tmp); break;
    case T_U64: format_size(*(const uint64_t *)f, tmp, sizeof tmp); break;
    case T_DOUBLE: format_double(*(const double *)f, tmp, sizeof tmp); break;
    case T_LIST:
    case T_ENTRIES: return seq_node(base, k);
    }
    return node_new(N_SCALAR, s, true, 0, 0);
}

/* The configuration as a tree: schema_version, then every section in
 * table order, each value carrying its help line.  Secrets are left out. */
static struct node *config_tree(const struct lyra_config *cfg)
{
    struct node *root = node_new(N_MAP, NULL, false, 0, 0), *sec = NULL;
    if (!root || put_version(root, NULL)) {
        node_free(root);
        return NULL;
    }
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        const struct keydef *k = &config_keys[i];
        if (k->flags & F_SECRET)
            continue;
        if (!sec || strcmp(k->section, config_keys[i - 1].section)) {
            sec = node_new(N_MAP, NULL, false, 0, 0);
            if (map_add(root, node_new(N_SCALAR, k->section, true, 0, 0), sec))
                goto oom; /* map_add freed sec */
        }
        struct node *v = value_node(cfg, k);
        if (v)
            v->comment = k->help;
        if (map_add(sec, node_new(N_SCALAR, k->name, true, 0, 0), v))
            goto oom;
    }
    return root;
oom:
    node_free(root);
    return NULL;
}

/* Appends s to a comment line, control characters replaced, so that a
 * strange path cannot end the comment. */
static void put_comment_text(struct buf *b, const char *s)
{
    for (; *s; s++)
        buf_add(b, (unsigned char)*s < 0x20 || *s == 0x7f ? "?" : s, 1);
}

char *lyra_config_dump(const struct lyra_config *cfg)
{
    if (!cfg)
        return NULL;
    struct node *root = config_tree(cfg);
    if (!root)
        return NULL;
    struct buf b = {0};
    buf_puts(&b, "# Effective Lyra configuration.\n# home: ");
    put_comment_text(&b, cfg->home ? cfg->home : "(none)");
    buf_puts(&b, "\n# file: ");
    put_comment_text(&b, cfg->file ? cfg->file : "(none)");
    buf_printf(&b, "\n# auth.admin_key: %s (secrets are never written)\n",
               cfg->auth.admin_key ? "<set>" : "<not set>");
    write_map(&b, root, 0, false);
    node_free(root);
    return buf_take(&b);
}

void lyra_config_free(struct lyra_config *cfg)
{
    if (!cfg)
        return;
    free_fields(cfg, CONFIG_SET);
    free(cfg->home);
    free(cfg->file);
    memset(cfg, 0, sizeof *cfg);
}
