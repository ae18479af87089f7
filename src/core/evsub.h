/* evsub.h — one client's view of the event stream: the events after a
 * given seq (from the bus's memory ring, else from the database, which
 * keeps the last events.keep of them across restarts), then live events,
 * through a bounded queue.
 *
 * A slow client never slows a publisher: the bus hands each live event to
 * the subscription's queue and returns.  When the queue is full (max_queued
 * events, or max_bytes of event text), the subscription drops what it holds
 * and, at that place in the stream, yields one synthetic event
 *   {"seq":S,"ts":...,"type":"stream.gap","source":"events",
 *    "data":{"resume_from":R,"dropped":N}}
 * where R is the seq of the last event the client received (so a reconnect
 * with ?since=R, or Last-Event-ID: R, gets everything it missed), and S is
 * R too (a gap has no seq of its own).  The stream then goes on live.
 * The byte bound holds for a replay too: a replay larger than max_bytes
 * stops there with a gap, and the client resumes from it with a new
 * subscription — so a client's memory is bounded by max_bytes whatever it
 * asks for and however slowly it reads.
 *
 * Thread-safety: lyra_evsub_new/free on any thread; next and pending may be
 * called from one consumer thread at a time; notify runs on a publishing
 * thread (must not block, must not call back into the subscription except
 * lyra_evsub_pending). */
#ifndef LYRA_EVSUB_H
#define LYRA_EVSUB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"

struct lyra_store;
struct lyra_evsub;

/* `since` for a subscription that wants only live events. */
#define LYRA_EVSUB_LIVE UINT64_MAX

/* Events are waiting (called when the queue goes from empty to non-empty,
 * and once after new() when a replay is waiting). */
typedef void (*lyra_evsub_notify_fn)(void *ud);

/* Subscribes to `patterns` (NULL or "*" = all; comma-separated; checked:
 * LYRA_EINVAL with err for a bad pattern) after `since`.  store may be NULL
 * (replay from the ring only).  max_queued 0 = 1024 events; max_bytes 0 =
 * 1 MiB. */
int lyra_evsub_new(struct lyra_bus *bus, struct lyra_store *store, uint64_t since, const char *patterns,
                   size_t max_queued, size_t max_bytes, lyra_evsub_notify_fn notify, void *ud,
                   struct lyra_evsub **out, struct lyra_err *err);

/* Decides whether the subscriber sees an event: its type and its data
 * (the payload; NULL when it has none).  Runs on the publishing thread
 * under the bus lock (it must not block or publish), and on the
 * subscribing thread for replayed events. */
typedef bool (*lyra_evsub_filter_fn)(const char *type, const json_t *data, void *ud);

/* As lyra_evsub_new, with a filter (NULL = every event) and its ud. */
int lyra_evsub_new_filtered(struct lyra_bus *bus, struct lyra_store *store, uint64_t since, const char *patterns,
                            size_t max_queued, size_t max_bytes, lyra_evsub_notify_fn notify, void *ud,
                            lyra_evsub_filter_fn filter, void *filter_ud, struct lyra_evsub **out,
                            struct lyra_err *err);

/* The next event as compact JSON text (caller frees) and its seq: 0, or
 * LYRA_ENOTFOUND when none is waiting now. */
int lyra_evsub_next(struct lyra_evsub *s, char **json, uint64_t *seq);

/* True when lyra_evsub_next would return an event. */
bool lyra_evsub_pending(struct lyra_evsub *s);

/* Unsubscribes and frees; notify is not called after it returns.  NULL is
 * a no-op. */
void lyra_evsub_free(struct lyra_evsub *s);

/* Checks a comma-separated type filter ("model.*,job.*"): letters, digits,
 * '.', '_', '-', and '*' only as a whole last segment. */
bool lyra_evsub_patterns_valid(const char *patterns);

#endif
