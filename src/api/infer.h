/* infer.h — the bridge between an HTTP request and a model job.
 *
 * An inference handler validates its body, builds the worker message and
 * calls lyra_infer_start() with a formatter (the response shape: OpenAI chat
 * completions, OpenAI completions, Lyra's /chat).  The bridge parks the HTTP
 * request, submits the job, and answers:
 *   - not streaming: one JSON body when the job ends (or a JSON error);
 *   - streaming: nothing until the job starts (so errors found before the
 *     first token — unknown model, context too long, failed load — are
 *     still plain JSON errors with the right status), then a stream whose
 *     first chunk is the formatter's opening, one chunk per token frame,
 *     and the formatter's closing (or an error chunk if the worker dies).
 * A client that leaves mid-stream cancels the job, freeing its slot within
 * one decode step.  Spans (queue, load, prompt, generation) are recorded in
 * the trace ring and returned in `timings`.
 *
 * Thread-safety: lyra_infer_start() is called from a handler; everything
 * else runs on the worker's I/O thread or an HTTP thread under the bridge's
 * own lock. */
#ifndef LYRA_INFER_H
#define LYRA_INFER_H

#include <jansson.h>
#include <stdbool.h>

#include "http/http.h"

struct lyra_server;
struct lyra_infer;

/* What the job produced, for the formatter. */
struct lyra_infer_result {
    const char *model;
    const char *text;              /* all generated text (non-stream) */
    const char *finish_reason;     /* stop|length|cancelled */
    json_t *usage;                 /* worker's usage (borrowed) */
    json_t *timings;               /* worker's timings + load_ms, total_ms (borrowed) */
    json_t *embedding;             /* embedding frame (borrowed), for embed jobs */
    const char *id;                /* response id ("chatcmpl-…") */
    long created;                  /* unix time */
};

struct lyra_infer_format {
    bool sse;  /* stream chunks as "data: …\n\n" and end with "data: [DONE]" */
    /* Non-stream body (new reference). */
    json_t *(*full)(const struct lyra_infer_result *r, void *ud);
    /* Stream: opening chunk, a text delta, the closing chunk(s) (new refs;
     * `closing` may return an array of chunks). */
    json_t *(*opening)(const struct lyra_infer_result *r, void *ud);
    json_t *(*delta)(const struct lyra_infer_result *r, const char *text, void *ud);
    json_t *(*closing)(const struct lyra_infer_result *r, void *ud);
    /* An error body {"error":…} for status (new ref). */
    json_t *(*error)(const char *code, const char *message, int status, void *ud);
    /* Called once when the job ended well, before the answer is sent (e.g.
     * to persist a conversation); may add fields to `body` (non-stream). */
    void (*finished)(const struct lyra_infer_result *r, json_t *body, void *ud);
    /* Frees ud when the request is over (may be NULL). */
    void (*free_ud)(void *ud);
};

struct lyra_infer_options {
    const char *model;       /* name or alias */
    json_t *msg;             /* worker message without id (reference taken) */
    bool stream;
    const char *id_prefix;   /* "chatcmpl-", "cmpl-", "chat-" */
    /* Checked against the caller's grants for `model` before anything
     * starts (403 model_forbidden in fmt->error's shape); NULL = none. */
    const char *permission;
    const struct lyra_infer_format *fmt;
    void *ud;
};

/* Starts the request; the handler returns right after.  On an immediate
 * failure the request is answered with fmt->error. */
void lyra_infer_start(struct lyra_server *srv, struct lyra_http_req *req, const struct lyra_infer_options *opts);

/* OpenAI-style error body {"error":{"message","type","param","code"}}. */
json_t *lyra_openai_error(const char *code, const char *message, int status, void *ud);

/* The default model: models.default_model, else the first valid one.
 * Returns a malloc'd name or NULL. */
char *lyra_default_model(struct lyra_server *srv);

#endif
