/* test_logprobs.c — worker/logprobs: log-softmax and top-N of a logits row,
 * and the entry's JSON. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "worker/logprobs.h"

static void test_log_softmax(void **state)
{
    float logits[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    struct lyra_logprob e;
    lyra_logprob_compute(logits, 5, 2, 3, &e);
    double lse = log(exp(1.0) + exp(3.0) + exp(2.0) + exp(3.0) + exp(-1.0));
    assert_true(e.has_lp);
    assert_float_equal(e.lp, 2.0 - lse, 1e-6);
    assert_int_equal(e.n_top, 3);
    /* ties: lower id first */
    assert_int_equal(e.top[0], 1);
    assert_int_equal(e.top[1], 3);
    assert_int_equal(e.top[2], 2);
    assert_float_equal(e.top_lp[0], 3.0 - lse, 1e-6);
    assert_float_equal(e.top_lp[2], e.lp, 1e-7);
    double sum = 0;
    for (int i = 0; i < 5; i++) {
        lyra_logprob_compute(logits, 5, i, 0, &e);
        assert_int_equal(e.n_top, 0);
        sum += exp(e.lp);
    }
    assert_float_equal(sum, 1.0, 1e-6);
}

static void test_top_clamped(void **state)
{
    float logits[40];
    for (int i = 0; i < 40; i++)
        logits[i] = (float)((i * 7) % 40); /* a permutation of 0..39 */
    struct lyra_logprob e;
    lyra_logprob_compute(logits, 40, 0, 99, &e);
    assert_int_equal(e.n_top, LYRA_MAX_TOP_LOGPROBS);
    for (int k = 1; k < e.n_top; k++)
        assert_true(e.top_lp[k - 1] > e.top_lp[k]);
    assert_float_equal(logits[e.top[0]], 39.0f, 0);
    lyra_logprob_compute(logits, 3, 0, 10, &e);
    assert_int_equal(e.n_top, 3);
}

static int piece(int32_t tok, bool own, char *buf, int cap, void *ud)
{
    if (tok == 7)
        return 0;
    const char *s = own ? " Hi\xc3" : "\"x";
    int n = (int)strlen(s);
    memcpy(buf, s, (size_t)n);
    return n;
}

static void test_json(void **state)
{
    float logits[8] = {0, 0, 0, 0, 0, 0, 0, 50.0f};
    struct lyra_logprob e;
    lyra_logprob_compute(logits, 8, 1, 2, &e);
    char buf[512], scratch[16];
    assert_true(lyra_logprob_max_json(2, 4) < sizeof buf);
    size_t n = lyra_logprob_write(buf, sizeof buf, &e, piece, NULL, scratch, sizeof scratch);
    assert_int_equal(n, strlen(buf));
    json_error_t jerr;
    json_t *j = json_loads(buf, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "h")), "204869c3");
    assert_true(json_number_value(json_object_get(j, "lp")) < -49.0);
    json_t *top = json_object_get(j, "top");
    assert_int_equal(json_array_size(top), 2);
    assert_string_equal(json_string_value(json_array_get(json_array_get(top, 0), 0)), "");
    assert_string_equal(json_string_value(json_array_get(json_array_get(top, 1), 0)), "2278");
    json_decref(j);

    lyra_logprob_none(3, &e);
    lyra_logprob_write(buf, sizeof buf, &e, piece, NULL, scratch, sizeof scratch);
    j = json_loads(buf, 0, &jerr);
    assert_non_null(j);
    assert_true(json_is_null(json_object_get(j, "lp")));
    json_decref(j);
}

static void test_fmt_floor(void **state)
{
    char b[32];
    lyra_logprob_fmt(b, sizeof b, -INFINITY);
    assert_string_equal(b, "-9999");
    lyra_logprob_fmt(b, sizeof b, NAN);
    assert_string_equal(b, "-9999");
    lyra_logprob_fmt(b, sizeof b, 1e-8f);
    assert_string_equal(b, "0");
    lyra_logprob_fmt(b, sizeof b, -0.5f);
    assert_string_equal(b, "-0.5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_softmax),
        cmocka_unit_test(test_top_clamped),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_fmt_floor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
