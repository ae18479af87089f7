/* permissions.c — the RBAC endpoints.  The policy itself is auth/auth.h's;
 * this file turns HTTP into its calls and its answers back into HTTP:
 *   GET    /permissions                     the catalogue, the roles, the caller's grants
 *   GET    /permissions/check/{permission}  200 allowed / 403 (?model=NAME: also that model)
 *   POST   /permissions/grant|revoke        {"role", "permission"} or {"role", "model"}
 *   GET    /users, POST /users, DELETE /users/{name}, POST /users/{name}/role
 *   GET    /keys[?principal=], POST /keys, DELETE /keys/{id}
 *   GET    /roles, POST /roles, DELETE /roles/{name}
 * (the route table gives every one but the first two permissions.manage).
 *
 * Bodies are checked strictly before anything changes: an object holding
 * only the fields an endpoint names, each of its JSON type (strings,
 * booleans, arrays of at most 64 strings), names per lyra_auth_name_valid;
 * unknown fields are a 400 that lists them.  The JSON reader has already
 * refused bodies that are not UTF-8, too large or hold a NUL.
 *
 * Every change adds what changed to the request's audit row
 * (lyra_authz_audit_detail): role, permission, pattern, principal, key id —
 * never a key.  A new key's text appears in exactly one answer (201 of
 * POST /keys, or POST /users with "key": true); every answer already
 * carries Cache-Control: no-store.
 *
 * Errors from auth/ map as: EINVAL 400 invalid_request, ENOTFOUND 404
 * not_found, EEXISTS 409 exists, EPERM 403 builtin_role, ECONFLICT 409
 * last_admin / role_in_use, EDB 500 storage_failed. */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "api/authz.h"
#include "api/server.h"
#include "core/log.h"
#include "core/util.h"

/* The longest expiry a key may be given: ten years. */
#define MAX_LIFETIME_S ((int64_t)10 * 366 * 24 * 3600)
/* The latest absolute expiry accepted: 9999-12-31T23:59:59.999Z. */
#define MAX_EPOCH_MS INT64_C(253402300799999)

/* ------------------------------------------------------------------ */
/* Answers                                                            */

/* Answers a failed auth/ call.  `conflict` is the code of an ECONFLICT,
 * which the call site knows: deleting a role can only conflict with its
 * holders (role_in_use), every other change only with the last admin. */
static void send_auth_error(struct lyra_http_req *req, int rc, const struct lyra_err *err,
                            const char *conflict)
{
    const char *msg = err && err->msg[0] ? err->msg : lyra_strerror(rc);
    switch (rc) {
    case LYRA_EINVAL:
        lyra_http_send_error(req, 400, "invalid_request", "%s", msg);
        return;
    case LYRA_ENOTFOUND:
        lyra_http_send_error(req, 404, "not_found", "%s", msg);
        return;
    case LYRA_EEXISTS:
        lyra_http_send_error(req, 409, "exists", "%s", msg);
        return;
    case LYRA_EPERM:
        lyra_http_send_error(req, 403, "builtin_role", "%s", msg);
        return;
    case LYRA_ECONFLICT:
        lyra_http_send_error(req, 409, conflict, "%s", msg);
        return;
    case LYRA_EDB:
        lyra_http_send_error(req, 500, "storage_failed", "%s", msg);
        return;
    default:
        lyra_http_send_error(req, lyra_err_http_status(rc) >= 500 ? lyra_err_http_status(rc) : 500,
                             "internal", "%s", msg);
    }
}

static void send_oom(struct lyra_http_req *req)
{
    lyra_http_send_error(req, 500, "internal", "out of memory");
}

/* Sends `body` (taken) with `status`, or a 500 when it could not be built. */
static void send_built(struct lyra_http_req *req, int status, json_t *body)
{
    if (!body) {
        send_oom(req);
        return;
    }
    lyra_http_send_json(req, status, body);
}

static bool have_auth(struct lyra_server *srv, struct lyra_http_req *req)
{
    if (srv->auth)
        return true;
    lyra_http_send_error(req, 503, "unavailable", "authentication is not set up in this daemon");
    return false;
}

/* The element of `list` (an array of objects) whose "name" is `name`: a
 * new reference, or NULL. */
