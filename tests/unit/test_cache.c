/* test_cache.c — the cache policy: hard limits on count and memory, LRU
 * victims among idle unpinned models only, waiting instead of over-
 * committing, and never for a model that cannot fit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "models/cache.h"

#define MB (1024ull * 1024)

static struct lyra_cache_entry idle(uint64_t mb, int64_t used)
{
    return (struct lyra_cache_entry){.bytes = mb * MB, .last_used_us = used};
}

static void test_fits_when_under_both_limits(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 3, .budget_bytes = 1000 * MB};
    struct lyra_cache_entry e[] = {idle(100, 1), idle(100, 2)};
    size_t v[2];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 2, 500 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_FITS);
    assert_int_equal(p.held_bytes, 200 * MB);
    assert_int_equal(p.resident, 2);
    lyra_cache_plan(&lim, NULL, 0, 1000 * MB, NULL, &p); /* exactly the budget fits */
    assert_int_equal(p.verdict, LYRA_CACHE_FITS);
}

static void test_count_evicts_lru_and_may_start_at_once(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 2, .budget_bytes = 0};
    struct lyra_cache_entry e[] = {idle(100, 5), idle(100, 3)};
    size_t v[2];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 2, 100 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_EVICT);
    assert_int_equal(p.reason, LYRA_EVICT_LRU);
    assert_int_equal(p.n_victims, 1);
    assert_int_equal(v[0], 1); /* used at 3: the least recently */
    assert_true(p.start_now);  /* no budget: the victim may drain meanwhile */
}

static void test_budget_waits_for_the_victim_to_exit(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 8, .budget_bytes = 300 * MB};
    struct lyra_cache_entry e[] = {idle(150, 1), idle(100, 2)};
    size_t v[2];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 2, 150 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_EVICT);
    assert_int_equal(p.reason, LYRA_EVICT_BUDGET);
    assert_int_equal(p.n_victims, 1);
    assert_int_equal(v[0], 0);
    assert_false(p.start_now);
    /* A victim that is stopping still holds its memory: wait, evict no more. */
    e[0].stopping = true;
    lyra_cache_plan(&lim, e, 2, 150 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_WAIT);
    assert_int_equal(p.resident, 1);
    /* Gone: fits. */
    lyra_cache_plan(&lim, &e[1], 1, 150 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_FITS);
}

static void test_several_victims_lru_first(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 8, .budget_bytes = 400 * MB};
    struct lyra_cache_entry e[] = {idle(100, 4), idle(100, 1), idle(100, 3), idle(100, 2)};
    size_t v[4];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 4, 250 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_EVICT);
    assert_int_equal(p.n_victims, 3);
    assert_int_equal(v[0], 1);
    assert_int_equal(v[1], 3);
    assert_int_equal(v[2], 2);
}

static void test_pinned_busy_loading_are_never_victims(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 3, .budget_bytes = 0};
    struct lyra_cache_entry e[] = {idle(100, 1), idle(100, 2), idle(100, 3)};
    e[0].pinned = true;
    e[1].busy = true;
    e[2].loading = true;
    size_t v[3];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 3, 100 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_WAIT);
    assert_int_equal(p.n_victims, 0);
    assert_int_equal(lyra_cache_lru_idle(e, 3), -1);
    assert_int_equal(lyra_cache_largest_busy(e, 3), 1);
    e[2].loading = false;
    lyra_cache_plan(&lim, e, 3, 100 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_EVICT);
    assert_int_equal(v[0], 2);
}

static void test_partial_room_evicts_nothing(void **state)
{
    (void)state;
    /* Only 100 MB idle, 200 MB needed beyond the budget: stopping the idle
     * one would unload a model and still not make room. */
    struct lyra_cache_limits lim = {.max_loaded = 8, .budget_bytes = 400 * MB};
    struct lyra_cache_entry e[] = {idle(100, 1), idle(200, 2)};
    e[1].busy = true;
    size_t v[2];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, e, 2, 300 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_WAIT);
}

static void test_never_when_pins_and_need_exceed_the_budget(void **state)
{
    (void)state;
    struct lyra_cache_limits lim = {.max_loaded = 8, .budget_bytes = 400 * MB};
    size_t v[1];
    struct lyra_cache_plan p;
    lyra_cache_plan(&lim, NULL, 0, 401 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_NEVER);
    struct lyra_cache_entry e[] = {idle(300, 1)};
    e[0].pinned = true;
    lyra_cache_plan(&lim, e, 1, 150 * MB, v, &p);
    assert_int_equal(p.verdict, LYRA_CACHE_NEVER);
    assert_int_equal(p.pinned_bytes, 300 * MB);
}

static void test_reason_names(void **state)
{
    (void)state;
    assert_string_equal(lyra_evict_reason_name(LYRA_EVICT_LRU), "lru");
    assert_string_equal(lyra_evict_reason_name(LYRA_EVICT_BUDGET), "budget");
    assert_string_equal(lyra_evict_reason_name(LYRA_EVICT_IDLE), "idle");
    assert_string_equal(lyra_evict_reason_name(LYRA_EVICT_WATCHDOG), "watchdog");
    assert_string_equal(lyra_evict_reason_name(LYRA_EVICT_ADMIN), "admin");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_when_under_both_limits),
        cmocka_unit_test(test_count_evicts_lru_and_may_start_at_once),
        cmocka_unit_test(test_budget_waits_for_the_victim_to_exit),
        cmocka_unit_test(test_several_victims_lru_first),
        cmocka_unit_test(test_pinned_busy_loading_are_never_victims),
        cmocka_unit_test(test_partial_room_evicts_nothing),
        cmocka_unit_test(test_never_when_pins_and_need_exceed_the_budget),
        cmocka_unit_test(test_reason_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
