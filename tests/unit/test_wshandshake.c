/* test_wshandshake.c — SHA-1 against RFC 3174's vectors, the accept key
 * against RFC 6455's example, and the handshake header checks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "http/wshandshake.h"

static void hex(const uint8_t d[20], char out[41])
{
    for (int i = 0; i < 20; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha1_vectors(void **state)
{
    uint8_t d[20];
    char h[41];
    lyra_ws_sha1("abc", 3, d);
    hex(d, h);
    assert_string_equal(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes: padding spills */
    lyra_ws_sha1(two, strlen(two), d);
    hex(d, h);
    assert_string_equal(h, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    lyra_ws_sha1("", 0, d);
    hex(d, h);
    assert_string_equal(h, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    char mil[1000];
    memset(mil, 'a', sizeof mil); /* several blocks */
    lyra_ws_sha1(mil, sizeof mil, d);
    hex(d, h);
    assert_string_equal(h, "291e9a6c66994949b57ba5e650361e98fc36b1ba");
}

static void test_accept_key(void **state)
{
    char out[29];
    lyra_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out); /* RFC 6455, 1.3 */
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_check_request(void **state)
{
    struct lyra_err e = {0};
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", key, "13", &e), 0);
    assert_int_equal(lyra_ws_check_request("WebSocket", "keep-alive, Upgrade", key, "13", &e), 0);
    assert_int_equal(lyra_ws_check_request(NULL, "Upgrade", key, "13", &e), LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("h2c", "Upgrade", key, "13", &e), LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("websocket", "keep-alive", key, "13", &e), LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgradex", key, "13", &e), LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", key, "8", &e), LYRA_EUNSUPPORTED);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", key, NULL, &e), LYRA_EUNSUPPORTED);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", "short", "13", &e), LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", "dGhlIHNhbXBsZSBub25j!Q==", "13", &e),
                     LYRA_EINVAL);
    assert_int_equal(lyra_ws_check_request("websocket", "Upgrade", NULL, "13", &e), LYRA_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha1_vectors),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_check_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
