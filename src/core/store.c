/* store.c — the SQLite database, its thread and job queue, schema
 * migrations keyed by user_version, the sessions table and a meta key/value
 * table.
 *
 * One thread owns the connection (see store.h for why: the supervisor loop
 * must never wait for the disk, and one FIFO queue gives every later reader
 * the writes queued before it).  Jobs are a singly linked FIFO under
 * st->lock; a synchronous caller's job lives on its stack and it waits on
 * st->done_cond until the thread marks it finished.
 *
 * Migrations are an append-only list of SQL scripts: migration N moves the
 * schema from user_version N-1 to N.  Never edit a shipped one; add one. */
#include "core/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

struct job {
    lyra_store_fn fn;
    lyra_store_done_fn done; /* asynchronous jobs */
    void *arg;
    /* synchronous jobs (on the caller's stack) */
    bool sync, finished;
    int rc;
    struct lyra_err *err;
    struct job *next;
};

struct lyra_store {
    sqlite3 *db;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;     /* guards the queue and `closing` */
    pthread_cond_t wake_cond; /* the thread waits for jobs */
    pthread_cond_t done_cond; /* synchronous callers wait for theirs */
    struct job *head, *tail;
    bool closing;
};

static const char *const migrations[] = {
    /* 1: sessions and daemon bookkeeping */
    "CREATE TABLE sessions ("
    "  id TEXT PRIMARY KEY,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER,"
    "  clean INTEGER," /* NULL while running, 1 clean, 0 unclean */
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
    /* 3: the event log (core/evlog.c): the last events.keep events, for replay across restarts */
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  ts_ms INTEGER NOT NULL,"
    "  type TEXT NOT NULL,"
    "  json TEXT NOT NULL);",
    /* 4: background jobs (jobs/jobs.c); params, result and resume are JSON text */
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  type TEXT NOT NULL,"
    "  state TEXT NOT NULL," /* queued, running, succeeded, failed, cancelled */
    "  params TEXT NOT NULL,"
    "  done INTEGER NOT NULL DEFAULT 0,"
    "  total INTEGER NOT NULL DEFAULT 0,"
    "  rate REAL NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER,"
    "  finished_ms INTEGER,"
    "  error TEXT,"
    "  result TEXT,"
    "  resume TEXT,"
    "  runs INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_created ON jobs(created_ms);"
    "CREATE INDEX jobs_unfinished ON jobs(state) WHERE state IN ('queued', 'running');",
    /* 5: principals, API keys (only their keyed hash) and custom roles (auth/auth.c) */
    "CREATE TABLE principals ("
    "  name TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL," /* user, service */
    "  role TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE api_keys ("
    "  id TEXT PRIMARY KEY," /* k_ + 12 hex: public */
    "  hash BLOB NOT NULL UNIQUE," /* BLAKE2b-256 keyed with auth.secret */
    "  prefix TEXT NOT NULL,"
    "  principal TEXT NOT NULL,"
    "  label TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  expires_ms INTEGER,"
    "  revoked_ms INTEGER,"
    "  last_used_ms INTEGER);"
    "CREATE INDEX api_keys_principal ON api_keys(principal);"
    "CREATE TABLE roles ("
    "  name TEXT PRIMARY KEY,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE role_grants ("
    "  role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,"
    "  kind TEXT NOT NULL," /* permission, model */
    "  value TEXT NOT NULL,"
    "  PRIMARY KEY (role, kind, value));",
    /* 6: the append-only audit log (auth/audit.c) */
    "CREATE TABLE audit ("
    "  id INTEGER PRIMARY KEY,"
    "  ts_ms INTEGER NOT NULL,"
    "  principal TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  action TEXT NOT NULL,"
    "  target TEXT NOT NULL,"
    "  result TEXT NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  client TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  detail TEXT NOT NULL);"
    "CREATE INDEX audit_ts ON audit(ts_ms);"
    "CREATE INDEX audit_principal ON audit(principal, id);"
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    /* 7: who owns a conversation (the principal that created it; NULL for rows from before
     * issue 9: visible only with conversations.all) */
    ("ALTER TABLE conversations ADD COLUMN owner TEXT;"
     "CREATE INDEX conversations_owner ON conversations(owner, updated_ms);"),
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof *migrations))

