/* it_rbac.c — the route × role matrix of issue 9 against the real daemon
 * with auth.enabled, and the RBAC API around it.
 *
 * One daemon (LYRA_AUTH_ENABLED=true, a bootstrap admin key from
 * LYRA_ADMIN_KEY, the tiny model installed as "tiny" and "llama-tiny").  As
 * admin it creates one key per built-in role (POST /keys {"role":R}) and
 * one for the custom role "llama-only" (chat and models.read on llama-*).
 *
 * The matrix walks lyra_routes[] itself (linked from the daemon's own
 * table, so a new route cannot be left out) with every caller: each role,
 * no key, a well-formed unknown key.  Expected: 401 without a valid key
 * (public "" routes excepted), 403 "forbidden" naming the route's
 * permission when the role lacks it (the policy below, written as data),
 * and anything but 401/403 when it holds it.  {name}/{id} are filled with
 * names that exist nowhere, so that DELETE /users/{name}, DELETE
 * /keys/{id}, unload ... hit nothing (404) and the fixtures survive; POSTs
 * send "{}" (a 400 for most: past the permission check, which runs before
 * the body is read).
 *
 * Then: per-model access, expired and revoked keys, WWW-Authenticate,
 * /permissions and its check, grants and revokes seen by the check, user
 * and key management, the last admin. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/server.h"
#include "core/util.h"
#include "harness.h"

/* 40 characters: a bootstrap key (LYRA_ADMIN_KEY) need not look like a
 * generated one. */
#define ADMIN_KEY "itRbacAdminKey0123456789abcdefghijklmnop"
/* Well-formed ("lyra_" + 43 base62) but issued by nobody. */
#define BAD_KEY "lyra_0000000000000000000000000000000000000000000"

/* --- the policy, as data (rbac_common.md's table) ------------------- */

static const char *const OPERATOR_PERMS[] = {
    "models.read",        "models.load",         "models.pin", "models.pull", "models.delete", "chat",
    "conversations.read", "conversations.write", "jobs.read",  "jobs.submit", "jobs.cancel",   "events.read",
    "status.read",        "metrics.read",        "audit.read", NULL};
static const char *const USER_PERMS[] = {
    "models.read", "chat", "conversations.read", "conversations.write", "events.read", "status.read", NULL};
static const char *const VIEWER_PERMS[] = {"models.read", "jobs.read",    "events.read",
                                           "status.read", "metrics.read", NULL};
static const char *const LLAMA_ONLY_PERMS[] = {"chat", "models.read", NULL};

enum caller_kind { WITH_KEY, NO_KEY, UNKNOWN_KEY };

struct caller {
    const char *label;        /* column of the printed matrix */
    const char *role;         /* the role its key is created with (NULL: no key / bad key) */
    const char *const *perms; /* NULL with all = true: admin's "*" */
    bool all;
    enum caller_kind kind;
    char key[80];
    char principal[80];
};

static struct caller callers[] = {
    {"admin", "admin", NULL, true, WITH_KEY, "", ""},
    {"operator", "operator", OPERATOR_PERMS, false, WITH_KEY, "", ""},
    {"user", "user", USER_PERMS, false, WITH_KEY, "", ""},
    {"viewer", "viewer", VIEWER_PERMS, false, WITH_KEY, "", ""},
    {"llama", "llama-only", LLAMA_ONLY_PERMS, false, WITH_KEY, "", ""},
    {"nokey", NULL, NULL, false, NO_KEY, "", ""},
    {"badkey", NULL, NULL, false, UNKNOWN_KEY, BAD_KEY, ""},
};
#define N_CALLERS (sizeof callers / sizeof *callers)
enum { C_ADMIN, C_OPERATOR, C_USER, C_VIEWER, C_LLAMA, C_NONE, C_BAD };

static bool holds(const struct caller *c, const char *perm)
{
    if (c->all)
        return true;
    for (size_t i = 0; c->perms && c->perms[i]; i++)
        if (strcmp(c->perms[i], perm) == 0)
            return true;
    return false;
}

/* --- the daemon ----------------------------------------------------- */

static struct it_server srv;
static char home[64], models[128];

/* One request; `key` NULL sends no Authorization, `body` NULL no body. */
static int request(const char *method, const char *path, const char *key, const char *body,
                   struct it_response *r)
{
    char headers[512];
    int n = snprintf(headers, sizeof headers, "%s%s%s%s", key ? "Authorization: Bearer " : "", key ? key : "",
                     key ? "\r\n" : "", body ? "Content-Type: application/json\r\n" : "");
    assert_true(n >= 0 && n < (int)sizeof headers);
    return it_http(srv.port, method, path, headers, body, r);
}

