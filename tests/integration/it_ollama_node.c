/* it_ollama_node.c — runs tests/node/ollama.test.mjs (the official `ollama`
 * npm client, under node's test runner) against a real daemon with the tiny
 * model, an embedding entry of it, and a local HTTP server to pull from
 * (tests/tools/pull_server.py, its /slow/ path so that progress shows).
 * Skipped on a developer machine when node or the installed client is
 * missing; in CI (CI=true) that is a failure. */
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

/* tests/tools/ next to this file's directory. */
static const char *tools_dir(void)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    strncat(dir, "/../tools", sizeof dir - strlen(dir) - 1);
    return dir;
}

/* Starts pull_server.py serving `dir`; returns its pid and port. */
static pid_t start_pull_server(const char *dir, int *port)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    char script[600];
    snprintf(script, sizeof script, "%s/pull_server.py", tools_dir());
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execlp("python3", "python3", script, dir, "token", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    int ok = in && fscanf(in, "%d", port) == 1;
    if (in)
        fclose(in);
    return ok ? pid : -1;
}

static void test_ollama_client(void **state)
{
    const char *node_dir = getenv("LYRA_NODE_TESTS");
    char module[512];
    snprintf(module, sizeof module, "%s/node_modules/ollama/package.json", node_dir ? node_dir : "tests/node");
    if (!node_dir || access(module, R_OK) != 0 || system("node --version >/dev/null 2>&1") != 0 ||
        system("python3 --version >/dev/null 2>&1") != 0) {
        if (it_in_ci())
            fail_msg("node, python3 or the ollama client (%s) is missing: make test installs them", module);
        skip();
    }
    char home[64], models[128], serve[128], yaml[160];
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    snprintf(serve, sizeof serve, "%s/serve", home);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(lyra_mkdirs(serve), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    assert_int_equal(it_install_model(serve, "tiny.gguf", "pulled.gguf", SIZE_MAX), 0);
    snprintf(yaml, sizeof yaml, "%s/lyra.yaml", home);
    it_write_file(yaml, "schema_version: 3\nmodels:\n  ctx_size: 512\n  entries:\n"
                        "    - name: embedder\n      path: tiny.gguf\n      embeddings: true\n");
    int pull_port = 0;
    pid_t pull_pid = start_pull_server(serve, &pull_port);
    assert_true(pull_pid > 0);
    struct it_server s;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    assert_int_equal(it_server_start(&s, home, NULL, env), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && LYRA_URL=http://127.0.0.1:%d LYRA_MODEL=tiny LYRA_EMBED_MODEL=embedder "
             "LYRA_PULL_URL=http://127.0.0.1:%d/slow/pulled.gguf LYRA_PULL_NAME=pulled node --test ollama.test.mjs",
             node_dir, s.port, pull_port);
    int rc = system(cmd);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
    kill(pull_pid, SIGTERM);
    waitpid(pull_pid, NULL, 0);
    it_rmrf(home);
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ollama_client)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
