/* test_auth.c — the RBAC policy against a real SQLite store in a temporary
 * LYRA_HOME: key format and uniqueness; authentication (ok, malformed
 * headers, unknown, expired on a fake clock, revoked, principal removed);
 * the key text absent from the database files and every view; reopening
 * restores the policy; every built-in role against every catalogue
 * permission (the table of docs/security.md, written here as data); a
 * custom role with grants and model patterns; the last-admin rule;
 * bootstrap (generated and given); an auth.secret readable by others is
 * refused; a failed database write leaves memory unchanged. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/store.h"
#include "core/util.h"

static char home[64], dbpath[128];
static struct lyra_store *store;
static int64_t fake_now;

static int64_t clock_fn(void)
{
    return fake_now;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    strcpy(home, "/tmp/lyra-test-auth-XXXXXX");
    if (!mkdtemp(home))
        return -1;
    snprintf(dbpath, sizeof dbpath, "%s/lyra.db", home);
    struct lyra_err err = {0};
    store = lyra_store_open(dbpath, &err);
    fake_now = 1700000000000;
    return store ? 0 : -1;
}

static int teardown(void **state)
{
    lyra_store_close(store);
    store = NULL;
    nftw(home, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void reopen_store(void)
{
    struct lyra_err err = {0};
    lyra_store_close(store);
    store = lyra_store_open(dbpath, &err);
    assert_non_null(store);
}

static struct lyra_auth *open_with(const char *bootstrap_key, const char *anonymous_role)
{
    struct lyra_auth_options o = {
        .store = store, .home = home, .bootstrap_key = bootstrap_key, .anonymous_role = anonymous_role,
        .now_ms = clock_fn};
    struct lyra_auth *a = NULL;
    struct lyra_err err = {0};
    int rc = lyra_auth_open(&o, &a, &err);
    if (rc < 0)
        fail_msg("lyra_auth_open: %s", err.msg);
    return a;
}

static struct lyra_auth *open_auth(void)
{
    return open_with(NULL, NULL);
}

static enum lyra_auth_failure auth_key(struct lyra_auth *a, const char *key, struct lyra_principal *p)
{
    char h[512];
    snprintf(h, sizeof h, "Bearer %s", key);
    return lyra_auth_authenticate(a, h, p);
}

/* Adds principal `name` with `role` and a key for it (into key). */
static void add_user_key(struct lyra_auth *a, const char *name, const char *role, char key[LYRA_AUTH_KEY_BUF])
{
    struct lyra_err err = {0};
    if (lyra_auth_user_add(a, name, LYRA_PRINCIPAL_USER, role, &err) < 0)
        fail_msg("user_add %s: %s", name, err.msg);
    struct lyra_key_spec spec = {.principal = name, .label = "test"};
    if (lyra_auth_key_create(a, &spec, key, NULL, &err) < 0)
        fail_msg("key_create %s: %s", name, err.msg);
}

/* The id of the (only) key of principal. */
static void key_id_of(struct lyra_auth *a, const char *principal, char id[16])
{
    json_t *keys = lyra_auth_keys_json(a, principal);
    assert_non_null(keys);
    assert_true(json_array_size(keys) >= 1);
    snprintf(id, 16, "%s", json_string_value(json_object_get(json_array_get(keys, 0), "id")));
    json_decref(keys);
}

static bool is_base62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Job: runs SQL (fault injection, checks). */
static int job_exec(sqlite3 *db, void *arg, struct lyra_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, arg, NULL, NULL, &msg) != SQLITE_OK) {
        lyra_err_set(err, LYRA_EDB, "%s", msg ? msg : "?");
        sqlite3_free(msg);
        return LYRA_EDB;
    }
    return 0;
}

static void exec_sql(const char *sql)
{
    struct lyra_err err = {0};
    if (lyra_store_run(store, job_exec, (void *)sql, &err) < 0)
        fail_msg("%s: %s", sql, err.msg);
}

/* Everything the views show, as one JSON text (caller frees). */
static char *snapshot(struct lyra_auth *a)
{
    json_t *all = json_pack("{s:o, s:o, s:o}", "users", lyra_auth_users_json(a), "keys", lyra_auth_keys_json(a, NULL),
                            "roles", lyra_auth_roles_json(a));
    assert_non_null(all);
    char *s = json_dumps(all, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(all);
    assert_non_null(s);
    return s;
}

/* --- keys ------------------------------------------------------------------ */

static void test_key_format_and_uniqueness(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    assert_int_equal(lyra_auth_user_add(a, "svc", LYRA_PRINCIPAL_SERVICE, "user", &err), 0);
    enum { N = 200 };
    static char keys[N][LYRA_AUTH_KEY_BUF];
    char ids[N][16];
    for (int i = 0; i < N; i++) {
        struct lyra_key_spec spec = {.principal = "svc"};
        json_t *info = NULL;
        assert_int_equal(lyra_auth_key_create(a, &spec, keys[i], &info, &err), 0);
        assert_int_equal(strlen(keys[i]), 48);
        assert_memory_equal(keys[i], "lyra_", 5);
        for (int j = 5; j < 48; j++)
            assert_true(is_base62(keys[i][j]));
        const char *id = json_string_value(json_object_get(info, "id"));
        assert_non_null(id);
        assert_int_equal(strlen(id), 14);
        assert_memory_equal(id, "k_", 2);
        assert_int_equal(strspn(id + 2, "0123456789abcdef"), 12);
        snprintf(ids[i], sizeof ids[i], "%s", id);
        /* The display prefix is the key's first 12 characters. */
        assert_memory_equal(json_string_value(json_object_get(info, "prefix")), keys[i], 12);
        assert_int_equal(strlen(json_string_value(json_object_get(info, "prefix"))), 12);
        assert_string_equal(json_string_value(json_object_get(info, "state")), "active");
        assert_true(json_is_null(json_object_get(info, "expires_ms")));
        json_decref(info);
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(keys[i], keys[j]);
            assert_string_not_equal(ids[i], ids[j]);
        }
    }
    /* Every character of the alphabet shows up over 200 * 43 draws. */
    bool seen[128] = {0};
    for (int i = 0; i < N; i++)
        for (int j = 5; j < 48; j++)
            seen[(unsigned char)keys[i][j]] = true;
    for (int c = 0; c < 128; c++)
        assert_int_equal(seen[c], is_base62((char)c));
    json_t *list = lyra_auth_keys_json(a, "svc");
    assert_int_equal(json_array_size(list), N);
    json_decref(list);
    lyra_auth_free(a);
}

