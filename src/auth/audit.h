/* audit.h — the append-only audit log: every admin action and every
 * authentication or authorization failure, as a row of the SQLite table
 * `audit` (migration 6: UPDATE and DELETE are refused by triggers) and as
 * an event on the bus (type "audit.recorded" for actions, "auth.denied" for
 * failures; data = the row as JSON).
 *
 * A row: id (increasing), ts_ms, principal ("" when unauthenticated),
 * key_id, action (e.g. "POST /models/{name}/load", or "auth.failed"),
 * target (the route's {name}/{id} parameter or the model; may be ""),
 * result ("ok", "denied", "failed", "error"), status (the HTTP status),
 * client (the peer address), request_id, detail (short text, e.g. the
 * failure code or missing permission; never a key or a body).
 *
 * Writes are asynchronous (lyra_store_submit), so recording never makes a
 * request wait for the disk; a write that fails is logged, not retried.
 * Every text field is clipped at a UTF-8 boundary (util.h) before it is
 * stored.
 *
 * Thread-safety: lyra_audit_record and lyra_audit_query from any thread;
 * new/free from the controlling thread. */
#ifndef LYRA_AUDIT_H
#define LYRA_AUDIT_H

#include <jansson.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_store;
struct lyra_bus;
struct lyra_audit;

struct lyra_audit_entry {
    const char *principal;  /* NULL = "" */
    const char *key_id;
    const char *action;
    const char *target;
    const char *result;     /* "ok", "denied", "failed", "error" */
    int status;             /* HTTP status */
    const char *client;
    const char *request_id;
    const char *detail;
};

/* store and bus borrowed (bus may be NULL: no events). */
struct lyra_audit *lyra_audit_new(struct lyra_store *store, struct lyra_bus *bus);
void lyra_audit_free(struct lyra_audit *au);

/* Appends one row (fields copied) and publishes its event: "auth.denied"
 * when result is "denied" and the action is an authentication or
 * authorization failure (action starts with "auth."), else
 * "audit.recorded".  Returns 0 or LYRA_ENOMEM / LYRA_EUNAVAILABLE (store
 * closing). */
int lyra_audit_record(struct lyra_audit *au, const struct lyra_audit_entry *e);

struct lyra_audit_filter {
    const char *principal;  /* exact; NULL = any */
    const char *action;     /* exact or prefix ending in '*' */
    const char *result;
    const char *client;
    int64_t since_ms, until_ms; /* 0 = unbounded */
    int64_t before_id;      /* rows with id < before_id (paging); 0 = newest */
    int limit;              /* 1..1000; 0 = 100 */
};

/* Rows matching f, newest first: *out = {"entries":[row...],
 * "next_before_id": id|null} (caller decrefs).  Waits for the rows recorded
 * before the call to be written (they go through the same queue). */
int lyra_audit_query(struct lyra_audit *au, const struct lyra_audit_filter *f, json_t **out, struct lyra_err *err);

#endif
