/* metrics.c — see metrics.h.
 *
 * A family keeps its series in creation order (for rendering) and in an
 * open-addressing hash table keyed by the normalised label values joined
 * with 0xff (a byte valid UTF-8 never holds, so the join is unambiguous).
 * The table is sized for the cap, so it never grows and never fills:
 * LYRA_METRICS_MAX_SERIES + 1 entries in 2048 slots.
 *
 * Locks: the registry's mutex guards the family list and the collectors;
 * each family's mutex guards its series.  Order: registry, then family.
 * The hot path (add/set/observe) takes the family's mutex only. */
#include "core/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define TABLE_SLOTS 2048 /* a power of two above LYRA_METRICS_MAX_SERIES + 1 */
#define KEY_MAX (LYRA_METRICS_MAX_LABELS * (LYRA_METRICS_MAX_VALUE + 1) + 1)
#define SEP '\xff'

struct series {
    char *key;        /* normalised values joined with SEP */
    char **values;    /* normalised label values, n_labels of them */
    double value;     /* counter, gauge */
    uint64_t *counts; /* histogram: per bucket, not cumulative; +Inf last */
    double sum;
    uint64_t count;
    uint32_t hash;
};

struct lyra_metric {
    pthread_mutex_t lock; /* guards everything below `n_buckets` */
    enum lyra_metric_type type;
    char *name, *help;
    char *labels[LYRA_METRICS_MAX_LABELS];
    size_t n_labels;
    double *bounds;
    size_t n_buckets; /* finite bounds; counts has n_buckets + 1 */
    struct series **series;
    size_t n_series, cap_series;
    int32_t *table; /* TABLE_SLOTS indices into series, -1 = empty */
};

struct collector {
    lyra_metrics_collect_fn fn;
    void *ud;
};

struct lyra_metrics {
    pthread_mutex_t lock;
    struct lyra_metric **families;
    size_t n_families, cap_families;
    struct collector *collectors;
    size_t n_collectors, cap_collectors;
};

static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

/* ------------------------------------------------------------------ */
/* Names                                                              */

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s, enum lyra_metric_type type)
{
    return valid_name(s, false) && strncmp(s, "__", 2) != 0 &&
           !(type == LYRA_METRIC_HISTOGRAM && !strcmp(s, "le"));
}

/* ------------------------------------------------------------------ */
/* Families                                                           */

static struct series *series_get(struct lyra_metric *f, const char *const *values);
static void series_free(struct series *s, size_t n_labels);

static void family_free(struct lyra_metric *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_series; i++)
        series_free(f->series[i], f->n_labels);
    free(f->series);
    free(f->table);
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->labels[i]);
    free(f->bounds);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static struct lyra_metric *family_new(enum lyra_metric_type type, const char *name, const char *help,
                                      const char *const *label_names, const double *buckets, size_t n_buckets)
{
    struct lyra_metric *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    pthread_mutex_init(&f->lock, NULL);
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->table = malloc(TABLE_SLOTS * sizeof *f->table);
    bool ok = f->name && f->help && f->table;
    for (size_t i = 0; ok && label_names && label_names[i]; i++) {
        ok = i < LYRA_METRICS_MAX_LABELS && valid_label_name(label_names[i], type);
        for (size_t j = 0; ok && j < i; j++)
            ok = strcmp(label_names[i], label_names[j]) != 0;
        if (ok) {
            ok = (f->labels[i] = strdup(label_names[i])) != NULL;
            f->n_labels = i + 1;
        }
    }
    if (ok && type == LYRA_METRIC_HISTOGRAM) {
        if (!buckets || n_buckets == 0) {
            buckets = default_buckets;
            n_buckets = sizeof default_buckets / sizeof *default_buckets;
        }
        ok = n_buckets <= LYRA_METRICS_MAX_BUCKETS;
        for (size_t i = 0; ok && i < n_buckets; i++)
            ok = isfinite(buckets[i]) && (i == 0 || buckets[i] > buckets[i - 1]);
        if (ok && (f->bounds = malloc(n_buckets * sizeof *f->bounds))) {
            memcpy(f->bounds, buckets, n_buckets * sizeof *f->bounds);
            f->n_buckets = n_buckets;
        } else {
            ok = false;
        }
    }
    if (ok) {
        for (size_t i = 0; i < TABLE_SLOTS; i++)
            f->table[i] = -1;
        /* A family without labels has its one series from the start, so it
         * renders 0 before anything happened. */
        if (f->n_labels == 0)
            ok = series_get(f, NULL) != NULL;
    }
    if (!ok) {
        family_free(f);
        return NULL;
    }
    return f;
}

