/* openai.c — OpenAI-compatible endpoints on the inference bridge:
 *   POST /v1/chat/completions   (stream false/true, SSE chunks, usage)
 *   POST /v1/completions
 *   POST /v1/embeddings
 * Errors use OpenAI's shape {"error":{"message","type","param","code"}}.
 * Beyond OpenAI's fields, llama-server's extensions are accepted (top_k,
 * min_p, repeat_penalty, ignore_eos, grammar) and responses carry
 * llama-server's `timings`. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api/infer.h"
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

/* Copies the sampling fields of an OpenAI body into worker params,
 * checking types.  Returns NULL after answering 400 naming the field. */
static json_t *map_params(struct lyra_http_req *req, json_t *body)
{
    static const struct {
        const char *from, *to;
        char type; /* n number, i integer, b bool, s string */
    } fields[] = {
        {"temperature", "temperature", 'n'}, {"top_p", "top_p", 'n'},
        {"top_k", "top_k", 'i'},             {"min_p", "min_p", 'n'},
        {"seed", "seed", 'i'},               {"presence_penalty", "presence_penalty", 'n'},
        {"frequency_penalty", "frequency_penalty", 'n'}, {"repeat_penalty", "repeat_penalty", 'n'},
        {"repeat_last_n", "repeat_last_n", 'i'}, {"ignore_eos", "ignore_eos", 'b'},
        {"grammar", "grammar", 's'},         {"max_tokens", "max_tokens", 'i'},
        {"max_completion_tokens", "max_tokens", 'i'},
    };
    json_t *p = json_object();
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        json_t *v = json_object_get(body, fields[i].from);
        if (!v || json_is_null(v))
            continue;
        bool ok = fields[i].type == 'n'   ? json_is_number(v)
                  : fields[i].type == 'i' ? json_is_integer(v)
                  : fields[i].type == 'b' ? json_is_boolean(v)
                                          : json_is_string(v);
        if (!ok) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s must be %s", fields[i].from,
                     fields[i].type == 'n'   ? "a number"
                     : fields[i].type == 'i' ? "an integer"
                     : fields[i].type == 'b' ? "a boolean"
                                             : "a string");
            send_oai_error(req, 400, "invalid_type", fields[i].from, msg);
            json_decref(p);
            return NULL;
        }
        json_object_set(p, fields[i].to, v);
    }
    json_t *mt = json_object_get(p, "max_tokens");
    if (mt && (json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000)) {
        send_oai_error(req, 400, "invalid_value", "max_tokens", "max_tokens must be between 1 and 1000000");
        json_decref(p);
        return NULL;
    }
    json_t *stop = json_object_get(body, "stop");
    if (stop && !json_is_null(stop)) {
        if (!json_is_string(stop) && !json_is_array(stop)) {
            send_oai_error(req, 400, "invalid_type", "stop", "stop must be a string or an array of strings");
            json_decref(p);
            return NULL;
        }
        json_object_set(p, "stop", stop);
    }
    json_t *rf = json_object_get(body, "response_format");
    if (json_is_object(rf)) {
        const char *t = json_string_value(json_object_get(rf, "type"));
        if (t && (strcmp(t, "json_object") == 0 || strcmp(t, "json_schema") == 0))
            json_object_set_new(p, "json_mode", json_true());
    }
    json_t *n = json_object_get(body, "n");
    if (n && !json_is_null(n) && json_integer_value(n) != 1) {
        send_oai_error(req, 400, "unsupported_value", "n", "only n = 1 is supported");
        json_decref(p);
        return NULL;
    }
    return p;
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

static bool read_body(struct lyra_http_req *req, json_t **body)
{
    if (lyra_http_read_json(req, body) < 0)
        return false;
    if (!json_is_object(*body)) {
        send_oai_error(req, 400, "invalid_request", NULL, "the body must be a JSON object");
        json_decref(*body);
        return false;
    }
    return true;
}

static char *model_of(struct lyra_server *srv, struct lyra_http_req *req, json_t *body)
{
    json_t *m = json_object_get(body, "model");
    if (m && !json_is_string(m)) {
        send_oai_error(req, 400, "invalid_type", "model", "model must be a string");
        return NULL;
    }
    char *name = m ? strdup(json_string_value(m)) : lyra_default_model(srv);
    if (!name)
        send_oai_error(req, 404, "model_not_found", "model", "no model given and no model available");
    return name;
}

