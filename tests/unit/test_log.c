/* test_log.c — JSON lines, levels, and secrets never reaching the sink. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

static char path[64];

static int setup(void **state)
{
    snprintf(path, sizeof path, "/tmp/lyra-log-%d.jsonl", (int)getpid());
    unlink(path);
    return 0;
}

static int teardown(void **state)
{
    lyra_log_close();
    unlink(path);
    return 0;
}

static char *read_log(void)
{
    lyra_log_close();
    char *s = lyra_read_file(path, NULL);
    assert_non_null(s);
    return s;
}

static void test_json_lines(void **state)
{
    assert_int_equal(lyra_log_open("info", "json", path, NULL), 0);
    lyra_log(LYRA_LOG_INFO, "http", "req-1", json_pack("{s:i, s:s}", "status", 200, "path", "/health"), "request %d",
             7);
    lyra_debug("http", "hidden at info");
    char *s = read_log();
    char *nl = strchr(s, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, ""); /* exactly one line: debug was filtered */
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "component")), "http");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "request 7");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "req-1");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    assert_non_null(json_string_value(json_object_get(j, "ts")));
    json_decref(j);
    free(s);
}

static void test_secrets_redacted(void **state)
{
    assert_int_equal(lyra_log_open("debug", "json", path, NULL), 0);
    lyra_log(LYRA_LOG_WARN, "auth", NULL,
             json_pack("{s:s, s:s, s:{s:s}, s:s}", "api_key", "sk-SECRET1", "Authorization", "Bearer SECRET2",
                       "nested", "hf_token", "SECRET3", "user", "alice"),
             "login");
    char *s = read_log();
    assert_null(strstr(s, "SECRET"));
    assert_non_null(strstr(s, "<redacted>"));
    assert_non_null(strstr(s, "alice"));
    free(s);
}

static void test_text_format_and_levels(void **state)
{
    assert_int_equal(lyra_log_open("warn", "text", path, NULL), 0);
    lyra_info("x", "not shown");
    lyra_warn("store", "disk %s", "slow");
    char *s = read_log();
    assert_null(strstr(s, "not shown"));
    assert_non_null(strstr(s, "warn  store: disk slow"));
    free(s);
    struct lyra_err err = {0};
    assert_int_equal(lyra_log_open("loud", "json", NULL, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "loud"));
    assert_int_equal(lyra_log_open("info", "xml", NULL, &err), LYRA_EINVAL);
    assert_int_equal(lyra_log_open("info", "json", "/nonexistent/dir/log", &err), LYRA_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secrets_redacted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_format_and_levels, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
