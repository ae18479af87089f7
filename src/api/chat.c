/* chat.c — Lyra's own chat API with persisted conversations:
 *   POST   /chat                 one turn: {message, conversation_id?, model?,
 *                                stream?, options?}; answers JSON or SSE
 *   GET    /conversations        {"conversations":[…],"total":N}, most
 *                                recently active first (?limit=&offset=)
 *   GET    /conversations/{id}   one conversation with its messages
 *   DELETE /conversations/{id}   204
 *
 * A turn claims its conversation (a second turn on it meanwhile gets 409
 * conversation_busy), reads the stored history and sends it to the worker
 * with the new user message, which is held in memory only (the worker's
 * slots reuse the KV of the earlier turns, so only the new tokens are
 * evaluated).  When the job ends well, the user message and the reply (and
 * for a first turn the conversation itself) are written in one transaction
 * (lyra_conv_save_turn); a turn that fails, is cancelled or dies with its
 * worker writes nothing, so the stored history is exactly what it was.
 *
 * Threads: the handler runs on an HTTP thread and may wait on the store.
 * The formatter hooks run where the bridge calls them: for a stream on the
 * supervisor's loop thread, which must never wait for the disk, so the turn
 * is queued there with lyra_conv_save_turn_async; the store runs jobs in
 * order, so a later GET or turn sees it.  For an answer that is not streamed
 * the hooks run on the HTTP thread that sends it, which waits for the write
 * and says in the answer whether the turn was stored.  The claim is released
 * when the turn is written or queued, or failed — and at the latest when the
 * bridge frees the request (client gone, worker crash, shutdown).
 * Errors are Lyra's {"error":{"code","message"}}. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/authz.h"
#include "api/infer.h"
#include "api/requests.h"
#include "api/server.h"
#include "core/conversations.h"
#include "core/log.h"
#include "core/util.h"

#define LIST_DEFAULT_LIMIT 50
#define LIST_MAX_LIMIT 1000

/* The error code for a failure of the store: the database refused
 * (storage_failed), or something else went wrong (internal). */
static const char *error_code(int rc)
{
    return rc == LYRA_EDB ? "storage_failed" : "internal";
}

/* Per-request state shared with the bridge's hooks (freed by chat_free).
 * The hooks of one request never run concurrently (the bridge calls them
 * under its lock, free_ud last). */
struct chat {
    struct lyra_server *srv;
    char conv_id[37];
    bool create;  /* the conversation is made by this turn's transaction */
    bool claimed; /* conv_id is claimed in srv->chat_turns */
    char *user_text;
    char request_id[130];
    char owner[LYRA_AUTH_NAME_MAX + 1]; /* the caller: a new conversation is theirs ("" = nobody's) */
    bool see_all;                       /* the caller holds conversations.all */
};

/* The owner filter for the caller's conversation reads and deletes: NULL
 * (every conversation) with conversations.all, else the caller's name, so
 * someone else's conversation answers 404 as if it did not exist. */
static const char *owner_filter(struct lyra_http_req *req, struct lyra_server *srv)
{
    if (lyra_authz_may(req, srv, "conversations.all", NULL))
        return NULL;
    const struct lyra_principal *p = lyra_authz_principal(req);
    return p ? p->name : ""; /* no principal: matches no owner */
}

/* Ends the turn's hold on its conversation (once). */
static void release(struct chat *c)
{
    if (c->claimed) {
        c->claimed = false;
        lyra_conv_unclaim(c->srv->chat_turns, c->conv_id);
    }
}

