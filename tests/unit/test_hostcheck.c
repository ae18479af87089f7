/* test_hostcheck.c — the DNS-rebinding guard as a pure function: which Host
 * values pass with and without an allow list, every spelling edge case the
 * header documents, and the listen-address test used at start-up. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "http/hostcheck.h"

static struct lyra_hostcheck *guard(char *const *allowed, size_t n)
{
    struct lyra_hostcheck *hc = NULL;
    struct lyra_err err = {0};
    int rc = lyra_hostcheck_new(allowed, n, &hc, &err);
    if (rc != 0)
        fail_msg("lyra_hostcheck_new: %s", err.msg);
    return hc;
}

static void expect(const struct lyra_hostcheck *hc, const char *host, bool ok)
{
    struct lyra_err err = {0};
    int rc = lyra_hostcheck_check(hc, host, &err);
    if (ok && rc != 0)
        fail_msg("Host '%s' refused: %s", host ? host : "(none)", err.msg);
    if (!ok && rc != LYRA_EPERM)
        fail_msg("Host '%s' accepted (rc %d)", host ? host : "(none)", rc);
    if (!ok) /* the reason is safe to echo: printable ASCII, bounded */
        for (const char *p = err.msg; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f);
}

static void test_loopback_hosts_pass(void **state)
{
    struct lyra_hostcheck *hc = guard(NULL, 0);
    const char *ok[] = {
        "localhost",       "localhost:8000",      "LOCALHOST",
        "LocalHost:1",     "localhost.",          "localhost.:8000",
        "app.localhost",   "a.b.localhost:65535", "127.0.0.1",
        "127.0.0.1:8000",  "127.255.1.2",         "127.0.0.1.",
        "[::1]",           "[::1]:8000",          "[0:0:0:0:0:0:0:1]",
        "[0000::0001]:80", "[::ffff:127.0.0.1]",  "[::FFFF:7f00:1]:9",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        expect(hc, ok[i], true);
        assert_true(lyra_hostcheck_is_loopback(ok[i]));
    }
    lyra_hostcheck_free(hc);
}

/* Browsers always send a non-empty Host, so neither case is a rebinding. */
static void test_absent_or_empty_host_passes(void **state)
{
    struct lyra_hostcheck *hc = guard(NULL, 0);
    expect(hc, NULL, true);
    expect(hc, "", true);
    assert_false(lyra_hostcheck_is_loopback(NULL));
    assert_false(lyra_hostcheck_is_loopback(""));
    lyra_hostcheck_free(hc);
}

static void test_other_hosts_refused(void **state)
{
    struct lyra_hostcheck *hc = guard(NULL, 0);
    const char *refused[] = {
        /* names and addresses that are not loopback */
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "localhostx",
        "xlocalhost",
        "evil-localhost",
        "0.0.0.0",
        "0.0.0.0:8000",
        "10.0.0.1",
        "128.0.0.1",
        "[::]",
        "[::2]",
        "[fe80::1]",
        "[::ffff:10.0.0.1]",
        /* IPv4 spellings browsers never send */
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "127.0.0.01",
        "127.0.0.1.1",
        /* malformed */
        "localhost..",
        "..localhost",
        ".localhost",
        "local host",
        "localhost:",
        "localhost:80:80",
        "localhost:99999",
        "localhost:123456",
        "localhost:8o",
        "localhost:-1",
        "::1",
        "::1:8000",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1%25lo]",
        "[::1%lo]:80",
        "[127.0.0.1]",
        "localhost\r\nX: y",
        "localhost\x1b[2J",
        "evil.example@localhost",
        "localhost/x",
        "l\xc3\xb6"
        "calhost",
        "localhost\xff",
        "*.localhost",
        "*",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        expect(hc, refused[i], false);
        assert_false(lyra_hostcheck_is_loopback(refused[i]));
    }
    /* a label over 63 bytes and a name over 253 */
    char longlabel[80];
    memset(longlabel, 'a', 64);
    strcpy(longlabel + 64, ".localhost");
    expect(hc, longlabel, false);
    char longname[400];
    size_t n = 0;
    while (n < 250)
        n += (size_t)sprintf(longname + n, "abcdefgh.");
    strcpy(longname + n, "localhost");
    expect(hc, longname, false);
    lyra_hostcheck_free(hc);
}

