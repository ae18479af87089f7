/* test_store.c — SQLite state: migrations, sessions, unclean detection,
 * refusing non-databases and newer schemas; the database thread (jobs in
 * order, drained at close), transactions that roll back whatever fails
 * (COMMIT included), durable writes, and a full disk (RLIMIT_FSIZE). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/store.h"

static char dir[64], path[128];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/lyra-store-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/lyra.db", dir);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static void test_migrates_fresh_database(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_non_null(st);
    assert_int_equal(lyra_store_schema_version(st), 7);
    assert_int_equal(lyra_store_check(st, &err), 0);
    lyra_store_close(st);
    /* Opening again applies nothing and keeps the version. */
    st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_schema_version(st), 7);
    lyra_store_close(st);
}

struct query {
    const char *sql;
    int value;
};

/* Job: the first column of the first row of q->sql as an int (-1: none). */
static int job_query(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct query *q = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, q->sql, -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, q->sql);
    q->value = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    return 0;
}

static int query_int(struct lyra_store *st, const char *sql)
{
    struct query q = {sql, -1};
    struct lyra_err err = {0};
    if (lyra_store_run(st, job_query, &q, &err) < 0)
        fail_msg("%s", err.msg);
    return q.value;
}

/* Job: runs SQL (setup of a test's own tables). */
static int job_exec(sqlite3 *db, void *arg, struct lyra_err *err)
{
    if (sqlite3_exec(db, arg, NULL, NULL, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "exec");
    return 0;
}

static void test_sessions_clean_and_unclean(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    char id1[40], id2[40], id3[40];
    struct lyra_session_info prev;
    int n = -1;
    assert_int_equal(lyra_store_session_begin(st, "0.1.0", id1, &prev, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(lyra_store_session_end(st, id1, NULL, 0, &err), 0);

    /* A clean end leaves nothing to recover. */
    assert_int_equal(lyra_store_session_begin(st, "0.1.0", id2, &prev, &n, &err), 0);
    assert_int_equal(n, 0);
    lyra_store_close(st); /* "crash": the session is never ended */

    st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_session_begin(st, "0.1.1", id3, &prev, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(prev.id, id2);
    assert_string_equal(prev.version, "0.1.0");
    assert_int_equal(prev.pid, getpid());
    assert_string_not_equal(id2, id3);
    lyra_store_close(st);

    /* The unclean session was closed as unclean: reported only once. */
    st = lyra_store_open(path, &err);
    char id4[40];
    assert_int_equal(lyra_store_session_begin(st, "0.1.1", id4, &prev, &n, &err), 0);
    assert_int_equal(n, 1); /* id3 was never ended either */
    assert_string_equal(prev.id, id3);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT clean FROM sessions WHERE id = '%s'", id2);
    assert_int_equal(query_int(st, sql), 0);

    /* A clean end writes the meta value in the same transaction. */
    assert_int_equal(lyra_store_session_end(st, id4, "mark", 77, &err), 0);
    uint64_t v = 0;
    assert_int_equal(lyra_store_meta_get_u64(st, "mark", &v, &err), 0);
    assert_int_equal(v, 77);
    snprintf(sql, sizeof sql, "SELECT clean FROM sessions WHERE id = '%s'", id4);
    assert_int_equal(query_int(st, sql), 1);
    lyra_store_close(st);
}

static void test_meta(void **state)
{
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    uint64_t v = 7;
    assert_int_equal(lyra_store_meta_get_u64(st, "nope", &v, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 18446744073709551615ULL, 0, &err), 0);
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v, &err), 0);
    assert_true(v == 18446744073709551615ULL);
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 5, LYRA_STORE_DURABLE, &err), 0);
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v, &err), 0);
    assert_int_equal(v, 5);
    lyra_store_close(st);
}

struct order {
    int next; /* written by jobs and callbacks on the database thread only */
    int seen[8];
    int done_rc[8];
};

struct order_job {
    struct order *o;
    int n;
};

