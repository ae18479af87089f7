/* sampling_params.h — the one definition of a generate request's sampling
 * parameters ("params" of a worker `generate` message, docs/worker.md): their
 * names, types, ranges and llama-server's defaults.
 *
 * Both sides use it: the daemon checks a request before it leaves (so a bad
 * value is a 400 naming the client's field, and a request the daemon accepts
 * is one the worker accepts), the worker parses the same object into the
 * struct its sampler is built from.  It lives in lyracore and must not depend
 * on llama.h (the daemon does not link llama.cpp).
 *
 * Thread-safety: all functions are thread-safe (no shared state). */
#ifndef LYRA_SAMPLING_PARAMS_H
#define LYRA_SAMPLING_PARAMS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

#define LYRA_MAX_STOP 16            /* stop strings per request */
#define LYRA_MAX_STOP_LEN 256       /* bytes per stop string */
#define LYRA_MAX_GRAMMAR (1 << 20)  /* bytes of GBNF */
#define LYRA_SEED_RANDOM UINT32_MAX /* = LLAMA_DEFAULT_SEED (checked in worker/sampling.c) */

/* A request's "params", with llama-server's defaults. */
struct lyra_sampling_params {
    int max_tokens;       /* >= 1, or -1 = until the slot's context is full; values
                             above INT32_MAX are clamped (the worker clamps to the slot) */
    float temperature;    /* 0 = greedy */
    int top_k;            /* 0 = off */
    float top_p, min_p;   /* 1 / 0 = off */
    float repeat_penalty; /* 1 = off */
    int repeat_last_n;    /* tokens of history penalised; -1 = whole context */
    float presence_penalty, frequency_penalty;
    uint32_t seed; /* LYRA_SEED_RANDOM = random */
    bool ignore_eos, json_mode, add_special;
    char *grammar;             /* owned; NULL = none */
    char *stop[LYRA_MAX_STOP]; /* owned */
    int n_stop;
};

/* Fills *p from the request's "params" object (borrowed; NULL, null or a
 * non-object = all defaults).  Unknown keys are ignored (forward
 * compatibility).  Returns 0, or LYRA_EINVAL with err->msg naming the field
 * ("temperature: must be >= 0, got -1"), or LYRA_ENOMEM.  On success the
 * caller releases *p with lyra_sampling_params_clear(); on failure *p holds
 * nothing to release. */
int lyra_sampling_params_parse(const json_t *params, struct lyra_sampling_params *p, struct lyra_err *err);

/* Frees what *p owns and leaves it empty.  Safe to call twice. */
void lyra_sampling_params_clear(struct lyra_sampling_params *p);

/* Checks params as lyra_sampling_params_parse() would, keeping nothing.
 * Returns 0 or its error; on error *field (if not NULL) is set to the name
 * of the offending key (a static string, "temperature", "stop", ...), so a
 * caller can report the field under the client's own name. */
int lyra_sampling_params_check(const json_t *params, const char **field, struct lyra_err *err);

#endif
