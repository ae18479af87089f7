/* authz.c — the daemon's use of auth/ (see authz.h): who a request acts
 * as, whether it may, what the audit log records, and which events a
 * principal sees.
 *
 * Order of the checks, once a route matched (http.c runs this before the
 * body is read):
 *   1. a key in the query string: 400 key_in_query (URLs end up in logs,
 *      proxies and browser histories), on every route;
 *   2. public routes ("") pass, without a principal;
 *   3. (folded into 4) an address in back-off: a key that does not
 *      authenticate is 429 too_many_failures + Retry-After instead of 401;
 *   4. authentication: a presented key must be good (401 otherwise, and
 *      the failure counts towards the back-off); no key = the anonymous
 *      principal when anonymous access is on, else 401 missing_key.  With
 *      anonymous access on, a key Lyra never issued counts as no key (the
 *      OpenAI and Ollama clients always send one);
 *   5. the route's permission: 403 naming it.
 * The response hook then writes the audit row: every failure of 4 and 5
 * (and a handler's own model_forbidden), and every request to a route that
 * changes something an operator answers for (see audited()). */
#include "api/authz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sodium.h>

#include "api/server.h"
#include "http/hostcheck.h"
#include "core/log.h"
#include "core/util.h"

/* What the request's principal slot (lyra_http_set_principal) holds. */
struct authz_slot {
    struct lyra_principal p;
    bool has_principal;
    const char *denied_action; /* "auth.failed", "auth.forbidden": static */
    char detail[200];
    char model[160]; /* the model a handler's check refused ("" = none): the row's target */
};

static struct authz_slot *slot_of(const struct lyra_http_req *req) { return lyra_http_principal(req); }

static void count_failure(struct lyra_server *srv, const char *reason)
{
    if (srv->m.auth_failures)
        lyra_metric_add(srv->m.auth_failures, (const char *const[]){reason}, 1);
}

static struct authz_slot *slot_get(struct lyra_http_req *req)
{
    struct authz_slot *s = slot_of(req);
    if (!s && (s = calloc(1, sizeof *s)))
        lyra_http_set_principal(req, s);
    return s;
}

const struct lyra_principal *lyra_authz_principal(const struct lyra_http_req *req)
{
    const struct authz_slot *s = slot_of(req);
    return s && s->has_principal ? &s->p : NULL;
}

void lyra_authz_audit_detail(struct lyra_http_req *req, const char *fmt, ...)
{
    struct authz_slot *s = slot_get(req);
    if (!s)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->detail, sizeof s->detail, fmt, ap);
    va_end(ap);
    s->detail[lyra_utf8_clip(s->detail, sizeof s->detail - 1)] = '\0';
}

/* --- answers -------------------------------------------------------- */

static void send_401(struct lyra_http_req *req, enum lyra_auth_failure f, bool presented)
{
    static const char *const why[] = {
        [LYRA_AUTH_MISSING] = "this endpoint needs an API key: send Authorization: Bearer lyra_...",
        [LYRA_AUTH_MALFORMED] = "the Authorization header is not \"Bearer <key>\" with a well-formed key",
        [LYRA_AUTH_UNKNOWN] = "the API key is not valid",
        [LYRA_AUTH_EXPIRED] = "the API key has expired",
        [LYRA_AUTH_REVOKED] = "the API key has been revoked",
    };
    const char *code = lyra_auth_failure_code(f);
    char hdr[160];
    if (presented)
        snprintf(hdr, sizeof hdr, "Bearer realm=\"lyra\", error=\"invalid_token\", error_description=\"%s\"", code);
    else
        snprintf(hdr, sizeof hdr, "Bearer realm=\"lyra\"");
    lyra_http_add_header(req, "WWW-Authenticate", hdr);
    lyra_http_send_error(req, 401, code, "%s", f < sizeof why / sizeof *why && why[f] ? why[f] : "unauthorized");
}

static void send_403(struct lyra_http_req *req, const struct lyra_principal *p, const char *permission,
                     const char *model)
{
    const char *code = model ? "model_forbidden" : "forbidden";
    char msg[400];
    if (model)
        snprintf(msg, sizeof msg, "%s '%s' (role %s) may not use model '%.*s'",
                 p->kind == LYRA_PRINCIPAL_ANONYMOUS ? "anonymous access" : "principal", p->name, p->role,
                 (int)lyra_utf8_clip(model, 128), model);
    else
        snprintf(msg, sizeof msg, "%s '%s' (role %s) lacks permission %s%s",
                 p->kind == LYRA_PRINCIPAL_ANONYMOUS ? "anonymous access" : "principal", p->name, p->role, permission,
                 p->kind == LYRA_PRINCIPAL_ANONYMOUS ? "; send a key with Authorization: Bearer" : "");
    if (p->kind == LYRA_PRINCIPAL_ANONYMOUS)
        lyra_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"lyra\"");
    const char *route = lyra_http_route(req);
    if (route && strncmp(route, "/api/", 5) == 0) { /* the Ollama routes: their clients read one shape */
        lyra_http_send_error(req, 403, code, "%s", msg);
        return;
    }
    lyra_http_send_json(req, 403,
                        json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "message", msg, "permission",
                                  permission));
}

