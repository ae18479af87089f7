/* it_state.c — the daemon's state under faults, against the real daemon:
 * a database that cannot be written (the daemon's RLIMIT_FSIZE set to 0
 * from outside: every file write fails with EFBIG, as on a full disk, also
 * when the tests run as root) gives clear errors, stores no part of a turn,
 * keeps the history as it was, numbers events above the failing
 * reservation and retries it until it works again; event numbers never
 * repeat after kill -9, whether the reservation was working (it is durable
 * before its numbers are used: read from the database file) or failing. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define JSON_HEADER "Content-Type: application/json\r\n"
#define OPTIONS "\"options\":{\"temperature\":0,\"max_tokens\":8,\"ignore_eos\":true}"

static struct it_server srv;
static char home[64];
/* A small replay ring (8 KiB) so that its byte budget shows. */
static const char *const daemon_env[] = {"LYRA_LOG_LEVEL=warn", "LYRA_EVENTS_RING_BYTES=8192", NULL};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    return it_server_start(&srv, home, NULL, daemon_env);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_t *request(const char *method, const char *path, const char *body, int want)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, method, path, body ? JSON_HEADER : NULL, body, &r), 0);
    if (r.status != want)
        print_error("%s %s: %d %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, want);
    json_t *j = it_json(&r);
    it_response_free(&r);
    return j;
}

/* The daemon's file size limit, set from outside (prlimit). */
static void daemon_fsize(rlim_t limit)
{
    struct rlimit rl;
    assert_int_equal(prlimit(srv.pid, RLIMIT_FSIZE, NULL, &rl), 0);
    rl.rlim_cur = limit;
    assert_int_equal(prlimit(srv.pid, RLIMIT_FSIZE, &rl, NULL), 0);
}

static uint64_t publish(void)
{
    json_t *j = request("POST", "/events", "{\"type\":\"custom.fill\",\"data\":{\"n\":1}}", 201);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(j, "seq"));
    json_decref(j);
    assert_true(seq > 0);
    return seq;
}

/* Publishes n events and returns the last seq; seqs strictly increase. */
static uint64_t publish_many(int n, uint64_t after)
{
    for (int i = 0; i < n; i++) {
        uint64_t seq = publish();
        if (seq <= after)
            fail_msg("event seq %llu after %llu", (unsigned long long)seq, (unsigned long long)after);
        after = seq;
    }
    return after;
}

static json_t *status_events(void)
{
    json_t *j = request("GET", "/status", NULL, 200);
    json_t *e = json_incref(json_object_get(j, "events"));
    json_decref(j);
    return e;
}

static json_int_t ev_num(json_t *e, const char *key)
{
    return json_integer_value(json_object_get(e, key));
}

static json_t *messages_of(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/conversations/%s", id);
    json_t *c = request("GET", path, NULL, 200);
    json_t *m = json_incref(json_object_get(c, "messages"));
    json_decref(c);
    return m;
}

/* The durable reservation as the database file holds it (read by this
 * process, as another reader of the WAL database would). */
static uint64_t stored_reservation(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/lyra.db", home);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'event_seq_reserved'", -1, &s, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    uint64_t v = strtoull((const char *)sqlite3_column_text(s, 0), NULL, 10);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

static void test_unwritable_database(void **state)
{
    json_t *j = request("POST", "/chat", "{\"message\":\"before the disk fills\"," OPTIONS "}", 200);
    char id[37], body[512];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    assert_true(json_is_true(json_object_get(j, "stored")));
    json_decref(j);
    json_t *before = messages_of(id);
    uint64_t seq = publish();

    daemon_fsize(0);

    /* A turn still gets its answer, says it was not stored and why. */
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"while full\"," OPTIONS "}", id);
    j = request("POST", "/chat", body, 200);
    assert_non_null(str(json_object_get(j, "message"), "content"));
    assert_true(json_is_false(json_object_get(j, "stored")));
    json_t *se = json_object_get(j, "store_error");
    assert_string_equal(str(se, "code"), "storage_failed");
    if (!strstr(str(se, "message"), "RLIMIT_FSIZE"))
        fail_msg("store_error does not say why: %s", str(se, "message"));
    json_decref(j);
    /* Streamed: answered to the end; its turn is not stored either. */
    struct it_response r;
    snprintf(body, sizeof body,
             "{\"conversation_id\":\"%s\",\"message\":\"streamed while full\",\"stream\":true," OPTIONS "}",
             id);
    assert_int_equal(it_http(srv.port, "POST", "/chat", JSON_HEADER, body, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "data: [DONE]"));
    it_response_free(&r);
    /* A first turn creates no conversation. */
    j = request("POST", "/chat", "{\"message\":\"a new one while full\"," OPTIONS "}", 200);
    assert_true(json_is_false(json_object_get(j, "stored")));
    char fresh[37];
    snprintf(fresh, sizeof fresh, "%s", str(j, "conversation_id"));
    json_decref(j);
    char path[128];
    snprintf(path, sizeof path, "/conversations/%s", fresh);
    json_decref(request("GET", path, NULL, 404));
    /* A delete fails with the reason. */
    snprintf(path, sizeof path, "/conversations/%s", id);
    j = request("DELETE", path, NULL, 500);
    assert_string_equal(str(json_object_get(j, "error"), "code"), "storage_failed");
    assert_non_null(strstr(str(json_object_get(j, "error"), "message"), "RLIMIT_FSIZE"));
    json_decref(j);
    /* The history is exactly what it was. */
    json_t *now = messages_of(id);
    assert_true(json_equal(now, before));
    json_decref(now);

    /* Events are still published, numbered above the failing reservation
     * (more than one block of them). */
    seq = publish_many(1200, seq);
    json_t *e = status_events();
    assert_true(json_is_true(json_object_get(e, "reservation_failing")));
    assert_true(ev_num(e, "reservation_failures") >= 1);
    assert_true(ev_num(e, "unreserved") > 0);
    assert_true((uint64_t)ev_num(e, "reserved_through") < seq);
    json_decref(e);

    /* Space again: the reservation is retried and covers every number used. */
    daemon_fsize(RLIM_INFINITY);
    bool recovered = false;
    for (int i = 0; i < 1500 && !recovered; i++) {
        seq = publish_many(1, seq);
        e = status_events();
        recovered = json_is_false(json_object_get(e, "reservation_failing")) &&
                    (uint64_t)ev_num(e, "reserved_through") >= seq;
        json_decref(e);
        if (!recovered)
            sleep_ms(20);
    }
    assert_true(recovered);
    assert_true(stored_reservation() >= seq);

    /* Turns are stored again, after the history as it was. */
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"space again\"," OPTIONS "}", id);
    j = request("POST", "/chat", body, 200);
    assert_true(json_is_true(json_object_get(j, "stored")));
    json_decref(j);
    now = messages_of(id);
    assert_int_equal(json_array_size(now), json_array_size(before) + 2);
    for (size_t i = 0; i < json_array_size(before); i++)
        assert_true(json_equal(json_array_get(now, i), json_array_get(before, i)));
    assert_string_equal(str(json_array_get(now, json_array_size(before)), "content"), "space again");
    json_decref(now);
    json_decref(before);
}

