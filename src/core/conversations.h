/* conversations.h — persisted chat conversations in the daemon's store.
 *
 * A conversation is an id (a UUID), a title, the model that last answered
 * and its times; its messages are numbered 1, 2, … (`seq`) in the order they
 * were appended.  Assistant messages also keep the usage and timings of the
 * turn that produced them.  The tables come from store migration 2;
 * deleting a conversation deletes its messages (ON DELETE CASCADE).
 *
 * Every function is one SQL statement or a few independent ones: the store's
 * single connection is shared by all threads, so no function holds a
 * transaction open across calls.
 *
 * Thread-safety: every function may be called from any thread. */
#ifndef LYRA_CONVERSATIONS_H
#define LYRA_CONVERSATIONS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/store.h"

/* Longest title, in characters (code points). */
#define LYRA_CONV_TITLE_MAX 60

/* One message to append.  Strings are borrowed; `model` may be NULL (user
 * messages).  Counters below zero are stored as NULL (not measured). */
struct lyra_conv_message {
    const char *role; /* "user", "assistant", "system" */
    const char *content;
    const char *model;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double prompt_ms, predicted_ms;
};

/* Creates an empty conversation (no title, no model) with a fresh UUID
 * written to id_out. */
int lyra_conv_create(struct lyra_store *st, char id_out[37], struct lyra_err *err);

/* Appends a message after the conversation's last one and marks the
 * conversation updated.  *msg_id (when not NULL) gets the message's row id,
 * for lyra_conv_delete_message().  LYRA_ENOTFOUND when the conversation does
 * not exist. */
int lyra_conv_append(struct lyra_store *st, const char *conv_id, const struct lyra_conv_message *m,
                     int64_t *msg_id, struct lyra_err *err);

/* Removes one message (by row id), e.g. the user message of a turn that
 * failed.  Removing a missing message is not an error. */
int lyra_conv_delete_message(struct lyra_store *st, int64_t msg_id, struct lyra_err *err);

/* After a turn: sets the conversation's model (when not NULL) and updated
 * time, and its title from `first_text` (cut with lyra_conv_title()) if it
 * has none yet.  LYRA_ENOTFOUND when the conversation does not exist. */
int lyra_conv_touch(struct lyra_store *st, const char *conv_id, const char *model, const char *first_text,
                    struct lyra_err *err);

/* The conversation's model: *model_out gets a malloc'd name (caller frees)
 * or NULL when no turn has finished yet.  LYRA_ENOTFOUND when the
 * conversation does not exist. */
int lyra_conv_model(struct lyra_store *st, const char *conv_id, char **model_out, struct lyra_err *err);

/* The messages in order as [{"role","content"}], the shape a worker's
 * "messages" takes (*out: new reference).  An unknown conversation gives an
 * empty array; check existence with lyra_conv_model(). */
int lyra_conv_messages(struct lyra_store *st, const char *conv_id, json_t **out, struct lyra_err *err);

/* One conversation with its messages (*out: new reference):
 *   {"id","title","model","created","updated","message_count",
 *    "messages":[{"seq","role","content","created", and for messages that
 *                 have them "model","usage":{prompt_tokens,completion_tokens,
 *                 cached_tokens},"timings":{prompt_ms,predicted_ms}}]}
 * Times are RFC 3339 strings; title and model may be null.
 * LYRA_ENOTFOUND when it does not exist. */
int lyra_conv_get(struct lyra_store *st, const char *conv_id, json_t **out, struct lyra_err *err);

/* A page of conversations, most recently updated first, without messages
 * (*list_out: new reference to an array of {"id","title","model","created",
 * "updated","message_count"}); *total gets the number of conversations. */
int lyra_conv_list(struct lyra_store *st, size_t limit, size_t offset, json_t **list_out, int64_t *total,
                   struct lyra_err *err);

/* Deletes a conversation and its messages.  LYRA_ENOTFOUND when missing. */
int lyra_conv_delete(struct lyra_store *st, const char *conv_id, struct lyra_err *err);

/* Copies the first LYRA_CONV_TITLE_MAX characters of `text` into out (at
 * most out_len bytes with the NUL), never splitting a UTF-8 sequence;
 * returns the length written.  `text` is assumed to be valid UTF-8. */
size_t lyra_conv_title(const char *text, char *out, size_t out_len);

#endif