static json_t *find_named(json_t *list, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "name"));
        if (n && strcmp(n, name) == 0)
            return json_incref(v);
    }
    return NULL;
}

static json_t *user_entry(struct lyra_auth *auth, const char *name)
{
    json_t *all = lyra_auth_users_json(auth);
    json_t *one = find_named(all, name);
    json_decref(all);
    return one;
}

static json_t *role_entry(struct lyra_auth *auth, const char *name)
{
    json_t *all = lyra_auth_roles_json(auth);
    json_t *one = find_named(all, name);
    json_decref(all);
    return one;
}

/* ------------------------------------------------------------------ */
/* No escalation                                                      */

/* True when the caller's own model patterns cover every one of `models`
 * (a caller with "*" covers all; otherwise each pattern must be one of
 * the caller's, literally). */
static bool covers_models(json_t *caller_models, json_t *models)
{
    size_t i, j;
    json_t *m, *c;
    json_array_foreach(caller_models, j, c) if (strcmp(json_string_value(c) ?: "", "*") == 0) return true;
    json_array_foreach(models, i, m)
    {
        bool found = false;
        json_array_foreach(caller_models, j, c) found |= json_equal(c, m);
        if (!found)
            return false;
    }
    return true;
}

/* A manager who is not an admin may not hand out more than it holds
 * itself: giving a role (to a new or changed principal), acting on a
 * principal (its keys, its removal) or granting a permission or pattern
 * needs every permission and model pattern involved.  Otherwise a custom
 * role with permissions.manage could make itself admin.  Answers 403
 * "escalation" and returns false when the caller falls short. */
static bool caller_covers(struct lyra_http_req *req, struct lyra_server *srv, const char *role, const char *perm,
                          const char *model)
{
    const struct lyra_principal *me = lyra_authz_principal(req);
    if (!me)
        return true; /* no policy installed */
    json_t *mine = lyra_auth_principal_json(srv->auth, me);
    json_t *r = role ? role_entry(srv->auth, role) : NULL;
    bool ok = mine != NULL;
    const char *missing = NULL;
    size_t i;
    json_t *v;
    if (ok && r) {
        json_array_foreach(json_object_get(r, "permissions"), i, v)
        {
            const char *p = json_string_value(v);
            if (p && !lyra_auth_allowed(srv->auth, me, p, NULL)) {
                ok = false;
                missing = p;
                break;
            }
        }
        if (ok && !covers_models(json_object_get(mine, "models"), json_object_get(r, "models"))) {
            ok = false;
            missing = "its model patterns";
        }
    }
    if (ok && perm && !lyra_auth_allowed(srv->auth, me, perm, NULL)) {
        ok = false;
        missing = perm;
    }
    if (ok && model) {
        json_t *one = json_pack("[s]", model);
        ok = covers_models(json_object_get(mine, "models"), one);
        json_decref(one);
        if (!ok)
            missing = model;
    }
    if (!ok)
        lyra_http_send_json(req, 403,
                            json_pack("{s:{s:s, s:s++}}", "error", "code", "escalation", "message",
                                      "only a caller that holds everything it hands out may do this; you lack ",
                                      missing ? missing : "permissions", role ? " (of role)" : ""));
    json_decref(r);
    json_decref(mine);
    return ok;
}

/* The role of principal `name`, copied into buf; false when there is none. */
static bool role_of(struct lyra_server *srv, const char *name, char *buf, size_t len)
{
    json_t *u = user_entry(srv->auth, name);
    const char *r = json_string_value(json_object_get(u, "role"));
    if (r)
        snprintf(buf, len, "%s", r);
    json_decref(u);
    return r != NULL;
}

/* ------------------------------------------------------------------ */
/* Strict body checks (each answers 400 itself and returns false)     */

/* Reads the body: a JSON object whose fields are all in `allowed`
 * (NULL-terminated).  On false the request is answered and *out is NULL. */
