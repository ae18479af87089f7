/* chat.c — Lyra's own chat API with persisted conversations:
 *   POST   /chat                 one turn: {message, conversation_id?, model?,
 *                                stream?, options?}; answers JSON or SSE
 *   GET    /conversations        {"conversations":[…],"total":N}, most
 *                                recently active first (?limit=&offset=)
 *   GET    /conversations/{id}   one conversation with its messages
 *   DELETE /conversations/{id}   204
 *
 * A turn stores the user message at once, sends the whole history to the
 * worker (whose slots reuse the KV of the earlier turns, so only the new
 * tokens are evaluated), and stores the reply with its usage and timings
 * when the job ends — before the answer (or the stream's closing chunk)
 * leaves, so a client that has the answer finds it in GET.  A turn that
 * fails leaves no trace: its user message, and a conversation created for
 * it, are removed again, so the stored history always alternates.
 * Errors are Lyra's {"error":{"code","message"}}. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/infer.h"
#include "api/requests.h"
#include "api/server.h"
#include "core/conversations.h"
#include "core/log.h"

#define LIST_DEFAULT_LIMIT 50
#define LIST_MAX_LIMIT 1000

/* Per-request state shared with the bridge's hooks (freed by chat_free). */
struct chat {
    struct lyra_server *srv;
    char conv_id[37];
    bool created; /* the conversation was made for this turn */
    int64_t user_msg_id;
    char *user_text; /* the title, if the conversation has none yet */
    bool rolled_back;
    char request_id[130];
};

static void chat_free(void *ud)
{
    struct chat *c = ud;
    if (!c)
        return;
    free(c->user_text);
    free(c);
}

/* --- formatters ----------------------------------------------------- */

static json_t *usage_json(const struct lyra_infer_result *r)
{
    json_int_t pt = json_integer_value(json_object_get(r->usage, "prompt_tokens"));
    json_int_t ct = json_integer_value(json_object_get(r->usage, "completion_tokens"));
    json_int_t cached = json_integer_value(json_object_get(r->usage, "cached_tokens"));
    return json_pack("{s:I, s:I, s:I, s:I}", "prompt_tokens", pt, "completion_tokens", ct, "cached_tokens",
                     cached, "total_tokens", pt + ct);
}

static json_t *timings_json(const struct lyra_infer_result *r)
{
    return r->timings ? json_incref(r->timings) : json_object();
}

static json_t *fmt_full(const struct lyra_infer_result *r, void *ud)
{
    struct chat *c = ud;
    return json_pack("{s:s, s:{s:s, s:s}, s:s, s:s?, s:o, s:o}", "conversation_id", c->conv_id, "message",
                     "role", "assistant", "content", r->text, "model", r->model, "finish_reason",
                     r->finish_reason, "usage", usage_json(r), "timings", timings_json(r));
}

static json_t *fmt_opening(const struct lyra_infer_result *r, void *ud)
{
    struct chat *c = ud;
    return json_pack("{s:s, s:s}", "conversation_id", c->conv_id, "model", r->model);
}

static json_t *fmt_delta(const struct lyra_infer_result *r, const char *text, void *ud)
{
    struct chat *c = ud;
    return json_pack("{s:s, s:s}", "conversation_id", c->conv_id, "delta", text);
}

static json_t *fmt_closing(const struct lyra_infer_result *r, void *ud)
{
    struct chat *c = ud;
    return json_pack("{s:s, s:b, s:s?, s:o, s:o}", "conversation_id", c->conv_id, "done", 1, "finish_reason",
                     r->finish_reason, "usage", usage_json(r), "timings", timings_json(r));
}

/* Takes back what the turn stored; see the file comment. */
static void roll_back(struct chat *c)
{
    if (c->rolled_back || !c->conv_id[0])
        return;
    c->rolled_back = true;
    struct lyra_err err = {0};
    int rc = c->created ? lyra_conv_delete(c->srv->store, c->conv_id, &err)
                        : lyra_conv_delete_message(c->srv->store, c->user_msg_id, &err);
    if (rc < 0 && rc != LYRA_ENOTFOUND)
        lyra_log(LYRA_LOG_WARN, "chat", c->request_id, NULL, "conversation %s: %s", c->conv_id, err.msg);
}

