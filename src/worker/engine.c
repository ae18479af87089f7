/* engine.c — model, context, slots and the continuous-batching step.
 *
 * One llama_context holds n_slots sequences; slot i is sequence i and keeps
 * the list of tokens whose KV entries it holds (cache), so that a new prompt
 * sharing a prefix with it re-evaluates only the rest.  Requests wait in a
 * FIFO until a slot is idle.  Every step builds ONE llama_batch with the next
 * token of every generating slot and as much of the pending prompts as fits
 * in n_batch, decodes it, samples one token for every slot whose logits are
 * ready, and streams the text.  Slots are added to the batch in sequence
 * order because llama.cpp's per-sequence KV streams only put consecutive
 * sequence ids into one micro-batch.
 *
 * Per request, not per token: tokens, sampler, JSON for started/done.  Per
 * token nothing is allocated here: the batch, the candidate arrays (one per
 * slot), the piece buffer and the token frame buffer are reused, and token
 * frames are serialised by hand into that buffer. */
#include "worker/engine.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/util.h"
#include "ggml-backend.h"
#include "llama.h"
#include "proto/messages.h"
#include "worker/llamalog.h"
#include "worker/logprobs.h"
#include "worker/sampling.h"
#include "worker/template.h"

#define COMP "worker"

/* Bounds on what one embed request may ask for, so its reply stays well
 * under the frame limit (a float takes up to ~16 bytes of JSON). */
#define EMBED_MAX_INPUTS 2048
#define EMBED_MAX_FLOATS (3 * 1024 * 1024)

enum slot_state { SLOT_IDLE, SLOT_PROMPT, SLOT_GENERATING };
static const char *const state_names[] = {"idle", "prompt", "generating"};

struct request {
    json_int_t id;
    bool embed;
    llama_token *tokens; /* generate: the prompt; embed: all inputs back to back */
    int n_tokens;
    int *input_off;      /* embed: input i is tokens[input_off[i] .. input_off[i+1]) */
    int n_inputs;
    struct lyra_sampling_params params;
    struct lyra_sampler *sampler;
    int n_predict;       /* tokens to generate at most; 0: only score the prompt */
    int n_probs;         /* "logprobs": top entries per token, -1 = no logprobs */
    bool prompt_probs;   /* "prompt_logprobs": also the prompt's tokens (no prefix reuse) */
    int64_t t_arrival_us;
    bool quiet;          /* "stream": false — text is sent once, before "done" */
    char *acc;           /* quiet: text released so far */
    size_t acc_len, acc_cap;
    struct request *next;
};

/* The most prompt rows with logits one decode step asks for (see
 * lyra_engine_step): bounds llama.cpp's output buffer at this many rows of
 * n_vocab floats (256 x 128k vocabulary = 128 MiB instead of 1 GiB). */
#define LYRA_PROMPT_LOGIT_ROWS 256

struct slot {
    int id; /* also its llama sequence id */
    enum slot_state state;
    struct request *req;
    llama_token *cache; /* tokens whose KV this sequence holds, at positions 0.. */
    int n_cache;
    int n_fed;          /* prompt tokens of req in the KV */
    int n_reused;       /* of those, taken over from the previous request */
    int b_off, b_len;   /* this slot's tokens in the current batch */
    int i_batch;        /* batch row whose logits it samples, -1 = none */
    llama_token next;   /* sampled, to be decoded in the next step */
    bool has_next;
    int n_decoded;      /* tokens sampled for req */
    int n_unreported;   /* ... not yet counted in a token frame */
    int64_t t_admit_us, t_prompt_us, t_last_us;
    struct lyra_stream *stream;
    llama_token_data *cand; /* n_vocab scratch for sampling */
    struct lyra_logprob *pend; /* logprobs of the tokens not yet reported (n_probs >= 0) */
    int n_pend, cap_pend;
};

struct lyra_engine {
    struct lyra_engine_sink sink;
    int sink_rc;
    volatile sig_atomic_t *stop;
    void (*progress)(void *ud);
    void *progress_ud;
    char *name, *path, *tmpl;
    struct llama_model *model;
    const struct llama_vocab *vocab;
    struct llama_context *ctx;
    llama_memory_t mem;
    int n_vocab, n_embd, n_ctx_train, n_ctx_slot, n_slots, n_batch, n_ubatch, threads;
    bool embeddings, kv_unified;
    llama_token *eog;
    int n_eog;
    struct slot *slots;
    struct request *q_head, *q_tail;
    int n_queued;
    struct llama_batch batch;
    char *out; /* token frame scratch */
    size_t out_cap;
    char *piece;
    int piece_cap;
    int max_piece;  /* bytes of the longest token's text */
    char *lp_piece; /* max_piece + 1 bytes of scratch for logprobs (allocated on first use) */
    int grammar_budget_ms;
};

/* ---- replies --------------------------------------------------------------- */

/* Sends msg (reference taken) unless an earlier send failed.  A message
 * that could not be built (NULL) is logged and skipped: never a reason to
 * exit.  Use emit_terminal for the reply that ends a request. */
static int emit(struct lyra_engine *e, json_t *msg)
{
    if (!msg) {
        lyra_warn(COMP, "a reply could not be encoded; skipped");
        return e->sink_rc;
    }
    if (!e->sink_rc) {
        int rc = e->sink.send(e->sink.ud, msg);
        if (rc < 0)
            e->sink_rc = rc;
    }
    json_decref(msg);
    return e->sink_rc;
}

/* Sends the terminal reply of request id (msg taken).  If msg could not be
 * built, an error frame serialised without allocation goes instead, so the
 * request still ends with exactly one terminal reply. */
static int emit_terminal(struct lyra_engine *e, json_int_t id, json_t *msg)
{
    if (msg)
        return emit(e, msg);
    char raw[256];
    size_t n = lyra_msg_error_raw(raw, sizeof raw, (uint64_t)id, "internal", 500,
                                  "the worker could not encode its reply");
    lyra_warn(COMP, "the reply to request %" JSON_INTEGER_FORMAT " could not be encoded; sent an error", id);
    if (!e->sink_rc) {
        int rc = e->sink.send_raw(e->sink.ud, raw, n);
        if (rc < 0)
            e->sink_rc = rc;
    }
    return e->sink_rc;
}

/* Sends {"type":"error"} for request id (borrowed; NULL gives null: only
 * for a message whose id could not be read). */