static bool read_body(struct lyra_http_req *req, const char *const *allowed, json_t **out)
{
    *out = NULL;
    json_t *body = NULL;
    if (lyra_http_read_json(req, &body) < 0)
        return false;
    if (!json_is_object(body)) {
        lyra_http_send_error(req, 400, "invalid_request", "the body must be a JSON object");
        json_decref(body);
        return false;
    }
    char unknown[512] = "";
    size_t used = 0, n_unknown = 0;
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool known = false;
        for (size_t i = 0; allowed[i] && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (known)
            continue;
        n_unknown++;
        if (used < sizeof unknown - 1) {
            int w = lyra_fmt(unknown + used, sizeof unknown - used, "%s'%.*s'", n_unknown > 1 ? ", " : "",
                             (int)lyra_utf8_clip(key, 48), key);
            used = w < 0 ? used : used + (size_t)w;
            if (used > sizeof unknown - 1)
                used = sizeof unknown - 1;
        }
    }
    if (n_unknown) {
        char names[256] = "";
        size_t nu = 0;
        for (size_t i = 0; allowed[i]; i++) {
            int w = lyra_fmt(names + nu, sizeof names - nu, "%s%s", i ? ", " : "", allowed[i]);
            nu = w < 0 || nu + (size_t)w >= sizeof names ? sizeof names - 1 : nu + (size_t)w;
        }
        lyra_http_send_error(req, 400, "invalid_request", "unknown field%s %s (this endpoint takes %s)",
                             n_unknown > 1 ? "s" : "", unknown, names);
        json_decref(body);
        return false;
    }
    *out = body;
    return true;
}

/* The string field `name`: *out NULL when absent.  Present, it must be a
 * string (null is not). */
static bool opt_string(struct lyra_http_req *req, json_t *body, const char *name, const char **out)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (!v)
        return true;
    if (!json_is_string(v)) {
        lyra_http_send_error(req, 400, "invalid_request", "field '%s' must be a string", name);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool req_string(struct lyra_http_req *req, json_t *body, const char *name, const char **out)
{
    if (!opt_string(req, body, name, out))
        return false;
    if (!*out) {
        lyra_http_send_error(req, 400, "invalid_request", "field '%s' (a string) is required", name);
        return false;
    }
    return true;
}

/* A name of a principal or role: a string that lyra_auth_name_valid takes. */
static bool valid_name(struct lyra_http_req *req, const char *field, const char *value)
{
    if (lyra_auth_name_valid(value))
        return true;
    lyra_http_send_error(req, 400, "invalid_request",
                         "%s '%.*s' is not a valid name (1..%d of A-Z a-z 0-9 . _ -, not \"%s\")", field,
                         (int)lyra_utf8_clip(value, 80), value, LYRA_AUTH_NAME_MAX, LYRA_AUTH_ANONYMOUS);
    return false;
}

static bool req_name(struct lyra_http_req *req, json_t *body, const char *field, const char **out)
{
    return req_string(req, body, field, out) && valid_name(req, field, *out);
}

static bool opt_bool(struct lyra_http_req *req, json_t *body, const char *name, bool dflt, bool *out)
{
    json_t *v = json_object_get(body, name);
    *out = dflt;
    if (!v)
        return true;
    if (!json_is_boolean(v)) {
        lyra_http_send_error(req, 400, "invalid_request", "field '%s' must be true or false", name);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

/* An array of at most LYRA_AUTH_PATTERNS_MAX strings: items[] borrows
 * them from the body.  *present says whether the field was there. */
static bool string_array(struct lyra_http_req *req, json_t *body, const char *name,
                         const char *items[LYRA_AUTH_PATTERNS_MAX], size_t *n, bool *present)
{
    json_t *v = json_object_get(body, name);
    *n = 0;
    *present = v != NULL;
    if (!v)
        return true;
    if (!json_is_array(v)) {
        lyra_http_send_error(req, 400, "invalid_request", "field '%s' must be an array of strings", name);
        return false;
    }
    if (json_array_size(v) > LYRA_AUTH_PATTERNS_MAX) {
        lyra_http_send_error(req, 400, "invalid_request", "field '%s' has %zu items; at most %d", name,
                             json_array_size(v), LYRA_AUTH_PATTERNS_MAX);
        return false;
    }
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item)) {
            lyra_http_send_error(req, 400, "invalid_request", "field '%s': item %zu is not a string", name,
                                 i);
            return false;
        }
        items[(*n)++] = json_string_value(item);
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Times                                                              */

/* Reads exactly `n` decimal digits. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/* RFC 3339 date-time ("2026-11-27T14:00:00Z", "...:00.5+02:00") to
 * milliseconds since the epoch.  Leap seconds are refused. */
static bool parse_rfc3339(const char *s, int64_t *ms_out)
{
    int Y, M, D, h, m, sec, ms = 0, oh = 0, om = 0, sign = 0;
    const char *p = s;
    if (!digits(&p, 4, &Y) || *p++ != '-' || !digits(&p, 2, &M) || *p++ != '-' || !digits(&p, 2, &D))
        return false;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return false;
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &m) || *p++ != ':' || !digits(&p, 2, &sec))
        return false;
    if (*p == '.') {
        p++;
        int n = 0, scale = 100;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                ms += (*p - '0') * scale;
            scale /= 10;
            n++;
            p++;
        }
        if (n == 0 || n > 9)
            return false;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p++ == '+' ? 1 : -1;
        if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
            return false;
    } else {
        return false;
    }
    if (*p || Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 59)
        return false;
    struct tm tm = {
        .tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h, .tm_min = m, .tm_sec = sec};
    time_t t = timegm(&tm);
    /* timegm normalises 31 April into 1 May: a changed day is a bad date. */
    if (t == (time_t)-1 || tm.tm_mday != D || tm.tm_mon != M - 1)
        return false;
    *ms_out = ((int64_t)t - sign * (int64_t)(oh * 3600 + om * 60)) * 1000 + ms;
    return true;
}