static void test_authenticate(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    char key[LYRA_AUTH_KEY_BUF], h[600];
    add_user_key(a, "alice", "user", key);
    struct lyra_principal p;

    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "alice");
    assert_string_equal(p.role, "user");
    assert_int_equal(p.kind, LYRA_PRINCIPAL_USER);
    assert_int_equal(strlen(p.key_id), 14);
    assert_true(lyra_auth_still_valid(a, &p));
    /* Scheme in any case, several spaces. */
    snprintf(h, sizeof h, "bEaReR    %s", key);
    assert_int_equal(lyra_auth_authenticate(a, h, &p), LYRA_AUTH_OK);

    /* No header, anonymous access off. */
    assert_int_equal(lyra_auth_authenticate(a, NULL, &p), LYRA_AUTH_MISSING);
    assert_string_equal(lyra_auth_failure_code(LYRA_AUTH_MISSING), "missing_key");

    /* Malformed: every one is refused before any lookup. */
    char long_key[300];
    memset(long_key, 'a', 257);
    long_key[257] = '\0';
    const char *bad[] = {"", "Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "Bearer    ", NULL, NULL, NULL, NULL,
                         NULL, NULL, NULL};
    char b1[100], b2[100], b3[100], b4[100], b5[400], b6[100], b7[100];
    snprintf(b1, sizeof b1, "Bearer%s", key);                /* no space */
    snprintf(b2, sizeof b2, "Bearer %.20s %s", key, key + 20); /* a space inside */
    snprintf(b3, sizeof b3, "Bearer %s ", key);              /* trailing space */
    snprintf(b4, sizeof b4, "Bearer %.10s\x01%s", key, key + 10);
    snprintf(b5, sizeof b5, "Bearer %s", long_key);          /* 257 characters */
    snprintf(b6, sizeof b6, "Bearer\t%s", key);
    snprintf(b7, sizeof b7, "Token %s", key);
    bad[5] = b1, bad[6] = b2, bad[7] = b3, bad[8] = b4, bad[9] = b5, bad[10] = b6, bad[11] = b7;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(lyra_auth_authenticate(a, bad[i], &p), LYRA_AUTH_MALFORMED);
        assert_string_equal(p.name, "");
    }
    assert_string_equal(lyra_auth_failure_code(LYRA_AUTH_MALFORMED), "malformed_key");
    /* 256 characters is well-formed (and unknown). */
    long_key[256] = '\0';
    assert_int_equal(auth_key(a, long_key, &p), LYRA_AUTH_UNKNOWN);

    /* Unknown: the right shape, another key (one character changed). */
    char other[LYRA_AUTH_KEY_BUF];
    memcpy(other, key, sizeof other);
    other[30] = other[30] == 'a' ? 'b' : 'a';
    assert_int_equal(auth_key(a, other, &p), LYRA_AUTH_UNKNOWN);
    assert_string_equal(lyra_auth_failure_code(LYRA_AUTH_UNKNOWN), "invalid_key");

    /* Expired, on the fake clock: valid up to expires_ms - 1. */
    char ekey[LYRA_AUTH_KEY_BUF];
    struct lyra_key_spec spec = {.principal = "alice", .expires_ms = fake_now + 1000};
    assert_int_equal(lyra_auth_key_create(a, &spec, ekey, NULL, &err), 0);
    struct lyra_principal pe;
    assert_int_equal(auth_key(a, ekey, &pe), LYRA_AUTH_OK);
    assert_true(lyra_auth_allowed(a, &pe, "chat", NULL));
    fake_now += 999;
    assert_int_equal(auth_key(a, ekey, &pe), LYRA_AUTH_OK);
    struct lyra_principal held = pe; /* as a stream holds it */
    fake_now += 1;
    assert_int_equal(auth_key(a, ekey, &pe), LYRA_AUTH_EXPIRED);
    assert_string_equal(lyra_auth_failure_code(LYRA_AUTH_EXPIRED), "expired_key");
    /* A principal that authenticated before the expiry has nothing now. */
    assert_false(lyra_auth_allowed(a, &held, "chat", NULL));
    assert_false(lyra_auth_allowed(a, &held, "self", NULL));
    assert_false(lyra_auth_still_valid(a, &held));
    json_t *keys = lyra_auth_keys_json(a, "alice");
    assert_int_equal(json_array_size(keys), 2);
    size_t n_expired = 0, n_active = 0;
    for (size_t i = 0; i < 2; i++) {
        json_t *o = json_array_get(keys, i);
        const char *st = json_string_value(json_object_get(o, "state"));
        bool is_held = strcmp(json_string_value(json_object_get(o, "id")), held.key_id) == 0;
        n_expired += is_held && strcmp(st, "expired") == 0;
        n_active += !is_held && strcmp(st, "active") == 0;
    }
    assert_int_equal(n_expired, 1);
    assert_int_equal(n_active, 1);
    json_decref(keys);
    struct lyra_principal before;
    assert_int_equal(auth_key(a, key, &before), LYRA_AUTH_OK);
    /* An expiry in the past is refused. */
    spec.expires_ms = fake_now;
    assert_int_equal(lyra_auth_key_create(a, &spec, ekey, NULL, &err), LYRA_EINVAL);

    /* Revoked: the next request fails, and a principal held by a stream
     * loses everything at once. */
    assert_true(lyra_auth_allowed(a, &before, "chat", NULL));
    assert_int_equal(lyra_auth_key_revoke(a, before.key_id, &err), 0);
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_REVOKED);
    assert_string_equal(lyra_auth_failure_code(LYRA_AUTH_REVOKED), "revoked_key");
    assert_false(lyra_auth_allowed(a, &before, "chat", NULL));
    assert_false(lyra_auth_allowed(a, &before, "self", NULL));
    assert_false(lyra_auth_still_valid(a, &before));
    assert_int_equal(lyra_auth_key_revoke(a, "k_000000000000", &err), LYRA_ENOTFOUND);

    /* Principal removed: its keys are revoked, also after re-adding the name. */
    char bkey[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "bob", "viewer", bkey);
    struct lyra_principal pb;
    assert_int_equal(auth_key(a, bkey, &pb), LYRA_AUTH_OK);
    assert_int_equal(lyra_auth_user_remove(a, "bob", &err), 0);
    assert_int_equal(auth_key(a, bkey, &p), LYRA_AUTH_REVOKED);
    assert_false(lyra_auth_allowed(a, &pb, "models.read", NULL));
    assert_false(lyra_auth_still_valid(a, &pb));
    assert_int_equal(lyra_auth_user_add(a, "bob", LYRA_PRINCIPAL_USER, "viewer", &err), 0);
    assert_int_equal(auth_key(a, bkey, &p), LYRA_AUTH_REVOKED);
    assert_false(lyra_auth_allowed(a, &pb, "models.read", NULL));
    assert_int_equal(lyra_auth_user_remove(a, "nobody", &err), LYRA_ENOTFOUND);
    lyra_auth_free(a);
}

