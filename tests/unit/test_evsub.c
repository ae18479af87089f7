/* test_evsub.c — event subscriptions and the event log: replay after a seq
 * then live, in order and without duplicates; the type filter; a full
 * queue drops to a stream.gap at the place of the loss (the publisher never
 * waits); the database keeps the last `keep` events across a restart of the
 * bus and tells, with a gap, when retention deleted what a client missed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/events.h"
#include "core/evlog.h"
#include "core/evsub.h"
#include "core/store.h"
#include "core/util.h"

static struct lyra_bus *bus_after(uint64_t start_after)
{
    struct lyra_bus_options o = {.ring_size = 1000, .start_after = start_after};
    return lyra_bus_new(&o);
}

static void publish_n(struct lyra_bus *bus, const char *type, int n)
{
    for (int i = 0; i < n; i++)
        assert_true(lyra_bus_publish(bus, type, "test", json_pack("{s:i}", "i", i)) > 0);
}

/* The next event's seq and type ("" when none). */
static uint64_t next_of(struct lyra_evsub *s, char *type, size_t cap)
{
    char *json;
    uint64_t seq = 0;
    type[0] = '\0';
    if (lyra_evsub_next(s, &json, &seq) != 0)
        return 0;
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    snprintf(type, cap, "%s", json_string_value(json_object_get(j, "type")));
    assert_int_equal((uint64_t)json_integer_value(json_object_get(j, "seq")), seq);
    json_decref(j);
    free(json);
    return seq;
}

static int notified;
static void on_notify(void *ud)
{
    (void)ud;
    notified++;
}

static void test_replay_then_live_in_order(void **state)
{
    (void)state;
    struct lyra_bus *bus = bus_after(0);
    publish_n(bus, "model.loaded", 5); /* 1..5 */
    struct lyra_evsub *s;
    struct lyra_err err = {0};
    notified = 0;
    assert_int_equal(lyra_evsub_new(bus, NULL, 2, NULL, 0, 0, on_notify, NULL, &s, &err), 0);
    assert_int_equal(notified, 1); /* the replay is waiting */
    char type[64];
    for (uint64_t want = 3; want <= 5; want++)
        assert_int_equal(next_of(s, type, sizeof type), want);
    assert_int_equal(next_of(s, type, sizeof type), 0);
    assert_false(lyra_evsub_pending(s));
    publish_n(bus, "model.loaded", 2); /* 6, 7 */
    assert_int_equal(notified, 2);     /* empty -> non-empty once */
    assert_int_equal(next_of(s, type, sizeof type), 6);
    assert_int_equal(next_of(s, type, sizeof type), 7);
    lyra_evsub_free(s);
    lyra_bus_free(bus);
}

static void test_filter_and_bad_patterns(void **state)
{
    (void)state;
    struct lyra_bus *bus = bus_after(0);
    struct lyra_evsub *s;
    struct lyra_err err = {0};
    assert_int_equal(lyra_evsub_new(bus, NULL, LYRA_EVSUB_LIVE, "bad pattern!", 0, 0, NULL, NULL, &s, &err),
                     LYRA_EINVAL);
    assert_false(lyra_evsub_patterns_valid("model.*x"));
    assert_false(lyra_evsub_patterns_valid(""));
    assert_false(lyra_evsub_patterns_valid("a,,b"));
    assert_true(lyra_evsub_patterns_valid("model.*,job.progress,*"));
    assert_int_equal(lyra_evsub_new(bus, NULL, LYRA_EVSUB_LIVE, "job.*", 0, 0, NULL, NULL, &s, &err), 0);
    publish_n(bus, "model.loaded", 1);
    publish_n(bus, "job.progress", 1);
    char type[64];
    assert_int_equal(next_of(s, type, sizeof type), 2);
    assert_string_equal(type, "job.progress");
    assert_int_equal(next_of(s, type, sizeof type), 0);
    lyra_evsub_free(s);
    lyra_bus_free(bus);
}

static void test_full_queue_becomes_a_gap_in_place(void **state)
{
    (void)state;
    struct lyra_bus *bus = bus_after(0);
    struct lyra_evsub *s;
    struct lyra_err err = {0};
    assert_int_equal(lyra_evsub_new(bus, NULL, LYRA_EVSUB_LIVE, NULL, 3, 0, NULL, NULL, &s, &err), 0);
    publish_n(bus, "a.b", 2); /* 1, 2: delivered */
    char type[64];
    assert_int_equal(next_of(s, type, sizeof type), 1);
    assert_int_equal(next_of(s, type, sizeof type), 2);
    publish_n(bus, "a.b", 10); /* 3..12 with nobody reading: overflows */
    publish_n(bus, "a.c", 1);  /* 13 */
    char *json;
    uint64_t seq;
    assert_int_equal(lyra_evsub_next(s, &json, &seq), 0);
    json_t *g = json_loads(json, 0, NULL);
    free(json);
    assert_string_equal(json_string_value(json_object_get(g, "type")), "stream.gap");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(g, "data"), "resume_from")), 2);
    json_int_t dropped = json_integer_value(json_object_get(json_object_get(g, "data"), "dropped"));
    json_decref(g);
    /* What follows the gap comes after it, in order; nothing after the gap
     * duplicates what was counted as dropped. */
    uint64_t prev = 2, got = 0, n;
    while ((n = next_of(s, type, sizeof type)) != 0) {
        assert_true(n > prev);
        prev = n;
        got++;
    }
    assert_int_equal(prev, 13);
    assert_int_equal((uint64_t)dropped + got, 11);
    lyra_evsub_free(s);
    lyra_bus_free(bus);
}