/* --- the credentials ----------------------------------------------- */

static bool key_in_query(struct lyra_http_req *req)
{
    static const char *const names[] = {"api_key", "apikey", "key", "token", "access_token"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (lyra_http_query(req, names[i]))
            return true;
    return false;
}

/* The browser's WebSocket API cannot set headers: its key comes as the
 * offered subprotocol "lyra.bearer.<key>" (a header, never the URL).
 * Builds "Bearer <key>" into buf; false when there is none. */
static bool key_from_subprotocol(struct lyra_http_req *req, char *buf, size_t len)
{
    const char *list = lyra_http_header(req, "Sec-WebSocket-Protocol");
    static const char tag[] = "lyra.bearer.";
    const char *p = list ? strstr(list, tag) : NULL;
    if (!p || (p != list && p[-1] != ' ' && p[-1] != ','))
        return false;
    p += sizeof tag - 1;
    size_t n = strcspn(p, ", \t");
    if (n == 0 || n > LYRA_AUTH_KEY_MAX || n + 8 > len)
        return false;
    snprintf(buf, len, "Bearer %.*s", (int)n, p);
    return true;
}

/* --- the hooks ------------------------------------------------------ */

int lyra_authz_authorize(struct lyra_http_req *req, const struct lyra_route *route, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (key_in_query(req)) {
        lyra_http_send_error(req, 400, "key_in_query",
                             "API keys are not accepted in the URL (they end up in logs, proxies and browser "
                             "histories): send Authorization: Bearer <key>");
        return -1;
    }
    if (!route->permission[0])
        return 0;
    struct authz_slot *s = slot_get(req);
    if (!s) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return -1;
    }
    const char *authorization = lyra_http_header(req, "Authorization");
    char from_ws[LYRA_AUTH_KEY_MAX + 16];
    if (!authorization && strcmp(route->pattern, "/events/ws") == 0 &&
        key_from_subprotocol(req, from_ws, sizeof from_ws))
        authorization = from_ws;
    const char *addr = lyra_http_client_addr(req);
    enum lyra_auth_failure f = lyra_auth_authenticate(srv->auth, authorization, &s->p);
    if (authorization == from_ws)
        sodium_memzero(from_ws, sizeof from_ws);
    /* Auth off: OpenAI and Ollama clients always send some key ("sk-...",
     * "ollama"), as llama-server and Ollama ignore it.  A key Lyra never
     * issued then counts as no key; a key it issued is still checked (an
     * expired or revoked one is 401: its holder should learn that). */
    bool fell_back = false;
    if (srv->anonymous_role && authorization && (f == LYRA_AUTH_UNKNOWN || f == LYRA_AUTH_MALFORMED)) {
        f = lyra_auth_authenticate(srv->auth, NULL, &s->p);
        fell_back = true;
        authorization = NULL;
    }
    /* http.c's Host guard let this request pass because it carried
     * credentials; now that it acts as anonymous, the guard applies here
     * (else a rebinding page would only have to send a made-up key). */
    struct lyra_err host_err = {0};
    if (fell_back && srv->hostcheck &&
        lyra_hostcheck_check(srv->hostcheck, lyra_http_header(req, "Host"), &host_err) < 0) {
        lyra_http_send_error(req, 403, "host_not_allowed", "%s", host_err.msg);
        return -1;
    }
    if (f != LYRA_AUTH_OK) {
        /* The back-off: an address that failed too often is answered 429
         * for every key that does not authenticate.  A valid key still
         * passes, so that another client at the same address (all of
         * loopback, a NAT, a proxy without trusted_proxies) cannot lock
         * its holder out; with 256-bit keys the back-off is there to bound
         * the noise (and the audit rows) of guessing, not to make guessing
         * possible to survive. */
        int64_t wait_ms = authorization && srv->auth_fail ? lyra_ratelimit_blocked(srv->auth_fail, addr) : 0;
        if (authorization && srv->auth_fail)
            lyra_ratelimit_fail(srv->auth_fail, addr);
        if (wait_ms > 0) {
            char ra[24];
            snprintf(ra, sizeof ra, "%lld", (long long)((wait_ms + 999) / 1000));
            lyra_http_add_header(req, "Retry-After", ra);
            count_failure(srv, "blocked");
            lyra_http_send_error(req, 429, "too_many_failures",
                                 "too many failed authentications from %s: try again in %s s", addr, ra);
            return -1;
        }
        s->denied_action = "auth.failed";
        /* The route tried, as the target holds only the path. */
        snprintf(s->detail, sizeof s->detail, "%s (%s %s)", lyra_auth_failure_code(f), route->method, route->pattern);
        count_failure(srv, lyra_auth_failure_code(f));
        send_401(req, f, authorization != NULL);
        return -1;
    }
    /* A success does not clear the address's failures: one valid key
     * must not buy unlimited guesses at the others. */
    s->has_principal = true;
    if (!lyra_auth_allowed(srv->auth, &s->p, route->permission, NULL)) {
        s->denied_action = "auth.forbidden";
        /* The route too: "lacks models.load" alone does not say whether it
         * was a load, an unload or a warm-up. */
        snprintf(s->detail, sizeof s->detail, "lacks %s (%s %s)", route->permission, route->method, route->pattern);
        count_failure(srv, "forbidden");
        send_403(req, &s->p, route->permission, NULL);
        return -1;
    }
    return 0;
}