static void test_anonymous(void **state)
{
    struct lyra_auth *a = open_with(NULL, "viewer");
    struct lyra_principal p;
    assert_int_equal(lyra_auth_authenticate(a, NULL, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "anonymous");
    assert_string_equal(p.role, "viewer");
    assert_int_equal(p.kind, LYRA_PRINCIPAL_ANONYMOUS);
    assert_string_equal(p.key_id, "");
    assert_true(lyra_auth_allowed(a, &p, "metrics.read", NULL));
    assert_false(lyra_auth_allowed(a, &p, "chat", NULL));
    assert_true(lyra_auth_still_valid(a, &p));
    /* A bad key never falls back to anonymous. */
    assert_int_equal(lyra_auth_authenticate(a, "Bearer lyra_nope-nope-nope", &p), LYRA_AUTH_UNKNOWN);
    assert_int_equal(lyra_auth_authenticate(a, "Basic x", &p), LYRA_AUTH_MALFORMED);
    json_t *pj = lyra_auth_principal_json(a, &(struct lyra_principal){.name = "anonymous", .role = "viewer",
                                                                       .kind = LYRA_PRINCIPAL_ANONYMOUS});
    assert_string_equal(json_string_value(json_object_get(pj, "kind")), "anonymous");
    assert_true(json_is_null(json_object_get(pj, "key_id")));
    json_decref(pj);
    lyra_auth_free(a);

    /* "anonymous" is no principal's or role's name; an unknown anonymous
     * role is refused at open. */
    a = open_auth();
    struct lyra_err err = {0};
    assert_int_equal(lyra_auth_user_add(a, "anonymous", LYRA_PRINCIPAL_USER, "user", &err), LYRA_EINVAL);
    assert_int_equal(lyra_auth_role_create(a, "anonymous", NULL, 0, NULL, 0, &err), LYRA_EINVAL);
    lyra_auth_free(a);
    struct lyra_auth_options o = {.store = store, .home = home, .anonymous_role = "nosuch"};
    a = (struct lyra_auth *)1;
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EINVAL);
    assert_null(a);
}

/* Reads a whole file (NULL when absent) into *len bytes. */
static char *slurp(const char *path, size_t *len)
{
    char *d = lyra_read_file(path, len);
    if (!d)
        *len = 0;
    return d;
}

static bool file_has(const char *path, const char *needle)
{
    size_t len;
    char *d = slurp(path, &len);
    bool has = d && memmem(d, len, needle, strlen(needle)) != NULL;
    free(d);
    return has;
}

static void test_key_never_stored_or_shown(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    char key[LYRA_AUTH_KEY_BUF], boot[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_bootstrap_key(a, boot, NULL), 0);
    add_user_key(a, "alice", "operator", key);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* queues last_used_ms */
    assert_int_equal(auth_key(a, boot, &p), LYRA_AUTH_OK);
    json_t *info = NULL;
    char key2[LYRA_AUTH_KEY_BUF];
    struct lyra_key_spec spec = {.principal = "alice", .label = "ci"};
    assert_int_equal(lyra_auth_key_create(a, &spec, key2, &info, &err), 0);

    /* The random part alone (after the public prefix) is searched too. */
    const char *secrets[] = {key, key + 12, key2, key2 + 12, boot + 12};
    char *views[6];
    views[0] = snapshot(a);
    views[1] = json_dumps(info, 0);
    json_t *pj = lyra_auth_principal_json(a, &p);
    views[2] = json_dumps(pj, 0);
    json_decref(pj);
    json_t *ku = lyra_auth_keys_json(a, "alice");
    views[3] = json_dumps(ku, 0);
    json_decref(ku);
    json_t *uj = lyra_auth_users_json(a);
    views[4] = json_dumps(uj, 0);
    json_decref(uj);
    json_t *rj = lyra_auth_roles_json(a);
    views[5] = json_dumps(rj, 0);
    json_decref(rj);
    json_decref(info);
    for (size_t v = 0; v < 6; v++) {
        assert_non_null(views[v]);
        for (size_t s = 0; s < sizeof secrets / sizeof *secrets; s++)
            assert_null(strstr(views[v], secrets[s]));
        free(views[v]);
    }
    lyra_auth_free(a);
    /* The WAL as it stands, then the database after a checkpoint at close. */
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", dbpath);
    size_t wal_len;
    free(slurp(wal, &wal_len));
    assert_true(wal_len > 0); /* the search below is over real bytes */
    for (size_t s = 0; s < sizeof secrets / sizeof *secrets; s++) {
        assert_false(file_has(wal, secrets[s]));
        assert_false(file_has(dbpath, secrets[s]));
    }
    /* The display prefix is there: the search would find text if it were. */
    char prefix[13];
    snprintf(prefix, sizeof prefix, "%.12s", key);
    assert_true(file_has(wal, prefix) || file_has(dbpath, prefix));
    lyra_store_close(store);
    store = NULL;
    for (size_t s = 0; s < sizeof secrets / sizeof *secrets; s++) {
        assert_false(file_has(wal, secrets[s]));
        assert_false(file_has(dbpath, secrets[s]));
    }
    reopen_store();
}

