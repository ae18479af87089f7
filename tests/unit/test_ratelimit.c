/* test_ratelimit.c — the failed-authentication back-off on a fake clock:
 * the threshold, the window, doubling blocks and their cap, expiry of idle
 * addresses, a success clearing the count but not a block, addresses kept
 * apart, and the table's bound under a flood of addresses. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "auth/ratelimit.h"

static int64_t fake_now;

static int64_t clock_fn(void)
{
    return fake_now;
}

static struct lyra_ratelimit *make(int threshold, size_t max_entries)
{
    fake_now = 1000000;
    struct lyra_ratelimit_options o = {.threshold = threshold,
                                       .window_ms = 60000,
                                       .base_block_ms = 1000,
                                       .max_block_ms = 8000,
                                       .max_entries = max_entries,
                                       .now_ms = clock_fn};
    struct lyra_ratelimit *rl = lyra_ratelimit_new(&o);
    assert_non_null(rl);
    return rl;
}

static void test_threshold(void **state)
{
    struct lyra_ratelimit *rl = make(3, 0);
    const char *a = "10.0.0.1";
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 1000); /* the third */
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 1000);
    /* Another address is not affected. */
    assert_int_equal(lyra_ratelimit_blocked(rl, "10.0.0.2"), 0);
    fake_now += 400;
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 600);
    /* A failure reported during the block changes nothing. */
    assert_int_equal(lyra_ratelimit_fail(rl, a), 600);
    fake_now += 600;
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
    lyra_ratelimit_free(rl);
}

static void test_window(void **state)
{
    struct lyra_ratelimit *rl = make(3, 0);
    const char *a = "10.0.0.1";
    /* Failures spread over more than the window never block. */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
        fake_now += 30001;
    }
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
    lyra_ratelimit_free(rl);
}

static void test_doubling_and_cap(void **state)
{
    struct lyra_ratelimit *rl = make(2, 0);
    const char *a = "::1";
    lyra_ratelimit_fail(rl, a);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 1000);
    const int64_t expect[] = {2000, 4000, 8000, 8000, 8000};
    for (size_t i = 0; i < sizeof expect / sizeof *expect; i++) {
        fake_now += lyra_ratelimit_blocked(rl, a); /* wait the block out */
        assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
        /* One failure after a block blocks again, twice as long. */
        assert_int_equal(lyra_ratelimit_fail(rl, a), expect[i]);
        assert_int_equal(lyra_ratelimit_blocked(rl, a), expect[i]);
    }
    lyra_ratelimit_free(rl);
}

static void test_expiry(void **state)
{
    struct lyra_ratelimit *rl = make(2, 0);
    const char *a = "10.0.0.1";
    lyra_ratelimit_fail(rl, a);
    lyra_ratelimit_fail(rl, a);
    fake_now += 1000;
    assert_int_equal(lyra_ratelimit_fail(rl, a), 2000); /* escalated */
    /* Idle for max_block + window: forgotten, so the next block starts at
     * the base again and one failure no longer blocks. */
    fake_now += 8000 + 60000 + 1;
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 1000);
    lyra_ratelimit_free(rl);
}

static void test_success(void **state)
{
    struct lyra_ratelimit *rl = make(3, 0);
    const char *a = "10.0.0.1";
    /* A success clears the count. */
    lyra_ratelimit_fail(rl, a);
    lyra_ratelimit_fail(rl, a);
    lyra_ratelimit_ok(rl, a);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 1000);
    /* ... but not a block in force. */
    fake_now += 100;
    lyra_ratelimit_ok(rl, a);
    assert_int_equal(lyra_ratelimit_blocked(rl, a), 900);
    /* After it, the count starts again from zero. */
    fake_now += 900;
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 0);
    assert_int_equal(lyra_ratelimit_fail(rl, a), 1000);
    lyra_ratelimit_free(rl);
}

static void test_table_bound(void **state)
{
    struct lyra_ratelimit *rl = make(1, 100);
    /* The first address is blocked, then 100 others flood the table: the
     * oldest (the first) is evicted, the newest are all still held. */
    assert_int_equal(lyra_ratelimit_fail(rl, "first"), 1000);
    char addr[32];
    for (int i = 0; i < 100; i++) {
        snprintf(addr, sizeof addr, "10.1.%d.%d", i / 256, i % 256);
        assert_int_equal(lyra_ratelimit_fail(rl, addr), 1000);
    }
    assert_int_equal(lyra_ratelimit_blocked(rl, "first"), 0);
    for (int i = 0; i < 100; i++) {
        snprintf(addr, sizeof addr, "10.1.%d.%d", i / 256, i % 256);
        assert_int_equal(lyra_ratelimit_blocked(rl, addr), 1000);
    }
    /* A long flood stays bounded and keeps working. */
    for (int i = 0; i < 50000; i++) {
        snprintf(addr, sizeof addr, "10.2.%d.%d", i / 256, i % 256);
        lyra_ratelimit_fail(rl, addr);
    }
    assert_int_equal(lyra_ratelimit_blocked(rl, "10.2.195.79"), 1000); /* the last one */
    assert_int_equal(lyra_ratelimit_blocked(rl, "10.2.0.0"), 0);      /* long evicted */
    /* Over-long text is cut, not refused. */
    char longer[200];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    assert_int_equal(lyra_ratelimit_fail(rl, longer), 1000);
    assert_int_equal(lyra_ratelimit_blocked(rl, longer), 1000);
    lyra_ratelimit_free(rl);
}

static void test_defaults(void **state)
{
    struct lyra_ratelimit *rl = lyra_ratelimit_new(NULL);
    assert_non_null(rl);
    for (int i = 0; i < 9; i++)
        assert_int_equal(lyra_ratelimit_fail(rl, "x"), 0);
    int64_t b = lyra_ratelimit_fail(rl, "x"); /* the tenth, on the real clock */
    assert_true(b > 0 && b <= 1000);
    lyra_ratelimit_free(rl);
    lyra_ratelimit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threshold),  cmocka_unit_test(test_window),     cmocka_unit_test(test_doubling_and_cap),
        cmocka_unit_test(test_expiry),     cmocka_unit_test(test_success),    cmocka_unit_test(test_table_bound),
        cmocka_unit_test(test_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