int lyra_metrics_new(struct lyra_metrics **out, struct lyra_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    pthread_mutex_init(&(*out)->lock, NULL);
    return 0;
}

void lyra_metrics_free(struct lyra_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_families; i++)
        family_free(m->families[i]);
    free(m->families);
    free(m->collectors);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

struct lyra_metric *lyra_metrics_family(struct lyra_metrics *m, enum lyra_metric_type type, const char *name,
                                        const char *help, const char *const *label_names,
                                        const double *buckets, size_t n_buckets)
{
    if (!m || !valid_name(name, true) ||
        (type != LYRA_METRIC_COUNTER && type != LYRA_METRIC_GAUGE && type != LYRA_METRIC_HISTOGRAM))
        return NULL;
    pthread_mutex_lock(&m->lock);
    struct lyra_metric *f = NULL;
    for (size_t i = 0; i < m->n_families; i++) {
        if (strcmp(m->families[i]->name, name) == 0) {
            f = m->families[i]->type == type ? m->families[i] : NULL;
            pthread_mutex_unlock(&m->lock);
            return f;
        }
    }
    if (m->n_families == m->cap_families) {
        size_t cap = m->cap_families ? m->cap_families * 2 : 16;
        struct lyra_metric **nf = realloc(m->families, cap * sizeof *nf);
        if (!nf) {
            pthread_mutex_unlock(&m->lock);
            return NULL;
        }
        m->families = nf;
        m->cap_families = cap;
    }
    f = family_new(type, name, help, label_names, buckets, n_buckets);
    if (f)
        m->families[m->n_families++] = f;
    pthread_mutex_unlock(&m->lock);
    return f;
}