/* The JSON answer of a request that must answer `want`; fails otherwise. */
static json_t *call(const char *method, const char *path, const char *key, const char *body, int want)
{
    struct it_response r;
    if (request(method, path, key, body, &r) != 0)
        fail_msg("%s %s: no answer", method, path);
    json_t *j = it_json(&r);
    if (r.status != want || !j)
        fail_msg("%s %s: %d (wanted %d): %s", method, path, r.status, want, r.body ? r.body : "");
    it_response_free(&r);
    return j;
}

/* The error code of a request that must fail with `want`. */
static void expect_error(const char *method, const char *path, const char *key, const char *body, int want,
                         const char *code)
{
    json_t *j = call(method, path, key, body, want);
    if (strcmp(it_error_code(j), code) != 0)
        fail_msg("%s %s: code '%s', wanted '%s'", method, path, it_error_code(j), code);
    json_decref(j);
}

/* The status of a request whose body may never end (an event stream):
 * only the status line is read. */
static int head_status(const char *method, const char *path, const char *key)
{
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s\r\n",
                     method, path, key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "");
    assert_true(n > 0 && n < (int)sizeof req);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    char buf[64] = "";
    size_t have = 0;
    while (have < 12) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0)
            break;
        ssize_t got = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (got <= 0)
            break;
        have += (size_t)got;
    }
    close(fd);
    buf[have] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        fail_msg("%s %s: no status line: '%s'", method, path, buf);
    return status;
}

/* POST /keys as admin with `body`; fills key and principal. */
static void make_key(const char *body, char *key, size_t key_len, char *principal, size_t principal_len)
{
    json_t *j = call("POST", "/keys", ADMIN_KEY, body, 201);
    const char *k = json_string_value(json_object_get(j, "key"));
    const char *p = json_string_value(json_object_get(j, "principal"));
    assert_non_null(k);
    assert_non_null(p);
    /* "lyra_" + 43 base62, and the public id never is the key. */
    assert_int_equal(strlen(k), 48);
    assert_memory_equal(k, "lyra_", 5);
    assert_non_null(json_string_value(json_object_get(j, "id")));
    assert_string_not_equal(json_string_value(json_object_get(j, "id")), k);
    snprintf(key, key_len, "%s", k);
    if (principal)
        snprintf(principal, principal_len, "%s", p);
    json_decref(j);
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    if (it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0 ||
        it_install_model(models, "tiny.gguf", "llama-tiny.gguf", SIZE_MAX) < 0)
        return -1;
    /* The matrix fails authentication ~100 times from 127.0.0.1: the
     * back-off must not turn those 401s into 429s here (it has its own
     * test). */
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY,
                         "LYRA_AUTH_MAX_FAILURES=1000000", NULL};
    if (it_server_start(&srv, home, NULL, env) != 0) {
        char *log = lyra_read_file(srv.log_path, NULL);
        fprintf(stderr, "lyra serve did not start:\n%s\n", log ? log : "");
        free(log);
        return -1;
    }
    json_t *role = call(
        "POST", "/roles", ADMIN_KEY,
        "{\"name\":\"llama-only\",\"permissions\":[\"chat\",\"models.read\"],\"models\":[\"llama-*\"]}", 201);
    json_decref(role);
    for (size_t i = 0; i < N_CALLERS; i++) {
        if (callers[i].kind != WITH_KEY)
            continue;
        char body[128];
        snprintf(body, sizeof body, "{\"role\":\"%s\",\"label\":\"it_rbac %s\"}", callers[i].role,
                 callers[i].label);
        make_key(body, callers[i].key, sizeof callers[i].key, callers[i].principal,
                 sizeof callers[i].principal);
    }
    return 0;
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

/* --- the matrix ----------------------------------------------------- */

/* The route's pattern with every {param} filled: a name no fixture has
 * ("llama-dummy" — inside llama-only's patterns, so that a model route
 * reaches its 404 rather than model_forbidden), a permission that exists. */
static void fill_path(const char *pattern, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = pattern; *p && o + 1 < len;) {
        if (*p != '{') {
            out[o++] = *p++;
            continue;
        }
        const char *end = strchr(p, '}');
        assert_non_null(end);
        const char *value = "llama-dummy";
        if (strncmp(p, "{permission}", 12) == 0)
            value = "models.read";
        else if (strncmp(p, "{id}", 4) == 0)
            value = strncmp(pattern, "/keys/", 6) == 0 ? "k_000000000000" : "dummy-id-0";
        int w = snprintf(out + o, len - o, "%s", value);
        assert_true(w > 0 && (size_t)w < len - o);
        o += (size_t)w;
        p = end + 1;
    }
    out[o] = '\0';
}

/* Expected class of an answer: 0 = anything but 401/403. */
static int expected(const struct lyra_route *rt, const struct caller *c)
{
    if (rt->permission[0] == '\0')
        return 0;
    if (c->kind != WITH_KEY)
        return 401;
    if (strcmp(rt->permission, "self") == 0)
        return 0;
    return holds(c, rt->permission) ? 0 : 403;
}

