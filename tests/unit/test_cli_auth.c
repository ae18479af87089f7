/* test_cli_auth.c — the CLI's stored keys (cli/credentials.h: where the
 * file lives, reading, replacing and removing an entry, modes 0600/0700,
 * refusing a file others can read, keys never in messages) and the
 * --expires parser of `lyra keys create` (cli/expiry.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/credentials.h"
#include "cli/expiry.h"
#include "core/util.h"

static char root[64], dir[128];

#define KEY_A "lyra_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
#define KEY_B "lyra_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    strcpy(root, "/tmp/lyra-test-cli-auth-XXXXXX");
    if (!mkdtemp(root))
        return -1;
    snprintf(dir, sizeof dir, "%s/conf/lyra", root); /* two levels that do not exist yet */
    return 0;
}

static int teardown(void **state)
{
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static char *file_text(void)
{
    char path[200];
    snprintf(path, sizeof path, "%s/credentials", dir);
    return lyra_read_file(path, NULL);
}

static void write_creds(const char *text, int mode)
{
    assert_int_equal(lyra_mkdirs(dir), 0);
    char path[200];
    snprintf(path, sizeof path, "%s/credentials", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, (mode_t)mode), 0);
}

static void test_dir_precedence(void **state)
{
    char *d = NULL;
    setenv("LYRA_CONFIG_DIR", "/x/lyra-conf", 1);
    setenv("XDG_CONFIG_HOME", "/x/xdg", 1);
    setenv("HOME", "/x/home", 1);
    assert_int_equal(lyra_credentials_dir(&d), 0);
    assert_string_equal(d, "/x/lyra-conf");
    free(d);
    unsetenv("LYRA_CONFIG_DIR");
    assert_int_equal(lyra_credentials_dir(&d), 0);
    assert_string_equal(d, "/x/xdg/lyra");
    free(d);
    setenv("XDG_CONFIG_HOME", "", 1); /* empty counts as unset */
    assert_int_equal(lyra_credentials_dir(&d), 0);
    assert_string_equal(d, "/x/home/.config/lyra");
    free(d);
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("HOME");
    assert_int_equal(lyra_credentials_dir(&d), LYRA_ENOTFOUND);
    assert_null(d);
}