static void reply_error(struct lyra_engine *e, const json_t *id, const char *code, int status,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void reply_error(struct lyra_engine *e, const json_t *id, const char *code, int status,
                        const char *fmt, ...)
{
    char msg[LYRA_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *m = json_pack("{s:s, s:O?, s:s, s:s, s:i}", "type", "error", "id", id, "code", code, "message", msg,
                          "status", status);
    if (json_is_integer(id))
        emit_terminal(e, json_integer_value(id), m);
    else
        emit(e, m);
}

static void reply_error_id(struct lyra_engine *e, json_int_t id, const char *code, int status,
                           const char *msg)
{
    json_t *idv = json_integer(id);
    reply_error(e, idv, code, status, "%s", msg);
    json_decref(idv);
}

static double ms_between(int64_t from_us, int64_t to_us)
{
    return to_us > from_us ? (double)(to_us - from_us) / 1000.0 : 0.0;
}

static double per_second(int n, double ms)
{
    return ms > 0 ? (double)n * 1000.0 / ms : 0.0;
}

/* Sends a token frame with text[0..len) and the tokens not yet reported.
 * Returns false when out of memory (the caller fails the request). */
static bool reserve_out(struct lyra_engine *e, size_t need)
{
    if (need <= e->out_cap)
        return true;
    size_t cap = e->out_cap ? e->out_cap : 1024;
    while (cap < need)
        cap *= 2;
    char *p = realloc(e->out, cap);
    if (!p)
        return false;
    e->out = p;
    e->out_cap = cap;
    return true;
}

static int lp_piece(int32_t tok, bool own, char *buf, int cap, void *ud)
{
    struct lyra_engine *e = ud;
    return llama_token_to_piece(e->vocab, tok, buf, cap, 0, !own);
}

/* Appends ,"<key>":[entries...] to e->out at w (room reserved by the
 * caller); returns the new length. */
static size_t put_logprobs(struct lyra_engine *e, size_t w, const char *key, const struct lyra_logprob *lp, int n)
{
    w += (size_t)snprintf(e->out + w, e->out_cap - w, ",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        if (i)
            e->out[w++] = ',';
        w += lyra_logprob_write(e->out + w, e->out_cap - w, &lp[i], lp_piece, e, e->lp_piece, e->max_piece + 1);
    }
    e->out[w++] = ']';
    return w;
}

static size_t logprobs_room(const struct lyra_engine *e, const struct request *r, int n)
{
    return 32 + (size_t)n * (lyra_logprob_max_json(r->n_probs, e->max_piece) + 1);
}

static bool emit_token(struct lyra_engine *e, struct slot *s, const char *text, size_t len)
{
    if (e->sink_rc)
        return true;
    size_t need = 96 + 6 * len + (s->n_pend ? logprobs_room(e, s->req, s->n_pend) : 0);
    if (!reserve_out(e, need))
        return false;
    int n = snprintf(e->out, e->out_cap, "{\"type\":\"token\",\"id\":%" JSON_INTEGER_FORMAT ",\"text\":\"",
                     s->req->id);
    size_t w = (size_t)n + lyra_msg_escape(e->out + n, 6 * len, text, len);
    w += (size_t)snprintf(e->out + w, e->out_cap - w, "\",\"n\":%d", s->n_unreported);
    if (s->n_pend > 0)
        w = put_logprobs(e, w, "logprobs", s->pend, s->n_pend);
    e->out[w++] = '}';
    s->n_unreported = 0;
    s->n_pend = 0;
    int rc = e->sink.send_raw(e->sink.ud, e->out, w);
    if (rc < 0)
        e->sink_rc = rc;
    return true;
}

/* Makes room for n more pending logprob entries in s (allocates only as
 * the request's need grows, so a request asking for none never does). */
static bool pend_reserve(struct lyra_engine *e, struct slot *s, int n)
{
    if (!e->lp_piece && !(e->lp_piece = malloc((size_t)e->max_piece + 1)))
        return false;
    if (s->n_pend + n <= s->cap_pend)
        return true;
    int cap = s->cap_pend ? s->cap_pend : 16;
    while (cap < s->n_pend + n)
        cap *= 2;
    struct lyra_logprob *p = realloc(s->pend, sizeof *p * (size_t)cap);
    if (!p)
        return false;
    s->pend = p;
    s->cap_pend = cap;
    return true;
}

/* Sends the prompt logprobs collected in s->pend as a token frame without
 * text: {"type":"token","id":…,"text":"","n":0,"prompt_logprobs":[…]}. */
static bool emit_prompt_logprobs(struct lyra_engine *e, struct slot *s)
{
    if (e->sink_rc || s->n_pend == 0)
        return true;
    if (!reserve_out(e, 96 + logprobs_room(e, s->req, s->n_pend)))
        return false;
    size_t w = (size_t)snprintf(e->out, e->out_cap,
                                "{\"type\":\"token\",\"id\":%" JSON_INTEGER_FORMAT ",\"text\":\"\",\"n\":0",
                                s->req->id);
    w = put_logprobs(e, w, "prompt_logprobs", s->pend, s->n_pend);
    e->out[w++] = '}';
    s->n_pend = 0;
    int rc = e->sink.send_raw(e->sink.ud, e->out, w);
    if (rc < 0)
        e->sink_rc = rc;
    return true;
}

/* Hands text[0..len) on: a token frame now, or, for a quiet request, kept
 * for the single frame sent when it ends (one frame instead of one per
 * step, so the daemon is not woken while the next step decodes). */
static bool release_text(struct lyra_engine *e, struct slot *s, const char *text, size_t len)
{
    struct request *r = s->req;
    if (!r->quiet)
        return emit_token(e, s, text, len);
    if (len == 0)
        return true; /* nothing to keep (and no buffer yet, maybe: memcpy must not see NULL) */
    if (r->acc_len + len > r->acc_cap) {
        size_t cap = r->acc_cap ? r->acc_cap : 1024;
        while (cap < r->acc_len + len)
            cap *= 2;
        char *p = realloc(r->acc, cap);
        if (!p)
            return false;
        r->acc = p;
        r->acc_cap = cap;
    }
    memcpy(r->acc + r->acc_len, text, len);
    r->acc_len += len;
    return true;
}

/* ---- requests ---------------------------------------------------------------- */

static void request_free(struct request *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->input_off);
    free(r->acc);
    lyra_sampler_free(r->sampler);
    lyra_sampling_params_clear(&r->params);
    free(r);
}

static bool id_in_use(const struct lyra_engine *e, json_int_t id)
{
    for (int i = 0; i < e->n_slots; i++)
        if (e->slots[i].req && e->slots[i].req->id == id)
            return true;
    for (const struct request *r = e->q_head; r; r = r->next)
        if (r->id == id)
            return true;
    return false;
}

static void enqueue(struct lyra_engine *e, struct request *r)
{
    r->t_arrival_us = lyra_now_us();
    r->next = NULL;
    if (e->q_tail)
        e->q_tail->next = r;
    else
        e->q_head = r;
    e->q_tail = r;
    e->n_queued++;
}

/* Tokenizes text; returns the token count (which may exceed cap, in which
 * case toks holds nothing useful) or a negative LYRA_E* code. */
static int tokenize(struct lyra_engine *e, const char *text, size_t len, bool add_special,
                    llama_token *toks, int cap)
{
    if (len > (size_t)INT32_MAX)
        return LYRA_ETOOBIG;
    int32_t n = llama_tokenize(e->vocab, text, (int32_t)len, toks, cap, add_special, true);
    if (n == INT32_MIN)
        return LYRA_ETOOBIG;
    return n < 0 ? -n : n;
}

/* The prompt text of a generate or tokenize message: "prompt"/"text" or
 * "messages" through the chat template.  *owned is set when *text must be
 * freed.  On a client error replies and returns LYRA_EINVAL. */
static int prompt_text(struct lyra_engine *e, const json_t *msg, const json_t *idv, const char *key,
                       const char **text, size_t *len, char **owned)
{
    *owned = NULL;
    const json_t *prompt = json_object_get(msg, key);
    const json_t *messages = json_object_get(msg, "messages");
    if (prompt && messages) {
        reply_error(e, idv, "invalid_request", 400, "%s: give either %s or messages, not both", key, key);
        return LYRA_EINVAL;
    }
    if (prompt) {
        if (!json_is_string(prompt)) {
            reply_error(e, idv, "invalid_request", 400, "%s: must be a string", key);
            return LYRA_EINVAL;
        }
        *text = json_string_value(prompt);
        *len = json_string_length(prompt);
        return 0;
    }
    if (!messages) {
        reply_error(e, idv, "invalid_request", 400, "%s: missing (give %s or messages)", key, key);
        return LYRA_EINVAL;
    }
    struct lyra_err err = {0};
    int rc = lyra_template_apply(e->tmpl, messages, owned, len, &err);
    if (rc < 0) {
        reply_error(e, idv, rc == LYRA_EINVAL ? "invalid_request" : "template_failed",
                    rc == LYRA_EINVAL ? 400 : 500, "%s", err.msg);
        return rc;
    }
    *text = *owned;
    return 0;
}

static void handle_generate(struct lyra_engine *e, const json_t *msg, const json_t *idv)
{
    json_int_t id = json_integer_value(idv);
    struct request *r = calloc(1, sizeof *r);
    if (!r) {
        reply_error(e, idv, "out_of_memory", 500, "the worker is out of memory");
        return;
    }
    r->id = id;
    r->quiet = json_is_false(json_object_get(msg, "stream"));
    r->n_probs = -1;
    const json_t *lp = json_object_get(msg, "logprobs"), *plp = json_object_get(msg, "prompt_logprobs"),
                 *score = json_object_get(msg, "score_only");
    if (lp && !json_is_null(lp) &&
        (!json_is_integer(lp) || json_integer_value(lp) < 0 || json_integer_value(lp) > LYRA_MAX_TOP_LOGPROBS)) {
        reply_error(e, idv, "invalid_request", 400, "logprobs: must be an integer from 0 to %d",
                    LYRA_MAX_TOP_LOGPROBS);
        free(r);
        return;
    }
    if ((plp && !json_is_boolean(plp)) || (score && !json_is_boolean(score))) {
        reply_error(e, idv, "invalid_request", 400, "%s: must be true or false",
                    plp && !json_is_boolean(plp) ? "prompt_logprobs" : "score_only");
        free(r);
        return;
    }
    if (json_is_integer(lp))
        r->n_probs = (int)json_integer_value(lp);
    r->prompt_probs = json_is_true(plp);
    if (r->prompt_probs && r->n_probs < 0) {
        reply_error(e, idv, "invalid_request", 400, "prompt_logprobs: needs logprobs");
        free(r);
        return;
    }
    struct lyra_err err = {0};
    const json_t *params = json_object_get(msg, "params");
    if (params && !json_is_object(params) && !json_is_null(params)) {
        reply_error(e, idv, "invalid_request", 400, "params: must be an object");
        free(r);
        return;
    }
    if (lyra_sampling_params_parse(params, &r->params, &err) < 0) {
        reply_error(e, idv, "invalid_request", 400, "params.%s", err.msg);
        free(r);
        return;
    }
    const struct lyra_sampling_params *p = &r->params;
    const char *text;
    size_t len;
    char *owned;
    if (prompt_text(e, msg, idv, "prompt", &text, &len, &owned) < 0)
        goto fail;
    /* A prompt of megabytes would hold this thread (every slot's requests)
     * for seconds in the tokenizer only to be refused: with twice the
     * bound for safety (normalisation), refuse it from its length. */
    if (len / 2 / (size_t)e->max_piece >= (size_t)e->n_ctx_slot) {
        free(owned);
        reply_error(e, idv, "context_length_exceeded", 400,
                    "prompt of %zu bytes is far more than the slot context of %d tokens holds", len, e->n_ctx_slot);
        goto fail;
    }
    r->tokens = malloc(sizeof *r->tokens * (size_t)e->n_ctx_slot);
    if (!r->tokens) {
        free(owned);
        reply_error(e, idv, "internal", 500, "out of memory for %d prompt tokens", e->n_ctx_slot);
        goto fail;
    }
    int n = tokenize(e, text, len, p->add_special, r->tokens, e->n_ctx_slot);
    free(owned);
    if (n < 0) {
        reply_error(e, idv, "invalid_request", 400, "prompt: cannot be tokenized (%s)", lyra_strerror(n));
        goto fail;
    }
    if (n == 0) {
        reply_error(e, idv, "invalid_request", 400, "prompt: empty (no tokens)");
        goto fail;
    }
    /* Only a prompt that leaves no room for one token is refused; a
     * max_tokens above what is left is clamped (llama-server and Ollama do
     * the same; many clients send a large max_tokens by default), and the
     * answer then ends with finish_reason "length". */
    if (n >= e->n_ctx_slot) {
        reply_error(e, idv, "context_length_exceeded", 400,
                    "prompt has %d tokens; the slot context holds %d, so no token is left to generate", n,
                    e->n_ctx_slot);
        goto fail;
    }
    r->n_tokens = n;
    llama_token *fit = realloc(r->tokens, sizeof *fit * (size_t)n); /* queued requests hold only this */
    if (fit)
        r->tokens = fit;
    int room = e->n_ctx_slot - n;
    r->n_predict = p->max_tokens == -1 || p->max_tokens > room ? room : p->max_tokens;
    if (json_is_true(score))
        r->n_predict = 0;
    lyra_llamalog_mark();
    int rc = lyra_sampler_new(e->vocab, p, e->eog, e->n_eog, e->n_ctx_slot, &r->sampler, &err);
    if (rc < 0) {
        if (rc == LYRA_EPARSE)
            reply_error(e, idv, "invalid_grammar", 400, "params.%s", err.msg);
        else /* out of memory: this request fails, the worker goes on */
            reply_error(e, idv, "out_of_memory", 500, "the worker is out of memory: %s", err.msg);
        goto fail;
    }
    enqueue(e, r);
    return;
fail:
    request_free(r);
}

static void handle_embed(struct lyra_engine *e, const json_t *msg, const json_t *idv)
{
    if (!e->embeddings) {
        reply_error(e, idv, "embeddings_disabled", 400,
                    "this model was loaded without embeddings (worker flag --embeddings)");
        return;
    }
    const json_t *inputs = json_object_get(msg, "inputs");
    size_t n_in = json_array_size(inputs);
    if (!json_is_array(inputs) || n_in == 0 || n_in > EMBED_MAX_INPUTS) {
        reply_error(e, idv, "invalid_request", 400, "inputs: must be an array of 1 to %d strings",
                    EMBED_MAX_INPUTS);
        return;
    }
    if ((double)n_in * e->n_embd > EMBED_MAX_FLOATS) {
        reply_error(e, idv, "invalid_request", 400,
                    "inputs: %zu inputs of %d dimensions is more than one reply may hold", n_in,
                    e->n_embd);
        return;
    }
    /* One input must fit a micro-batch: mean pooling sees one ubatch. */
    int limit = e->n_ubatch < e->n_ctx_slot ? e->n_ubatch : e->n_ctx_slot;
    struct request *r = calloc(1, sizeof *r);
    if (!r || !(r->input_off = malloc(sizeof *r->input_off * (n_in + 1)))) {
        free(r);
        reply_error(e, idv, "out_of_memory", 500, "the worker is out of memory");
        return;
    }
    r->id = json_integer_value(idv);
    r->embed = true;
    r->n_inputs = (int)n_in;
    int cap = 0;
    for (size_t i = 0; i < n_in; i++) {
        const json_t *s = json_array_get(inputs, i);
        if (!json_is_string(s)) {
            reply_error(e, idv, "invalid_request", 400, "inputs[%zu]: must be a string", i);
            goto fail;
        }
        if (cap - r->n_tokens < limit) {
            int ncap = cap ? 2 * cap : 2 * limit;
            llama_token *t = realloc(r->tokens, sizeof *t * (size_t)ncap);
            if (!t) {
                reply_error(e, idv, "out_of_memory", 500, "the worker is out of memory");
                goto fail;
            }
            r->tokens = t;
            cap = ncap;
        }
        int n = tokenize(e, json_string_value(s), json_string_length(s), true, r->tokens + r->n_tokens,
                         limit);
        if (n > limit) {
            reply_error(e, idv, "context_length_exceeded", 400,
                        "inputs[%zu] has %d tokens, the limit for one input is %d", i, n, limit);
            goto fail;
        }
        if (n <= 0) {
            reply_error(e, idv, "invalid_request", 400, "inputs[%zu]: empty (no tokens)", i);
            goto fail;
        }
        r->input_off[i] = r->n_tokens;
        r->n_tokens += n;
    }
    r->input_off[n_in] = r->n_tokens;
    enqueue(e, r);
    return;
fail:
    request_free(r);
}

static void send_done(struct lyra_engine *e, json_int_t id, const char *reason, int n_prompt,
                      int n_cached, int n_eval, int n_gen, double queue_ms, double prompt_ms,
                      double gen_ms)
{
    emit_terminal(e, id, json_pack("{s:s, s:I, s:s, s:{s:i, s:i, s:i}, s:{s:f, s:i, s:f, s:f, s:i, s:f, s:f}}",
                      "type", "done", "id", (json_int_t)id, "finish_reason", reason, "usage",
                      "prompt_tokens", n_prompt, "completion_tokens", n_gen, "cached_tokens", n_cached,
                      "timings", "queue_ms", queue_ms, "prompt_n", n_eval, "prompt_ms", prompt_ms,
                      "prompt_per_second", per_second(n_eval, prompt_ms), "predicted_n", n_gen,
                      "predicted_ms", gen_ms, "predicted_per_second", per_second(n_gen, gen_ms)));
}

static void release(struct slot *s, int64_t now)
{
    request_free(s->req);
    s->req = NULL;
    s->state = SLOT_IDLE;
    s->has_next = false;
    s->i_batch = -1;
    s->b_len = 0;
    s->t_last_us = now;
}

/* Ends the slot's request with "done".  Except for a cancel, text still held
 * back is sent first. */
static void fail_oom(struct lyra_engine *e, struct slot *s);

static void finish(struct lyra_engine *e, struct slot *s, const char *reason)
{
    int64_t now = lyra_now_us();
    if (strcmp(reason, "cancelled") != 0) {
        size_t n = lyra_stream_finish(s->stream);
        bool ok = true;
        if (s->req->quiet) {
            ok = release_text(e, s, lyra_stream_text(s->stream), n);
            if (ok && (s->req->acc_len > 0 || s->n_unreported > 0))
                ok = emit_token(e, s, s->req->acc ? s->req->acc : "", s->req->acc_len);
        } else if (n > 0 || s->n_unreported > 0) {
            ok = emit_token(e, s, lyra_stream_text(s->stream), n);
        }
        if (!ok) {
            fail_oom(e, s);
            return;
        }
    }
    int64_t t_prompt = s->t_prompt_us ? s->t_prompt_us : now;
    send_done(e, s->req->id, reason, s->req->n_tokens, s->n_reused, s->n_fed - s->n_reused,
              s->n_decoded, ms_between(s->req->t_arrival_us, s->t_admit_us),
              ms_between(s->t_admit_us, t_prompt), s->t_prompt_us ? ms_between(s->t_prompt_us, now) : 0);
    release(s, now);
}

/* Fails the slot's request when memory ran out while serving it (the text
 * could not be held or sent); the worker carries on. */
static void fail_oom(struct lyra_engine *e, struct slot *s)
{
    reply_error_id(e, s->req->id, "out_of_memory", 500, "the worker ran out of memory serving the request");
    release(s, lyra_now_us());
}

/* Fails the slot's request after a decode error; its KV is dropped since
 * its contents are no longer known. */
static void fail_slot(struct lyra_engine *e, struct slot *s, int rc)
{
    char why[LYRA_ERR_MSG_MAX - 64];
    if (lyra_llamalog_errors(why, sizeof why) == 0)
        snprintf(why, sizeof why, "%s",
                 rc == 1 ? "no room in the KV cache" : rc == 2 ? "aborted" : "decode error");
    lyra_llamalog_mark();
    lyra_error(COMP, "request %" JSON_INTEGER_FORMAT " failed: llama_decode returned %d: %s", s->req->id,
               rc, why);
    char msg[LYRA_ERR_MSG_MAX];
    snprintf(msg, sizeof msg, "llama_decode failed (%d): %s", rc, why);
    reply_error_id(e, s->req->id, "decode_failed", 500, msg);
    llama_memory_seq_rm(e->mem, s->id, -1, -1);
    s->n_cache = 0;
    release(s, lyra_now_us());
}

static void handle_cancel(struct lyra_engine *e, json_int_t id)
{
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->req && s->req->id == id) {
            finish(e, s, "cancelled");
            return;
        }
    }
    for (struct request **pp = &e->q_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        struct request *r = *pp;
        if (r->id != id)
            continue;
        *pp = r->next;
        if (e->q_tail == r)
            e->q_tail = prev;
        e->n_queued--;
        double waited = ms_between(r->t_arrival_us, lyra_now_us());
        send_done(e, id, "cancelled", r->n_tokens, 0, 0, 0, waited, 0, 0);
        request_free(r);
        return;
    }
    /* Unknown id: the request most likely finished while the cancel was on
     * its way; its done frame was or will be sent. */
}