/* Routes whose use an operator answers for: every method but GET on a
 * route that needs a permission other than the everyday ones (chat,
 * one's own conversations) and publishing a custom event. */
static bool audited(const struct lyra_http_req *req)
{
    const char *route = lyra_http_route(req);
    const char *method = lyra_http_method(req);
    if (!route || !strcmp(method, "GET") || !strcmp(method, "HEAD") || !strcmp(method, "OPTIONS"))
        return false;
    for (size_t i = 0; i < lyra_n_routes; i++) {
        const struct lyra_route *r = &lyra_routes[i];
        if (strcmp(r->pattern, route) || strcmp(r->method, method))
            continue;
        const char *perm = r->permission;
        /* POST /events is itself a record (the event log keeps it, with
         * source "api"): auditing it would double every custom event. */
        return perm[0] && strcmp(perm, "self") && strcmp(perm, "chat") && strncmp(perm, "conversations.", 14) &&
               strcmp(perm, "events.publish");
    }
    return false;
}

void lyra_authz_on_response(struct lyra_http_req *req, int status, void *ctx)
{
    struct lyra_server *srv = ctx;
    const struct authz_slot *s = slot_of(req);
    if (!srv->audit || !s || status == 429)
        return;
    const char *action = s->denied_action;
    char route_action[160];
    if (!action) {
        if (!audited(req))
            return;
        snprintf(route_action, sizeof route_action, "%s %s", lyra_http_method(req), lyra_http_route(req));
        action = route_action;
    }
    const char *target = lyra_http_param(req, "name");
    if (!target)
        target = lyra_http_param(req, "id");
    if (!target)
        target = lyra_http_param(req, "permission");
    if (!target && s->model[0])
        target = s->model;
    if (!target && s->denied_action)
        target = lyra_http_path(req);
    if (s->denied_action && srv->audit_denials) {
        char who[LYRA_AUTH_NAME_MAX + 80];
        snprintf(who, sizeof who, "%s|%s", s->has_principal ? s->p.name : "", lyra_http_client_addr(req));
        if (lyra_ratelimit_blocked(srv->audit_denials, who) > 0)
            return; /* counted in lyra_auth_failures_total, not written again */
        lyra_ratelimit_fail(srv->audit_denials, who);
    }
    const char *result = s->denied_action ? "denied" : status < 400 ? "ok" : status < 500 ? "failed" : "error";
    struct lyra_audit_entry e = {
        .principal = s->has_principal ? s->p.name : "",
        .key_id = s->has_principal ? s->p.key_id : "",
        .action = action,
        .target = target ? target : "",
        .result = result,
        .status = status,
        .client = lyra_http_client_addr(req),
        .request_id = lyra_http_request_id(req),
        .detail = s->detail,
    };
    if (lyra_audit_record(srv->audit, &e) < 0)
        lyra_warn("audit", "cannot record %s by '%s': the audit log is not written", action, e.principal);
}

/* --- checks inside handlers ----------------------------------------- */

bool lyra_authz_may(struct lyra_http_req *req, struct lyra_server *srv, const char *permission, const char *model)
{
    const struct lyra_principal *p = lyra_authz_principal(req);
    if (!p || !srv->auth)
        return !srv->auth; /* no policy installed (unit tests): everything */
    return lyra_auth_allowed(srv->auth, p, permission, model);
}