static void test_reopen_restores(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    char k1[LYRA_AUTH_KEY_BUF], k2[LYRA_AUTH_KEY_BUF], k3[LYRA_AUTH_KEY_BUF];
    const char *perms[] = {"chat", "models.read"};
    const char *models[] = {"llama-*"};
    assert_int_equal(lyra_auth_role_create(a, "chatter", perms, 2, models, 1, &err), 0);
    assert_int_equal(lyra_auth_grant(a, "chatter", NULL, "qwen-7b", &err), 0);
    assert_int_equal(lyra_auth_grant(a, "chatter", "jobs.read", NULL, &err), 0);
    assert_int_equal(lyra_auth_revoke(a, "chatter", "models.read", NULL, &err), 0);
    add_user_key(a, "alice", "chatter", k1);
    add_user_key(a, "svc", "operator", k2);
    struct lyra_key_spec spec = {.principal = "svc", .label = "nightly é", .expires_ms = fake_now + 3600000};
    assert_int_equal(lyra_auth_key_create(a, &spec, k3, NULL, &err), 0);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, k1, &p), LYRA_AUTH_OK);
    char revoked[16];
    key_id_of(a, "svc", revoked);
    assert_int_equal(lyra_auth_key_revoke(a, revoked, &err), 0);
    char *before = snapshot(a);
    lyra_auth_free(a);
    reopen_store(); /* and the queued last_used_ms write has run */

    a = open_auth();
    char *after = snapshot(a);
    assert_string_equal(before, after);
    /* last_used_ms came back from the database. */
    assert_non_null(strstr(after, "\"last_used_ms\":1700000000000"));
    assert_int_equal(auth_key(a, k1, &p), LYRA_AUTH_OK);
    assert_true(lyra_auth_allowed(a, &p, "jobs.read", NULL));
    assert_true(lyra_auth_allowed(a, &p, "chat", "qwen-7b"));
    assert_false(lyra_auth_allowed(a, &p, "models.read", NULL));
    assert_int_equal(auth_key(a, k2, &p), LYRA_AUTH_REVOKED);
    assert_int_equal(auth_key(a, k3, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "svc");
    /* No second bootstrap: the admin of the first open still has its key. */
    char boot[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_bootstrap_key(a, boot, NULL), LYRA_ENOTFOUND);
    free(before);
    free(after);
    lyra_auth_free(a);
}

/* --- roles ----------------------------------------------------------------- */

/* The permission table of docs/security.md (and /work/briefs/rbac_common.md):
 * admin, operator, user, viewer. */
static const struct {
    const char *perm;
    const char *roles; /* 'x' or '.' for admin, operator, user, viewer */
} table[] = {
    {"models.read", "xxxx"},        {"models.load", "xx.."},         {"models.pin", "xx.."},
    {"models.pull", "xx.."},        {"models.delete", "xx.."},       {"chat", "xxx."},
    {"conversations.read", "xxx."}, {"conversations.write", "xxx."}, {"conversations.all", "x..."},
    {"jobs.read", "xx.x"},          {"jobs.submit", "xx.."},         {"jobs.cancel", "xx.."},
    {"events.read", "xxxx"},        {"events.publish", "x..."},      {"status.read", "xxxx"},
    {"metrics.read", "xx.x"},       {"audit.read", "xx.."},          {"permissions.manage", "x..."},
};
static const char *const builtin[] = {"admin", "operator", "user", "viewer"};

static void test_builtin_roles_table(void **state)
{
    size_t n = sizeof table / sizeof *table;
    assert_int_equal(lyra_auth_n_permissions, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(lyra_auth_permissions[i].name, table[i].perm);
        assert_true(strlen(lyra_auth_permissions[i].description) > 0);
    }
    struct lyra_auth *a = open_auth();
    for (size_t r = 0; r < 4; r++) {
        char name[32], key[LYRA_AUTH_KEY_BUF];
        snprintf(name, sizeof name, "p-%s", builtin[r]);
        add_user_key(a, name, builtin[r], key);
        struct lyra_principal p;
        assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK);
        assert_string_equal(p.role, builtin[r]);
        size_t held = 0;
        for (size_t i = 0; i < n; i++) {
            bool want = table[i].roles[r] == 'x';
            held += want;
            if (lyra_auth_allowed(a, &p, table[i].perm, NULL) != want)
                fail_msg("%s: %s should be %s", builtin[r], table[i].perm, want ? "allowed" : "denied");
            /* Built-in roles have the model pattern "*". */
            assert_int_equal(lyra_auth_allowed(a, &p, table[i].perm, "any-model:Q4"), want);
        }
        assert_true(lyra_auth_allowed(a, &p, "self", NULL));
        /* admin's "*" holds names outside the catalogue too; no one else does. */
        assert_int_equal(lyra_auth_allowed(a, &p, "future.thing", NULL), r == 0);
        assert_false(lyra_auth_allowed(a, &p, "", NULL));
        /* The principal view lists the same, expanded. */
        json_t *pj = lyra_auth_principal_json(a, &p);
        json_t *perms = json_object_get(pj, "permissions");
        assert_int_equal(json_array_size(perms), held);
        for (size_t i = 0, j = 0; i < n; i++)
            if (table[i].roles[r] == 'x')
                assert_string_equal(json_string_value(json_array_get(perms, j++)), table[i].perm);
        assert_string_equal(json_string_value(json_array_get(json_object_get(pj, "models"), 0)), "*");
        assert_string_equal(json_string_value(json_object_get(pj, "principal")), name);
        assert_string_equal(json_string_value(json_object_get(pj, "key_id")), p.key_id);
        json_decref(pj);
    }
    /* The roles view: the built-ins first, immutable. */
    json_t *roles = lyra_auth_roles_json(a);
    assert_int_equal(json_array_size(roles), 4);
    for (size_t r = 0; r < 4; r++) {
        json_t *o = json_array_get(roles, r);
        assert_string_equal(json_string_value(json_object_get(o, "name")), builtin[r]);
        assert_true(json_is_true(json_object_get(o, "builtin")));
    }
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_array_get(roles, 0), "permissions"), 0)),
                        "*");
    json_decref(roles);
    struct lyra_err err = {0};
    assert_int_equal(lyra_auth_grant(a, "user", "models.load", NULL, &err), LYRA_EPERM);
    assert_int_equal(lyra_auth_revoke(a, "viewer", "models.read", NULL, &err), LYRA_EPERM);
    assert_int_equal(lyra_auth_role_delete(a, "operator", &err), LYRA_EPERM);
    assert_int_equal(lyra_auth_role_create(a, "admin", NULL, 0, NULL, 0, &err), LYRA_EEXISTS);
    lyra_auth_free(a);
}