int lyra_metrics_add_collector(struct lyra_metrics *m, lyra_metrics_collect_fn fn, void *ud)
{
    if (!m || !fn)
        return LYRA_EINVAL;
    pthread_mutex_lock(&m->lock);
    int rc = 0;
    if (m->n_collectors == m->cap_collectors) {
        size_t cap = m->cap_collectors ? m->cap_collectors * 2 : 4;
        struct collector *nc = realloc(m->collectors, cap * sizeof *nc);
        if (nc) {
            m->collectors = nc;
            m->cap_collectors = cap;
        } else {
            rc = LYRA_ENOMEM;
        }
    }
    if (rc == 0)
        m->collectors[m->n_collectors++] = (struct collector){fn, ud};
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Series                                                             */

/* FNV-1a. */
static uint32_t hash_of(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Appends value v, cut to LYRA_METRICS_MAX_VALUE bytes on a code-point
 * boundary, invalid bytes as '?', to key at *len. */
static void append_value(char *key, size_t *len, const char *v)
{
    if (!v)
        v = "";
    size_t n = lyra_utf8_clip(v, LYRA_METRICS_MAX_VALUE);
    memcpy(key + *len, v, n);
    key[*len + n] = '\0';
    lyra_utf8_scrub(key + *len); /* only replaces bytes here: n is unchanged, but a cut tail is dropped */
    *len += strlen(key + *len);
}

/* Finds the series at `key` (length len, hash h); when not found, *slot is
 * the empty table slot for it. */
static struct series *find(struct lyra_metric *f, const char *key, size_t len, uint32_t h, size_t *slot)
{
    for (size_t i = h & (TABLE_SLOTS - 1);; i = (i + 1) & (TABLE_SLOTS - 1)) {
        int32_t idx = f->table[i];
        if (idx < 0) {
            *slot = i;
            return NULL;
        }
        struct series *s = f->series[idx];
        if (s->hash == h && strlen(s->key) == len && memcmp(s->key, key, len) == 0)
            return s;
    }
}

static void series_free(struct series *s, size_t n_labels)
{
    for (size_t i = 0; s->values && i < n_labels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->key);
    free(s->counts);
    free(s);
}

/* A new series for key, with its values split out of it, added to f's
 * list and to its table at `slot`.  NULL when out of memory. */
static struct series *series_add(struct lyra_metric *f, const char *key, size_t len, uint32_t h, size_t slot)
{
    struct series *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->hash = h;
    s->key = malloc(len + 1);
    s->values = calloc(f->n_labels ? f->n_labels : 1, sizeof *s->values);
    bool ok = s->key && s->values;
    if (ok && f->type == LYRA_METRIC_HISTOGRAM)
        ok = (s->counts = calloc(f->n_buckets + 1, sizeof *s->counts)) != NULL;
    if (ok) {
        memcpy(s->key, key, len);
        s->key[len] = '\0';
        const char *p = s->key;
        for (size_t i = 0; ok && i < f->n_labels; i++) {
            const char *e = strchr(p, SEP);
            size_t n = e ? (size_t)(e - p) : strlen(p);
            ok = (s->values[i] = strndup(p, n)) != NULL;
            p += n + (e ? 1 : 0);
        }
    }
    if (ok && f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 8;
        struct series **ns = realloc(f->series, cap * sizeof *ns);
        if (ns) {
            f->series = ns;
            f->cap_series = cap;
        } else {
            ok = false;
        }
    }
    if (!ok) {
        series_free(s, f->n_labels);
        return NULL;
    }
    f->table[slot] = (int32_t)f->n_series;
    f->series[f->n_series++] = s;
    return s;
}

/* The series for these label values, created if new; once the family has
 * LYRA_METRICS_MAX_SERIES, a new label set gets the one series whose every
 * value is "other" (which is in the table like any other, so a client
 * sending "other" itself finds the same series, never a duplicate).
 * f->lock held.  NULL only when out of memory. */
static struct series *series_get(struct lyra_metric *f, const char *const *values)
{
    char key[KEY_MAX];
    size_t len = 0;
    key[0] = '\0';
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i > 0)
            key[len++] = SEP;
        append_value(key, &len, values ? values[i] : NULL);
    }
    uint32_t h = hash_of(key, len);
    size_t slot;
    struct series *s = find(f, key, len, h, &slot);
    if (s)
        return s;
    if (f->n_series >= LYRA_METRICS_MAX_SERIES) {
        len = 0;
        for (size_t i = 0; i < f->n_labels; i++)
            len += (size_t)snprintf(key + len, sizeof key - len, "%sother", i ? "\xff" : "");
        h = hash_of(key, len);
        if ((s = find(f, key, len, h, &slot)))
            return s;
    }
    return series_add(f, key, len, h, slot);
}

void lyra_metric_add(struct lyra_metric *f, const char *const *label_values, double v)
{
    if (!f || f->type == LYRA_METRIC_HISTOGRAM || (f->type == LYRA_METRIC_COUNTER && !(v >= 0)))
        return;
    pthread_mutex_lock(&f->lock);
    struct series *s = series_get(f, label_values);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&f->lock);
}

void lyra_metric_set(struct lyra_metric *f, const char *const *label_values, double v)
{
    if (!f || f->type == LYRA_METRIC_HISTOGRAM)
        return;
    pthread_mutex_lock(&f->lock);
    struct series *s = series_get(f, label_values);
    if (s)
        s->value = v;
    pthread_mutex_unlock(&f->lock);
}

void lyra_metric_observe(struct lyra_metric *f, const char *const *label_values, double v)
{
    if (!f || f->type != LYRA_METRIC_HISTOGRAM || isnan(v))
        return;
    size_t b = 0;
    while (b < f->n_buckets && v > f->bounds[b])
        b++;
    pthread_mutex_lock(&f->lock);
    struct series *s = series_get(f, label_values);
    if (s) {
        s->counts[b]++;
        s->sum += v;
        s->count++;
    }
    pthread_mutex_unlock(&f->lock);
}

/* ------------------------------------------------------------------ */
/* Rendering                                                          */

struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Escapes backslash and newline (help text), and the double quote too
 * (label values). */
static void put_escaped(struct buf *b, const char *s, bool quote)
{
    for (const char *run = s;; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : (quote && *s == '"') ? "\\\"" : NULL;
        if (esc || !*s) {
            put(b, run, (size_t)(s - run));
            if (!*s)
                return;
            puts_(b, esc);
            run = s + 1;
        }
    }
}

/* A sample value as Prometheus reads it: the shortest text that reads back
 * as the same double; +Inf, -Inf, NaN. */
static void format_number(char *s, size_t cap, double v)
{
    if (isnan(v))
        snprintf(s, cap, "NaN");
    else if (isinf(v))
        snprintf(s, cap, "%sInf", v > 0 ? "+" : "-");
    else if (v == 0)
        snprintf(s, cap, "0"); /* -0 too */
    else {
        snprintf(s, cap, "%.15g", v);
        if (strtod(s, NULL) != v)
            snprintf(s, cap, "%.17g", v);
    }
}

static void put_number(struct buf *b, double v)
{
    char s[40];
    format_number(s, sizeof s, v);
    puts_(b, s);
}

/* {a="x",b="y"[,le="..."]} or nothing. */
static void put_labels(struct buf *b, const struct lyra_metric *f, const struct series *s, const char *le)
{
    if (f->n_labels == 0 && !le)
        return;
    puts_(b, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i)
            puts_(b, ",");
        puts_(b, f->labels[i]);
        puts_(b, "=\"");
        put_escaped(b, s->values[i], true);
        puts_(b, "\"");
    }
    if (le) {
        if (f->n_labels)
            puts_(b, ",");
        puts_(b, "le=\"");
        puts_(b, le);
        puts_(b, "\"");
    }
    puts_(b, "}");
}

static void put_sample(struct buf *b, const struct lyra_metric *f, const char *suffix, const struct series *s,
                       const char *le, double v)
{
    puts_(b, f->name);
    puts_(b, suffix);
    put_labels(b, f, s, le);
    puts_(b, " ");
    put_number(b, v);
    puts_(b, "\n");
}

static void render_family(struct buf *b, struct lyra_metric *f)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    puts_(b, "# HELP ");
    puts_(b, f->name);
    puts_(b, " ");
    put_escaped(b, f->help, false);
    puts_(b, "\n# TYPE ");
    puts_(b, f->name);
    puts_(b, " ");
    puts_(b, type_names[f->type]);
    puts_(b, "\n");
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n_series; i++) {
        const struct series *s = f->series[i];
        if (f->type != LYRA_METRIC_HISTOGRAM) {
            put_sample(b, f, "", s, NULL, s->value);
            continue;
        }
        uint64_t cum = 0;
        for (size_t k = 0; k <= f->n_buckets; k++) {
            char le[40] = "+Inf";
            if (k < f->n_buckets)
                format_number(le, sizeof le, f->bounds[k]);
            cum += s->counts[k];
            put_sample(b, f, "_bucket", s, le, (double)cum);
        }
        put_sample(b, f, "_sum", s, NULL, s->sum);
        put_sample(b, f, "_count", s, NULL, (double)s->count);
    }
    pthread_mutex_unlock(&f->lock);
}

char *lyra_metrics_render(struct lyra_metrics *m)
{
    if (!m)
        return NULL;
    /* The collectors run outside the registry's lock: they set values
     * through the families' own locks. */
    pthread_mutex_lock(&m->lock);
    size_t n = m->n_collectors;
    struct collector *cs = n ? malloc(n * sizeof *cs) : NULL;
    if (cs)
        memcpy(cs, m->collectors, n * sizeof *cs);
    pthread_mutex_unlock(&m->lock);
    if (n && !cs)
        return NULL;
    for (size_t i = 0; i < n; i++)
        cs[i].fn(m, cs[i].ud);
    free(cs);

    struct buf b = {0};
    puts_(&b, ""); /* an empty registry renders "" */
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_families; i++)
        render_family(&b, m->families[i]);
    pthread_mutex_unlock(&m->lock);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
