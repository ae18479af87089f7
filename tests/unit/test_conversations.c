/* test_conversations.c — persisted conversations: turns stored whole (user
 * message and reply in one transaction, a first turn creating the
 * conversation), nothing stored for a turn that fails midway or at COMMIT,
 * the history for the worker, get, list (order, paging, counts), delete
 * with its messages, asynchronous turns seen by later reads, titles cut at
 * UTF-8 boundaries, claims of conversations with a turn in flight, and
 * migration 2 over a database left at schema 1. */
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
#include "core/util.h"

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

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* A turn with a reply "re: TEXT" from model "tiny" (usage and timings set). */
static struct lyra_conv_turn turn(const char *conv_id, bool create, const char *text, char *reply_buf,
                                  size_t reply_len)
{
    snprintf(reply_buf, reply_len, "re: %s", text);
    return (struct lyra_conv_turn){.conv_id = conv_id,
                                   .create = create,
                                   .user_text = text,
                                   .reply = {.content = reply_buf,
                                             .model = "tiny",
                                             .prompt_tokens = 12,
                                             .completion_tokens = 3,
                                             .cached_tokens = 0,
                                             .prompt_ms = 1.5,
                                             .predicted_ms = 2.25}};
}

static int save(struct lyra_store *st, const char *id, bool create, const char *text, struct lyra_err *err)
{
    char reply[256];
    struct lyra_conv_turn t = turn(id, create, text, reply, sizeof reply);
    return lyra_conv_save_turn(st, &t, err);
}

struct query {
    const char *sql;
    int value;
};

static int job_query(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct query *q = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, q->sql, -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, q->sql);
    q->value = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    return 0;
}

static int count_rows(struct lyra_store *st, const char *sql)
{
    struct query q = {sql, -1};
    struct lyra_err err = {0};
    if (lyra_store_run(st, job_query, &q, &err) < 0)
        fail_msg("%s", err.msg);
    return q.value;
}

static int job_exec(sqlite3 *db, void *arg, struct lyra_err *err)
{
    if (sqlite3_exec(db, arg, NULL, NULL, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "exec");
    return 0;
}

static void test_turns_and_history(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char id[37];
    lyra_uuid4(id);
    char *model = (char *)"x";
    json_t *hist = (json_t *)1;
    assert_int_equal(lyra_conv_history(st, id, NULL, &model, &hist, &err), LYRA_ENOTFOUND);
    assert_null(model);
    assert_null(hist);

    /* The first turn creates the conversation, with its title and model. */
    assert_int_equal(save(st, id, true, "hello there", &err), 0);
    assert_int_equal(save(st, id, false, "and again", &err), 0);

    assert_int_equal(lyra_conv_history(st, id, NULL, &model, &hist, &err), 0);
    assert_string_equal(model, "tiny");
    free(model);
    assert_int_equal(json_array_size(hist), 4);
    const char *roles[] = {"user", "assistant", "user", "assistant"};
    const char *texts[] = {"hello there", "re: hello there", "and again", "re: and again"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(str(json_array_get(hist, i), "role"), roles[i]);
        assert_string_equal(str(json_array_get(hist, i), "content"), texts[i]);
        /* Exactly the worker's shape: nothing but role and content. */
        assert_int_equal(json_object_size(json_array_get(hist, i)), 2);
    }
    json_decref(hist);

    json_t *conv;
    assert_int_equal(lyra_conv_get(st, id, NULL, &conv, &err), 0);
    assert_string_equal(str(conv, "id"), id);
    assert_string_equal(str(conv, "title"), "hello there"); /* the first turn's; kept */
    assert_string_equal(str(conv, "model"), "tiny");
    assert_int_equal(json_integer_value(json_object_get(conv, "message_count")), 4);
    json_t *msgs = json_object_get(conv, "messages");
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
    assert_int_equal(json_integer_value(json_object_get(json_array_get(msgs, 3), "seq")), 4);
    json_decref(conv);

    /* A reply without a model keeps the conversation's. */
    struct lyra_conv_turn t = {.conv_id = id,
                               .user_text = "third",
                               .reply = {.content = "ok",
                                         .prompt_tokens = -1,
                                         .completion_tokens = -1,
                                         .cached_tokens = -1,
                                         .prompt_ms = -1,
                                         .predicted_ms = -1}};
    assert_int_equal(lyra_conv_save_turn(st, &t, &err), 0);
    assert_int_equal(lyra_conv_get(st, id, NULL, &conv, &err), 0);
    assert_string_equal(str(conv, "model"), "tiny");
    assert_null(json_object_get(json_array_get(json_object_get(conv, "messages"), 5), "usage"));
    json_decref(conv);
}

static void test_missing_conversation(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    const char *nope = "00000000-0000-4000-8000-000000000000";
    /* A turn for a conversation deleted meanwhile stores nothing. */
    assert_int_equal(save(st, nope, false, "x", &err), LYRA_ENOTFOUND);
    assert_non_null(strstr(err.msg, nope));
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 0);
    json_t *j = NULL;
    assert_int_equal(lyra_conv_get(st, nope, NULL, &j, &err), LYRA_ENOTFOUND);
    assert_null(j);
    assert_int_equal(lyra_conv_delete(st, nope, NULL, &err), LYRA_ENOTFOUND);
}

