/* test_loop.c — the event loop: posted tasks in order, synchronous calls,
 * timers, fd watches (including one removed while its event is pending). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/util.h"

struct rec {
    struct lyra_loop *loop;
    int order[16];
    atomic_int n;
    bool on_thread;
};

static void note(struct rec *r, int v)
{
    int i = atomic_fetch_add(&r->n, 1);
    if (i < 16)
        r->order[i] = v;
}

static void task1(void *ud) { note(ud, 1); }
static void task2(void *ud) { note(ud, 2); }
static void task3(void *ud)
{
    struct rec *r = ud;
    r->on_thread = lyra_loop_on_thread(r->loop);
    note(r, 3);
}

static void test_post_and_call(void **state)
{
    struct lyra_loop *l;
    assert_int_equal(lyra_loop_new("test", &l, NULL), 0);
    struct rec r = {.loop = l};
    assert_int_equal(lyra_loop_post(l, task1, &r), 0);
    assert_int_equal(lyra_loop_post(l, task2, &r), 0);
    /* A call runs after what was posted before it, and returns after it ran. */
    assert_int_equal(lyra_loop_call(l, task3, &r), 0);
    assert_int_equal(atomic_load(&r.n), 3);
    assert_int_equal(r.order[0], 1);
    assert_int_equal(r.order[1], 2);
    assert_int_equal(r.order[2], 3);
    assert_true(r.on_thread);
    assert_false(lyra_loop_on_thread(l));
    /* Tasks posted before free still run. */
    assert_int_equal(lyra_loop_post(l, task1, &r), 0);
    lyra_loop_free(l);
    assert_int_equal(atomic_load(&r.n), 4);
}

struct timers {
    struct lyra_loop *loop;
    struct rec rec;
    struct lyra_timer *cancelled;
    int64_t t0, fired_at;
};

static void t_first(void *ud) { note(&((struct timers *)ud)->rec, 10); }
static void t_never(void *ud) { note(&((struct timers *)ud)->rec, 99); }
static void t_last(void *ud)
{
    struct timers *t = ud;
    t->fired_at = lyra_now_ms();
    note(&t->rec, 30);
}

static void arm(void *ud)
{
    struct timers *t = ud;
    t->t0 = lyra_now_ms();
    lyra_loop_timer(t->loop, 40, t_last, t);
    lyra_loop_timer(t->loop, 5, t_first, t);
    t->cancelled = lyra_loop_timer(t->loop, 20, t_never, t);
    lyra_loop_timer_cancel(t->loop, t->cancelled);
}

static void test_timers(void **state)
{
    struct timers t = {0};
    assert_int_equal(lyra_loop_new("test", &t.loop, NULL), 0);
    lyra_loop_call(t.loop, arm, &t);
    while (atomic_load(&t.rec.n) < 2)
        usleep(1000);
    lyra_loop_free(t.loop);
    assert_int_equal(atomic_load(&t.rec.n), 2);
    assert_int_equal(t.rec.order[0], 10);
    assert_int_equal(t.rec.order[1], 30);
    assert_true(t.fired_at - t.t0 >= 40);
}

struct pipes {
    struct lyra_loop *loop;
    int a[2], b[2];
    atomic_int a_calls, b_calls;
};

/* Both pipes are readable in the same epoll batch; whichever callback runs
 * first removes the other's watch, whose event must then be dropped. */
static void on_a(int fd, uint32_t ev, void *ud)
{
    struct pipes *p = ud;
    atomic_fetch_add(&p->a_calls, 1);
    lyra_loop_unwatch(p->loop, p->a[0]);
    lyra_loop_unwatch(p->loop, p->b[0]);
}

static void on_b(int fd, uint32_t ev, void *ud)
{
    struct pipes *p = ud;
    atomic_fetch_add(&p->b_calls, 1);
    lyra_loop_unwatch(p->loop, p->a[0]);
    lyra_loop_unwatch(p->loop, p->b[0]);
}

static void watch_both(void *ud)
{
    struct pipes *p = ud;
    assert_int_equal(lyra_loop_watch(p->loop, p->a[0], EPOLLIN, on_a, p), 0);
    assert_int_equal(lyra_loop_watch(p->loop, p->b[0], EPOLLIN, on_b, p), 0);
    assert_int_equal(write(p->a[1], "x", 1), 1);
    assert_int_equal(write(p->b[1], "x", 1), 1);
}

static void noop(void *ud) {}

static void test_unwatch_drops_pending_event(void **state)
{
    struct pipes p = {0};
    assert_int_equal(pipe(p.a), 0);
    assert_int_equal(pipe(p.b), 0);
    assert_int_equal(lyra_loop_new("test", &p.loop, NULL), 0);
    lyra_loop_call(p.loop, watch_both, &p);
    while (atomic_load(&p.a_calls) + atomic_load(&p.b_calls) == 0)
        usleep(1000);
    lyra_loop_call(p.loop, noop, NULL); /* one more iteration */
    lyra_loop_free(p.loop);
    assert_int_equal(atomic_load(&p.a_calls) + atomic_load(&p.b_calls), 1);
    for (int i = 0; i < 2; i++) {
        close(p.a[i]);
        close(p.b[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_and_call),
        cmocka_unit_test(test_timers),
        cmocka_unit_test(test_unwatch_drops_pending_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
