/* it_security.c — what the real daemon exposes while it has no
 * authentication: the Host guard against DNS rebinding (403 before routing,
 * loopback names and server.allowed_hosts served), the refusal to listen on
 * a non-loopback address without auth or server.allow_remote_without_auth,
 * auth.enabled on every interface, the anonymous role, and the private
 * modes of what it writes into LYRA_HOME (keys included). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

/* The daemon under test; teardown() stops it even when a test fails, so a
 * failure never leaves a daemon behind. */
static struct it_server srv;
static char tmp_dir[64];

static int teardown(void **state)
{
    if (srv.home[0])
        it_server_cleanup(&srv);
    memset(&srv, 0, sizeof srv);
    if (tmp_dir[0])
        it_rmrf(tmp_dir);
    tmp_dir[0] = '\0';
    return 0;
}

/* GET (or `method`) `path` with the raw Host header line `host_line`
 * ("Host: x\r\n", "" for none) and HTTP version `version`. */
static int request_with_host(int port, const char *method, const char *path, const char *version,
                             const char *host_line, const char *extra, struct it_response *out)
{
    char req[2048];
    int n = snprintf(req, sizeof req, "%s %s %s\r\n%sConnection: close\r\n%s\r\n", method, path, version,
                     host_line, extra ? extra : "");
    assert_true(n > 0 && n < (int)sizeof req);
    return it_raw(port, req, (size_t)n, out);
}

/* The status of GET `path` with Host `host` (HTTP/1.1); for a 403, checks
 * that the body is the JSON error host_not_allowed. */
static int status_for_host(int port, const char *path, const char *host)
{
    char line[512];
    snprintf(line, sizeof line, "Host: %s\r\n", host);
    struct it_response r;
    assert_int_equal(request_with_host(port, "GET", path, "HTTP/1.1", line, NULL, &r), 0);
    int status = r.status;
    if (status == 403) {
        json_t *j = it_json(&r);
        if (!j)
            fail_msg("403 for Host '%s' is not JSON: %s", host, r.body);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                            "host_not_allowed");
        json_decref(j);
    }
    it_response_free(&r);
    return status;
}

/* The error code of a JSON error answer ("" when none), kept in a static
 * buffer. */
static const char *error_code(const struct it_response *r)
{
    static char code[64];
    json_t *j = it_json(r);
    snprintf(code, sizeof code, "%s", it_error_code(j) ? it_error_code(j) : "");
    json_decref(j);
    return code;
}

static bool file_has(const char *path, const char *needle)
{
    char *text = lyra_read_file(path, NULL);
    bool ok = text && strstr(text, needle);
    if (!ok)
        print_error("%s lacks '%s':\n%s\n", path, needle, text ? text : "(unreadable)");
    free(text);
    return ok;
}

static void expect_host(int port, const char *host, int want)
{
    int got = status_for_host(port, "/health", host);
    if (got != want)
        fail_msg("Host '%s': status %d, wanted %d", host, got, want);
}

