/* auth.c — principals, API keys, roles and the checks on them (RBAC).
 *
 * The whole policy lives in memory: principals sorted by name, keys in two
 * sorted indexes (by keyed hash for authentication, by id for checks and
 * revocation), custom roles sorted by name, and the built-in roles as static
 * data.  It is loaded from the tables of migration 5 at open.
 *
 * Changes are serialised by `change_mu` and follow one pattern: validate
 * against the current state, build the new objects (a new array, a new role)
 * off to the side, write the change to SQLite in one durable transaction
 * (lyra_store_run), and only then swap the new objects in under the write
 * lock, an operation that cannot fail.  A failed write therefore leaves both
 * the database and memory as they were, and readers (authenticate, allowed,
 * the views) never wait for the disk: they hold the read lock only.  The
 * thread holding change_mu may read the state without the rwlock, since only
 * it mutates.
 *
 * A key's last_used_ms is the one field written under the read lock; it is
 * atomic, and persisted with lyra_store_submit at most once a minute.
 *
 * The key text lives only in the caller's buffers and in ours while a key is
 * made; those are wiped with sodium_memzero.  It never reaches SQLite, a log
 * line, an error message or a view. */
#include "auth/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/store.h"
#include "core/util.h"

#define HASH_LEN 32
#define SECRET_LEN 32
#define GEN_KEY_LEN 48            /* "lyra_" + 43 base62: 43 * log2(62) > 256 bits */
#define GEN_PREFIX_LEN 12         /* "lyra_AbC1234" */
#define BOOT_KEY_MIN 16
#define LABEL_MAX 128
#define PATTERN_MAX 128
#define PERSIST_EVERY_MS 60000    /* last_used_ms reaches SQLite at most this often per key */

/* --- the catalogue and the built-in roles -------------------------------- */

const struct lyra_permission_info lyra_auth_permissions[] = {
    {"models.read", "list and inspect models"},
    {"models.load", "load, unload, warm up, verify"},
    {"models.pin", "pin, unpin"},
    {"models.pull", "download models"},
    {"models.delete", "delete model files"},
    {"chat", "/chat and the OpenAI inference endpoints"},
    {"conversations.read", "own conversations"},
    {"conversations.write", "delete own conversations"},
    {"conversations.all", "every principal's conversations"},
    {"jobs.read", "list and inspect jobs"},
    {"jobs.submit", "POST /jobs (the job type's permission too)"},
    {"jobs.cancel", "cancel jobs"},
    {"events.read", "event stream (filtered by what else you may see)"},
    {"events.publish", "POST /events"},
    {"status.read", "/status, /traces"},
    {"metrics.read", "/metrics"},
    {"audit.read", "GET /audit, audit.* and auth.* events"},
    {"permissions.manage", "users, keys, roles, grants"},
};
const size_t lyra_auth_n_permissions = sizeof lyra_auth_permissions / sizeof *lyra_auth_permissions;

/* A role.  Built-in ones are static; custom ones are malloc'd with their
 * strings and replaced whole (copy on write) when granted or revoked. */
struct role {
    char name[LYRA_AUTH_NAME_MAX + 1];
    bool builtin;
    char **perms; /* catalogue names ("*" only in admin) */
    size_t n_perms;
    char **models; /* patterns */
    size_t n_models;
    int64_t created_ms;
};

static char *admin_perms[] = {"*"};
static char *operator_perms[] = {"models.read", "models.load", "models.pin", "models.pull", "models.delete",
                                 "chat", "conversations.read", "conversations.write", "jobs.read",
                                 "jobs.submit", "jobs.cancel", "events.read", "status.read", "metrics.read",
                                 "audit.read"};
static char *user_perms[] = {"models.read", "chat", "conversations.read", "conversations.write", "events.read",
                             "status.read"};
static char *viewer_perms[] = {"models.read", "jobs.read", "events.read", "status.read", "metrics.read"};
static char *all_models[] = {"*"};

#define BUILTIN(n, p) {n, true, p, sizeof p / sizeof *p, all_models, 1, 0}
static struct role builtin_roles[] = {
    BUILTIN("admin", admin_perms),
    BUILTIN("operator", operator_perms),
    BUILTIN("user", user_perms),
    BUILTIN("viewer", viewer_perms),
};
#define N_BUILTIN (sizeof builtin_roles / sizeof *builtin_roles)

/* --- state ---------------------------------------------------------------- */

struct principal {
    char name[LYRA_AUTH_NAME_MAX + 1];
    enum lyra_principal_kind kind;
    char role[LYRA_AUTH_NAME_MAX + 1]; /* changed under the write lock */
    int64_t created_ms;
};

struct key {
    char id[16];
    unsigned char hash[HASH_LEN];
    char prefix[GEN_PREFIX_LEN + 1];
    char principal[LYRA_AUTH_NAME_MAX + 1];
    char *label; /* NULL = none */
    int64_t created_ms;
    int64_t expires_ms; /* 0 = never */
    int64_t revoked_ms; /* 0 = not revoked; set under the write lock */
    _Atomic int64_t last_used_ms; /* 0 = never; written under the read lock */
    _Atomic int64_t persisted_ms; /* the last last_used_ms handed to the store */
    uint64_t seq; /* creation order (the row order in SQLite), for lists */
};

struct lyra_auth {
    pthread_rwlock_t lock;  /* readers: checks and views; writer: publishing a change */
    pthread_mutex_t change; /* one change at a time, across its database write */
    struct lyra_store *store;
    int64_t (*now_ms)(void);
    unsigned char secret[SECRET_LEN];
    char *admin_key_path;
    char anonymous_role[LYRA_AUTH_NAME_MAX + 1]; /* "" = anonymous access off */
    uint64_t next_seq; /* of the next key made */

    struct principal **principals; /* sorted by name */
    size_t n_principals;
    struct key **by_hash; /* sorted by hash */
    struct key **by_id;   /* the same keys, sorted by id */
    size_t n_keys;
    struct role **roles; /* custom roles, sorted by name */
    size_t n_roles;

    char boot_key[LYRA_AUTH_KEY_BUF]; /* a generated admin key until taken */
    bool have_boot_key;
    bool secret_created; /* auth.secret did not exist: no stored hash can match */
};

static int64_t now_of(const struct lyra_auth *a)
{
    return a->now_ms ? a->now_ms() : lyra_wall_ms();
}

/* --- small helpers ---------------------------------------------------------- */

/* Copies of arrays of pointers with one element inserted or removed: the
 * new array is built while readers still use the old one.  Bytes are copied
 * with memcpy, so one helper serves every element type. */
static void *arr_insert(const void *old, size_t n, size_t esz, size_t pos, const void *elem)
{
    char *v = malloc((n + 1) * esz);
    if (!v)
        return NULL;
    if (pos)
        memcpy(v, old, pos * esz);
    memcpy(v + pos * esz, elem, esz);
    if (n > pos)
        memcpy(v + (pos + 1) * esz, (const char *)old + pos * esz, (n - pos) * esz);
    return v;
}

static void *arr_remove(const void *old, size_t n, size_t esz, size_t pos)
{
    char *v = malloc(n > 1 ? (n - 1) * esz : 1);
    if (!v)
        return NULL;
    if (pos)
        memcpy(v, old, pos * esz);
    if (n > pos + 1)
        memcpy(v + pos * esz, (const char *)old + (pos + 1) * esz, (n - pos - 1) * esz);
    return v;
}

/* Lower bounds: the index of the first element not less than the key, and
 * whether it is equal. */