static bool is_stream(const struct lyra_route *rt)
{
    return strcmp(rt->method, "GET") == 0 &&
           (strcmp(rt->pattern, "/events") == 0 || strcmp(rt->pattern, "/events/ws") == 0);
}

/* One cell: the status, and whether it matches.  A 401/403 must also have
 * the right shape (code, WWW-Authenticate, the permission named). */
static int probe(const struct lyra_route *rt, const struct caller *c, const char *path, char *why,
                 size_t why_len)
{
    const char *key = c->kind == NO_KEY ? NULL : c->key;
    why[0] = '\0';
    if (is_stream(rt))
        return head_status(rt->method, path, key);
    struct it_response r;
    const char *body = strcmp(rt->method, "POST") == 0 ? "{}" : NULL;
    if (request(rt->method, path, key, body, &r) != 0) {
        snprintf(why, why_len, "no answer");
        it_response_free(&r);
        return -1;
    }
    int status = r.status;
    json_t *j = it_json(&r);
    char www[256];
    /* The Ollama routes answer errors in Ollama's {"error":"message"}: the
     * message must still name the failure (the code's text or the
     * permission). */
    bool ollama = strncmp(rt->pattern, "/api/", 5) == 0;
    const char *omsg = json_string_value(json_object_get(j, "error"));
    if (ollama && (status == 401 || status == 403)) {
        if (!omsg)
            snprintf(why, why_len, "%d on an Ollama route not in Ollama's shape", status);
        else if (status == 403 && !strstr(omsg, rt->permission))
            snprintf(why, why_len, "403 message does not name %s: %.100s", rt->permission, omsg);
        else if (!it_header(&r, "WWW-Authenticate", www, sizeof www) && status == 401)
            snprintf(why, why_len, "401 without WWW-Authenticate");
    } else if (status == 401) {
        const char *code = it_error_code(j);
        const char *want = c->kind == NO_KEY ? "missing_key" : "invalid_key";
        if (strcmp(code, want) != 0)
            snprintf(why, why_len, "401 code '%s', wanted '%s'", code, want);
        else if (!it_header(&r, "WWW-Authenticate", www, sizeof www) || !strstr(www, "Bearer realm=\"lyra\""))
            snprintf(why, why_len, "401 without WWW-Authenticate: Bearer realm=\"lyra\"");
        else if (c->kind == UNKNOWN_KEY && !strstr(www, "error=\"invalid_token\""))
            snprintf(why, why_len, "401 for a presented key without error=\"invalid_token\": %.120s", www);
    } else if (status == 403) {
        const char *code = it_error_code(j);
        const char *perm = json_string_value(json_object_get(json_object_get(j, "error"), "permission"));
        if (strcmp(code, "forbidden") != 0 || !perm || strcmp(perm, rt->permission) != 0)
            snprintf(why, why_len, "403 code '%s' permission '%s', wanted forbidden / %s", code,
                     perm ? perm : "", rt->permission);
    }
    json_decref(j);
    it_response_free(&r);
    return status;
}

static void test_matrix(void **state)
{
    int mismatches = 0;
    char line[512];
    int o = snprintf(line, sizeof line, "%-46s", "route \\ caller");
    for (size_t c = 0; c < N_CALLERS; c++)
        o += snprintf(line + o, sizeof line - (size_t)o, " %8s", callers[c].label);
    printf("%s\n", line);
    for (size_t i = 0; i < lyra_n_routes; i++) {
        const struct lyra_route *rt = &lyra_routes[i];
        char path[256], label[64];
        fill_path(rt->pattern, path, sizeof path);
        snprintf(label, sizeof label, "%s %s [%s]", rt->method, rt->pattern, rt->permission);
        o = snprintf(line, sizeof line, "%-46s", label);
        for (size_t c = 0; c < N_CALLERS; c++) {
            char why[256];
            int status = probe(rt, &callers[c], path, why, sizeof why);
            int want = expected(rt, &callers[c]);
            bool ok = !why[0] && status > 0 && (want == 0 ? status != 401 && status != 403 : status == want);
            if (!ok) {
                mismatches++;
                print_error("MISMATCH %s %s as %s: got %d, wanted %s%s%s\n", rt->method, path,
                            callers[c].label, status, want ? (want == 401 ? "401" : "403") : "not 401/403",
                            why[0] ? ": " : "", why);
            }
            o += snprintf(line + o, sizeof line - (size_t)o, " %7d%s", status, ok ? " " : "!");
        }
        printf("%s\n", line);
    }
    printf("%zu routes x %zu callers, %d mismatches\n", lyra_n_routes, N_CALLERS, mismatches);
    assert_int_equal(mismatches, 0);
    /* The matrix did not eat its fixtures: every key still works. */
    for (size_t c = 0; c < N_CALLERS; c++)
        if (callers[c].kind == WITH_KEY)
            json_decref(call("GET", "/permissions", callers[c].key, NULL, 200));
}

