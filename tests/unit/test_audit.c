/* test_audit.c — the audit log: rows recorded and read back with each
 * filter, paging by before_id, the limit's bounds, UPDATE and DELETE
 * refused by SQLite itself, long and multibyte text clipped to valid UTF-8,
 * ids continuing across a reopen, and the events published for each row. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "core/events.h"
#include "core/store.h"
#include "core/util.h"

static char dir[64], path[128];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/lyra-audit-XXXXXX");
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

static void record(struct lyra_audit *au, const char *principal, const char *action, const char *target,
                   const char *result, int status, const char *client)
{
    struct lyra_audit_entry e = {.principal = principal,
                                 .key_id = principal ? "k_0123456789ab" : NULL,
                                 .action = action,
                                 .target = target,
                                 .result = result,
                                 .status = status,
                                 .client = client,
                                 .request_id = "req-1",
                                 .detail = "d"};
    assert_int_equal(lyra_audit_record(au, &e), 0);
}

/* Runs the query; returns the entries array (borrowed from *out). */
static json_t *query(struct lyra_audit *au, const struct lyra_audit_filter *f, json_t **out)
{
    struct lyra_err err = {0};
    assert_int_equal(lyra_audit_query(au, f, out, &err), 0);
    json_t *entries = json_object_get(*out, "entries");
    assert_true(json_is_array(entries));
    return entries;
}

static size_t count(struct lyra_audit *au, const struct lyra_audit_filter *f)
{
    json_t *out;
    size_t n = json_array_size(query(au, f, &out));
    json_decref(out);
    return n;
}

/* A small history: admin loads and pins, bob is denied, one bad key. */
static void fill(struct lyra_audit *au)
{
    record(au, "admin", "POST /models/{name}/load", "tiny", "ok", 200, "127.0.0.1");
    record(au, "admin", "POST /models/{name}/pin", "tiny", "ok", 200, "127.0.0.1");
    record(au, "bob", "POST /models/{name}/load", "tiny", "denied", 403, "10.0.0.2");
    record(au, NULL, "auth.failed", "", "denied", 401, "10.0.0.3");
}

static void test_record_and_query(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_non_null(st);
    struct lyra_audit *au = lyra_audit_new(st, NULL);
    assert_non_null(au);
    fill(au);

    json_t *out;
    json_t *e = query(au, NULL, &out);
    assert_int_equal(json_array_size(e), 4);
    /* Newest first, every field as recorded. */
    json_t *last = json_array_get(e, 0), *first = json_array_get(e, 3);
    assert_string_equal(json_string_value(json_object_get(last, "action")), "auth.failed");
    assert_string_equal(json_string_value(json_object_get(last, "principal")), "");
    assert_string_equal(json_string_value(json_object_get(last, "key_id")), "");
    assert_true(json_integer_value(json_object_get(last, "id")) > json_integer_value(json_object_get(first, "id")));
    assert_string_equal(json_string_value(json_object_get(first, "principal")), "admin");
    assert_string_equal(json_string_value(json_object_get(first, "key_id")), "k_0123456789ab");
    assert_string_equal(json_string_value(json_object_get(first, "target")), "tiny");
    assert_string_equal(json_string_value(json_object_get(first, "result")), "ok");
    assert_int_equal(json_integer_value(json_object_get(first, "status")), 200);
    assert_string_equal(json_string_value(json_object_get(first, "client")), "127.0.0.1");
    assert_string_equal(json_string_value(json_object_get(first, "request_id")), "req-1");
    assert_string_equal(json_string_value(json_object_get(first, "detail")), "d");
    int64_t ts = json_integer_value(json_object_get(first, "ts_ms"));
    assert_true(ts > 0 && ts <= lyra_wall_ms());
    assert_true(json_is_null(json_object_get(out, "next_before_id")));
    json_decref(out);

    /* Each filter on its own. */
    assert_int_equal(count(au, &(struct lyra_audit_filter){.principal = "admin"}), 2);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.principal = "nobody"}), 0);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.action = "POST /models/{name}/load"}), 2);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.action = "POST /models/*"}), 3);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.action = "auth.*"}), 1);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.action = "POST /models"}), 0); /* exact */
    assert_int_equal(count(au, &(struct lyra_audit_filter){.action = "*"}), 4);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.result = "denied"}), 2);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.client = "10.0.0.2"}), 1);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.since_ms = ts}), 4);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.since_ms = lyra_wall_ms() + 60000}), 0);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.until_ms = ts - 60000}), 0);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.until_ms = lyra_wall_ms() + 60000}), 4);
    /* Combined. */
    assert_int_equal(count(au, &(struct lyra_audit_filter){.principal = "admin", .action = "*/pin"}), 0);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.result = "denied", .client = "10.0.0.3"}), 1);
    lyra_audit_free(au);
    lyra_store_close(st);
}