static void test_key_valid(void **state)
{
    assert_true(lyra_credentials_key_valid(KEY_A));
    assert_true(lyra_credentials_key_valid("0123456789abcdef!#$%"));
    assert_false(lyra_credentials_key_valid(""));
    assert_false(lyra_credentials_key_valid(NULL));
    assert_false(lyra_credentials_key_valid("lyra_abc def"));
    assert_false(lyra_credentials_key_valid("lyra_abc\r\nX-Injected: 1"));
    assert_false(lyra_credentials_key_valid("lyra_\xc3\xa9t\xc3\xa9"));
    char long_key[LYRA_CREDENTIALS_KEY_MAX + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    assert_false(lyra_credentials_key_valid(long_key));
    long_key[LYRA_CREDENTIALS_KEY_MAX] = '\0';
    assert_true(lyra_credentials_key_valid(long_key));
}

static void test_store_creates_private_file(void **state)
{
    struct lyra_err err = {0};
    assert_int_equal(lyra_credentials_store(dir, "http://127.0.0.1:8000/", KEY_A, &err), 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char path[200];
    snprintf(path, sizeof path, "%s/credentials", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *text = file_text();
    assert_string_equal(text, "http://127.0.0.1:8000 " KEY_A "\n"); /* the URL without its slash */
    free(text);
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://127.0.0.1:8000", &key, &err), 0);
    assert_string_equal(key, KEY_A);
    free(key);
    assert_int_equal(lyra_credentials_lookup(dir, "http://127.0.0.1:8000//", &key, &err), 0);
    assert_string_equal(key, KEY_A);
    free(key);
    /* Another port is another daemon. */
    assert_int_equal(lyra_credentials_lookup(dir, "http://127.0.0.1:8001", &key, &err), LYRA_ENOTFOUND);
    assert_null(key);
}

static void test_lookup_missing_file(void **state)
{
    struct lyra_err err = {0};
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://h:1", &key, &err), LYRA_ENOTFOUND);
    assert_null(key);
    /* Removing from no file changes nothing and creates nothing. */
    assert_int_equal(lyra_credentials_remove(dir, "http://h:1", &err), LYRA_ENOTFOUND);
    struct stat st;
    assert_int_equal(stat(dir, &st), -1);
}

static void test_parse_keeps_other_lines(void **state)
{
    write_creds("# my daemons\n"
                "\n"
                "http://a:1 " KEY_A "\n"
                "  http://b:2/\t" KEY_B "  \r\n"
                "not an entry with three words\n"
                "http://c:3\n",
                0600);
    struct lyra_err err = {0};
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://b:2", &key, &err), 0);
    assert_string_equal(key, KEY_B);
    free(key);
    /* A line with one word or three is no entry. */
    assert_int_equal(lyra_credentials_lookup(dir, "http://c:3", &key, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_credentials_lookup(dir, "not", &key, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_credentials_lookup(dir, "# my", &key, &err), LYRA_ENOTFOUND);

    /* Replacing a's entry keeps its place and every other line. */
    assert_int_equal(lyra_credentials_store(dir, "http://a:1", KEY_B, &err), 0);
    char *text = file_text();
    assert_string_equal(text, "# my daemons\n"
                              "\n"
                              "http://a:1 " KEY_B "\n"
                              "  http://b:2/\t" KEY_B "  \r\n"
                              "not an entry with three words\n"
                              "http://c:3\n");
    free(text);

    /* A new daemon is appended; removing b drops its line only. */
    assert_int_equal(lyra_credentials_store(dir, "http://d:4", KEY_A, &err), 0);
    assert_int_equal(lyra_credentials_remove(dir, "http://b:2", &err), 0);
    text = file_text();
    assert_string_equal(text, "# my daemons\n"
                              "\n"
                              "http://a:1 " KEY_B "\n"
                              "not an entry with three words\n"
                              "http://c:3\n"
                              "http://d:4 " KEY_A "\n");
    free(text);
    assert_int_equal(lyra_credentials_remove(dir, "http://b:2", &err), LYRA_ENOTFOUND);
}

static void test_duplicates_collapse(void **state)
{
    write_creds("http://a:1 " KEY_A "\nhttp://x:9 " KEY_A "\nhttp://a:1/ " KEY_A "\n", 0600);
    struct lyra_err err = {0};
    assert_int_equal(lyra_credentials_store(dir, "http://a:1", KEY_B, &err), 0);
    char *text = file_text();
    assert_string_equal(text, "http://a:1 " KEY_B "\nhttp://x:9 " KEY_A "\n");
    free(text);
}

static void test_file_without_final_newline(void **state)
{
    write_creds("http://a:1 " KEY_A, 0600);
    struct lyra_err err = {0};
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://a:1", &key, &err), 0);
    assert_string_equal(key, KEY_A);
    free(key);
    assert_int_equal(lyra_credentials_store(dir, "http://b:2", KEY_B, &err), 0);
    char *text = file_text();
    assert_string_equal(text, "http://a:1 " KEY_A "\nhttp://b:2 " KEY_B "\n");
    free(text);
}

static void test_refuses_open_file(void **state)
{
    write_creds("http://a:1 " KEY_A "\n", 0644);
    struct lyra_err err = {0};
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://a:1", &key, &err), LYRA_EPERM);
    assert_null(key);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_null(strstr(err.msg, KEY_A));
    assert_int_equal(lyra_credentials_store(dir, "http://a:1", KEY_B, &err), LYRA_EPERM);
    char *text = file_text();
    assert_string_equal(text, "http://a:1 " KEY_A "\n"); /* untouched */
    free(text);
}

static void test_bad_input_refused(void **state)
{
    struct lyra_err err = {0};
    assert_int_equal(lyra_credentials_store(dir, "http://a:1", "two words", &err), LYRA_EINVAL);
    assert_null(strstr(err.msg, "two words"));
    assert_int_equal(lyra_credentials_store(dir, "http://a:1 x", KEY_A, &err), LYRA_EINVAL);
    assert_int_equal(lyra_credentials_store(dir, "http://a:1\nhttp://evil", KEY_A, &err), LYRA_EINVAL);
    assert_int_equal(lyra_credentials_store(dir, "", KEY_A, &err), LYRA_EINVAL);
    assert_int_equal(lyra_credentials_store(dir, "///", KEY_A, &err), LYRA_EINVAL);
    struct stat st;
    assert_int_equal(stat(dir, &st), -1); /* nothing was written */
    /* A stored key that is malformed is refused, without showing it. */
    write_creds("http://a:1 lyra_\x01\x02secret\n", 0600);
    char *key = NULL;
    assert_int_equal(lyra_credentials_lookup(dir, "http://a:1", &key, &err), LYRA_EINVAL);
    assert_null(key);
    assert_null(strstr(err.msg, "secret"));
}

/* --- expiry --------------------------------------------------------- */

#define NOW_MS 1767225600000LL /* 2026-01-01T00:00:00Z */

static void test_expiry_durations(void **state)
{
    struct lyra_expiry e;
    struct lyra_err err = {0};
    static const struct {
        const char *text;
        int64_t s;
    } ok[] = {{"90m", 5400}, {"12h", 43200}, {"30d", 2592000}, {"2w", 1209600}, {"3600s", 3600}, {"1s", 1}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        assert_int_equal(lyra_expiry_parse(ok[i].text, NOW_MS, &e, &err), 0);
        assert_int_equal(e.in_s, ok[i].s);
        assert_int_equal(e.at_ms, 0);
    }
    static const char *const bad[] = {"",       "30", "0d",  "-1d", "1.5h", "30 d",
                                      "d",      "3y", "30D", "1dd", "h1",   "99999999999999999999d",
                                      "36600d0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err.msg[0] = '\0';
        assert_int_equal(lyra_expiry_parse(bad[i], NOW_MS, &e, &err), LYRA_EINVAL);
        assert_true(err.msg[0] != '\0');
    }
    assert_int_equal(lyra_expiry_parse("30", NOW_MS, &e, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "unit"));
    assert_int_equal(lyra_expiry_parse(NULL, NOW_MS, &e, &err), LYRA_EINVAL);
    /* 100 years is the bound. */
    assert_int_equal(lyra_expiry_parse("36600d", NOW_MS, &e, &err), 0);
    assert_int_equal(lyra_expiry_parse("36601d", NOW_MS, &e, &err), LYRA_EINVAL);
    assert_int_equal(lyra_expiry_parse("5228w", NOW_MS, &e, &err), 0);
    assert_int_equal(lyra_expiry_parse("5229w", NOW_MS, &e, &err), LYRA_EINVAL);
}

static void test_expiry_dates(void **state)
{
    struct lyra_expiry e;
    struct lyra_err err = {0};
    assert_int_equal(lyra_expiry_parse("2026-01-02", NOW_MS, &e, &err), 0);
    assert_int_equal(e.in_s, 0);
    assert_int_equal(e.at_ms, NOW_MS + 86400000LL);
    assert_int_equal(lyra_expiry_parse("2028-02-29", NOW_MS, &e, &err), 0); /* a leap day */
    assert_int_equal(e.at_ms, 1835395200000LL);
    assert_int_equal(lyra_expiry_parse("2100-03-01", NOW_MS, &e, &err), 0);
    assert_int_equal(e.at_ms, 4107542400000LL);
    /* Not dates. */
    static const char *const bad[] = {"2027-02-29", "2100-02-29", "2026-13-01", "2026-00-10", "2026-04-31",
                                      "2026-01-00", "2026-1-01x", "20260-01-0", "2026/01/02", "2026-01-2 "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(lyra_expiry_parse(bad[i], NOW_MS, &e, &err), LYRA_EINVAL);
    /* Today (it began before now) and the past are refused. */
    assert_int_equal(lyra_expiry_parse("2026-01-01", NOW_MS + 1, &e, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "future"));
    assert_int_equal(lyra_expiry_parse("1999-12-31", NOW_MS, &e, &err), LYRA_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dir_precedence),
        cmocka_unit_test(test_key_valid),
        cmocka_unit_test_setup_teardown(test_store_creates_private_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_keeps_other_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_collapse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_without_final_newline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_open_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_refused, setup, teardown),
        cmocka_unit_test(test_expiry_durations),
        cmocka_unit_test(test_expiry_dates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