static void test_failed_turn_stores_nothing(void **state)
{
    /* A failure after the user message was inserted (a trigger refuses one
     * reply), and a failure at COMMIT (a deferred constraint that one reply
     * violates): the turn is rolled back whole — no message, and no
     * conversation when it was the first turn — and the store goes on. */
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    assert_int_equal(
        lyra_store_run(
            st, job_exec,
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'BOOM'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            "CREATE TABLE guard (c TEXT REFERENCES conversations(id) DEFERRABLE INITIALLY DEFERRED);"
            "CREATE TRIGGER at_commit AFTER INSERT ON messages WHEN NEW.content = 'LATE'"
            " BEGIN INSERT INTO guard VALUES ('no-such-conversation'); END;",
            &err),
        0);
    char id[37], fresh[37];
    lyra_uuid4(id);
    lyra_uuid4(fresh);
    assert_int_equal(save(st, id, true, "first", &err), 0);
    const char *bad[] = {"BOOM", "LATE"};
    for (int i = 0; i < 2; i++) {
        struct lyra_conv_turn t = {.conv_id = id,
                                   .user_text = "never stored",
                                   .reply = {.content = bad[i],
                                             .prompt_tokens = -1,
                                             .completion_tokens = -1,
                                             .cached_tokens = -1,
                                             .prompt_ms = -1,
                                             .predicted_ms = -1}};
        assert_int_equal(lyra_conv_save_turn(st, &t, &err), LYRA_EDB);
        assert_non_null(strstr(err.msg, i == 0 ? "injected failure" : "FOREIGN KEY"));
        t.conv_id = fresh;
        t.create = true;
        assert_int_equal(lyra_conv_save_turn(st, &t, &err), LYRA_EDB);
    }
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 2);
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages WHERE content = 'never stored'"), 0);
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM conversations"), 1);
    json_t *j = NULL;
    assert_int_equal(lyra_conv_get(st, fresh, NULL, &j, &err), LYRA_ENOTFOUND);
    /* Not left inside a transaction: the next turn commits, numbered on. */
    assert_int_equal(save(st, id, false, "second", &err), 0);
    assert_int_equal(lyra_conv_get(st, id, NULL, &j, &err), 0);
    json_t *msgs = json_object_get(j, "messages");
    assert_int_equal(json_array_size(msgs), 4);
    assert_string_equal(str(json_array_get(msgs, 2), "content"), "second");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(msgs, 3), "seq")), 4);
    json_decref(j);
}

struct saved {
    int calls, rc;
};

static void on_saved(int rc, const struct lyra_err *err, void *ud)
{
    struct saved *s = ud;
    s->calls++;
    s->rc = rc;
}