/* kill -9, start again on the same home; returns the first new seq. */
static uint64_t crash_and_restart(void)
{
    assert_int_equal(it_server_stop(&srv, SIGKILL), 128 + SIGKILL);
    assert_int_equal(it_server_start(&srv, home, NULL, daemon_env), 0);
    return publish();
}

static void test_seq_never_repeats_after_kill(void **state)
{
    /* Working reservations: more than a block of events (the next block is
     * reserved while the first is used); it is in the database before its
     * numbers are handed out. */
    json_t *e = status_events();
    json_int_t unreserved = ev_num(e, "unreserved");
    json_decref(e);
    uint64_t seq = publish_many(1500, publish());
    e = status_events();
    assert_int_equal(ev_num(e, "unreserved"), unreserved); /* none: every number was covered */
    json_decref(e);
    assert_true(stored_reservation() >= seq);
    uint64_t next = crash_and_restart();
    if (next <= seq)
        fail_msg("seq %llu after a crash repeats (last before: %llu)", (unsigned long long)next,
                 (unsigned long long)seq);

    /* Failing reservations: numbers above the stored mark are in use when
     * the daemon dies; the next start stays above them too. */
    daemon_fsize(0);
    seq = publish_many(1200, next);
    e = status_events();
    assert_true(ev_num(e, "unreserved") > 0);
    json_decref(e);
    next = crash_and_restart();
    if (next <= seq)
        fail_msg("seq %llu after a crash repeats (last before: %llu)", (unsigned long long)next,
                 (unsigned long long)seq);
    /* The database came through both. */
    json_t *j = request("POST", "/chat", "{\"message\":\"after two crashes\"," OPTIONS "}", 200);
    assert_true(json_is_true(json_object_get(j, "stored")));
    json_decref(j);
}

static void test_event_limits(void **state)
{
    /* POST /events payloads are capped by events.max_payload_bytes (64 KiB
     * by default): 413, naming the limit. */
    size_t n = 70 * 1024;
    char *body = malloc(n + 64);
    int len = snprintf(body, n + 64, "{\"type\":\"custom.big\",\"data\":{\"blob\":\"");
    memset(body + len, 'a', n);
    strcpy(body + len + n, "\"}}");
    json_t *j = request("POST", "/events", body, 413);
    assert_string_equal(str(json_object_get(j, "error"), "code"), "payload_too_large");
    assert_non_null(strstr(str(json_object_get(j, "error"), "message"), "events.max_payload_bytes"));
    json_decref(j);
    free(body);

    /* The replay ring keeps what fits in events.ring_bytes, newest first
     * kept, and says where it starts. */
    char small[700];
    int k = snprintf(small, sizeof small, "{\"type\":\"custom.mid\",\"data\":{\"blob\":\"");
    memset(small + k, 'b', 500);
    strcpy(small + k + 500, "\"}}");
    uint64_t last = 0;
    for (int i = 0; i < 60; i++) {
        j = request("POST", "/events", small, 201);
        last = (uint64_t)json_integer_value(json_object_get(j, "seq"));
        json_decref(j);
    }
    j = request("GET", "/events/recent?since=0&types=custom.mid", NULL, 200);
    json_t *events = json_object_get(j, "events");
    size_t kept = json_array_size(events);
    assert_true(kept > 2 && kept < 16); /* 60 * ~600 bytes do not fit in 8 KiB */
    uint64_t first = (uint64_t)json_integer_value(json_object_get(j, "first_seq"));
    assert_int_equal(json_integer_value(json_object_get(json_array_get(events, kept - 1), "seq")), last);
    assert_true((uint64_t)json_integer_value(json_object_get(json_array_get(events, 0), "seq")) >= first);
    assert_true(first > last - 60);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
    /* Asking from inside what is kept: nothing lost. */
    char path[96];
    snprintf(path, sizeof path, "/events/recent?since=%llu", (unsigned long long)(last - 1));
    j = request("GET", path, NULL, 200);
    assert_true(json_is_false(json_object_get(j, "truncated")));
    assert_int_equal(json_array_size(json_object_get(j, "events")), 1);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unwritable_database),
        cmocka_unit_test(test_seq_never_repeats_after_kill),
        cmocka_unit_test(test_event_limits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
