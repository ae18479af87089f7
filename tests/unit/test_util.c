/* test_util.c — UTF-8 validation, ids, timestamps, files, error table. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>
#include <unistd.h>

#include "core/error.h"
#include "core/util.h"

static void test_utf8(void **state)
{
    assert_true(lyra_utf8_valid("plain ascii", 11));
    assert_true(lyra_utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
    assert_false(lyra_utf8_valid("\xc3\x28", 2));          /* bad continuation */
    assert_false(lyra_utf8_valid("\xc0\xaf", 2));          /* overlong '/' */
    assert_false(lyra_utf8_valid("\xed\xa0\x80", 3));      /* UTF-16 surrogate */
    assert_false(lyra_utf8_valid("\xf4\x90\x80\x80", 4));  /* beyond U+10FFFF */
    assert_false(lyra_utf8_valid("\xe2\x82", 2));          /* truncated */
    assert_false(lyra_utf8_valid("\xff", 1));
    assert_true(lyra_utf8_valid("", 0));
}

/* The reproduction of the worker-killing request: a role of 31 ASCII bytes
 * and an "é" cut by "%.32s" became invalid UTF-8 that jansson refused. */
static void test_utf8_clip_and_scrub(void **state)
{
    const char *role = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9"; /* 31 + 2 bytes */
    assert_int_equal(lyra_utf8_clip(role, 32), 31);
    assert_int_equal(lyra_utf8_clip(role, 33), 33);
    assert_int_equal(lyra_utf8_clip(role, 100), 33);
    assert_int_equal(lyra_utf8_clip("\xf0\x9f\x98\x80" "x", 3), 0);
    char buf[64];
    snprintf(buf, sizeof buf, "unknown role '%.*s'", (int)lyra_utf8_clip(role, 32), role);
    assert_true(lyra_utf8_valid(buf, strlen(buf)));

    char cut[] = "ab\xe2\x82"; /* a euro sign cut after two bytes */
    assert_string_equal(lyra_utf8_scrub(cut), "ab");
    char bad[] = "a\xff" "b\xc0\xaf" "c";
    assert_string_equal(lyra_utf8_scrub(bad), "a?b??c");
    char good[] = "caf\xc3\xa9";
    assert_string_equal(lyra_utf8_scrub(good), "caf\xc3\xa9");

    /* lyra_fmt never leaves half a character, whatever the buffer size. */
    for (size_t cap = 1; cap < 12; cap++) {
        char out[12];
        lyra_fmt(out, cap, "%s", "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac");
        assert_true(lyra_utf8_valid(out, strlen(out)));
        assert_int_equal(strlen(out) % 3, 0);
    }
    struct lyra_err err;
    lyra_err_set(&err, LYRA_EINVAL, "%s", role);
    assert_true(lyra_utf8_valid(err.msg, strlen(err.msg)));
    char big[2000];
    memset(big, 'a', sizeof big);
    memcpy(big + LYRA_ERR_MSG_MAX - 2, "\xc3\xa9", 2); /* straddles the end of err.msg */
    big[sizeof big - 1] = '\0';
    lyra_err_set(&err, LYRA_EINVAL, "%s", big);
    assert_true(lyra_utf8_valid(err.msg, strlen(err.msg)));
    assert_int_equal(strlen(err.msg), LYRA_ERR_MSG_MAX - 2);
}

static void test_ids(void **state)
{
    char a[33], b[33], u[37];
    lyra_random_hex(a, 16);
    lyra_random_hex(b, 16);
    assert_int_equal(strlen(a), 32);
    assert_string_not_equal(a, b);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    lyra_uuid4(u);
    assert_int_equal(strlen(u), 36);
    assert_int_equal(u[14], '4');
    assert_true(strchr("89ab", u[19]) != NULL);
}

static void test_timestamp(void **state)
{
    char buf[40];
    lyra_format_ts(1795780800123LL, buf, sizeof buf); 
    assert_string_equal(buf, "2026-11-27T12:00:00.123Z");
}

static void test_files(void **state)
{
    char dir[] = "/tmp/lyra-util-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char nested[128], file[160];
    snprintf(nested, sizeof nested, "%s/a/b/c", dir);
    assert_int_equal(lyra_mkdirs(nested), 0);
    assert_int_equal(lyra_mkdirs(nested), 0); /* idempotent */
    snprintf(file, sizeof file, "%s/f.txt", nested);
    assert_int_equal(lyra_write_file_atomic(file, "hello", 5, 0600), 0);
    size_t len = 0;
    char *got = lyra_read_file(file, &len);
    assert_non_null(got);
    assert_int_equal(len, 5);
    assert_string_equal(got, "hello");
    free(got);
    /* A path below a regular file cannot be a directory. */
    char below[200];
    snprintf(below, sizeof below, "%s/x", file);
    assert_int_equal(lyra_mkdirs(below), -ENOTDIR);
    assert_null(lyra_read_file("/nonexistent/file", NULL));
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_error_table(void **state)
{
    assert_string_equal(lyra_strerror(LYRA_ENOTFOUND), "not found");
    assert_string_equal(lyra_errname(LYRA_ETOOBIG), "TOOBIG");
    assert_int_equal(lyra_err_http_status(LYRA_ETOOBIG), 413);
    assert_int_equal(lyra_err_http_status(12345), 500);
    struct lyra_err err;
    assert_int_equal(lyra_err_set(&err, LYRA_EINVAL, "bad %s", "thing"), LYRA_EINVAL);
    assert_string_equal(err.msg, "bad thing");
    assert_int_equal(lyra_err_set(NULL, LYRA_EIO, "ignored"), LYRA_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8), cmocka_unit_test(test_utf8_clip_and_scrub),  cmocka_unit_test(test_ids),         cmocka_unit_test(test_timestamp),
        cmocka_unit_test(test_files), cmocka_unit_test(test_error_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