static void handle_status(struct lyra_engine *e, const json_t *idv)
{
    json_t *slots = json_array();
    for (int i = 0; i < e->n_slots; i++) {
        const struct slot *s = &e->slots[i];
        json_array_append_new(slots, json_pack("{s:i, s:s, s:o, s:i}", "slot", s->id, "state",
                                               state_names[s->state], "request",
                                               s->req ? json_integer(s->req->id) : json_null(),
                                               "n_cached", s->n_cache));
    }
    emit_terminal(e, json_integer_value(idv), json_pack("{s:s, s:O, s:o, s:i}", "type", "status", "id", idv, "slots", slots, "queued",
                      e->n_queued));
}

static void handle_tokenize(struct lyra_engine *e, const json_t *msg, const json_t *idv)
{
    bool add_special = true;
    const json_t *as = json_object_get(msg, "add_special");
    if (as && !json_is_boolean(as)) {
        reply_error(e, idv, "invalid_request", 400, "add_special: must be true or false");
        return;
    }
    if (as)
        add_special = json_is_true(as);
    const char *text;
    size_t len;
    char *owned;
    if (prompt_text(e, msg, idv, "text", &text, &len, &owned) < 0)
        return;
    int n = tokenize(e, text, len, add_special, NULL, 0);
    free(owned);
    if (n < 0) {
        reply_error(e, idv, "invalid_request", 400, "text: cannot be tokenized (%s)", lyra_strerror(n));
        return;
    }
    emit_terminal(e, json_integer_value(idv), json_pack("{s:s, s:O, s:i}", "type", "tokens", "id", idv, "count", n));
}

