/* openai.c — OpenAI-compatible endpoints on the inference bridge:
 *   POST /v1/chat/completions   (stream false/true, SSE chunks, usage)
 *   POST /v1/completions
 *   POST /v1/embeddings
 * Errors use OpenAI's shape {"error":{"message","type","param","code"}}.
 * Beyond OpenAI's fields, llama-server's extensions are accepted (top_k,
 * min_p, repeat_penalty, ignore_eos, grammar) and responses carry
 * llama-server's `timings`.  Bodies are checked and turned into worker
 * messages by requests.c; this file only answers. */
#include <stdlib.h>
#include <string.h>

#include "api/infer.h"
#include "api/requests.h"
#include "api/server.h"

enum kind { CHAT, COMPLETION };

struct oai {
    enum kind kind;
    bool include_usage;
};

static void send_oai_error(struct lyra_http_req *req, int status, const char *code, const char *param, const char *msg)
{
    json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s}}", "error", "message", msg, "type",
                          status >= 500 ? "server_error" : "invalid_request_error", "param", param, "code", code);
    lyra_http_send_json(req, status, e);
}

/* --- formatters ----------------------------------------------------- */

static json_t *usage_of(const struct lyra_infer_result *r)
{
    json_int_t pt = json_integer_value(json_object_get(r->usage, "prompt_tokens"));
    json_int_t ct = json_integer_value(json_object_get(r->usage, "completion_tokens"));
    json_int_t cached = json_integer_value(json_object_get(r->usage, "cached_tokens"));
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", pt, "completion_tokens", ct, "total_tokens", pt + ct,
                     "prompt_tokens_details", "cached_tokens", cached);
}

static const char *finish_of(const struct lyra_infer_result *r)
{
    return r->finish_reason && strcmp(r->finish_reason, "length") == 0 ? "length" : "stop";
}

static json_t *choice(struct oai *o, const struct lyra_infer_result *r, json_t *content_or_delta, const char *finish,
                      bool stream)
{
    json_t *c = json_pack("{s:i, s:n}", "index", 0, "logprobs");
    if (o->kind == CHAT)
        json_object_set_new(c, stream ? "delta" : "message", content_or_delta);
    else
        json_object_set_new(c, "text", content_or_delta);
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    return c;
}

static json_t *envelope(struct oai *o, const struct lyra_infer_result *r, bool chunk)
{
    const char *object = o->kind == CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", r->id, "object", object, "created", (json_int_t)r->created,
                     "model", r->model, "system_fingerprint", "lyra-" LYRA_VERSION);
}

static json_t *fmt_full(const struct lyra_infer_result *r, void *ud)
{
    struct oai *o = ud;
    json_t *e = envelope(o, r, false);
    json_t *content = o->kind == CHAT ? json_pack("{s:s, s:s}", "role", "assistant", "content", r->text)
                                      : json_string(r->text);
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, r, content, finish_of(r), false)));
    json_object_set_new(e, "usage", usage_of(r));
    if (r->timings)
        json_object_set(e, "timings", r->timings);
    return e;
}

static json_t *fmt_opening(const struct lyra_infer_result *r, void *ud)
{
    struct oai *o = ud;
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_pack("{s:s, s:s}", "role", "assistant", "content", "") : json_string("");
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, r, d, NULL, true)));
    return e;
}

static json_t *fmt_delta(const struct lyra_infer_result *r, const char *text, void *ud)
{
    struct oai *o = ud;
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_pack("{s:s}", "content", text) : json_string(text);
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, r, d, NULL, true)));
    return e;
}

static json_t *fmt_closing(const struct lyra_infer_result *r, void *ud)
{
    struct oai *o = ud;
    json_t *chunks = json_array();
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_object() : json_string("");
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, r, d, finish_of(r), true)));
    if (r->timings)
        json_object_set(e, "timings", r->timings);
    json_array_append_new(chunks, e);
    if (o->include_usage) {
        json_t *u = envelope(o, r, true);
        json_object_set_new(u, "choices", json_array());
        json_object_set_new(u, "usage", usage_of(r));
        json_array_append_new(chunks, u);
    }
    return chunks;
}

static const struct lyra_infer_format oai_format = {
    .sse = true,
    .full = fmt_full,
    .opening = fmt_opening,
    .delta = fmt_delta,
    .closing = fmt_closing,
    .error = lyra_openai_error,
    .free_ud = free,
};

