/* events.c — publish/subscribe with a replay ring and persisted sequence
 * numbers.  One mutex guards everything; subscribers are called under it so
 * that every subscriber sees events in seq order.
 *
 * Numbering (see events.h): `reserved_through` is the durable reservation
 * R.  A publish that finds fewer than block/2 numbers left asks for the next
 * block; the request runs outside the lock and its answer comes back through
 * lyra_bus_reserved().  Numbers above R are
 * used only when the reservation is failing or late (at most `margin` of
 * them); the restart after an unclean end skips LYRA_BUS_SEQ_MARGIN. */
#include "core/events.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/util.h"

/* A dropped event is logged at most this often. */
#define DROP_LOG_INTERVAL_MS 1000

struct subscriber {
    int id;
    char *patterns;
    lyra_bus_subscriber_fn fn;
    void *ud;
    struct subscriber *next;
};

struct lyra_bus {
    pthread_mutex_t lock;
    pthread_cond_t reserved_cond; /* a reservation came back */
    struct lyra_bus_options o;
    uint64_t last_seq;
    uint64_t reserved_through; /* durable: numbers up to here may be used */
    bool reserving;            /* a request is in flight */
    bool failing;              /* the last request failed */
    bool late;                 /* a publisher waited out wait_ms: do not wait again until one lands */
    bool unreserved_logged;    /* this episode of numbers above R has been logged */
    int waiting;               /* publishers in wait_until_locked */
    int64_t failed_at_ms;
    int64_t drop_logged_ms;
    uint64_t failures, unreserved, dropped;
    struct lyra_event *ring;
    size_t ring_count, ring_head; /* head = index of the next write */
    size_t ring_bytes;            /* sum of the kept events' bytes */
    uint64_t first_seq;
    struct subscriber *subs;
    int next_id;
};

struct lyra_bus *lyra_bus_new(const struct lyra_bus_options *opts)
{
    struct lyra_bus *bus = calloc(1, sizeof *bus);
    if (!bus)
        return NULL;
    bus->o = *opts;
    if (bus->o.ring_size == 0)
        bus->o.ring_size = 1;
    if (bus->o.block < 2)
        bus->o.block = 2;
    bus->ring = calloc(bus->o.ring_size, sizeof *bus->ring);
    if (!bus->ring) {
        free(bus);
        return NULL;
    }
    pthread_mutex_init(&bus->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&bus->reserved_cond, &ca);
    pthread_condattr_destroy(&ca);
    bus->last_seq = opts->start_after;
    bus->reserved_through = opts->reserve ? opts->reserved_through : 0;
    bus->first_seq = opts->start_after + 1;
    bus->next_id = 1;
    return bus;
}

void lyra_bus_free(struct lyra_bus *bus)
{
    if (!bus)
        return;
    for (size_t i = 0; i < bus->o.ring_size; i++)
        json_decref(bus->ring[i].data);
    free(bus->ring);
    struct subscriber *s = bus->subs;
    while (s) {
        struct subscriber *next = s->next;
        free(s->patterns);
        free(s);
        s = next;
    }
    pthread_cond_destroy(&bus->reserved_cond);
    pthread_mutex_destroy(&bus->lock);
    free(bus);
}

bool lyra_event_type_matches(const char *patterns, const char *type)
{
    if (!patterns || !*patterns)
        return true;
    const char *p = patterns;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && *p == ' ')
            p++, len--;
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == 1 && p[0] == '*')
            return true;
        if (len >= 1 && p[len - 1] == '*') {
            if (strncmp(type, p, len - 1) == 0)
                return true;
        } else if (strlen(type) == len && strncmp(type, p, len) == 0) {
            return true;
        }
        if (!end)
            break;
        p = end + 1;
    }
    return false;
}

/* May a (new) request be sent now?  Not while one is in flight; after a
 * failure, only once retry_ms have passed. */
static bool may_request_locked(const struct lyra_bus *bus)
{
    return !bus->reserving &&
           (!bus->failing || lyra_now_ms() - bus->failed_at_ms >= (int64_t)bus->o.retry_ms);
}