int lyra_engine_handle(struct lyra_engine *e, const json_t *msg)
{
    if (e->sink_rc)
        return e->sink_rc;
    const json_t *type = json_object_get(msg, "type");
    const json_t *idv = json_object_get(msg, "id");
    if (!json_is_string(type)) {
        reply_error(e, json_is_integer(idv) ? idv : NULL, "invalid_request", 400,
                    "type: missing or not a string");
        return e->sink_rc;
    }
    const char *t = json_string_value(type);
    static const char *const known[] = {"generate", "embed", "cancel", "status", "tokenize"};
    bool is_known = false;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        is_known |= strcmp(t, known[i]) == 0;
    if (!is_known) {
        reply_error(e, json_is_integer(idv) ? idv : NULL, "invalid_request", 400,
                    "type: unknown message type '%.*s'", (int)lyra_utf8_clip(t, 64), t);
        return e->sink_rc;
    }
    if (!json_is_integer(idv) || json_integer_value(idv) < 0) {
        reply_error(e, NULL, "invalid_request", 400, "id: must be a non-negative integer");
        return e->sink_rc;
    }
    json_int_t id = json_integer_value(idv);
    if (strcmp(t, "cancel") == 0) {
        handle_cancel(e, id);
    } else if (strcmp(t, "status") == 0) {
        handle_status(e, idv);
    } else if (strcmp(t, "tokenize") == 0) {
        handle_tokenize(e, msg, idv);
    } else if (id_in_use(e, id)) {
        reply_error(e, idv, "invalid_request", 400, "id: %" JSON_INTEGER_FORMAT " is already in use", id);
    } else if (strcmp(t, "generate") == 0) {
        handle_generate(e, msg, idv);
    } else {
        handle_embed(e, msg, idv);
    }
    return e->sink_rc;
}

