/* it_keepalive.c — models.keep_alive_s: an idle model's worker is unloaded
 * (model.unloaded, reason "idle"), a pinned one stays, and the next request
 * loads the unloaded model again. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "harness.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void complete(int port, const char *model)
{
    char body[160];
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"hi\",\"max_tokens\":2}", model);
    struct it_response r;
    assert_int_equal(it_http(port, "POST", "/v1/completions", "Content-Type: application/json\r\n", body, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
}

static const char *state_of(json_t *status, const char *name)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(status, "models"), i, m) if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0)
        return json_string_value(json_object_get(m, "state"));
    return NULL;
}

static void test_idle_model_unloads(void **state)
{
    char home[64], models[128], cfg[160];
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    snprintf(cfg, sizeof cfg, "%s/lyra.yaml", home);
    it_write_file(cfg, "schema_version: 2\nmodels:\n  keep_alive_s: 1\n  entries:\n"
                       "    - name: stay\n      path: tiny.gguf\n      pinned: true\n");
    struct it_server s;
    assert_int_equal(it_server_start(&s, home, NULL, NULL), 0);
    /* "stay" first: under a sanitizer its load can outlast tiny's keep-alive. */
    complete(s.port, "stay");
    complete(s.port, "tiny");

    /* Wait (up to 6 s) for the worker to be gone: model.unloaded. */
    json_t *e = NULL, *ev = NULL;
    for (int i = 0; i < 60 && !e; i++) {
        sleep_ms(100);
        json_decref(ev);
        ev = it_get_json(s.port, "/events/recent?types=model.unloaded", 200);
        e = json_array_get(json_object_get(ev, "events"), 0);
    }
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "data"), "model")), "tiny");
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "data"), "reason")), "idle");
    json_decref(ev);
    json_t *st = it_get_json(s.port, "/status", 200);
    assert_null(state_of(st, "tiny")); /* unloaded */
    assert_non_null(state_of(st, "stay"));
    assert_string_equal(state_of(st, "stay"), "loaded"); /* pinned */
    json_decref(st);

    complete(s.port, "tiny"); /* loads again */
    json_t *st2 = it_get_json(s.port, "/status", 200);
    assert_non_null(state_of(st2, "tiny"));
    json_decref(st2);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
    it_rmrf(home);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_idle_model_unloads)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
