/* it_review10.c — failing tests from the hostile review of issue 10 (the
 * Ollama API on the wire, behind authentication):
 *  - keep_alive "nan" / "inf" are not durations (Go's time.ParseDuration
 *    refuses them); "nan" reached (int)ceil(NaN), undefined behaviour that
 *    kept the model loaded for ever;
 *  - a failed /api/pull with "stream": false answers an error status, as
 *    Ollama does (the official client otherwise returns {"error":…} as a
 *    success);
 *  - 401 and 403 on the /api/ routes come in Ollama's shape {"error": "…"} (the
 *    official client shows "[object Object]" for Lyra's nested object). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "harness.h"

#define ADMIN "lyra_review10review10review10review10review10abc"

static struct it_server srv;
static char home[64];

static int setup(void **state)
{
    (void)state;
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", "LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN,
                                      NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    (void)state;
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return 0;
}

static void post_admin(const char *path, const char *body, struct it_response *r)
{
    assert_int_equal(it_http(srv.port, "POST", path,
                             "Authorization: Bearer " ADMIN "\r\nContent-Type: application/json\r\n", body, r),
                     0);
}

static void keep_alive_nan_is_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"\"nan\"", "\"NaN\"", "\"inf\"", "\"-inf\""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"model\":\"tiny\",\"prompt\":\"hi\",\"stream\":false,\"keep_alive\":%s,"
                 "\"options\":{\"num_predict\":1}}",
                 bad[i]);
        struct it_response r;
        post_admin("/api/generate", body, &r);
        if (r.status != 400)
            fail_msg("keep_alive %s: expected 400, got %d: %.200s", bad[i], r.status, r.body);
        it_response_free(&r);
    }
}

static void failed_pull_without_stream_is_an_error_status(void **state)
{
    (void)state;
    struct it_response r;
    post_admin("/api/pull", "{\"model\":\"http://127.0.0.1:1/x.gguf\",\"stream\":false}", &r);
    if (r.status < 400)
        fail_msg("a failed pull with stream:false answered %d: %.200s", r.status, r.body);
    it_response_free(&r);
}

static void auth_errors_in_ollama_shape(void **state)
{
    (void)state;
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/api/tags", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    json_t *j = it_json(&r);
    assert_non_null(j);
    if (!json_is_string(json_object_get(j, "error")))
        fail_msg("/api/tags 401 is not Ollama's {\"error\": string}: %s", r.body);
    json_decref(j);
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keep_alive_nan_is_refused),
        cmocka_unit_test(failed_pull_without_stream_is_an_error_status),
        cmocka_unit_test(auth_errors_in_ollama_shape),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