static void test_custom_role(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    const char *perms[] = {"chat"};
    const char *models[] = {"llama-*"};
    assert_int_equal(lyra_auth_role_create(a, "llama-chat", perms, 1, models, 1, &err), 0);
    assert_int_equal(lyra_auth_role_create(a, "llama-chat", perms, 1, models, 1, &err), LYRA_EEXISTS);
    char key[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "carol", "llama-chat", key);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK);
    assert_true(lyra_auth_allowed(a, &p, "chat", "llama-3"));
    assert_false(lyra_auth_allowed(a, &p, "chat", "qwen"));
    assert_true(lyra_auth_allowed(a, &p, "chat", NULL));
    assert_false(lyra_auth_allowed(a, &p, "models.read", NULL));
    assert_true(lyra_auth_allowed(a, &p, "self", NULL));
    /* Grants take effect for a principal already authenticated. */
    assert_int_equal(lyra_auth_grant(a, "llama-chat", "models.read", NULL, &err), 0);
    assert_int_equal(lyra_auth_grant(a, "llama-chat", "models.read", NULL, &err), 0); /* no-op */
    assert_true(lyra_auth_allowed(a, &p, "models.read", "llama-3"));
    assert_int_equal(lyra_auth_grant(a, "llama-chat", NULL, "qwen", &err), 0);
    assert_true(lyra_auth_allowed(a, &p, "chat", "qwen"));
    assert_false(lyra_auth_allowed(a, &p, "chat", "qwen2"));
    assert_int_equal(lyra_auth_revoke(a, "llama-chat", NULL, "qwen", &err), 0);
    assert_false(lyra_auth_allowed(a, &p, "chat", "qwen"));
    assert_int_equal(lyra_auth_revoke(a, "llama-chat", NULL, "qwen", &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_auth_revoke(a, "llama-chat", "chat", NULL, &err), 0);
    assert_false(lyra_auth_allowed(a, &p, "chat", "llama-3"));
    json_t *pj = lyra_auth_principal_json(a, &p);
    assert_int_equal(json_array_size(json_object_get(pj, "permissions")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(pj, "models"), 0)), "llama-*");
    json_decref(pj);

    /* Validation. */
    const char *unknown[] = {"chat", "models.fly"};
    assert_int_equal(lyra_auth_role_create(a, "r1", unknown, 2, NULL, 0, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "models.fly"));
    const char *star[] = {"*"};
    assert_int_equal(lyra_auth_role_create(a, "r1", star, 1, NULL, 0, &err), LYRA_EINVAL);
    const char *bad_models[] = {"llama 3"};
    assert_int_equal(lyra_auth_role_create(a, "r1", NULL, 0, bad_models, 1, &err), LYRA_EINVAL);
    char longpat[130];
    memset(longpat, 'a', 129);
    longpat[129] = '\0';
    const char *long_models[] = {longpat};
    assert_int_equal(lyra_auth_role_create(a, "r1", NULL, 0, long_models, 1, &err), LYRA_EINVAL);
    longpat[128] = '\0';
    assert_int_equal(lyra_auth_role_create(a, "r1", NULL, 0, long_models, 1, &err), 0);
    assert_int_equal(lyra_auth_role_create(a, "bad name", NULL, 0, NULL, 0, &err), LYRA_EINVAL);
    assert_int_equal(lyra_auth_grant(a, "llama-chat", "nope", NULL, &err), LYRA_EINVAL);
    assert_int_equal(lyra_auth_grant(a, "llama-chat", NULL, "a b", &err), LYRA_EINVAL);
    assert_int_equal(lyra_auth_grant(a, "llama-chat", "chat", "x", &err), LYRA_EINVAL);
    assert_int_equal(lyra_auth_grant(a, "nosuch", "chat", NULL, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_auth_user_add(a, "dave", LYRA_PRINCIPAL_USER, "nosuch", &err), LYRA_ENOTFOUND);

    /* A role in use cannot go; unused, it can. */
    assert_int_equal(lyra_auth_role_delete(a, "llama-chat", &err), LYRA_ECONFLICT);
    assert_int_equal(lyra_auth_user_set_role(a, "carol", "user", &err), 0);
    assert_true(lyra_auth_allowed(a, &p, "chat", "qwen")); /* the current role counts */
    assert_int_equal(lyra_auth_role_delete(a, "llama-chat", &err), 0);
    assert_int_equal(lyra_auth_role_delete(a, "llama-chat", &err), LYRA_ENOTFOUND);
    json_t *roles = lyra_auth_roles_json(a);
    assert_int_equal(json_array_size(roles), 5); /* 4 built-in + r1 */
    json_decref(roles);
    lyra_auth_free(a);
}