/* Why a write may have failed, from the file system's side: SQLite's own
 * "disk I/O error" rarely says (the errno it keeps is often 0 by the time
 * the statement returns).  Writes a short reason into buf, or "". */
static void diagnose_io(sqlite3 *db, char *buf, size_t len)
{
    buf[0] = '\0';
    int sys = sqlite3_system_errno(db);
    if (sys != 0) {
        snprintf(buf, len, "%s", strerror(sys));
        return;
    }
    const char *file = sqlite3_db_filename(db, "main");
    if (!file || !*file)
        return;
    struct statvfs sv;
    if (statvfs(file, &sv) == 0) {
        if (sv.f_flag & ST_RDONLY) {
            snprintf(buf, len, "the file system holding %s is read-only", file);
            return;
        }
        if ((uint64_t)sv.f_bavail * sv.f_frsize < 1024 * 1024) {
            snprintf(buf, len, "the file system holding %s is full", file);
            return;
        }
    }
    /* A file size limit at or below the size of the database or its WAL is
     * what stopped the write (EFBIG). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        uint64_t biggest = 0;
        char wal[4096];
        const char *files[] = {file, wal};
        snprintf(wal, sizeof wal, "%s-wal", file);
        for (size_t i = 0; i < 2; i++) {
            struct stat stt;
            if (stat(files[i], &stt) == 0 && (uint64_t)stt.st_size > biggest)
                biggest = (uint64_t)stt.st_size;
        }
        if ((uint64_t)rl.rlim_cur <= biggest + 1024 * 1024)
            snprintf(buf, len, "the file size limit (RLIMIT_FSIZE, ulimit -f) is %llu bytes",
                     (unsigned long long)rl.rlim_cur);
    }
}

int lyra_store_error(struct lyra_err *err, sqlite3 *db, const char *what)
{
    if (!db)
        return lyra_err_set(err, LYRA_EDB, "%s: no database", what);
    int primary = sqlite3_extended_errcode(db) & 0xff;
    if (primary == SQLITE_IOERR || primary == SQLITE_FULL || primary == SQLITE_CANTOPEN ||
        primary == SQLITE_READONLY) {
        char why[512];
        diagnose_io(db, why, sizeof why);
        if (why[0])
            return lyra_err_set(err, LYRA_EDB, "%s: %s (%s)", what, sqlite3_errmsg(db), why);
    }
    return lyra_err_set(err, LYRA_EDB, "%s: %s", what, sqlite3_errmsg(db));
}

/* Runs SQL without results; on failure err says `what` and SQLite's reason. */
static int exec(sqlite3 *db, const char *sql, const char *what, struct lyra_err *err)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    return 0;
}

/* PRAGMA synchronous FULL or NORMAL; outside a transaction only. */
static int set_synchronous(sqlite3 *db, bool full, struct lyra_err *err)
{
    return exec(db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", "setting synchronous",
                err);
}

int lyra_store_tx(sqlite3 *db, int flags, lyra_store_fn body, void *arg, struct lyra_err *err)
{
    bool durable = flags & LYRA_STORE_DURABLE;
    /* synchronous cannot change inside a transaction: set it around. */
    int rc = durable ? set_synchronous(db, true, err) : 0;
    if (rc == 0)
        rc = exec(db, "BEGIN IMMEDIATE", "starting a transaction", err);
    if (rc == 0)
        rc = body(db, arg, err);
    if (rc == 0)
        rc = exec(db, "COMMIT", "committing", err);
    /* A failed COMMIT can leave the transaction open (a deferred foreign key,
     * SQLITE_BUSY); an I/O error may or may not have rolled it back already.
     * Either way it must end here, or every later BEGIN on this connection
     * fails and the half-done writes would be committed by the next one. */
    if (rc < 0 && !sqlite3_get_autocommit(db) &&
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK) {
        char first[LYRA_ERR_MSG_MAX];
        snprintf(first, sizeof first, "%s", err ? err->msg : "");
        struct lyra_err rb;
        lyra_store_error(&rb, db, "rolling back");
        lyra_err_set(err, LYRA_EDB, "%s; %s", first, rb.msg);
    }
    if (durable) {
        struct lyra_err e2;
        if (set_synchronous(db, false, &e2) < 0 && rc == 0)
            rc = lyra_err_set(err, LYRA_EDB, "%s", e2.msg);
    }
    return rc;
}