/* Lyra's error shape, as lyra_http_send_error writes it.  Called by the
 * bridge exactly when the turn failed, so it also rolls the turn back. */
static json_t *fmt_error(const char *code, const char *message, int status, void *ud)
{
    if (ud)
        roll_back(ud);
    json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", code ? code : "internal", "message",
                          message ? message : "error");
    if (!e)
        e = json_pack("{s:{s:s, s:s}}", "error", "code", "internal", "message", "error");
    return e;
}

static double real_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : -1;
}

static int64_t int_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

/* The job ended well (or was cancelled: the partial reply is kept). */
static void chat_finished(const struct lyra_infer_result *r, json_t *body, void *ud)
{
    struct chat *c = ud;
    struct lyra_conv_message m = {
        .role = "assistant",
        .content = r->text,
        .model = r->model,
        .prompt_tokens = int_of(r->usage, "prompt_tokens"),
        .completion_tokens = int_of(r->usage, "completion_tokens"),
        .cached_tokens = int_of(r->usage, "cached_tokens"),
        .prompt_ms = real_of(r->timings, "prompt_ms"),
        .predicted_ms = real_of(r->timings, "predicted_ms"),
    };
    struct lyra_err err = {0};
    if (lyra_conv_append(c->srv->store, c->conv_id, &m, NULL, &err) < 0 ||
        lyra_conv_touch(c->srv->store, c->conv_id, r->model, c->user_text, &err) < 0)
        /* Deleted while the turn ran, or a database failure: the answer
         * still goes out. */
        lyra_log(LYRA_LOG_WARN, "chat", c->request_id, NULL, "conversation %s: reply not stored: %s",
                 c->conv_id, err.msg);
}

static const struct lyra_infer_format chat_format = {
    .sse = true,
    .full = fmt_full,
    .opening = fmt_opening,
    .delta = fmt_delta,
    .closing = fmt_closing,
    .error = fmt_error,
    .finished = chat_finished,
    .free_ud = chat_free,
};

/* --- POST /chat ----------------------------------------------------- */

/* Stores the user message (making the conversation if need be) and loads
 * the history for the worker into *history.  Answers the request and
 * returns false on failure. */
static bool store_turn(struct lyra_http_req *req, struct chat *c, const char *conv_id, const char *text,
                       json_t **history)
{
    struct lyra_store *st = c->srv->store;
    struct lyra_err err = {0};
    int rc = 0;
    if (conv_id) {
        snprintf(c->conv_id, sizeof c->conv_id, "%s", conv_id);
    } else {
        rc = lyra_conv_create(st, c->conv_id, &err);
        c->created = rc == 0;
    }
    struct lyra_conv_message m = {.role = "user",
                                  .content = text,
                                  .prompt_tokens = -1,
                                  .completion_tokens = -1,
                                  .cached_tokens = -1,
                                  .prompt_ms = -1,
                                  .predicted_ms = -1};
    if (rc == 0)
        rc = lyra_conv_append(st, c->conv_id, &m, &c->user_msg_id, &err);
    if (rc == 0)
        rc = lyra_conv_messages(st, c->conv_id, history, &err);
    if (rc == 0)
        return true;
    if (rc == LYRA_ENOTFOUND) { /* deleted a moment ago */
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", c->conv_id);
    } else {
        roll_back(c);
        lyra_http_send_error(req, 500, "internal", "%s", err.msg);
    }
    return false;
}