/* --- per-model access ----------------------------------------------- */

static bool listed(json_t *list, const char *field, const char *name)
{
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        const char *n = json_string_value(json_object_get(m, field));
        if (n && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static bool has_string(json_t *array, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(array, i,
                       v) if (json_string_value(v) && strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

static void test_per_model(void **state)
{
    const char *llama = callers[C_LLAMA].key;
    json_t *j = call(
        "POST", "/v1/chat/completions", llama,
        "{\"model\":\"llama-tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}",
        200);
    assert_non_null(json_object_get(j, "choices"));
    json_decref(j);
    expect_error(
        "POST", "/v1/chat/completions", llama,
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}", 403,
        "model_forbidden");
    expect_error("POST", "/chat", llama, "{\"model\":\"tiny\",\"message\":\"hi\"}", 403, "model_forbidden");
    expect_error("GET", "/models/tiny", llama, NULL, 403, "model_forbidden");
    json_decref(call("GET", "/models/llama-tiny", llama, NULL, 200));

    /* Lists show only what the role may use; admin sees both. */
    j = call("GET", "/models", llama, NULL, 200);
    json_t *list = json_object_get(j, "models");
    assert_true(listed(list, "name", "llama-tiny"));
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        const char *n = json_string_value(json_object_get(m, "name"));
        if (!n || strncmp(n, "llama-", 6) != 0)
            fail_msg("GET /models as llama-only lists '%s'", n ? n : "(no name)");
    }
    json_decref(j);
    j = call("GET", "/v1/models", llama, NULL, 200);
    assert_true(listed(json_object_get(j, "data"), "id", "llama-tiny"));
    assert_false(listed(json_object_get(j, "data"), "id", "tiny"));
    json_decref(j);
    j = call("GET", "/models", ADMIN_KEY, NULL, 200);
    assert_true(listed(json_object_get(j, "models"), "name", "tiny"));
    assert_true(listed(json_object_get(j, "models"), "name", "llama-tiny"));
    json_decref(j);
}

/* --- keys: expiry, revocation, the 401s ------------------------------ */

static void test_expired_key(void **state)
{
    char key[80];
    char body[160];
    snprintf(body, sizeof body, "{\"principal\":\"%s\",\"expires_in\":1}", callers[C_VIEWER].principal);
    json_t *j = call("POST", "/keys", ADMIN_KEY, body, 201);
    snprintf(key, sizeof key, "%s", json_string_value(json_object_get(j, "key")));
    int64_t expires = json_integer_value(json_object_get(j, "expires_ms"));
    assert_true(expires > lyra_wall_ms() - 5000 && expires <= lyra_wall_ms() + 1500);
    json_decref(j);
    json_decref(call("GET", "/status", key, NULL, 200));
    /* Past its expiry (wall clock, as the daemon sees it). */
    while (lyra_wall_ms() <= expires + 50) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    struct it_response r;
    assert_int_equal(request("GET", "/status", key, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    json_t *e = it_json(&r);
    assert_string_equal(it_error_code(e), "expired_key");
    char www[256];
    assert_non_null(it_header(&r, "WWW-Authenticate", www, sizeof www));
    assert_non_null(strstr(www, "Bearer realm=\"lyra\""));
    assert_non_null(strstr(www, "error=\"invalid_token\""));
    json_decref(e);
    it_response_free(&r);
    /* Listed as expired, never with its text. */
    snprintf(body, sizeof body, "/keys?principal=%s", callers[C_VIEWER].principal);
    struct it_response l;
    assert_int_equal(request("GET", body, ADMIN_KEY, NULL, &l), 0);
    assert_int_equal(l.status, 200);
    assert_null(strstr(l.body, key));
    assert_non_null(strstr(l.body, "\"expired\""));
    it_response_free(&l);
}

static void test_revoked_key(void **state)
{
    char body[160], key[80], path[80];
    snprintf(body, sizeof body, "{\"principal\":\"%s\",\"label\":\"to revoke\",\"expires_in\":\"30d\"}",
             callers[C_USER].principal);
    json_t *j = call("POST", "/keys", ADMIN_KEY, body, 201);
    snprintf(key, sizeof key, "%s", json_string_value(json_object_get(j, "key")));
    const char *id = json_string_value(json_object_get(j, "id"));
    int64_t expires = json_integer_value(json_object_get(j, "expires_ms"));
    int64_t month = (int64_t)30 * 86400 * 1000;
    assert_true(expires > lyra_wall_ms() + month - 60000 && expires < lyra_wall_ms() + month + 60000);
    snprintf(path, sizeof path, "/keys/%s", id);
    json_decref(call("GET", "/status", key, NULL, 200));
    json_t *rv = call("DELETE", path, ADMIN_KEY, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(rv, "revoked")), id);
    json_decref(rv);
    expect_error("GET", "/status", key, NULL, 401, "revoked_key");
    json_decref(j);
}

static void test_missing_and_malformed(void **state)
{
    struct it_response r;
    char www[256];
    assert_int_equal(request("GET", "/status", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(it_header(&r, "WWW-Authenticate", www, sizeof www));
    assert_non_null(strstr(www, "Bearer realm=\"lyra\""));
    assert_null(strstr(www, "invalid_token"));
    it_response_free(&r);
    /* Not "Bearer <key>". */
    assert_int_equal(it_http(srv.port, "GET", "/status", "Authorization: Basic dXNlcjpwYXNz\r\n", NULL, &r),
                     0);
    assert_int_equal(r.status, 401);
    json_t *j = it_json(&r);
    assert_string_equal(it_error_code(j), "malformed_key");
    json_decref(j);
    it_response_free(&r);
    /* Liveness needs nothing. */
    json_decref(call("GET", "/health", NULL, NULL, 200));
}

/* --- /permissions ---------------------------------------------------- */

static void test_permissions_get(void **state)
{
    json_t *j = call("GET", "/permissions", callers[C_VIEWER].key, NULL, 200);
    json_t *perms = json_object_get(j, "permissions");
    assert_int_equal(json_array_size(perms), 18);
    assert_true(listed(perms, "name", "permissions.manage"));
    assert_non_null(json_string_value(json_object_get(json_array_get(perms, 0), "description")));
    json_t *roles = json_object_get(j, "roles");
    assert_true(listed(roles, "name", "admin"));
    assert_true(listed(roles, "name", "llama-only"));
    /* Roles only: no principals, no keys in what a viewer sees. */
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, callers[C_OPERATOR].principal));
    assert_null(strstr(text, "lyra_"));
    free(text);
    json_t *me = json_object_get(j, "caller");
    assert_string_equal(json_string_value(json_object_get(me, "principal")), callers[C_VIEWER].principal);
    assert_string_equal(json_string_value(json_object_get(me, "role")), "viewer");
    size_t i;
    json_t *p;
    bool has_metrics = false;
    json_array_foreach(json_object_get(me, "permissions"), i, p)
    {
        assert_string_not_equal(json_string_value(p), "models.load");
        has_metrics |= strcmp(json_string_value(p), "metrics.read") == 0;
    }
    assert_true(has_metrics);
    json_decref(j);
}

static void test_permissions_check(void **state)
{
    const char *viewer = callers[C_VIEWER].key, *llama = callers[C_LLAMA].key;
    json_t *j = call("GET", "/permissions/check/models.read", viewer, NULL, 200);
    assert_true(json_is_true(json_object_get(j, "allowed")));
    assert_string_equal(json_string_value(json_object_get(j, "permission")), "models.read");
    json_decref(j);
    j = call("GET", "/permissions/check/models.load", viewer, NULL, 403);
    assert_string_equal(it_error_code(j), "forbidden");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "permission")),
                        "models.load");
    json_decref(j);
    expect_error("GET", "/permissions/check/no.such", viewer, NULL, 404, "unknown_permission");
    j = call("GET", "/permissions/check/chat?model=llama-tiny", llama, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "llama-tiny");
    json_decref(j);
    expect_error("GET", "/permissions/check/chat?model=tiny", llama, NULL, 403, "model_forbidden");
    expect_error("GET", "/permissions/check/jobs.read?model=llama-tiny", llama, NULL, 403, "forbidden");
    /* Admin's "*" covers the whole catalogue. */
    json_decref(call("GET", "/permissions/check/permissions.manage?model=anything", ADMIN_KEY, NULL, 200));
    expect_error("GET", "/permissions/check/status.read", NULL, NULL, 401, "missing_key");
}

