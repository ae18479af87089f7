/* trace.h — a ring of recent request traces.
 *
 * A trace is a JSON object describing one request: ids (request_id, W3C
 * trace_id), what ran (endpoint, model, status) and its spans, each
 * {name, ms, ...}: queue (waiting for a slot), load (the model load this
 * request waited for), prompt (evaluation: tokens, ms), generation (tokens,
 * ms, tokens/s) and total.  The ring keeps the newest `capacity` traces for
 * GET /traces.
 *
 * Thread-safety: all functions are thread-safe. */
#ifndef LYRA_TRACE_H
#define LYRA_TRACE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct lyra_trace_ring;

struct lyra_trace_ring *lyra_trace_ring_new(size_t capacity);
void lyra_trace_ring_free(struct lyra_trace_ring *ring);

/* Adds a trace (reference taken); the oldest is dropped when full. */
void lyra_trace_add(struct lyra_trace_ring *ring, json_t *trace);

/* Up to `limit` traces, newest first, optionally only those whose
 * request_id or trace_id equals `id` (new reference). */
json_t *lyra_trace_list(struct lyra_trace_ring *ring, size_t limit, const char *id);

/* Parses a W3C traceparent header ("00-<32 hex>-<16 hex>-<2 hex>").
 * Returns true and writes the 32-hex trace id (33 bytes) when valid. */
bool lyra_traceparent_parse(const char *header, char trace_id[33]);

#endif