static int job_record(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct order_job *j = arg;
    j->o->seen[j->o->next++] = j->n;
    return j->n == 2 ? lyra_err_set(err, LYRA_EINVAL, "job %d fails", j->n) : 0;
}

/* Database thread: no cmocka assertion here (they must run on the test's
 * thread); a wrong message shows as a wrong rc. */
static void record_done(int rc, const struct lyra_err *err, void *arg)
{
    struct order_job *j = arg;
    j->o->done_rc[j->n] = rc < 0 && !strstr(err->msg, "job 2 fails") ? -999 : rc;
}

static void test_jobs_run_in_order_and_close_drains(void **state)
{
    /* Asynchronous jobs run in the order submitted, a synchronous one after
     * them, and close runs what is still queued before it returns. */
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct order o = {0};
    struct order_job jobs[6];
    for (int i = 0; i < 6; i++) {
        jobs[i] = (struct order_job){&o, i};
        o.done_rc[i] = 1;
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(lyra_store_submit(st, job_record, record_done, &jobs[i]), 0);
    assert_int_equal(lyra_store_run(st, job_record, &jobs[3], &err), 0);
    assert_int_equal(o.next, 4); /* everything before the synchronous job has run */
    for (int i = 0; i < 4; i++)
        assert_int_equal(o.seen[i], i);
    assert_int_equal(o.done_rc[0], 0);
    assert_int_equal(o.done_rc[2], LYRA_EINVAL);
    for (int i = 4; i < 6; i++)
        assert_int_equal(lyra_store_submit(st, job_record, record_done, &jobs[i]), 0);
    lyra_store_close(st);
    assert_int_equal(o.next, 6);
    assert_int_equal(o.done_rc[5], 0);
}

static int tx_insert_orphan(sqlite3 *db, void *arg, struct lyra_err *err)
{
    if (sqlite3_exec(db, "INSERT INTO child (p) VALUES (42)", NULL, NULL, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "insert");
    return 0;
}

static int tx_insert_parent(sqlite3 *db, void *arg, struct lyra_err *err)
{
    if (sqlite3_exec(db, "INSERT INTO parent (id) VALUES (1); INSERT INTO child (p) VALUES (1)", NULL, NULL,
                     NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "insert");
    return 0;
}

struct tx_case {
    lyra_store_fn body;
    int rc;
    bool autocommit_after;
    struct lyra_err err;
};

static int job_tx(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct tx_case *c = arg;
    c->rc = lyra_store_tx(db, 0, c->body, NULL, &c->err);
    c->autocommit_after = sqlite3_get_autocommit(db);
    return 0;
}

static void test_failed_commit_rolls_back(void **state)
{
    /* A deferred foreign key is checked at COMMIT, and SQLite keeps the
     * transaction open when that COMMIT fails: the helper must roll it back,
     * or the orphan row would be committed by the next transaction and every
     * later BEGIN would fail. */
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_int_equal(
        lyra_store_run(st, job_exec,
                       "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY "
                       "DEFERRED);",
                       &err),
        0);
    struct tx_case c = {.body = tx_insert_orphan};
    assert_int_equal(lyra_store_run(st, job_tx, &c, &err), 0);
    assert_int_equal(c.rc, LYRA_EDB);
    assert_non_null(strstr(c.err.msg, "committing"));
    assert_non_null(strstr(c.err.msg, "FOREIGN KEY"));
    assert_true(c.autocommit_after); /* not left inside the transaction */
    assert_int_equal(query_int(st, "SELECT COUNT(*) FROM child"), 0);

    /* The connection goes on: the next transaction commits. */
    struct tx_case ok = {.body = tx_insert_parent};
    assert_int_equal(lyra_store_run(st, job_tx, &ok, &err), 0);
    assert_int_equal(ok.rc, 0);
    assert_int_equal(query_int(st, "SELECT COUNT(*) FROM child"), 1);
    lyra_store_close(st);
}

static int tx_read_synchronous(sqlite3 *db, void *arg, struct lyra_err *err)
{
    sqlite3_stmt *s;
    sqlite3_prepare_v2(db, "PRAGMA synchronous", -1, &s, NULL);
    *(int *)arg = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    return 0;
}

struct durable_case {
    int flags;
    int inside;
};

static int job_durable(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct durable_case *c = arg;
    return lyra_store_tx(db, c->flags, tx_read_synchronous, &c->inside, err);
}

static void test_durable_commit_syncs(void **state)
{
    /* WAL with synchronous=NORMAL may lose the last commits at a power loss;
     * a durable write commits with FULL (the WAL is synced at COMMIT), and
     * everything else stays at NORMAL. */
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    struct durable_case c = {LYRA_STORE_DURABLE, -1};
    assert_int_equal(lyra_store_run(st, job_durable, &c, &err), 0);
    assert_int_equal(c.inside, 2);                            /* FULL */
    assert_int_equal(query_int(st, "PRAGMA synchronous"), 1); /* NORMAL again */
    c = (struct durable_case){0, -1};
    assert_int_equal(lyra_store_run(st, job_durable, &c, &err), 0);
    assert_int_equal(c.inside, 1);
    lyra_store_close(st);
}

static void set_fsize(rlim_t limit)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rl.rlim_cur = limit;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void test_full_disk(void **state)
{
    /* RLIMIT_FSIZE 0 makes every write to a regular file fail (EFBIG; the
     * signal is ignored), as a full disk would, whoever runs the test. */
    struct lyra_err err = {0};
    struct lyra_store *st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 1, 0, &err), 0);
    void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
    set_fsize(0);
    int rc = lyra_store_meta_set_u64(st, "k", 2, LYRA_STORE_DURABLE, &err);
    int rc2 = lyra_store_meta_set_u64(st, "k", 3, 0, &err);
    set_fsize(RLIM_INFINITY);
    signal(SIGXFSZ, old);
    assert_int_equal(rc, LYRA_EDB);
    assert_int_equal(rc2, LYRA_EDB);
    /* The reason, not just "error". */
    if (!strstr(err.msg, "RLIMIT_FSIZE"))
        fail_msg("unclear error: %s", err.msg);
    uint64_t v = 0;
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v, &err), 0);
    assert_int_equal(v, 1); /* nothing half-written */

    /* Space again: writes work on the same connection. */
    assert_int_equal(lyra_store_meta_set_u64(st, "k", 4, LYRA_STORE_DURABLE, &err), 0);
    lyra_store_close(st);
    st = lyra_store_open(path, &err);
    assert_int_equal(lyra_store_meta_get_u64(st, "k", &v, &err), 0);
    assert_int_equal(v, 4);
    assert_int_equal(lyra_store_check(st, &err), 0);
    lyra_store_close(st);
}

static void test_rejects_non_database(void **state)
{
    FILE *f = fopen(path, "w");
    fputs("this is not an SQLite database, just some text that is long enough to matter....", f);
    fclose(f);
    struct lyra_err err = {0};
    assert_null(lyra_store_open(path, &err));
    assert_int_equal(err.code, LYRA_EDB);
    assert_non_null(strstr(err.msg, "not a database"));
    unlink(path);
}

static void test_rejects_newer_schema(void **state)
{
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "PRAGMA user_version = 99;", NULL, NULL, NULL);
    sqlite3_close(db);
    struct lyra_err err = {0};
    assert_null(lyra_store_open(path, &err));
    assert_non_null(strstr(err.msg, "newer"));
    unlink(path);
}

static void test_unopenable_path(void **state)
{
    struct lyra_err err = {0};
    assert_null(lyra_store_open("/nonexistent-dir/for/sure/lyra.db", &err));
    assert_int_equal(err.code, LYRA_EDB);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/for/sure/lyra.db"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrates_fresh_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_clean_and_unclean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jobs_run_in_order_and_close_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_commit_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durable_commit_syncs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_non_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_newer_schema, setup, teardown),
        cmocka_unit_test(test_unopenable_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
