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
#include "core/util.h"

enum kind { CHAT, COMPLETION };

struct oai {
    enum kind kind;
    bool include_usage;
    int logprobs;      /* top entries asked for, -1 = none */
    bool echo;         /* completions: the prompt comes first in the text */
    char *prompt;      /* echo: the prompt (owned) */
    size_t offset;     /* stream: text_offset of the next generated token */
    size_t prompt_off; /* stream: text_offset of the next prompt token */
    bool prompt_strip; /* stream: the first prompt token with text is still to come (completion_logprobs) */
};

static void oai_free(void *ud)
{
    struct oai *o = ud;
    if (o)
        free(o->prompt);
    free(o);
}

/* --- logprobs --------------------------------------------------------- */

/* buf[0..n) as a JSON string with each byte that is not part of a valid
 * UTF-8 sequence shown as U+FFFD (a byte-fallback token is one byte of a
 * character; `bytes` carries the exact value). */
static json_t *replaced(const char *buf, size_t n)
{
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        unsigned char c = (unsigned char)buf[i];
        size_t want = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (want && i + want <= n && lyra_utf8_valid(buf + i, want)) {
            memcpy(out + o, buf + i, want);
            o += want;
            k = want;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
        }
        i += k;
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j;
}

/* A worker entry's token (its "h": hex of the bytes) as OpenAI's `token`
 * string (invalid UTF-8 becomes U+FFFD; `bytes` has the exact bytes) and,
 * if bytes is not NULL, the `bytes` array; *len gets the byte count. */
static json_t *entry_token(const json_t *hex, json_t **bytes, size_t *len)
{
    const char *h = json_string_value(hex);
    size_t n = h ? strlen(h) / 2 : 0;
    char *buf = malloc(n + 1);
    json_t *arr = bytes ? json_array() : NULL;
    if (!buf || (bytes && !arr)) {
        free(buf);
        json_decref(arr);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = h[2 * i + k];
            v = v * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 0);
        }
        buf[i] = (char)v;
        if (arr)
            json_array_append_new(arr, json_integer(v));
    }
    buf[n] = '\0';
    *len = n;
    json_t *s = lyra_utf8_valid(buf, n) ? json_stringn(buf, n) : replaced(buf, n);
    free(buf);
    if (bytes)
        *bytes = arr;
    return s;
}

static json_t *lp_of(const json_t *v)
{
    return json_is_number(v) ? json_real(json_number_value(v)) : json_null();
}

/* Chat: the entries as choices[].logprobs.content[] items. */
static json_t *chat_logprobs(const json_t *entries)
{
    json_t *content = json_array();
    size_t i, k;
    const json_t *e, *t;
    json_array_foreach(entries, i, e) {
        json_t *bytes, *top = json_array();
        size_t len;
        json_t *tok = entry_token(json_object_get(e, "h"), &bytes, &len);
        json_array_foreach(json_object_get(e, "top"), k, t) {
            json_t *tb;
            json_t *ts = entry_token(json_array_get(t, 0), &tb, &len);
            json_array_append_new(top, json_pack("{s:o, s:o, s:o}", "token", ts, "logprob",
                                                 lp_of(json_array_get(t, 1)), "bytes", tb));
        }
        json_array_append_new(content, json_pack("{s:o, s:o, s:o, s:o}", "token", tok, "logprob",
                                                 lp_of(json_object_get(e, "lp")), "bytes", bytes, "top_logprobs", top));
    }
    return json_pack("{s:o, s:n}", "content", content, "refusal");
}

/* Completions: appends the entries to the four parallel arrays of
 * choices[].logprobs, text offsets counted from *offset.  For the prompt's
 * tokens, *strip_space (NULL for generated ones) says that the first token
 * with text still has to come: SentencePiece adds a space before the
 * prompt's first word that the prompt (and the echoed text) does not have,
 * so that token is shown without it and the offsets index the text. */