static void test_grant_revoke(void **state)
{
    const char *llama = callers[C_LLAMA].key;
    expect_error("GET", "/permissions/check/jobs.read", llama, NULL, 403, "forbidden");
    expect_error("GET", "/jobs", llama, NULL, 403, "forbidden");
    json_t *j = call("POST", "/permissions/grant", ADMIN_KEY,
                     "{\"role\":\"llama-only\",\"permission\":\"jobs.read\"}", 200);
    assert_true(has_string(json_object_get(json_object_get(j, "role"), "permissions"), "jobs.read"));
    json_decref(j);
    json_decref(call("GET", "/permissions/check/jobs.read", llama, NULL, 200));
    json_decref(call("GET", "/jobs", llama, NULL, 200));
    json_decref(call("POST", "/permissions/revoke", ADMIN_KEY,
                     "{\"role\":\"llama-only\",\"permission\":\"jobs.read\"}", 200));
    expect_error("GET", "/permissions/check/jobs.read", llama, NULL, 403, "forbidden");
    expect_error("GET", "/jobs", llama, NULL, 403, "forbidden");

    /* A model pattern, the same way. */
    json_decref(
        call("POST", "/permissions/grant", ADMIN_KEY, "{\"role\":\"llama-only\",\"model\":\"tiny\"}", 200));
    json_decref(call("GET", "/permissions/check/chat?model=tiny", llama, NULL, 200));
    json_decref(call("GET", "/models/tiny", llama, NULL, 200));
    json_decref(
        call("POST", "/permissions/revoke", ADMIN_KEY, "{\"role\":\"llama-only\",\"model\":\"tiny\"}", 200));
    expect_error("GET", "/permissions/check/chat?model=tiny", llama, NULL, 403, "model_forbidden");

    /* What is refused. */
    expect_error("POST", "/permissions/grant", ADMIN_KEY, "{\"role\":\"viewer\",\"permission\":\"chat\"}",
                 403, "builtin_role");
    expect_error("POST", "/permissions/grant", ADMIN_KEY,
                 "{\"role\":\"llama-only\",\"permission\":\"no.such\"}", 400, "invalid_request");
    expect_error("POST", "/permissions/grant", ADMIN_KEY,
                 "{\"role\":\"nobody-role\",\"permission\":\"chat\"}", 404, "not_found");
    expect_error("POST", "/permissions/grant", ADMIN_KEY,
                 "{\"role\":\"llama-only\",\"permission\":\"chat\",\"model\":\"x\"}", 400, "invalid_request");
    j = call("POST", "/permissions/grant", ADMIN_KEY, "{\"role\":\"llama-only\",\"permision\":\"chat\"}",
             400);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "'permision'"));
    json_decref(j);
    expect_error("POST", "/permissions/grant", ADMIN_KEY, "{\"role\":7,\"permission\":\"chat\"}", 400,
                 "invalid_request");
    expect_error("POST", "/permissions/grant", ADMIN_KEY, "[]", 400, "invalid_request");
    expect_error("POST", "/permissions/grant", callers[C_OPERATOR].key,
                 "{\"role\":\"llama-only\",\"permission\":\"jobs.read\"}", 403, "forbidden");
}

