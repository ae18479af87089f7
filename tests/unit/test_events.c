/* test_events.c — the event bus: seq order, patterns, replay, the ring's
 * byte budget, and sequence reservations (ahead of need, retried after a
 * failure, a bounded wait at exhaustion, the margin, a simulated crash). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
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

/* A bus without persistence. */
static struct lyra_bus *plain_bus(size_t ring_size, uint64_t start_after)
{
    struct lyra_bus_options o = {.ring_size = ring_size, .start_after = start_after};
    return lyra_bus_new(&o);
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
    struct lyra_bus *bus = plain_bus(8, 41);
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
    struct lyra_bus *bus = plain_bus(4, 0);
    for (int i = 0; i < 10; i++)
        lyra_bus_publish(bus, i % 2 ? "job.progress" : "model.loaded", "t", NULL);
    struct seen s = {0};
    uint64_t first = 0;
    assert_int_equal(lyra_bus_replay(bus, 0, NULL, record, &s, &first), 4); /* ring keeps the last 4 */
    assert_int_equal(s.seqs[0], 7);
    assert_int_equal(s.seqs[3], 10);
    assert_int_equal(first, 7); /* 1..6 are gone */
    struct seen s2 = {0};
    assert_int_equal(lyra_bus_replay(bus, 8, "job.*", record, &s2, NULL), 1);
    assert_int_equal(s2.seqs[0], 10);
    lyra_bus_free(bus);
}

/* A fake store for reservations: requests are recorded; `mode` says how
 * they are answered.  `stored` is what a durable store would hold. */
enum fake_mode { FAKE_ASYNC, FAKE_OK, FAKE_FAIL };
struct fake {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    enum fake_mode mode;
    int calls;
    uint64_t last_through; /* the latest request */
    uint64_t stored;       /* the highest value "written" */
};

static void fake_reserve(struct lyra_bus *bus, uint64_t through, void *ud)
{
    struct fake *f = ud;
    pthread_mutex_lock(&f->lock);
    f->calls++;
    f->last_through = through;
    enum fake_mode mode = f->mode;
    if (mode == FAKE_OK && through > f->stored)
        f->stored = through;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (mode != FAKE_ASYNC)
        lyra_bus_reserved(bus, through, mode == FAKE_OK);
}

static void fake_init(struct fake *f, enum fake_mode mode, uint64_t stored)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    f->mode = mode;
    f->stored = stored;
}

static void fake_destroy(struct fake *f)
{
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
}

static struct lyra_bus *reserving_bus(struct fake *f, uint64_t start_after, uint64_t block, int wait_ms,
                                      uint64_t margin)
{
    struct lyra_bus_options o = {.ring_size = 4,
                                 .start_after = start_after,
                                 .reserved_through = start_after + block,
                                 .reserve = fake_reserve,
                                 .reserve_ud = f,
                                 .block = block,
                                 .wait_ms = wait_ms,
                                 .retry_ms = 0,
                                 .margin = margin};
    return lyra_bus_new(&o);
}

static void test_reserves_ahead_of_need(void **state)
{
    /* Block of 10 reserved at start (100..110): the next block is asked for
     * once half is used, without the publisher waiting for the answer. */
    struct fake f;
    fake_init(&f, FAKE_ASYNC, 110);
    struct lyra_bus *bus = reserving_bus(&f, 100, 10, 0, 0);
    for (int i = 1; i <= 4; i++)
        assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 100 + (uint64_t)i);
    assert_int_equal(f.calls, 0);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 105); /* 5 left: ask */
    assert_int_equal(f.calls, 1);
    assert_true(f.last_through >= 115);
    /* One request at a time, however many publish meanwhile. */
    for (int i = 0; i < 4; i++)
        lyra_bus_publish(bus, "a.b", "t", NULL);
    assert_int_equal(f.calls, 1);
    struct lyra_bus_stats st;
    lyra_bus_stats(bus, &st);
    assert_true(st.reserving);
    assert_int_equal(st.reserved_through, 110);
    lyra_bus_reserved(bus, f.last_through, true);
    lyra_bus_stats(bus, &st);
    assert_false(st.reserving);
    assert_int_equal(st.reserved_through, f.last_through);
    assert_int_equal(st.unreserved, 0);
    lyra_bus_free(bus);
    fake_destroy(&f);
}