/* --- handlers ------------------------------------------------------- */

/* The body (requests.h does the checking), answering when it is refused. */
static bool read_request(struct lyra_http_req *req, int (*parse)(const json_t *, struct lyra_request *,
                                                                 struct lyra_request_error *),
                         json_t **body, struct lyra_request *r)
{
    if (lyra_http_read_json(req, body) < 0)
        return false;
    struct lyra_request_error e;
    if (parse(*body, r, &e) < 0) {
        send_oai_error(req, e.status, e.code, e.param[0] ? e.param : NULL, e.err.msg);
        json_decref(*body);
        return false;
    }
    return true;
}

/* The request's model, else the default one; NULL after answering 404. */
static char *model_of(struct lyra_server *srv, struct lyra_http_req *req, const struct lyra_request *r)
{
    char *name = r->model ? strdup(r->model) : lyra_default_model(srv);
    if (!name)
        send_oai_error(req, r->model ? 500 : 404, r->model ? "internal" : "model_not_found", "model",
                       r->model ? "out of memory" : "no model given and no model available");
    return name;
}

static void start(struct lyra_server *srv, struct lyra_http_req *req, struct lyra_request *r, enum kind kind)
{
    char *model = model_of(srv, req, r);
    struct oai *o = model ? calloc(1, sizeof *o) : NULL;
    if (model && !o)
        send_oai_error(req, 500, "internal", NULL, "out of memory");
    if (!o) {
        free(model);
        return;
    }
    o->kind = kind;
    o->include_usage = r->include_usage;
    struct lyra_infer_options opts = {.model = model,
                                      .msg = r->msg,
                                      .stream = r->stream,
                                      .id_prefix = kind == CHAT ? "chatcmpl-" : "cmpl-",
                                      .permission = "chat",
                                      .fmt = &oai_format,
                                      .ud = o};
    r->msg = NULL; /* taken by the bridge */
    lyra_infer_start(srv, req, &opts);
    free(model);
}

void lyra_api_openai_chat(struct lyra_http_req *req, void *ctx)
{
    json_t *body;
    struct lyra_request r;
    if (!read_request(req, lyra_requests_openai_chat, &body, &r))
        return;
    start(ctx, req, &r, CHAT);
    lyra_requests_clear(&r);
    json_decref(body);
}

void lyra_api_openai_completions(struct lyra_http_req *req, void *ctx)
{
    json_t *body;
    struct lyra_request r;
    if (!read_request(req, lyra_requests_openai_completions, &body, &r))
        return;
    start(ctx, req, &r, COMPLETION);
    lyra_requests_clear(&r);
    json_decref(body);
}

/* --- embeddings ----------------------------------------------------- */

static json_t *emb_full(const struct lyra_infer_result *r, void *ud)
{
    json_t *data = json_array();
    json_t *vecs = json_object_get(r->embedding, "data");
    size_t i;
    json_t *v;
    json_array_foreach(vecs, i, v)
        json_array_append_new(data, json_pack("{s:s, s:I, s:O}", "object", "embedding", "index", (json_int_t)i,
                                              "embedding", v));
    json_int_t pt = json_integer_value(json_object_get(r->embedding, "prompt_tokens"));
    return json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model", r->model, "usage",
                     "prompt_tokens", pt, "total_tokens", pt);
}

static const struct lyra_infer_format emb_format = {
    .sse = false,
    .full = emb_full,
    .opening = NULL,
    .delta = NULL,
    .closing = NULL,
    .error = lyra_openai_error,
    .free_ud = NULL,
};

void lyra_api_openai_embeddings(struct lyra_http_req *req, void *ctx)
{
    json_t *body;
    struct lyra_request r;
    if (!read_request(req, lyra_requests_openai_embeddings, &body, &r))
        return;
    char *model = model_of(ctx, req, &r);
    if (model) {
        struct lyra_infer_options opts = {
            .model = model, .msg = r.msg, .stream = false, .id_prefix = "emb-", .permission = "chat",
            .fmt = &emb_format};
        r.msg = NULL; /* taken by the bridge */
        lyra_infer_start(ctx, req, &opts);
        free(model);
    }
    lyra_requests_clear(&r);
    json_decref(body);
}