static void test_pattern_and_names(void **state)
{
    assert_true(lyra_auth_pattern_match("*", "anything"));
    assert_true(lyra_auth_pattern_match("*", ""));
    assert_true(lyra_auth_pattern_match("llama-*", "llama-3"));
    assert_true(lyra_auth_pattern_match("llama-*", "llama-"));
    assert_false(lyra_auth_pattern_match("llama-*", "llama"));
    assert_false(lyra_auth_pattern_match("llama-*", "qwen"));
    assert_true(lyra_auth_pattern_match("*-7b", "qwen-7b"));
    assert_true(lyra_auth_pattern_match("a*b*c", "axxbyybzc"));
    assert_false(lyra_auth_pattern_match("a*b*c", "axxbyyb"));
    assert_true(lyra_auth_pattern_match("tiny", "tiny"));
    assert_false(lyra_auth_pattern_match("tiny", "tiny2"));
    assert_true(lyra_auth_name_valid("a"));
    assert_true(lyra_auth_name_valid("ci-bot_2.x"));
    assert_false(lyra_auth_name_valid(""));
    assert_false(lyra_auth_name_valid("anonymous"));
    assert_false(lyra_auth_name_valid("a b"));
    assert_false(lyra_auth_name_valid("a/b"));
    assert_false(lyra_auth_name_valid("é"));
    char n[70];
    memset(n, 'x', 65);
    n[65] = '\0';
    assert_false(lyra_auth_name_valid(n));
    n[64] = '\0';
    assert_true(lyra_auth_name_valid(n));
}

/* --- the last admin ------------------------------------------------------------ */

static void test_last_admin(void **state)
{
    struct lyra_auth *a = open_auth(); /* bootstraps principal admin */
    struct lyra_err err = {0};
    char admin_id[16];
    key_id_of(a, "admin", admin_id);
    assert_int_equal(lyra_auth_key_revoke(a, admin_id, &err), LYRA_ECONFLICT);
    assert_non_null(strstr(err.msg, "would leave no admin with a usable key"));
    assert_int_equal(lyra_auth_user_remove(a, "admin", &err), LYRA_ECONFLICT);
    assert_non_null(strstr(err.msg, "would leave no admin with a usable key"));
    assert_int_equal(lyra_auth_user_set_role(a, "admin", "operator", &err), LYRA_ECONFLICT);
    assert_non_null(strstr(err.msg, "would leave no admin with a usable key"));

    /* A second admin with only an expired key does not count. */
    char k[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_user_add(a, "eve", LYRA_PRINCIPAL_USER, "admin", &err), 0);
    struct lyra_key_spec spec = {.principal = "eve", .expires_ms = fake_now + 10};
    assert_int_equal(lyra_auth_key_create(a, &spec, k, NULL, &err), 0);
    fake_now += 10;
    assert_int_equal(lyra_auth_key_revoke(a, admin_id, &err), LYRA_ECONFLICT);

    /* With another admin that has a usable key, each change is allowed. */
    add_user_key(a, "root2", "admin", k);
    assert_int_equal(lyra_auth_user_set_role(a, "admin", "operator", &err), 0);
    assert_int_equal(lyra_auth_user_set_role(a, "root2", "user", &err), LYRA_ECONFLICT);
    assert_int_equal(lyra_auth_user_set_role(a, "admin", "admin", &err), 0);
    assert_int_equal(lyra_auth_key_revoke(a, admin_id, &err), 0);
    assert_int_equal(lyra_auth_user_remove(a, "admin", &err), 0);
    char root2_id[16];
    key_id_of(a, "root2", root2_id);
    assert_int_equal(lyra_auth_user_remove(a, "root2", &err), LYRA_ECONFLICT);
    assert_int_equal(lyra_auth_key_revoke(a, root2_id, &err), LYRA_ECONFLICT);
    /* A role delete can never take the last admin away (custom roles are
     * never admin, and a held role is refused anyway). */
    assert_int_equal(lyra_auth_role_create(a, "spare", NULL, 0, NULL, 0, &err), 0);
    assert_int_equal(lyra_auth_role_delete(a, "spare", &err), 0);
    lyra_auth_free(a);
}

/* --- bootstrap ------------------------------------------------------------------- */

static void test_bootstrap_generated(void **state)
{
    struct lyra_auth *a = open_auth();
    char key[LYRA_AUTH_KEY_BUF];
    const char *path = NULL;
    assert_int_equal(lyra_auth_bootstrap_key(a, key, &path), 0);
    char want[160];
    snprintf(want, sizeof want, "%s/admin.key", home);
    assert_string_equal(path, want); /* borrowed: valid until lyra_auth_free */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    size_t len;
    char *text = lyra_read_file(path, &len);
    assert_non_null(text);
    assert_int_equal(len, 49);
    assert_memory_equal(text, key, 48);
    assert_int_equal(text[48], '\n');
    free(text);
    assert_int_equal(strlen(key), 48);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "admin");
    assert_string_equal(p.role, "admin");
    assert_true(lyra_auth_allowed(a, &p, "permissions.manage", NULL));
    /* Handed back once. */
    char again[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_bootstrap_key(a, again, NULL), LYRA_ENOTFOUND);
    /* auth.secret was created 0600, 32 bytes. */
    char sp[160];
    snprintf(sp, sizeof sp, "%s/auth.secret", home);
    assert_int_equal(stat(sp, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 32);
    lyra_auth_free(a);

    /* Reopened: nothing new, the file is untouched. */
    assert_int_equal(stat(want, &st), 0);
    struct timespec mtime = st.st_mtim;
    a = open_auth();
    assert_int_equal(lyra_auth_bootstrap_key(a, again, NULL), LYRA_ENOTFOUND);
    assert_int_equal(stat(want, &st), 0);
    assert_true(st.st_mtim.tv_sec == mtime.tv_sec && st.st_mtim.tv_nsec == mtime.tv_nsec);
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK);

    /* With the only admin key gone (expired), the next open makes a new
     * one and replaces admin.key. */
    struct lyra_err err = {0};
    char k2[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_user_add(a, "tmp", LYRA_PRINCIPAL_USER, "admin", &err), 0);
    struct lyra_key_spec spec = {.principal = "tmp", .expires_ms = fake_now + 5};
    assert_int_equal(lyra_auth_key_create(a, &spec, k2, NULL, &err), 0);
    char aid[16];
    key_id_of(a, "admin", aid);
    assert_int_equal(lyra_auth_key_revoke(a, aid, &err), 0); /* tmp's key is still usable */
    lyra_auth_free(a);
    fake_now += 5;
    a = open_auth();
    char key3[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_bootstrap_key(a, key3, NULL), 0);
    assert_string_not_equal(key3, key);
    text = lyra_read_file(want, &len);
    assert_memory_equal(text, key3, 48);
    free(text);
    assert_int_equal(auth_key(a, key3, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "admin");
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_REVOKED);
    lyra_auth_free(a);
}