/* ---- admission -------------------------------------------------------------- */

static int common_prefix(const llama_token *a, int na, const llama_token *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* The idle slot for r, or NULL.  A slot whose cache covers at least a tenth
 * of the prompt is reused (the longest match wins); otherwise an empty slot,
 * lowest index first (keeps busy sequences contiguous, see the top), else
 * the least recently used one.  *lcp gets the reusable prefix. */
static struct slot *pick_slot(struct lyra_engine *e, const struct request *r, int *lcp)
{
    struct slot *best = NULL, *empty = NULL, *lru = NULL;
    int best_lcp = -1;
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->state != SLOT_IDLE)
            continue;
        if (r->embed) { /* embeddings wipe the sequence: take the least valuable */
            if (!best || s->n_cache < best->n_cache)
                best = s;
            continue;
        }
        int l = common_prefix(s->cache, s->n_cache, r->tokens, r->n_tokens);
        if (l > best_lcp) {
            best = s;
            best_lcp = l;
        }
        if (s->n_cache == 0 && !empty)
            empty = s;
        if (!lru || s->t_last_us < lru->t_last_us)
            lru = s;
    }
    if (!best || r->embed) {
        *lcp = 0;
        return best;
    }
    if (best_lcp > 0 && (int64_t)best_lcp * 10 >= r->n_tokens) {
        *lcp = best_lcp;
        return best;
    }
    struct slot *s = empty ? empty : lru;
    *lcp = common_prefix(s->cache, s->n_cache, r->tokens, r->n_tokens);
    return s;
}

static void batch_add(struct llama_batch *b, llama_token t, llama_pos pos, llama_seq_id seq, bool logits)
{
    int i = b->n_tokens++;
    b->token[i] = t;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}

/* Computes embeddings for every input of r in sequence s->id, between steps
 * (the batch is free then), and replies. */
static void run_embed(struct lyra_engine *e, struct slot *s, struct request *r)
{
    int64_t t0 = lyra_now_us();
    llama_memory_seq_rm(e->mem, s->id, -1, -1);
    s->n_cache = 0;
    json_t *data = json_array();
    llama_set_embeddings(e->ctx, true);
    int rc = 0;
    for (int i = 0; i < r->n_inputs && data; i++) {
        e->batch.n_tokens = 0;
        for (int k = r->input_off[i]; k < r->input_off[i + 1]; k++)
            batch_add(&e->batch, r->tokens[k], k - r->input_off[i], s->id, true);
        lyra_llamalog_mark();
        rc = llama_decode(e->ctx, e->batch);
        const float *v = rc == 0 ? llama_get_embeddings_seq(e->ctx, s->id) : NULL;
        llama_memory_seq_rm(e->mem, s->id, -1, -1);
        if (!v) {
            rc = rc ? rc : -100;
            break;
        }
        double norm = 0;
        for (int d = 0; d < e->n_embd; d++)
            norm += (double)v[d] * v[d];
        norm = norm > 0 ? 1.0 / sqrt(norm) : 0.0;
        json_t *vec = json_array();
        for (int d = 0; d < e->n_embd && vec; d++)
            json_array_append_new(vec, json_real(v[d] * norm));
        json_array_append_new(data, vec);
    }
    llama_set_embeddings(e->ctx, false);
    e->batch.n_tokens = 0;
    s->t_last_us = lyra_now_us();
    if (rc != 0) {
        json_decref(data);
        char why[256];
        if (lyra_llamalog_errors(why, sizeof why) == 0)
            snprintf(why, sizeof why, "no pooled embedding");
        lyra_llamalog_mark();
        char msg[LYRA_ERR_MSG_MAX];
        snprintf(msg, sizeof msg, "embedding failed (%d): %s", rc, why);
        reply_error_id(e, r->id, "decode_failed", 500, msg);
    } else {
        emit_terminal(e, r->id, json_pack("{s:s, s:I, s:o, s:i, s:f}", "type", "embedding", "id", (json_int_t)r->id,
                          "data", data, "prompt_tokens", r->n_tokens, "ms",
                          ms_between(t0, s->t_last_us)));
    }
    request_free(r);
}

