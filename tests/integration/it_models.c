/* it_models.c — GET /models, /models/{name}, /v1/models against the real
 * daemon: valid, truncated and non-GGUF files, aliases from the config,
 * and a file added while the daemon runs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64], models[128];

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    char p[256], cfg[256];
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "broken.gguf", 100000), 0); /* truncated in the tensor data */
    snprintf(p, sizeof p, "%s/notes.gguf", models);
    it_write_file(p, "these are not the weights you are looking for");
    snprintf(cfg, sizeof cfg, "%s/lyra.yaml", home);
    it_write_file(cfg, "schema_version: 2\nmodels:\n  entries:\n    - name: assistant\n      path: tiny.gguf\n"
                       "      aliases: [helper]\n      parallel: 2\n");
    return it_server_start(&srv, home, NULL, NULL);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static json_t *get_json(const char *path, int want)
{
    json_t *j = it_get_json(srv.port, path, want);
    assert_non_null(j);
    return j;
}

static json_t *find(json_t *list, const char *name)
{
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m) if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0) return m;
    return NULL;
}

static void test_list(void **state)
{
    json_t *j = get_json("/models", 200);
    json_t *list = json_object_get(j, "models");
    json_t *tiny = find(list, "tiny");
    assert_non_null(tiny);
    assert_string_equal(json_string_value(json_object_get(tiny, "state")), "available");
    assert_string_equal(json_string_value(json_object_get(tiny, "architecture")), "llama");
    assert_string_equal(json_string_value(json_object_get(tiny, "quantization")), "Q8_0");
    assert_true(json_integer_value(json_object_get(tiny, "parameters")) > 4000000);
    json_t *broken = find(list, "broken");
    assert_non_null(broken);
    assert_string_equal(json_string_value(json_object_get(broken, "state")), "invalid");
    assert_non_null(strstr(json_string_value(json_object_get(broken, "error")), "truncated"));
    json_t *notes = find(list, "notes");
    assert_string_equal(json_string_value(json_object_get(notes, "state")), "invalid");
    json_t *assistant = find(list, "assistant");
    assert_non_null(assistant);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(assistant, "settings"), "parallel")), 2);
    json_decref(j);
}

static void test_get_by_alias_and_unknown(void **state)
{
    json_t *j = get_json("/models/helper", 200);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "assistant");
    assert_true(json_is_object(json_object_get(j, "gguf")));
    json_decref(j);
    j = get_json("/models/nope", 404);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")), "model_not_found");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "nope"));
    json_decref(j);
}

static void test_openai_list_and_new_file(void **state)
{
    json_t *j = get_json("/v1/models", 200);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    json_t *data = json_object_get(j, "data");
    size_t n = json_array_size(data);
    size_t i;
    json_t *m;
    json_array_foreach(data, i, m) {
        assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
        assert_string_not_equal(json_string_value(json_object_get(m, "id")), "broken");
    }
    json_decref(j);
    assert_int_equal(it_install_model(models, "tiny.gguf", "extra.gguf", SIZE_MAX), 0);
    j = get_json("/v1/models", 200);
    assert_int_equal(json_array_size(json_object_get(j, "data")), n + 1);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_get_by_alias_and_unknown),
        cmocka_unit_test(test_openai_list_and_new_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
