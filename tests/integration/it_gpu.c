/* it_gpu.c — GPU placement through a real daemon, with the GPU faked behind
 * its interface (no GPU here or in CI; bench/gpu-check.sh checks the real
 * ggml path on a machine with one):
 *   - no GPU: every model runs on the CPU (gpu_layers 0, /status gpu []),
 *     with one info line about it and no warning;
 *   - a fake GPU (LYRA_FAKE_GPUS) with plenty of memory: all layers go to it;
 *   - loads that fail on the GPU (LYRA_FAKE_GPU_FAIL_LAYERS, the worker's
 *     fake out-of-memory) are retried with half the layers, then on the CPU:
 *     the request is served, model.fallback is published per step and
 *     /status counts fallbacks.gpu (docs/cache.md, docs/gpu.md). */
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

#define FAKE_GPU "LYRA_FAKE_GPUS=[{\"name\":\"FakeGPU0\",\"total\":8589934592,\"free\":6442450944}]"

struct fx {
    char home[64];
    struct it_server srv;
};

static void start(struct fx *f, const char *const *env)
{
    char models[128];
    it_mkdtemp(f->home, sizeof f->home);
    snprintf(models, sizeof models, "%s/models", f->home);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    assert_int_equal(it_server_start(&f->srv, f->home, NULL, env), 0);
}

static void stop(struct fx *f)
{
    it_server_stop(&f->srv, SIGTERM);
    it_server_cleanup(&f->srv);
    it_rmrf(f->home);
}

static void complete_ok(struct fx *f)
{
    struct it_response r;
    assert_int_equal(
        it_post_json(f->srv.port, "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":2}", &r), 0);
    if (r.status != 200)
        fail_msg("completion: %d %s", r.status, r.body ? r.body : "");
    char model[64];
    assert_string_equal(it_header(&r, "X-Lyra-Model", model, sizeof model), "tiny");
    it_response_free(&r);
}

/* The resident entry of tiny in /status cache.resident. */
static json_t *resident_tiny(json_t *status)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(json_object_get(status, "cache"), "resident"), i, e)
        if (strcmp(json_string_value(json_object_get(e, "model")), "tiny") == 0)
            return e;
    fail_msg("tiny is not resident");
    return NULL;
}

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_no_gpu_runs_on_the_cpu_quietly(void **state)
{
    struct fx f;
    const char *const env[] = {"LYRA_LOG_LEVEL=info", NULL};
    start(&f, env);
    complete_ok(&f);
    json_t *st = it_get_json(f.srv.port, "/status", 200);
    assert_int_equal(json_array_size(json_object_get(st, "gpu")), 0);
    assert_int_equal(json_integer_value(json_object_get(resident_tiny(st), "gpu_layers")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "fallbacks"), "gpu")), 0);
    json_decref(st);
    char *log = lyra_read_file(f.srv.log_path, NULL);
    assert_non_null(log);
    assert_int_equal(count(log, "no GPU found"), 1);
    if (strstr(log, "\"level\":\"warn\"") && strstr(strstr(log, "\"level\":\"warn\""), "\"component\":\"gpu\""))
        fail_msg("a GPU warning without a GPU:\n%s", log);
    free(log);
    stop(&f);
}

static void test_fake_gpu_takes_every_layer(void **state)
{
    struct fx f;
    const char *const env[] = {FAKE_GPU, NULL};
    start(&f, env);
    complete_ok(&f);
    json_t *st = it_get_json(f.srv.port, "/status", 200);
    assert_int_equal(json_array_size(json_object_get(st, "gpu")), 1);
    json_t *e = resident_tiny(st);
    /* tiny has 2 blocks: all layers = blocks + the output layer. */
    assert_int_equal(json_integer_value(json_object_get(e, "gpu_layers")), 3);
    assert_true(json_integer_value(json_object_get(e, "estimate_device_bytes")) > 0);
    json_decref(st);
    stop(&f);
}

static void test_gpu_failures_fall_back_to_fewer_layers_then_cpu(void **state)
{
    struct fx f;
    /* Every GPU load fails: 3 layers, then 1, then the CPU serves. */
    const char *const env[] = {FAKE_GPU, "LYRA_FAKE_GPU_FAIL_LAYERS=0", NULL};
    start(&f, env);
    uint64_t since = it_last_seq(f.srv.port);
    complete_ok(&f);
    json_t *ev = it_wait_event(f.srv.port, "model.fallback", since, 5000);
    assert_non_null(ev);
    json_t *d = json_object_get(ev, "data");
    assert_int_equal(json_integer_value(json_object_get(d, "gpu_layers_from")), 3);
    assert_int_equal(json_integer_value(json_object_get(d, "gpu_layers_to")), 1);
    uint64_t next = (uint64_t)json_integer_value(json_object_get(ev, "seq"));
    json_decref(ev);
    ev = it_wait_event(f.srv.port, "model.fallback", next, 5000);
    assert_non_null(ev);
    d = json_object_get(ev, "data");
    assert_int_equal(json_integer_value(json_object_get(d, "gpu_layers_to")), 0);
    assert_string_equal(json_string_value(json_object_get(d, "to")), "cpu");
    assert_non_null(strstr(json_string_value(json_object_get(d, "error")), "fake GPU: out of memory"));
    json_decref(ev);

    json_t *st = it_get_json(f.srv.port, "/status", 200);
    assert_int_equal(json_integer_value(json_object_get(resident_tiny(st), "gpu_layers")), 0);
    json_t *fb = json_object_get(st, "fallbacks");
    assert_int_equal(json_integer_value(json_object_get(fb, "gpu")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(fb, "last"), "kind")), "cpu");
    /* Not counted against the model: no crash, no open circuit. */
    json_t *models = json_object_get(st, "models");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(models, 0), "crashes")), 0);
    json_decref(st);
    /* The next load remembers what worked: unload, load, still CPU, no
     * new fallback. */
    struct it_response r;
    assert_int_equal(it_post_json(f.srv.port, "/models/tiny/unload", "", &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    complete_ok(&f);
    st = it_get_json(f.srv.port, "/status", 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "fallbacks"), "gpu")), 2);
    json_decref(st);
    stop(&f);
}

static void test_partial_offload_within_the_limit_is_kept(void **state)
{
    struct fx f;
    /* One layer fits the (fake) card: 3 fails, 1 is served on the GPU. */
    const char *const env[] = {FAKE_GPU, "LYRA_FAKE_GPU_FAIL_LAYERS=1", NULL};
    start(&f, env);
    complete_ok(&f);
    json_t *st = it_get_json(f.srv.port, "/status", 200);
    assert_int_equal(json_integer_value(json_object_get(resident_tiny(st), "gpu_layers")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "fallbacks"), "gpu")), 1);
    json_decref(st);
    stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_gpu_runs_on_the_cpu_quietly),
        cmocka_unit_test(test_fake_gpu_takes_every_layer),
        cmocka_unit_test(test_gpu_failures_fall_back_to_fewer_layers_then_cpu),
        cmocka_unit_test(test_partial_offload_within_the_limit_is_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
