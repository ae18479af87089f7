/* test_metrics.c — the metrics registry: exact exposition text of a
 * counter, a labelled gauge and a histogram; escaping and cutting of label
 * values; the label-set cap; collectors; invalid names; and adds from four
 * threads summing exactly. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"

static int setup(void **state)
{
    struct lyra_metrics *m;
    if (lyra_metrics_new(&m, NULL) < 0)
        return -1;
    *state = m;
    return 0;
}

static int teardown(void **state)
{
    lyra_metrics_free(*state);
    return 0;
}

static void assert_render(struct lyra_metrics *m, const char *want)
{
    char *got = lyra_metrics_render(m);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_counter(void **state)
{
    struct lyra_metrics *m = *state;
    assert_render(m, "");
    struct lyra_metric *c =
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "lyra_things_total", "Things seen.", NULL, NULL, 0);
    assert_non_null(c);
    /* no labels: rendered as 0 before anything happened */
    assert_render(
        m, "# HELP lyra_things_total Things seen.\n# TYPE lyra_things_total counter\nlyra_things_total 0\n");
    lyra_metric_add(c, NULL, 1);
    lyra_metric_add(c, NULL, 2.5);
    lyra_metric_add(c, NULL, -7); /* counters never go down */
    assert_render(m, "# HELP lyra_things_total Things seen.\n# TYPE lyra_things_total counter\n"
                     "lyra_things_total 3.5\n");
    /* idempotent by name; another type under the same name is refused */
    assert_ptr_equal(
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "lyra_things_total", "other help", NULL, NULL, 0), c);
    assert_null(lyra_metrics_family(m, LYRA_METRIC_GAUGE, "lyra_things_total", "x", NULL, NULL, 0));
    lyra_metric_observe(c, NULL, 1); /* wrong kind of update: ignored */
    assert_render(m, "# HELP lyra_things_total Things seen.\n# TYPE lyra_things_total counter\n"
                     "lyra_things_total 3.5\n");
}

static void test_gauge_with_labels(void **state)
{
    struct lyra_metrics *m = *state;
    const char *const labels[] = {"model", "state", NULL};
    struct lyra_metric *g =
        lyra_metrics_family(m, LYRA_METRIC_GAUGE, "lyra_slots", "Slots by state.", labels, NULL, 0);
    assert_non_null(g);
    assert_render(m, "# HELP lyra_slots Slots by state.\n# TYPE lyra_slots gauge\n"); /* no series yet */
    lyra_metric_set(g, (const char *const[]){"tiny", "busy"}, 3);
    lyra_metric_set(g, (const char *const[]){"small", "idle"}, 1e12);
    lyra_metric_add(g, (const char *const[]){"tiny", "busy"}, -1);
    lyra_metric_add(g, (const char *const[]){"tiny", NULL}, 0.1);
    assert_render(m, "# HELP lyra_slots Slots by state.\n# TYPE lyra_slots gauge\n"
                     "lyra_slots{model=\"tiny\",state=\"busy\"} 2\n"
                     "lyra_slots{model=\"small\",state=\"idle\"} 1000000000000\n"
                     "lyra_slots{model=\"tiny\",state=\"\"} 0.1\n");
}

static void test_histogram(void **state)
{
    struct lyra_metrics *m = *state;
    const char *const labels[] = {"model", NULL};
    const double b[] = {0.1, 0.5, 2};
    struct lyra_metric *h =
        lyra_metrics_family(m, LYRA_METRIC_HISTOGRAM, "lyra_wait_seconds", "Time waited.", labels, b, 3);
    assert_non_null(h);
    const char *const tiny[] = {"tiny"};
    lyra_metric_observe(h, tiny, 0.05);
    lyra_metric_observe(h, tiny, 0.1); /* a bound is inclusive (le) */
    lyra_metric_observe(h, tiny, 1);
    lyra_metric_observe(h, tiny, 30);
    lyra_metric_add(h, tiny, 5); /* not for histograms */
    assert_render(m, "# HELP lyra_wait_seconds Time waited.\n# TYPE lyra_wait_seconds histogram\n"
                     "lyra_wait_seconds_bucket{model=\"tiny\",le=\"0.1\"} 2\n"
                     "lyra_wait_seconds_bucket{model=\"tiny\",le=\"0.5\"} 2\n"
                     "lyra_wait_seconds_bucket{model=\"tiny\",le=\"2\"} 3\n"
                     "lyra_wait_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 4\n"
                     "lyra_wait_seconds_sum{model=\"tiny\"} 31.15\n"
                     "lyra_wait_seconds_count{model=\"tiny\"} 4\n");
}