/* "30d", "12h", "90m", "3600s" to seconds. */
static bool parse_duration(const char *s, int64_t *secs)
{
    int64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > MAX_LIFETIME_S)
            return false;
        p++;
    }
    if (p == s || !p[0] || p[1])
        return false;
    int64_t unit = *p == 's' ? 1 : *p == 'm' ? 60 : *p == 'h' ? 3600 : *p == 'd' ? 86400 : 0;
    if (!unit)
        return false;
    *secs = v * unit;
    return true;
}

/* The key's expiry from "expires_in" or "expires_at" (0 = never). */
static bool key_expiry(struct lyra_http_req *req, json_t *body, int64_t *expires_ms)
{
    json_t *in = json_object_get(body, "expires_in"), *at = json_object_get(body, "expires_at");
    int64_t now = lyra_wall_ms();
    *expires_ms = 0;
    if (in && at) {
        lyra_http_send_error(req, 400, "invalid_request", "give expires_in or expires_at, not both");
        return false;
    }
    if (in) {
        int64_t secs = 0;
        bool ok;
        if (json_is_integer(in)) {
            json_int_t v = json_integer_value(in);
            ok = v >= 1 && v <= MAX_LIFETIME_S;
            secs = ok ? (int64_t)v : 0;
        } else {
            ok = json_is_string(in) && parse_duration(json_string_value(in), &secs) && secs >= 1 &&
                 secs <= MAX_LIFETIME_S;
        }
        if (!ok) {
            lyra_http_send_error(
                req, 400, "invalid_request",
                "expires_in must be seconds (an integer from 1) or a duration such as \"30d\", "
                "\"12h\", \"90m\", \"3600s\", at most 10 years");
            return false;
        }
        *expires_ms = now + secs * 1000;
    } else if (at) {
        int64_t ms = 0;
        bool ok;
        if (json_is_integer(at)) {
            json_int_t v = json_integer_value(at);
            ok = v > 0 && v <= MAX_EPOCH_MS;
            ms = ok ? (int64_t)v : 0;
        } else {
            ok = json_is_string(at) && parse_rfc3339(json_string_value(at), &ms) && ms <= MAX_EPOCH_MS;
        }
        if (!ok) {
            lyra_http_send_error(
                req, 400, "invalid_request",
                "expires_at must be an RFC 3339 time (\"2027-01-31T12:00:00Z\") or milliseconds "
                "since the epoch");
            return false;
        }
        if (ms <= now) {
            lyra_http_send_error(req, 400, "invalid_request", "expires_at is not in the future");
            return false;
        }
        *expires_ms = ms;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Permissions                                                        */

static bool known_permission(const char *name)
{
    for (size_t i = 0; i < lyra_auth_n_permissions; i++)
        if (strcmp(lyra_auth_permissions[i].name, name) == 0)
            return true;
    return false;
}

void lyra_api_permissions_get(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const struct lyra_principal *p = lyra_authz_principal(req);
    if (!p) {
        lyra_http_send_error(req, 401, "missing_key", "this request has no principal");
        return;
    }
    json_t *perms = json_array();
    for (size_t i = 0; perms && i < lyra_auth_n_permissions; i++)
        if (json_array_append_new(perms, json_pack("{s:s, s:s}", "name", lyra_auth_permissions[i].name,
                                                   "description", lyra_auth_permissions[i].description)) <
            0) {
            json_decref(perms);
            perms = NULL;
        }
    /* Roles are names, permissions and patterns only: nothing about who
     * holds them, so every caller may see them. */
    json_t *roles = lyra_auth_roles_json(srv->auth);
    json_t *me = lyra_auth_principal_json(srv->auth, p);
    if (!perms || !roles || !me) {
        json_decref(perms);
        json_decref(roles);
        json_decref(me);
        send_oom(req);
        return;
    }
    send_built(req, 200, json_pack("{s:o, s:o, s:o}", "permissions", perms, "roles", roles, "caller", me));
}

void lyra_api_permissions_check(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *perm = lyra_http_param(req, "permission");
    const char *model = lyra_http_query(req, "model");
    if (!perm || !known_permission(perm)) {
        lyra_http_send_error(req, 404, "unknown_permission",
                             "'%.*s' is not a permission (GET /permissions lists them)",
                             (int)lyra_utf8_clip(perm ? perm : "", 80), perm ? perm : "");
        return;
    }
    if (model && !*model) {
        lyra_http_send_error(req, 400, "invalid_request", "model must not be empty");
        return;
    }
    /* A refusal is answered by authz: 403 forbidden, or model_forbidden
     * when only the model is outside the caller's patterns. */
    if (!lyra_authz_require(req, srv, perm, model))
        return;
    send_built(req, 200, json_pack("{s:s, s:s?, s:b}", "permission", perm, "model", model, "allowed", 1));
}

/* POST /permissions/grant and /revoke. */
static void grant_or_revoke(struct lyra_http_req *req, struct lyra_server *srv, bool grant)
{
    static const char *const fields[] = {"role", "permission", "model", NULL};
    if (!have_auth(srv, req))
        return;
    json_t *body;
    if (!read_body(req, fields, &body))
        return;
    const char *role, *perm, *model;
    if (!req_name(req, body, "role", &role) || !opt_string(req, body, "permission", &perm) ||
        !opt_string(req, body, "model", &model))
        goto out;
    if (!perm == !model) {
        lyra_http_send_error(req, 400, "invalid_request", "give one of 'permission' and 'model' (a pattern)");
        goto out;
    }
    if (!caller_covers(req, srv, NULL, perm, model))
        goto out;
    struct lyra_err err = {0};
    int rc = grant ? lyra_auth_grant(srv->auth, role, perm, model, &err)
                   : lyra_auth_revoke(srv->auth, role, perm, model, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "last_admin");
        goto out;
    }
    lyra_authz_audit_detail(req, "role=%s %s=%s", role, perm ? "permission" : "model", perm ? perm : model);
    json_t *now = role_entry(srv->auth, role);
    send_built(req, 200,
               json_pack("{s:{s:s, s:s}, s:o?}", grant ? "granted" : "revoked", "role", role,
                         perm ? "permission" : "model", perm ? perm : model, "role", now));
out:
    json_decref(body);
}

void lyra_api_permissions_grant(struct lyra_http_req *req, void *ctx)
{
    grant_or_revoke(req, ctx, true);
}

void lyra_api_permissions_revoke(struct lyra_http_req *req, void *ctx)
{
    grant_or_revoke(req, ctx, false);
}

/* ------------------------------------------------------------------ */
/* Users                                                              */

void lyra_api_users_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    json_t *users = lyra_auth_users_json(srv->auth);
    send_built(req, 200, users ? json_pack("{s:o}", "users", users) : NULL);
}

