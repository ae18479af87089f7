/* test_store.c — SQLite state: migrations, sessions, unclean detection,
 * refusing non-databases and newer schemas. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/store.h"

static char dir[64], path[128];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/lyra-store-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/lyra.db", dir);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static void test_migrates_fresh_database(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_non_null(st);
    assert_int_equal(lyra_store_schema_version(st), 2);
    assert_int_equal(lyra_store_check(st, &err), 0);
    lyra_store_close(st);
    /* Opening again applies nothing and keeps the version. */
    st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_schema_version(st), 2);
    lyra_store_close(st);
}

static void test_sessions_clean_and_unclean(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    char id1[40], id2[40], id3[40];
    struct lyra_session_info prev;
    int n = -1;
    assert_int_equal(lyra_store_session_begin(st, "0.1.0", id1, &prev, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(lyra_store_session_end(st, id1, &err), 0);

    /* A clean end leaves nothing to recover. */
    assert_int_equal(lyra_store_session_begin(st, "0.1.0", id2, &prev, &n, &err), 0);
    assert_int_equal(n, 0);
    lyra_store_close(st); /* "crash": the session is never ended */

    st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_session_begin(st, "0.1.1", id3, &prev, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(prev.id, id2);
    assert_string_equal(prev.version, "0.1.0");
    assert_int_equal(prev.pid, getpid());
    assert_string_not_equal(id2, id3);
    lyra_store_close(st);

    /* The unclean session was closed as unclean: reported only once. */
    st = lyra_store_open(path, &err);
    char id4[40];
    assert_int_equal(lyra_store_session_begin(st, "0.1.1", id4, &prev, &n, &err), 0);
    assert_int_equal(n, 1); /* id3 was never ended either */
    assert_string_equal(prev.id, id3);
    sqlite3_stmt *s;
    sqlite3_prepare_v2(lyra_store_db(st), "SELECT clean FROM sessions WHERE id = ?", -1, &s, NULL);
    sqlite3_bind_text(s, 1, id2, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 0);
    sqlite3_finalize(s);
    lyra_store_close(st);
}

static void test_meta(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    uint64_t v = 7;
    assert_int_equal(lyra_store_meta_get_u64(st, "nope", &v), LYRA_ENOTFOUND);
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 18446744073709551615ULL), 0);
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v), 0);
    assert_true(v == 18446744073709551615ULL);
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 5), 0);
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v), 0);
    assert_int_equal(v, 5);
    lyra_store_close(st);
}

static void test_rejects_non_database(void **state)
{
    FILE *f = fopen(path, "w");
    fputs("this is not an SQLite database, just some text that is long enough to matter....", f);
    fclose(f);
    struct lyra_err err = {0};
    assert_null(lyra_store_open(path, &err));
    assert_int_equal(err.code, LYRA_EDB);
    assert_non_null(strstr(err.msg, "not a database"));
    unlink(path);
}

static void test_rejects_newer_schema(void **state)
{
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "PRAGMA user_version = 99;", NULL, NULL, NULL);
    sqlite3_close(db);
    struct lyra_err err = {0};
    assert_null(lyra_store_open(path, &err));
    assert_non_null(strstr(err.msg, "newer"));
    unlink(path);
}

static void test_unopenable_path(void **state)
{
    struct lyra_err err = {0};
    assert_null(lyra_store_open("/nonexistent-dir/for/sure/lyra.db", &err));
    assert_int_equal(err.code, LYRA_EDB);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/for/sure/lyra.db"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrates_fresh_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_clean_and_unclean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_non_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_newer_schema, setup, teardown),
        cmocka_unit_test(test_unopenable_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
