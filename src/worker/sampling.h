/* sampling.h — a generate request's sampling: the llama sampler chain that
 * picks each token, and the text stream that turns token pieces into what
 * may be sent (complete UTF-8, never a stop string).  The parameters
 * (struct lyra_sampling_params) are core/sampling_params.h's.
 *
 * Thread-safety: objects belong to the engine thread; no shared state. */
#ifndef LYRA_SAMPLING_H
#define LYRA_SAMPLING_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/sampling_params.h"
#include "llama.h"

/* One request's token picker: the llama sampler chain plus, when a grammar
 * or json_mode is set, a grammar sampler used as in llama-server (sample
 * with the chain, check the token against the grammar, and only when it is
 * rejected apply the grammar to the full vocabulary and sample again). */
struct lyra_sampler;

/* Builds the sampler for `p` (borrowed).  eog[0..n_eog) lists the vocab's
 * end-of-generation tokens (borrowed for the call), banned when
 * p->ignore_eos.  n_ctx_slot resolves repeat_last_n = -1.  Returns 0 with *out
 * (caller frees with lyra_sampler_free), LYRA_EPARSE for a grammar llama.cpp
 * rejects (err->msg has the parser's reason), or LYRA_ENOMEM. */
int lyra_sampler_new(const struct llama_vocab *vocab, const struct lyra_sampling_params *p,
                     const llama_token *eog, int n_eog, int n_ctx_slot, struct lyra_sampler **out,
                     struct lyra_err *err);
void lyra_sampler_free(struct lyra_sampler *s);

/* Longest a grammar may take to constrain one token, by default (the
 * worker takes LYRA_WORKER_GRAMMAR_BUDGET_MS from its environment). */
#define LYRA_GRAMMAR_TOKEN_BUDGET_MS 500

/* Picks the next token from row `idx` of ctx's logits and records it in the
 * sampler's state (penalty history, grammar).  cand is scratch space of
 * n_vocab entries owned by the caller (reused across calls, so sampling does
 * not allocate).  Returns the token, -1 when the grammar admits no further
 * token (the output is complete), or -2 when the grammar took budget_ms or
 * longer for this token (the request should end: its grammar is too
 * ambiguous for llama.cpp's engine). */
llama_token lyra_sampler_sample(struct lyra_sampler *s, struct llama_context *ctx, int32_t idx,
                                llama_token_data *cand, int n_vocab, int budget_ms);

/* Text stream: collects the pieces of generated tokens and releases text
 * that is safe to send: only complete UTF-8 (an incomplete multi-byte
 * sequence at the end is held back until it completes; invalid bytes become
 * U+FFFD), and never any part of a stop string (text that could be the start
 * of a stop string is held back; on a match everything from the match on is
 * dropped). */
struct lyra_stream;

/* Returns a new empty stream or NULL when out of memory.  Caller frees with
 * lyra_stream_free(). */
struct lyra_stream *lyra_stream_new(void);
void lyra_stream_free(struct lyra_stream *s);
/* Empties the stream for a new request, keeping its buffers. */
void lyra_stream_reset(struct lyra_stream *s);

/* Adds a token's piece (borrowed, copied).  Returns 0 or LYRA_ENOMEM. */
int lyra_stream_push(struct lyra_stream *s, const char *piece, size_t len);

/* Checks the stop strings stop[0..n_stop) (borrowed) and returns how many
 * bytes at the front of lyra_stream_text() may be sent now.  *stopped is set
 * when a stop string matched: the text is then cut before the match and
 * nothing more will be released. */
size_t lyra_stream_ready(struct lyra_stream *s, char *const *stop, int n_stop, bool *stopped);

/* Ends the stream: everything still held (a stop-string prefix that never
 * completed, an incomplete UTF-8 tail as U+FFFD) becomes sendable.  Returns
 * the number of bytes at the front of lyra_stream_text() to send. */
size_t lyra_stream_finish(struct lyra_stream *s);

/* The sendable-or-held text (valid UTF-8, not NUL-terminated); borrowed,
 * valid until the next call on s. */
const char *lyra_stream_text(const struct lyra_stream *s);

/* Drops the first n bytes of the text (after they were sent). */
void lyra_stream_consume(struct lyra_stream *s, size_t n);

#endif
