/* it_review9.c — failing tests from the hostile review of issue 9 (RBAC).
 * Each test states what should happen; each fails on the reviewed code.
 *   1. anonymous access + any junk Authorization header skips the Host
 *      guard (DNS rebinding is back: a rebound page sets the header itself);
 *   2. ten bad keys from an address lock the admin's valid key out (429);
 *   3. auth.secret lost: docs/security.md promises that the next start
 *      bootstraps a new admin key; instead LYRA_ADMIN_KEY is refused and
 *      every key is dead (total lockout). */
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

#include "harness.h"

static struct it_server srv;

static int teardown(void **state)
{
    (void)state;
    if (srv.home[0])
        it_server_cleanup(&srv);
    memset(&srv, 0, sizeof srv);
    return 0;
}

#define ADMIN_KEY "lyra_R9reviewAdminKey0123456789abcdefghijklmnop"

static int get_status(int port, const char *path, const char *headers)
{
    struct it_response r;
    assert_int_equal(it_http(port, "GET", path, headers, NULL, &r), 0);
    int status = r.status;
    it_response_free(&r);
    return status;
}

/* GET path with exactly the header lines given (Host included). */
static int raw_status(int port, const char *path, const char *headers)
{
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\n%sConnection: close\r\n\r\n", path, headers);
    struct it_response r;
    assert_int_equal(it_raw(port, req, (size_t)n, &r), 0);
    int status = r.status;
    it_response_free(&r);
    return status;
}

/* 1. Host guard bypass.  server.c: the guard is "for anonymous requests";
 * http.c screen_request skips it whenever an Authorization header is
 * present, and authz.c then treats a key Lyra never issued as no key. */
static void host_guard_applies_to_junk_keys(void **state)
{
    (void)state;
    const char *env[] = {"LYRA_AUTH_ANONYMOUS_ROLE=user", NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    assert_int_equal(raw_status(srv.port, "/conversations", "Host: evil.example\r\n"), 403);
    /* What a rebound page at evil.example sends (same origin: no preflight). */
    assert_int_equal(
        raw_status(srv.port, "/conversations", "Host: evil.example\r\nAuthorization: Bearer x\r\n"), 403);
}

/* 2. The back-off is checked before the key: a valid key is refused too. */
static void backoff_does_not_lock_out_a_valid_key(void **state)
{
    (void)state;
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY, NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    char bad[128];
    for (int i = 0; i < 12; i++) {
        snprintf(bad, sizeof bad, "Authorization: Bearer lyra_attacker%d\r\n", i);
        get_status(srv.port, "/models", bad);
    }
    assert_int_equal(get_status(srv.port, "/models", "Authorization: Bearer " ADMIN_KEY "\r\n"), 200);
}

/* 3. docs/security.md: "losing (or replacing) it invalidates every key,
 * including the admin's — the next start then bootstraps a new admin key". */
static void lost_secret_bootstraps_admin_again(void **state)
{
    (void)state;
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY, NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    assert_int_equal(get_status(srv.port, "/models", "Authorization: Bearer " ADMIN_KEY "\r\n"), 200);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/auth.secret", srv.home);
    assert_int_equal(unlink(path), 0);
    char home[256];
    snprintf(home, sizeof home, "%s", srv.home);
    assert_int_equal(it_server_start(&srv, home, NULL, env), 0);
    srv.own_home = true;
    assert_int_equal(get_status(srv.port, "/models", "Authorization: Bearer " ADMIN_KEY "\r\n"), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(host_guard_applies_to_junk_keys, teardown),
        cmocka_unit_test_teardown(backoff_does_not_lock_out_a_valid_key, teardown),
        cmocka_unit_test_teardown(lost_secret_bootstraps_admin_again, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
