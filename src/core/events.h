/* events.h — the in-process event bus: typed events, strictly increasing
 * sequence numbers, a replay ring with a count and a byte budget, and
 * synchronous subscribers.
 *
 * An event is {seq, ts, type, source, data}.  `type` is dotted
 * ("model.loaded"); subscribers pick types with patterns: "model.*",
 * "model.loaded", "*", or a comma-separated list of those.
 *
 * Sequence numbers are strictly increasing also across restarts, crashes
 * and power loss.  The daemon keeps a durable reservation R in its database
 * ("numbers up to R may be in use"); the bus asks for the next block
 * (reserve callback) when half of the current one is used, so a publisher
 * does not wait for the disk in the common case.  When the block runs out
 * before the next reservation is durable, a publisher waits for it up to
 * `wait_ms`; after that, or at once while reservations are failing, it goes
 * on with numbers above R — at most `margin` (LYRA_BUS_SEQ_MARGIN) of them,
 * logged as unreserved; beyond that margin events are dropped (publish returns 0)
 * rather than numbered without cover.  A daemon that starts after an
 * unclean end therefore starts at R + LYRA_BUS_SEQ_MARGIN, above any number
 * the crashed run can have used (server.c).  Failed reservations are retried
 * at the next publish at least `retry_ms` after the failure.
 *
 * Thread-safety: every function but lyra_bus_new/free is thread-safe.
 * Subscriber callbacks run on the publishing thread with the bus lock held,
 * in seq order: they must be quick, must not block (no store waits), and
 * must not call back into the bus (hand the event to a queue instead).
 * lyra_bus_publish never waits for the disk; it may wait up to `wait_ms`
 * only when a block is exhausted (see above).  Do not publish from the
 * store's database thread: its wait would be for itself. */
#ifndef LYRA_EVENTS_H
#define LYRA_EVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How far past a durable reservation a run may number events; also what a
 * start after an unclean end skips. */
#define LYRA_BUS_SEQ_MARGIN 1000000ULL
/* The daemon's defaults for lyra_bus_options. */
#define LYRA_BUS_SEQ_BLOCK 1000
#define LYRA_BUS_WAIT_MS 1000
#define LYRA_BUS_RETRY_MS 1000

struct lyra_event {
    uint64_t seq;
    int64_t ts_ms; /* wall clock */
    char type[64];
    char source[32];
    json_t *data; /* owned by the bus; incref to keep */
    size_t bytes; /* what the event costs in the ring's byte budget */
};

struct lyra_bus;

/* Asks for numbers up to `through` to be reserved durably.  Must not block:
 * queue the write and, when it is done (any thread, or even inside this
 * call), report with lyra_bus_reserved(bus, through, ok).  Called without
 * the bus lock; at most one request is in flight at a time. */
typedef void (*lyra_bus_reserve_fn)(struct lyra_bus *bus, uint64_t through, void *ud);

typedef void (*lyra_bus_subscriber_fn)(const struct lyra_event *ev, void *ud);

struct lyra_bus_options {
    size_t ring_size;     /* events kept for replay (0 counts as 1) */
    size_t ring_bytes;    /* byte budget of the ring; 0 = no budget */
    uint64_t start_after; /* the first event gets start_after + 1 */
    /* With reserve: numbers up to here are durably reserved already
     * (>= start_after).  reserve NULL: numbers are not persisted. */
    uint64_t reserved_through;
    lyra_bus_reserve_fn reserve;
    void *reserve_ud;
    uint64_t block; /* numbers per reservation (>= 2) */
    int wait_ms;    /* bound on a publisher's wait at exhaustion; 0 = never wait */
    int retry_ms;   /* least time between a failure and its retry; 0 = next publish */
    /* How many numbers above the durable reservation may be used when it is
     * failing or late (0: none, drop instead).  The daemon passes
     * LYRA_BUS_SEQ_MARGIN, which is also what its restart skips. */
    uint64_t margin;
};

/* Creates a bus (options copied).  Returns NULL on allocation failure. */
struct lyra_bus *lyra_bus_new(const struct lyra_bus_options *opts);
/* Frees the bus and the events in its ring.  No reservation may still be
 * in flight (close the store first).  NULL is a no-op. */
void lyra_bus_free(struct lyra_bus *bus);

/* Publishes an event; takes the reference to `data` (NULL = {}).  Returns
 * its seq, or 0 when the event was dropped (no number could be covered by
 * a reservation: see above; data is released). */
uint64_t lyra_bus_publish(struct lyra_bus *bus, const char *type, const char *source, json_t *data);

/* Result of a reserve request: with ok, numbers up to `through` are durably
 * reserved.  Any thread. */
void lyra_bus_reserved(struct lyra_bus *bus, uint64_t through, bool ok);

/* Adds a subscriber for `patterns` (copied).  Returns an id > 0, or 0 on
 * failure. */
int lyra_bus_subscribe(struct lyra_bus *bus, const char *patterns, lyra_bus_subscriber_fn fn, void *ud);
void lyra_bus_unsubscribe(struct lyra_bus *bus, int id);

/* Calls fn for each event still in the ring with seq > since that matches
 * patterns (NULL = all), oldest first, under the bus lock.  *first_seq (when
 * not NULL) gets where the ring starts: every event of this bus with
 * seq >= *first_seq is still there, so events between since and *first_seq
 * are lost to replay (evicted by the count or the byte budget, too large
 * to keep, or from before the bus started).  Returns how many were
 * delivered. */
size_t lyra_bus_replay(struct lyra_bus *bus, uint64_t since, const char *patterns, lyra_bus_subscriber_fn fn,
                       void *ud, uint64_t *first_seq);

/* Replays then subscribes atomically (no gap, no duplicate); *first_seq as
 * for lyra_bus_replay.  Returns the id (0 on failure). */
int lyra_bus_replay_and_subscribe(struct lyra_bus *bus, uint64_t since, const char *patterns,
                                  lyra_bus_subscriber_fn fn, void *ud, uint64_t *first_seq);

uint64_t lyra_bus_last_seq(struct lyra_bus *bus);

/* The bus's numbering and ring, for /status and tests. */
struct lyra_bus_stats {
    uint64_t last_seq;
    uint64_t reserved_through;     /* durable reservation (0 without persistence) */
    bool reserving;                /* a reservation is in flight */
    int waiting;                   /* publishers waiting for it (block exhausted) */
    bool failing;                  /* the last reservation failed */
    uint64_t reservation_failures; /* since start */
    uint64_t unreserved;           /* numbers used above the durable reservation */
    uint64_t dropped;              /* events not published for want of a covered number */
    uint64_t first_seq;            /* as lyra_bus_replay reports it */
    size_t ring_count, ring_bytes;
};
void lyra_bus_stats(struct lyra_bus *bus, struct lyra_bus_stats *out);

/* True if `type` matches one of the comma-separated `patterns`. */
bool lyra_event_type_matches(const char *patterns, const char *type);

/* The event as a JSON object {seq, ts, type, source, data}; caller decrefs. */
json_t *lyra_event_to_json(const struct lyra_event *ev);

#endif