static size_t principal_pos(const struct lyra_auth *a, const char *name, bool *found)
{
    size_t lo = 0, hi = a->n_principals;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(a->principals[mid]->name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < a->n_principals && strcmp(a->principals[lo]->name, name) == 0;
    return lo;
}

static size_t hash_pos(const struct lyra_auth *a, const unsigned char *hash, bool *found)
{
    size_t lo = 0, hi = a->n_keys;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(a->by_hash[mid]->hash, hash, HASH_LEN) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* The search compares keyed hashes, which tell an attacker nothing;
     * the final comparison is constant time anyway. */
    *found = lo < a->n_keys && sodium_memcmp(a->by_hash[lo]->hash, hash, HASH_LEN) == 0;
    return lo;
}

static size_t id_pos(const struct lyra_auth *a, const char *id, bool *found)
{
    size_t lo = 0, hi = a->n_keys;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(a->by_id[mid]->id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < a->n_keys && strcmp(a->by_id[lo]->id, id) == 0;
    return lo;
}

static size_t role_pos(const struct lyra_auth *a, const char *name, bool *found)
{
    size_t lo = 0, hi = a->n_roles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(a->roles[mid]->name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < a->n_roles && strcmp(a->roles[lo]->name, name) == 0;
    return lo;
}

static struct principal *find_principal(const struct lyra_auth *a, const char *name)
{
    bool found;
    size_t i = principal_pos(a, name, &found);
    return found ? a->principals[i] : NULL;
}

static struct key *find_key_id(const struct lyra_auth *a, const char *id)
{
    bool found;
    size_t i = id_pos(a, id, &found);
    return found ? a->by_id[i] : NULL;
}

static const struct role *builtin_role(const char *name)
{
    for (size_t i = 0; i < N_BUILTIN; i++)
        if (strcmp(builtin_roles[i].name, name) == 0)
            return &builtin_roles[i];
    return NULL;
}

static const struct role *find_role(const struct lyra_auth *a, const char *name)
{
    const struct role *r = builtin_role(name);
    if (r)
        return r;
    bool found;
    size_t i = role_pos(a, name, &found);
    return found ? a->roles[i] : NULL;
}

static bool key_expired(const struct key *k, int64_t now)
{
    return k->expires_ms != 0 && now >= k->expires_ms;
}

static const char *kind_name(enum lyra_principal_kind k)
{
    return k == LYRA_PRINCIPAL_SERVICE ? "service" : k == LYRA_PRINCIPAL_ANONYMOUS ? "anonymous" : "user";
}

static bool in_catalogue(const char *perm)
{
    for (size_t i = 0; i < lyra_auth_n_permissions; i++)
        if (strcmp(lyra_auth_permissions[i].name, perm) == 0)
            return true;
    return false;
}

static bool pattern_valid(const char *p)
{
    size_t n = strlen(p);
    if (n < 1 || n > PATTERN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == ':' || c == '/' || c == '-' || c == '*';
        if (!ok)
            return false;
    }
    return true;
}

/* A key as the client may present it: 1..256 printable ASCII, no space. */
static bool key_text_valid(const char *k, size_t n)
{
    if (n < 1 || n > LYRA_AUTH_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return false;
    return true;
}

static bool generated_shape(const char *k, size_t n)
{
    if (n != GEN_KEY_LEN || strncmp(k, "lyra_", 5) != 0)
        return false;
    for (size_t i = 5; i < n; i++)
        if (!((k[i] >= '0' && k[i] <= '9') || (k[i] >= 'A' && k[i] <= 'Z') || (k[i] >= 'a' && k[i] <= 'z')))
            return false;
    return true;
}

/* The display prefix: the first 12 characters of a generated key (7 of its
 * 43 random characters, leaving 214 bits unknown).  An operator's key of
 * another shape may be as short as 16 characters, so it keeps at most a
 * quarter of its length (and at most 4 characters). */
static void key_prefix(const char *k, size_t n, char out[GEN_PREFIX_LEN + 1])
{
    size_t keep = generated_shape(k, n) ? GEN_PREFIX_LEN : (n / 4 < 4 ? n / 4 : 4);
    memcpy(out, k, keep);
    out[keep] = '\0';
}

static void key_hash(const struct lyra_auth *a, const char *k, size_t n, unsigned char out[HASH_LEN])
{
    crypto_generichash(out, HASH_LEN, (const unsigned char *)k, n, a->secret, SECRET_LEN);
}

static void key_generate(char out[LYRA_AUTH_KEY_BUF])
{
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    memcpy(out, "lyra_", 5);
    for (size_t i = 5; i < GEN_KEY_LEN; i++)
        out[i] = b62[randombytes_uniform(62)];
    out[GEN_KEY_LEN] = '\0';
}

static void role_free(struct role *r)
{
    if (!r || r->builtin)
        return;
    for (size_t i = 0; i < r->n_perms; i++)
        free(r->perms[i]);
    for (size_t i = 0; i < r->n_models; i++)
        free(r->models[i]);
    free(r->perms);
    free(r->models);
    free(r);
}

static bool list_has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* Appends a copy of s to *v (grown by one); false when out of memory. */
static bool list_push(char ***v, size_t *n, const char *s)
{
    char **nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv)
        return false;
    *v = nv;
    if (!(nv[*n] = strdup(s)))
        return false;
    (*n)++;
    return true;
}

/* A custom role with the given lists (copied), or NULL when out of memory.
 * `skip_perm` / `skip_model` (may be NULL) are left out: a revoke. */
static struct role *role_build(const char *name, int64_t created_ms, char *const *perms, size_t n_perms,
                               char *const *models, size_t n_models, const char *skip_perm,
                               const char *skip_model)
{
    struct role *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->created_ms = created_ms;
    for (size_t i = 0; i < n_perms; i++)
        if (!(skip_perm && strcmp(perms[i], skip_perm) == 0) && !list_has(r->perms, r->n_perms, perms[i]) &&
            !list_push(&r->perms, &r->n_perms, perms[i]))
            goto oom;
    for (size_t i = 0; i < n_models; i++)
        if (!(skip_model && strcmp(models[i], skip_model) == 0) && !list_has(r->models, r->n_models, models[i]) &&
            !list_push(&r->models, &r->n_models, models[i]))
            goto oom;
    return r;
oom:
    role_free(r);
    return NULL;
}

static bool role_has(const struct role *r, const char *perm)
{
    if (!perm[0])
        return false;
    if (strcmp(perm, "self") == 0)
        return true;
    for (size_t i = 0; i < r->n_perms; i++)
        if (strcmp(r->perms[i], "*") == 0 || strcmp(r->perms[i], perm) == 0)
            return true;
    return false;
}

static bool role_model_ok(const struct role *r, const char *model)
{
    for (size_t i = 0; i < r->n_models; i++)
        if (lyra_auth_pattern_match(r->models[i], model))
            return true;
    return false;
}

/* --- public helpers --------------------------------------------------------- */

const char *lyra_auth_failure_code(enum lyra_auth_failure f)
{
    switch (f) {
    case LYRA_AUTH_OK:
        return "ok";
    case LYRA_AUTH_MISSING:
        return "missing_key";
    case LYRA_AUTH_MALFORMED:
        return "malformed_key";
    case LYRA_AUTH_UNKNOWN:
        return "invalid_key";
    case LYRA_AUTH_EXPIRED:
        return "expired_key";
    case LYRA_AUTH_REVOKED:
        return "revoked_key";
    }
    return "invalid_key";
}

bool lyra_auth_pattern_match(const char *pattern, const char *name)
{
    if (!pattern || !name)
        return false;
    /* Greedy glob with one backtrack point: the last '*' seen. */
    const char *p = pattern, *n = name, *star = NULL, *resume = NULL;
    while (*n) {
        if (*p == '*') {
            star = p++;
            resume = n;
        } else if (*p == *n) {
            p++;
            n++;
        } else if (star) {
            p = star + 1;
            n = ++resume;
        } else {
            return false;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

bool lyra_auth_name_valid(const char *text)
{
    if (!text)
        return false;
    size_t n = strlen(text);
    if (n < 1 || n > LYRA_AUTH_NAME_MAX || strcmp(text, LYRA_AUTH_ANONYMOUS) == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

/* --- writing through to SQLite --------------------------------------------- */

enum arg_type { ARG_END, ARG_TEXT, ARG_INT, ARG_INT_OR_NULL, ARG_HASH };

struct sql_arg {
    enum arg_type type;
    const char *text; /* ARG_TEXT: NULL binds NULL */
    int64_t i;        /* ARG_INT; ARG_INT_OR_NULL binds NULL for 0 */
    const unsigned char *hash;
};

#define OP_ARGS 10
struct sql_op {
    const char *sql;
    struct sql_arg args[OP_ARGS];
};

/* The statements of one change, run in one transaction. */
struct batch {
    struct sql_op *ops;
    size_t n, cap;
    bool oom;
};

#define T(s) ((struct sql_arg){ARG_TEXT, (s), 0, NULL})
#define I(v) ((struct sql_arg){ARG_INT, NULL, (v), NULL})
#define IN(v) ((struct sql_arg){ARG_INT_OR_NULL, NULL, (v), NULL})
#define H(h) ((struct sql_arg){ARG_HASH, NULL, 0, (h)})

/* Adds a statement; the arguments are borrowed until the batch runs. */
static void batch_add(struct batch *b, const char *sql, const struct sql_arg *args, size_t n_args)
{
    if (b->oom)
        return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 8;
        struct sql_op *ops = realloc(b->ops, cap * sizeof *ops);
        if (!ops) {
            b->oom = true;
            return;
        }
        b->ops = ops;
        b->cap = cap;
    }
    struct sql_op *op = &b->ops[b->n++];
    memset(op, 0, sizeof *op);
    op->sql = sql;
    for (size_t i = 0; i < n_args && i < OP_ARGS; i++)
        op->args[i] = args[i];
}

#define BATCH(b, sql, ...)                                                                   \
    do {                                                                                     \
        const struct sql_arg args_[] = {__VA_ARGS__};                                        \
        batch_add((b), (sql), args_, sizeof args_ / sizeof *args_);                          \
    } while (0)

static int tx_batch(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct batch *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        const struct sql_op *op = &b->ops[i];
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(db, op->sql, -1, &s, NULL) != SQLITE_OK)
            return lyra_store_error(err, db, "auth: preparing a policy change");
        for (int j = 0; j < OP_ARGS && op->args[j].type != ARG_END; j++) {
            const struct sql_arg *x = &op->args[j];
            if (x->type == ARG_TEXT && x->text)
                sqlite3_bind_text(s, j + 1, x->text, -1, SQLITE_STATIC);
            else if (x->type == ARG_INT || (x->type == ARG_INT_OR_NULL && x->i != 0))
                sqlite3_bind_int64(s, j + 1, x->i);
            else if (x->type == ARG_HASH)
                sqlite3_bind_blob(s, j + 1, x->hash, HASH_LEN, SQLITE_STATIC);
            else
                sqlite3_bind_null(s, j + 1);
        }
        int rc = sqlite3_step(s);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE)
            return lyra_store_error(err, db, "auth: writing a policy change");
    }
    return 0;
}

static int job_batch(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return lyra_store_tx(db, LYRA_STORE_DURABLE, tx_batch, arg, err);
}

/* Runs the batch in one durable transaction and frees its statements.  The
 * in-memory change is published only when this returns 0. */
static int batch_run(struct lyra_auth *a, struct batch *b, struct lyra_err *err)
{
    int rc;
    if (b->oom)
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    else
        rc = lyra_store_run(a->store, job_batch, b, err);
    free(b->ops);
    b->ops = NULL;
    b->n = b->cap = 0;
    return rc;
}

/* --- persisting last_used_ms ---------------------------------------------------- */

struct used {
    char id[16];
    int64_t ms;
};

static int job_used(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct used *u = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "UPDATE api_keys SET last_used_ms = ?1 WHERE id = ?2", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "auth: recording a key's last use");
    sqlite3_bind_int64(s, 1, u->ms);
    sqlite3_bind_text(s, 2, u->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : lyra_store_error(err, db, "auth: recording a key's last use");
}

static void done_used(int rc, const struct lyra_err *err, void *arg)
{
    if (rc < 0)
        lyra_warn("auth", "%s", err && err->msg[0] ? err->msg : lyra_strerror(rc));
    free(arg);
}

/* Called under the read lock: last_used_ms in memory now, in SQLite when the
 * last write of it is a minute old.  The compare-exchange makes one of many
 * concurrent users of a key the one that queues the write. */
static void note_used(struct lyra_auth *a, struct key *k, int64_t now)
{
    atomic_store(&k->last_used_ms, now);
    int64_t last = atomic_load(&k->persisted_ms);
    if (now - last < PERSIST_EVERY_MS && last != 0)
        return;
    if (!atomic_compare_exchange_strong(&k->persisted_ms, &last, now))
        return;
    struct used *u = malloc(sizeof *u);
    if (!u)
        return;
    memcpy(u->id, k->id, sizeof u->id);
    u->ms = now;
    if (lyra_store_submit(a->store, job_used, done_used, u) < 0)
        free(u);
}

/* --- loading --------------------------------------------------------------------- */

static int load_fail(sqlite3 *db, sqlite3_stmt *s, struct lyra_err *err)
{
    sqlite3_finalize(s);
    return lyra_store_error(err, db, "auth: loading the policy");
}

static const char *col_text(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? (const char *)t : "";
}

/* Job: reads the four tables into the (not yet shared) auth. */
static int job_load(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct lyra_auth *a = arg;
    sqlite3_stmt *s;
    int rc;

    if (sqlite3_prepare_v2(db, "SELECT name, kind, role, created_ms FROM principals ORDER BY name", -1, &s,
                           NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "auth: loading principals");
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct principal *p = calloc(1, sizeof *p);
        struct principal **v = p ? realloc(a->principals, (a->n_principals + 1) * sizeof *v) : NULL;
        if (!v) {
            free(p);
            sqlite3_finalize(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        a->principals = v;
        snprintf(p->name, sizeof p->name, "%s", col_text(s, 0));
        p->kind = strcmp(col_text(s, 1), "service") == 0 ? LYRA_PRINCIPAL_SERVICE : LYRA_PRINCIPAL_USER;
        snprintf(p->role, sizeof p->role, "%s", col_text(s, 2));
        p->created_ms = sqlite3_column_int64(s, 3);
        v[a->n_principals++] = p;
    }
    if (rc != SQLITE_DONE)
        return load_fail(db, s, err);
    sqlite3_finalize(s);

    if (sqlite3_prepare_v2(db,
                           "SELECT id, hash, prefix, principal, label, created_ms, expires_ms, revoked_ms, "
                           "last_used_ms FROM api_keys ORDER BY rowid",
                           -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "auth: loading keys");
    size_t cap = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(s, 1) != HASH_LEN || sqlite3_column_bytes(s, 0) >= 16) {
            lyra_warn("auth", "skipping the malformed key row %s", col_text(s, 0));
            continue;
        }
        if (a->n_keys == cap) {
            cap = cap ? 2 * cap : 16;
            struct key **v = realloc(a->by_hash, cap * sizeof *v);
            if (v)
                a->by_hash = v;
            if (!v) {
                sqlite3_finalize(s);
                return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            }
        }
        struct key *k = calloc(1, sizeof *k);
        if (!k) {
            sqlite3_finalize(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        snprintf(k->id, sizeof k->id, "%s", col_text(s, 0));
        memcpy(k->hash, sqlite3_column_blob(s, 1), HASH_LEN);
        snprintf(k->prefix, sizeof k->prefix, "%s", col_text(s, 2));
        snprintf(k->principal, sizeof k->principal, "%s", col_text(s, 3));
        if (sqlite3_column_type(s, 4) != SQLITE_NULL && !(k->label = strdup(col_text(s, 4)))) {
            free(k);
            sqlite3_finalize(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        if (k->label)
            lyra_utf8_scrub(k->label);
        k->created_ms = sqlite3_column_int64(s, 5);
        k->expires_ms = sqlite3_column_int64(s, 6);
        k->revoked_ms = sqlite3_column_int64(s, 7);
        atomic_init(&k->last_used_ms, sqlite3_column_int64(s, 8));
        atomic_init(&k->persisted_ms, sqlite3_column_int64(s, 8));
        k->seq = a->next_seq++;
        a->by_hash[a->n_keys++] = k;
    }
    if (rc != SQLITE_DONE)
        return load_fail(db, s, err);
    sqlite3_finalize(s);

    if (sqlite3_prepare_v2(db, "SELECT name, created_ms FROM roles ORDER BY name", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "auth: loading roles");
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct role *r = role_build(col_text(s, 0), sqlite3_column_int64(s, 1), NULL, 0, NULL, 0, NULL, NULL);
        struct role **v = r ? realloc(a->roles, (a->n_roles + 1) * sizeof *v) : NULL;
        if (!v) {
            role_free(r);
            sqlite3_finalize(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        a->roles = v;
        v[a->n_roles++] = r;
    }
    if (rc != SQLITE_DONE)
        return load_fail(db, s, err);
    sqlite3_finalize(s);

    if (sqlite3_prepare_v2(db, "SELECT role, kind, value FROM role_grants ORDER BY role, kind, value", -1, &s,
                           NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "auth: loading grants");
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        bool found;
        size_t i = role_pos(a, col_text(s, 0), &found);
        if (!found)
            continue;
        struct role *r = a->roles[i];
        bool perm = strcmp(col_text(s, 1), "permission") == 0;
        bool ok = perm ? list_push(&r->perms, &r->n_perms, col_text(s, 2))
                       : list_push(&r->models, &r->n_models, col_text(s, 2));
        if (!ok) {
            sqlite3_finalize(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
    }
    if (rc != SQLITE_DONE)
        return load_fail(db, s, err);
    sqlite3_finalize(s);
    return 0;
}

static int cmp_key_hash(const void *x, const void *y)
{
    return memcmp((*(struct key *const *)x)->hash, (*(struct key *const *)y)->hash, HASH_LEN);
}

static int cmp_key_id(const void *x, const void *y)
{
    return strcmp((*(struct key *const *)x)->id, (*(struct key *const *)y)->id);
}

/* Builds the id index from by_hash after loading. */
static int index_keys(struct lyra_auth *a, struct lyra_err *err)
{
    if (a->n_keys == 0)
        return 0;
    qsort(a->by_hash, a->n_keys, sizeof *a->by_hash, cmp_key_hash);
    a->by_id = malloc(a->n_keys * sizeof *a->by_id);
    if (!a->by_id)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    memcpy(a->by_id, a->by_hash, a->n_keys * sizeof *a->by_id);
    qsort(a->by_id, a->n_keys, sizeof *a->by_id, cmp_key_id);
    return 0;
}

/* --- auth.secret ------------------------------------------------------------------ */

/* Reads $home/auth.secret, creating it (O_EXCL, 0600) when missing.  A file
 * that is not exactly 32 bytes, not a regular file, or readable by group or
 * other is refused: a secret that may have leaked is not trusted. */
static int load_secret(struct lyra_auth *a, const char *home, struct lyra_err *err)
{
    char *path = lyra_path_join(home, "auth.secret");
    if (!path)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) < 0)
                rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, strerror(errno));
            else if (!S_ISREG(st.st_mode))
                rc = lyra_err_set(err, LYRA_EIO, "%s is not a regular file", path);
            else if (st.st_mode & 077)
                rc = lyra_err_set(err, LYRA_EIO,
                                  "%s has mode %04o: it is readable by group or other, so it is not trusted; "
                                  "chmod 600 %s (and consider every key compromised if others could read it)",
                                  path, (unsigned)(st.st_mode & 07777), path);
            else if (st.st_size != SECRET_LEN)
                rc = lyra_err_set(err, LYRA_EIO, "%s is %lld bytes, not %d: not an auth secret", path,
                                  (long long)st.st_size, SECRET_LEN);
            else {
                ssize_t n = read(fd, a->secret, SECRET_LEN);
                if (n != SECRET_LEN)
                    rc = lyra_err_set(err, LYRA_EIO, "%s: short read", path);
            }
            close(fd);
            free(path);
            return rc;
        }
        if (errno != ENOENT) {
            rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            if (errno == EEXIST)
                continue; /* created by someone else meanwhile: read theirs */
            rc = lyra_err_set(err, LYRA_EIO, "creating %s: %s", path, strerror(errno));
            break;
        }
        randombytes_buf(a->secret, SECRET_LEN);
        bool ok = fchmod(fd, 0600) == 0 && write(fd, a->secret, SECRET_LEN) == SECRET_LEN && fsync(fd) == 0;
        int e = errno;
        if (close(fd) < 0 && ok) {
            ok = false;
            e = errno;
        }
        if (!ok) {
            unlink(path);
            rc = lyra_err_set(err, LYRA_EIO, "writing %s: %s", path, strerror(e));
        } else {
            a->secret_created = true;
            lyra_info("auth", "created the key secret %s (back it up with lyra.db)", path);
        }
        break;
    }
    free(path);
    return rc;
}

/* --- the last-admin rule ---------------------------------------------------------- */

/* A change whose effect on admins is asked about: a principal removed, a
 * principal's new role, a key revoked (each NULL when not part of it). */
struct what_if {
    const char *removed;
    const char *renamed; /* principal whose role becomes new_role */
    const char *new_role;
    const char *revoked_key;
};

/* True when some principal with role admin has an active key, in the state
 * after `w` (NULL = now). */
static bool admin_usable(const struct lyra_auth *a, int64_t now, const struct what_if *w)
{
    for (size_t i = 0; i < a->n_keys; i++) {
        const struct key *k = a->by_id[i];
        if (k->revoked_ms || key_expired(k, now))
            continue;
        if (w && w->revoked_key && strcmp(k->id, w->revoked_key) == 0)
            continue;
        const struct principal *p = find_principal(a, k->principal);
        if (!p || (w && w->removed && strcmp(p->name, w->removed) == 0))
            continue;
        const char *role = w && w->renamed && strcmp(p->name, w->renamed) == 0 ? w->new_role : p->role;
        if (strcmp(role, "admin") == 0)
            return true;
    }
    return false;
}

/* LYRA_ECONFLICT when the change takes the last usable admin key away.  A
 * state that already has none (every admin key expired) does not block
 * other changes: the change does not cause it. */
static int check_last_admin(const struct lyra_auth *a, const struct what_if *w, const char *what,
                            struct lyra_err *err)
{
    int64_t now = now_of(a);
    if (admin_usable(a, now, NULL) && !admin_usable(a, now, w))
        return lyra_err_set(err, LYRA_ECONFLICT, "%s would leave no admin with a usable key", what);
    return 0;
}

/* --- publishing keys ------------------------------------------------------------------ */

/* A new key's row, under change_mu; k is filled but not yet shared. */
static void batch_key_insert(struct batch *b, const struct key *k)
{
    BATCH(b,
          "INSERT INTO api_keys (id, hash, prefix, principal, label, created_ms, expires_ms, revoked_ms, "
          "last_used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
          T(k->id), H(k->hash), T(k->prefix), T(k->principal), T(k->label), I(k->created_ms), IN(k->expires_ms));
}

/* The two new indexes with k in them; false when out of memory. */
struct key_indexes {
    struct key **by_hash, **by_id;
};

static bool key_indexes_with(const struct lyra_auth *a, struct key *k, struct key_indexes *out)
{
    bool found;
    size_t hp = hash_pos(a, k->hash, &found);
    size_t ip = id_pos(a, k->id, &found);
    out->by_hash = arr_insert(a->by_hash, a->n_keys, sizeof *a->by_hash, hp, &k);
    out->by_id = arr_insert(a->by_id, a->n_keys, sizeof *a->by_id, ip, &k);
    if (!out->by_hash || !out->by_id) {
        free(out->by_hash);
        free(out->by_id);
        return false;
    }
    return true;
}

/* Under the write lock: swaps the indexes in; the old ones go to *old. */
static void key_indexes_publish(struct lyra_auth *a, struct key_indexes *ix)
{
    struct key **oh = a->by_hash, **oi = a->by_id;
    a->by_hash = ix->by_hash;
    a->by_id = ix->by_id;
    a->n_keys++;
    ix->by_hash = oh;
    ix->by_id = oi;
}

static void key_free(struct key *k)
{
    if (!k)
        return;
    free(k->label);
    sodium_memzero(k, sizeof *k);
    free(k);
}

/* A fresh key struct for principal with a new random id (unique here). */
static struct key *key_new(const struct lyra_auth *a, const char *principal, const char *label, int64_t now,
                           int64_t expires_ms)
{
    struct key *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    if (label && !(k->label = strdup(label))) {
        free(k);
        return NULL;
    }
    do {
        unsigned char raw[6];
        randombytes_buf(raw, sizeof raw);
        memcpy(k->id, "k_", 2);
        sodium_bin2hex(k->id + 2, sizeof k->id - 2, raw, sizeof raw);
    } while (find_key_id(a, k->id));
    snprintf(k->principal, sizeof k->principal, "%s", principal);
    k->created_ms = now;
    k->expires_ms = expires_ms;
    atomic_init(&k->last_used_ms, 0);
    atomic_init(&k->persisted_ms, 0);
    return k;
}

/* --- JSON ------------------------------------------------------------------------------- */

static json_t *int_or_null(int64_t v)
{
    return v ? json_integer(v) : json_null();
}

/* Called with the lock held (either way) or change_mu. */
static json_t *key_json(const struct key *k, int64_t now)
{
    const char *state = k->revoked_ms ? "revoked" : key_expired(k, now) ? "expired" : "active";
    return json_pack("{s:s, s:s, s:s, s:o, s:I, s:o, s:o, s:o, s:s}", "id", k->id, "prefix", k->prefix,
                     "principal", k->principal, "label", k->label ? json_string(k->label) : json_null(),
                     "created_ms", (json_int_t)k->created_ms, "expires_ms", int_or_null(k->expires_ms),
                     "revoked_ms", int_or_null(k->revoked_ms), "last_used_ms",
                     int_or_null(atomic_load(&k->last_used_ms)), "state", state);
}

static json_t *string_array(char *const *v, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, json_string(v[i])) < 0) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

/* --- open / free ----------------------------------------------------------------------- */

/* Creates or reuses principal "admin" with role admin and adds the key
 * text k (already validated) as its key. */
static int bootstrap_add(struct lyra_auth *a, const char *text, size_t len, bool generated, struct lyra_err *err)
{
    int64_t now = now_of(a);
    struct key *k = key_new(a, "admin", generated ? "bootstrap (generated)" : "bootstrap (LYRA_ADMIN_KEY)", now, 0);
    if (!k)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    key_hash(a, text, len, k->hash);
    key_prefix(text, len, k->prefix);
    bool found;
    hash_pos(a, k->hash, &found);
    if (found) {
        key_free(k);
        return lyra_err_set(err, LYRA_EINVAL,
                            "LYRA_ADMIN_KEY is a key this server already has, revoked, expired or not an "
                            "admin's: set a new one");
    }

    struct principal *p = find_principal(a, "admin");
    struct principal *np = NULL;
    struct principal **nv = NULL;
    struct batch b = {0};
    if (!p) {
        np = calloc(1, sizeof *np);
        bool pfound;
        size_t pos = principal_pos(a, "admin", &pfound);
        nv = np ? arr_insert(a->principals, a->n_principals, sizeof *nv, pos, &np) : NULL;
        if (!nv) {
            free(np);
            key_free(k);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        snprintf(np->name, sizeof np->name, "admin");
        snprintf(np->role, sizeof np->role, "admin");
        np->kind = LYRA_PRINCIPAL_USER;
        np->created_ms = now;
        BATCH(&b, "INSERT INTO principals (name, kind, role, created_ms) VALUES ('admin', 'user', 'admin', ?1)",
              I(now));
    } else if (strcmp(p->role, "admin") != 0) {
        batch_add(&b, "UPDATE principals SET role = 'admin' WHERE name = 'admin'", NULL, 0);
    }
    batch_key_insert(&b, k);
    struct key_indexes ix;
    if (!key_indexes_with(a, k, &ix)) {
        free(b.ops);
        free(nv);
        free(np);
        key_free(k);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    int rc = batch_run(a, &b, err);
    if (rc < 0) {
        free(ix.by_hash);
        free(ix.by_id);
        free(nv);
        free(np);
        key_free(k);
        return rc;
    }
    pthread_rwlock_wrlock(&a->lock);
    if (nv) {
        struct principal **old = a->principals;
        a->principals = nv;
        a->n_principals++;
        nv = old;
    } else if (strcmp(p->role, "admin") != 0) {
        snprintf(p->role, sizeof p->role, "admin");
    }
    k->seq = a->next_seq++;
    key_indexes_publish(a, &ix);
    pthread_rwlock_unlock(&a->lock);
    free(nv);
    free(ix.by_hash);
    free(ix.by_id);
    lyra_info("auth", "bootstrap: principal admin has the %s admin key %s",
              generated ? "generated" : "LYRA_ADMIN_KEY", k->id);
    return 0;
}

static int bootstrap(struct lyra_auth *a, const char *given, struct lyra_err *err)
{
    if (admin_usable(a, now_of(a), NULL)) {
        if (given)
            lyra_warn("auth", "LYRA_ADMIN_KEY is set but an admin with a usable key exists: it was not added "
                              "(unset LYRA_ADMIN_KEY; manage keys with `lyra keys`)");
        return 0;
    }
    if (given) {
        size_t n = strlen(given);
        if (n < BOOT_KEY_MIN || !key_text_valid(given, n))
            return lyra_err_set(err, LYRA_EINVAL,
                                "LYRA_ADMIN_KEY must be %d..%d printable ASCII characters without spaces",
                                BOOT_KEY_MIN, LYRA_AUTH_KEY_MAX);
        return bootstrap_add(a, given, n, false, err);
    }
    /* The file first: a key in the database that nobody has would lock the
     * operator out (on the next start an admin "exists").  An old file can
     * only hold a key that is no longer usable, so it is replaced. */
    char text[LYRA_AUTH_KEY_BUF + 1];
    key_generate(text);
    text[GEN_KEY_LEN] = '\n';
    int e = lyra_write_file_atomic(a->admin_key_path, text, GEN_KEY_LEN + 1, 0600);
    text[GEN_KEY_LEN] = '\0';
    if (e < 0) {
        sodium_memzero(text, sizeof text);
        return lyra_err_set(err, LYRA_EIO, "writing the admin key to %s: %s", a->admin_key_path, strerror(-e));
    }
    int rc = bootstrap_add(a, text, GEN_KEY_LEN, true, err);
    if (rc < 0) {
        unlink(a->admin_key_path);
        sodium_memzero(text, sizeof text);
        return rc;
    }
    memcpy(a->boot_key, text, GEN_KEY_LEN + 1);
    a->have_boot_key = true;
    sodium_memzero(text, sizeof text);
    lyra_info("auth", "bootstrap: no admin had a usable key; a new admin key was written to %s (shown once)",
              a->admin_key_path);
    return 0;
}

/* auth.secret was missing (lost, or not restored with lyra.db) while the
 * database holds keys: their hashes were made with the old secret and can
 * never match again.  They are marked revoked, so that the last-admin rule
 * and the bootstrap see what is true — no admin has a usable key — and a
 * new admin key is made (docs/security.md, "Key storage"). */
static int retire_orphaned_keys(struct lyra_auth *a, struct lyra_err *err)
{
    size_t live = 0;
    for (size_t i = 0; i < a->n_keys; i++)
        live += a->by_hash[i]->revoked_ms == 0;
    if (live == 0)
        return 0;
    int64_t now = now_of(a);
    struct batch b = {0};
    BATCH(&b, "UPDATE api_keys SET revoked_ms = ?1 WHERE revoked_ms IS NULL", I(now));
    int rc = batch_run(a, &b, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < a->n_keys; i++)
        if (!a->by_hash[i]->revoked_ms)
            a->by_hash[i]->revoked_ms = now;
    lyra_warn("auth",
              "auth.secret was missing and has been created anew: the %zu key(s) in lyra.db were made with the "
              "old secret and can never match again, so they are revoked and a new admin key is made (to keep "
              "old keys, restore lyra.db and auth.secret together from one backup)",
              live);
    return 0;
}

int lyra_auth_open(const struct lyra_auth_options *opts, struct lyra_auth **out, struct lyra_err *err)
{
    *out = NULL;
    if (!opts || !opts->store || !opts->home)
        return lyra_err_set(err, LYRA_EINVAL, "auth: a store and a home directory are needed");
    if (sodium_init() < 0)
        return lyra_err_set(err, LYRA_EINTERNAL, "libsodium could not be initialised");
    struct lyra_auth *a = calloc(1, sizeof *a);
    if (!a)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    pthread_rwlock_init(&a->lock, NULL);
    pthread_mutex_init(&a->change, NULL);
    a->store = opts->store;
    a->now_ms = opts->now_ms;
    int rc;
    if (!(a->admin_key_path = lyra_path_join(opts->home, "admin.key"))) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_secret(a, opts->home, err)) < 0)
        goto fail;
    if ((rc = lyra_store_run(a->store, job_load, a, err)) < 0 || (rc = index_keys(a, err)) < 0)
        goto fail;
    if (a->secret_created && (rc = retire_orphaned_keys(a, err)) < 0)
        goto fail;
    if (opts->anonymous_role && opts->anonymous_role[0]) {
        if (!find_role(a, opts->anonymous_role)) {
            rc = lyra_err_set(err, LYRA_EINVAL, "the anonymous role %s is not a role", opts->anonymous_role);
            goto fail;
        }
        snprintf(a->anonymous_role, sizeof a->anonymous_role, "%s", opts->anonymous_role);
    }
    if ((rc = bootstrap(a, opts->bootstrap_key, err)) < 0)
        goto fail;
    *out = a;
    return 0;
fail:
    lyra_auth_free(a);
    return rc;
}

void lyra_auth_free(struct lyra_auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_principals; i++)
        free(a->principals[i]);
    free(a->principals);
    for (size_t i = 0; i < a->n_keys; i++)
        key_free(a->by_hash[i]);
    free(a->by_hash);
    free(a->by_id);
    for (size_t i = 0; i < a->n_roles; i++)
        role_free(a->roles[i]);
    free(a->roles);
    free(a->admin_key_path);
    sodium_memzero(a->secret, sizeof a->secret);
    sodium_memzero(a->boot_key, sizeof a->boot_key);
    pthread_rwlock_destroy(&a->lock);
    pthread_mutex_destroy(&a->change);
    free(a);
}

int lyra_auth_bootstrap_key(struct lyra_auth *a, char buf[LYRA_AUTH_KEY_BUF], const char **path_out)
{
    pthread_mutex_lock(&a->change);
    int rc = LYRA_ENOTFOUND;
    if (a->have_boot_key) {
        memcpy(buf, a->boot_key, LYRA_AUTH_KEY_BUF);
        sodium_memzero(a->boot_key, sizeof a->boot_key);
        a->have_boot_key = false;
        if (path_out)
            *path_out = a->admin_key_path;
        rc = 0;
    }
    pthread_mutex_unlock(&a->change);
    return rc;
}

/* --- the hot path ------------------------------------------------------------------------ */

/* "Bearer" (any case), one or more spaces, the key, nothing after it. */
static bool parse_bearer(const char *h, const char **key, size_t *len)
{
    if (strncasecmp(h, "bearer", 6) != 0 || h[6] != ' ')
        return false;
    const char *k = h + 6;
    while (*k == ' ')
        k++;
    size_t n = strnlen(k, LYRA_AUTH_KEY_MAX + 1);
    if (!key_text_valid(k, n))
        return false;
    *key = k;
    *len = n;
    return true;
}

enum lyra_auth_failure lyra_auth_authenticate(struct lyra_auth *a, const char *authorization,
                                              struct lyra_principal *out)
{
    memset(out, 0, sizeof *out);
    if (!authorization) {
        if (!a->anonymous_role[0])
            return LYRA_AUTH_MISSING;
        snprintf(out->name, sizeof out->name, "%s", LYRA_AUTH_ANONYMOUS);
        snprintf(out->role, sizeof out->role, "%s", a->anonymous_role);
        out->kind = LYRA_PRINCIPAL_ANONYMOUS;
        return LYRA_AUTH_OK;
    }
    const char *key;
    size_t len;
    if (!parse_bearer(authorization, &key, &len))
        return LYRA_AUTH_MALFORMED;
    unsigned char hash[HASH_LEN];
    key_hash(a, key, len, hash);

    enum lyra_auth_failure f = LYRA_AUTH_OK;
    pthread_rwlock_rdlock(&a->lock);
    bool found;
    size_t i = hash_pos(a, hash, &found);
    struct key *k = found ? a->by_hash[i] : NULL;
    const struct principal *p = k ? find_principal(a, k->principal) : NULL;
    int64_t now = now_of(a);
    if (!k)
        f = LYRA_AUTH_UNKNOWN;
    else if (k->revoked_ms || !p)
        f = LYRA_AUTH_REVOKED;
    else if (key_expired(k, now))
        f = LYRA_AUTH_EXPIRED;
    else {
        snprintf(out->name, sizeof out->name, "%s", p->name);
        snprintf(out->role, sizeof out->role, "%s", p->role);
        snprintf(out->key_id, sizeof out->key_id, "%s", k->id);
        out->kind = p->kind;
        note_used(a, k, now);
    }
    pthread_rwlock_unlock(&a->lock);
    sodium_memzero(hash, sizeof hash);
    return f;
}

/* The role p acts with now, or NULL when p has nothing (removed, its key
 * revoked or expired, anonymous access off).  Lock held. */
static const struct role *current_role(const struct lyra_auth *a, const struct lyra_principal *p)
{
    if (p->kind == LYRA_PRINCIPAL_ANONYMOUS)
        return a->anonymous_role[0] ? find_role(a, a->anonymous_role) : NULL;
    const struct principal *pr = find_principal(a, p->name);
    const struct key *k = find_key_id(a, p->key_id);
    if (!pr || !k || strcmp(k->principal, pr->name) != 0 || k->revoked_ms || key_expired(k, now_of(a)))
        return NULL;
    return find_role(a, pr->role);
}

bool lyra_auth_allowed(struct lyra_auth *a, const struct lyra_principal *p, const char *permission,
                       const char *model)
{
    if (!p || !permission)
        return false;
    pthread_rwlock_rdlock(&a->lock);
    const struct role *r = current_role(a, p);
    bool ok = r && role_has(r, permission) && (!model || role_model_ok(r, model));
    pthread_rwlock_unlock(&a->lock);
    return ok;
}

bool lyra_auth_still_valid(struct lyra_auth *a, const struct lyra_principal *p)
{
    if (!p)
        return false;
    pthread_rwlock_rdlock(&a->lock);
    bool ok;
    if (p->kind == LYRA_PRINCIPAL_ANONYMOUS) {
        ok = a->anonymous_role[0] != '\0';
    } else {
        const struct principal *pr = find_principal(a, p->name);
        const struct key *k = find_key_id(a, p->key_id);
        ok = pr && k && strcmp(k->principal, pr->name) == 0 && !k->revoked_ms && !key_expired(k, now_of(a));
    }
    pthread_rwlock_unlock(&a->lock);
    return ok;
}

/* --- management ------------------------------------------------------------------------- */

int lyra_auth_user_add(struct lyra_auth *a, const char *name, enum lyra_principal_kind kind, const char *role,
                       struct lyra_err *err)
{
    if (!lyra_auth_name_valid(name))
        return lyra_err_set(err, LYRA_EINVAL, "a principal name is 1..%d of A-Z a-z 0-9 . _ - (not anonymous)",
                            LYRA_AUTH_NAME_MAX);
    if (kind != LYRA_PRINCIPAL_USER && kind != LYRA_PRINCIPAL_SERVICE)
        return lyra_err_set(err, LYRA_EINVAL, "a principal is a user or a service account");
    if (!role)
        return lyra_err_set(err, LYRA_EINVAL, "a principal needs a role");
    pthread_mutex_lock(&a->change);
    int rc;
    bool found;
    size_t pos = principal_pos(a, name, &found);
    if (found) {
        rc = lyra_err_set(err, LYRA_EEXISTS, "principal %s exists", name);
        goto out;
    }
    if (!find_role(a, role)) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no role %s", role);
        goto out;
    }
    struct principal *p = calloc(1, sizeof *p);
    struct principal **nv = p ? arr_insert(a->principals, a->n_principals, sizeof *nv, pos, &p) : NULL;
    if (!nv) {
        free(p);
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->role, sizeof p->role, "%s", role);
    p->kind = kind;
    p->created_ms = now_of(a);
    struct batch b = {0};
    BATCH(&b, "INSERT INTO principals (name, kind, role, created_ms) VALUES (?1, ?2, ?3, ?4)", T(p->name),
          T(kind_name(kind)), T(p->role), I(p->created_ms));
    if ((rc = batch_run(a, &b, err)) < 0) {
        free(nv);
        free(p);
        goto out;
    }
    pthread_rwlock_wrlock(&a->lock);
    struct principal **old = a->principals;
    a->principals = nv;
    a->n_principals++;
    pthread_rwlock_unlock(&a->lock);
    free(old);
out:
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_user_remove(struct lyra_auth *a, const char *name, struct lyra_err *err)
{
    if (!name)
        return lyra_err_set(err, LYRA_EINVAL, "no principal named");
    pthread_mutex_lock(&a->change);
    int rc;
    bool found;
    size_t pos = principal_pos(a, name, &found);
    if (!found) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no principal %s", name);
        goto out;
    }
    struct what_if w = {.removed = name};
    char what[LYRA_AUTH_NAME_MAX + 32];
    snprintf(what, sizeof what, "removing %s", name);
    if ((rc = check_last_admin(a, &w, what, err)) < 0)
        goto out;
    struct principal **nv = arr_remove(a->principals, a->n_principals, sizeof *nv, pos);
    if (!nv) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    int64_t now = now_of(a);
    struct batch b = {0};
    BATCH(&b, "UPDATE api_keys SET revoked_ms = ?1 WHERE principal = ?2 AND revoked_ms IS NULL", I(now), T(name));
    BATCH(&b, "DELETE FROM principals WHERE name = ?1", T(name));
    if ((rc = batch_run(a, &b, err)) < 0) {
        free(nv);
        goto out;
    }
    pthread_rwlock_wrlock(&a->lock);
    struct principal *gone = a->principals[pos];
    struct principal **old = a->principals;
    a->principals = nv;
    a->n_principals--;
    for (size_t i = 0; i < a->n_keys; i++)
        if (!a->by_id[i]->revoked_ms && strcmp(a->by_id[i]->principal, name) == 0)
            a->by_id[i]->revoked_ms = now;
    pthread_rwlock_unlock(&a->lock);
    free(old);
    free(gone);
out:
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_user_set_role(struct lyra_auth *a, const char *name, const char *role, struct lyra_err *err)
{
    if (!name || !role)
        return lyra_err_set(err, LYRA_EINVAL, "a principal and a role are needed");
    pthread_mutex_lock(&a->change);
    int rc;
    struct principal *p = find_principal(a, name);
    if (!p) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no principal %s", name);
        goto out;
    }
    if (!find_role(a, role)) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no role %s", role);
        goto out;
    }
    if (strcmp(p->role, role) == 0) {
        rc = 0;
        goto out;
    }
    struct what_if w = {.renamed = name, .new_role = role};
    char what[2 * LYRA_AUTH_NAME_MAX + 32];
    snprintf(what, sizeof what, "giving %s the role %s", name, role);
    if ((rc = check_last_admin(a, &w, what, err)) < 0)
        goto out;
    struct batch b = {0};
    BATCH(&b, "UPDATE principals SET role = ?1 WHERE name = ?2", T(role), T(name));
    if ((rc = batch_run(a, &b, err)) < 0)
        goto out;
    pthread_rwlock_wrlock(&a->lock);
    snprintf(p->role, sizeof p->role, "%s", role);
    pthread_rwlock_unlock(&a->lock);
out:
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_key_create(struct lyra_auth *a, const struct lyra_key_spec *spec, char key_out[LYRA_AUTH_KEY_BUF],
                         json_t **info, struct lyra_err *err)
{
    if (info)
        *info = NULL;
    key_out[0] = '\0';
    if (!spec || !spec->principal)
        return lyra_err_set(err, LYRA_EINVAL, "a key needs a principal");
    if (spec->label && (strlen(spec->label) > LABEL_MAX || !lyra_utf8_valid(spec->label, strlen(spec->label))))
        return lyra_err_set(err, LYRA_EINVAL, "a key label is at most %d bytes of UTF-8", LABEL_MAX);
    pthread_mutex_lock(&a->change);
    int rc;
    int64_t now = now_of(a);
    char text[LYRA_AUTH_KEY_BUF];
    struct key *k = NULL;
    if (!find_principal(a, spec->principal)) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no principal %s", spec->principal);
        goto out;
    }
    if (spec->expires_ms < 0 || (spec->expires_ms != 0 && spec->expires_ms <= now)) {
        rc = lyra_err_set(err, LYRA_EINVAL, "a key's expiry must be in the future");
        goto out;
    }
    if (!(k = key_new(a, spec->principal, spec->label, now, spec->expires_ms))) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    bool dup;
    do { /* 256 random bits never collide; the check costs nothing */
        key_generate(text);
        key_hash(a, text, GEN_KEY_LEN, k->hash);
        hash_pos(a, k->hash, &dup);
    } while (dup);
    key_prefix(text, GEN_KEY_LEN, k->prefix);
    struct key_indexes ix;
    if (!key_indexes_with(a, k, &ix)) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    struct batch b = {0};
    batch_key_insert(&b, k);
    if ((rc = batch_run(a, &b, err)) < 0) {
        free(ix.by_hash);
        free(ix.by_id);
        goto out;
    }
    k->seq = a->next_seq++;
    pthread_rwlock_wrlock(&a->lock);
    key_indexes_publish(a, &ix);
    pthread_rwlock_unlock(&a->lock);
    free(ix.by_hash);
    free(ix.by_id);
    memcpy(key_out, text, GEN_KEY_LEN + 1);
    if (info)
        *info = key_json(k, now);
    k = NULL; /* owned by the indexes now */
out:
    key_free(k);
    sodium_memzero(text, sizeof text);
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_key_revoke(struct lyra_auth *a, const char *key_id, struct lyra_err *err)
{
    if (!key_id)
        return lyra_err_set(err, LYRA_EINVAL, "no key named");
    pthread_mutex_lock(&a->change);
    int rc = 0;
    struct key *k = find_key_id(a, key_id);
    if (!k) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no key %s", key_id);
        goto out;
    }
    if (k->revoked_ms)
        goto out; /* already revoked: nothing changes */
    struct what_if w = {.revoked_key = key_id};
    char what[64];
    snprintf(what, sizeof what, "revoking %s", k->id);
    if ((rc = check_last_admin(a, &w, what, err)) < 0)
        goto out;
    int64_t now = now_of(a);
    struct batch b = {0};
    BATCH(&b, "UPDATE api_keys SET revoked_ms = ?1 WHERE id = ?2", I(now), T(k->id));
    if ((rc = batch_run(a, &b, err)) < 0)
        goto out;
    pthread_rwlock_wrlock(&a->lock);
    k->revoked_ms = now;
    pthread_rwlock_unlock(&a->lock);
out:
    pthread_mutex_unlock(&a->change);
    return rc;
}

/* A custom role name that is free: valid and not a built-in's. */
static int check_role_name(const char *name, struct lyra_err *err)
{
    if (!lyra_auth_name_valid(name))
        return lyra_err_set(err, LYRA_EINVAL, "a role name is 1..%d of A-Z a-z 0-9 . _ - (not anonymous)",
                            LYRA_AUTH_NAME_MAX);
    if (builtin_role(name))
        return lyra_err_set(err, LYRA_EEXISTS, "%s is a built-in role", name);
    return 0;
}

static int check_perm(const char *perm, struct lyra_err *err)
{
    if (!perm || !in_catalogue(perm))
        return lyra_err_set(err, LYRA_EINVAL, "%s is not a permission (see GET /permissions)",
                            perm ? perm : "(null)");
    return 0;
}

static int check_pattern(const char *pat, struct lyra_err *err)
{
    if (!pat || !pattern_valid(pat))
        return lyra_err_set(err, LYRA_EINVAL, "a model pattern is 1..%d of A-Z a-z 0-9 . _ : / - *",
                            PATTERN_MAX);
    return 0;
}

/* Under change_mu, after the database write: swaps r in for the custom
 * role at pos, then frees the one it replaces.  Cannot fail. */
static void role_replace(struct lyra_auth *a, size_t pos, struct role *r)
{
    pthread_rwlock_wrlock(&a->lock);
    struct role *old = a->roles[pos];
    a->roles[pos] = r;
    pthread_rwlock_unlock(&a->lock);
    role_free(old);
}

int lyra_auth_role_create(struct lyra_auth *a, const char *name, const char *const *permissions, size_t n_perms,
                          const char *const *models, size_t n_models, struct lyra_err *err)
{
    int rc;
    if ((rc = check_role_name(name, err)) < 0)
        return rc;
    if (n_models > LYRA_AUTH_PATTERNS_MAX)
        return lyra_err_set(err, LYRA_EINVAL, "a role has at most %d model patterns", LYRA_AUTH_PATTERNS_MAX);
    if ((n_perms && !permissions) || (n_models && !models))
        return lyra_err_set(err, LYRA_EINVAL, "missing permissions or models");
    for (size_t i = 0; i < n_perms; i++)
        if ((rc = check_perm(permissions[i], err)) < 0)
            return rc;
    for (size_t i = 0; i < n_models; i++)
        if ((rc = check_pattern(models[i], err)) < 0)
            return rc;
    pthread_mutex_lock(&a->change);
    bool found;
    size_t pos = role_pos(a, name, &found);
    int64_t now = now_of(a);
    struct role *r = NULL;
    if (found) {
        rc = lyra_err_set(err, LYRA_EEXISTS, "role %s exists", name);
        goto out;
    }
    if (!(r = role_build(name, now, (char *const *)permissions, n_perms, (char *const *)models, n_models, NULL,
                         NULL))) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    struct batch b = {0};
    BATCH(&b, "INSERT INTO roles (name, created_ms) VALUES (?1, ?2)", T(r->name), I(now));
    for (size_t i = 0; i < r->n_perms; i++)
        BATCH(&b, "INSERT INTO role_grants (role, kind, value) VALUES (?1, 'permission', ?2)", T(r->name),
              T(r->perms[i]));
    for (size_t i = 0; i < r->n_models; i++)
        BATCH(&b, "INSERT INTO role_grants (role, kind, value) VALUES (?1, 'model', ?2)", T(r->name),
              T(r->models[i]));
    struct role **nv = arr_insert(a->roles, a->n_roles, sizeof *nv, pos, &r);
    if (!nv) {
        free(b.ops);
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = batch_run(a, &b, err)) < 0) {
        free(nv);
        goto out;
    }
    pthread_rwlock_wrlock(&a->lock);
    struct role **old = a->roles;
    a->roles = nv;
    a->n_roles++;
    pthread_rwlock_unlock(&a->lock);
    free(old);
    r = NULL;
out:
    role_free(r);
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_role_delete(struct lyra_auth *a, const char *name, struct lyra_err *err)
{
    if (!name)
        return lyra_err_set(err, LYRA_EINVAL, "no role named");
    if (builtin_role(name))
        return lyra_err_set(err, LYRA_EPERM, "%s is a built-in role and cannot change", name);
    pthread_mutex_lock(&a->change);
    int rc;
    bool found;
    size_t pos = role_pos(a, name, &found);
    if (!found) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no role %s", name);
        goto out;
    }
    for (size_t i = 0; i < a->n_principals; i++)
        if (strcmp(a->principals[i]->role, name) == 0) {
            rc = lyra_err_set(err, LYRA_ECONFLICT, "role %s is held by %s", name, a->principals[i]->name);
            goto out;
        }
    if (strcmp(a->anonymous_role, name) == 0) {
        rc = lyra_err_set(err, LYRA_ECONFLICT, "role %s is the role of anonymous requests", name);
        goto out;
    }
    /* No principal holds it, so no admin loses anything: the last-admin
     * rule holds by construction (a custom role is never admin). */
    struct role **nv = arr_remove(a->roles, a->n_roles, sizeof *nv, pos);
    if (!nv) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    struct batch b = {0};
    BATCH(&b, "DELETE FROM role_grants WHERE role = ?1", T(name));
    BATCH(&b, "DELETE FROM roles WHERE name = ?1", T(name));
    if ((rc = batch_run(a, &b, err)) < 0) {
        free(nv);
        goto out;
    }
    pthread_rwlock_wrlock(&a->lock);
    struct role *gone = a->roles[pos];
    struct role **old = a->roles;
    a->roles = nv;
    a->n_roles--;
    pthread_rwlock_unlock(&a->lock);
    free(old);
    role_free(gone);
out:
    pthread_mutex_unlock(&a->change);
    return rc;
}

/* Grant (add) or revoke (remove) one permission or model pattern of a
 * custom role.  A grant of what the role has is a no-op; a revoke of what
 * it lacks is LYRA_ENOTFOUND. */
static int role_change(struct lyra_auth *a, const char *role, const char *permission, const char *model, bool add,
                       struct lyra_err *err)
{
    int rc;
    if (!role)
        return lyra_err_set(err, LYRA_EINVAL, "no role named");
    if ((permission == NULL) == (model == NULL))
        return lyra_err_set(err, LYRA_EINVAL, "name one permission or one model pattern");
    if (builtin_role(role))
        return lyra_err_set(err, LYRA_EPERM, "%s is a built-in role and cannot change", role);
    if (add && permission && (rc = check_perm(permission, err)) < 0)
        return rc;
    if (add && model && (rc = check_pattern(model, err)) < 0)
        return rc;
    pthread_mutex_lock(&a->change);
    bool found;
    size_t pos = role_pos(a, role, &found);
    struct role *nr = NULL;
    if (!found) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no role %s", role);
        goto out;
    }
    const struct role *r = a->roles[pos];
    bool has = permission ? list_has(r->perms, r->n_perms, permission) : list_has(r->models, r->n_models, model);
    if (add && has) {
        rc = 0;
        goto out;
    }
    if (!add && !has) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "role %s has no %s %s", role, permission ? "permission" : "model",
                          permission ? permission : model);
        goto out;
    }
    if (add && model && r->n_models >= LYRA_AUTH_PATTERNS_MAX) {
        rc = lyra_err_set(err, LYRA_EINVAL, "a role has at most %d model patterns", LYRA_AUTH_PATTERNS_MAX);
        goto out;
    }
    nr = role_build(r->name, r->created_ms, r->perms, r->n_perms, r->models, r->n_models,
                    add ? NULL : permission, add ? NULL : model);
    if (nr && add && !(permission ? list_push(&nr->perms, &nr->n_perms, permission)
                                  : list_push(&nr->models, &nr->n_models, model))) {
        role_free(nr);
        nr = NULL;
    }
    if (!nr) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    struct batch b = {0};
    const char *kind = permission ? "permission" : "model";
    const char *value = permission ? permission : model;
    if (add)
        BATCH(&b, "INSERT INTO role_grants (role, kind, value) VALUES (?1, ?2, ?3)", T(role), T(kind), T(value));
    else
        BATCH(&b, "DELETE FROM role_grants WHERE role = ?1 AND kind = ?2 AND value = ?3", T(role), T(kind),
              T(value));
    if ((rc = batch_run(a, &b, err)) < 0)
        goto out;
    role_replace(a, pos, nr);
    nr = NULL;
out:
    role_free(nr);
    pthread_mutex_unlock(&a->change);
    return rc;
}