/* Marks a request in flight and returns what it asks for: a block beyond
 * both the reservation and the number about to be used. */
static uint64_t start_request_locked(struct lyra_bus *bus, uint64_t seq)
{
    bus->reserving = true;
    return (seq > bus->reserved_through ? seq : bus->reserved_through) + bus->o.block;
}

/* Waits on the reservation condition until deadline_ms (monotonic). */
static void wait_until_locked(struct lyra_bus *bus, int64_t deadline_ms)
{
    struct timespec ts = {(time_t)(deadline_ms / 1000), (long)(deadline_ms % 1000) * 1000000L};
    bus->waiting++;
    pthread_cond_timedwait(&bus->reserved_cond, &bus->lock, &ts);
    bus->waiting--;
}

/* Picks the number for the next event, asking for and (within wait_ms)
 * waiting on a reservation when the block is exhausted.  Returns 0 when no
 * number can be covered.  *request gets the reservation to ask for after
 * the lock is released (0: none).  Called with the lock held; may drop it
 * while it asks or waits. */
static uint64_t next_seq_locked(struct lyra_bus *bus, uint64_t *request)
{
    *request = 0;
    uint64_t seq = bus->last_seq + 1;
    if (!bus->o.reserve)
        return seq;
    int64_t deadline = 0;
    bool asked = false;
    while ((seq = bus->last_seq + 1) > bus->reserved_through) {
        if (!asked && may_request_locked(bus)) {
            asked = true;
            uint64_t through = start_request_locked(bus, seq);
            pthread_mutex_unlock(&bus->lock);
            bus->o.reserve(bus, through, bus->o.reserve_ud);
            pthread_mutex_lock(&bus->lock);
            continue;
        }
        if (!bus->reserving || bus->failing || bus->late || bus->o.wait_ms <= 0)
            break;
        int64_t now = lyra_now_ms();
        if (!deadline)
            deadline = now + bus->o.wait_ms;
        if (now >= deadline) {
            bus->late = true;
            lyra_log(LYRA_LOG_WARN, "events", NULL,
                     json_pack("{s:I, s:I}", "reserved_through", (json_int_t)bus->reserved_through, "seq",
                               (json_int_t)seq),
                     "event sequence reservation took longer than %d ms: numbering above it", bus->o.wait_ms);
            break;
        }
        wait_until_locked(bus, deadline);
    }
    if (seq > bus->reserved_through) {
        if (seq - bus->reserved_through > bus->o.margin) {
            bus->dropped++;
            int64_t now = lyra_now_ms();
            if (now - bus->drop_logged_ms >= DROP_LOG_INTERVAL_MS) {
                bus->drop_logged_ms = now;
                lyra_log(LYRA_LOG_ERROR, "events", NULL,
                         json_pack("{s:I, s:I}", "reserved_through", (json_int_t)bus->reserved_through,
                                   "dropped", (json_int_t)bus->dropped),
                         "event dropped: no number left that a durable reservation or the restart margin "
                         "(%llu) covers; event numbers cannot be reserved (is the database writable?)",
                         (unsigned long long)bus->o.margin);
            }
            return 0;
        }
        bus->unreserved++;
        if (!bus->unreserved_logged) {
            bus->unreserved_logged = true;
            lyra_log(LYRA_LOG_ERROR, "events", NULL,
                     json_pack("{s:I, s:I}", "reserved_through", (json_int_t)bus->reserved_through, "seq",
                               (json_int_t)seq),
                     "event numbers above the durable reservation are in use (it is failing or late); a "
                     "restart after a crash skips %llu numbers to stay above them",
                     (unsigned long long)bus->o.margin);
        }
    }
    /* Ahead of need: half the block used, ask for the next one. */
    if (bus->reserved_through - (seq < bus->reserved_through ? seq : bus->reserved_through) <=
            bus->o.block / 2 &&
        may_request_locked(bus))
        *request = start_request_locked(bus, seq);
    return seq;
}

