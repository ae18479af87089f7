/* test_proxies.c — server.trusted_proxies: parsing the entries, matching
 * addresses and CIDR blocks, the right-to-left walk of X-Forwarded-For,
 * and the HTTP layer's lyra_http_client_addr / lyra_http_peer_loopback
 * with and without a trusted proxy (a real listener on loopback). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "http/http.h"
#include "http/proxies.h"

static struct lyra_proxies *make(const char *const *entries, size_t n)
{
    struct lyra_proxies *p = NULL;
    struct lyra_err err = {0};
    assert_int_equal(lyra_proxies_new(&p, (char *const *)entries, n, &err), 0);
    assert_non_null(p);
    return p;
}

static void test_parse_errors(void **state)
{
    const char *bad[] = {"nginx.local", "10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/x", "1.2.3.4:80",
                         "", "10.0.0.1/-1", "::ffff:10.0.0.0/95"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *entries[] = {"127.0.0.1", bad[i]};
        struct lyra_proxies *p = (struct lyra_proxies *)1;
        struct lyra_err err = {0};
        assert_int_equal(lyra_proxies_new(&p, (char *const *)entries, 2, &err), LYRA_EINVAL);
        assert_null(p);
        /* the message names the entry by its index, as config errors do */
        assert_non_null(strstr(err.msg, "server.trusted_proxies[1]"));
    }
    struct lyra_proxies *empty = make(NULL, 0);
    assert_int_equal(lyra_proxies_count(empty), 0);
    assert_false(lyra_proxies_trusts(empty, "127.0.0.1"));
    lyra_proxies_free(empty);
    lyra_proxies_free(NULL);
}

static void test_matching(void **state)
{
    const char *entries[] = {"127.0.0.1", "10.1.0.0/16", "fd00::/8", "::1", "192.168.7.0/25"};
    struct lyra_proxies *p = make(entries, 5);
    assert_int_equal(lyra_proxies_count(p), 5);
    assert_true(lyra_proxies_trusts(p, "127.0.0.1"));
    assert_false(lyra_proxies_trusts(p, "127.0.0.2"));
    assert_true(lyra_proxies_trusts(p, "::ffff:127.0.0.1")); /* a dual-stack listener's peer */
    assert_true(lyra_proxies_trusts(p, "10.1.255.3"));
    assert_false(lyra_proxies_trusts(p, "10.2.0.1"));
    assert_true(lyra_proxies_trusts(p, "fd12:3456::1"));
    assert_false(lyra_proxies_trusts(p, "fe80::1"));
    assert_true(lyra_proxies_trusts(p, "::1"));
    assert_true(lyra_proxies_trusts(p, "[::1]:443"));
    assert_true(lyra_proxies_trusts(p, "192.168.7.127"));
    assert_false(lyra_proxies_trusts(p, "192.168.7.128")); /* /25: the bit inside a byte counts */
    assert_false(lyra_proxies_trusts(p, "not an address"));
    assert_false(lyra_proxies_trusts(p, NULL));
    assert_false(lyra_proxies_trusts(NULL, "127.0.0.1"));
    lyra_proxies_free(p);
}

static void check_client(const struct lyra_proxies *p, const char *peer, const char *xff, const char *want,
                         bool forwarded)
{
    char out[64];
    assert_int_equal(lyra_proxies_client(p, peer, xff, out, sizeof out), forwarded);
    assert_string_equal(out, want);
}

static void test_walk(void **state)
{
    const char *entries[] = {"127.0.0.1", "10.0.0.0/8"};
    struct lyra_proxies *p = make(entries, 2);
    /* nginx on loopback appended the client it saw */
    check_client(p, "127.0.0.1", "203.0.113.7", "203.0.113.7", true);
    /* what the client claimed on the left is not believed */
    check_client(p, "127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7", true);
    /* a chain of trusted proxies is skipped */
    check_client(p, "127.0.0.1", "198.51.100.1, 203.0.113.7, 10.0.0.5, 10.9.9.9", "203.0.113.7", true);
    /* every hop trusted: the left-most one is the client */
    check_client(p, "127.0.0.1", "10.0.0.7, 10.0.0.5", "10.0.0.7", true);
    /* from an untrusted peer the header is ignored */
    check_client(p, "192.0.2.9", "203.0.113.7", "192.0.2.9", false);
    /* no header: the peer */
    check_client(p, "127.0.0.1", NULL, "127.0.0.1", false);
    check_client(p, "127.0.0.1", " , ", "127.0.0.1", false);
    /* garbage ends the walk at the proxy that passed it on */
    check_client(p, "127.0.0.1", "203.0.113.7, <script>, 10.0.0.5", "10.0.0.5", true);
    check_client(p, "127.0.0.1", "203.0.113.7, garbage", "127.0.0.1", false);
    /* ports, brackets, spaces, IPv6, IPv4-mapped hops */
    check_client(p, "127.0.0.1", "  203.0.113.7:5000 ", "203.0.113.7", true);
    check_client(p, "127.0.0.1", "[2001:db8::1]:443", "2001:db8::1", true);
    check_client(p, "127.0.0.1", "2001:db8::1", "2001:db8::1", true);
    check_client(p, "::ffff:127.0.0.1", "::ffff:203.0.113.7", "203.0.113.7", true);
    /* an empty hop in the middle says nothing */
    check_client(p, "127.0.0.1", "203.0.113.7,,10.0.0.1", "203.0.113.7", true);
    /* without a set nothing is trusted */
    check_client(NULL, "127.0.0.1", "203.0.113.7", "127.0.0.1", false);
    lyra_proxies_free(p);
}