/* Creates a key for `principal` into key (the text) and *info. */
static int make_key(struct lyra_server *srv, const char *principal, const char *label, int64_t expires_ms,
                    char key[LYRA_AUTH_KEY_BUF], json_t **info, struct lyra_err *err)
{
    struct lyra_key_spec spec = {.principal = principal, .label = label, .expires_ms = expires_ms};
    return lyra_auth_key_create(srv->auth, &spec, key, info, err);
}

/* The 201 of a new key: its description with the key text added.  The
 * key buffer is wiped here. */
static json_t *key_answer(json_t *info, char key[LYRA_AUTH_KEY_BUF])
{
    json_t *out = info ? info : json_object();
    if (out && json_object_set_new(out, "key", json_string(key)) < 0) {
        json_decref(out);
        out = NULL;
    }
    sodium_memzero(key, LYRA_AUTH_KEY_BUF);
    return out;
}

void lyra_api_users_add(struct lyra_http_req *req, void *ctx)
{
    static const char *const fields[] = {"name", "role", "kind", "key", NULL};
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    json_t *body;
    if (!read_body(req, fields, &body))
        return;
    const char *name, *role, *kind_s;
    bool with_key;
    if (!req_name(req, body, "name", &name) || !req_name(req, body, "role", &role) ||
        !opt_string(req, body, "kind", &kind_s) || !opt_bool(req, body, "key", false, &with_key))
        goto out;
    enum lyra_principal_kind kind = LYRA_PRINCIPAL_USER;
    if (kind_s && strcmp(kind_s, "service") == 0) {
        kind = LYRA_PRINCIPAL_SERVICE;
    } else if (kind_s && strcmp(kind_s, "user") != 0) {
        lyra_http_send_error(req, 400, "invalid_request", "kind must be \"user\" or \"service\"");
        goto out;
    }
    if (!caller_covers(req, srv, role, NULL, NULL))
        goto out;
    struct lyra_err err = {0};
    int rc = lyra_auth_user_add(srv->auth, name, kind, role, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "last_admin");
        goto out;
    }
    char key[LYRA_AUTH_KEY_BUF] = "";
    json_t *info = NULL;
    if (with_key && (rc = make_key(srv, name, NULL, 0, key, &info, &err)) < 0) {
        /* No half-made principal: it goes again (it holds no key). */
        struct lyra_err ignored = {0};
        lyra_auth_user_remove(srv->auth, name, &ignored);
        send_auth_error(req, rc, &err, "last_admin");
        goto out;
    }
    json_t *user = user_entry(srv->auth, name);
    if (!user)
        user = json_pack("{s:s, s:s, s:s}", "name", name, "kind",
                         kind == LYRA_PRINCIPAL_SERVICE ? "service" : "user", "role", role);
    if (with_key) {
        const char *kid = json_string_value(json_object_get(info, "id"));
        lyra_authz_audit_detail(req, "principal=%s kind=%s role=%s key_id=%s", name,
                                kind == LYRA_PRINCIPAL_SERVICE ? "service" : "user", role, kid ? kid : "?");
        json_t *k = key_answer(info, key);
        if (user && k && json_object_set_new(user, "key", json_incref(json_object_get(k, "key"))) == 0 &&
            json_object_set_new(user, "key_info", k) == 0) {
            json_object_del(k, "key"); /* the key text once in the answer */
        } else {
            json_decref(k);
            json_decref(user);
            user = NULL;
        }
    } else {
        lyra_authz_audit_detail(req, "principal=%s kind=%s role=%s", name,
                                kind == LYRA_PRINCIPAL_SERVICE ? "service" : "user", role);
    }
    send_built(req, 201, user);
