/* auth.h — who a request acts as, and what it may do (RBAC).
 *
 * Principals are users and service accounts; each has exactly one role and
 * any number of API keys.  A key is "lyra_" + 43 base62 characters (256
 * bits from libsodium's randombytes_buf; an operator-supplied bootstrap key
 * from LYRA_ADMIN_KEY may be any 16..256 printable ASCII characters).  A key
 * is never stored: the database holds its keyed hash (BLAKE2b-256,
 * crypto_generichash keyed with a 32-byte secret kept in
 * $LYRA_HOME/auth.secret, 0600, created on first start), looked up by that
 * hash and compared with sodium_memcmp.  Its first 12 characters
 * ("lyra_AbC1234") are kept as a display prefix, and a public key id
 * ("k_" + 12 hex) names it in lists, revocation and the audit log.
 *
 * Roles: the built-in admin, operator, user and viewer (immutable), plus
 * custom roles created at run time.  A role is a set of permission names
 * from the catalogue (lyra_auth_permissions) — "*" in admin means all —
 * and a list of model patterns ("*", "llama-*", exact names; '*' matches
 * any run of characters) naming the models its holders may use (see
 * lyra_auth_allowed).  Grants add to a custom role (a permission or a model
 * pattern); revokes remove.
 *
 * Anonymous requests (no Authorization header) act as the principal
 * "anonymous" with role `anonymous_role` when that is set (auth disabled
 * on a loopback listener), and are refused otherwise.
 *
 * All state lives in memory, loaded from SQLite at open (one daemon per
 * LYRA_HOME, so memory is authoritative) and written through synchronously
 * on every change (lyra_store_run), so the hot path — authenticate + allowed
 * — never touches the database.  last_used_ms of a key is updated in memory
 * and persisted at most once a minute per key, asynchronously.
 *
 * Thread-safety: everything but open/free is thread-safe (a rwlock:
 * authenticate/allowed/lists take it shared, changes exclusively). */
#ifndef LYRA_AUTH_H
#define LYRA_AUTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_store;
struct lyra_auth;

#define LYRA_AUTH_NAME_MAX 64          /* principal and role names: [A-Za-z0-9._-], 1..64, not "anonymous" */
#define LYRA_AUTH_KEY_MAX 256          /* the longest key text accepted */
#define LYRA_AUTH_KEY_BUF 64           /* room for a generated key + NUL */
#define LYRA_AUTH_PATTERNS_MAX 64      /* model patterns per role */
#define LYRA_AUTH_ANONYMOUS "anonymous"

enum lyra_principal_kind {
    LYRA_PRINCIPAL_USER,
    LYRA_PRINCIPAL_SERVICE,
    LYRA_PRINCIPAL_ANONYMOUS,
};

/* Who a request acts as: a copy, owning nothing, valid after the key or
 * principal is changed (checks always consult the live policy by name). */
struct lyra_principal {
    char name[LYRA_AUTH_NAME_MAX + 1];
    char role[LYRA_AUTH_NAME_MAX + 1];   /* the role at authentication time */
    char key_id[16];                     /* "k_" + 12 hex; "" when anonymous */
    enum lyra_principal_kind kind;
};

/* One entry of the permission catalogue. */
struct lyra_permission_info {
    const char *name;        /* "models.load" */
    const char *description; /* for GET /permissions and docs/security.md */
};

/* The catalogue, in a stable order, and its length. */
extern const struct lyra_permission_info lyra_auth_permissions[];
extern const size_t lyra_auth_n_permissions;

/* Why authentication failed: the `error` of WWW-Authenticate and the code
 * of the 401 body. */
enum lyra_auth_failure {
    LYRA_AUTH_OK = 0,
    LYRA_AUTH_MISSING,   /* no credentials and anonymous access is off: "missing_key" */
    LYRA_AUTH_MALFORMED, /* not "Bearer <key>", or the key has bad characters/length: "malformed_key" */
    LYRA_AUTH_UNKNOWN,   /* no such key: "invalid_key" */
    LYRA_AUTH_EXPIRED,   /* "expired_key" */
    LYRA_AUTH_REVOKED,   /* "revoked_key" (also: its principal was removed) */
};
const char *lyra_auth_failure_code(enum lyra_auth_failure f);

struct lyra_auth_options {
    struct lyra_store *store; /* borrowed, outlives the auth; migrations 5 (auth tables) already applied */
    const char *home;         /* LYRA_HOME: auth.secret and admin.key live here */
    /* Bootstrap: used only when no admin principal with a usable key
     * exists.  Then principal "admin" (role admin) is created (or reused)
     * with this key; NULL generates one, which is written to
     * $LYRA_HOME/admin.key (0600, O_EXCL: never overwritten) and handed back
     * once through lyra_auth_bootstrap_key. */
    const char *bootstrap_key;
    /* Role of anonymous requests; NULL or "" = none (every request but the
     * public routes needs a key).  Must name an existing role. */
    const char *anonymous_role;
    int64_t (*now_ms)(void);  /* wall clock (expiry); NULL = real time */
};

/* Opens the policy: creates auth.secret if missing, loads principals, keys,
 * roles and grants, and bootstraps the admin (above).  Returns 0 with *out
 * (free with lyra_auth_free), or LYRA_EIO (secret unreadable or not 0600 —
 * it is refused, not trusted), LYRA_EDB, LYRA_EINVAL (unknown
 * anonymous_role, bad bootstrap key) with err set. */
