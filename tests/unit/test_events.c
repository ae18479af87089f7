/* test_events.c — the event bus: seq order, patterns, replay, reservations. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "core/events.h"

struct seen {
    uint64_t seqs[64];
    char types[64][64];
    int n;
};

static void record(const struct lyra_event *ev, void *ud)
{
    struct seen *s = ud;
    if (s->n < 64) {
        s->seqs[s->n] = ev->seq;
        snprintf(s->types[s->n], sizeof s->types[0], "%s", ev->type);
        s->n++;
    }
}

static void test_patterns(void **state)
{
    assert_true(lyra_event_type_matches("model.*", "model.loaded"));
    assert_false(lyra_event_type_matches("model.*", "job.queued"));
    assert_true(lyra_event_type_matches("job.*, model.loaded", "model.loaded"));
    assert_false(lyra_event_type_matches("model.load", "model.loaded"));
    assert_true(lyra_event_type_matches("*", "anything"));
    assert_true(lyra_event_type_matches(NULL, "anything"));
}

static void test_publish_subscribe_order(void **state)
{
    struct lyra_bus *bus = lyra_bus_new(8, 41, NULL, NULL);
    struct seen all = {0}, models = {0};
    int a = lyra_bus_subscribe(bus, "*", record, &all);
    int m = lyra_bus_subscribe(bus, "model.*", record, &models);
    assert_true(a > 0 && m > 0 && a != m);
    assert_int_equal(lyra_bus_publish(bus, "system.startup", "server", NULL), 42);
    assert_int_equal(lyra_bus_publish(bus, "model.loaded", "models", json_pack("{s:s}", "name", "tiny")), 43);
    lyra_bus_unsubscribe(bus, m);
    lyra_bus_publish(bus, "model.unloaded", "models", NULL);
    assert_int_equal(all.n, 3);
    assert_int_equal(models.n, 1);
    assert_string_equal(models.types[0], "model.loaded");
    for (int i = 1; i < all.n; i++)
        assert_true(all.seqs[i] == all.seqs[i - 1] + 1);
    lyra_bus_free(bus);
}

static void test_replay_ring(void **state)
{
    struct lyra_bus *bus = lyra_bus_new(4, 0, NULL, NULL);
    for (int i = 0; i < 10; i++)
        lyra_bus_publish(bus, i % 2 ? "job.progress" : "model.loaded", "t", NULL);
    struct seen s = {0};
    assert_int_equal(lyra_bus_replay(bus, 0, NULL, record, &s), 4); /* ring keeps the last 4 */
    assert_int_equal(s.seqs[0], 7);
    assert_int_equal(s.seqs[3], 10);
    struct seen s2 = {0};
    assert_int_equal(lyra_bus_replay(bus, 8, "job.*", record, &s2), 1);
    assert_int_equal(s2.seqs[0], 10);
    lyra_bus_free(bus);
}

static uint64_t reserved;
static int reserve_calls;
static uint64_t fake_reserve(uint64_t through, void *ud)
{
    reserve_calls++;
    reserved = through;
    return through;
}

static void test_seq_reservation(void **state)
{
    /* The bus asks for persistence before using a number beyond the mark,
     * so a restart at `reserved` never reuses a number. */
    reserved = 0;
    reserve_calls = 0;
    struct lyra_bus *bus = lyra_bus_new(4, 100, fake_reserve, NULL);
    uint64_t first = lyra_bus_publish(bus, "a.b", "t", NULL);
    assert_int_equal(first, 101);
    assert_int_equal(reserve_calls, 1);
    assert_true(reserved >= first);
    for (int i = 0; i < 50; i++)
        assert_true(lyra_bus_publish(bus, "a.b", "t", NULL) <= reserved);
    lyra_bus_free(bus);
    /* Restart after a crash: start after the reservation. */
    bus = lyra_bus_new(4, reserved, NULL, NULL);
    assert_true(lyra_bus_publish(bus, "a.b", "t", NULL) > first + 50);
    lyra_bus_free(bus);
}

static void test_replay_and_subscribe_no_gap(void **state)
{
    struct lyra_bus *bus = lyra_bus_new(16, 0, NULL, NULL);
    lyra_bus_publish(bus, "x.a", "t", NULL);
    lyra_bus_publish(bus, "x.b", "t", NULL);
    struct seen s = {0};
    int id = lyra_bus_replay_and_subscribe(bus, 1, "*", record, &s);
    lyra_bus_publish(bus, "x.c", "t", NULL);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.seqs[0], 2);
    assert_int_equal(s.seqs[1], 3);
    lyra_bus_unsubscribe(bus, id);
    lyra_bus_free(bus);
}

struct counter {
    pthread_mutex_t lock;
    uint64_t last;
    int out_of_order;
    int n;
};

static void count(const struct lyra_event *ev, void *ud)
{
    struct counter *c = ud;
    if (ev->seq <= c->last)
        c->out_of_order++;
    c->last = ev->seq;
    c->n++;
}

static void *publisher(void *arg)
{
    for (int i = 0; i < 2000; i++)
        lyra_bus_publish(arg, "load.test", "t", json_pack("{s:i}", "i", i));
    return NULL;
}

static void test_concurrent_publishers(void **state)
{
    struct lyra_bus *bus = lyra_bus_new(64, 0, NULL, NULL);
    struct counter c = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    lyra_bus_subscribe(bus, "*", count, &c);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, publisher, bus);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(c.n, 8000);
    assert_int_equal(c.out_of_order, 0);
    assert_int_equal(lyra_bus_last_seq(bus), 8000);
    lyra_bus_free(bus);
}

static void to_json(const struct lyra_event *ev, void *ud)
{
    *(json_t **)ud = lyra_event_to_json(ev);
}

static void test_event_json(void **state)
{
    struct lyra_bus *bus = lyra_bus_new(4, 0, NULL, NULL);
    lyra_bus_publish(bus, "model.loaded", "models", json_pack("{s:i}", "load_ms", 12));
    json_t *j = NULL;
    lyra_bus_replay(bus, 0, NULL, to_json, &j);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "seq")), 1);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "model.loaded");
    assert_string_equal(json_string_value(json_object_get(j, "source")), "models");
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_int_equal(strlen(ts), 24); /* 2026-11-27T14:00:00.123Z */
    assert_int_equal(ts[23], 'Z');
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "data"), "load_ms")), 12);
    json_decref(j);
    lyra_bus_free(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_publish_subscribe_order),
        cmocka_unit_test(test_replay_ring),
        cmocka_unit_test(test_seq_reservation),
        cmocka_unit_test(test_replay_and_subscribe_no_gap),
        cmocka_unit_test(test_concurrent_publishers),
        cmocka_unit_test(test_event_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