static void count_row(uint64_t seq, const char *type, const char *json, void *ud)
{
    (void)seq;
    (void)type;
    (void)json;
    ++*(int *)ud;
}

/* A replay larger than the byte bound stops with a gap; resuming from it
 * gets the rest: every event arrives, and the queue never holds more. */
static void test_large_replay_is_paged_by_gaps(void **state)
{
    (void)state;
    struct lyra_bus *bus = bus_after(0);
    static char pad[1100];
    memset(pad, 'x', 1000);
    pad[1000] = '\0';
    for (int i = 0; i < 50; i++) /* 1..50, about 1.1 KB of text each */
        assert_true(lyra_bus_publish(bus, "a.b", "test", json_pack("{s:s}", "pad", pad)) > 0);
    uint64_t since = 0, got = 0, last = 0;
    char type[64];
    int round = 0;
    for (; round < 20 && last < 50; round++) {
        struct lyra_evsub *s;
        struct lyra_err err = {0};
        assert_int_equal(lyra_evsub_new(bus, NULL, since, NULL, 0, 8192, NULL, NULL, &s, &err), 0);
        uint64_t n;
        bool gap = false;
        while ((n = next_of(s, type, sizeof type)) != 0 || type[0]) {
            if (strcmp(type, "stream.gap") == 0) {
                gap = true;
                assert_int_equal(n, last); /* resume from the last one delivered */
                break;
            }
            assert_int_equal(n, last + 1);
            last = n;
            got++;
        }
        assert_true(gap || last == 50);
        since = last;
        lyra_evsub_free(s);
    }
    assert_int_equal(got, 50);
    assert_int_equal(last, 50);
    assert_true(round >= 6); /* 8 KiB pages of ~1 KiB events: the bound held */
    lyra_bus_free(bus);
}

static void test_log_survives_a_restart_with_retention(void **state)
{
    (void)state;
    char dir[] = "/tmp/lyra-evsub-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/lyra.db", dir);
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_non_null(st);
    struct lyra_bus *bus = bus_after(0);
    struct lyra_evlog *log;
    assert_int_equal(lyra_evlog_new(bus, st, 10, &log, &err), 0);
    publish_n(bus, "model.loaded", 20); /* 1..20; the log keeps 11..20 */
    lyra_evlog_free(log);               /* writes what is pending */
    lyra_bus_free(bus);

    /* "Restart": a new bus numbering after 20, an empty ring. */
    bus = bus_after(20);
    assert_int_equal(lyra_evlog_new(bus, st, 10, &log, &err), 0);
    publish_n(bus, "model.loaded", 1); /* 21, in the ring */
    struct lyra_evsub *s;
    assert_int_equal(lyra_evsub_new(bus, st, 14, NULL, 0, 0, NULL, NULL, &s, &err), 0);
    char type[64];
    for (uint64_t want = 15; want <= 21; want++)
        assert_int_equal(next_of(s, type, sizeof type), want);
    assert_int_equal(next_of(s, type, sizeof type), 0);
    lyra_evsub_free(s);
    lyra_evlog_free(log); /* 21 written: the log now keeps 12..21 */
    log = NULL;
    /* A client behind the retention learns it with a gap first. */
    assert_int_equal(lyra_evsub_new(bus, st, 5, NULL, 0, 0, NULL, NULL, &s, &err), 0);
    assert_int_equal(next_of(s, type, sizeof type), 5);
    assert_string_equal(type, "stream.gap");
    assert_int_equal(next_of(s, type, sizeof type), 12);
    lyra_evsub_free(s);
    uint64_t pruned = 0;
    int rows = 0;
    assert_int_equal(lyra_evlog_replay(st, 0, 100, "model.*", count_row, &rows, &pruned, &err), 10);
    assert_int_equal(rows, 10); /* the newest `keep` */
    assert_int_equal(pruned, 11); /* 1..11 deleted once 21 was written */
    lyra_bus_free(bus);
    lyra_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_then_live_in_order),
        cmocka_unit_test(test_filter_and_bad_patterns),
        cmocka_unit_test(test_full_queue_becomes_a_gap_in_place),
        cmocka_unit_test(test_large_replay_is_paged_by_gaps),
        cmocka_unit_test(test_log_survives_a_restart_with_retention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