static void test_failed_reservation_is_retried(void **state)
{
    /* The store fails: no number above the reservation is used while the
     * margin is 0 (events are dropped instead), and every later publish
     * asks again; once the store works, numbering goes on covered. */
    struct fake f;
    fake_init(&f, FAKE_FAIL, 4);
    struct lyra_bus *bus = reserving_bus(&f, 0, 4, 0, 0);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 1);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 2); /* half used: asks, fails */
    assert_true(f.calls >= 1);
    lyra_bus_publish(bus, "a.b", "t", NULL);
    lyra_bus_publish(bus, "a.b", "t", NULL);
    int calls = f.calls;
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 0); /* 5 is not covered */
    assert_true(f.calls > calls);                                 /* ... and it asked again */
    struct lyra_bus_stats st;
    lyra_bus_stats(bus, &st);
    assert_true(st.failing);
    assert_true(st.reservation_failures >= 2);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.last_seq, 4);

    pthread_mutex_lock(&f.lock);
    f.mode = FAKE_OK;
    pthread_mutex_unlock(&f.lock);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 5); /* retried at this publish */
    lyra_bus_stats(bus, &st);
    assert_false(st.failing);
    assert_true(st.reserved_through >= 5);
    assert_true(f.stored >= 5);
    lyra_bus_free(bus);
    fake_destroy(&f);
}

struct publish_arg {
    struct lyra_bus *bus;
    uint64_t seq;
};

static void *publish_one(void *arg)
{
    struct publish_arg *p = arg;
    p->seq = lyra_bus_publish(p->bus, "a.b", "t", NULL);
    return NULL;
}

static void test_exhausted_block_waits_for_reservation(void **state)
{
    /* The block is used up while its successor is still being written: the
     * publisher waits (within wait_ms, here far more than needed) for the
     * write rather than use a number it does not cover. */
    struct fake f;
    fake_init(&f, FAKE_ASYNC, 2);
    struct lyra_bus *bus = reserving_bus(&f, 0, 2, 600000, 1000);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 1); /* asks for more */
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 2);
    assert_int_equal(f.calls, 1);
    struct publish_arg p = {bus, 0};
    pthread_t t;
    pthread_create(&t, NULL, publish_one, &p);
    /* Answer only once the publisher is waiting for it. */
    struct lyra_bus_stats st;
    do {
        sched_yield();
        lyra_bus_stats(bus, &st);
    } while (st.waiting == 0);
    assert_int_equal(st.last_seq, 2); /* it has not gone on without the answer */
    pthread_mutex_lock(&f.lock);
    uint64_t through = f.last_through;
    pthread_mutex_unlock(&f.lock);
    lyra_bus_reserved(bus, through, true);
    pthread_join(t, NULL);
    assert_int_equal(p.seq, 3);
    lyra_bus_stats(bus, &st);
    assert_int_equal(st.unreserved, 0);
    lyra_bus_free(bus);
    fake_destroy(&f);
}

static void test_late_reservation_uses_the_margin(void **state)
{
    /* A reservation that does not come back within wait_ms: publishing goes
     * on above it, at most `margin` numbers, then events are dropped. */
    struct fake f;
    fake_init(&f, FAKE_ASYNC, 2);
    struct lyra_bus *bus = reserving_bus(&f, 0, 2, 1, 3);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 1);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 2);
    for (uint64_t s = 3; s <= 5; s++)
        assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), s);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 0);
    struct lyra_bus_stats st;
    lyra_bus_stats(bus, &st);
    assert_int_equal(st.unreserved, 3);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.last_seq, 5);
    /* The late answer covers what was asked (2 + block); the next request
     * then covers the numbers used above it. */
    lyra_bus_reserved(bus, f.last_through, true);
    assert_int_equal(lyra_bus_publish(bus, "a.b", "t", NULL), 6);
    lyra_bus_free(bus);
    fake_destroy(&f);
}

