/* requests.h — the bodies of the inference endpoints, checked and turned into
 * what the worker is sent, as pure functions of the parsed JSON body:
 *
 *   POST /v1/chat/completions   lyra_requests_openai_chat()
 *   POST /v1/completions        lyra_requests_openai_completions()
 *   POST /v1/embeddings         lyra_requests_openai_embeddings()
 *   POST /chat                  lyra_requests_chat()
 *
 * Nothing here touches HTTP, the store or the models, so the handlers stay
 * thin and a fuzzer (tests/fuzz/fuzz_requests.c) can drive every path.
 *
 * Everything a client can get wrong is refused here with 400 naming the
 * field as the client wrote it (`messages[3].role`, `options.top_p`,
 * `response_format.type`): types, enumerated values (roles, content part
 * types, response_format.type, encoding_format, n) and the sampling ranges
 * of core/sampling_params.h — the same check the worker makes, so a request
 * accepted here is never refused by the worker for its parameters.  Roles:
 * system, user, assistant, and OpenAI's `developer` (sent as system); `tool`
 * is refused (Lyra has no tool calling, and most llama.cpp templates would
 * silently drop such a message).  max_tokens is only checked for being a
 * positive integer (or -1): a value above the model's context is clamped by
 * the worker, as llama-server and Ollama do.
 *
 * Error messages always start with the field name and are valid UTF-8 even
 * when they quote client text (quoted text is cut on a character boundary).
 *
 * Thread-safety: all functions are thread-safe (no shared state). */
#ifndef LYRA_REQUESTS_H
#define LYRA_REQUESTS_H

#include <jansson.h>
#include <stdbool.h>

#include "core/error.h"

/* Longest model name and conversation id accepted (a file name is at most
 * 255 bytes; conversation ids are UUIDs). */
#define LYRA_REQUESTS_MAX_MODEL 256
#define LYRA_REQUESTS_MAX_CONV_ID 64

/* Most top logprobs per token (chat top_logprobs, completions logprobs):
 * OpenAI's chat limit; its completions limit is 5, llama-server has none.
 * The same as worker/logprobs.h's LYRA_MAX_TOP_LOGPROBS. */
#define LYRA_REQUESTS_MAX_TOP_LOGPROBS 20

/* Why a body was refused. */
struct lyra_request_error {
    int status;          /* HTTP status: 400, or 500 when out of memory */
    const char *code;    /* static.  OpenAI endpoints: "invalid_request" (the body as a whole),
                            "invalid_type", "invalid_value", "unsupported_value";
                            /chat: "invalid_field"; both: "internal" (out of memory) */
    char param[128];     /* the field as the client wrote it ("messages[3].role"); "" = the
                            body as a whole */
    struct lyra_err err; /* err.code: LYRA_EINVAL or LYRA_ENOMEM; err.msg: "<param>: <why>" */
};

/* What a parser extracts from a body.  Strings are borrowed from the body
 * and valid while the caller holds it; json_t fields are new references
 * released by lyra_requests_clear(). */
struct lyra_request {
    json_t *msg;                 /* OpenAI endpoints: the worker message without id —
                                    {"type":"generate","messages"|"prompt",…,"params":{…}} or
                                    {"type":"embed","inputs":[…]}; NULL for /chat */
    json_t *params;              /* /chat: the worker "params" (the messages come from the
                                    store); NULL for the OpenAI endpoints */
    const char *model;           /* the requested model; NULL = not given (use the default) */
    const char *message;         /* /chat: the user's message */
    const char *conversation_id; /* /chat: NULL = start a new conversation */
    bool stream;
    bool include_usage; /* OpenAI: stream_options.include_usage */
    /* OpenAI: the top entries per token asked for (chat: top_logprobs with
     * logprobs true; completions: logprobs), -1 = no logprobs.  The worker
     * message then has "logprobs": N (and, for completions with echo,
     * "prompt_logprobs": true). */
    int logprobs;
    bool echo;          /* completions: echo the prompt (max_tokens 0 scores it only) */
    const char *prompt; /* completions: the prompt text (borrowed from the body) */
};

/* Each parser reads `body` (borrowed; any JSON value, the parser checks that
 * it is an object).  Returns 0 with *out filled (release with
 * lyra_requests_clear()), or LYRA_EINVAL / LYRA_ENOMEM with *err filled and
 * *out left empty (clearing it is harmless).  err may not be NULL. */
int lyra_requests_openai_chat(const json_t *body, struct lyra_request *out, struct lyra_request_error *err);
int lyra_requests_openai_completions(const json_t *body, struct lyra_request *out,
                                     struct lyra_request_error *err);
int lyra_requests_openai_embeddings(const json_t *body, struct lyra_request *out,
                                    struct lyra_request_error *err);
int lyra_requests_chat(const json_t *body, struct lyra_request *out, struct lyra_request_error *err);

/* Releases the references in r and empties it.  NULL is a no-op. */
void lyra_requests_clear(struct lyra_request *r);

#endif