void lyra_api_chat(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *body;
    if (lyra_http_read_json(req, &body) < 0)
        return;
    json_t *params = NULL, *history = NULL;
    char *model = NULL;
    struct chat *c = NULL;
    /* The body's checks (requests.c); r's strings are borrowed from body. */
    struct lyra_request r;
    struct lyra_request_error rerr;
    if (lyra_requests_chat(body, &r, &rerr) < 0) {
        lyra_http_send_error(req, rerr.status, rerr.code, "%s", rerr.err.msg);
        goto out;
    }
    params = r.params;
    r.params = NULL;
    const char *conv_id = r.conversation_id, *model_name = r.model;
    json_t *message = json_object_get(body, "message");
    json_t *stream = json_object_get(body, "stream"); /* checked: a boolean or absent */

    /* The model: the request's, else the conversation's, else the default. */
    char *conv_model = NULL;
    if (conv_id) {
        struct lyra_err err = {0};
        int rc = lyra_conv_model(srv->store, conv_id, &conv_model, &err);
        if (rc == LYRA_ENOTFOUND) {
            lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", conv_id);
            goto out;
        } else if (rc < 0) {
            lyra_http_send_error(req, 500, "internal", "%s", err.msg);
            goto out;
        }
    }
    if (model_name) {
        model = strdup(model_name);
        free(conv_model);
    } else {
        model = conv_model ? conv_model : lyra_default_model(srv);
    }
    if (!model) {
        lyra_http_send_error(req, 404, "model_not_found", "no model given and no model available");
        goto out;
    }

    c = calloc(1, sizeof *c);
    if (!c || !(c->user_text = strdup(json_string_value(message)))) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        goto out;
    }
    c->srv = srv;
    snprintf(c->request_id, sizeof c->request_id, "%s", lyra_http_request_id(req));
    if (!store_turn(req, c, conv_id, json_string_value(message), &history))
        goto out;

    struct lyra_infer_options opts = {
        .model = model,
        .msg = json_pack("{s:s, s:o, s:o}", "type", "generate", "messages", history, "params", params),
        .stream = json_is_true(stream),
        .id_prefix = "chat-",
        .fmt = &chat_format,
        .ud = c,
    };
    lyra_infer_start(srv, req, &opts); /* owns msg and c from here */
    c = NULL;
    params = NULL;
out:
    chat_free(c);
    json_decref(params);
    free(model);
    json_decref(body);
}

/* --- conversations -------------------------------------------------- */

static int parse_size(const char *s, size_t *out)
{
    if (!s || !*s || s[0] == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (size_t)v;
    return 0;
}

void lyra_api_conversations_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    size_t limit = LIST_DEFAULT_LIMIT, offset = 0;
    const char *limit_s = lyra_http_query(req, "limit");
    const char *offset_s = lyra_http_query(req, "offset");
    if (limit_s && (parse_size(limit_s, &limit) < 0 || limit == 0 || limit > LIST_MAX_LIMIT)) {
        lyra_http_send_error(req, 400, "invalid_parameter", "limit must be an integer from 1 to %d",
                             LIST_MAX_LIMIT);
        return;
    }
    if (offset_s && parse_size(offset_s, &offset) < 0) {
        lyra_http_send_error(req, 400, "invalid_parameter", "offset must be a non-negative integer");
        return;
    }
    json_t *list;
    int64_t total = 0;
    struct lyra_err err = {0};
    if (lyra_conv_list(srv->store, limit, offset, &list, &total, &err) < 0) {
        lyra_http_send_error(req, 500, "internal", "%s", err.msg);
        return;
    }
    lyra_http_send_json(req, 200, json_pack("{s:o, s:I}", "conversations", list, "total", (json_int_t)total));
}

void lyra_api_conversations_get(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const char *id = lyra_http_param(req, "id");
    json_t *conv;
    struct lyra_err err = {0};
    int rc = lyra_conv_get(srv->store, id, &conv, &err);
    if (rc == LYRA_ENOTFOUND)
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", id);
    else if (rc < 0)
        lyra_http_send_error(req, 500, "internal", "%s", err.msg);
    else
        lyra_http_send_json(req, 200, conv);
}

void lyra_api_conversations_delete(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const char *id = lyra_http_param(req, "id");
    struct lyra_err err = {0};
    int rc = lyra_conv_delete(srv->store, id, &err);
    if (rc == LYRA_ENOTFOUND)
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", id);
    else if (rc < 0)
        lyra_http_send_error(req, 500, "internal", "%s", err.msg);
    else
        lyra_http_send(req, 204, NULL, NULL, 0);
}
