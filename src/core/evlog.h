/* evlog.h — the event log: every event the bus publishes is also written to
 * the database (table `events`), so that a client can replay what it missed
 * across a restart of the daemon.  The last `keep` events are kept; older
 * ones are deleted, and the highest deleted seq is remembered (meta
 * `events.pruned_through`) so that a replay can tell a client that events
 * after its seq are gone.
 *
 * Writes never hold up a publisher: the bus subscriber appends the event's
 * JSON to a pending list and, when no write is in flight, queues one job on
 * the database thread that writes everything pending in one transaction.
 * If the database refuses writes, the events stay in the bus's memory ring
 * only (logged once per failure run); the pending list is bounded (events
 * beyond LYRA_EVLOG_MAX_PENDING are not persisted).
 *
 * Thread-safety: every function is thread-safe. */
#ifndef LYRA_EVLOG_H
#define LYRA_EVLOG_H

#include <stdint.h>

#include "core/error.h"
#include "core/events.h"

struct lyra_store;
struct lyra_evlog;

#define LYRA_EVLOG_MAX_PENDING 100000

/* Subscribes to every event of `bus` and writes them to `store`, keeping
 * the last `keep` (>= 1). */
int lyra_evlog_new(struct lyra_bus *bus, struct lyra_store *store, uint64_t keep, struct lyra_evlog **out,
                   struct lyra_err *err);

/* Unsubscribes, writes what is pending (waits), frees.  Call before the
 * store closes.  NULL is a no-op. */
void lyra_evlog_free(struct lyra_evlog *log);

/* Called for each stored event in seq order: its seq, type and JSON text
 * (borrowed for the call). */
typedef void (*lyra_evlog_row_fn)(uint64_t seq, const char *type, const char *json, void *ud);

/* Replays stored events with since < seq < before that match `patterns`
 * (NULL = all), oldest first, on the database thread (waits).
 * *pruned_through gets the highest seq deleted by retention (0 if none).
 * Returns how many were delivered, or a negative LYRA_E*. */
long lyra_evlog_replay(struct lyra_store *store, uint64_t since, uint64_t before, const char *patterns,
                       lyra_evlog_row_fn fn, void *ud, uint64_t *pruned_through, struct lyra_err *err);

#endif