static void test_paging_and_limits(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct lyra_audit *au = lyra_audit_new(st, NULL);
    for (int i = 0; i < 25; i++) {
        char target[16];
        snprintf(target, sizeof target, "m%d", i);
        record(au, "admin", "POST /models/{name}/load", target, "ok", 200, "127.0.0.1");
    }
    /* Pages of 10 walk the whole log once, newest first, without overlap. */
    int64_t before = 0, prev_id = INT64_MAX;
    int seen = 0, pages = 0;
    for (;;) {
        json_t *out;
        json_t *e = query(au, &(struct lyra_audit_filter){.limit = 10, .before_id = before}, &out);
        pages++;
        for (size_t i = 0; i < json_array_size(e); i++) {
            int64_t id = json_integer_value(json_object_get(json_array_get(e, i), "id"));
            assert_true(id < prev_id);
            prev_id = id;
            seen++;
        }
        json_t *next = json_object_get(out, "next_before_id");
        if (json_is_null(next)) {
            json_decref(out);
            break;
        }
        before = json_integer_value(next);
        assert_int_equal(before, prev_id);
        json_decref(out);
        assert_true(pages < 10);
    }
    assert_int_equal(seen, 25);
    assert_int_equal(pages, 3);

    /* limit 0 = 100; 1 and 1000 are the bounds. */
    assert_int_equal(count(au, &(struct lyra_audit_filter){.limit = 0}), 25);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.limit = 1}), 1);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.limit = 1000}), 25);
    json_t *out = NULL;
    assert_int_equal(lyra_audit_query(au, &(struct lyra_audit_filter){.limit = 1001}, &out, &err), LYRA_EINVAL);
    assert_null(out);
    assert_int_equal(lyra_audit_query(au, &(struct lyra_audit_filter){.limit = -1}, &out, &err), LYRA_EINVAL);
    assert_int_equal(lyra_audit_query(au, &(struct lyra_audit_filter){.before_id = -5}, &out, &err), LYRA_EINVAL);
    lyra_audit_free(au);
    lyra_store_close(st);

    /* Ids continue after a reopen: no id is reused. */
    st = lyra_store_open(path, &err);
    au = lyra_audit_new(st, NULL);
    record(au, "admin", "POST /keys", "", "ok", 201, "127.0.0.1");
    json_t *e = query(au, &(struct lyra_audit_filter){.limit = 2}, &out);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(e, 0), "id")),
                     json_integer_value(json_object_get(json_array_get(e, 1), "id")) + 1);
    json_decref(out);
    lyra_audit_free(au);
    lyra_store_close(st);
}

/* Job: runs arg (SQL) and returns SQLITE's result as 0 / LYRA_EDB. */
static int job_exec(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return sqlite3_exec(db, arg, NULL, NULL, NULL) == SQLITE_OK ? 0 : lyra_store_error(err, db, "exec");
}