static void test_bootstrap_given(void **state)
{
    const char *given = "correct-horse-battery-staple";
    struct lyra_auth *a = open_with(given, NULL);
    char buf[LYRA_AUTH_KEY_BUF];
    assert_int_equal(lyra_auth_bootstrap_key(a, buf, NULL), LYRA_ENOTFOUND);
    char path[160];
    snprintf(path, sizeof path, "%s/admin.key", home);
    assert_int_equal(access(path, F_OK), -1);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, given, &p), LYRA_AUTH_OK);
    assert_string_equal(p.name, "admin");
    assert_true(lyra_auth_allowed(a, &p, "permissions.manage", NULL));
    /* An operator's key keeps a short prefix: at most 4 characters shown. */
    json_t *keys = lyra_auth_keys_json(a, "admin");
    assert_int_equal(json_array_size(keys), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "prefix")), "corr");
    json_decref(keys);
    lyra_auth_free(a);

    /* Admins exist: another LYRA_ADMIN_KEY is not added (a warning says so). */
    a = open_with("another-operator-key-123", NULL);
    assert_int_equal(auth_key(a, "another-operator-key-123", &p), LYRA_AUTH_UNKNOWN);
    assert_int_equal(auth_key(a, given, &p), LYRA_AUTH_OK);
    lyra_auth_free(a);

    /* A bootstrap key too short or with a space is refused; checked only
     * when a bootstrap happens, so on a fresh home. */
    reopen_store();
    exec_sql("DELETE FROM api_keys; DELETE FROM principals;");
    struct lyra_auth_options o = {.store = store, .home = home, .bootstrap_key = "short"};
    struct lyra_err err = {0};
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EINVAL);
    o.bootstrap_key = "has a space in it, long enough";
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EINVAL);
    assert_null(strstr(err.msg, "has a space"));
}

/* --- auth.secret -------------------------------------------------------------- */

static void test_secret_refused(void **state)
{
    struct lyra_auth *a = open_auth();
    lyra_auth_free(a);
    char sp[160];
    snprintf(sp, sizeof sp, "%s/auth.secret", home);
    assert_int_equal(chmod(sp, 0644), 0);
    struct lyra_auth_options o = {.store = store, .home = home};
    struct lyra_err err = {0};
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_non_null(strstr(err.msg, "0644"));
    assert_int_equal(chmod(sp, 0640), 0);
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EIO);
    /* Wrong length. */
    assert_int_equal(chmod(sp, 0600), 0);
    assert_int_equal(truncate(sp, 31), 0);
    assert_int_equal(lyra_auth_open(&o, &a, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "31 bytes"));
    /* A different secret (a lost one replaced) invalidates every key. */
    assert_int_equal(unlink(sp), 0);
    a = open_auth();
    char key[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "alice", "user", key);
    lyra_auth_free(a);
    assert_int_equal(unlink(sp), 0);
    a = open_auth();
    struct lyra_principal p;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_UNKNOWN);
    lyra_auth_free(a);
}

/* --- a failed write ------------------------------------------------------------- */