int lyra_auth_open(const struct lyra_auth_options *opts, struct lyra_auth **out, struct lyra_err *err);
void lyra_auth_free(struct lyra_auth *a);

/* The admin key generated by this open, once: copies it into buf (NUL
 * terminated) and forgets it; 0, or LYRA_ENOTFOUND when none was generated
 * (or it was taken already).  *path_out (may be NULL) gets the admin.key
 * path (borrowed from the auth). */
int lyra_auth_bootstrap_key(struct lyra_auth *a, char buf[LYRA_AUTH_KEY_BUF], const char **path_out);

/* Authenticates an Authorization header value (NULL when absent).  Fills
 * *out and returns LYRA_AUTH_OK; a NULL header with anonymous access on
 * gives the anonymous principal.  A key that is presented but bad never
 * falls back to anonymous.  Compares in constant time for a given length. */
enum lyra_auth_failure lyra_auth_authenticate(struct lyra_auth *a, const char *authorization,
                                              struct lyra_principal *out);

/* True when principal `p` (by name, with its CURRENT role and grants) has
 * `permission`, and — when `model` is not NULL — `model` matches one of its
 * role's model patterns.  A principal removed since authentication, or
 * whose key has been revoked or has expired since, has nothing. */
bool lyra_auth_allowed(struct lyra_auth *a, const struct lyra_principal *p, const char *permission,
                       const char *model);

/* True while the key `p` authenticated with is still valid (not revoked,
 * not expired, principal present); anonymous: while anonymous access is
 * on.  Long-lived streams check it on each event. */
bool lyra_auth_still_valid(struct lyra_auth *a, const struct lyra_principal *p);

/* --- management (each change is written to SQLite before it returns) ---
 * Errors: LYRA_EINVAL (bad name, unknown permission, bad pattern),
 * LYRA_ENOTFOUND (no such user/role/key), LYRA_EEXISTS (name taken),
 * LYRA_EPERM (a built-in role cannot change), LYRA_ECONFLICT (the change
 * would leave no admin with a usable key, or a role still in use is
 * deleted), LYRA_EDB; err says which, for the HTTP answer. */

int lyra_auth_user_add(struct lyra_auth *a, const char *name, enum lyra_principal_kind kind, const char *role,
                       struct lyra_err *err);
/* Removes the principal and revokes all its keys. */
int lyra_auth_user_remove(struct lyra_auth *a, const char *name, struct lyra_err *err);
int lyra_auth_user_set_role(struct lyra_auth *a, const char *name, const char *role, struct lyra_err *err);

struct lyra_key_spec {
    const char *principal;   /* an existing principal */
    const char *label;       /* free text shown in lists (NULL = none; UTF-8, <= 128 bytes) */
    int64_t expires_ms;      /* wall-clock expiry, 0 = never; must be in the future */
};
/* Creates a key.  key_out receives the key text (shown once, never again);
 * *info (may be NULL; caller decrefs) the key's public description, as in
 * lyra_auth_keys_json. */
int lyra_auth_key_create(struct lyra_auth *a, const struct lyra_key_spec *spec, char key_out[LYRA_AUTH_KEY_BUF],
                         json_t **info, struct lyra_err *err);
int lyra_auth_key_revoke(struct lyra_auth *a, const char *key_id, struct lyra_err *err);

int lyra_auth_role_create(struct lyra_auth *a, const char *name, const char *const *permissions, size_t n_perms,
                          const char *const *models, size_t n_models, struct lyra_err *err);
int lyra_auth_role_delete(struct lyra_auth *a, const char *name, struct lyra_err *err);
/* Adds to / removes from a custom role: a permission (model NULL) or a
 * model pattern (permission NULL). */
int lyra_auth_grant(struct lyra_auth *a, const char *role, const char *permission, const char *model,
                    struct lyra_err *err);
int lyra_auth_revoke(struct lyra_auth *a, const char *role, const char *permission, const char *model,
                     struct lyra_err *err);

/* --- views (new references; caller decrefs; NULL on allocation failure) --- */

/* [{"name","kind":"user|service","role","created_ms","keys":N}] */
json_t *lyra_auth_users_json(struct lyra_auth *a);
/* [{"id","prefix","principal","label","created_ms","expires_ms"|null,
 *   "revoked_ms"|null,"last_used_ms"|null,"state":"active|expired|revoked"}],
 * only principal's keys when principal is not NULL.  Never the key. */
json_t *lyra_auth_keys_json(struct lyra_auth *a, const char *principal);
/* [{"name","builtin":bool,"permissions":[...],"models":[...]}] */
json_t *lyra_auth_roles_json(struct lyra_auth *a);
/* {"principal","kind","role","key_id"|null,"permissions":[effective, expanded],
 *  "models":[patterns]} for p */
json_t *lyra_auth_principal_json(struct lyra_auth *a, const struct lyra_principal *p);

/* True when `pattern` matches `name` ('*' = any run of characters). */
bool lyra_auth_pattern_match(const char *pattern, const char *name);

/* True when `text` is a well-formed name for a principal or role. */
bool lyra_auth_name_valid(const char *text);

#endif