out:
    json_decref(body);
}

void lyra_api_users_remove(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *name = lyra_http_param(req, "name");
    if (!name || !valid_name(req, "name", name))
        return;
    char target_role[LYRA_AUTH_NAME_MAX + 1];
    if (role_of(srv, name, target_role, sizeof target_role) && !caller_covers(req, srv, target_role, NULL, NULL))
        return;
    struct lyra_err err = {0};
    int rc = lyra_auth_user_remove(srv->auth, name, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "last_admin");
        return;
    }
    struct lyra_err cerr = {0};
    if (lyra_conv_disown(srv->store, name, &cerr) < 0)
        lyra_warn("auth", "principal %s was removed, but its conversations keep its name as owner: %s", name,
                  cerr.msg);
    lyra_authz_audit_detail(req, "principal=%s", name);
    send_built(req, 200, json_pack("{s:s}", "removed", name));
}

void lyra_api_users_set_role(struct lyra_http_req *req, void *ctx)
{
    static const char *const fields[] = {"role", NULL};
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *name = lyra_http_param(req, "name");
    if (!name || !valid_name(req, "name", name))
        return;
    json_t *body;
    if (!read_body(req, fields, &body))
        return;
    const char *role;
    if (!req_name(req, body, "role", &role))
        goto out;
    char old_role[LYRA_AUTH_NAME_MAX + 1];
    if (!caller_covers(req, srv, role, NULL, NULL) ||
        (role_of(srv, name, old_role, sizeof old_role) && !caller_covers(req, srv, old_role, NULL, NULL)))
        goto out;
    struct lyra_err err = {0};
    int rc = lyra_auth_user_set_role(srv->auth, name, role, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "last_admin");
        goto out;
    }
    lyra_authz_audit_detail(req, "principal=%s role=%s", name, role);
    json_t *user = user_entry(srv->auth, name);
    send_built(req, 200, user ? user : json_pack("{s:s, s:s}", "name", name, "role", role));