static void test_histogram_without_labels_and_default_buckets(void **state)
{
    struct lyra_metrics *m = *state;
    struct lyra_metric *h = lyra_metrics_family(m, LYRA_METRIC_HISTOGRAM, "d_seconds", "D.", NULL, NULL, 0);
    assert_non_null(h);
    char *text = lyra_metrics_render(m);
    assert_non_null(text);
    /* Prometheus's default buckets, all at 0 from the start */
    assert_non_null(strstr(text, "d_seconds_bucket{le=\"0.005\"} 0\n"));
    assert_non_null(strstr(text, "d_seconds_bucket{le=\"10\"} 0\nd_seconds_bucket{le=\"+Inf\"} 0\n"
                                 "d_seconds_sum 0\nd_seconds_count 0\n"));
    free(text);
    /* buckets must ascend and be finite; "le" is the histogram's own label */
    const double bad[] = {1, 1};
    assert_null(lyra_metrics_family(m, LYRA_METRIC_HISTOGRAM, "e_seconds", "", NULL, bad, 2));
    assert_null(lyra_metrics_family(m, LYRA_METRIC_HISTOGRAM, "f_seconds", "",
                                    (const char *const[]){"le", NULL}, NULL, 0));
}

static void test_names_are_checked(void **state)
{
    struct lyra_metrics *m = *state;
    assert_null(lyra_metrics_family(m, LYRA_METRIC_COUNTER, "1abc", "", NULL, NULL, 0));
    assert_null(lyra_metrics_family(m, LYRA_METRIC_COUNTER, "a-b", "", NULL, NULL, 0));
    assert_null(lyra_metrics_family(m, LYRA_METRIC_COUNTER, "", "", NULL, NULL, 0));
    assert_null(lyra_metrics_family(m, LYRA_METRIC_COUNTER, NULL, "", NULL, NULL, 0));
    assert_null(
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "a", "", (const char *const[]){"x:y", NULL}, NULL, 0));
    assert_null(
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "a", "", (const char *const[]){"__x", NULL}, NULL, 0));
    assert_null(
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "a", "", (const char *const[]){"x", "x", NULL}, NULL, 0));
    assert_non_null(lyra_metrics_family(m, LYRA_METRIC_COUNTER, "ns:sub_name_9", "", NULL, NULL, 0));
    assert_render(m, "# HELP ns:sub_name_9 \n# TYPE ns:sub_name_9 counter\nns:sub_name_9 0\n");
    /* a NULL family is a no-op */
    lyra_metric_add(NULL, NULL, 1);
    lyra_metric_set(NULL, NULL, 1);
    lyra_metric_observe(NULL, NULL, 1);
}

static void test_escaping(void **state)
{
    struct lyra_metrics *m = *state;
    struct lyra_metric *c =
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "esc_total", "Help with \\ and\nnewline \"q\".",
                            (const char *const[]){"v", NULL}, NULL, 0);
    lyra_metric_add(c, (const char *const[]){"a\"b\\c\nd"}, 1);
    lyra_metric_add(c, (const char *const[]){"bad \xff\xfe utf8"}, 1);
    assert_render(m, "# HELP esc_total Help with \\\\ and\\nnewline \"q\".\n# TYPE esc_total counter\n"
                     "esc_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"
                     "esc_total{v=\"bad ?? utf8\"} 1\n");
}

static void test_long_values_are_cut_on_a_character(void **state)
{
    struct lyra_metrics *m = *state;
    struct lyra_metric *c = lyra_metrics_family(m, LYRA_METRIC_COUNTER, "cut_total", "",
                                                (const char *const[]){"v", NULL}, NULL, 0);
    /* 127 ASCII bytes, then "é" (2 bytes) that would end at byte 129 */
    char v[200];
    memset(v, 'x', 127);
    strcpy(v + 127, "\xc3\xa9tail");
    lyra_metric_add(c, (const char *const[]){v}, 1);
    char w[200]; /* cut after its 128th byte: two values that differ only beyond it share a series */
    memset(w, 'x', 127);
    strcpy(w + 127, "yz");
    lyra_metric_add(c, (const char *const[]){w}, 1);
    w[128] = 'q';
    lyra_metric_add(c, (const char *const[]){w}, 1);
    char *text = lyra_metrics_render(m);
    assert_non_null(text);
    char want[300];
    snprintf(want, sizeof want, "cut_total{v=\"%.127s\"} 1\ncut_total{v=\"%.127sy\"} 2\n", v, w);
    assert_non_null(strstr(text, want));
    free(text);
}