/* The bridge's free_ud: the request is over, whatever its end; releases the claim if still held. */
static void chat_free(void *ud)
{
    struct chat *c = ud;
    if (!c)
        return;
    release(c);
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

/* Lyra's error shape, as lyra_http_send_error writes it.  Called by the
 * bridge exactly when the turn failed: nothing was stored, so the turn only
 * lets go of its conversation. */
static json_t *fmt_error(const char *code, const char *message, int status, void *ud)
{
    if (ud)
        release(ud);
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

/* Logging context of a queued turn (the chat may be freed before the store
 * runs it). */
struct saved_ctx {
    char conv_id[37];
    char request_id[130];
};

/* Database thread: the queued turn was written, or not. */
static void turn_saved(int rc, const struct lyra_err *err, void *ud)
{
    struct saved_ctx *x = ud;
    if (rc < 0)
        lyra_log(LYRA_LOG_ERROR, "chat", x->request_id, json_pack("{s:s}", "conversation_id", x->conv_id),
                 "conversation %s: turn not stored: %s", x->conv_id, err ? err->msg : "");
    free(x);
}

/* The job ended.  A cancelled turn (its client left) is not stored; any
 * other is, whole: queued when streaming (body NULL, possibly on the loop
 * thread), written and reported in the answer otherwise (body set, an HTTP
 * thread).  Either way the conversation is released before the answer or
 * the closing chunk leaves, so the client's next turn is not refused. */
static void chat_finished(const struct lyra_infer_result *r, json_t *body, void *ud)
{
    struct chat *c = ud;
    if (r->finish_reason && strcmp(r->finish_reason, "cancelled") == 0) {
        release(c);
        return;
    }
    struct lyra_conv_turn t = {
        .conv_id = c->conv_id,
        .create = c->create,
        .user_text = c->user_text,
        .owner = c->owner[0] ? c->owner : NULL,
        .reply = {.content = r->text,
                  .model = r->model,
                  .prompt_tokens = int_of(r->usage, "prompt_tokens"),
                  .completion_tokens = int_of(r->usage, "completion_tokens"),
                  .cached_tokens = int_of(r->usage, "cached_tokens"),
                  .prompt_ms = real_of(r->timings, "prompt_ms"),
                  .predicted_ms = real_of(r->timings, "predicted_ms")},
    };
    struct lyra_err err = {0};
    int rc;
    if (body) {
        rc = lyra_conv_save_turn(c->srv->store, &t, &err);
        json_object_set_new(body, "stored", json_boolean(rc == 0));
        if (rc < 0)
            json_object_set_new(body, "store_error",
                                json_pack("{s:s, s:s}", "code",
                                          rc == LYRA_ENOTFOUND ? "conversation_not_found" : error_code(rc),
                                          "message", err.msg));
    } else {
        struct saved_ctx *x = calloc(1, sizeof *x);
        rc = x ? 0 : lyra_err_set(&err, LYRA_ENOMEM, "out of memory");
        if (x) {
            snprintf(x->conv_id, sizeof x->conv_id, "%s", c->conv_id);
            snprintf(x->request_id, sizeof x->request_id, "%s", c->request_id);
            rc = lyra_conv_save_turn_async(c->srv->store, &t, turn_saved, x);
            if (rc < 0) {
                free(x);
                lyra_err_set(&err, rc, "%s", lyra_strerror(rc));
            }
        }
    }
    if (rc < 0)
        lyra_log(LYRA_LOG_ERROR, "chat", c->request_id, json_pack("{s:s}", "conversation_id", c->conv_id),
                 "conversation %s: turn not stored: %s", c->conv_id, err.msg);
    release(c);
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

/* Claims the turn's conversation and builds the worker's messages: the
 * stored history (for an existing conversation) plus the new user message,
 * which is not stored until the turn ends well.  *conv_model gets the
 * conversation's model (malloc'd or NULL).  Answers the request and returns
 * false on failure (the claim, if taken, is released by chat_free). */
static bool begin_turn(struct lyra_http_req *req, struct chat *c, const char *conv_id, json_t **messages,
                       char **conv_model)
{
    struct lyra_store *st = c->srv->store;
    *conv_model = NULL;
    *messages = NULL;
    if (conv_id) {
        snprintf(c->conv_id, sizeof c->conv_id, "%s", conv_id);
    } else {
        lyra_uuid4(c->conv_id);
        c->create = true;
    }
    int rc = strlen(conv_id ? conv_id : c->conv_id) == 36 ? lyra_conv_claim(c->srv->chat_turns, c->conv_id)
                                                          : LYRA_ENOTFOUND; /* not an id Lyra gives */
    if (rc == LYRA_EBUSY) {
        lyra_http_send_error(
            req, 409, "conversation_busy",
            "conversation %s has a turn in progress: send the next message when it has ended", c->conv_id);
        return false;
    }
    if (rc == LYRA_ENOTFOUND) {
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", conv_id);
        return false;
    }
    if (rc < 0) {
        lyra_http_send_error(req, 500, "internal", "%s", lyra_strerror(rc));
        return false;
    }
    c->claimed = true;
    struct lyra_err err = {0};
    if (c->create)
        *messages = json_array();
    else if ((rc = lyra_conv_history(st, c->conv_id, c->see_all ? NULL : c->owner, conv_model, messages, &err)) <
             0) {
        if (rc == LYRA_ENOTFOUND)
            lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", c->conv_id);
        else
            lyra_http_send_error(req, 500, error_code(rc), "%s", err.msg);
        return false;
    }
    json_t *user = json_pack("{s:s, s:s}", "role", "user", "content", c->user_text);
    if (!*messages || !user || json_array_append_new(*messages, user) < 0) {
        free(*conv_model);
        *conv_model = NULL;
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return false;
    }
    return true;
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

    c = calloc(1, sizeof *c);
    if (!c || !(c->user_text = strdup(json_string_value(message)))) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        goto out;
    }
    c->srv = srv;
    {
        const struct lyra_principal *p = lyra_authz_principal(req);
        snprintf(c->owner, sizeof c->owner, "%s", p ? p->name : "");
        c->see_all = owner_filter(req, srv) == NULL;
    }
    snprintf(c->request_id, sizeof c->request_id, "%s", lyra_http_request_id(req));
    char *conv_model = NULL;
    if (!begin_turn(req, c, conv_id, &history, &conv_model))
        goto out;

    /* The model: the request's, else the conversation's, else the default. */
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

    struct lyra_infer_options opts = {
        .model = model,
        .msg = json_pack("{s:s, s:o, s:o}", "type", "generate", "messages", history, "params", params),
        .stream = json_is_true(stream),
        .id_prefix = "chat-",
        .permission = "chat",
        .fmt = &chat_format,
        .ud = c,
    };
    lyra_infer_start(srv, req, &opts); /* owns msg and c from here */
    c = NULL;
    params = NULL;
    history = NULL;
out:
    chat_free(c);
    json_decref(history);
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
    int rc = lyra_conv_list(srv->store, owner_filter(req, srv), limit, offset, &list, &total, &err);
    if (rc < 0) {
        lyra_http_send_error(req, 500, error_code(rc), "%s", err.msg);
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
    int rc = lyra_conv_get(srv->store, id, owner_filter(req, srv), &conv, &err);
    if (rc == LYRA_ENOTFOUND)
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", id);
    else if (rc < 0)
        lyra_http_send_error(req, 500, error_code(rc), "%s", err.msg);
    else
        lyra_http_send_json(req, 200, conv);
}

void lyra_api_conversations_delete(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const char *id = lyra_http_param(req, "id");
    struct lyra_err err = {0};
    int rc = lyra_conv_delete(srv->store, id, owner_filter(req, srv), &err);
    if (rc == LYRA_ENOTFOUND)
        lyra_http_send_error(req, 404, "conversation_not_found", "conversation %s not found", id);
    else if (rc < 0)
        lyra_http_send_error(req, 500, error_code(rc), "%s", err.msg);
    else
        lyra_http_send(req, 204, NULL, NULL, 0);
}
