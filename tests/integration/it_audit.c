/* it_audit.c — the audit log and the failed-authentication back-off
 * against the real daemon (auth.enabled, LYRA_ADMIN_KEY, the tiny model,
 * LYRA_AUTH_MAX_FAILURES=3).
 *
 * Admin actions (load, pin, key create and revoke, a role and a grant) and
 * failures (an unknown key, a missing key, a forbidden route, a forbidden
 * model, whose row names the model) are each sent with their own X-Request-Id, then found in GET
 * /audit by that id with the principal, key id, action, target, result,
 * status, client address and detail expected; reads (GET) and chat are not
 * recorded.  The same rows arrive as events: audit.recorded for actions,
 * auth.denied for failures, visible to audit.read only.  GET /audit's
 * filters and its parameter errors.
 *
 * The back-off, last (it blocks 127.0.0.1): three unknown keys are 401,
 * the fourth request is 429 with Retry-After, and so is a good key from the
 * same address during the block; the 429s are not audited; after
 * Retry-After the good key works again. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define ADMIN_KEY "itAuditAdminKey0123456789abcdefghijklmnop"
#define UNKNOWN_KEY "lyra_0000000000000000000000000000000000000000000"

static struct it_server srv;
static char home[64];
static char op_key[80], op_name[80], viewer_key[80], viewer_name[80];

/* One request with X-Request-Id `rid` (NULL: none); `key` NULL sends no
 * Authorization. */
static int request(const char *method, const char *path, const char *key, const char *rid, const char *body,
                   struct it_response *r)
{
    char headers[512];
    int n = snprintf(headers, sizeof headers, "%s%s%s%s%s%s%s", key ? "Authorization: Bearer " : "",
                     key ? key : "", key ? "\r\n" : "", rid ? "X-Request-Id: " : "", rid ? rid : "",
                     rid ? "\r\n" : "", body ? "Content-Type: application/json\r\n" : "");
    assert_true(n >= 0 && n < (int)sizeof headers);
    return it_http(srv.port, method, path, headers, body, r);
}

static json_t *call(const char *method, const char *path, const char *key, const char *rid, const char *body,
                    int want)
{
    struct it_response r;
    if (request(method, path, key, rid, body, &r) != 0)
        fail_msg("%s %s: no answer", method, path);
    json_t *j = it_json(&r);
    if (r.status != want || !j)
        fail_msg("%s %s: %d (wanted %d): %s", method, path, r.status, want, r.body ? r.body : "");
    it_response_free(&r);
    return j;
}

static int setup(void **state)
{
    (void)state;
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    const char *env[] = {"LYRA_AUTH_ENABLED=true",   "LYRA_ADMIN_KEY=" ADMIN_KEY,
                         "LYRA_AUTH_MAX_FAILURES=3", "LYRA_AUTH_FAILURE_WINDOW_S=2",
                         "LYRA_AUTH_MAX_BLOCK_S=2",  NULL};
    if (it_server_start(&srv, home, NULL, env) != 0) {
        char *log = lyra_read_file(srv.log_path, NULL);
        fprintf(stderr, "lyra serve did not start:\n%s\n", log ? log : "");
        free(log);
        return -1;
    }
    json_t *j = call("POST", "/keys", ADMIN_KEY, "it-audit-setup-op", "{\"role\":\"operator\"}", 201);
    snprintf(op_key, sizeof op_key, "%s", json_string_value(json_object_get(j, "key")));
    snprintf(op_name, sizeof op_name, "%s", json_string_value(json_object_get(j, "principal")));
    json_decref(j);
    j = call("POST", "/keys", ADMIN_KEY, NULL, "{\"role\":\"viewer\"}", 201);
    snprintf(viewer_key, sizeof viewer_key, "%s", json_string_value(json_object_get(j, "key")));
    snprintf(viewer_name, sizeof viewer_name, "%s", json_string_value(json_object_get(j, "principal")));
    json_decref(j);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

/* The audit row whose request_id is rid (new reference), or NULL. */
static json_t *audit_row(const char *rid)
{
    json_t *j = call("GET", "/audit?limit=1000", ADMIN_KEY, NULL, NULL, 200);
    json_t *found = NULL;
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(j, "entries"), i, row)
    {
        const char *id = json_string_value(json_object_get(row, "request_id"));
        if (id && strcmp(id, rid) == 0) {
            if (found)
                fail_msg("two audit rows with request id %s", rid);
            found = json_incref(row);
        }
    }
    json_decref(j);
    return found;
}

