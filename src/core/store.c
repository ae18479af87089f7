/* store.c — SQLite database, schema migrations keyed by user_version, the
 * sessions table and a meta key/value table.
 *
 * Migrations are an append-only list of SQL scripts: migration N moves the
 * schema from user_version N-1 to N.  Never edit a shipped one; add one. */
#include "core/store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

struct lyra_store {
    sqlite3 *db;
};

static const char *const migrations[] = {
    /* 1: sessions and daemon bookkeeping */
    "CREATE TABLE sessions ("
    "  id TEXT PRIMARY KEY,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER,"
    "  clean INTEGER,"              /* NULL while running, 1 clean, 0 unclean */
    "  pid INTEGER NOT NULL,"
    "  version TEXT NOT NULL);"
    "CREATE INDEX sessions_open ON sessions(ended_ms) WHERE ended_ms IS NULL;"
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    /* 2: chat conversations (core/conversations.c) */
    "CREATE TABLE conversations ("
    "  id TEXT PRIMARY KEY,"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  title TEXT,"
    "  model TEXT);"
    "CREATE INDEX conversations_updated ON conversations(updated_ms);"
    "CREATE TABLE messages ("
    "  id INTEGER PRIMARY KEY,"
    "  conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL,"
    "  role TEXT NOT NULL,"
    "  content TEXT NOT NULL,"
    "  model TEXT,"
    "  prompt_tokens INTEGER,"
    "  completion_tokens INTEGER,"
    "  cached_tokens INTEGER,"
    "  prompt_ms REAL,"
    "  predicted_ms REAL,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE UNIQUE INDEX messages_conversation_seq ON messages(conversation_id, seq);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof *migrations))

static int db_error(struct lyra_err *err, sqlite3 *db, const char *what)
{
    return lyra_err_set(err, LYRA_EDB, "%s: %s", what, db ? sqlite3_errmsg(db) : "no database");
}

static int exec(sqlite3 *db, const char *sql, struct lyra_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        lyra_err_set(err, LYRA_EDB, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return LYRA_EDB;
    }
    return 0;
}

static int user_version(sqlite3 *db)
{
    sqlite3_stmt *st;
    int v = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    return v;
}

/* Applies migrations above the current user_version, one transaction each. */
static int migrate(sqlite3 *db, struct lyra_err *err)
{
    int v = user_version(db);
    if (v < 0)
        return db_error(err, db, "reading schema version");
    if (v > N_MIGRATIONS)
        return lyra_err_set(err, LYRA_EDB,
                            "database schema %d is newer than this Lyra knows (%d): refusing to touch it",
                            v, N_MIGRATIONS);
    for (int i = v; i < N_MIGRATIONS; i++) {
        char pragma[48];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d;", i + 1);
        if (exec(db, "BEGIN IMMEDIATE;", err) < 0)
            return LYRA_EDB;
        if (exec(db, migrations[i], err) < 0 || exec(db, pragma, err) < 0) {
            exec(db, "ROLLBACK;", NULL);
            return lyra_err_set(err, LYRA_EDB, "schema migration %d failed: %s", i + 1,
                                err ? err->msg : "");
        }
        if (exec(db, "COMMIT;", err) < 0)
            return LYRA_EDB;
    }
    return 0;
}

struct lyra_store *lyra_store_open(const char *path, struct lyra_err *err)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        lyra_err_set(err, LYRA_EDB, "cannot open database %s: %s", path,
                     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    struct lyra_err e2;
    /* journal_mode reads the file: a non-database fails here with a clear
     * message instead of at the first query. */
    if (exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
             &e2) < 0 ||
        migrate(db, &e2) < 0) {
        lyra_err_set(err, LYRA_EDB, "database %s: %s", path, e2.msg);
        sqlite3_close(db);
        return NULL;
    }
    struct lyra_store *st = calloc(1, sizeof *st);
    if (!st) {
        sqlite3_close(db);
        lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    st->db = db;
    return st;
}

void lyra_store_close(struct lyra_store *st)
{
    if (!st)
        return;
    sqlite3_close(st->db);
    free(st);
}

int lyra_store_schema_version(struct lyra_store *st)
{
    return user_version(st->db);
}

struct sqlite3 *lyra_store_db(struct lyra_store *st)
{
    return st->db;
}

static void copy_text(char *dst, size_t len, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, len, "%s", t ? (const char *)t : "");
}

