/* it_ui.c — the dashboard (/ui) in a real browser: tests/ui/ui.test.mjs
 * (puppeteer-core driving Debian's chromium) against a real daemon with
 * authentication on (LYRA_ADMIN_KEY), the tiny model installed and a local
 * download server (tests/tools/pull_server.py) for the pull.
 *
 * In `make test` it runs the smoke (sign in, the overview renders, one
 * streamed chat, first-load size, no console errors); with LYRA_UI_FULL=1
 * (`make test-ui`) every check and a screenshot per view in
 * $LYRA_UI_SCREENSHOTS.  Skipped on a developer machine without chromium
 * or tests/ui/node_modules; in CI (CI=true) that is a failure.
 *
 * Also checks the static serving itself over raw HTTP: types, ETag → 304,
 * Cache-Control, CSP, 404, and that the routes are public. */
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

#define ADMIN_KEY "lyra_uiTestAdminKey0123456789abcdefghijklmnopqrs"

static char home[64], models[128], serve_dir[128];
static struct it_server srv;
static pid_t pull_pid = -1;
static int pull_port;
static bool auth_on;
static const char *chat_model = "tiny";

static const char *tests_dir(const char *sub)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    strncat(dir, "/../", sizeof dir - strlen(dir) - 1);
    strncat(dir, sub, sizeof dir - strlen(dir) - 1);
    return dir;
}

static int start_pull_server(void)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    char script[600];
    snprintf(script, sizeof script, "%s/pull_server.py", tests_dir("tools"));
    pull_pid = fork();
    if (pull_pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execlp("python3", "python3", script, serve_dir, "token", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    int ok = in && fscanf(in, "%d", &pull_port) == 1;
    if (in)
        fclose(in);
    return ok ? 0 : -1;
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    snprintf(serve_dir, sizeof serve_dir, "%s/serve", home);
    if (lyra_mkdirs(models) || lyra_mkdirs(serve_dir) ||
        it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) ||
        it_install_model(serve_dir, "tiny.gguf", "tiny.gguf", SIZE_MAX) || start_pull_server())
        return -1;
    /* The chat runs on the small model when there is one: the tiny one,
     * warm, answers in a few milliseconds, a stream the page may see in
     * one or two reads. */
    chat_model = it_install_model(models, "small.gguf", "small.gguf", SIZE_MAX) == 0 ? "small" : "tiny";
    /* Authentication on, as in production.  A daemon from before RBAC
     * refuses auth.enabled: then the dashboard is tested anonymously, as
     * long as the daemon shows it has no RBAC (GET /permissions 501). */
    const char *const env_auth[] = {"LYRA_LOG_LEVEL=warn", "LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY, NULL};
    if (it_server_start(&srv, home, NULL, env_auth) == 0) {
        auth_on = true;
        return 0;
    }
    it_server_cleanup(&srv);
    const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    if (it_server_start(&srv, home, NULL, env) != 0)
        return -1;
    struct it_response r;
    if (it_http(srv.port, "GET", "/permissions", NULL, NULL, &r) != 0)
        return -1;
    int status = r.status;
    it_response_free(&r);
    if (status != 501) {
        fprintf(stderr, "it_ui: the daemon refused auth.enabled but has RBAC (/permissions %d)\n", status);
        return -1;
    }
    fprintf(stderr, "it_ui: no RBAC in this daemon yet: testing the dashboard anonymously\n");
    return 0;
}

static int teardown(void **state)
{
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    if (pull_pid > 0) {
        kill(pull_pid, SIGTERM);
        waitpid(pull_pid, NULL, 0);
    }
    it_rmrf(home);
    return 0;
}

static void test_static_files(void **state)
{
    struct it_response r;
    /* Public: no key, even with authentication on. */
    assert_int_equal(it_http(srv.port, "GET", "/ui", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char buf[512], etag[128];
    assert_non_null(strstr(it_header(&r, "Content-Type", buf, sizeof buf), "text/html"));
    assert_string_equal(it_header(&r, "Cache-Control", buf, sizeof buf), "no-cache");
    const char *csp = it_header(&r, "Content-Security-Policy", buf, sizeof buf);
    assert_non_null(csp);
    assert_non_null(strstr(csp, "default-src 'self'"));
    assert_non_null(strstr(csp, "connect-src 'self';"));
    assert_null(strstr(csp, "unsafe-inline"));
    assert_string_equal(it_header(&r, "X-Frame-Options", buf, sizeof buf), "DENY");
    assert_non_null(strstr(r.body, "<script type=\"module\" src=\"/ui/app.js\">"));
    it_response_free(&r);

    assert_int_equal(it_http(srv.port, "GET", "/ui/app.js", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(it_header(&r, "Content-Type", buf, sizeof buf), "text/javascript"));
    snprintf(etag, sizeof etag, "%s", it_header(&r, "ETag", buf, sizeof buf));
    assert_true(etag[0] == '"');
    assert_true(r.body_len > 1000);
    it_response_free(&r);

    /* Revalidation: a matching tag (in a list, weak or not) → 304, no body. */
    char hdr[300];
    snprintf(hdr, sizeof hdr, "If-None-Match: \"nope\", W/%s\r\n", etag);
    assert_int_equal(it_http(srv.port, "GET", "/ui/app.js", hdr, NULL, &r), 0);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    assert_string_equal(it_header(&r, "ETag", buf, sizeof buf), etag);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/ui/app.js", "If-None-Match: \"0000000000000000\"\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);

    assert_int_equal(it_http(srv.port, "GET", "/ui/app.css", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(it_header(&r, "Content-Type", buf, sizeof buf), "text/css"));
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/ui/", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/ui/missing.js", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/ui/..%2flyra.db", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "POST", "/ui", NULL, "{}", &r), 0);
    assert_int_equal(r.status, 405);
    it_response_free(&r);
}

static void test_browser(void **state)
{
    const char *ui = tests_dir("ui");
    char module[600];
    snprintf(module, sizeof module, "%s/node_modules/puppeteer-core/package.json", ui);
    const char *chromium = getenv("CHROMIUM") ? getenv("CHROMIUM") : "/usr/bin/chromium";
    if (access(module, R_OK) != 0 || access(chromium, X_OK) != 0 || system("node --version >/dev/null 2>&1") != 0) {
        if (it_in_ci())
            fail_msg("chromium (%s), node or puppeteer-core (%s) is missing: make test installs them", chromium, module);
        skip();
    }
    bool full = getenv("LYRA_UI_FULL") && strcmp(getenv("LYRA_UI_FULL"), "1") == 0;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && LYRA_URL=http://127.0.0.1:%d LYRA_ADMIN_KEY='%s' LYRA_UI_MODE=%s "
             "LYRA_PULL_URL=http://127.0.0.1:%d/slow/tiny.gguf LYRA_PID=%d LYRA_CHAT_MODEL=%s node ui.test.mjs",
             ui, srv.port, auth_on ? ADMIN_KEY : "", full ? "full" : "smoke", pull_port, (int)srv.pid, chat_model);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_static_files),
        cmocka_unit_test(test_browser),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