/* PRAGMA user_version, or -1 when it cannot be read. */
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

struct migration {
    int n;
};

/* Transaction body: migration m->n (1-based) and its user_version. */
static int run_migration(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct migration *m = arg;
    char what[48], pragma[48];
    snprintf(what, sizeof what, "schema migration %d", m->n);
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d;", m->n);
    int rc = exec(db, migrations[m->n - 1], what, err);
    return rc < 0 ? rc : exec(db, pragma, what, err);
}

/* Applies migrations above the current user_version, one transaction each. */
static int migrate(sqlite3 *db, struct lyra_err *err)
{
    int v = user_version(db);
    if (v < 0)
        return lyra_store_error(err, db, "reading schema version");
    if (v > N_MIGRATIONS)
        return lyra_err_set(err, LYRA_EDB,
                            "database schema %d is newer than this Lyra knows (%d): refusing to touch it", v,
                            N_MIGRATIONS);
    for (int i = v; i < N_MIGRATIONS; i++) {
        struct migration m = {i + 1};
        int rc = lyra_store_tx(db, 0, run_migration, &m, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The database thread: runs jobs in order until closing and the queue is
 * empty.  The lock is not held while a job or callback runs. */
static void *store_thread(void *arg)
{
    struct lyra_store *st = arg;
    pthread_mutex_lock(&st->lock);
    for (;;) {
        while (!st->head && !st->closing)
            pthread_cond_wait(&st->wake_cond, &st->lock);
        struct job *j = st->head;
        if (!j)
            break; /* closing and drained */
        st->head = j->next;
        if (!st->head)
            st->tail = NULL;
        pthread_mutex_unlock(&st->lock);
        if (j->sync) {
            int rc = j->fn(st->db, j->arg, j->err);
            pthread_mutex_lock(&st->lock);
            j->rc = rc;
            j->finished = true; /* j may be gone as soon as the lock drops */
            pthread_cond_broadcast(&st->done_cond);
        } else {
            struct lyra_err err = {0};
            int rc = j->fn(st->db, j->arg, &err);
            if (j->done)
                j->done(rc, &err, j->arg);
            free(j);
            pthread_mutex_lock(&st->lock);
        }
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

struct lyra_store *lyra_store_open(const char *path, struct lyra_err *err)
{
    sqlite3 *db = NULL;
    int rc =
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        lyra_err_set(err, LYRA_EDB, "cannot open database %s: %s", path,
                     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    struct lyra_err e2 = {0};
    /* journal_mode reads the file: a non-database fails here with a clear
     * message instead of at the first query. */
    if (exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", "opening",
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
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->wake_cond, NULL);
    pthread_cond_init(&st->done_cond, NULL);
    /* From here on only the database thread touches st->db (the thread's
     * creation orders the writes above before it). */
    rc = pthread_create(&st->thread, NULL, store_thread, st);
    if (rc != 0) {
        lyra_err_set(err, LYRA_EDB, "database %s: cannot start its thread: %s", path, strerror(rc));
        lyra_store_close(st);
        return NULL;
    }
    st->thread_started = true;
    return st;
}

void lyra_store_close(struct lyra_store *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&st->lock);
    st->closing = true;
    pthread_cond_broadcast(&st->wake_cond);
    pthread_mutex_unlock(&st->lock);
    if (st->thread_started)
        pthread_join(st->thread, NULL);
    sqlite3_close(st->db);
    pthread_cond_destroy(&st->done_cond);
    pthread_cond_destroy(&st->wake_cond);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Appends j to the queue; refused once closing.  Called with st->lock held. */
static int enqueue_locked(struct lyra_store *st, struct job *j)
{
    if (st->closing)
        return LYRA_EUNAVAILABLE;
    j->next = NULL;
    if (st->tail)
        st->tail->next = j;
    else
        st->head = j;
    st->tail = j;
    pthread_cond_signal(&st->wake_cond);
    return 0;
}

int lyra_store_run(struct lyra_store *st, lyra_store_fn fn, void *arg, struct lyra_err *err)
{
    if (st->thread_started && pthread_equal(pthread_self(), st->thread))
        return fn(st->db, arg, err); /* a job or callback: already in order */
    struct job j = {.fn = fn, .arg = arg, .sync = true, .err = err};
    pthread_mutex_lock(&st->lock);
    if (enqueue_locked(st, &j) < 0) {
        pthread_mutex_unlock(&st->lock);
        return lyra_err_set(err, LYRA_EUNAVAILABLE, "the database is closed");
    }
    while (!j.finished)
        pthread_cond_wait(&st->done_cond, &st->lock);
    pthread_mutex_unlock(&st->lock);
    return j.rc;
}

int lyra_store_submit(struct lyra_store *st, lyra_store_fn fn, lyra_store_done_fn done, void *arg)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return LYRA_ENOMEM;
    j->fn = fn;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&st->lock);
    int rc = enqueue_locked(st, j);
    pthread_mutex_unlock(&st->lock);
    if (rc < 0)
        free(j);
    return rc;
}

/* --- schema version ------------------------------------------------------- */

/* Job: *(int *)arg = the schema version. */
static int job_user_version(sqlite3 *db, void *arg, struct lyra_err *err)
{
    *(int *)arg = user_version(db);
    return 0;
}

int lyra_store_schema_version(struct lyra_store *st)
{
    int v = -1;
    lyra_store_run(st, job_user_version, &v, NULL);
    return v;
}

/* --- sessions ------------------------------------------------------------- */

/* Copies a text column into dst (len bytes), valid UTF-8 even if the row is not. */
static void copy_text(char *dst, size_t len, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, len, "%s", t ? (const char *)t : "");
    lyra_utf8_scrub(dst);
}

struct session_begin {
    const char *version;
    char *id_out;
    struct lyra_session_info *unclean;
    int count;
};

/* Transaction body: counts and closes the open sessions (the most recent one copied to b->unclean), inserts
 * the new one. */
static int tx_session_begin(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct session_begin *b = arg;
    sqlite3_stmt *s = NULL;
    const char *what = "recording the session";
    if (sqlite3_prepare_v2(db,
                           "SELECT id, started_ms, pid, version FROM sessions WHERE ended_ms IS NULL "
                           "ORDER BY started_ms DESC",
                           -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        if (b->count == 0 && b->unclean) {
            copy_text(b->unclean->id, sizeof b->unclean->id, s, 0);
            b->unclean->started_ms = sqlite3_column_int64(s, 1);
            b->unclean->pid = sqlite3_column_int(s, 2);
            copy_text(b->unclean->version, sizeof b->unclean->version, s, 3);
        }
        b->count++;
    }
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        return lyra_store_error(err, db, what);
    int64_t now = lyra_wall_ms();
    if (sqlite3_prepare_v2(db, "UPDATE sessions SET ended_ms = ?, clean = 0 WHERE ended_ms IS NULL", -1, &s,
                           NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    sqlite3_bind_int64(s, 1, now);
    step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        return lyra_store_error(err, db, what);

    lyra_uuid4(b->id_out);
    if (sqlite3_prepare_v2(db, "INSERT INTO sessions (id, started_ms, pid, version) VALUES (?, ?, ?, ?)", -1,
                           &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    sqlite3_bind_text(s, 1, b->id_out, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_int(s, 3, (int)getpid());
    sqlite3_bind_text(s, 4, b->version, -1, SQLITE_STATIC);
    step = sqlite3_step(s);
    sqlite3_finalize(s);
    return step == SQLITE_DONE ? 0 : lyra_store_error(err, db, what);
}

/* Job: tx_session_begin in one transaction. */
static int job_session_begin(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return lyra_store_tx(db, 0, tx_session_begin, arg, err);
}

int lyra_store_session_begin(struct lyra_store *st, const char *version, char id_out[40],
                             struct lyra_session_info *unclean, int *n_unclean, struct lyra_err *err)
{
    struct session_begin b = {.version = version, .id_out = id_out, .unclean = unclean};
    int rc = lyra_store_run(st, job_session_begin, &b, err);
    if (rc == 0 && n_unclean)
        *n_unclean = b.count;
    return rc;
}

/* Writes meta key = text inside the caller's transaction. */
static int put_meta_text(sqlite3 *db, const char *key, const char *text, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "writing meta");
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, text, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    return step == SQLITE_DONE ? 0 : lyra_store_error(err, db, "writing meta");
}

static int put_meta(sqlite3 *db, const char *key, uint64_t value, struct lyra_err *err)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)value);
    return put_meta_text(db, key, buf, err);
}

struct session_end {
    const char *id;
    const char *key;
    uint64_t value;
};

/* Transaction body: the session ended cleanly now, and meta e->key = e->value when key is set. */
static int tx_session_end(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct session_end *e = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "UPDATE sessions SET ended_ms = ?, clean = 1 WHERE id = ?", -1, &s, NULL) !=
        SQLITE_OK)
        return lyra_store_error(err, db, "ending the session");
    sqlite3_bind_int64(s, 1, lyra_wall_ms());
    sqlite3_bind_text(s, 2, e->id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        return lyra_store_error(err, db, "ending the session");
    return e->key ? put_meta(db, e->key, e->value, err) : 0;
}

/* Job: tx_session_end in one durable transaction. */
static int job_session_end(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return lyra_store_tx(db, LYRA_STORE_DURABLE, tx_session_end, arg, err);
}

int lyra_store_session_end(struct lyra_store *st, const char *id, const char *key, uint64_t value,
                           struct lyra_err *err)
{
    struct session_end e = {id, key, value};
    return lyra_store_run(st, job_session_end, &e, err);
}

/* --- meta ----------------------------------------------------------------- */

struct meta {
    uint64_t value;
    int flags;
    lyra_store_meta_done_fn done;
    void *ud;
    char key[]; /* NUL-terminated */
};

/* Reads meta key into *text (malloc'd); LYRA_ENOTFOUND when absent. */
static int get_meta_text(sqlite3 *db, const char *key, char **text, struct lyra_err *err)
{
    sqlite3_stmt *s;
    *text = NULL;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "reading meta");
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(s), rc;
    if (step == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        *text = strdup(t ? (const char *)t : "");
        rc = *text ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no meta value %s", key);
    } else {
        rc = lyra_store_error(err, db, "reading meta");
    }
    sqlite3_finalize(s);
    return rc;
}

/* Job: m->value = meta m->key; LYRA_ENOTFOUND when absent. */
static int job_meta_get(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct meta *m = arg;
    char *text;
    int rc = get_meta_text(db, m->key, &text, err);
    if (rc == 0)
        m->value = strtoull(text, NULL, 10);
    free(text);
    return rc;
}

/* A meta request with its key copied (caller frees); NULL on allocation failure. */
static struct meta *meta_new(const char *key, uint64_t value, int flags)
{
    size_t n = strlen(key) + 1;
    struct meta *m = calloc(1, sizeof *m + n);
    if (m) {
        memcpy(m->key, key, n);
        m->value = value;
        m->flags = flags;
    }
    return m;
}

int lyra_store_meta_get_u64(struct lyra_store *st, const char *key, uint64_t *value, struct lyra_err *err)
{
    struct meta *m = meta_new(key, 0, 0);
    if (!m)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = lyra_store_run(st, job_meta_get, m, err);
    if (rc == 0)
        *value = m->value;
    free(m);
    return rc;
}

/* Transaction body: meta m->key = m->value. */
static int tx_meta_set(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct meta *m = arg;
    return put_meta(db, m->key, m->value, err);
}

/* Job: tx_meta_set in a transaction with m->flags. */
static int job_meta_set(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct meta *m = arg;
    return lyra_store_tx(db, m->flags, tx_meta_set, m, err);
}

int lyra_store_meta_set_u64(struct lyra_store *st, const char *key, uint64_t value, int flags,
                            struct lyra_err *err)
{
    struct meta *m = meta_new(key, value, flags);
    if (!m)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = lyra_store_run(st, job_meta_set, m, err);
    free(m);
    return rc;
}

/* Callback of an asynchronous meta write: reports to the caller, frees the request. */
static void meta_set_done(int rc, const struct lyra_err *err, void *arg)
{
    struct meta *m = arg;
    if (m->done)
        m->done(rc, err, m->value, m->ud);
    free(m);
}

int lyra_store_meta_set_u64_async(struct lyra_store *st, const char *key, uint64_t value, int flags,
                                  lyra_store_meta_done_fn done, void *ud)
{
    struct meta *m = meta_new(key, value, flags);
    if (!m)
        return LYRA_ENOMEM;
    m->done = done;
    m->ud = ud;
    int rc = lyra_store_submit(st, job_meta_set, meta_set_done, m);
    if (rc < 0)
        free(m);
    return rc;
}

/* --- text meta ------------------------------------------------------------ */

struct meta_text {
    char *key, *text; /* text: the value written, or the one read (malloc'd) */
    int flags;
};

static int tx_meta_text_set(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct meta_text *m = arg;
    return put_meta_text(db, m->key, m->text, err);
}

static int job_meta_text_set(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct meta_text *m = arg;
    return lyra_store_tx(db, m->flags, tx_meta_text_set, m, err);
}

static void meta_text_free(struct meta_text *m)
{
    if (m) {
        free(m->key);
        free(m->text);
        free(m);
    }
}

static void meta_text_done(int rc, const struct lyra_err *err, void *arg)
{
    struct meta_text *m = arg;
    if (rc < 0)
        lyra_log(LYRA_LOG_WARN, "state", NULL, NULL, "cannot store %s: %s", m->key, err ? err->msg : "error");
    meta_text_free(m);
}

int lyra_store_meta_set_text_async(struct lyra_store *st, const char *key, const char *text, int flags)
{
    struct meta_text *m = calloc(1, sizeof *m);
    if (!m || !(m->key = strdup(key)) || !(m->text = strdup(text))) {
        meta_text_free(m);
        return LYRA_ENOMEM;
    }
    m->flags = flags;
    int rc = lyra_store_submit(st, job_meta_text_set, meta_text_done, m);
    if (rc < 0)
        meta_text_free(m);
    return rc;
}

static int job_meta_text_get(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct meta_text *m = arg;
    return get_meta_text(db, m->key, &m->text, err);
}

int lyra_store_meta_get_text(struct lyra_store *st, const char *key, char **value, struct lyra_err *err)
{
    struct meta_text m = {.key = (char *)key};
    *value = NULL;
    int rc = lyra_store_run(st, job_meta_text_get, &m, err);
    if (rc == 0)
        *value = m.text;
    else
        free(m.text);
    return rc;
}

/* --- check ---------------------------------------------------------------- */

/* Job: PRAGMA quick_check; 0 when it says ok. */
static int job_check(sqlite3 *db, void *arg, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "quick_check");
    int rc = LYRA_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (t && strcmp((const char *)t, "ok") == 0)
            rc = 0;
        else
            lyra_err_set(err, LYRA_EDB, "quick_check: %s", t ? (const char *)t : "?");
    } else {
        lyra_store_error(err, db, "quick_check");
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_store_check(struct lyra_store *st, struct lyra_err *err)
{
    return lyra_store_run(st, job_check, NULL, err);
}