static void test_async_turn_seen_by_later_reads(void **state)
{
    /* Queued from a thread that must not wait (the supervisor loop): the
     * call copies the turn and returns; any read queued afterwards sees it. */
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char id[37];
    lyra_uuid4(id);
    char *text = strdup("asynchronous");
    char reply[64];
    struct lyra_conv_turn t = turn(id, true, text, reply, sizeof reply);
    struct saved s = {0, 1};
    assert_int_equal(lyra_conv_save_turn_async(st, &t, on_saved, &s), 0);
    memset(text, 'Z', strlen(text)); /* the caller's strings may go at once */
    memset(reply, 'Z', strlen(reply));
    free(text);
    json_t *conv;
    assert_int_equal(lyra_conv_get(st, id, NULL, &conv, &err), 0);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.rc, 0);
    json_t *msgs = json_object_get(conv, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(str(json_array_get(msgs, 0), "content"), "asynchronous");
    assert_string_equal(str(json_array_get(msgs, 1), "content"), "re: asynchronous");
    json_decref(conv);

    /* A failed one reports through the callback. */
    char nope[37];
    lyra_uuid4(nope);
    t = turn(nope, false, "lost", reply, sizeof reply);
    assert_int_equal(lyra_conv_save_turn_async(st, &t, on_saved, &s), 0);
    int64_t total = 0;
    json_t *list;
    assert_int_equal(lyra_conv_list(st, NULL, 10, 0, &list, &total, &err), 0);
    json_decref(list);
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.rc, LYRA_ENOTFOUND);
}

static void test_list_and_delete(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char ids[5][37];
    for (int i = 0; i < 5; i++) {
        lyra_uuid4(ids[i]);
        for (int k = 0; k <= i; k++)
            assert_int_equal(save(st, ids[i], k == 0, k == 0 ? "first" : "more", &err), 0);
    }
    /* Activity moves a conversation to the front. */
    usleep(5000);
    assert_int_equal(save(st, ids[1], false, "again", &err), 0);

    json_t *list;
    int64_t total = 0;
    assert_int_equal(lyra_conv_list(st, NULL, 100, 0, &list, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(list), 5);
    assert_string_equal(str(json_array_get(list, 0), "id"), ids[1]);
    assert_string_equal(str(json_array_get(list, 0), "title"), "first");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "message_count")), 6);
    assert_string_equal(str(json_array_get(list, 1), "id"), ids[4]);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 1), "message_count")), 10);
    assert_null(json_object_get(json_array_get(list, 1), "messages"));
    json_decref(list);

    /* Paging: limit and offset, total unchanged. */
    assert_int_equal(lyra_conv_list(st, NULL, 2, 1, &list, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(str(json_array_get(list, 0), "id"), ids[4]);
    assert_string_equal(str(json_array_get(list, 1), "id"), ids[3]);
    json_decref(list);
    assert_int_equal(lyra_conv_list(st, NULL, 10, 5, &list, &total, &err), 0);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);

    /* Deleting takes the messages with it; a second delete is not found. */
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 32);
    assert_int_equal(lyra_conv_delete(st, ids[4], NULL, &err), 0);
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM messages"), 22);
    assert_int_equal(lyra_conv_delete(st, ids[4], NULL, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_list(st, NULL, 100, 0, &list, &total, &err), 0);
    assert_int_equal(total, 4);
    json_decref(list);
}

/* Owners: a conversation is its creator's; a filter for another owner
 * (or for anyone, on a conversation from before owners) sees nothing —
 * not found, exactly as a missing one — while NULL sees all. */