static const char *field(json_t *row, const char *name)
{
    const char *v = json_string_value(json_object_get(row, name));
    return v ? v : "(none)";
}

/* The row of rid must hold these values (NULL: not checked). */
static json_t *expect_row(const char *rid, const char *principal, const char *action, const char *target,
                          const char *result, int status, const char *detail_has)
{
    json_t *row = audit_row(rid);
    if (!row)
        fail_msg("no audit row with request id %s", rid);
    char *text = json_dumps(row, JSON_COMPACT);
    printf("%s\n", text);
    if (principal && strcmp(field(row, "principal"), principal))
        fail_msg("%s: principal '%s', wanted '%s': %s", rid, field(row, "principal"), principal, text);
    if (strcmp(field(row, "action"), action))
        fail_msg("%s: action '%s', wanted '%s': %s", rid, field(row, "action"), action, text);
    if (target && strcmp(field(row, "target"), target))
        fail_msg("%s: target '%s', wanted '%s': %s", rid, field(row, "target"), target, text);
    if (strcmp(field(row, "result"), result))
        fail_msg("%s: result '%s', wanted '%s': %s", rid, field(row, "result"), result, text);
    if (json_integer_value(json_object_get(row, "status")) != status)
        fail_msg("%s: status %lld, wanted %d: %s", rid,
                 (long long)json_integer_value(json_object_get(row, "status")), status, text);
    if (strcmp(field(row, "client"), "127.0.0.1"))
        fail_msg("%s: client '%s', wanted 127.0.0.1: %s", rid, field(row, "client"), text);
    if (detail_has && !strstr(field(row, "detail"), detail_has))
        fail_msg("%s: detail '%s' lacks '%s': %s", rid, field(row, "detail"), detail_has, text);
    if (json_integer_value(json_object_get(row, "id")) <= 0 ||
        llabs(json_integer_value(json_object_get(row, "ts_ms")) - lyra_wall_ms()) > 120000)
        fail_msg("%s: id or ts_ms wrong: %s", rid, text);
    /* A key never reaches a row. */
    assert_null(strstr(text, ADMIN_KEY));
    assert_null(strstr(text, op_key + 12));
    free(text);
    return row;
}

/* The event of `type` whose data.request_id is rid, as `key` sees
 * /events/recent (new reference), or NULL. */
static json_t *event_for(const char *key, const char *type, const char *rid)
{
    char path[128];
    snprintf(path, sizeof path, "/events/recent?since=0&types=%s", type);
    json_t *j = call("GET", path, key, NULL, NULL, 200);
    json_t *found = NULL;
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(j, "events"), i, ev)
    {
        const char *id = json_string_value(json_object_get(json_object_get(ev, "data"), "request_id"));
        if (id && strcmp(id, rid) == 0)
            found = json_incref(ev);
    }
    json_decref(j);
    return found;
}

static void expect_event(const char *type, const char *rid, json_t *row)
{
    json_t *ev = event_for(ADMIN_KEY, type, rid);
    if (!ev)
        fail_msg("no %s event for request %s", type, rid);
    json_t *data = json_object_get(ev, "data");
    /* The event is the row. */
    const char *keys[] = {"id",     "principal", "key_id", "action", "target",
                          "result", "status",    "client", "detail"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!json_equal(json_object_get(data, keys[i]), json_object_get(row, keys[i])))
            fail_msg("%s event for %s: %s differs from the row", type, rid, keys[i]);
    json_decref(ev);
    /* audit.read only: the viewer does not see it. */
    json_t *hidden = event_for(viewer_key, type, rid);
    if (hidden)
        fail_msg("a viewer sees the %s event of %s", type, rid);
    json_t *seen = event_for(op_key, type, rid);
    assert_non_null(seen);
    json_decref(seen);
}