static void test_label_set_cap_folds_into_other(void **state)
{
    struct lyra_metrics *m = *state;
    struct lyra_metric *c = lyra_metrics_family(m, LYRA_METRIC_COUNTER, "cap_total", "",
                                                (const char *const[]){"model", "code", NULL}, NULL, 0);
    char name[32];
    for (int i = 0; i < LYRA_METRICS_MAX_SERIES + 500; i++) {
        snprintf(name, sizeof name, "m%d", i);
        lyra_metric_add(c, (const char *const[]){name, "200"}, 1);
    }
    lyra_metric_add(c, (const char *const[]){"m0", "200"}, 1); /* an existing one still counts as itself */
    lyra_metric_add(c, (const char *const[]){"other", "other"}, 1); /* the fold's own name: the same series */
    char *text = lyra_metrics_render(m);
    assert_non_null(text);
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "\ncap_total{")); p++)
        lines++;
    assert_int_equal(lines, LYRA_METRICS_MAX_SERIES + 1);
    assert_non_null(strstr(text, "cap_total{model=\"m0\",code=\"200\"} 2\n"));
    assert_non_null(strstr(text, "cap_total{model=\"m999\",code=\"200\"} 1\n"));
    assert_null(strstr(text, "model=\"m1000\""));
    assert_non_null(strstr(text, "cap_total{model=\"other\",code=\"other\"} 501\n"));
    free(text);
}

static void collect(struct lyra_metrics *m, void *ud)
{
    int *calls = ud;
    (*calls)++;
    lyra_metric_set(lyra_metrics_family(m, LYRA_METRIC_GAUGE, "live", "Live.", NULL, NULL, 0), NULL,
                    *calls * 10);
}

static void test_collectors_run_at_each_render(void **state)
{
    struct lyra_metrics *m = *state;
    int calls = 0;
    assert_non_null(lyra_metrics_family(m, LYRA_METRIC_GAUGE, "live", "Live.", NULL, NULL, 0));
    assert_int_equal(lyra_metrics_add_collector(m, collect, &calls), 0);
    assert_render(m, "# HELP live Live.\n# TYPE live gauge\nlive 10\n");
    assert_render(m, "# HELP live Live.\n# TYPE live gauge\nlive 20\n");
    assert_int_equal(calls, 2);
}

#define THREADS 4
#define ADDS 100000

struct worker_arg {
    struct lyra_metric *c, *h;
    int id;
};

static void *adder(void *p)
{
    struct worker_arg *a = p;
    const char *const odd_even[] = {a->id % 2 ? "odd" : "even"};
    for (int i = 0; i < ADDS; i++) {
        lyra_metric_add(a->c, odd_even, 1);
        lyra_metric_observe(a->h, NULL, (double)(i % 4));
    }
    return NULL;
}

static void test_concurrent_adds_sum_exactly(void **state)
{
    struct lyra_metrics *m = *state;
    struct lyra_metric *c =
        lyra_metrics_family(m, LYRA_METRIC_COUNTER, "n_total", "", (const char *const[]){"t", NULL}, NULL, 0);
    const double b[] = {1.5};
    struct lyra_metric *h = lyra_metrics_family(m, LYRA_METRIC_HISTOGRAM, "v", "", NULL, b, 1);
    pthread_t th[THREADS];
    struct worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct worker_arg){c, h, i};
        assert_int_equal(pthread_create(&th[i], NULL, adder, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    char *text = lyra_metrics_render(m);
    assert_non_null(text);
    assert_non_null(strstr(text, "n_total{t=\"even\"} 200000\n"));
    assert_non_null(strstr(text, "n_total{t=\"odd\"} 200000\n"));
    /* 0,1,2,3 repeated: half at or below 1.5; sum 6 per 4 observations */
    assert_non_null(strstr(text, "v_bucket{le=\"1.5\"} 200000\nv_bucket{le=\"+Inf\"} 400000\n"
                                 "v_sum 600000\nv_count 400000\n"));
    free(text);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_counter),
        T(test_gauge_with_labels),
        T(test_histogram),
        T(test_histogram_without_labels_and_default_buckets),
        T(test_names_are_checked),
        T(test_escaping),
        T(test_long_values_are_cut_on_a_character),
        T(test_label_set_cap_folds_into_other),
        T(test_collectors_run_at_each_render),
        T(test_concurrent_adds_sum_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
