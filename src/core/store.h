/* store.h — Lyra's state on disk: one SQLite database in WAL mode.
 *
 * lyra_store_open() applies the schema migrations whose number is above the
 * database's `PRAGMA user_version`, each in its own transaction, so a crash
 * mid-migration leaves the previous version intact.  The sessions table
 * records every run of the daemon (id, start, end, clean): a session left
 * open by a previous run means that run ended uncleanly (crash, kill -9,
 * power loss); lyra_store_session_begin() reports it and closes it as
 * unclean.
 *
 * Thread-safety: the connection is opened in serialized mode; every function
 * may be called from any thread. */
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

/* Opens (creating if needed) the database at path and migrates it.  Returns
 * NULL with err set when the file cannot be opened, is not a database, or a
 * migration fails. */
struct lyra_store *lyra_store_open(const char *path, struct lyra_err *err);
void lyra_store_close(struct lyra_store *st);

/* Schema version after migrations (PRAGMA user_version). */
int lyra_store_schema_version(struct lyra_store *st);

/* Starts a session with a fresh id (written to id_out).  If earlier sessions
 * were left open, the most recent is copied to *unclean (when not NULL),
 * *n_unclean gets their count, and all are marked ended uncleanly. */
int lyra_store_session_begin(struct lyra_store *st, const char *version, char id_out[40],
                             struct lyra_session_info *unclean, int *n_unclean, struct lyra_err *err);

/* Marks the session as ended cleanly now. */
int lyra_store_session_end(struct lyra_store *st, const char *id, struct lyra_err *err);

/* Small key/value table for daemon bookkeeping (event seq reservations). */
int lyra_store_meta_get_u64(struct lyra_store *st, const char *key, uint64_t *value);
int lyra_store_meta_set_u64(struct lyra_store *st, const char *key, uint64_t value);

/* Runs PRAGMA quick_check; 0 when the database is sound. */
int lyra_store_check(struct lyra_store *st, struct lyra_err *err);

/* The underlying handle, for modules that own their own tables (borrowed). */
struct sqlite3 *lyra_store_db(struct lyra_store *st);

#endif
