/* it_review_cache.c — reproductions from the hostile review of issue 7
 * (the model cache).  Each test states what a user or an operator would
 * expect from the admin API of the cache; on the reviewed code each fails:
 *
 *  - GET /models?state=<typo> answered 200 with an empty list, as if no
 *    model were in that state;
 *  - POST /models/{name}/unload?force=yes was taken for "not forced" (a
 *    pinned model answered 409 as if the flag were absent);
 *  - POST /models/{name}/pin of an invalid (truncated) file answered 200
 *    "pinned": true and stored the pin, where /load answers 422
 *    model_invalid;
 *  - /unpin of a model without a worker answered "state": null, where
 *    GET /models says "available". */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cache_common.h"

static json_t *post(const char *path, int *st)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", path, NULL, NULL, &r), 0);
    *st = r.status;
    json_t *j = it_json(&r);
    it_response_free(&r);
    return j;
}

static void test_admin_input(void **state)
{
    (void)state;
    const char *const copies[] = {"a", NULL};
    make_home(copies);
    /* A truncated copy: listed as invalid by the registry. */
    assert_int_equal(it_install_model(models, "tiny.gguf", "broken.gguf", 3000000), 0);
    start("models:\n  max_loaded: 2\n", NULL);

    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/models?state=lodaed", NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    assert_int_equal(r.status, 400);
    assert_string_equal(it_error_code(j), "invalid_parameter");
    json_decref(j);
    it_response_free(&r);
    j = it_get_json(srv.port, "/models?state=invalid", 200);
    assert_int_equal(json_array_size(json_object_get(j, "models")), 1);
    json_decref(j);

    int st;
    json_decref(post("/models/a/pin", &st));
    assert_int_equal(st, 200);
    j = post("/models/a/unload?force=yes", &st);
    assert_int_equal(st, 400);
    assert_string_equal(it_error_code(j), "invalid_parameter");
    json_decref(j);
    json_decref(post("/models/a/unload?force=1", &st));
    assert_int_equal(st, 200);
    j = post("/models/a/unpin", &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(j, "state")) ?: "(null)", "available");
    json_decref(j);

    j = post("/models/broken/pin", &st);
    assert_int_equal(st, 422);
    assert_string_equal(it_error_code(j), "model_invalid");
    json_decref(j);
    json_t *m = it_get_json(srv.port, "/models/broken", 200);
    assert_false(json_is_true(json_object_get(m, "pinned")));
    json_decref(m);
    stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