/* --- users, keys, roles ---------------------------------------------- */

static void test_users_and_keys(void **state)
{
    json_t *j = call("POST", "/users", ADMIN_KEY, "{\"name\":\"alice\",\"role\":\"user\",\"key\":true}", 201);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "alice");
    assert_string_equal(json_string_value(json_object_get(j, "kind")), "user");
    char key[80];
    snprintf(key, sizeof key, "%s", json_string_value(json_object_get(j, "key")));
    assert_int_equal(strlen(key), 48);
    json_decref(j);
    j = call("GET", "/permissions", key, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "caller"), "principal")),
                        "alice");
    json_decref(j);
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"alice\",\"role\":\"user\"}", 409, "exists");
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"bob\",\"role\":\"nope\"}", 404, "not_found");
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"../x\",\"role\":\"user\"}", 400,
                 "invalid_request");
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"anonymous\",\"role\":\"user\"}", 400,
                 "invalid_request");
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"bob\",\"role\":\"user\",\"kind\":\"robot\"}", 400,
                 "invalid_request");
    expect_error("POST", "/users", ADMIN_KEY, "{\"name\":\"bob\",\"role\":\"user\",\"key\":\"yes\"}", 400,
                 "invalid_request");

    /* The role changes at once for keys already out. */
    json_decref(call("GET", "/status", key, NULL, 200));
    j = call("POST", "/users/alice/role", ADMIN_KEY, "{\"role\":\"llama-only\"}", 200);
    assert_string_equal(json_string_value(json_object_get(j, "role")), "llama-only");
    json_decref(j);
    expect_error("GET", "/status", key, NULL, 403, "forbidden");

    /* Listed, counted, never with key text. */
    struct it_response r;
    assert_int_equal(request("GET", "/users", ADMIN_KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"alice\""));
    assert_null(strstr(r.body, "lyra_"));
    it_response_free(&r);
    assert_int_equal(request("GET", "/keys", ADMIN_KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, key));
    assert_null(strstr(r.body, ADMIN_KEY));
    it_response_free(&r);
    expect_error("GET", "/keys?principal=nobody", ADMIN_KEY, NULL, 404, "not_found");

    /* A service account with a generated name, and a bad expiry. */
    j = call("POST", "/keys", ADMIN_KEY, "{\"role\":\"viewer\",\"expires_at\":\"2999-01-01T00:00:00Z\"}",
             201);
    const char *p = json_string_value(json_object_get(j, "principal"));
    assert_non_null(p);
    assert_int_equal(strlen(p), 10);
    assert_memory_equal(p, "svc-", 4);
    assert_int_equal(json_integer_value(json_object_get(j, "expires_ms")), INT64_C(32472144000000));
    json_decref(j);
    expect_error("POST", "/keys", ADMIN_KEY, "{\"role\":\"viewer\",\"expires_in\":\"soon\"}", 400,
                 "invalid_request");
    expect_error("POST", "/keys", ADMIN_KEY, "{\"role\":\"viewer\",\"expires_at\":\"2001-01-01T00:00:00Z\"}",
                 400, "invalid_request");
    expect_error("POST", "/keys", ADMIN_KEY, "{\"principal\":\"alice\",\"role\":\"viewer\"}", 400,
                 "invalid_request");
    expect_error("POST", "/keys", ADMIN_KEY, "{\"principal\":\"nobody\"}", 404, "not_found");
    expect_error("POST", "/keys", ADMIN_KEY, "{\"principal\":\"alice\",\"colour\":\"red\"}", 400,
                 "invalid_request");

    /* Removing a user ends its keys. */
    j = call("DELETE", "/users/alice", ADMIN_KEY, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(j, "removed")), "alice");
    json_decref(j);
    expect_error("GET", "/permissions", key, NULL, 401, "revoked_key");
    expect_error("DELETE", "/users/alice", ADMIN_KEY, NULL, 404, "not_found");
}

