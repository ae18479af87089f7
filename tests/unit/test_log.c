/* test_log.c — JSON lines, levels, secrets never reaching the sink (and
 * ordinary fields such as max_tokens untouched), text lines that client text
 * cannot forge, and lines never lost to invalid UTF-8. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static void test_secret_names_match_whole(void **state)
{
    const char *secret[] = {"authorization", "Authorization", "proxy-authorization", "api_key", "API_KEY",
                            "api-key", "x-api-key", "admin_key", "key", "Key", "token", "access_token",
                            "refresh_token", "password", "secret", "hf_token", "HF-Token", "cookie",
                            "Set-Cookie", "set_cookie", "client_secret"};
    for (size_t i = 0; i < sizeof secret / sizeof *secret; i++)
        if (!lyra_log_is_secret_key(secret[i]))
            fail_msg("'%s' is not redacted", secret[i]);
    const char *plain[] = {"max_tokens", "prompt_tokens", "completion_tokens", "tokens", "n_tokens",
                           "tokens_per_s", "keep_alive_s", "key_count", "keys", "monkey", "tokenizer",
                           "secretary", "passwords_checked", "cookies_seen", "", "keyx", "xkey"};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++)
        if (lyra_log_is_secret_key(plain[i]))
            fail_msg("'%s' is redacted", plain[i]);

    /* In a line: ordinary counts survive, secrets in nested objects and in
     * arrays do not, and a shared fields object is not changed. */
    assert_int_equal(lyra_log_open("info", "json", path, NULL), 0);
    json_t *shared = json_pack("{s:s}", "token", "SECRET4");
    lyra_log(LYRA_LOG_INFO, "infer", NULL,
             json_pack("{s:i, s:i, s:[{s:s}], s:O}", "max_tokens", 512, "prompt_tokens", 7, "headers", "Cookie",
                       "SECRET5", "auth", shared),
             "done");
    char *s = read_log();
    assert_null(strstr(s, "SECRET"));
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 512);
    assert_int_equal(json_integer_value(json_object_get(j, "prompt_tokens")), 7);
    json_decref(j);
    free(s);
    assert_string_equal(json_string_value(json_object_get(shared, "token")), "SECRET4");
    json_decref(shared);
}

/* Counts the lines of s. */
static int lines_of(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_text_escapes_control_characters(void **state)
{
    assert_int_equal(lyra_log_open("info", "text", path, NULL), 0);
    const char *client = "tiny\n2030-01-01T00:00:00.000Z info  auth: admin logged in\x1b[2J\r\x07\x7f";
    lyra_log(LYRA_LOG_WARN, "http", "rid\n1",
             json_pack("{s:s, s:s}", "model", client, "csi", "a\xc2\x9b" "31mred"),
             "unknown model '%s' (path C:\\x)", client);
    char *s = read_log();
    assert_int_equal(lines_of(s), 1);
    assert_null(strchr(s, '\x1b'));
    assert_null(strchr(s, '\r'));
    assert_null(strchr(s, '\x07'));
    assert_null(strchr(s, '\x7f'));
    assert_null(strstr(s, "\xc2\x9b"));
    assert_non_null(strstr(s, "unknown model 'tiny\\n2030-01-01T00:00:00.000Z info  auth: admin logged in"
                              "\\x1b[2J\\r\\x07\\x7f' (path C:\\\\x)"));
    assert_non_null(strstr(s, " request_id=rid\\n1"));
    assert_non_null(strstr(s, " csi=a\\u009b31mred"));
    free(s);
    /* ordinary UTF-8 is kept as it is */
    assert_int_equal(lyra_log_open("info", "text", path, NULL), 0);
    lyra_info("chat", "r\xc3\xb4le \xe2\x80\x94 \xf0\x9f\x98\x80");
    s = read_log();
    assert_non_null(strstr(s, "chat: r\xc3\xb4le \xe2\x80\x94 \xf0\x9f\x98\x80\n"));
    free(s);
}

static void test_invalid_utf8_never_drops_a_line(void **state)
{
    /* JSON: the message keeps its text with '?' for the bad bytes. */
    assert_int_equal(lyra_log_open("info", "json", path, NULL), 0);
    lyra_log(LYRA_LOG_WARN, "api", "req\xff", NULL, "unknown role '%s'", "ab\xff\xfe" "cd");
    /* a message longer than the line buffer, cut inside a character */
    char big[3001];
    for (size_t i = 0; i < 1500; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[3000] = '\0';
    lyra_info("api", "%s", big);
    /* a field that jansson would refuse to encode */
    lyra_log(LYRA_LOG_INFO, "api", NULL, json_pack("{s:o}", "bad", json_string_nocheck("x\xff")), "with field");
    /* lyra_log_string keeps client text as a field */
    lyra_log(LYRA_LOG_INFO, "http", NULL, json_pack("{s:o}", "path", lyra_log_string("/v1/\xff")), "request");
    char *s = read_log();
    assert_int_equal(lines_of(s), 4);
    char *line = s;
    json_t *j[4];
    for (int i = 0; i < 4; i++) {
        char *nl = strchr(line, '\n');
        *nl = '\0';
        j[i] = json_loads(line, 0, NULL);
        if (!j[i])
            fail_msg("line %d is not JSON: %s", i + 1, line);
        line = nl + 1;
    }
    assert_string_equal(json_string_value(json_object_get(j[0], "msg")), "unknown role 'ab??cd'");
    assert_string_equal(json_string_value(json_object_get(j[0], "request_id")), "req?");
    const char *m = json_string_value(json_object_get(j[1], "msg"));
    assert_non_null(m);
    assert_true(strlen(m) >= 2000 && strlen(m) % 2 == 0);
    assert_string_equal(json_string_value(json_object_get(j[2], "msg")), "with field");
    assert_non_null(json_object_get(j[2], "log_error"));
    assert_string_equal(json_string_value(json_object_get(j[3], "path")), "/v1/?");
    for (int i = 0; i < 4; i++)
        json_decref(j[i]);
    free(s);

    /* Text: bad bytes are escaped, not dropped. */
    assert_int_equal(lyra_log_open("info", "text", path, NULL), 0);
    lyra_log(LYRA_LOG_INFO, "api", NULL, json_pack("{s:o}", "bad", json_string_nocheck("x\xff")), "m\xff");
    s = read_log();
    assert_non_null(strstr(s, "api: m? bad=x\\xff\n"));
    free(s);
}

static void test_log_file_is_private(void **state)
{
    mode_t old = umask(0);
    int rc = lyra_log_open("info", "json", path, NULL);
    umask(old);
    assert_int_equal(rc, 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
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
        cmocka_unit_test_setup_teardown(test_secret_names_match_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_escapes_control_characters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_utf8_never_drops_a_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_file_is_private, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
