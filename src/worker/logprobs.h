/* logprobs.h — the log-probabilities a generate request may ask for
 * ("logprobs": N in the worker message, docs/worker.md): of the token that
 * was sampled (or, for prompt scoring, the prompt's next token) and of the
 * N most likely tokens at that position.
 *
 * As in OpenAI's API and llama-server, a log-probability is the log-softmax
 * of the model's raw logits: before temperature, penalties, top-k/p or a
 * grammar change the distribution the token is drawn from.
 *
 * Entries are serialised by hand into the token frame (no allocation per
 * token): {"h":"<hex of the token's bytes>","lp":<logprob>,"top":[["<hex>",
 * <logprob>],...]}; "lp" is null for the first prompt token (nothing
 * precedes it).  The daemon turns the hex into OpenAI's token/bytes.
 *
 * Thread-safety: no shared state; every function is thread-safe. */
#ifndef LYRA_LOGPROBS_H
#define LYRA_LOGPROBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most top entries a request may ask for (OpenAI's top_logprobs maximum;
 * llama-server's n_probs has none). */
#define LYRA_MAX_TOP_LOGPROBS 20

/* A logprob below this is written as this (JSON has no -inf; OpenAI uses
 * -9999 for "practically impossible" too). */
#define LYRA_LOGPROB_FLOOR -9999.0f

/* One position: the token and its logprob, and the n_top most likely
 * tokens at that position, most likely first (ties: lower id first). */
struct lyra_logprob {
    int32_t tok;
    float lp;
    bool has_lp; /* false: the first prompt token */
    int n_top;
    int32_t top[LYRA_MAX_TOP_LOGPROBS];
    float top_lp[LYRA_MAX_TOP_LOGPROBS];
};

/* Fills *out for token tok from one row of raw logits (logits[0..n_vocab),
 * borrowed): log-softmax, computed in double, and the n_top (0..
 * LYRA_MAX_TOP_LOGPROBS, clamped to n_vocab) best tokens. */
void lyra_logprob_compute(const float *logits, int n_vocab, int32_t tok, int n_top, struct lyra_logprob *out);

/* An entry without a logprob (the first prompt token). */
void lyra_logprob_none(int32_t tok, struct lyra_logprob *out);

/* Writes lp as JSON ("%.7g", floored at LYRA_LOGPROB_FLOOR, never inf or
 * nan) into buf (at least 24 bytes); returns its length. */
size_t lyra_logprob_fmt(char *buf, size_t cap, float lp);

/* Bytes that lyra_logprob_write() needs at most for one entry whose token
 * texts are at most max_piece bytes long. */
size_t lyra_logprob_max_json(int n_top, int max_piece);

/* Writes entry e as JSON into buf (cap at least lyra_logprob_max_json(),
 * plus 1 for the NUL written after it).  piece(tok, own, buf, cap, ud) must
 * write token tok's bytes into buf[0..cap) and return their count (a
 * negative value: none); `own` is true for the entry's own token (whose
 * text is part of the output: special tokens as the text shows them, i.e.
 * empty) and false for the top alternatives (special tokens by name).
 * scratch[0..scratch_cap) is the caller's buffer for one piece.  Returns the
 * length written. */
typedef int (*lyra_logprob_piece_fn)(int32_t tok, bool own, char *buf, int cap, void *ud);
size_t lyra_logprob_write(char *buf, size_t cap, const struct lyra_logprob *e, lyra_logprob_piece_fn piece,
                          void *ud, char *scratch, int scratch_cap);

#endif