static void test_roles(void **state)
{
    json_t *j = call("GET", "/roles", ADMIN_KEY, NULL, 200);
    json_t *roles = json_object_get(j, "roles");
    assert_true(listed(roles, "name", "operator"));
    assert_true(listed(roles, "name", "llama-only"));
    json_decref(j);
    j = call("POST", "/roles", ADMIN_KEY, "{\"name\":\"readers\",\"permissions\":[\"models.read\"]}", 201);
    json_t *models_j = json_object_get(j, "models");
    assert_int_equal(json_array_size(models_j), 1);
    assert_string_equal(json_string_value(json_array_get(models_j, 0)), "*");
    json_decref(j);
    expect_error("POST", "/roles", ADMIN_KEY, "{\"name\":\"readers\",\"permissions\":[]}", 409, "exists");
    expect_error("POST", "/roles", ADMIN_KEY, "{\"name\":\"r2\",\"permissions\":[\"models.read\",3]}", 400,
                 "invalid_request");
    expect_error("POST", "/roles", ADMIN_KEY, "{\"name\":\"r2\",\"permissions\":\"models.read\"}", 400,
                 "invalid_request");
    expect_error("POST", "/roles", ADMIN_KEY, "{\"name\":\"r2\",\"permissions\":[\"bogus\"]}", 400,
                 "invalid_request");
    expect_error("DELETE", "/roles/viewer", ADMIN_KEY, NULL, 403, "builtin_role");
    /* In use: refused until its last holder is gone. */
    json_decref(call("POST", "/users", ADMIN_KEY, "{\"name\":\"reader1\",\"role\":\"readers\"}", 201));
    expect_error("DELETE", "/roles/readers", ADMIN_KEY, NULL, 409, "role_in_use");
    json_decref(call("DELETE", "/users/reader1", ADMIN_KEY, NULL, 200));
    j = call("DELETE", "/roles/readers", ADMIN_KEY, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(j, "removed")), "readers");
    json_decref(j);
    expect_error("DELETE", "/roles/readers", ADMIN_KEY, NULL, 404, "not_found");
}

/* A custom role that may manage permissions must not hand out more than
 * it holds: not the admin role, not a permission it lacks, not a wider
 * model pattern; not act on an admin's keys or account. */