int lyra_auth_grant(struct lyra_auth *a, const char *role, const char *permission, const char *model,
                    struct lyra_err *err)
{
    return role_change(a, role, permission, model, true, err);
}

int lyra_auth_revoke(struct lyra_auth *a, const char *role, const char *permission, const char *model,
                     struct lyra_err *err)
{
    return role_change(a, role, permission, model, false, err);
}

/* --- views -------------------------------------------------------------------------------- */

json_t *lyra_auth_users_json(struct lyra_auth *a)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_rwlock_rdlock(&a->lock);
    int64_t now = now_of(a);
    for (size_t i = 0; i < a->n_principals; i++) {
        const struct principal *p = a->principals[i];
        json_int_t n = 0;
        for (size_t j = 0; j < a->n_keys; j++) {
            const struct key *k = a->by_id[j];
            if (!k->revoked_ms && !key_expired(k, now) && strcmp(k->principal, p->name) == 0)
                n++;
        }
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I}", "name", p->name, "kind", kind_name(p->kind), "role",
                              p->role, "created_ms", (json_int_t)p->created_ms, "keys", n);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            arr = NULL;
            break;
        }
    }
    pthread_rwlock_unlock(&a->lock);
    return arr;
}

static int cmp_key_seq(const void *x, const void *y)
{
    const struct key *a = *(struct key *const *)x, *b = *(struct key *const *)y;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

json_t *lyra_auth_keys_json(struct lyra_auth *a, const char *principal)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_rwlock_rdlock(&a->lock);
    int64_t now = now_of(a);
    struct key **v = a->n_keys ? malloc(a->n_keys * sizeof *v) : NULL;
    size_t n = 0;
    if (a->n_keys && !v) {
        json_decref(arr);
        arr = NULL;
    }
    for (size_t i = 0; v && i < a->n_keys; i++)
        if (!principal || strcmp(a->by_id[i]->principal, principal) == 0)
            v[n++] = a->by_id[i];
    if (n)
        qsort(v, n, sizeof *v, cmp_key_seq);
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = key_json(v[i], now);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_rwlock_unlock(&a->lock);
    free(v);
    return arr;
}