/* --- through the HTTP layer ------------------------------------------ */

static void h_whoami(struct lyra_http_req *req, void *ctx)
{
    lyra_http_send_json(req, 200, json_pack("{s:s, s:b}", "client", lyra_http_client_addr(req), "loopback",
                                            lyra_http_peer_loopback(req)));
}

static const struct lyra_route routes[] = {
    {"GET", "/whoami", h_whoami, ""},
};

static struct lyra_http *start(char *const *proxies, size_t n)
{
    struct lyra_http_options opts = {.host = "127.0.0.1", .port = 0, .threads = 1, .max_body_bytes = 1024,
                                     .max_header_bytes = 8192, .idle_timeout_s = 10, .max_connections = 16,
                                     .trusted_proxies = proxies, .n_trusted_proxies = n};
    struct lyra_err err = {0};
    struct lyra_http *http = lyra_http_new(&opts, routes, 1, NULL, &err);
    assert_non_null(http);
    assert_int_equal(lyra_http_start(http, &err), 0);
    return http;
}

static void whoami(struct lyra_http *http, const char *headers, const char *want, bool loopback)
{
    struct it_response r;
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/whoami", headers, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = it_json(&r);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "client")), want);
    assert_int_equal(json_is_true(json_object_get(j, "loopback")), loopback);
    json_decref(j);
    it_response_free(&r);
}

static void test_http_untrusted(void **state)
{
    /* no trusted proxies: X-Forwarded-For is the client's say-so, ignored */
    struct lyra_http *http = start(NULL, 0);
    whoami(http, "X-Forwarded-For: 203.0.113.7\r\n", "127.0.0.1", true);
    lyra_http_free(http);
    /* a set that does not include the peer: ignored too */
    char *other[] = {"10.0.0.1"};
    http = start(other, 1);
    whoami(http, "X-Forwarded-For: 203.0.113.7\r\n", "127.0.0.1", true);
    lyra_http_free(http);
}

static void test_http_trusted(void **state)
{
    char *proxies[] = {"127.0.0.0/8"};
    struct lyra_http *http = start(proxies, 1);
    /* the forwarded client, and it is not local any more */
    whoami(http, "X-Forwarded-For: 203.0.113.7\r\n", "203.0.113.7", false);
    /* several headers are one list, in order */
    whoami(http, "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.8\r\n", "203.0.113.8", false);
    /* a client on the proxy's machine stays local */
    whoami(http, "X-Forwarded-For: 127.0.0.9\r\n", "127.0.0.9", true);
    /* no header: the proxy itself is the client */
    whoami(http, NULL, "127.0.0.1", true);
    /* an oversize header keeps the right-most whole hops */
    size_t n = 4000;
    char *big = malloc(n + 64);
    strcpy(big, "X-Forwarded-For: ");
    size_t len = strlen(big);
    while (len < n)
        len += (size_t)sprintf(big + len, "198.51.100.%zu, ", len % 200);
    strcpy(big + len, "203.0.113.9\r\n");
    whoami(http, big, "203.0.113.9", false);
    free(big);
    lyra_http_free(http);
}

static void test_http_bad_entry(void **state)
{
    char *proxies[] = {"127.0.0.1", "proxy.internal"};
    struct lyra_http_options opts = {.host = "127.0.0.1", .port = 0, .threads = 1, .max_body_bytes = 1024,
                                     .max_header_bytes = 8192, .idle_timeout_s = 10, .max_connections = 16,
                                     .trusted_proxies = proxies, .n_trusted_proxies = 2};
    struct lyra_err err = {0};
    assert_null(lyra_http_new(&opts, routes, 1, NULL, &err));
    assert_int_equal(err.code, LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "server.trusted_proxies[1]"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors),   cmocka_unit_test(test_matching),
        cmocka_unit_test(test_walk),           cmocka_unit_test(test_http_untrusted),
        cmocka_unit_test(test_http_trusted),   cmocka_unit_test(test_http_bad_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