static void test_owners(void **state)
{
    struct lyra_store *st = *state;
    struct lyra_err err = {0};
    char alice[37], bob[37], legacy[37], reply[256];
    lyra_uuid4(alice);
    lyra_uuid4(bob);
    lyra_uuid4(legacy);
    struct lyra_conv_turn t = turn(alice, true, "hi from alice", reply, sizeof reply);
    t.owner = "alice";
    assert_int_equal(lyra_conv_save_turn(st, &t, &err), 0);
    t = turn(bob, true, "hi from bob", reply, sizeof reply);
    t.owner = "bob";
    assert_int_equal(lyra_conv_save_turn_async(st, &t, NULL, NULL), 0); /* the copy keeps the owner */
    assert_int_equal(save(st, legacy, true, "from before owners", &err), 0); /* owner NULL */
    /* A later turn of alice's conversation keeps her as the owner. */
    assert_int_equal(save(st, alice, false, "again", &err), 0);

    json_t *list, *j;
    int64_t total;
    assert_int_equal(lyra_conv_list(st, "alice", 10, 0, &list, &total, &err), 0);
    assert_int_equal(total, 1);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "id")), alice);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "owner")), "alice");
    json_decref(list);
    assert_int_equal(lyra_conv_list(st, "carol", 10, 0, &list, &total, &err), 0);
    assert_int_equal(total, 0);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    assert_int_equal(lyra_conv_list(st, NULL, 10, 0, &list, &total, &err), 0);
    assert_int_equal(total, 3);
    json_decref(list);

    /* get / history / delete of someone else's: not found, and untouched. */
    assert_int_equal(lyra_conv_get(st, bob, "alice", &j, &err), LYRA_ENOTFOUND);
    assert_null(j);
    assert_int_equal(lyra_conv_get(st, legacy, "alice", &j, &err), LYRA_ENOTFOUND);
    char *model = NULL;
    json_t *hist = NULL;
    assert_int_equal(lyra_conv_history(st, bob, "alice", &model, &hist, &err), LYRA_ENOTFOUND);
    assert_null(hist);
    assert_int_equal(lyra_conv_delete(st, bob, "alice", &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_delete(st, legacy, "alice", &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_conv_get(st, bob, "bob", &j, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "message_count")), 2);
    json_decref(j);
    assert_int_equal(lyra_conv_history(st, alice, "alice", &model, &hist, &err), 0);
    assert_int_equal(json_array_size(hist), 4);
    free(model);
    json_decref(hist);
    /* NULL (conversations.all) reaches every one, the legacy one included. */
    assert_int_equal(lyra_conv_get(st, legacy, NULL, &j, &err), 0);
    assert_true(json_is_null(json_object_get(j, "owner")));
    json_decref(j);
    assert_int_equal(lyra_conv_delete(st, bob, "bob", &err), 0);
    assert_int_equal(lyra_conv_delete(st, legacy, NULL, &err), 0);
    assert_int_equal(count_rows(st, "SELECT COUNT(*) FROM conversations"), 1);
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

static void test_claims(void **state)
{
    struct lyra_conv_claims *c = lyra_conv_claims_new();
    const char *a = "00000000-0000-4000-8000-00000000000a", *b = "00000000-0000-4000-8000-00000000000b";
    assert_int_equal(lyra_conv_claim(c, a), 0);
    assert_int_equal(lyra_conv_claim(c, a), LYRA_EBUSY);
    assert_int_equal(lyra_conv_claim(c, b), 0);
    assert_int_equal(lyra_conv_claims_count(c), 2);
    lyra_conv_unclaim(c, a);
    assert_int_equal(lyra_conv_claims_count(c), 1);
    assert_int_equal(lyra_conv_claim(c, a), 0); /* free again */
    assert_int_equal(lyra_conv_claim(c, b), LYRA_EBUSY);
    lyra_conv_unclaim(c, "not-claimed");
    /* Many at once (the set grows). */
    char ids[40][37];
    for (int i = 0; i < 40; i++) {
        lyra_uuid4(ids[i]);
        assert_int_equal(lyra_conv_claim(c, ids[i]), 0);
    }
    assert_int_equal(lyra_conv_claims_count(c), 42);
    for (int i = 0; i < 40; i++)
        lyra_conv_unclaim(c, ids[i]);
    assert_int_equal(lyra_conv_claim(c, b), LYRA_EBUSY);
    assert_int_equal(lyra_conv_claims_count(c), 2);
    lyra_conv_claims_free(c);
    lyra_conv_claims_free(NULL);
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
    assert_int_equal(lyra_store_schema_version(st), 7);
    uint64_t v = 0;
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v, &err), 0);
    assert_int_equal(v, 42);
    char id[37];
    lyra_uuid4(id);
    assert_int_equal(save(st, id, true, "hi", &err), 0);
    lyra_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_turns_and_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_conversation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_turn_stores_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_turn_seen_by_later_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_and_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owners, setup, teardown),
        cmocka_unit_test(test_title_cut_at_utf8_boundary),
        cmocka_unit_test(test_claims),
        cmocka_unit_test_setup_teardown(test_upgrades_schema_1, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