/* What an event costs in the ring's byte budget: about its JSON size. */
static size_t event_bytes(const char *type, const char *source, const json_t *data)
{
    return json_dumpb(data, NULL, 0, JSON_COMPACT) + strlen(type) + strlen(source) + 64;
}

/* Drops the oldest event of the ring (which must hold one); first_seq moves past it.  Lock held. */
static void evict_oldest_locked(struct lyra_bus *bus)
{
    size_t idx = (bus->ring_head + bus->o.ring_size - bus->ring_count) % bus->o.ring_size;
    struct lyra_event *ev = &bus->ring[idx];
    if (ev->seq + 1 > bus->first_seq)
        bus->first_seq = ev->seq + 1;
    bus->ring_bytes -= ev->bytes;
    json_decref(ev->data);
    ev->data = NULL;
    bus->ring_count--;
}

uint64_t lyra_bus_publish(struct lyra_bus *bus, const char *type, const char *source, json_t *data)
{
    if (!data)
        data = json_object();
    if (!source)
        source = "";
    size_t bytes = event_bytes(type, source, data);
    pthread_mutex_lock(&bus->lock);
    uint64_t request;
    uint64_t seq = next_seq_locked(bus, &request);
    if (seq == 0) {
        pthread_mutex_unlock(&bus->lock);
        json_decref(data);
        return 0;
    }
    bus->last_seq = seq;
    size_t budget = bus->o.ring_bytes;
    struct lyra_event tmp, *ev = &tmp;
    if (budget && bytes > budget) {
        /* Too large to keep: delivered live, lost to replay. */
        bus->first_seq = seq + 1;
    } else {
        while (bus->ring_count > 0 &&
               (bus->ring_count == bus->o.ring_size || (budget && bus->ring_bytes + bytes > budget)))
            evict_oldest_locked(bus);
        ev = &bus->ring[bus->ring_head];
        bus->ring_head = (bus->ring_head + 1) % bus->o.ring_size;
        bus->ring_count++;
        bus->ring_bytes += bytes;
    }
    ev->seq = seq;
    ev->ts_ms = lyra_wall_ms();
    snprintf(ev->type, sizeof ev->type, "%.*s", (int)lyra_utf8_clip(type, sizeof ev->type - 1), type);
    snprintf(ev->source, sizeof ev->source, "%.*s", (int)lyra_utf8_clip(source, sizeof ev->source - 1),
             source);
    ev->data = data;
    ev->bytes = bytes;
    for (struct subscriber *s = bus->subs; s; s = s->next)
        if (lyra_event_type_matches(s->patterns, ev->type))
            s->fn(ev, s->ud);
    if (ev == &tmp)
        json_decref(data);
    pthread_mutex_unlock(&bus->lock);
    if (request)
        bus->o.reserve(bus, request, bus->o.reserve_ud);
    return seq;
}

void lyra_bus_reserved(struct lyra_bus *bus, uint64_t through, bool ok)
{
    pthread_mutex_lock(&bus->lock);
    bus->reserving = false;
    if (ok) {
        if (through > bus->reserved_through)
            bus->reserved_through = through;
        if (bus->failing || bus->late || bus->unreserved_logged)
            lyra_log(LYRA_LOG_INFO, "events", NULL,
                     json_pack("{s:I, s:I}", "reserved_through", (json_int_t)bus->reserved_through,
                               "last_seq", (json_int_t)bus->last_seq),
                     "event sequence reservation works again");
        bus->failing = false;
        bus->late = false;
        if (bus->last_seq <= bus->reserved_through)
            bus->unreserved_logged = false;
    } else {
        bus->failing = true;
        bus->failures++;
        bus->failed_at_ms = lyra_now_ms();
    }
    pthread_cond_broadcast(&bus->reserved_cond);
    pthread_mutex_unlock(&bus->lock);
}

