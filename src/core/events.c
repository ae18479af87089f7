/* events.c — publish/subscribe with a replay ring and persisted sequence
 * numbers.  One mutex guards everything; subscribers are called under it so
 * that every subscriber sees events in seq order. */
#include "core/events.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define SEQ_BLOCK 1000

struct subscriber {
    int id;
    char *patterns;
    lyra_bus_subscriber_fn fn;
    void *ud;
    struct subscriber *next;
};

struct lyra_bus {
    pthread_mutex_t lock;
    uint64_t last_seq;
    uint64_t reserved_through;  /* numbers up to here are persisted as used */
    lyra_bus_reserve_fn reserve;
    void *reserve_ud;
    struct lyra_event *ring;
    size_t ring_size, ring_count, ring_head; /* head = index of the next write */
    struct subscriber *subs;
    int next_id;
};

struct lyra_bus *lyra_bus_new(size_t ring_size, uint64_t start_after, lyra_bus_reserve_fn reserve,
                              void *reserve_ud)
{
    struct lyra_bus *bus = calloc(1, sizeof *bus);
    if (!bus)
        return NULL;
    if (ring_size == 0)
        ring_size = 1;
    bus->ring = calloc(ring_size, sizeof *bus->ring);
    if (!bus->ring) {
        free(bus);
        return NULL;
    }
    pthread_mutex_init(&bus->lock, NULL);
    bus->ring_size = ring_size;
    bus->last_seq = start_after;
    bus->reserved_through = start_after;
    bus->reserve = reserve;
    bus->reserve_ud = reserve_ud;
    bus->next_id = 1;
    return bus;
}

void lyra_bus_free(struct lyra_bus *bus)
{
    if (!bus)
        return;
    for (size_t i = 0; i < bus->ring_size; i++)
        json_decref(bus->ring[i].data);
    free(bus->ring);
    struct subscriber *s = bus->subs;
    while (s) {
        struct subscriber *next = s->next;
        free(s->patterns);
        free(s);
        s = next;
    }
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

uint64_t lyra_bus_publish(struct lyra_bus *bus, const char *type, const char *source, json_t *data)
{
    if (!data)
        data = json_object();
    pthread_mutex_lock(&bus->lock);
    uint64_t seq = ++bus->last_seq;
    if (bus->reserve && seq > bus->reserved_through) {
        uint64_t r = bus->reserve(seq + SEQ_BLOCK, bus->reserve_ud);
        bus->reserved_through = r >= seq ? r : UINT64_MAX; /* failed: stop asking */
    }
    struct lyra_event *ev = &bus->ring[bus->ring_head];
    json_decref(ev->data);
    ev->seq = seq;
    ev->ts_ms = lyra_wall_ms();
    snprintf(ev->type, sizeof ev->type, "%s", type);
    snprintf(ev->source, sizeof ev->source, "%s", source ? source : "");
    ev->data = data;
    bus->ring_head = (bus->ring_head + 1) % bus->ring_size;
    if (bus->ring_count < bus->ring_size)
        bus->ring_count++;
    for (struct subscriber *s = bus->subs; s; s = s->next)
        if (lyra_event_type_matches(s->patterns, ev->type))
            s->fn(ev, s->ud);
    pthread_mutex_unlock(&bus->lock);
    return seq;
}

static int subscribe_locked(struct lyra_bus *bus, const char *patterns, lyra_bus_subscriber_fn fn,
                            void *ud)
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
                            lyra_bus_subscriber_fn fn, void *ud)
{
    size_t delivered = 0;
    size_t start = (bus->ring_head + bus->ring_size - bus->ring_count) % bus->ring_size;
    for (size_t i = 0; i < bus->ring_count; i++) {
        const struct lyra_event *ev = &bus->ring[(start + i) % bus->ring_size];
        if (ev->seq > since && lyra_event_type_matches(patterns, ev->type)) {
            fn(ev, ud);
            delivered++;
        }
    }
    return delivered;
}

size_t lyra_bus_replay(struct lyra_bus *bus, uint64_t since, const char *patterns,
                       lyra_bus_subscriber_fn fn, void *ud)
{
    pthread_mutex_lock(&bus->lock);
    size_t n = replay_locked(bus, since, patterns, fn, ud);
    pthread_mutex_unlock(&bus->lock);
    return n;
}

int lyra_bus_replay_and_subscribe(struct lyra_bus *bus, uint64_t since, const char *patterns,
                                  lyra_bus_subscriber_fn fn, void *ud)
{
    pthread_mutex_lock(&bus->lock);
    replay_locked(bus, since, patterns, fn, ud);
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

json_t *lyra_event_to_json(const struct lyra_event *ev)
{
    char ts[40];
    lyra_format_ts(ev->ts_ms, ts, sizeof ts);
    return json_pack("{s:I, s:s, s:s, s:s, s:O}", "seq", (json_int_t)ev->seq, "ts", ts, "type",
                     ev->type, "source", ev->source, "data", ev->data);
}
