/* metrics.h — a registry of Prometheus metrics (counters, gauges,
 * histograms) rendered in the text exposition format 0.0.4 for GET /metrics.
 *
 * A family (struct lyra_metric) is one metric name with its help text, type,
 * label names and, for histograms, bucket bounds; each distinct tuple of
 * label values is one series of that family.  Families live as long as the
 * registry; the pointers lyra_metrics_family() returns stay valid until
 * lyra_metrics_free().
 *
 * Label values are client-influenced text (model names, routes), so they
 * are bounded: a value longer than LYRA_METRICS_MAX_VALUE bytes is cut at a
 * code-point boundary (lyra_utf8_clip), invalid UTF-8 becomes '?', and a
 * family holds at most LYRA_METRICS_MAX_SERIES label sets.  A new label set
 * beyond that cap is counted in one extra series whose every label value is
 * "other": no client can grow the daemon's memory without bound through
 * the names it sends.  Rendering escapes backslash, double quote and
 * newline in label values and help text as the format requires.
 *
 * Thread-safety: every function is thread-safe.  add/set/observe take only
 * their family's mutex (no registry-wide lock): call them once per request,
 * never per token.  Collectors run on the scraping thread, outside every
 * lock of the registry, and may call add/set/observe (not
 * lyra_metrics_add_collector). */
#ifndef LYRA_METRICS_H
#define LYRA_METRICS_H

#include <stddef.h>

#include "core/error.h"

enum lyra_metric_type { LYRA_METRIC_COUNTER, LYRA_METRIC_GAUGE, LYRA_METRIC_HISTOGRAM };

#define LYRA_METRICS_MAX_LABELS 8    /* label names per family */
#define LYRA_METRICS_MAX_SERIES 1000 /* label sets per family before "other" */
#define LYRA_METRICS_MAX_VALUE 128   /* bytes of a label value kept */
#define LYRA_METRICS_MAX_BUCKETS 64  /* histogram bucket bounds (+Inf is implicit) */

struct lyra_metrics; /* the registry */
struct lyra_metric;  /* one family */

/* Creates an empty registry; *out is freed with lyra_metrics_free. */
int lyra_metrics_new(struct lyra_metrics **out, struct lyra_err *err);

/* Frees the registry, its families and series.  No other thread may use it
 * or any of its families any more.  NULL is a no-op. */
void lyra_metrics_free(struct lyra_metrics *m);

/* The family `name`, created on first use: idempotent by name (the same
 * pointer back for the same name and type; later help, labels and buckets
 * are ignored).  Strings are copied.
 *  - name must match [a-zA-Z_:][a-zA-Z0-9_:]*; label names
 *    [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", at most
 *    LYRA_METRICS_MAX_LABELS, and not "le" on a histogram;
 *  - label_names is NULL-terminated, or NULL for no labels;
 *  - buckets (histograms only): n_buckets finite upper bounds, strictly
 *    ascending, without +Inf (always added); NULL/0 takes Prometheus's
 *    default buckets (0.005 … 10).
 * Returns NULL on an invalid argument, a name already used with another
 * type, or out of memory.  A family without labels renders its one series
 * (0) from the start; a labelled one renders its series once used. */
struct lyra_metric *lyra_metrics_family(struct lyra_metrics *m, enum lyra_metric_type type, const char *name,
                                        const char *help, const char *const *label_names,
                                        const double *buckets, size_t n_buckets);

/* label_values: one value per label name of the family, in order (a NULL
 * value counts as ""); NULL for a family without labels.  A NULL family is
 * a no-op, so callers need not check that registration succeeded. */

/* Counter or gauge: value += v.  On a counter a negative or NaN v is
 * ignored (counters only grow).  No-op on a histogram. */
void lyra_metric_add(struct lyra_metric *f, const char *const *label_values, double v);

/* Gauge: value = v.  Also allowed on a counter that mirrors a monotonic
 * count kept elsewhere (the process's CPU time).  No-op on a histogram. */
void lyra_metric_set(struct lyra_metric *f, const char *const *label_values, double v);

/* Histogram: counts v into its bucket, adds it to _sum and _count.  NaN is
 * ignored.  No-op on a counter or gauge. */
void lyra_metric_observe(struct lyra_metric *f, const char *const *label_values, double v);

/* Called by lyra_metrics_render before rendering, to set gauges from live
 * state (resident models, queue depths, memory).  `ud` is borrowed and must
 * outlive the registry.  Collectors run in the order added. */
typedef void (*lyra_metrics_collect_fn)(struct lyra_metrics *m, void *ud);
int lyra_metrics_add_collector(struct lyra_metrics *m, lyra_metrics_collect_fn fn, void *ud);

/* Runs the collectors, then renders every family (in the order they were
 * created, series in the order they were first used): # HELP and # TYPE
 * once per family; histograms as cumulative _bucket{le="…"} lines ending in
 * le="+Inf", then _sum and _count.  Returns malloc'd NUL-terminated text
 * (caller frees), NULL when out of memory. */
char *lyra_metrics_render(struct lyra_metrics *m);

#endif
