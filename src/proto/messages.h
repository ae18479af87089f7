/* messages.h — the messages of the worker protocol, one table for both
 * sides: their names, the fields each must carry, and which of them end a
 * request.  docs/worker.md describes every message.
 *
 * The daemon checks every frame a worker sends against this table before it
 * acts on it; a frame that does not match is a protocol error (the worker is
 * killed and its requests fail), never something to guess about.
 *
 * Thread-safety: no state; every function is thread-safe. */
#ifndef LYRA_MESSAGES_H
#define LYRA_MESSAGES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

enum lyra_msg_kind {
    LYRA_MSG_UNKNOWN = 0,
    /* worker → daemon, not about one request */
    LYRA_MSG_READY,     /* the model is loaded: {n_slots, n_ctx_slot, ...} */
    LYRA_MSG_FATAL,     /* the worker cannot serve and exits: {message} */
    LYRA_MSG_HEARTBEAT, /* on the heartbeat channel: {steps, busy} */
    /* worker → daemon, about request `id` */
    LYRA_MSG_STARTED,   /* admitted to a slot */
    LYRA_MSG_TOKEN,     /* {text, n, logprobs?, prompt_logprobs?} */
    LYRA_MSG_DONE,      /* terminal: {finish_reason, usage} */
    LYRA_MSG_ERROR,     /* terminal: {code, message, status} */
    LYRA_MSG_EMBEDDING, /* terminal: {data} */
    LYRA_MSG_TOKENS,    /* terminal: {count} */
    LYRA_MSG_STATUS,    /* terminal: {slots, queued} */
};

/* Checks a frame received from a worker.  Returns 0 with *kind set and, for
 * request messages, *id; or LYRA_EPARSE with err saying what is wrong
 * ("token: field 'text' must be a string").  An "error" must carry the id
 * of a request: the daemon never sends a message a worker could not
 * attribute, so an unattributed error is a protocol error too. */
int lyra_msg_check_worker(const json_t *frame, enum lyra_msg_kind *kind, uint64_t *id, struct lyra_err *err);

/* The kind of a frame by its "type" alone (LYRA_MSG_UNKNOWN when it has
 * none or an unknown one), for frames already checked. */
enum lyra_msg_kind lyra_msg_kind_of(const json_t *frame);

/* True for messages that end a request (exactly one per request). */
bool lyra_msg_is_terminal(enum lyra_msg_kind kind);

/* The message's "type" string ("done"), "unknown" for LYRA_MSG_UNKNOWN. */
const char *lyra_msg_name(enum lyra_msg_kind kind);

/* Writes {"type":"error","id":id,"code":code,"message":message,"status":
 * status} as serialised JSON into buf[0..cap) without allocating, escaping
 * message and cutting it on a character boundary so that the result always
 * fits and is valid JSON in UTF-8 (invalid bytes become '?').  cap must be
 * at least 160.  Returns the length written.  This is the path that cannot
 * fail, for terminal answers when building a JSON object did. */
size_t lyra_msg_error_raw(char *buf, size_t cap, uint64_t id, const char *code, int status, const char *message);

/* Escapes s[0..len) as the inside of a JSON string into buf, writing at
 * most `limit` bytes and never half an escape or half a character; bytes
 * that are not UTF-8 become '?'.  Returns the bytes written.  No
 * allocation: the per-token path and the fallback frames use it. */
size_t lyra_msg_escape(char *buf, size_t limit, const char *s, size_t len);

/* Writes {"type":"cancel","id":id} into buf (at least 48 bytes); returns
 * its length. */
size_t lyra_msg_cancel_raw(char *buf, size_t cap, uint64_t id);

#endif
