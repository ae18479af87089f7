/* store.h — Lyra's state on disk: one SQLite database in WAL mode, owned by
 * one database thread.
 *
 * lyra_store_open() applies the schema migrations whose number is above the
 * database's `PRAGMA user_version`, each in its own transaction, so a crash
 * mid-migration leaves the previous version intact, then starts the database
 * thread.  From then on the connection is used by that thread only: every
 * read and write is a job on its queue, run in the order submitted.  Because
 * there is one queue, a job submitted before another is also seen by it: a
 * write queued by the supervisor loop is visible to any request that reads
 * after it was queued, without the loop ever waiting for the disk.
 *
 * The sessions table records every run of the daemon (id, start, end,
 * clean): a session left open by a previous run means that run ended
 * uncleanly (crash, kill -9, power loss); lyra_store_session_begin()
 * reports it and closes it as unclean.
 *
 * Durability: commits use synchronous=NORMAL (WAL: consistent after a power
 * loss, but the last commits may be lost).  A write flagged
 * LYRA_STORE_DURABLE runs with synchronous=FULL, which in WAL mode syncs the
 * WAL before the commit returns, so it (and everything committed before it)
 * survives a power loss.
 *
 * Thread-safety: lyra_store_open/close from one thread (the owner, with no
 * other call in flight).  Every other function is thread-safe.  Functions
 * marked "waits" block the caller until the database thread has run the job:
 * call them from HTTP handler threads or the main thread, never from the
 * supervisor loop or any thread that must not block on disk.  Functions
 * marked "never blocks" only queue work (they take a short mutex and may
 * allocate) and may be called from any thread, including the supervisor
 * loop and event-bus publishers. */
#ifndef LYRA_STORE_H
#define LYRA_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_store;
struct sqlite3;

/* A previous run that did not end cleanly. */
struct lyra_session_info {
    char id[40];
    int64_t started_ms;  /* wall clock */
    int pid;
    char version[32];
};

/* Flags for writes. */
#define LYRA_STORE_DURABLE 1 /* survive a power loss (synchronous=FULL for this commit) */

/* Opens (creating if needed) the database at path, migrates it and starts
 * the database thread.  Returns NULL with err set when the file cannot be
 * opened, is not a database, a migration fails, or the thread cannot start.
 * Caller closes with lyra_store_close(). */
struct lyra_store *lyra_store_open(const char *path, struct lyra_err *err);

/* Refuses new jobs, runs every job already queued (and its callback), joins
 * the database thread and closes the connection.  After it returns no
 * callback of this store runs any more.  NULL is a no-op. */
void lyra_store_close(struct lyra_store *st);

/* --- jobs on the database thread ---------------------------------------- */

/* A unit of work: runs on the database thread with the connection (borrowed;
 * valid only during the call).  Returns 0 or a negative LYRA_E* with detail
 * in err (which may be NULL). */
typedef int (*lyra_store_fn)(struct sqlite3 *db, void *arg, struct lyra_err *err);

/* Called on the database thread after an asynchronous job with its result
 * and detail (err borrowed for the call).  It must not wait on the store
 * (lyra_store_run from here runs inline) and should be quick. */
typedef void (*lyra_store_done_fn)(int rc, const struct lyra_err *err, void *arg);

/* Runs fn(db, arg, err) on the database thread and returns its result.
 * Waits.  Called on the database thread itself (from a job or callback) it
 * runs fn inline.  LYRA_EUNAVAILABLE once the store is closing. */
int lyra_store_run(struct lyra_store *st, lyra_store_fn fn, void *arg, struct lyra_err *err);

/* Queues fn(db, arg) and returns at once; done(rc, err, arg) (may be NULL)
 * runs on the database thread after it.  Never blocks.  Returns 0, or
 * LYRA_ENOMEM / LYRA_EUNAVAILABLE (closing) when nothing was queued: then
 * neither fn nor done runs and the caller still owns arg. */
int lyra_store_submit(struct lyra_store *st, lyra_store_fn fn, lyra_store_done_fn done, void *arg);

/* Inside a job only: runs body(db, arg, err) in a BEGIN IMMEDIATE ... COMMIT
 * transaction.  On any failure — BEGIN, the body, or COMMIT itself (a
 * deferred constraint, a full disk, an I/O error) — the transaction is
 * rolled back, so the connection is never left inside a transaction; the
 * first error is what err reports.  With LYRA_STORE_DURABLE in flags the
 * commit runs with synchronous=FULL. */
int lyra_store_tx(struct sqlite3 *db, int flags, lyra_store_fn body, void *arg, struct lyra_err *err);

/* Inside a job only: sets err to "what: <SQLite's message>" and, for I/O
 * failures, why the file system refused the write when that can be found
 * (a full or read-only file system, a file size limit), and returns
 * LYRA_EDB.  The one way Lyra reports an SQLite failure. */
int lyra_store_error(struct lyra_err *err, struct sqlite3 *db, const char *what);

/* --- the store's own tables (sessions, meta) ------------------------------ */

/* Schema version after migrations (PRAGMA user_version), -1 on failure.
 * Waits. */
int lyra_store_schema_version(struct lyra_store *st);

/* Starts a session with a fresh id (written to id_out).  If earlier sessions
 * were left open, the most recent is copied to *unclean (when not NULL),
 * *n_unclean gets their count, and all are marked ended uncleanly.  Waits. */
int lyra_store_session_begin(struct lyra_store *st, const char *version, char id_out[40],
                             struct lyra_session_info *unclean, int *n_unclean, struct lyra_err *err);

/* Marks the session as ended cleanly now and, in the same durable
 * transaction, sets meta `key` to `value` when key is not NULL (the event
 * sequence mark: "clean" and "mark written" are then one fact).  Waits. */
int lyra_store_session_end(struct lyra_store *st, const char *id, const char *key, uint64_t value,
                           struct lyra_err *err);

/* Small key/value table for daemon bookkeeping (the event seq reservation).
 * get: 0, LYRA_ENOTFOUND or LYRA_EDB.  Both wait. */
int lyra_store_meta_get_u64(struct lyra_store *st, const char *key, uint64_t *value, struct lyra_err *err);
int lyra_store_meta_set_u64(struct lyra_store *st, const char *key, uint64_t value, int flags,
                            struct lyra_err *err);

/* Result of an asynchronous meta write: rc, detail, and the value written. */
typedef void (*lyra_store_meta_done_fn)(int rc, const struct lyra_err *err, uint64_t value, void *ud);

/* Queues the write of meta `key` (copied) = value; done (may be NULL) runs
 * on the database thread with the result.  Never blocks.  Returns 0, or
 * LYRA_ENOMEM / LYRA_EUNAVAILABLE when nothing was queued (done not
 * called). */
int lyra_store_meta_set_u64_async(struct lyra_store *st, const char *key, uint64_t value, int flags,
                                  lyra_store_meta_done_fn done, void *ud);

/* Text values in the same table (the model cache's resident set).  get:
 * *value is malloc'd (caller frees); 0, LYRA_ENOTFOUND or LYRA_EDB; waits.
 * set_async: key and text copied; never blocks; 0 or LYRA_ENOMEM /
 * LYRA_EUNAVAILABLE when nothing was queued.  A failed write is logged. */
int lyra_store_meta_get_text(struct lyra_store *st, const char *key, char **value, struct lyra_err *err);
int lyra_store_meta_set_text_async(struct lyra_store *st, const char *key, const char *text, int flags);

/* Runs PRAGMA quick_check; 0 when the database is sound.  Waits. */
int lyra_store_check(struct lyra_store *st, struct lyra_err *err);

#endif