int lyra_store_session_begin(struct lyra_store *st, const char *version, char id_out[40],
                             struct lyra_session_info *unclean, int *n_unclean, struct lyra_err *err)
{
    sqlite3 *db = st->db;
    int count = 0;
    if (exec(db, "BEGIN IMMEDIATE;", err) < 0)
        return LYRA_EDB;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, started_ms, pid, version FROM sessions WHERE ended_ms IS NULL "
                           "ORDER BY started_ms DESC",
                           -1, &s, NULL) != SQLITE_OK)
        goto fail;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (count == 0 && unclean) {
            copy_text(unclean->id, sizeof unclean->id, s, 0);
            unclean->started_ms = sqlite3_column_int64(s, 1);
            unclean->pid = sqlite3_column_int(s, 2);
            copy_text(unclean->version, sizeof unclean->version, s, 3);
        }
        count++;
    }
    sqlite3_finalize(s);
    s = NULL;
    int64_t now = lyra_wall_ms();
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE sessions SET ended_ms = %lld, clean = 0 WHERE ended_ms IS NULL;",
             (long long)now);
    if (exec(db, sql, err) < 0)
        goto fail_quiet;

    lyra_uuid4(id_out);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO sessions (id, started_ms, pid, version) VALUES (?, ?, ?, ?)", -1,
                           &s, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(s, 1, id_out, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_int(s, 3, (int)getpid());
    sqlite3_bind_text(s, 4, version, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(s);
    if (exec(db, "COMMIT;", err) < 0)
        return LYRA_EDB;
    if (n_unclean)
        *n_unclean = count;
    return 0;
fail:
    db_error(err, db, "recording the session");
fail_quiet:
    sqlite3_finalize(s);
    exec(db, "ROLLBACK;", NULL);
    return LYRA_EDB;
}

int lyra_store_session_end(struct lyra_store *st, const char *id, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "UPDATE sessions SET ended_ms = ?, clean = 1 WHERE id = ?", -1, &s,
                           NULL) != SQLITE_OK)
        return db_error(err, st->db, "ending the session");
    sqlite3_bind_int64(s, 1, lyra_wall_ms());
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : db_error(err, st->db, "ending the session");
}

int lyra_store_meta_get_u64(struct lyra_store *st, const char *key, uint64_t *value)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "SELECT value FROM meta WHERE key = ?", -1, &s, NULL) != SQLITE_OK)
        return LYRA_EDB;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = LYRA_ENOTFOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        *value = t ? strtoull((const char *)t, NULL, 10) : 0;
        rc = 0;
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_store_meta_set_u64(struct lyra_store *st, const char *key, uint64_t value)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "INSERT INTO meta (key, value) VALUES (?, ?) "
                                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           -1, &s, NULL) != SQLITE_OK)
        return LYRA_EDB;
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)value);
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, buf, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : LYRA_EDB;
    sqlite3_finalize(s);
    return rc;
}

int lyra_store_check(struct lyra_store *st, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "PRAGMA quick_check", -1, &s, NULL) != SQLITE_OK)
        return db_error(err, st->db, "quick_check");
    int rc = LYRA_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (t && strcmp((const char *)t, "ok") == 0)
            rc = 0;
        else
            lyra_err_set(err, LYRA_EDB, "quick_check: %s", t ? (const char *)t : "?");
    }
    sqlite3_finalize(s);
    return rc;
}
