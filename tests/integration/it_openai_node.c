/* it_openai_node.c — runs tests/node/openai.test.mjs (the official `openai`
 * npm client, under node's test runner) against a real daemon with the
 * tiny model.  Skipped on a developer machine when node or the installed
 * client is missing; in CI (CI=true) that is a failure. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static void test_openai_client(void **state)
{
    const char *node_dir = getenv("LYRA_NODE_TESTS");
    char module[512];
    snprintf(module, sizeof module, "%s/node_modules/openai/package.json", node_dir ? node_dir : "tests/node");
    if (!node_dir || access(module, R_OK) != 0 || system("node --version >/dev/null 2>&1") != 0) {
        if (it_in_ci())
            fail_msg("node or the openai client (%s) is missing: make test installs them", module);
        skip();
    }
    char home[64], models[128];
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    struct it_server s;
    assert_int_equal(it_server_start(&s, home, NULL, NULL), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && LYRA_URL=http://127.0.0.1:%d LYRA_MODEL=tiny node --test openai.test.mjs",
             node_dir, s.port);
    int rc = system(cmd);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
    it_rmrf(home);
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_openai_client)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