bool lyra_authz_check(struct lyra_http_req *req, struct lyra_server *srv, const char *permission, const char *model,
                      char *msg, size_t msg_len)
{
    if (lyra_authz_may(req, srv, permission, model))
        return true;
    const struct lyra_principal *p = lyra_authz_principal(req);
    struct authz_slot *s = slot_get(req);
    bool has_perm = p && lyra_auth_allowed(srv->auth, p, permission, NULL);
    count_failure(srv, has_perm && model ? "model_forbidden" : "forbidden");
    if (s) {
        s->denied_action = "auth.forbidden";
        const char *route = lyra_http_route(req);
        if (model)
            snprintf(s->model, sizeof s->model, "%.*s", (int)lyra_utf8_clip(model, sizeof s->model - 1), model);
        if (has_perm && model)
            snprintf(s->detail, sizeof s->detail, "model %.*s (%s %s)", (int)lyra_utf8_clip(model, 128), model,
                     lyra_http_method(req), route ? route : "");
        else
            snprintf(s->detail, sizeof s->detail, "lacks %s (%s %s)", permission, lyra_http_method(req),
                     route ? route : "");
    }
    if (msg_len) {
        const char *who = p ? p->name : "anonymous";
        const char *role = p ? p->role : "(none)";
        if (has_perm && model)
            snprintf(msg, msg_len, "principal '%s' (role %s) may not use model '%.*s'", who, role,
                     (int)lyra_utf8_clip(model, 128), model);
        else
            snprintf(msg, msg_len, "principal '%s' (role %s) lacks permission %s", who, role, permission);
    }
    return false;
}

bool lyra_authz_require(struct lyra_http_req *req, struct lyra_server *srv, const char *permission,
                        const char *model)
{
    if (lyra_authz_check(req, srv, permission, model, NULL, 0))
        return true;
    const struct lyra_principal *p = lyra_authz_principal(req);
    if (!p) {
        send_401(req, LYRA_AUTH_MISSING, false);
        return false;
    }
    send_403(req, p, permission, lyra_auth_allowed(srv->auth, p, permission, NULL) ? model : NULL);
    return false;
}

/* --- events --------------------------------------------------------- */

/* The permission an event type needs beyond events.read, and whether its
 * data names a model the reader must be allowed to use. */
static const char *event_permission(const char *type, bool *per_model)
{
    *per_model = false;
    static const struct {
        const char *prefix, *permission;
        bool per_model;
    } map[] = {
        {"model.", "models.read", true},  {"worker.", "models.read", true}, {"cache.", "models.read", true},
        {"models.", "models.read", false}, {"job.", "jobs.read", false},    {"memory.", "status.read", false},
        {"system.", "status.read", false}, {"gpu.", "status.read", false},  {"audit.", "audit.read", false},
        {"auth.", "audit.read", false},    {"custom.", "events.read", false},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strncmp(type, map[i].prefix, strlen(map[i].prefix)) == 0) {
            *per_model = map[i].per_model;
            return map[i].permission;
        }
    return "events.unlisted"; /* default deny: a name no role lists, so admin alone */
}

enum lyra_authz_visibility lyra_authz_event_visible(struct lyra_server *srv, const struct lyra_principal *p,
                                                    const char *type, const json_t *data)
{
    if (!srv->auth || !p || !p->name[0])
        return srv->auth ? LYRA_AUTHZ_HIDE : LYRA_AUTHZ_SHOW;
    if (!lyra_auth_still_valid(srv->auth, p))
        return LYRA_AUTHZ_END;
    bool per_model;
    const char *perm = event_permission(type, &per_model);
    /* An event that lists models (models.restored) is shown only to a
     * principal that may read every one of them: the names themselves
     * are what a model pattern hides. */
    const json_t *list = json_object_get(data, "models");
    if (json_is_array(list)) {
        size_t i;
        const json_t *m;
        json_array_foreach(list, i, m) {
            const char *name = json_string_value(m);
            if (!name)
                name = json_string_value(json_object_get(m, "name"));
            if (name && !lyra_auth_allowed(srv->auth, p, perm, name))
                return LYRA_AUTHZ_HIDE;
        }
    }
    const char *model = NULL;
    if (per_model) {
        model = json_string_value(json_object_get(data, "model"));
        if (!model)
            model = json_string_value(json_object_get(data, "name"));
    }
    return lyra_auth_allowed(srv->auth, p, perm, model) ? LYRA_AUTHZ_SHOW : LYRA_AUTHZ_HIDE;
}
