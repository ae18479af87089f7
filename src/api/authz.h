/* authz.h — how the daemon applies auth/: the HTTP authorize and response
 * hooks (authentication, the back-off, the permission check, the audit
 * rows), the per-model checks handlers make, and which events a principal
 * may see on the event stream.
 *
 * Every routed request past authorize has a principal (the anonymous one
 * when anonymous access is on).  Thread-safety: all functions are called
 * from the request's own threads; lyra_authz_event_visible from any. */
#ifndef LYRA_AUTHZ_H
#define LYRA_AUTHZ_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "auth/auth.h"
#include "http/http.h"

struct lyra_server;

/* The HTTP hooks (lyra_http_options.authorize / on_response); ctx is the
 * server. */
int lyra_authz_authorize(struct lyra_http_req *req, const struct lyra_route *route, void *ctx);
void lyra_authz_on_response(struct lyra_http_req *req, int status, void *ctx);

/* The principal the request acts as; NULL only for a request that never
 * passed authorize (public routes with auth answered before it). */
const struct lyra_principal *lyra_authz_principal(const struct lyra_http_req *req);

/* True when the caller holds `permission` and may use `model` (NULL: any
 * model).  Answers nothing: for filtering lists. */
bool lyra_authz_may(struct lyra_http_req *req, struct lyra_server *srv, const char *permission,
                    const char *model);

/* As lyra_authz_may, but a refusal is answered here: 403
 * {"error":{"code":"model_forbidden"|"forbidden","message":...,
 * "permission":...}} and false is returned. */
bool lyra_authz_require(struct lyra_http_req *req, struct lyra_server *srv, const char *permission,
                        const char *model);

/* As lyra_authz_may, but a refusal is recorded for the audit log and
 * described in msg (msg_len bytes, may be 0): for handlers that answer in
 * their own error shape (the OpenAI endpoints: 403 model_forbidden). */
bool lyra_authz_check(struct lyra_http_req *req, struct lyra_server *srv, const char *permission, const char *model,
                      char *msg, size_t msg_len);

/* Adds a short detail (copied, clipped) to this request's audit row:
 * what was granted, the key id created ... never a secret. */
void lyra_authz_audit_detail(struct lyra_http_req *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

enum lyra_authz_visibility {
    LYRA_AUTHZ_SHOW,
    LYRA_AUTHZ_HIDE,
    LYRA_AUTHZ_END, /* the principal's key was revoked or expired: end the stream */
};
/* May principal `p` see an event of `type` with `data` (NULL: no data)? */
enum lyra_authz_visibility lyra_authz_event_visible(struct lyra_server *srv, const struct lyra_principal *p,
                                                    const char *type, const json_t *data);

#endif