out:
    json_decref(body);
}

/* ------------------------------------------------------------------ */
/* Keys                                                               */

void lyra_api_keys_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *principal = lyra_http_query(req, "principal");
    if (principal) {
        if (!valid_name(req, "principal", principal))
            return;
        json_t *user = user_entry(srv->auth, principal);
        if (!user) {
            lyra_http_send_error(req, 404, "not_found", "no principal '%s'", principal);
            return;
        }
        json_decref(user);
    }
    json_t *keys = lyra_auth_keys_json(srv->auth, principal);
    send_built(req, 200, keys ? json_pack("{s:o}", "keys", keys) : NULL);
}

void lyra_api_keys_create(struct lyra_http_req *req, void *ctx)
{
    static const char *const fields[] = {"principal",  "role",       "name", "label",
                                         "expires_in", "expires_at", NULL};
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    json_t *body;
    if (!read_body(req, fields, &body))
        return;
    const char *principal, *role, *name, *label;
    int64_t expires_ms;
    if (!opt_string(req, body, "principal", &principal) || !opt_string(req, body, "role", &role) ||
        !opt_string(req, body, "name", &name) || !opt_string(req, body, "label", &label) ||
        !key_expiry(req, body, &expires_ms))
        goto out;
    if (!principal == !role) {
        lyra_http_send_error(
            req, 400, "invalid_request",
            "give 'principal' (an existing one) or 'role' (a new service account), not both");
        goto out;
    }
    if (principal && name) {
        lyra_http_send_error(req, 400, "invalid_request",
                             "'name' names a new service account: only with 'role'");
        goto out;
    }
    if ((principal && !valid_name(req, "principal", principal)) || (role && !valid_name(req, "role", role)) ||
        (name && !valid_name(req, "name", name)))
        goto out;
    char target_role[LYRA_AUTH_NAME_MAX + 1];
    if (!caller_covers(req, srv, role ? role : role_of(srv, principal, target_role, sizeof target_role) ? target_role : NULL,
                       NULL, NULL))
        goto out;
    struct lyra_err err = {0};
    char svc[16];
    bool created = false;
    if (role) {
        if (!name) {
            char hex[7];
            lyra_random_hex(hex, 3);
            lyra_fmt(svc, sizeof svc, "svc-%s", hex);
            name = svc;
        }
        int rc = lyra_auth_user_add(srv->auth, name, LYRA_PRINCIPAL_SERVICE, role, &err);
        if (rc < 0) {
            send_auth_error(req, rc, &err, "last_admin");
            goto out;
        }
        principal = name;
        created = true;
    }
    char key[LYRA_AUTH_KEY_BUF] = "";
    json_t *info = NULL;
    int rc = make_key(srv, principal, label, expires_ms, key, &info, &err);
    if (rc < 0) {
        if (created) {
            struct lyra_err ignored = {0};
            lyra_auth_user_remove(srv->auth, principal, &ignored);
        }
        send_auth_error(req, rc, &err, "last_admin");
        goto out;
    }
    const char *kid = json_string_value(json_object_get(info, "id"));
    if (created)
        lyra_authz_audit_detail(req, "key_id=%s principal=%s (new service account, role=%s)", kid ? kid : "?",
                                principal, role);
    else
        lyra_authz_audit_detail(req, "key_id=%s principal=%s", kid ? kid : "?", principal);
    json_t *out = key_answer(info, key);
    if (out && created && json_object_set_new(out, "role", json_string(role)) < 0) {
        json_decref(out);
        out = NULL;
    }
    send_built(req, 201, out);
out:
    json_decref(body);
}

