/* events.h — the in-process event bus: typed events, strictly increasing
 * sequence numbers, a replay ring, and synchronous subscribers.
 *
 * An event is {seq, ts, type, source, data}.  `type` is dotted
 * ("model.loaded"); subscribers pick types with patterns: "model.*",
 * "model.loaded", "*", or a comma-separated list of those.
 *
 * Sequence numbers are strictly increasing also across restarts: the bus
 * starts after a persisted high-water mark and reserves numbers in blocks
 * through a callback (the daemon stores the reservation in SQLite), so even
 * a crash never reuses a number.
 *
 * Thread-safety: publish/subscribe/unsubscribe/replay/last_seq are
 * thread-safe.  Subscriber callbacks run on the publishing thread with the
 * bus lock held, in seq order: they must be quick, must not block, and must
 * not call back into the bus (hand the event to a queue instead). */
#ifndef LYRA_EVENTS_H
#define LYRA_EVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lyra_event {
    uint64_t seq;
    int64_t ts_ms;      /* wall clock */
    char type[64];
    char source[32];
    json_t *data;       /* owned by the bus; incref to keep */
};

/* Called when the bus needs sequence numbers beyond `reserved_through`:
 * persists a new high-water mark and returns it (> current), or 0 on failure
 * (the bus then goes on without persistence). */
typedef uint64_t (*lyra_bus_reserve_fn)(uint64_t reserved_through, void *ud);

typedef void (*lyra_bus_subscriber_fn)(const struct lyra_event *ev, void *ud);

struct lyra_bus;

/* Creates a bus whose first event gets seq `start_after + 1` and that keeps
 * the last `ring_size` events for replay.  `reserve` may be NULL.  Returns
 * NULL on allocation failure. */
struct lyra_bus *lyra_bus_new(size_t ring_size, uint64_t start_after, lyra_bus_reserve_fn reserve,
                              void *reserve_ud);
void lyra_bus_free(struct lyra_bus *bus);

/* Publishes an event; takes the reference to `data` (NULL = {}).  Returns
 * its seq. */
uint64_t lyra_bus_publish(struct lyra_bus *bus, const char *type, const char *source, json_t *data);

/* Adds a subscriber for `patterns` (copied).  Returns an id > 0, or 0 on
 * failure. */
int lyra_bus_subscribe(struct lyra_bus *bus, const char *patterns, lyra_bus_subscriber_fn fn,
                       void *ud);
void lyra_bus_unsubscribe(struct lyra_bus *bus, int id);

/* Calls fn for each event still in the ring with seq > since that matches
 * patterns (NULL = all), oldest first, under the bus lock so that no event
 * is missed or repeated between a replay and a subscribe made under
 * lyra_bus_replay_and_subscribe.  Returns how many were delivered. */
size_t lyra_bus_replay(struct lyra_bus *bus, uint64_t since, const char *patterns,
                       lyra_bus_subscriber_fn fn, void *ud);

/* Replays then subscribes atomically (no gap, no duplicate). Returns the id. */
int lyra_bus_replay_and_subscribe(struct lyra_bus *bus, uint64_t since, const char *patterns,
                                  lyra_bus_subscriber_fn fn, void *ud);

uint64_t lyra_bus_last_seq(struct lyra_bus *bus);

/* True if `type` matches one of the comma-separated `patterns`. */
bool lyra_event_type_matches(const char *patterns, const char *type);

/* The event as a JSON object {seq, ts, type, source, data}; caller decrefs. */
json_t *lyra_event_to_json(const struct lyra_event *ev);

#endif