static void completion_logprobs(const json_t *entries, json_t *lp, size_t *offset, bool *strip_space)
{
    size_t i, k, len;
    const json_t *e, *t;
    json_array_foreach(entries, i, e) {
        json_t *tok = entry_token(json_object_get(e, "h"), NULL, &len);
        if (strip_space && *strip_space && len > 0) {
            *strip_space = false;
            const char *ts = json_string_value(tok);
            if (ts && ts[0] == ' ') {
                json_t *cut = json_string(ts + 1);
                json_decref(tok);
                tok = cut;
                len--;
            }
        }
        json_t *v = lp_of(json_object_get(e, "lp"));
        json_t *top = json_is_null(v) ? json_null() : json_object();
        json_array_foreach(json_object_get(e, "top"), k, t) {
            size_t tl;
            json_t *ts = entry_token(json_array_get(t, 0), NULL, &tl);
            if (ts && json_is_object(top))
                json_object_set_new(top, json_string_value(ts), lp_of(json_array_get(t, 1)));
            json_decref(ts);
        }
        json_array_append_new(json_object_get(lp, "tokens"), tok ? tok : json_string(""));
        json_array_append_new(json_object_get(lp, "token_logprobs"), v);
        json_array_append_new(json_object_get(lp, "top_logprobs"), top);
        json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)*offset));
        *offset += len;
    }
}

static json_t *completion_lp_new(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
}

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

/* One choice; logprobs (taken) may be NULL (null). */
static json_t *choice(struct oai *o, json_t *content_or_delta, json_t *logprobs, const char *finish, bool stream)
{
    json_t *c = json_pack("{s:i, s:o}", "index", 0, "logprobs", logprobs ? logprobs : json_null());
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
    json_t *content, *lp = NULL;
    if (o->kind == CHAT) {
        content = json_pack("{s:s, s:s}", "role", "assistant", "content", r->text);
        if (o->logprobs >= 0)
            lp = chat_logprobs(r->logprobs);
    } else {
        char *text = NULL;
        if (o->echo && asprintf(&text, "%s%s", o->prompt ? o->prompt : "", r->text) < 0)
            text = NULL;
        content = json_string(o->echo ? (text ? text : "") : r->text);
        free(text);
        if (o->logprobs >= 0 && (lp = completion_lp_new())) {
            size_t off = 0;
            bool strip = o->prompt && o->prompt[0] != ' ';
            if (o->echo)
                completion_logprobs(r->prompt_logprobs, lp, &off, &strip);
            off = o->echo && o->prompt ? strlen(o->prompt) : 0;
            completion_logprobs(r->logprobs, lp, &off, NULL);
        }
    }
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, content, lp, finish_of(r), false)));
    json_object_set_new(e, "usage", usage_of(r));
    if (r->timings)
        json_object_set(e, "timings", r->timings);
    return e;
}

static json_t *fmt_opening(const struct lyra_infer_result *r, void *ud)
{
    struct oai *o = ud;
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_pack("{s:s, s:s}", "role", "assistant", "content", "")
                                : json_string(o->echo && o->prompt ? o->prompt : "");
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, d, NULL, NULL, true)));
    return e;
}

static json_t *fmt_delta(const struct lyra_infer_result *r, const char *text, void *ud)
{
    struct oai *o = ud;
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_pack("{s:s}", "content", text) : json_string(text);
    json_t *lp = NULL;
    if (o->logprobs >= 0 && (r->logprobs || r->prompt_logprobs)) {
        if (o->kind == CHAT) {
            lp = chat_logprobs(r->logprobs);
        } else if ((lp = completion_lp_new())) {
            completion_logprobs(r->prompt_logprobs, lp, &o->prompt_off, &o->prompt_strip);
            completion_logprobs(r->logprobs, lp, &o->offset, NULL);
        }
    }
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, d, lp, NULL, true)));
    return e;
}

static json_t *fmt_closing(const struct lyra_infer_result *r, void *ud)
{
    struct oai *o = ud;
    json_t *chunks = json_array();
    json_t *e = envelope(o, r, true);
    json_t *d = o->kind == CHAT ? json_object() : json_string("");
    json_object_set_new(e, "choices", json_pack("[o]", choice(o, d, NULL, finish_of(r), true)));
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
    .free_ud = oai_free,
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
    o->logprobs = r->logprobs;
    o->echo = r->echo;
    if (r->echo && r->prompt && !(o->prompt = strdup(r->prompt))) {
        send_oai_error(req, 500, "internal", NULL, "out of memory");
        free(model);
        oai_free(o);
        return;
    }
    o->offset = o->echo && o->prompt ? strlen(o->prompt) : 0;
    o->prompt_strip = o->prompt && o->prompt[0] != ' ';
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