static void start(struct lyra_engine *e, struct slot *s, struct request *r, int lcp)
{
    /* Keep the shared prefix but always evaluate the last prompt token, so
     * that there are logits to sample the first token from. */
    int keep = lcp < r->n_tokens - 1 ? lcp : r->n_tokens - 1;
    if (r->prompt_probs)
        keep = 0; /* every prompt token's logits are needed, and cached ones have none */
    if (keep < s->n_cache && !llama_memory_seq_rm(e->mem, s->id, keep, -1)) {
        /* partial removal is not possible for every memory type */
        llama_memory_seq_rm(e->mem, s->id, -1, -1);
        keep = 0;
    }
    s->req = r;
    s->state = SLOT_PROMPT;
    s->n_cache = s->n_fed = s->n_reused = keep;
    s->has_next = false;
    s->n_decoded = s->n_unreported = 0;
    s->n_pend = 0;
    s->t_admit_us = lyra_now_us();
    s->t_prompt_us = 0;
    lyra_stream_reset(s->stream);
    emit(e, json_pack("{s:s, s:I, s:i, s:i, s:i, s:f}", "type", "started", "id", (json_int_t)r->id,
                      "slot", s->id, "prompt_tokens", r->n_tokens, "cached_tokens", keep, "queue_ms",
                      ms_between(r->t_arrival_us, s->t_admit_us)));
}

static void admit(struct lyra_engine *e)
{
    while (e->q_head && !e->sink_rc) {
        int lcp;
        struct slot *s = pick_slot(e, e->q_head, &lcp);
        if (!s)
            return;
        struct request *r = e->q_head;
        e->q_head = r->next;
        if (!e->q_head)
            e->q_tail = NULL;
        e->n_queued--;
        if (r->embed)
            run_embed(e, s, r);
        else
            start(e, s, r, lcp);
    }
}

/* ---- the step --------------------------------------------------------------- */

/* Records the slot's batch tokens as evaluated, then, if its logits are
 * ready (row idx of the last decode), samples and streams one token. */
/* The logprobs of the prompt tokens that follow this chunk's rows (row0 is
 * the batch row of the slot's first token in the chunk), and of the first
 * prompt token when the chunk starts the prompt, sent as one frame. */
static bool prompt_logprobs(struct lyra_engine *e, struct slot *s, int row0)
{
    struct request *r = s->req;
    if (!pend_reserve(e, s, s->b_len + 1))
        return false;
    if (s->n_fed == 0)
        lyra_logprob_none(r->tokens[0], &s->pend[s->n_pend++]);
    for (int k = 0; k < s->b_len; k++) {
        int t = s->n_fed + k + 1; /* the token row k predicts */
        if (t >= r->n_tokens)
            break; /* the last prompt token's row samples: reported with the generated token */
        const float *logits = llama_get_logits_ith(e->ctx, row0 + k);
        if (!logits)
            return false;
        lyra_logprob_compute(logits, e->n_vocab, r->tokens[t], r->n_probs, &s->pend[s->n_pend++]);
    }
    return emit_prompt_logprobs(e, s);
}

static void after_decode(struct lyra_engine *e, struct slot *s, int row0, int idx)
{
    struct request *r = s->req;
    if (s->state == SLOT_PROMPT && r->prompt_probs && !prompt_logprobs(e, s, row0)) {
        fail_oom(e, s);
        return;
    }
    if (s->state == SLOT_PROMPT) {
        memcpy(s->cache + s->n_cache, r->tokens + s->n_fed, sizeof *s->cache * (size_t)s->b_len);
        s->n_fed += s->b_len;
        s->n_cache += s->b_len;
    } else {
        s->cache[s->n_cache++] = s->next;
        s->has_next = false;
    }
    if (idx < 0)
        return;
    if (s->state == SLOT_PROMPT) {
        s->state = SLOT_GENERATING;
        s->t_prompt_us = lyra_now_us();
        if (r->n_predict == 0) { /* scoring only */
            finish(e, s, "length");
            return;
        }
    }
    llama_token tok = lyra_sampler_sample(r->sampler, e->ctx, idx, s->cand, e->n_vocab, e->grammar_budget_ms);
    if (tok == -2) { /* the grammar costs too much per token: end this request, not the others' */
        char msg[160];
        lyra_fmt(msg, sizeof msg, "params.grammar: constraining one token took %d ms or more; the grammar is too ambiguous",
                 e->grammar_budget_ms);
        reply_error_id(e, r->id, "grammar_too_slow", 400, msg);
        release(s, lyra_now_us());
        return;
    }
    if (tok < 0) { /* the grammar is complete */
        finish(e, s, "stop");
        return;
    }
    s->n_decoded++;
    s->n_unreported++;
    if (!r->params.ignore_eos && llama_vocab_is_eog(e->vocab, tok)) {
        finish(e, s, "stop");
        return;
    }
    if (r->n_probs >= 0) { /* of the raw logits, as OpenAI and llama-server (logprobs.h) */
        const float *logits = llama_get_logits_ith(e->ctx, idx);
        if (!logits || !pend_reserve(e, s, 1)) {
            fail_oom(e, s);
            return;
        }
        lyra_logprob_compute(logits, e->n_vocab, tok, r->n_probs, &s->pend[s->n_pend++]);
    }
    int n = llama_token_to_piece(e->vocab, tok, e->piece, e->piece_cap, 0, false);
    if (n < 0) {
        char *p = realloc(e->piece, (size_t)-n);
        if (!p) {
            fail_oom(e, s);
            return;
        }
        e->piece = p;
        e->piece_cap = -n;
        n = llama_token_to_piece(e->vocab, tok, e->piece, e->piece_cap, 0, false);
    }
    if (n > 0 && lyra_stream_push(s->stream, e->piece, (size_t)n) < 0) {
        fail_oom(e, s);
        return;
    }
    bool stopped;
    size_t ready = lyra_stream_ready(s->stream, r->params.stop, r->params.n_stop, &stopped);
    if (stopped) {
        finish(e, s, "stop");
    } else if (s->n_decoded >= r->n_predict || s->n_cache >= e->n_ctx_slot) {
        finish(e, s, "length");
    } else {
        if (ready > 0) {
            if (!release_text(e, s, lyra_stream_text(s->stream), ready)) {
                fail_oom(e, s);
                return;
            }
            lyra_stream_consume(s->stream, ready);
        }
        s->next = tok;
        s->has_next = true;
    }
}

/* A decode of the whole batch failed: retry slot by slot so that only the
 * requests whose own tokens cannot be decoded fail. */
static void recover(struct lyra_engine *e, int rc)
{
    lyra_warn(COMP, "llama_decode of %d tokens returned %d; retrying per slot", e->batch.n_tokens, rc);
    int n_in_batch = 0;
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->b_len > 0) {
            /* undo micro-batches that were stored before the failure */
            llama_memory_seq_rm(e->mem, s->id, s->n_cache, -1);
            n_in_batch++;
        }
    }
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->b_len == 0)
            continue;
        int rc2 = rc;
        if (n_in_batch > 1) {
            struct llama_batch view = {
                .n_tokens = s->b_len,
                .token = e->batch.token + s->b_off,
                .pos = e->batch.pos + s->b_off,
                .n_seq_id = e->batch.n_seq_id + s->b_off,
                .seq_id = e->batch.seq_id + s->b_off,
                .logits = e->batch.logits + s->b_off,
            };
            rc2 = llama_decode(e->ctx, view);
        }
        if (rc2 == 2 && e->stop && *e->stop)
            return;
        if (rc2 != 0) {
            llama_memory_seq_rm(e->mem, s->id, s->n_cache, -1);
            fail_slot(e, s, rc2);
        } else {
            after_decode(e, s, 0, s->i_batch < 0 ? -1 : s->i_batch - s->b_off);
        }
    }
}

