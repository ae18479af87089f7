/* test_ollama.c — the Ollama API's pure parsers (api/ollama.h): keep_alive
 * durations, options mapped to the worker's params and checked with its
 * rules, format, timestamps and model names. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "api/ollama.h"

static int keep(const char *json, int *s)
{
    json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);
    struct lyra_err err = {0};
    int rc = lyra_ollama_keep_alive(v, s, &err);
    json_decref(v);
    return rc;
}

static void test_keep_alive(void **state)
{
    int s;
    assert_int_equal(lyra_ollama_keep_alive(NULL, &s, NULL), 0);
    assert_int_equal(s, LYRA_OLLAMA_KEEP_DEFAULT);
    struct {
        const char *in;
        int want;
    } ok[] = {{"0", 0},         {"\"0\"", 0},     {"300", 300},      {"\"300\"", 300}, {"\"5m\"", 300},
              {"\"1h\"", 3600}, {"\"30s\"", 30},  {"\"1h30m\"", 5400}, {"\"500ms\"", 1}, {"-1", -1},
              {"\"-1\"", -1},   {"\"-5m\"", -1},  {"2.5", 3},        {"null", LYRA_OLLAMA_KEEP_DEFAULT},
              {"\"1m30s\"", 90}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        assert_int_equal(keep(ok[i].in, &s), 0);
        if (s != ok[i].want)
            fail_msg("%s: got %d, want %d", ok[i].in, s, ok[i].want);
    }
    const char *badv[] = {"\"5 minutes\"", "\"m\"", "\"5x\"", "true", "[1]", "\"\"", "\"1.2.3s\""};
    for (size_t i = 0; i < sizeof badv / sizeof *badv; i++)
        if (keep(badv[i], &s) != LYRA_EINVAL)
            fail_msg("%s was accepted", badv[i]);
}

static int opts(const char *json, json_t **params, struct lyra_err *err)
{
    json_t *o = json_loads(json, 0, NULL);
    *params = json_object();
    int rc = lyra_ollama_options(o, *params, err);
    json_decref(o);
    return rc;
}

static void test_options(void **state)
{
    json_t *p;
    struct lyra_err err = {0};
    assert_int_equal(opts("{\"num_predict\":10,\"temperature\":0.5,\"top_k\":40,\"top_p\":0.9,\"min_p\":0.1,"
                          "\"repeat_penalty\":1.1,\"seed\":42,\"stop\":[\"\\n\"],\"num_ctx\":2048,"
                          "\"num_gpu\":99,\"mirostat\":0,\"whatever\":1}",
                          &p, &err),
                     0);
    assert_int_equal(json_integer_value(json_object_get(p, "max_tokens")), 10);
    assert_int_equal(json_integer_value(json_object_get(p, "top_k")), 40);
    assert_int_equal(json_integer_value(json_object_get(p, "seed")), 42);
    assert_true(json_is_array(json_object_get(p, "stop")));
    assert_null(json_object_get(p, "num_ctx")); /* the model's configuration, not a param */
    assert_null(json_object_get(p, "num_gpu"));
    json_decref(p);

    assert_int_equal(opts("{\"num_predict\":-1}", &p, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(p, "max_tokens")), -1);
    json_decref(p);
    assert_int_equal(opts("{\"num_predict\":-2}", &p, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(p, "max_tokens")), -1);
    json_decref(p);
    assert_int_equal(opts("{\"top_k\":20.0}", &p, &err), 0); /* JavaScript's 20 */
    assert_true(json_is_integer(json_object_get(p, "top_k")));
    json_decref(p);

    struct {
        const char *in, *msg;
    } badv[] = {
        {"{\"temperature\":\"hot\"}", "options.temperature: must be a number"},
        {"{\"num_predict\":\"ten\"}", "options.num_predict: must be an integer"},
        {"{\"num_predict\":0}", "options.num_predict: must be positive, or -1 (no limit)"},
        {"{\"num_ctx\":0}", "options.num_ctx: must be positive"},
        {"{\"seed\":\"x\"}", "options.seed: must be an integer"},
        {"{\"top_p\":7}", NULL},
        {"{\"stop\":[1]}", NULL},
    };
    for (size_t i = 0; i < sizeof badv / sizeof *badv; i++) {
        if (opts(badv[i].in, &p, &err) != LYRA_EINVAL)
            fail_msg("%s was accepted", badv[i].in);
        if (badv[i].msg)
            assert_string_equal(err.msg, badv[i].msg);
        else
            assert_true(strncmp(err.msg, "options.", 8) == 0);
        json_decref(p);
    }
    p = json_object();
    json_t *s = json_string("x");
    assert_int_equal(lyra_ollama_options(s, p, &err), LYRA_EINVAL);
    json_decref(s);
    json_decref(p);
}

static void test_format(void **state)
{
    struct lyra_err err = {0};
    json_t *p = json_object(), *f;
    assert_int_equal(lyra_ollama_format(NULL, p, &err), 0);
    assert_null(json_object_get(p, "json_mode"));
    assert_int_equal(lyra_ollama_format(f = json_string(""), p, &err), 0);
    json_decref(f);
    assert_null(json_object_get(p, "json_mode"));
    assert_int_equal(lyra_ollama_format(f = json_string("json"), p, &err), 0);
    json_decref(f);
    assert_true(json_is_true(json_object_get(p, "json_mode")));
    json_object_clear(p);
    assert_int_equal(lyra_ollama_format(f = json_pack("{s:s}", "type", "object"), p, &err), 0);
    json_decref(f);
    assert_true(json_is_true(json_object_get(p, "json_mode")));
    assert_int_equal(lyra_ollama_format(f = json_string("yaml"), p, &err), LYRA_EINVAL);
    json_decref(f);
    assert_int_equal(lyra_ollama_format(f = json_integer(1), p, &err), LYRA_EINVAL);
    json_decref(f);
    json_decref(p);
}

static void test_timestamp_and_names(void **state)
{
    char ts[40], name[64];
    lyra_ollama_timestamp(1700000000123456789LL, ts, sizeof ts);
    assert_string_equal(ts, "2023-11-14T22:13:20.123456789Z");
    lyra_ollama_timestamp(0, ts, sizeof ts);
    assert_string_equal(ts, "1970-01-01T00:00:00.000000000Z");
    assert_string_equal(lyra_ollama_model_name("tiny:latest", name, sizeof name), "tiny");
    assert_string_equal(lyra_ollama_model_name("qwen:7b", name, sizeof name), "qwen:7b");
    assert_string_equal(lyra_ollama_model_name(":latest", name, sizeof name), ":latest");
    assert_string_equal(lyra_ollama_model_name("tiny", name, sizeof name), "tiny");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_timestamp_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