static void test_host_guard_on_loopback(void **state)
{
    assert_int_equal(it_server_start(&srv, NULL, NULL, NULL), 0);
    char host[64];

    expect_host(srv.port, "evil.example", 403);
    snprintf(host, sizeof host, "evil.example:%d", srv.port);
    expect_host(srv.port, host, 403);
    expect_host(srv.port, "0.0.0.0", 403);
    expect_host(srv.port, "localhost.evil.example", 403);
    expect_host(srv.port, "127.0.0.1.nip.io", 403);

    snprintf(host, sizeof host, "localhost:%d", srv.port);
    expect_host(srv.port, host, 200);
    expect_host(srv.port, "127.0.0.1", 200);
    snprintf(host, sizeof host, "127.0.0.1:%d", srv.port);
    expect_host(srv.port, host, 200);
    snprintf(host, sizeof host, "[::1]:%d", srv.port);
    expect_host(srv.port, host, 200);
    expect_host(srv.port, "LOCALHOST.", 200);
    expect_host(srv.port, "app.localhost", 200);

    /* Before routing: an unknown path is 403, not 404, and so is a CORS
     * preflight. */
    assert_int_equal(status_for_host(srv.port, "/no/such/endpoint", "evil.example"), 403);
    assert_int_equal(status_for_host(srv.port, "/no/such/endpoint", "localhost"), 404);
    struct it_response r;
    assert_int_equal(
        request_with_host(srv.port, "OPTIONS", "/v1/models", "HTTP/1.1", "Host: evil.example\r\n",
                          "Origin: http://evil.example\r\nAccess-Control-Request-Method: GET\r\n", &r),
        0);
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(r.body, "host_not_allowed"));
    it_response_free(&r);

    /* Control characters and bytes that are not UTF-8: refused, and the
     * answer is still a JSON error (its message does not echo them raw). */
    assert_int_equal(status_for_host(srv.port, "/health", "evil\x1b[2J.example"), 403);
    assert_int_equal(status_for_host(srv.port, "/health",
                                     "l\xc3\xb6"
                                     "calhost"),
                     403);
    assert_int_equal(status_for_host(srv.port, "/health", "localhost\xff"), 403);
    assert_int_equal(status_for_host(srv.port, "/health", "local host"), 403);

    /* No Host cannot come from a browser (it always sends one): served, in
     * HTTP/1.0 and in HTTP/1.1 (which libmicrohttpd accepts without Host). */
    assert_int_equal(request_with_host(srv.port, "GET", "/health", "HTTP/1.0", "", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(request_with_host(srv.port, "GET", "/health", "HTTP/1.1", "", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(status_for_host(srv.port, "/health", ""), 200);

    /* The message says why and how to allow a name. */
    assert_int_equal(
        request_with_host(srv.port, "GET", "/health", "HTTP/1.1", "Host: evil.example\r\n", NULL, &r), 0);
    assert_non_null(strstr(r.body, "server.allowed_hosts"));
    assert_non_null(strstr(r.body, "evil.example"));
    it_response_free(&r);

    /* The CLI passes: it finds the daemon through serve.json. */
    char *out = NULL;
    const char *args[] = {"ls", "--home", srv.home, NULL};
    int rc = it_run_lyra(args, NULL, &out);
    if (rc != 0)
        fail_msg("lyra ls: exit %d: %s", rc, out);
    free(out);

    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
}

static void test_allowed_hosts(void **state)
{
    const char *env[] = {"LYRA_SERVER_ALLOWED_HOSTS=lyra.example.com, 192.168.7.7", NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    char host[64];
    snprintf(host, sizeof host, "Lyra.Example.Com:%d", srv.port);
    expect_host(srv.port, host, 200);
    expect_host(srv.port, "lyra.example.com", 200);
    expect_host(srv.port, "192.168.7.7", 200);
    expect_host(srv.port, "localhost", 200);
    expect_host(srv.port, "evil.example", 403);
    expect_host(srv.port, "x.lyra.example.com", 403);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);

    /* An entry that is not a host is refused at start, by position. */
    const char *bad[] = {"LYRA_SERVER_ALLOWED_HOSTS=ok.example, lyra.example.com:8000", NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, bad), -1);
    assert_int_equal(srv.exit_status, 1);
    assert_true(file_has(srv.log_path, "server.allowed_hosts[1]"));
    it_server_cleanup(&srv);
}

static void test_remote_address_refused_without_auth(void **state)
{
    const char *hosts[] = {"0.0.0.0", "::", "192.0.2.1"};
    for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) {
        const char *args[] = {"--host", hosts[i], NULL};
        if (it_server_start(&srv, NULL, args, NULL) == 0)
            fail_msg("lyra serve --host %s started with auth off", hosts[i]);
        assert_int_equal(srv.exit_status, 1);
        assert_true(file_has(srv.log_path, "not a loopback address"));
        assert_true(file_has(srv.log_path, "drive the models"));
        assert_true(file_has(srv.log_path, "server.allow_remote_without_auth: true"));
        assert_true(file_has(srv.log_path, "LYRA_SERVER_ALLOW_REMOTE_WITHOUT_AUTH=true"));
        /* refused before anything was opened */
        char db[400];
        snprintf(db, sizeof db, "%s/lyra.db", srv.home);
        assert_int_equal(access(db, F_OK), -1);
        it_server_cleanup(&srv);
    }
}

static void test_remote_address_with_override(void **state)
{
    const char *args[] = {"--host", "0.0.0.0", NULL};
    const char *env[] = {"LYRA_SERVER_ALLOW_REMOTE_WITHOUT_AUTH=true", NULL};
    assert_int_equal(it_server_start(&srv, NULL, args, env), 0);
    assert_true(file_has(srv.log_path, "WITHOUT authentication"));
    /* The address is exposed on purpose: any Host is served. */
    expect_host(srv.port, "evil.example", 200);
    expect_host(srv.port, "127.0.0.1", 200);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);

    /* ... unless server.allowed_hosts names the ones to serve. */
    const char *env2[] = {"LYRA_SERVER_ALLOW_REMOTE_WITHOUT_AUTH=true", "LYRA_SERVER_ALLOWED_HOSTS=lyra.lan",
                          NULL};
    assert_int_equal(it_server_start(&srv, NULL, args, env2), 0);
    expect_host(srv.port, "lyra.lan", 200);
    expect_host(srv.port, "127.0.0.1", 200);
    expect_host(srv.port, "evil.example", 403);
    expect_host(srv.port, "0.0.0.0", 403);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
}

#define ADMIN_KEY "it-security-admin-key-0123456789abcdef"

/* With auth.enabled the daemon may listen on every interface; every route
 * but the health probes wants a key, and a request that carries a good key
 * is not subject to the Host guard (a rebinding page cannot know it). */