int lyra_engine_step(struct lyra_engine *e)
{
    admit(e);
    if (e->sink_rc)
        return e->sink_rc;

    int n_gen = 0;
    for (int i = 0; i < e->n_slots; i++)
        n_gen += e->slots[i].state == SLOT_GENERATING && e->slots[i].has_next;
    int budget = e->n_batch - n_gen;
    /* Prompt rows that want logits (echo + logprobs): llama.cpp's output
     * buffer grows to the most rows one batch asked for, n_vocab floats
     * each, and never shrinks — so a step takes at most this many. */
    int logit_rows = LYRA_PROMPT_LOGIT_ROWS;

    struct llama_batch *b = &e->batch;
    b->n_tokens = 0;
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        s->b_off = b->n_tokens;
        s->b_len = 0;
        s->i_batch = -1;
        if (s->state == SLOT_GENERATING && s->has_next) {
            batch_add(b, s->next, s->n_cache, s->id, true);
            s->b_len = 1;
            s->i_batch = b->n_tokens - 1;
        } else if (s->state == SLOT_PROMPT && budget > 0) {
            int left = s->req->n_tokens - s->n_fed;
            int n = left < budget ? left : budget;
            if (s->req->prompt_probs) {
                if (n > logit_rows)
                    n = logit_rows;
                logit_rows -= n;
                if (n == 0)
                    continue; /* next step: this one's logit rows are taken */
            }
            for (int k = 0; k < n; k++)
                batch_add(b, s->req->tokens[s->n_fed + k], s->n_cache + k, s->id,
                          k == left - 1 || s->req->prompt_probs);
            s->b_len = n;
            budget -= n;
            if (n == left)
                s->i_batch = b->n_tokens - 1;
        }
    }
    if (b->n_tokens == 0)
        return e->sink_rc;

    int rc = llama_decode(e->ctx, *b);
    if (rc == 2 && e->stop && *e->stop)
        return e->sink_rc; /* aborted for exit */
    if (rc != 0) {
        lyra_llamalog_mark();
        recover(e, rc);
    } else {
        for (int i = 0; i < e->n_slots; i++) {
            struct slot *s = &e->slots[i];
            if (s->b_len > 0)
                after_decode(e, s, s->b_off, s->i_batch);
        }
    }
    b->n_tokens = 0;
    return e->sink_rc;
}

bool lyra_engine_busy(const struct lyra_engine *e)
{
    if (e->q_head)
        return true;
    for (int i = 0; i < e->n_slots; i++)
        if (e->slots[i].state != SLOT_IDLE)
            return true;
    return false;
}

/* ---- set-up ----------------------------------------------------------------- */

/* Called by ggml between the nodes of a graph: the place to notice the
 * stop flag, and evidence that the decode is moving (a step of thousands of
 * prompt tokens on a large model may take minutes; what matters to the
 * daemon's progress deadline is that the computation advances). */
static bool abort_cb(void *data)
{
    struct lyra_engine *e = data;
    if (e->progress)
        e->progress(e->progress_ud);
    return e->stop && *e->stop;
}

static bool progress_cb(float progress, void *data)
{
    (void)progress;
    volatile sig_atomic_t *stop = data;
    return !(stop && *stop);
}

static int llama_failure(struct lyra_err *err, int code, const char *what)
{
    char why[LYRA_ERR_MSG_MAX];
    if (lyra_llamalog_errors(why, sizeof why) == 0)
        snprintf(why, sizeof why, "llama.cpp gave no reason");
    lyra_llamalog_mark();
    return lyra_err_set(err, code, "%s: %s", what, why);
}

/* A first decode so that the first request does not pay for graph
 * allocation and page faults (llama-server does the same). */
static void warm_up(struct lyra_engine *e)
{
    llama_token t = llama_vocab_bos(e->vocab);
    if (t == LLAMA_TOKEN_NULL)
        t = 0;
    e->batch.n_tokens = 0;
    batch_add(&e->batch, t, 0, 0, true);
    if (llama_decode(e->ctx, e->batch) != 0)
        lyra_warn(COMP, "warm-up decode failed");
    llama_memory_clear(e->mem, true);
    llama_synchronize(e->ctx);
    e->batch.n_tokens = 0;
}