void lyra_api_keys_revoke(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *id = lyra_http_param(req, "id");
    /* Whose key: a manager may revoke only keys of principals it covers. */
    json_t *keys = lyra_auth_keys_json(srv->auth, NULL);
    size_t i;
    json_t *k;
    char owner_role[LYRA_AUTH_NAME_MAX + 1] = "";
    json_array_foreach(keys, i, k) if (id && strcmp(json_string_value(json_object_get(k, "id")) ?: "", id) == 0)
        role_of(srv, json_string_value(json_object_get(k, "principal")) ?: "", owner_role, sizeof owner_role);
    json_decref(keys);
    if (owner_role[0] && !caller_covers(req, srv, owner_role, NULL, NULL))
        return;
    struct lyra_err err = {0};
    int rc = lyra_auth_key_revoke(srv->auth, id ? id : "", &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "last_admin");
        return;
    }
    lyra_authz_audit_detail(req, "key_id=%.*s", (int)lyra_utf8_clip(id, 32), id);
    send_built(req, 200, json_pack("{s:s}", "revoked", id));
}

/* ------------------------------------------------------------------ */
/* Roles                                                              */

void lyra_api_roles_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    json_t *roles = lyra_auth_roles_json(srv->auth);
    send_built(req, 200, roles ? json_pack("{s:o}", "roles", roles) : NULL);
}

/* "a,b,c" of up to n items into buf, for the audit row. */
static void join(char *buf, size_t cap, const char *const *items, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < cap - 1; i++) {
        int w = lyra_fmt(buf + used, cap - used, "%s%s", i ? "," : "", items[i]);
        used = w < 0 || used + (size_t)w >= cap ? cap - 1 : used + (size_t)w;
    }
}

void lyra_api_roles_create(struct lyra_http_req *req, void *ctx)
{
    static const char *const fields[] = {"name", "permissions", "models", NULL};
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    json_t *body;
    if (!read_body(req, fields, &body))
        return;
    const char *name;
    const char *perms[LYRA_AUTH_PATTERNS_MAX], *models[LYRA_AUTH_PATTERNS_MAX];
    size_t n_perms, n_models;
    bool has_perms, has_models;
    if (!req_name(req, body, "name", &name) ||
        !string_array(req, body, "permissions", perms, &n_perms, &has_perms) ||
        !string_array(req, body, "models", models, &n_models, &has_models))
        goto out;
    if (!has_perms) {
        lyra_http_send_error(req, 400, "invalid_request",
                             "field 'permissions' (an array of strings) is required");
        goto out;
    }
    if (!has_models) {
        models[0] = "*";
        n_models = 1;
    }
    for (size_t i = 0; i < n_perms; i++)
        if (!caller_covers(req, srv, NULL, perms[i], NULL))
            goto out;
    for (size_t i = 0; i < n_models; i++)
        if (!caller_covers(req, srv, NULL, NULL, models[i]))
            goto out;
    struct lyra_err err = {0};
    int rc = lyra_auth_role_create(srv->auth, name, perms, n_perms, models, n_models, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "role_in_use");
        goto out;
    }
    char p_list[200], m_list[200];
    join(p_list, sizeof p_list, perms, n_perms);
    join(m_list, sizeof m_list, models, n_models);
    lyra_authz_audit_detail(req, "role=%s permissions=%s models=%s", name, p_list, m_list);
    json_t *role = role_entry(srv->auth, name);
    send_built(req, 201, role ? role : json_pack("{s:s}", "name", name));
out:
    json_decref(body);
}

void lyra_api_roles_delete(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!have_auth(srv, req))
        return;
    const char *name = lyra_http_param(req, "name");
    if (!name || !valid_name(req, "name", name))
        return;
    struct lyra_err err = {0};
    int rc = lyra_auth_role_delete(srv->auth, name, &err);
    if (rc < 0) {
        send_auth_error(req, rc, &err, "role_in_use");
        return;
    }
    lyra_authz_audit_detail(req, "role=%s", name);
    send_built(req, 200, json_pack("{s:s}", "removed", name));
}
