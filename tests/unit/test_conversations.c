/* test_conversations.c — persisted conversations: create, append in order,
 * history for the worker, get, list (order, paging, counts), delete with its
 * messages, titles cut at UTF-8 boundaries, and migration 2 over a
 * database left at schema 1. */
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

#include "core/conversations.h"
#include "core/store.h"

static char dir[64], path[128];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/lyra-conv-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/lyra.db", dir);
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    if (!st)
        return -1;
    *state = st;
    return 0;
}

static int teardown(void **state)
{
    lyra_store_close(*state);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static struct lyra_conv_message user_msg(const char *text)
{
    return (struct lyra_conv_message){.role = "user",
                                      .content = text,
                                      .prompt_tokens = -1,
                                      .completion_tokens = -1,
                                      .cached_tokens = -1,
                                      .prompt_ms = -1,
                                      .predicted_ms = -1};
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void test_append_and_history(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char id[37];
    assert_int_equal(lyra_conv_create(st, id, &err), 0);
    assert_int_equal(strlen(id), 36);

    char *model = (char *)"x";
    assert_int_equal(lyra_conv_model(st, id, &model, &err), 0);
    assert_null(model); /* no turn finished yet */

    struct lyra_conv_message u = user_msg("hello there");
    int64_t mid = 0;
    assert_int_equal(lyra_conv_append(st, id, &u, &mid, &err), 0);
    assert_true(mid > 0);
    struct lyra_conv_message a = {.role = "assistant",
                                  .content = "hi!",
                                  .model = "tiny",
                                  .prompt_tokens = 12,
                                  .completion_tokens = 3,
                                  .cached_tokens = 0,
                                  .prompt_ms = 1.5,
                                  .predicted_ms = 2.25};
    assert_int_equal(lyra_conv_append(st, id, &a, NULL, &err), 0);
    u.content = "and again";
    assert_int_equal(lyra_conv_append(st, id, &u, NULL, &err), 0);
    assert_int_equal(lyra_conv_touch(st, id, "tiny", "hello there", &err), 0);

    json_t *hist;
    assert_int_equal(lyra_conv_messages(st, id, &hist, &err), 0);
    assert_int_equal(json_array_size(hist), 3);
    assert_string_equal(str(json_array_get(hist, 0), "role"), "user");
    assert_string_equal(str(json_array_get(hist, 0), "content"), "hello there");
    assert_string_equal(str(json_array_get(hist, 1), "role"), "assistant");
    assert_string_equal(str(json_array_get(hist, 1), "content"), "hi!");
    assert_string_equal(str(json_array_get(hist, 2), "content"), "and again");
    /* Exactly the worker's shape: nothing but role and content. */
    assert_int_equal(json_object_size(json_array_get(hist, 1)), 2);
    json_decref(hist);

    json_t *conv;
    assert_int_equal(lyra_conv_get(st, id, &conv, &err), 0);
    assert_string_equal(str(conv, "id"), id);
    assert_string_equal(str(conv, "title"), "hello there");
    assert_string_equal(str(conv, "model"), "tiny");
    assert_int_equal(json_integer_value(json_object_get(conv, "message_count")), 3);
    json_t *msgs = json_object_get(conv, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    json_t *m1 = json_array_get(msgs, 0), *m2 = json_array_get(msgs, 1);
    assert_int_equal(json_integer_value(json_object_get(m1, "seq")), 1);
    assert_null(json_object_get(m1, "usage"));
    assert_null(json_object_get(m1, "model"));
    assert_int_equal(json_integer_value(json_object_get(m2, "seq")), 2);
    assert_string_equal(str(m2, "model"), "tiny");
    json_t *usage = json_object_get(m2, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 12);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(usage, "cached_tokens")), 0);
    assert_true(json_real_value(json_object_get(json_object_get(m2, "timings"), "predicted_ms")) == 2.25);
    assert_non_null(strchr(str(m2, "created"), 'T'));
    json_decref(conv);

    assert_int_equal(lyra_conv_model(st, id, &model, &err), 0);
    assert_string_equal(model, "tiny");
    free(model);

    /* The title is set once: a later turn keeps the first one. */
    assert_int_equal(lyra_conv_touch(st, id, NULL, "something else", &err), 0);
    assert_int_equal(lyra_conv_get(st, id, &conv, &err), 0);
    assert_string_equal(str(conv, "title"), "hello there");
    assert_string_equal(str(conv, "model"), "tiny"); /* NULL model keeps the old one */
    json_decref(conv);

    /* A failed turn's message can be taken back; seq keeps counting on. */
    assert_int_equal(lyra_conv_delete_message(st, mid, &err), 0);
    assert_int_equal(lyra_conv_messages(st, id, &hist, &err), 0);
    assert_int_equal(json_array_size(hist), 2);
    assert_string_equal(str(json_array_get(hist, 0), "content"), "hi!");
    json_decref(hist);
}

static void test_missing_conversation(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    const char *nope = "00000000-0000-4000-8000-000000000000";
    struct lyra_conv_message u = user_msg("x");
    assert_int_equal(lyra_conv_append(st, nope, &u, NULL, &err), LYRA_ENOTFOUND);
    assert_non_null(strstr(err.msg, nope));
    char *model = NULL;
    assert_int_equal(lyra_conv_model(st, nope, &model, &err), LYRA_ENOTFOUND);
    json_t *j = NULL;
    assert_int_equal(lyra_conv_get(st, nope, &j, &err), LYRA_ENOTFOUND);
    assert_null(j);
    assert_int_equal(lyra_conv_touch(st, nope, "m", "t", &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_delete(st, nope, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_messages(st, nope, &j, &err), 0);
    assert_int_equal(json_array_size(j), 0);
    json_decref(j);
}

static int count_rows(struct lyra_store *st, const char *sql)
{
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(lyra_store_db(st), sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    return n;
}

static void test_list_and_delete(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char ids[5][37];
    struct lyra_conv_message u = user_msg("m");
    for (int i = 0; i < 5; i++) {
        assert_int_equal(lyra_conv_create(st, ids[i], &err), 0);
        for (int k = 0; k <= i; k++)
            assert_int_equal(lyra_conv_append(st, ids[i], &u, NULL, &err), 0);
    }
    /* Activity moves a conversation to the front. */
    usleep(5000);
    assert_int_equal(lyra_conv_touch(st, ids[1], "tiny", "first", &err), 0);

    json_t *list;
    int64_t total = 0;
    assert_int_equal(lyra_conv_list(st, 100, 0, &list, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(list), 5);
    assert_string_equal(str(json_array_get(list, 0), "id"), ids[1]);
    assert_string_equal(str(json_array_get(list, 0), "title"), "first");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "message_count")), 2);
    assert_string_equal(str(json_array_get(list, 1), "id"), ids[4]);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 1), "message_count")), 5);
    assert_true(json_is_null(json_object_get(json_array_get(list, 1), "title")));
    assert_null(json_object_get(json_array_get(list, 1), "messages"));
    json_decref(list);

    /* Paging: limit and offset, total unchanged. */
    assert_int_equal(lyra_conv_list(st, 2, 1, &list, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(str(json_array_get(list, 0), "id"), ids[4]);
    assert_string_equal(str(json_array_get(list, 1), "id"), ids[3]);
    json_decref(list);
    assert_int_equal(lyra_conv_list(st, 10, 5, &list, &total, &err), 0);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);

    /* Deleting takes the messages with it; a second delete is not found. */
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 15);
    assert_int_equal(lyra_conv_delete(st, ids[4], &err), 0);
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 10);
    assert_int_equal(lyra_conv_delete(st, ids[4], &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_list(st, 100, 0, &list, &total, &err), 0);
    assert_int_equal(total, 4);
    json_decref(list);
}