int lyra_engine_new(const struct lyra_engine_config *cfg, const struct lyra_engine_sink *sink,
                    struct lyra_engine **out, struct lyra_err *err)
{
    *out = NULL;
    if (cfg->parallel < 1 || cfg->parallel > 256 || cfg->ctx < 1 || cfg->threads < 1 || cfg->batch < 1 ||
        cfg->ubatch < 1)
        return lyra_err_set(err, LYRA_EINVAL, "invalid engine configuration");
    struct stat st;
    if (stat(cfg->model_path, &st) != 0)
        return lyra_err_set(err, errno == ENOENT ? LYRA_ENOTFOUND : LYRA_EIO,
                            "failed to load model %s: %s", cfg->model_path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return lyra_err_set(err, LYRA_EIO, "failed to load model %s: not a regular file", cfg->model_path);

    struct lyra_engine *e = calloc(1, sizeof *e);
    if (!e)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    e->sink = *sink;
    e->stop = cfg->stop;
    e->progress = cfg->progress;
    e->progress_ud = cfg->progress_ud;
    e->grammar_budget_ms = cfg->grammar_budget_ms > 0 ? cfg->grammar_budget_ms : LYRA_GRAMMAR_TOKEN_BUDGET_MS;
    if (cfg->grammar_budget_ms == 0 && cfg->grammar_budget_set)
        e->grammar_budget_ms = 0;
    e->embeddings = cfg->embeddings;
    e->kv_unified = cfg->kv_unified;
    e->threads = cfg->threads;
    e->name = cfg->name ? strdup(cfg->name) : NULL;
    e->path = strdup(cfg->model_path);
    int rc = LYRA_ENOMEM;
    if (!e->path)
        goto fail_msg;

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = cfg->gpu_layers < 0 ? 999 : cfg->gpu_layers;
    mp.progress_callback = progress_cb;
    mp.progress_callback_user_data = (void *)cfg->stop;
    lyra_llamalog_mark();
    e->model = llama_model_load_from_file(cfg->model_path, mp);
    if (!e->model) {
        char what[LYRA_ERR_MSG_MAX / 2];
        snprintf(what, sizeof what, "failed to load model %s", cfg->model_path);
        rc = llama_failure(err, LYRA_EIO, what);
        goto fail;
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);
    e->n_embd = llama_model_n_embd(e->model);
    e->n_ctx_train = llama_model_n_ctx_train(e->model);
    int ctx_slot = cfg->ctx;
    if (e->n_ctx_train > 0 && ctx_slot > e->n_ctx_train)
        ctx_slot = e->n_ctx_train;

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)ctx_slot * (uint32_t)cfg->parallel;
    cp.n_seq_max = (uint32_t)cfg->parallel;
    cp.n_batch = (uint32_t)(cfg->batch > cfg->parallel ? cfg->batch : cfg->parallel);
    cp.n_ubatch = (uint32_t)(cfg->ubatch < (int)cp.n_batch ? cfg->ubatch : (int)cp.n_batch);
    cp.n_threads = cp.n_threads_batch = cfg->threads;
    cp.kv_unified = cfg->kv_unified;
    cp.no_perf = true;
    cp.abort_callback = abort_cb;
    cp.abort_callback_data = e;
    if (cfg->embeddings)
        cp.pooling_type = LLAMA_POOLING_TYPE_MEAN; /* embeddings switched on per embed request */
    lyra_llamalog_mark();
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        char what[LYRA_ERR_MSG_MAX / 2];
        snprintf(what, sizeof what, "failed to create a context of %u tokens (%d slots x %d)", cp.n_ctx,
                 cfg->parallel, ctx_slot);
        rc = llama_failure(err, LYRA_ENOMEM, what);
        goto fail;
    }
    e->mem = llama_get_memory(e->ctx);
    e->n_slots = cfg->parallel;
    e->n_batch = (int)llama_n_batch(e->ctx);
    e->n_ubatch = (int)llama_n_ubatch(e->ctx);
    /* Per-sequence KV streams are padded by llama.cpp; a unified buffer
     * is shared, so the per-slot limit is ours to keep. */
    e->n_ctx_slot = cfg->kv_unified ? ctx_slot : (int)llama_n_ctx_seq(e->ctx);
    if (e->n_ctx_slot > ctx_slot) /* padded past what was asked (and past the model's trained context) */
        e->n_ctx_slot = ctx_slot;

    bool fell_back;
    rc = lyra_template_select(e->model, cfg->chat_template, &e->tmpl, &fell_back, err);
    if (rc < 0)
        goto fail;
    if (fell_back)
        lyra_warn(COMP, "the model's chat template is not supported by llama.cpp; using chatml");

    rc = LYRA_ENOMEM;
    e->eog = malloc(sizeof *e->eog * 16);
    if (!e->eog)
        goto fail_msg;
    for (llama_token t = 0; t < e->n_vocab; t++) {
        if (llama_vocab_is_eog(e->vocab, t)) {
            if (e->n_eog % 16 == 0 && e->n_eog > 0) {
                llama_token *p = realloc(e->eog, sizeof *p * (size_t)(e->n_eog + 16));
                if (!p)
                    goto fail_msg;
                e->eog = p;
            }
            e->eog[e->n_eog++] = t;
        }
    }
    e->slots = calloc((size_t)e->n_slots, sizeof *e->slots);
    e->piece_cap = 256;
    e->piece = malloc((size_t)e->piece_cap);
    if (!e->slots || !e->piece)
        goto fail_msg;
    /* The longest text one token stands for (special tokens included): a
     * prompt of L bytes has at least L / max_piece tokens, which lets a
     * prompt far too long be refused before it is tokenized. */
    e->max_piece = 1;
    for (llama_token t = 0; t < e->n_vocab; t++) {
        int n = llama_token_to_piece(e->vocab, t, e->piece, e->piece_cap, 0, true);
        if (n < 0)
            n = -n; /* longer than the buffer: its length */
        if (n > e->max_piece)
            e->max_piece = n;
    }
    for (int i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        s->id = i;
        s->i_batch = -1;
        s->cache = malloc(sizeof *s->cache * (size_t)e->n_ctx_slot);
        s->cand = malloc(sizeof *s->cand * (size_t)e->n_vocab);
        s->stream = lyra_stream_new();
        if (!s->cache || !s->cand || !s->stream)
            goto fail_msg;
    }
    e->batch = llama_batch_init(e->n_batch, 0, 1);
    warm_up(e);
    *out = e;
    return 0;

fail_msg:
    lyra_err_set(err, rc, "out of memory setting up the engine");
fail:
    lyra_engine_free(e);
    return rc;
}

void lyra_engine_free(struct lyra_engine *e)
{
    if (!e)
        return;
    for (struct request *r = e->q_head, *n; r; r = n) {
        n = r->next;
        request_free(r);
    }
    if (e->slots) {
        for (int i = 0; i < e->n_slots; i++) {
            request_free(e->slots[i].req);
            free(e->slots[i].cache);
            free(e->slots[i].cand);
            free(e->slots[i].pend);
            lyra_stream_free(e->slots[i].stream);
        }
    }
    free(e->slots);
    if (e->batch.token)
        llama_batch_free(e->batch);
    if (e->ctx)
        llama_free(e->ctx);
    if (e->model)
        llama_model_free(e->model);
    free(e->eog);
    free(e->out);
    free(e->piece);
    free(e->lp_piece);
    free(e->tmpl);
    free(e->name);
    free(e->path);
    free(e);
}

static const char *dev_type_name(enum ggml_backend_dev_type t)
{
    switch (t) {
    case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
    case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
    case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
    case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
    default: return "other";
    }
}

/* A JSON string for text from a file or a library (a GGUF's template, a
 * path, a device name), made valid UTF-8 first: such text may be anything,
 * and a "ready" that cannot be encoded must not stop the model. */
static json_t *text_json(const char *s)
{
    if (!s)
        return json_null();
    if (lyra_utf8_valid(s, strlen(s)))
        return json_string(s);
    char *copy = strdup(s);
    json_t *j = copy ? json_string(lyra_utf8_scrub(copy)) : NULL;
    free(copy);
    return j;
}

json_t *lyra_engine_ready(struct lyra_engine *e, double load_ms)
{
    char desc[256];
    llama_model_desc(e->model, desc, sizeof desc);
    const char *own = llama_model_chat_template(e->model, NULL);
    json_t *devices = json_array();
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(d, &free_b, &total_b);
        json_array_append_new(devices, json_pack("{s:o, s:o, s:s, s:I, s:I}", "name",
                                                 text_json(ggml_backend_dev_name(d)), "description",
                                                 text_json(ggml_backend_dev_description(d)), "type",
                                                 dev_type_name(ggml_backend_dev_type(d)), "memory_total",
                                                 (json_int_t)total_b, "memory_free", (json_int_t)free_b));
    }
    json_t *model = json_pack(
        "{s:o, s:I, s:i, s:i, s:i, s:i, s:I, s:o, s:o, s:b}", "path", text_json(e->path), "n_params",
        (json_int_t)llama_model_n_params(e->model), "n_vocab", e->n_vocab, "n_ctx_train", e->n_ctx_train,
        "n_embd", e->n_embd, "n_layer", llama_model_n_layer(e->model), "size_bytes",
        (json_int_t)llama_model_size(e->model), "desc", text_json(desc), "chat_template", text_json(own),
        "has_encoder", llama_model_has_encoder(e->model));
    return json_pack("{s:s, s:o, s:f, s:i, s:i, s:i, s:i, s:i, s:b, s:b, s:o, s:o, s:o}", "type", "ready",
                     "name", text_json(e->name), "load_ms", load_ms, "n_ctx_slot", e->n_ctx_slot, "n_slots",
                     e->n_slots, "threads", e->threads, "n_batch", e->n_batch, "n_ubatch", e->n_ubatch,
                     "embeddings", e->embeddings, "kv_unified", e->kv_unified, "chat_template", text_json(e->tmpl),
                     "model", model ? model : json_object(), "devices", devices ? devices : json_array());
}