static void test_no_escalation(void **state)
{
    json_decref(call("POST", "/roles", ADMIN_KEY,
                     "{\"name\":\"mgr\",\"permissions\":[\"permissions.manage\",\"models.read\",\"chat\"],"
                     "\"models\":[\"llama-*\"]}",
                     201));
    char mgr[80];
    make_key("{\"role\":\"mgr\",\"name\":\"mgr1\"}", mgr, sizeof mgr, NULL, 0);
    expect_error("POST", "/users", mgr, "{\"name\":\"evil\",\"role\":\"admin\"}", 403, "escalation");
    expect_error("POST", "/keys", mgr, "{\"role\":\"admin\"}", 403, "escalation");
    expect_error("POST", "/users/mgr1/role", mgr, "{\"role\":\"admin\"}", 403, "escalation");
    expect_error("POST", "/keys", mgr, "{\"principal\":\"admin\"}", 403, "escalation");
    expect_error("DELETE", "/users/admin", mgr, NULL, 403, "escalation");
    expect_error("POST", "/permissions/grant", mgr, "{\"role\":\"mgr\",\"permission\":\"models.load\"}", 403,
                 "escalation");
    expect_error("POST", "/permissions/grant", mgr, "{\"role\":\"mgr\",\"model\":\"*\"}", 403, "escalation");
    expect_error("POST", "/roles", mgr, "{\"name\":\"wide\",\"permissions\":[\"audit.read\"]}", 403,
                 "escalation");
    /* viewer holds jobs.read and metrics.read, which mgr does not */
    expect_error("POST", "/users", mgr, "{\"name\":\"v1\",\"role\":\"viewer\"}", 403, "escalation");
    /* within its own grants it may act */
    json_decref(call("POST", "/roles", mgr,
                     "{\"name\":\"narrow\",\"permissions\":[\"chat\"],\"models\":[\"llama-*\"]}", 201));
    json_decref(call("POST", "/users", mgr, "{\"name\":\"n1\",\"role\":\"narrow\"}", 201));
    json_decref(call("DELETE", "/users/n1", mgr, NULL, 200));
    json_decref(call("DELETE", "/roles/narrow", ADMIN_KEY, NULL, 200));
    json_decref(call("DELETE", "/users/mgr1", ADMIN_KEY, NULL, 200));
    json_decref(call("DELETE", "/roles/mgr", ADMIN_KEY, NULL, 200));
}

/* The bootstrap admin plus the matrix's admin service account: demote the
 * second, and then nothing may take the first's admin away. */
static void test_last_admin(void **state)
{
    char path[160];
    const char *svc = callers[C_ADMIN].principal;
    snprintf(path, sizeof path, "/users/%s/role", svc);
    json_decref(call("POST", path, ADMIN_KEY, "{\"role\":\"operator\"}", 200));
    expect_error("DELETE", "/users/admin", ADMIN_KEY, NULL, 409, "last_admin");
    expect_error("POST", "/users/admin/role", ADMIN_KEY, "{\"role\":\"viewer\"}", 409, "last_admin");
    json_t *keys = call("GET", "/keys?principal=admin", ADMIN_KEY, NULL, 200);
    size_t i;
    json_t *k;
    int tried = 0;
    json_array_foreach(json_object_get(keys, "keys"), i, k)
    {
        if (strcmp(json_string_value(json_object_get(k, "state")), "active") != 0)
            continue;
        char kp[64];
        snprintf(kp, sizeof kp, "/keys/%s", json_string_value(json_object_get(k, "id")));
        expect_error("DELETE", kp, ADMIN_KEY, NULL, 409, "last_admin");
        tried++;
    }
    assert_int_equal(tried, 1);
    json_decref(keys);
    json_decref(call("GET", "/users", ADMIN_KEY, NULL, 200));
    /* Back to two admins: the first may go now. */
    json_decref(call("POST", path, ADMIN_KEY, "{\"role\":\"admin\"}", 200));
    json_decref(call("GET", "/users", callers[C_ADMIN].key, NULL, 200));
}

/* The audit rows of the changes above carry what changed — and no key. */
static bool audit_has(json_t *entries, const char *detail)
{
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e)
    {
        const char *d = json_string_value(json_object_get(e, "detail"));
        if (d && strstr(d, detail))
            return true;
    }
    return false;
}

static void test_audit(void **state)
{
    struct it_response r;
    assert_int_equal(request("GET", "/audit?limit=1000", ADMIN_KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    for (size_t c = 0; c < N_CALLERS; c++)
        if (callers[c].kind == WITH_KEY && strstr(r.body, callers[c].key))
            fail_msg("the audit log holds %s's key", callers[c].label);
    assert_null(strstr(r.body, ADMIN_KEY));
    json_t *j = it_json(&r);
    json_t *entries = json_object_get(j, "entries");
    assert_true(audit_has(entries, "role=llama-only permission=jobs.read"));
    assert_true(audit_has(entries, "role=llama-only model=tiny"));
    assert_true(audit_has(entries, "role=llama-only permissions=chat,models.read models=llama-*"));
    assert_true(audit_has(entries, "principal=alice kind=user role=user key_id=k_"));
    assert_true(audit_has(entries, "principal=alice role=llama-only"));
    char want[128];
    snprintf(want, sizeof want, "principal=%s (new service account, role=viewer)",
             callers[C_VIEWER].principal);
    assert_true(audit_has(entries, want));
    json_decref(j);
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matrix),
        cmocka_unit_test(test_per_model),
        cmocka_unit_test(test_missing_and_malformed),
        cmocka_unit_test(test_expired_key),
        cmocka_unit_test(test_revoked_key),
        cmocka_unit_test(test_permissions_get),
        cmocka_unit_test(test_permissions_check),
        cmocka_unit_test(test_grant_revoke),
        cmocka_unit_test(test_users_and_keys),
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_no_escalation),
        cmocka_unit_test(test_last_admin),
        cmocka_unit_test(test_audit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
