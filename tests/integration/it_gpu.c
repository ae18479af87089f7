/* it_gpu.c — the GPU test knobs through a real daemon: LYRA_FAKE_GPU_FAIL_LAYERS
 * given to `lyra serve` reaches its workers (the environment allow-list of
 * supervisor/wproc.c), so a load with more GPU layers than it allows fails
 * with the worker's out-of-memory message in the request's error, while one
 * within it is served.  This is what the manager's retry-with-fewer-layers
 * and CPU fallback tests build on (docs/gpu.md). */
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

/* Starts a daemon on tiny with models.gpu_layers = `layers` and the fake
 * limit 0, POSTs one completion and returns its status; *body gets the
 * response body (caller frees). */
static int complete_with(const char *layers, char **body)
{
    char home[64], models[128];
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    char gl[64];
    snprintf(gl, sizeof gl, "LYRA_MODELS_GPU_LAYERS=%s", layers);
    const char *const env[] = {"LYRA_FAKE_GPU_FAIL_LAYERS=0", gl, "LYRA_MODELS_THREADS=1", NULL};
    struct it_server srv;
    assert_int_equal(it_server_start(&srv, home, NULL, env), 0);
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/v1/completions",
                                  "{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":2}", &r),
                     0);
    int status = r.status;
    *body = strdup(r.body ? r.body : "");
    it_response_free(&r);
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return status;
}

static void test_fake_gpu_failure_reaches_the_request(void **state)
{
    char *body = NULL;
    int status = complete_with("-1", &body);
    if (status == 200 || !strstr(body, "fake GPU: out of memory allocating"))
        fail_msg("all layers with LYRA_FAKE_GPU_FAIL_LAYERS=0: %d %s", status, body);
    free(body);
}

static void test_within_the_limit_is_served(void **state)
{
    char *body = NULL;
    int status = complete_with("0", &body);
    if (status != 200)
        fail_msg("0 layers with LYRA_FAKE_GPU_FAIL_LAYERS=0: %d %s", status, body);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_gpu_failure_reaches_the_request),
        cmocka_unit_test(test_within_the_limit_is_served),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