static void test_append_only(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct lyra_audit *au = lyra_audit_new(st, NULL);
    fill(au);
    assert_int_equal(count(au, NULL), 4);
    assert_int_equal(lyra_store_run(st, job_exec, "UPDATE audit SET principal = 'x'", &err), LYRA_EDB);
    assert_non_null(strstr(err.msg, "append-only"));
    assert_int_equal(lyra_store_run(st, job_exec, "DELETE FROM audit", &err), LYRA_EDB);
    assert_non_null(strstr(err.msg, "append-only"));
    assert_int_equal(lyra_store_run(st, job_exec, "DELETE FROM audit WHERE id = 1", &err), LYRA_EDB);
    assert_int_equal(count(au, &(struct lyra_audit_filter){.principal = "admin"}), 2);
    assert_int_equal(count(au, NULL), 4);
    lyra_audit_free(au);
    lyra_store_close(st);
}

static void test_clipped_utf8(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct lyra_audit *au = lyra_audit_new(st, NULL);
    /* 1000 two-byte characters: cut somewhere, never inside one. */
    char big[2001];
    for (int i = 0; i < 1000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[2000] = '\0';
    /* A target with an odd byte bound cut (3-byte characters) and invalid bytes. */
    char three[3 * 300 + 1];
    for (int i = 0; i < 300; i++)
        memcpy(three + 3 * i, "\xe2\x82\xac", 3);
    three[900] = '\0';
    struct lyra_audit_entry e = {.principal = big,
                                 .key_id = "k_\xff\xfe",
                                 .action = three,
                                 .target = three,
                                 .result = "ok",
                                 .status = 200,
                                 .client = big,
                                 .request_id = big,
                                 .detail = big};
    assert_int_equal(lyra_audit_record(au, &e), 0);
    json_t *out;
    json_t *row = json_array_get(query(au, NULL, &out), 0);
    assert_non_null(row);
    const char *fields[] = {"principal", "key_id", "action", "target", "client", "request_id", "detail"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        const char *v = json_string_value(json_object_get(row, fields[i]));
        assert_non_null(v);
        assert_true(lyra_utf8_valid(v, strlen(v)));
        assert_true(strlen(v) <= 256);
    }
    const char *p = json_string_value(json_object_get(row, "principal"));
    assert_true(strlen(p) > 0 && strlen(p) < strlen(big));
    assert_int_equal(strlen(p) % 2, 0);
    const char *t = json_string_value(json_object_get(row, "target"));
    assert_int_equal(strlen(t) % 3, 0);
    assert_true(strlen(t) > 0 && strlen(t) < 900);
    assert_string_equal(json_string_value(json_object_get(row, "key_id")), "k_??");
    json_decref(out);
    lyra_audit_free(au);
    lyra_store_close(st);
}

struct seen {
    int n;
    char types[8][64];
    json_t *data[8];
};

static void on_event(const struct lyra_event *ev, void *ud)
{
    struct seen *s = ud;
    if (s->n < 8) {
        snprintf(s->types[s->n], sizeof s->types[s->n], "%s", ev->type);
        s->data[s->n] = json_incref(ev->data);
    }
    s->n++;
}

static void test_events(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct lyra_bus *bus = lyra_bus_new(&(struct lyra_bus_options){.ring_size = 16});
    assert_non_null(bus);
    struct seen s = {0};
    assert_true(lyra_bus_subscribe(bus, "audit.*,auth.*", on_event, &s) > 0);
    struct lyra_audit *au = lyra_audit_new(st, bus);
    fill(au);
    /* load ok, pin ok, forbidden load (not an auth.* action), bad key. */
    assert_int_equal(s.n, 4);
    assert_string_equal(s.types[0], "audit.recorded");
    assert_string_equal(s.types[1], "audit.recorded");
    assert_string_equal(s.types[2], "audit.recorded");
    assert_string_equal(s.types[3], "auth.denied");
    /* The event carries the row as stored, id included. */
    json_t *out;
    json_t *rows = query(au, NULL, &out);
    for (int i = 0; i < 4; i++)
        assert_true(json_equal(s.data[i], json_array_get(rows, (size_t)(3 - i))));
    assert_string_equal(json_string_value(json_object_get(s.data[3], "client")), "10.0.0.3");
    json_decref(out);
    for (int i = 0; i < 4; i++)
        json_decref(s.data[i]);
    lyra_audit_free(au);
    lyra_store_close(st);
    lyra_bus_free(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_record_and_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paging_and_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clipped_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