static void test_title_cut_at_utf8_boundary(void **state)
{
    char out[LYRA_CONV_TITLE_MAX * 4 + 1];
    assert_int_equal(lyra_conv_title("short", out, sizeof out), 5);
    assert_string_equal(out, "short");

    char ascii[100];
    memset(ascii, 'a', 99);
    ascii[99] = '\0';
    assert_int_equal(lyra_conv_title(ascii, out, sizeof out), 60);

    /* 59 ASCII then "é" (2 bytes) then more: 60 characters = 61 bytes. */
    char mixed[128];
    memset(mixed, 'b', 59);
    strcpy(mixed + 59, "\xc3\xa9zzz");
    assert_int_equal(lyra_conv_title(mixed, out, sizeof out), 61);
    assert_memory_equal(out + 59, "\xc3\xa9", 3);

    /* 70 four-byte characters: 60 kept, 240 bytes, valid UTF-8. */
    char emoji[70 * 4 + 1] = "";
    for (int i = 0; i < 70; i++)
        strcat(emoji, "\xf0\x9f\x8e\xb5");
    assert_int_equal(lyra_conv_title(emoji, out, sizeof out), 240);

    /* A small buffer never ends inside a sequence. */
    char small[6];
    assert_int_equal(lyra_conv_title("\xe2\x82\xac\xe2\x82\xac", small, sizeof small), 3);
    assert_string_equal(small, "\xe2\x82\xac");
}

/* A database from before migration 2 is upgraded in place, keeping its data. */
static void test_upgrades_schema_1(void **state)
{
    char old[160];
    snprintf(old, sizeof old, "%s/old.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(old, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "CREATE TABLE sessions (id TEXT PRIMARY KEY, started_ms INTEGER NOT NULL,"
                     " ended_ms INTEGER, clean INTEGER, pid INTEGER NOT NULL, version TEXT NOT NULL);"
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('k', '42');"
                     "PRAGMA user_version = 1;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(old, &err);
    assert_non_null(st);
    assert_int_equal(lyra_store_schema_version(st), 2);
    uint64_t v = 0;
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v), 0);
    assert_int_equal(v, 42);
    char id[37];
    assert_int_equal(lyra_conv_create(st, id, &err), 0);
    lyra_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_and_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_conversation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_and_delete, setup, teardown),
        cmocka_unit_test(test_title_cut_at_utf8_boundary),
        cmocka_unit_test_setup_teardown(test_upgrades_schema_1, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