static void test_admin_actions(void **state)
{
    (void)state;
    json_decref(call("POST", "/models/tiny/load", op_key, "it-audit-load", "{}", 200));
    json_decref(call("POST", "/models/tiny/pin", op_key, "it-audit-pin", "{}", 200));
    json_t *k = call("POST", "/keys", ADMIN_KEY, "it-audit-key-create",
                     "{\"role\":\"user\",\"label\":\"audited\"}", 201);
    char kid[64], kpath[96], user_key[80];
    snprintf(kid, sizeof kid, "%s", json_string_value(json_object_get(k, "id")));
    snprintf(user_key, sizeof user_key, "%s", json_string_value(json_object_get(k, "key")));
    json_decref(k);
    snprintf(kpath, sizeof kpath, "/keys/%s", kid);
    json_decref(call("DELETE", kpath, ADMIN_KEY, "it-audit-key-revoke", NULL, 200));
    json_decref(call("POST", "/roles", ADMIN_KEY, "it-audit-role",
                     "{\"name\":\"auditors\",\"permissions\":[\"status.read\"]}", 201));
    json_decref(call("POST", "/permissions/grant", ADMIN_KEY, "it-audit-grant",
                     "{\"role\":\"auditors\",\"permission\":\"audit.read\"}", 200));
    /* Not recorded: reads, chat, a failed body past the check is. */
    json_decref(call("GET", "/status", op_key, "it-audit-read", NULL, 200));
    json_decref(call(
        "POST", "/v1/chat/completions", op_key, "it-audit-chat",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2}", 200));
    json_decref(call("POST", "/models/nope/load", op_key, "it-audit-load-404", "{}", 404));

    json_t *row = expect_row("it-audit-load", op_name, "POST /models/{name}/load", "tiny", "ok", 200, NULL);
    assert_true(strlen(field(row, "key_id")) > 0);
    expect_event("audit.recorded", "it-audit-load", row);
    json_decref(row);
    json_decref(expect_row("it-audit-pin", op_name, "POST /models/{name}/pin", "tiny", "ok", 200, NULL));
    row = expect_row("it-audit-key-create", "admin", "POST /keys", NULL, "ok", 201, kid);
    expect_event("audit.recorded", "it-audit-key-create", row);
    json_decref(row);
    json_decref(expect_row("it-audit-key-revoke", "admin", "DELETE /keys/{id}", kid, "ok", 200, NULL));
    json_decref(expect_row("it-audit-role", "admin", "POST /roles", NULL, "ok", 201, "auditors"));
    row = expect_row("it-audit-grant", "admin", "POST /permissions/grant", NULL, "ok", 200, "audit.read");
    assert_non_null(strstr(field(row, "detail"), "auditors"));
    json_decref(row);
    json_decref(
        expect_row("it-audit-load-404", op_name, "POST /models/{name}/load", "nope", "failed", 404, NULL));
    json_t *none = audit_row("it-audit-read");
    assert_null(none);
    none = audit_row("it-audit-chat");
    assert_null(none);
    /* The revoked key's own text is nowhere in the log. */
    json_t *all = call("GET", "/audit?limit=1000", ADMIN_KEY, NULL, NULL, 200);
    char *text = json_dumps(all, 0);
    assert_null(strstr(text, user_key + 12));
    free(text);
    json_decref(all);
}

static void test_failures(void **state)
{
    (void)state;
    json_decref(call("GET", "/status", UNKNOWN_KEY, "it-audit-badkey", NULL, 401));
    json_decref(call("GET", "/status", NULL, "it-audit-nokey", NULL, 401));
    json_decref(call("POST", "/models/tiny/unload", viewer_key, "it-audit-forbidden", "{}", 403));
    json_decref(call("GET", "/audit", viewer_key, "it-audit-forbidden-read", NULL, 403));
    /* A model the role may not use: the handler's check, recorded the same
     * way with the model as the target. */
    json_decref(call("POST", "/roles", ADMIN_KEY, NULL,
                     "{\"name\":\"others-only\",\"permissions\":[\"chat\"],\"models\":[\"other-*\"]}", 201));
    json_t *k = call("POST", "/keys", ADMIN_KEY, NULL, "{\"role\":\"others-only\"}", 201);
    char others_key[80], others_name[80];
    snprintf(others_key, sizeof others_key, "%s", json_string_value(json_object_get(k, "key")));
    snprintf(others_name, sizeof others_name, "%s", json_string_value(json_object_get(k, "principal")));
    json_decref(k);
    json_t *mf = call("POST", "/v1/chat/completions", others_key, "it-audit-model-forbidden",
                      "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 403);
    assert_string_equal(it_error_code(mf), "model_forbidden");
    json_decref(mf);
    /* A success in between: the back-off count starts again (test_backoff). */
    json_decref(call("GET", "/status", viewer_key, NULL, NULL, 200));

    json_t *row = expect_row("it-audit-badkey", "", "auth.failed", "/status", "denied", 401,
                             "invalid_key (GET /status)");
    expect_event("auth.denied", "it-audit-badkey", row);
    json_decref(row);
    json_decref(expect_row("it-audit-nokey", "", "auth.failed", "/status", "denied", 401, "missing_key"));
    row = expect_row("it-audit-forbidden", viewer_name, "auth.forbidden", "tiny", "denied", 403,
                     "lacks models.load (POST /models/{name}/unload)");
    assert_true(strlen(field(row, "key_id")) > 0);
    expect_event("auth.denied", "it-audit-forbidden", row);
    json_decref(row);
    json_decref(expect_row("it-audit-forbidden-read", viewer_name, "auth.forbidden", NULL, "denied", 403,
                           "audit.read"));
    row = expect_row("it-audit-model-forbidden", others_name, "auth.forbidden", "tiny", "denied", 403,
                     "model tiny (POST /v1/chat/completions)");
    expect_event("auth.denied", "it-audit-model-forbidden", row);
    json_decref(row);
}

static size_t entries(const char *query)
{
    char path[256];
    snprintf(path, sizeof path, "/audit?%s", query);
    json_t *j = call("GET", path, op_key, NULL, NULL, 200);
    size_t n = json_array_size(json_object_get(j, "entries"));
    json_decref(j);
    return n;
}

static void test_filters(void **state)
{
    (void)state;
    size_t all = entries("limit=1000");
    assert_true(all >= 12);
    size_t denied = entries("result=denied&limit=1000");
    assert_true(denied >= 5 && denied < all);
    assert_int_equal(entries("action=auth.*&limit=1000"), denied);
    assert_int_equal(entries("action=auth.failed&limit=1000"), 2);
    char q[160];
    snprintf(q, sizeof q, "principal=%s&limit=1000", op_name);
    assert_int_equal(entries(q), 3); /* load, pin, the failed load */
    assert_int_equal(entries("client=127.0.0.1&limit=1000"), all);
    assert_int_equal(entries("client=10.0.0.1"), 0);
    assert_int_equal(entries("limit=2"), 2);
    assert_int_equal(entries("since=2999-01-01T00:00:00Z"), 0);
    assert_int_equal(entries("until=2000-01-01T00:00:00Z"), 0);
    /* Paging: the second page starts after the first. */
    json_t *p1 = call("GET", "/audit?limit=3", op_key, NULL, NULL, 200);
    json_int_t next = json_integer_value(json_object_get(p1, "next_before_id"));
    assert_true(next > 0);
    snprintf(q, sizeof q, "/audit?limit=3&before_id=%lld", (long long)next);
    json_t *p2 = call("GET", q, op_key, NULL, NULL, 200);
    json_int_t last1 =
        json_integer_value(json_object_get(json_array_get(json_object_get(p1, "entries"), 2), "id"));
    json_int_t first2 =
        json_integer_value(json_object_get(json_array_get(json_object_get(p2, "entries"), 0), "id"));
    assert_true(first2 < last1);
    json_decref(p1);
    json_decref(p2);
    const char *bad[][2] = {{"limit=0", "limit"},
                            {"limit=1001", "limit"},
                            {"since=yesterday", "since"},
                            {"before_id=-3", "before_id"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(q, sizeof q, "/audit?%s", bad[i][0]);
        json_t *e = call("GET", q, op_key, NULL, NULL, 400);
        const char *msg = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
        if (!msg || !strstr(msg, bad[i][1]))
            fail_msg("GET %s: the 400 does not name %s: %s", q, bad[i][1], msg ? msg : "(no message)");
        json_decref(e);
    }
}

static void test_backoff(void **state)
{
    (void)state;
    /* The earlier tests' failures came from this address too, and a
     * success does not clear them: let them age out of the 2 s window (an
     * entry idle for block + window is forgotten). */
    usleep(4500 * 1000);
    size_t failed_before = entries("action=auth.failed&limit=1000");
    for (int i = 0; i < 3; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "it-audit-guess-%d", i);
        json_t *j = call("GET", "/status", UNKNOWN_KEY, rid, NULL, 401);
        json_decref(j);
    }
    struct it_response r;
    char ra[32];
    assert_int_equal(request("GET", "/status", UNKNOWN_KEY, "it-audit-blocked", NULL, &r), 0);
    assert_int_equal(r.status, 429);
    json_t *e = it_json(&r);
    assert_string_equal(it_error_code(e), "too_many_failures");
    json_decref(e);
    assert_non_null(it_header(&r, "Retry-After", ra, sizeof ra));
    int retry = atoi(ra);
    assert_true(retry >= 1 && retry <= 4);
    it_response_free(&r);
    /* A good key from the same address still passes (another client at
     * a shared address must not lock its holder out); no key at all is the
     * plain 401 (it guesses nothing). */
    assert_int_equal(request("GET", "/status", op_key, "it-audit-blocked-good", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_int_equal(request("GET", "/status", NULL, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    it_response_free(&r);
    /* ... and another wrong key is still 429. */
    assert_int_equal(request("GET", "/status", UNKNOWN_KEY, "it-audit-blocked-2", NULL, &r), 0);
    assert_int_equal(r.status, 429);
    it_response_free(&r);
    /* Public routes stay open. */
    json_decref(call("GET", "/health", NULL, NULL, NULL, 200));

    /* After Retry-After: the good key works; the 401s were recorded, the
     * 429s not. */
    int64_t until = lyra_wall_ms() + (int64_t)retry * 1000 + 200;
    while (lyra_wall_ms() < until)
        usleep(50 * 1000);
    json_decref(call("GET", "/status", op_key, NULL, NULL, 200));
    assert_int_equal(entries("action=auth.failed&limit=1000"), failed_before + 4); /* the 3 guesses + no key */
    json_t *none = audit_row("it-audit-blocked");
    assert_null(none);
    none = audit_row("it-audit-blocked-good");
    assert_null(none);
    json_t *g = audit_row("it-audit-guess-2");
    assert_non_null(g);
    json_decref(g);
    /* The metric counts the blocked requests. */
    struct it_response m;
    assert_int_equal(request("GET", "/metrics", op_key, NULL, NULL, &m), 0);
    assert_int_equal(m.status, 200);
    assert_non_null(strstr(m.body, "lyra_auth_failures_total{reason=\"blocked\"}"));
    it_response_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_actions),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