static void test_auth_enabled_remote(void **state)
{
    const char *args[] = {"--host", "0.0.0.0", NULL};
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY, NULL};
    assert_int_equal(it_server_start(&srv, NULL, args, env), 0);
    assert_false(file_has(srv.log_path, "WITHOUT authentication"));
    struct it_response r;
    char buf[256];
    assert_int_equal(it_http(srv.port, "GET", "/status", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(it_header(&r, "WWW-Authenticate", buf, sizeof buf));
    assert_string_equal(error_code(&r), "missing_key");
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/status", "Authorization: Bearer " ADMIN_KEY "\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/status", "Authorization: Bearer " ADMIN_KEY "x\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 401);
    assert_string_equal(error_code(&r), "invalid_key");
    assert_non_null(strstr(it_header(&r, "WWW-Authenticate", buf, sizeof buf), "invalid_token"));
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/health", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    /* A key in the URL is refused, whatever the route. */
    assert_int_equal(it_http(srv.port, "GET", "/status?api_key=" ADMIN_KEY, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 400);
    assert_string_equal(error_code(&r), "key_in_query");
    it_response_free(&r);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
}

/* Auth off on loopback: a request without a key acts with the anonymous
 * role (user by default: chat yes, loading models no); a bad key is 401
 * even so, and the Host guard holds for anonymous requests only. */
static void test_anonymous_role(void **state)
{
    const char *env[] = {"LYRA_AUTH_ANONYMOUS_ROLE=user", "LYRA_ADMIN_KEY=" ADMIN_KEY, NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/models", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "POST", "/models/none/load", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 403);
    assert_string_equal(error_code(&r), "forbidden");
    json_t *body = it_json(&r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, "error"), "permission")),
                        "models.load");
    json_decref(body);
    it_response_free(&r);
    /* A key Lyra never issued counts as none (OpenAI clients always send
     * one): anonymous, so still no loading. */
    assert_int_equal(it_http(srv.port, "POST", "/models/none/load", "Authorization: Bearer sk-no-key-required\r\n",
                             NULL, &r),
                     0);
    assert_int_equal(r.status, 403);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/models", "Authorization: Bearer sk-no-key-required\r\n", NULL, &r),
                     0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    /* the admin key does what the anonymous role may not (404: no such model) */
    assert_int_equal(it_http(srv.port, "POST", "/models/none/load", "Authorization: Bearer " ADMIN_KEY "\r\n", NULL,
                             &r),
                     0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    expect_host(srv.port, "evil.example", 403);
    assert_int_equal(request_with_host(srv.port, "GET", "/status", "HTTP/1.1", "Host: evil.example\r\n",
                                       "Authorization: Bearer " ADMIN_KEY "\r\n", &r),
                     0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
}

static unsigned mode_of(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s%s", dir, name ? "/" : "", name ? name : "");
    struct stat st;
    if (stat(path, &st) < 0)
        fail_msg("%s: missing", path);
    return (unsigned)(st.st_mode & 07777);
}

/* With a umask that would leave everything readable (0), what the daemon
 * creates is still private: the daemon sets its own umask and modes. */
static void test_files_are_private(void **state)
{
    char home[128], log[160], logopt[200];
    it_mkdtemp(tmp_dir, sizeof tmp_dir);
    const char *dir = tmp_dir;
    snprintf(home, sizeof home, "%s/parent", dir);
    assert_int_equal(mkdir(home, 0755), 0); /* holds the harness's log of the daemon */
    snprintf(home, sizeof home, "%s/parent/home", dir);
    snprintf(log, sizeof log, "%s/lyra.log", dir);
    snprintf(logopt, sizeof logopt, "LYRA_LOG_FILE=%s", log);
    const char *env[] = {logopt, NULL};
    mode_t old = umask(0);
    int rc = it_server_start(&srv, home, NULL, env);
    umask(old);
    assert_int_equal(rc, 0);
    /* A write, so that the WAL and shared-memory files exist. */
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", "/events", "Content-Type: application/json\r\n",
                             "{\"type\":\"custom.mode_test\",\"data\":{}}", &r),
                     0);
    assert_int_equal(r.status, 201);
    it_response_free(&r);

    assert_int_equal(mode_of(home, NULL), 0700);
    const char *files[] = {"lyra.db", "lyra.db-wal", "lyra.db-shm", "serve.json", "lyra.lock", "auth.secret",
                           "admin.key"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        unsigned m = mode_of(home, files[i]);
        if (m != 0600)
            fail_msg("%s/%s has mode %04o, wanted 0600", home, files[i], m);
    }
    assert_int_equal(mode_of(log, NULL), 0600);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_host_guard_on_loopback, teardown),
        cmocka_unit_test_teardown(test_allowed_hosts, teardown),
        cmocka_unit_test_teardown(test_remote_address_refused_without_auth, teardown),
        cmocka_unit_test_teardown(test_remote_address_with_override, teardown),
        cmocka_unit_test_teardown(test_auth_enabled_remote, teardown),
        cmocka_unit_test_teardown(test_anonymous_role, teardown),
        cmocka_unit_test_teardown(test_files_are_private, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