static void start(struct lyra_server *srv, struct lyra_http_req *req, json_t *body, enum kind kind, json_t *msg)
{
    char *model = model_of(srv, req, body);
    if (!model) {
        json_decref(msg);
        return;
    }
    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream)) {
        send_oai_error(req, 400, "invalid_type", "stream", "stream must be a boolean");
        json_decref(msg);
        free(model);
        return;
    }
    struct oai *o = calloc(1, sizeof *o);
    o->kind = kind;
    o->include_usage = json_is_true(json_object_get(json_object_get(body, "stream_options"), "include_usage"));
    struct lyra_infer_options opts = {.model = model,
                                      .msg = msg,
                                      .stream = json_is_true(stream),
                                      .id_prefix = kind == CHAT ? "chatcmpl-" : "cmpl-",
                                      .fmt = &oai_format,
                                      .ud = o};
    lyra_infer_start(srv, req, &opts);
    free(model);
}

void lyra_api_openai_chat(struct lyra_http_req *req, void *ctx)
{
    json_t *body;
    if (!read_body(req, &body))
        return;
    json_t *messages = json_object_get(body, "messages");
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        send_oai_error(req, 400, "invalid_value", "messages", "messages must be a non-empty array");
        json_decref(body);
        return;
    }
    /* OpenAI allows content as an array of parts: keep the text parts. */
    json_t *msgs = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *content = json_object_get(m, "content");
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role)) {
            char param[48];
            snprintf(param, sizeof param, "messages[%zu].role", i);
            send_oai_error(req, 400, "invalid_value", param, "each message needs a string role");
            json_decref(msgs);
            json_decref(body);
            return;
        }
        json_t *text = NULL;
        if (json_is_string(content)) {
            text = json_incref(content);
        } else if (json_is_array(content)) {
            char *joined = NULL;
            size_t k;
            json_t *part;
            size_t len = 0;
            json_array_foreach(content, k, part) {
                const char *t = json_string_value(json_object_get(part, "text"));
                if (!t)
                    continue;
                size_t tl = strlen(t);
                char *nj = realloc(joined, len + tl + 1);
                if (!nj)
                    break;
                memcpy(nj + len, t, tl + 1);
                joined = nj;
                len += tl;
            }
            text = json_string(joined ? joined : "");
            free(joined);
        } else if (json_is_null(content) || !content) {
            text = json_string("");
        } else {
            char param[48];
            snprintf(param, sizeof param, "messages[%zu].content", i);
            send_oai_error(req, 400, "invalid_type", param, "content must be a string or an array of parts");
            json_decref(msgs);
            json_decref(body);
            return;
        }
        json_array_append_new(msgs, json_pack("{s:O, s:o}", "role", role, "content", text));
    }
    json_t *params = map_params(req, body);
    if (!params) {
        json_decref(msgs);
        json_decref(body);
        return;
    }
    json_t *msg = json_pack("{s:s, s:o, s:o}", "type", "generate", "messages", msgs, "params", params);
    start(ctx, req, body, CHAT, msg);
    json_decref(body);
}

void lyra_api_openai_completions(struct lyra_http_req *req, void *ctx)
{
    json_t *body;
    if (!read_body(req, &body))
        return;
    json_t *prompt = json_object_get(body, "prompt");
    if (json_is_array(prompt) && json_array_size(prompt) == 1)
        prompt = json_array_get(prompt, 0);
    if (!json_is_string(prompt)) {
        send_oai_error(req, 400, "invalid_value", "prompt", "prompt must be a string");
        json_decref(body);
        return;
    }
    json_t *params = map_params(req, body);
    if (!params) {
        json_decref(body);
        return;
    }
    json_t *msg = json_pack("{s:s, s:O, s:o}", "type", "generate", "prompt", prompt, "params", params);
    start(ctx, req, body, COMPLETION, msg);
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
    if (!read_body(req, &body))
        return;
    json_t *input = json_object_get(body, "input");
    json_t *inputs = json_is_string(input) ? json_pack("[O]", input) : json_is_array(input) ? json_copy(input) : NULL;
    size_t i;
    json_t *v;
    bool ok = inputs && json_array_size(inputs) > 0;
    json_array_foreach(inputs, i, v) ok = ok && json_is_string(v);
    if (!ok) {
        send_oai_error(req, 400, "invalid_value", "input", "input must be a string or a non-empty array of strings");
        json_decref(inputs);
        json_decref(body);
        return;
    }
    char *model = model_of(ctx, req, body);
    if (model) {
        struct lyra_infer_options opts = {.model = model,
                                          .msg = json_pack("{s:s, s:o}", "type", "embed", "inputs", inputs),
                                          .stream = false,
                                          .id_prefix = "emb-",
                                          .fmt = &emb_format};
        lyra_infer_start(ctx, req, &opts);
        free(model);
    } else {
        json_decref(inputs);
    }
    json_decref(body);
}
