/* conversations.h — persisted chat conversations in the daemon's store, and
 * the set of conversations with a turn in flight.
 *
 * A conversation is an id (a UUID), a title, the model that last answered
 * and its times; its messages are numbered 1, 2, … (`seq`) in the order they
 * were appended.  Assistant messages also keep the usage and timings of the
 * turn that produced them.  The tables come from store migration 2;
 * deleting a conversation deletes its messages (ON DELETE CASCADE).
 *
 * Ownership (migration 7): a conversation has the owner its first turn
 * gave it (a principal's name) or none (rows from before owners existed).
 * Every read and delete takes an owner filter: NULL sees every
 * conversation; a name sees only that principal's, and any other
 * conversation is LYRA_ENOTFOUND exactly as if it did not exist (an API
 * must not reveal that someone else's conversation exists).
 *
 * A turn is written whole or not at all: lyra_conv_save_turn() stores the
 * user message and the reply (and, for a conversation's first turn, the
 * conversation itself) in one transaction, so a turn that fails, is
 * cancelled or dies with its worker leaves nothing behind, and the stored
 * history always alternates user / assistant.
 *
 * Every database access runs on the store's thread (store.h): functions
 * marked "waits" block until it ran them (HTTP handler threads, the main
 * thread); lyra_conv_save_turn_async() never blocks (any thread, including
 * the supervisor loop).  Because the store runs jobs in order, a turn queued
 * with the async call is visible to every read queued after it.
 *
 * Thread-safety: every function is thread-safe. */
#ifndef LYRA_CONVERSATIONS_H
#define LYRA_CONVERSATIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/store.h"

/* Longest title, in characters (code points). */
#define LYRA_CONV_TITLE_MAX 60

/* A message's content and, for replies, its model, usage and timings.
 * Strings are borrowed; `model` may be NULL.  Counters below zero are stored
 * as NULL (not measured). */
struct lyra_conv_message {
    const char *content;
    const char *model;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double prompt_ms, predicted_ms;
};

/* One finished turn (strings borrowed for the call). */
struct lyra_conv_turn {
    const char *conv_id;
    bool create;                    /* a new conversation: inserted by the same transaction */
    const char *user_text;          /* the user's message; titles a conversation that has none */
    struct lyra_conv_message reply; /* the assistant's answer; reply.model becomes the conversation's */
    const char *owner;              /* with create: the principal it belongs to (NULL: nobody's, visible
                                       only to an unfiltered read) */
};

/* Stores the turn in one transaction: the conversation (when `create`), the
 * user message, the reply, and the conversation's model, updated time and
 * title (the user text cut with lyra_conv_title(), if it has none).  On any
 * failure nothing is stored.  LYRA_ENOTFOUND when an existing conversation
 * was deleted meanwhile.  Waits. */
int lyra_conv_save_turn(struct lyra_store *st, const struct lyra_conv_turn *t, struct lyra_err *err);

/* Result of lyra_conv_save_turn_async (err borrowed for the call); runs on
 * the database thread. */
typedef void (*lyra_conv_saved_fn)(int rc, const struct lyra_err *err, void *ud);

/* Queues lyra_conv_save_turn() of a copy of *t and returns at once; done
 * (may be NULL) gets the result on the database thread, with `ud` (the
 * caller's).  Never blocks.  Returns 0, or LYRA_ENOMEM / LYRA_EUNAVAILABLE
 * when nothing was queued (done is then not called). */
int lyra_conv_save_turn_async(struct lyra_store *st, const struct lyra_conv_turn *t, lyra_conv_saved_fn done,
                              void *ud);

/* What a new turn needs, read in one transaction: *model_out gets the
 * conversation's model (malloc'd, caller frees; NULL when no turn has
 * finished) and *messages_out its messages in order as [{"role","content"}],
 * the shape a worker's "messages" takes (new reference).  LYRA_ENOTFOUND
 * when the conversation does not exist.  Waits. */
int lyra_conv_history(struct lyra_store *st, const char *conv_id, const char *owner, char **model_out,
                      json_t **messages_out, struct lyra_err *err);

/* One conversation with its messages (*out: new reference):
 *   {"id","title","model","created","updated","message_count","owner",
 *    "messages":[{"seq","role","content","created", and for messages that
 *                 have them "model","usage":{prompt_tokens,completion_tokens,
 *                 cached_tokens},"timings":{prompt_ms,predicted_ms}}]}
 * Times are RFC 3339 strings; title, model and owner may be null.
 * LYRA_ENOTFOUND when it does not exist.  Waits. */
int lyra_conv_get(struct lyra_store *st, const char *conv_id, const char *owner, json_t **out,
                  struct lyra_err *err);

/* A page of conversations, most recently updated first, without messages
 * (*list_out: new reference to an array of {"id","title","model","created",
 * "updated","message_count","owner"}); *total gets the number of conversations
 * the owner filter lets through.
 * Waits. */
int lyra_conv_list(struct lyra_store *st, const char *owner, size_t limit, size_t offset, json_t **list_out,
                   int64_t *total, struct lyra_err *err);

/* Deletes a conversation and its messages.  LYRA_ENOTFOUND when missing
 * (or not owner's).  Waits. */
int lyra_conv_delete(struct lyra_store *st, const char *conv_id, const char *owner, struct lyra_err *err);

/* The principal `owner` is gone: its conversations lose their owner (NULL:
 * visible with conversations.all only), so that a new principal of the
 * same name does not inherit them.  Waits. */
int lyra_conv_disown(struct lyra_store *st, const char *owner, struct lyra_err *err);

/* Copies the first LYRA_CONV_TITLE_MAX characters of `text` into out (at
 * most out_len bytes with the NUL), never splitting a UTF-8 sequence;
 * returns the length written.  `text` is assumed to be valid UTF-8. */
size_t lyra_conv_title(const char *text, char *out, size_t out_len);

/* --- turns in flight ------------------------------------------------------ */

/* The conversations that have a turn in flight: a turn claims its
 * conversation before reading the history and releases it when it ends, so
 * two turns never interleave on one conversation. */
struct lyra_conv_claims;

/* NULL on allocation failure.  Free with lyra_conv_claims_free (NULL is a
 * no-op). */
struct lyra_conv_claims *lyra_conv_claims_new(void);
void lyra_conv_claims_free(struct lyra_conv_claims *c);

/* Claims conv_id (copied): 0, LYRA_EBUSY when a turn holds it, LYRA_ENOMEM. */
int lyra_conv_claim(struct lyra_conv_claims *c, const char *conv_id);

/* Releases a claim taken with lyra_conv_claim (unknown ids are ignored). */
void lyra_conv_unclaim(struct lyra_conv_claims *c, const char *conv_id);

/* How many conversations are claimed now. */
size_t lyra_conv_claims_count(struct lyra_conv_claims *c);

#endif