static json_t *role_json(const struct role *r)
{
    json_t *perms = string_array(r->perms, r->n_perms);
    json_t *models = string_array(r->models, r->n_models);
    if (!perms || !models) {
        json_decref(perms);
        json_decref(models);
        return NULL;
    }
    return json_pack("{s:s, s:b, s:o, s:o}", "name", r->name, "builtin", r->builtin, "permissions", perms,
                     "models", models);
}

json_t *lyra_auth_roles_json(struct lyra_auth *a)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; arr && i < N_BUILTIN + a->n_roles; i++) {
        json_t *o = role_json(i < N_BUILTIN ? &builtin_roles[i] : a->roles[i - N_BUILTIN]);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_rwlock_unlock(&a->lock);
    return arr;
}

json_t *lyra_auth_principal_json(struct lyra_auth *a, const struct lyra_principal *p)
{
    if (!p)
        return NULL;
    json_t *perms = json_array();
    json_t *models = json_array();
    pthread_rwlock_rdlock(&a->lock);
    const struct role *r = current_role(a, p);
    char role_name[LYRA_AUTH_NAME_MAX + 1];
    snprintf(role_name, sizeof role_name, "%s", r ? r->name : p->role);
    /* Expanded: the catalogue entries the role holds, in catalogue order
     * ("*" becomes every one).  Nothing when the principal has nothing. */
    for (size_t i = 0; r && perms && i < lyra_auth_n_permissions; i++)
        if (role_has(r, lyra_auth_permissions[i].name) &&
            json_array_append_new(perms, json_string(lyra_auth_permissions[i].name)) < 0) {
            json_decref(perms);
            perms = NULL;
        }
    for (size_t i = 0; r && models && i < r->n_models; i++)
        if (json_array_append_new(models, json_string(r->models[i])) < 0) {
            json_decref(models);
            models = NULL;
        }
    pthread_rwlock_unlock(&a->lock);
    if (!perms || !models) {
        json_decref(perms);
        json_decref(models);
        return NULL;
    }
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o}", "principal", p->name, "kind", kind_name(p->kind), "role",
                     role_name, "key_id", p->key_id[0] ? json_string(p->key_id) : json_null(), "permissions", perms,
                     "models", models);
}
