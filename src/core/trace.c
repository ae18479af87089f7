/* trace.c — the trace ring and traceparent parsing. */
#include "core/trace.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct lyra_trace_ring {
    pthread_mutex_t lock;
    json_t **items;
    size_t capacity, count, head; /* head: next slot to write */
};

struct lyra_trace_ring *lyra_trace_ring_new(size_t capacity)
{
    struct lyra_trace_ring *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->capacity = capacity ? capacity : 1;
    r->items = calloc(r->capacity, sizeof *r->items);
    if (!r->items) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    return r;
}

void lyra_trace_ring_free(struct lyra_trace_ring *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->capacity; i++)
        json_decref(r->items[i]);
    free(r->items);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void lyra_trace_add(struct lyra_trace_ring *r, json_t *trace)
{
    if (!trace)
        return;
    pthread_mutex_lock(&r->lock);
    json_decref(r->items[r->head]);
    r->items[r->head] = trace;
    r->head = (r->head + 1) % r->capacity;
    if (r->count < r->capacity)
        r->count++;
    pthread_mutex_unlock(&r->lock);
}

static bool id_matches(json_t *t, const char *id)
{
    const char *a = json_string_value(json_object_get(t, "request_id"));
    const char *b = json_string_value(json_object_get(t, "trace_id"));
    return (a && strcmp(a, id) == 0) || (b && strcmp(b, id) == 0);
}

json_t *lyra_trace_list(struct lyra_trace_ring *r, size_t limit, const char *id)
{
    json_t *list = json_array();
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->count && json_array_size(list) < limit; i++) {
        json_t *t = r->items[(r->head + r->capacity - 1 - i) % r->capacity];
        if (!id || id_matches(t, id))
            json_array_append_new(list, json_deep_copy(t)); /* the ring may drop t meanwhile */
    }
    pthread_mutex_unlock(&r->lock);
    return list;
}

static bool hex_run(const char *s, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        nonzero |= c != '0';
    }
    return nonzero; /* all-zero ids are invalid */
}

bool lyra_traceparent_parse(const char *h, char trace_id[33])
{
    /* version(2) - trace-id(32) - parent-id(16) - flags(2) */
    if (!h || strlen(h) < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-')
        return false;
    if (strncmp(h, "ff", 2) == 0 || !(h[0] >= '0' && h[0] <= 'f') || !hex_run(h + 3, 32) || !hex_run(h + 36, 16))
        return false;
    memcpy(trace_id, h + 3, 32);
    trace_id[32] = '\0';
    return true;
}