static int subscribe_locked(struct lyra_bus *bus, const char *patterns, lyra_bus_subscriber_fn fn, void *ud)
{
    struct subscriber *s = calloc(1, sizeof *s);
    if (!s)
        return 0;
    s->patterns = strdup(patterns ? patterns : "*");
    if (!s->patterns) {
        free(s);
        return 0;
    }
    s->fn = fn;
    s->ud = ud;
    s->id = bus->next_id++;
    /* Append, so subscribers are called in subscription order. */
    struct subscriber **pp = &bus->subs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = s;
    return s->id;
}

int lyra_bus_subscribe(struct lyra_bus *bus, const char *patterns, lyra_bus_subscriber_fn fn, void *ud)
{
    pthread_mutex_lock(&bus->lock);
    int id = subscribe_locked(bus, patterns, fn, ud);
    pthread_mutex_unlock(&bus->lock);
    return id;
}

void lyra_bus_unsubscribe(struct lyra_bus *bus, int id)
{
    pthread_mutex_lock(&bus->lock);
    for (struct subscriber **pp = &bus->subs; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct subscriber *s = *pp;
            *pp = s->next;
            free(s->patterns);
            free(s);
            break;
        }
    }
    pthread_mutex_unlock(&bus->lock);
}

static size_t replay_locked(struct lyra_bus *bus, uint64_t since, const char *patterns,
                            lyra_bus_subscriber_fn fn, void *ud, uint64_t *first_seq)
{
    size_t delivered = 0;
    size_t start = (bus->ring_head + bus->o.ring_size - bus->ring_count) % bus->o.ring_size;
    for (size_t i = 0; i < bus->ring_count; i++) {
        const struct lyra_event *ev = &bus->ring[(start + i) % bus->o.ring_size];
        if (ev->seq > since && lyra_event_type_matches(patterns, ev->type)) {
            fn(ev, ud);
            delivered++;
        }
    }
    if (first_seq)
        *first_seq = bus->first_seq;
    return delivered;
}

size_t lyra_bus_replay(struct lyra_bus *bus, uint64_t since, const char *patterns, lyra_bus_subscriber_fn fn,
                       void *ud, uint64_t *first_seq)
{
    pthread_mutex_lock(&bus->lock);
    size_t n = replay_locked(bus, since, patterns, fn, ud, first_seq);
    pthread_mutex_unlock(&bus->lock);
    return n;
}

int lyra_bus_replay_and_subscribe(struct lyra_bus *bus, uint64_t since, const char *patterns,
                                  lyra_bus_subscriber_fn fn, void *ud, uint64_t *first_seq)
{
    pthread_mutex_lock(&bus->lock);
    replay_locked(bus, since, patterns, fn, ud, first_seq);
    int id = subscribe_locked(bus, patterns, fn, ud);
    pthread_mutex_unlock(&bus->lock);
    return id;
}

uint64_t lyra_bus_last_seq(struct lyra_bus *bus)
{
    pthread_mutex_lock(&bus->lock);
    uint64_t s = bus->last_seq;
    pthread_mutex_unlock(&bus->lock);
    return s;
}

void lyra_bus_stats(struct lyra_bus *bus, struct lyra_bus_stats *out)
{
    pthread_mutex_lock(&bus->lock);
    *out = (struct lyra_bus_stats){
        .last_seq = bus->last_seq,
        .reserved_through = bus->reserved_through,
        .reserving = bus->reserving,
        .waiting = bus->waiting,
        .failing = bus->failing,
        .reservation_failures = bus->failures,
        .unreserved = bus->unreserved,
        .dropped = bus->dropped,
        .first_seq = bus->first_seq,
        .ring_count = bus->ring_count,
        .ring_bytes = bus->ring_bytes,
    };
    pthread_mutex_unlock(&bus->lock);
}

json_t *lyra_event_to_json(const struct lyra_event *ev)
{
    char ts[40];
    lyra_format_ts(ev->ts_ms, ts, sizeof ts);
    /* A copy of the data: the ring may release the event on another thread
     * while the caller still encodes this object. */
    return json_pack("{s:I, s:s, s:s, s:s, s:o}", "seq", (json_int_t)ev->seq, "ts", ts, "type", ev->type,
                     "source", ev->source, "data", ev->data ? json_deep_copy(ev->data) : json_object());
}
