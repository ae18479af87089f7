/* engine.h — the inference engine of one worker: one model, one
 * llama_context whose sequences are the slots, a FIFO of waiting requests,
 * and the continuous-batching step.
 *
 * The engine does no I/O of its own: it is handed decoded messages
 * (lyra_engine_handle) and gives every reply to a sink, so worker.c owns the
 * socket and tests could drive it directly.  docs/worker.md describes the
 * messages and the design.
 *
 * Thread-safety: none; one thread owns an engine (llama.cpp contexts are not
 * thread-safe either). */
#ifndef LYRA_ENGINE_H
#define LYRA_ENGINE_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_engine_config {
    const char *model_path;    /* borrowed for lyra_engine_new() */
    const char *name;          /* reported in "ready"; may be NULL */
    int ctx;                   /* context per slot, tokens (capped at n_ctx_train) */
    int parallel;              /* slots = llama sequences */
    int threads;               /* n_threads and n_threads_batch */
    int gpu_layers;            /* -1 = all */
    int batch, ubatch;         /* llama n_batch / n_ubatch */
    bool embeddings;           /* accept "embed" (mean pooling) */
    bool kv_unified;           /* one KV buffer shared by all slots */
    const char *chat_template; /* override; NULL = the model's own */
    /* Set (by a signal handler) when the process must exit: aborts a running
     * llama_decode and a model load.  Borrowed; may be NULL. */
    volatile sig_atomic_t *stop;
    /* Called (from the decoding thread, often: between graph nodes) while a
     * decode advances; may be NULL.  It must be cheap and lock-free. */
    void (*progress)(void *ud);
    void *progress_ud;
    /* A grammar request whose constraint takes this long for one token ends
     * (grammar_too_slow); 0 with grammar_budget_set: every grammar request
     * does (for tests); else the default LYRA_GRAMMAR_TOKEN_BUDGET_MS. */
    int grammar_budget_ms;
    bool grammar_budget_set;
};

/* Where the engine's messages go.  send() gets a JSON object (borrowed);
 * send_raw() an already serialised JSON object (borrowed; used for "token"
 * frames so that streaming does not allocate).  Both return 0 or a negative
 * LYRA_E* code; after an error the engine stops sending and lyra_engine_step
 * and lyra_engine_handle return that code. */
struct lyra_engine_sink {
    int (*send)(void *ud, const json_t *msg);
    int (*send_raw)(void *ud, const char *json, size_t len);
    void *ud;
};

struct lyra_engine;

/* Loads the model and creates the context.  The llama backends must be
 * loaded (ggml_backend_load_all_from_path) before.  `sink` is copied.
 * Returns 0 with *out (caller frees with lyra_engine_free), or LYRA_ENOTFOUND
 * (no model file), LYRA_EIO (load failed), LYRA_EUNSUPPORTED (chat template
 * override), LYRA_ENOMEM (context), LYRA_EINVAL (config); err->msg is the
 * reason to put in the "fatal" message. */
int lyra_engine_new(const struct lyra_engine_config *cfg, const struct lyra_engine_sink *sink,
                    struct lyra_engine **out, struct lyra_err *err);

/* Frees the engine, its context and model.  Requests still running are
 * dropped without replies.  NULL is a no-op. */
void lyra_engine_free(struct lyra_engine *e);

/* Builds the "ready" message (new reference; caller decrefs). */
json_t *lyra_engine_ready(struct lyra_engine *e, double load_ms);

/* Handles one daemon message (borrowed): replies at once to status,
 * tokenize, bad requests and cancel; queues generate and embed for the next
 * step.  Returns 0 or the sink's error. */
int lyra_engine_handle(struct lyra_engine *e, const json_t *msg);

/* True while a slot is busy or a request waits: the caller should step
 * without blocking on input. */
bool lyra_engine_busy(const struct lyra_engine *e);

/* One batching step: admit queued requests into free slots, decode one
 * batch holding every active slot's next prompt chunk or token, sample, and
 * stream the results.  Returns 0 or the sink's error. */
int lyra_engine_step(struct lyra_engine *e);

#endif