static void test_refusal_says_why(void **state)
{
    struct lyra_hostcheck *hc = guard(NULL, 0);
    struct lyra_err err = {0};
    assert_int_equal(lyra_hostcheck_check(hc, "evil.example:8000", &err), LYRA_EPERM);
    assert_non_null(strstr(err.msg, "'evil.example:8000'"));
    assert_non_null(strstr(err.msg, "server.allowed_hosts"));
    assert_non_null(strstr(err.msg, "DNS rebinding"));
    /* control bytes and invalid UTF-8 are not echoed; a long value is clipped */
    assert_int_equal(lyra_hostcheck_check(hc, "a\nb\xff", &err), LYRA_EPERM);
    assert_non_null(strstr(err.msg, "'a?b?'"));
    assert_non_null(strstr(err.msg, "malformed"));
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(lyra_hostcheck_check(hc, big, &err), LYRA_EPERM);
    assert_non_null(strstr(err.msg, "xxx...'"));
    assert_true(strlen(err.msg) < 300);
    lyra_hostcheck_free(hc);
}

static void test_allowed_hosts(void **state)
{
    char *allowed[] = {"Lyra.Example.COM", "gpu-box.", "192.168.1.5", "fe80::1", "[2001:db8::7]", "my_host"};
    struct lyra_hostcheck *hc = guard(allowed, sizeof allowed / sizeof *allowed);
    const char *ok[] = {"lyra.example.com",
                        "LYRA.example.com:8000",
                        "lyra.example.com.",
                        "gpu-box",
                        "gpu-box.:1234",
                        "192.168.1.5",
                        "192.168.1.5:8000",
                        "[fe80::1]",
                        "[FE80:0::1]:8",
                        "[2001:db8:0:0::7]",
                        "[::ffff:192.168.1.5]",
                        "my_host",
                        "localhost",
                        "127.0.0.1"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        expect(hc, ok[i], true);
    const char *refused[] = {"example.com", "x.lyra.example.com", "lyra.example.com.evil",
                             "gpu-box..",   "192.168.1.6",        "[fe80::2]",
                             "fe80::1",     "evil.example"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        expect(hc, refused[i], false);
    lyra_hostcheck_free(hc);

    char *star[] = {"localhost", "*"};
    hc = guard(star, 2);
    expect(hc, "evil.example", true);
    expect(hc, "garbage here", true);
    lyra_hostcheck_free(hc);
}

static void test_bad_allowed_entries(void **state)
{
    const char *bad[] = {"lyra.example.com:8000", "",          "a b",  "[::1", "[::1]:80", "127.0.0.1:80",
                         "*.example.com",         "h\xc3\xa9", "1.2.3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *list[] = {"ok.example", (char *)bad[i]};
        struct lyra_hostcheck *hc = (struct lyra_hostcheck *)1;
        struct lyra_err err = {0};
        assert_int_equal(lyra_hostcheck_new(list, 2, &hc, &err), LYRA_EINVAL);
        assert_null(hc);
        assert_non_null(strstr(err.msg, "server.allowed_hosts[1]"));
        assert_true(lyra_utf8_valid(err.msg, strlen(err.msg)));
    }
    lyra_hostcheck_free(NULL);
}

static void test_listen_address(void **state)
{
    const char *loopback[] = {"127.0.0.1", "127.0.0.2",       "::1", "[::1]", "0:0::1",
                              "localhost", "::ffff:127.0.0.1"};
    for (size_t i = 0; i < sizeof loopback / sizeof *loopback; i++)
        assert_true(lyra_hostcheck_addr_is_loopback(loopback[i]));
    const char *remote[] = {"0.0.0.0",        "::",          "[::]", "192.168.1.5", "10.0.0.1", "fe80::1",
                            "::ffff:0.0.0.0", "example.com", "",     "127.0.0.1:80"};
    for (size_t i = 0; i < sizeof remote / sizeof *remote; i++)
        if (lyra_hostcheck_addr_is_loopback(remote[i]))
            fail_msg("'%s' taken as a loopback listen address", remote[i]);
    assert_false(lyra_hostcheck_addr_is_loopback(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loopback_hosts_pass), cmocka_unit_test(test_absent_or_empty_host_passes),
        cmocka_unit_test(test_other_hosts_refused), cmocka_unit_test(test_refusal_says_why),
        cmocka_unit_test(test_allowed_hosts),       cmocka_unit_test(test_bad_allowed_entries),
        cmocka_unit_test(test_listen_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