static void test_db_failure_leaves_memory(void **state)
{
    struct lyra_auth *a = open_auth();
    struct lyra_err err = {0};
    char key[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "alice", "user", key);
    add_user_key(a, "root2", "admin", key);
    const char *perms[] = {"chat"};
    assert_int_equal(lyra_auth_role_create(a, "chatter", perms, 1, NULL, 0, &err), 0);
    char alice_id[16];
    key_id_of(a, "alice", alice_id);
    char *before = snapshot(a);

    /* Real SQLite failures, raised by triggers inside the transaction. */
    exec_sql("CREATE TRIGGER f1 BEFORE INSERT ON principals BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f2 BEFORE INSERT ON api_keys BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f3 BEFORE UPDATE ON api_keys BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f4 BEFORE UPDATE ON principals BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f5 BEFORE INSERT ON roles BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f6 BEFORE DELETE ON role_grants BEGIN SELECT RAISE(ABORT, 'injected'); END;"
             "CREATE TRIGGER f7 BEFORE INSERT ON role_grants BEGIN SELECT RAISE(ABORT, 'injected'); END;");
    assert_int_equal(lyra_auth_user_add(a, "bob", LYRA_PRINCIPAL_USER, "user", &err), LYRA_EDB);
    assert_non_null(strstr(err.msg, "injected"));
    struct lyra_key_spec spec = {.principal = "alice"};
    char k2[LYRA_AUTH_KEY_BUF] = "x";
    json_t *info = (json_t *)1;
    assert_int_equal(lyra_auth_key_create(a, &spec, k2, &info, &err), LYRA_EDB);
    assert_string_equal(k2, "");
    assert_null(info);
    assert_int_equal(lyra_auth_key_revoke(a, alice_id, &err), LYRA_EDB);
    /* The remove revokes the keys first, then fails: both roll back. */
    exec_sql("CREATE TRIGGER f8 BEFORE DELETE ON principals BEGIN SELECT RAISE(ABORT, 'injected'); END;");
    exec_sql("DROP TRIGGER f3;");
    assert_int_equal(lyra_auth_user_remove(a, "alice", &err), LYRA_EDB);
    exec_sql("CREATE TRIGGER f3 BEFORE UPDATE ON api_keys BEGIN SELECT RAISE(ABORT, 'injected'); END;");
    assert_int_equal(lyra_auth_user_set_role(a, "alice", "viewer", &err), LYRA_EDB);
    assert_int_equal(lyra_auth_role_create(a, "r2", perms, 1, NULL, 0, &err), LYRA_EDB);
    assert_int_equal(lyra_auth_grant(a, "chatter", "jobs.read", NULL, &err), LYRA_EDB);
    assert_int_equal(lyra_auth_revoke(a, "chatter", "chat", NULL, &err), LYRA_EDB);
    assert_int_equal(lyra_auth_role_delete(a, "chatter", &err), LYRA_EDB);

    char *during = snapshot(a);
    assert_string_equal(before, during);
    struct lyra_principal p;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* root2's key, untouched */
    assert_string_equal(p.role, "admin");

    /* Memory and database agree: the next open sees the same policy. */
    exec_sql("DROP TRIGGER f1; DROP TRIGGER f2; DROP TRIGGER f3; DROP TRIGGER f4; DROP TRIGGER f5;"
             "DROP TRIGGER f6; DROP TRIGGER f7; DROP TRIGGER f8;");
    lyra_auth_free(a);
    a = open_auth();
    char *after = snapshot(a);
    /* root2's last_used_ms was recorded meanwhile: compare without it. */
    json_t *x = json_loads(before, 0, NULL), *y = json_loads(after, 0, NULL);
    json_t *kx = json_object_get(x, "keys"), *ky = json_object_get(y, "keys");
    size_t i;
    json_t *v;
    json_array_foreach(kx, i, v) json_object_del(v, "last_used_ms");
    json_array_foreach(ky, i, v) json_object_del(v, "last_used_ms");
    assert_true(json_equal(x, y));
    json_decref(x);
    json_decref(y);
    /* And changes work again. */
    assert_int_equal(lyra_auth_user_add(a, "bob", LYRA_PRINCIPAL_USER, "user", &err), 0);
    free(before);
    free(during);
    free(after);
    lyra_auth_free(a);
}

/* last_used_ms of the first key listed for principal, or -1 when null. */
static int64_t last_used(struct lyra_auth *a, const char *principal)
{
    json_t *keys = lyra_auth_keys_json(a, principal);
    json_t *v = json_object_get(json_array_get(keys, 0), "last_used_ms");
    int64_t ms = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(keys);
    return ms;
}

/* last_used_ms: in memory at once, in SQLite at most once a minute. */
static void test_last_used(void **state)
{
    struct lyra_auth *a = open_auth();
    char key[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "alice", "user", key);
    struct lyra_principal p;
    int64_t t0 = fake_now;
    assert_int_equal(last_used(a, "alice"), -1);
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* persisted */
    fake_now = t0 + 30000;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* memory only */
    assert_int_equal(last_used(a, "alice"), t0 + 30000);
    lyra_auth_free(a);
    reopen_store();
    a = open_auth();
    assert_int_equal(last_used(a, "alice"), t0);
    fake_now = t0 + 60000;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* a minute after t0: persisted */
    fake_now = t0 + 70000;
    assert_int_equal(auth_key(a, key, &p), LYRA_AUTH_OK); /* memory only */
    lyra_auth_free(a);
    reopen_store();
    a = open_auth();
    assert_int_equal(last_used(a, "alice"), t0 + 60000);
    lyra_auth_free(a);
}

/* --- concurrency ---------------------------------------------------------------- */

struct reader {
    struct lyra_auth *a;
    const char *key;
    int failures;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    for (int i = 0; i < 2000; i++) {
        struct lyra_principal p;
        if (auth_key(r->a, r->key, &p) != LYRA_AUTH_OK || !lyra_auth_allowed(r->a, &p, "chat", "llama-1") ||
            lyra_auth_allowed(r->a, &p, "models.load", NULL))
            r->failures++;
    }
    return NULL;
}

/* Readers authenticate and check while another thread changes the policy
 * (new principals, keys, roles): they never see a torn state. */
static void test_concurrent_changes(void **state)
{
    struct lyra_auth *a = open_auth();
    char key[LYRA_AUTH_KEY_BUF];
    add_user_key(a, "reader", "user", key);
    struct reader r[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct reader){a, key, 0};
        assert_int_equal(pthread_create(&t[i], NULL, reader_main, &r[i]), 0);
    }
    struct lyra_err err = {0};
    for (int i = 0; i < 40; i++) {
        char name[32], k[LYRA_AUTH_KEY_BUF], role[32];
        snprintf(name, sizeof name, "u%d", i);
        snprintf(role, sizeof role, "r%d", i);
        const char *perms[] = {"chat"};
        assert_int_equal(lyra_auth_role_create(a, role, perms, 1, NULL, 0, &err), 0);
        add_user_key(a, name, role, k);
        assert_int_equal(lyra_auth_grant(a, role, NULL, "llama-*", &err), 0);
        if (i % 2)
            assert_int_equal(lyra_auth_user_remove(a, name, &err), 0);
        json_t *views = lyra_auth_keys_json(a, NULL);
        assert_non_null(views);
        json_decref(views);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].failures, 0);
    }
    lyra_auth_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_format_and_uniqueness, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authenticate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anonymous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_never_stored_or_shown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_restores, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_roles_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_custom_role, setup, teardown),
        cmocka_unit_test(test_pattern_and_names),
        cmocka_unit_test_setup_teardown(test_last_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bootstrap_generated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bootstrap_given, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_failure_leaves_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_changes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