static void test_numbers_never_repeat_across_a_crash(void **state)
{
    /* A run whose store fails half the time, then "crashes" (no clean end):
     * the next run starts at the durable value + the margin, as server.c
     * does, and every number it hands out is above every number of the
     * crashed run. */
    struct fake f;
    fake_init(&f, FAKE_OK, 10);
    struct lyra_bus *bus = reserving_bus(&f, 0, 10, 0, 50);
    uint64_t max_seen = 0;
    for (int i = 0; i < 400; i++) {
        pthread_mutex_lock(&f.lock);
        f.mode = (i / 20) % 2 ? FAKE_FAIL : FAKE_OK;
        pthread_mutex_unlock(&f.lock);
        uint64_t seq = lyra_bus_publish(bus, "a.b", "t", NULL);
        if (seq) {
            assert_true(seq > max_seen);
            max_seen = seq;
        }
    }
    struct lyra_bus_stats st;
    lyra_bus_stats(bus, &st);
    assert_true(st.unreserved > 0); /* the margin was really used */
    lyra_bus_free(bus);             /* crash */
    uint64_t start_after = f.stored + 50;
    fake_destroy(&f);
    fake_init(&f, FAKE_OK, start_after + 10);
    bus = reserving_bus(&f, start_after, 10, 0, 50);
    assert_true(lyra_bus_publish(bus, "a.b", "t", NULL) > max_seen);
    lyra_bus_free(bus);
    fake_destroy(&f);
}

static void test_ring_byte_budget(void **state)
{
    /* Each event costs its JSON size plus a fixed overhead; the ring keeps
     * only what fits in ring_bytes and says where it starts. */
    struct lyra_bus_options o = {.ring_size = 100, .ring_bytes = 1000};
    struct lyra_bus *bus = lyra_bus_new(&o);
    char pad[201];
    memset(pad, 'x', 200);
    pad[200] = '\0';
    for (int i = 0; i < 10; i++)
        lyra_bus_publish(bus, "x.y", "t", json_pack("{s:s}", "p", pad));
    struct lyra_bus_stats st;
    lyra_bus_stats(bus, &st);
    assert_true(st.ring_bytes <= 1000);
    assert_true(st.ring_count >= 2 && st.ring_count < 10);
    struct seen s = {0};
    uint64_t first = 0;
    size_t n = lyra_bus_replay(bus, 0, NULL, record, &s, &first);
    assert_int_equal(n, st.ring_count);
    assert_int_equal(s.seqs[0], first);  /* the oldest kept is where the ring starts */
    assert_int_equal(s.seqs[n - 1], 10); /* the newest are kept */
    assert_int_equal(first, 10 - st.ring_count + 1);

    /* An event larger than the whole budget reaches subscribers but is not
     * kept; replay then starts after it. */
    struct seen live = {0};
    int id = lyra_bus_subscribe(bus, "*", record, &live);
    char *big = calloc(1, 2001);
    memset(big, 'y', 2000);
    assert_int_equal(lyra_bus_publish(bus, "x.big", "t", json_pack("{s:s}", "p", big)), 11);
    free(big);
    assert_int_equal(live.n, 1);
    struct seen s2 = {0};
    lyra_bus_replay(bus, 0, NULL, record, &s2, &first);
    assert_int_equal(first, 12);
    assert_int_equal(s2.n, (int)st.ring_count); /* the earlier ones stay */
    assert_int_equal(s2.seqs[s2.n - 1], 10);
    lyra_bus_unsubscribe(bus, id);
    lyra_bus_free(bus);
}

static void test_replay_and_subscribe_no_gap(void **state)
{
    struct lyra_bus *bus = plain_bus(16, 0);
    lyra_bus_publish(bus, "x.a", "t", NULL);
    lyra_bus_publish(bus, "x.b", "t", NULL);
    struct seen s = {0};
    int id = lyra_bus_replay_and_subscribe(bus, 1, "*", record, &s, NULL);
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
    struct lyra_bus *bus = plain_bus(64, 0);
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
    struct lyra_bus *bus = plain_bus(4, 0);
    lyra_bus_publish(bus, "model.loaded", "models", json_pack("{s:i}", "load_ms", 12));
    json_t *j = NULL;
    lyra_bus_replay(bus, 0, NULL, to_json, &j, NULL);
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
        cmocka_unit_test(test_reserves_ahead_of_need),
        cmocka_unit_test(test_failed_reservation_is_retried),
        cmocka_unit_test(test_exhausted_block_waits_for_reservation),
        cmocka_unit_test(test_late_reservation_uses_the_margin),
        cmocka_unit_test(test_numbers_never_repeat_across_a_crash),
        cmocka_unit_test(test_ring_byte_budget),
        cmocka_unit_test(test_replay_and_subscribe_no_gap),
        cmocka_unit_test(test_concurrent_publishers),
        cmocka_unit_test(test_event_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
