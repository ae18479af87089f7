/* ollama.c — the Ollama-compatible API (see api/ollama.h).
 *
 * Inference (chat, generate, embed) runs on the bridge (api/infer.h) with
 * NDJSON formatters: a streamed answer is one JSON object per line, the
 * last with "done":true and Ollama's counters (durations in nanoseconds);
 * "stream": false gives that last object alone, with the whole text.
 *
 * keep_alive (Ollama's semantics): each request may say how long its model
 * stays loaded once idle — 0 unloads it after this request (requests
 * already running on it finish first; a pinned model stays), negative
 * keeps it, a duration or a number of seconds idles it that long — and
 * that holds until another request says otherwise (the manager's
 * "keep_alive_s", models/manager.h); absent, the model's
 * models.keep_alive_s governs.  /api/ps shows the resulting expiry.
 *
 * /api/pull maps onto the "pull" job (jobs/pull.h): the job's events on the
 * bus become Ollama's progress lines.  The bus calls subscribers under its
 * lock, where nothing may unsubscribe, so a follower that saw its job end
 * unsubscribes from the database thread (lyra_store_submit: never waits,
 * and the store closes before the bus is freed).
 *
 * /api/delete applies the checks of DELETE /models/{name} (a scanned file
 * directly inside models.dir, not a symlink; not pinned; unloaded first). */
#include "api/ollama.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "api/authz.h"
#include "api/infer.h"
#include "api/pull.h"
#include "api/requests.h"
#include "api/server.h"
#include "core/log.h"
#include "core/sampling_params.h"
#include "core/util.h"

/* Client text quoted in an error is cut to this many bytes. */
#define QUOTE_MAX 64
#define QUOTE(s) (int)lyra_utf8_clip((s), QUOTE_MAX), (s)

/* ---- parsers (pure) -------------------------------------------------- */

static int bad(struct lyra_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct lyra_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err) {
        err->code = LYRA_EINVAL;
        lyra_vfmt(err->msg, sizeof err->msg, fmt, ap);
    }
    va_end(ap);
    return LYRA_EINVAL;
}

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}

/* Seconds from a double: negative → -1, a fraction rounds up. */
static int seconds_of(double s)
{
    if (s < 0)
        return -1;
    if (s >= (double)INT_MAX)
        return INT_MAX;
    return (int)ceil(s);
}

/* A Go duration ("1h30m", "-5m", "500ms", "0") in seconds; false if it is not one. */
static bool parse_duration(const char *s, double *out)
{
    double sign = 1, total = 0;
    if (*s == '-' || *s == '+')
        sign = *s++ == '-' ? -1 : 1;
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return true;
    }
    if (!*s)
        return false;
    while (*s) {
        if (!((*s >= '0' && *s <= '9') || *s == '.'))
            return false;
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s)
            return false;
        s = end;
        static const struct {
            const char *unit;
            double s;
        } units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"\xc2\xb5s", 1e-6}, {"ms", 1e-3}, {"s", 1}, {"m", 60}, {"h", 3600}};
        size_t i = 0, n = sizeof units / sizeof *units;
        for (; i < n; i++) {
            size_t ul = strlen(units[i].unit);
            /* "m" must not take the "m" of "ms" */
            if (strncmp(s, units[i].unit, ul) == 0 && !(strcmp(units[i].unit, "m") == 0 && s[1] == 's'))
                break;
        }
        if (i == n)
            return false;
        total += v * units[i].s;
        s += strlen(units[i].unit);
    }
    *out = sign * total;
    return true;
}

int lyra_ollama_keep_alive(const json_t *v, int *seconds, struct lyra_err *err)
{
    *seconds = LYRA_OLLAMA_KEEP_DEFAULT;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_number(v)) {
        *seconds = seconds_of(json_number_value(v));
        return 0;
    }
    if (!json_is_string(v))
        return bad(err, "keep_alive: must be a duration (\"5m\", \"30s\"), a number of seconds, or -1");
    const char *s = json_string_value(v);
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (*s && !errno && *end == '\0' && end != s && isfinite(d)) { /* "300": seconds; not "nan"/"inf" */
        *seconds = seconds_of(d);
        return 0;
    }
    if (!parse_duration(s, &d))
        return bad(err, "keep_alive: '%.*s' is not a duration (for example \"5m\", \"1h\", \"30s\", \"-1\")",
                   QUOTE(s));
    *seconds = seconds_of(d);
    return 0;
}

/* Ollama option → worker param, for the options that map one to one. */
static const char *const same_name[] = {
    "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
    "presence_penalty", "frequency_penalty", "seed", "stop",
};

/* The options of Ollama's runner that Lyra has no use for: accepted and ignored. */
static const char *const ignored[] = {
    "num_keep", "typical_p", "tfs_z", "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline",
    "numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "vocab_only", "use_mmap", "use_mlock",
    "num_thread", "f16_kv", "logits_all", "embedding_only", "rope_frequency_base", "rope_frequency_scale",
};

static bool in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, list[i]) == 0)
            return true;
    return false;
}

static const char *client_name(const char *worker_key)
{
    if (strcmp(worker_key, "max_tokens") == 0)
        return "num_predict";
    if (strcmp(worker_key, "json_mode") == 0)
        return "format";
    return worker_key;
}

int lyra_ollama_options(const json_t *options, json_t *params, struct lyra_err *err)
{
    if (!options || json_is_null(options))
        goto check;
    if (!json_is_object(options))
        return bad(err, "options: must be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)options, key, v)
    {
        if (json_is_null(v))
            continue;
        if (in_list(key, same_name, sizeof same_name / sizeof *same_name)) {
            /* 1.0 for an integer option: JavaScript does not tell them apart. */
            if ((strcmp(key, "top_k") == 0 || strcmp(key, "seed") == 0 || strcmp(key, "repeat_last_n") == 0) &&
                json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
                fabs(json_real_value(v)) < 4e9) {
                if (json_object_set_new(params, key, json_integer((json_int_t)json_real_value(v))) < 0)
                    return nomem(err);
            } else if (json_object_set(params, key, v) < 0) {
                return nomem(err);
            }
        } else if (strcmp(key, "num_predict") == 0) {
            if (!json_is_integer(v) && !(json_is_real(v) && json_real_value(v) == floor(json_real_value(v))))
                return bad(err, "options.num_predict: must be an integer");
            json_int_t n = json_is_integer(v) ? json_integer_value(v) : (json_int_t)json_real_value(v);
            if (n == 0 || n < -2)
                return bad(err, "options.num_predict: must be positive, or -1 (no limit)");
            if (json_object_set_new(params, "max_tokens", json_integer(n < 0 ? -1 : n)) < 0)
                return nomem(err);
        } else if (strcmp(key, "num_ctx") == 0) {
            if (!json_is_integer(v) && !(json_is_real(v) && json_real_value(v) == floor(json_real_value(v))))
                return bad(err, "options.num_ctx: must be an integer");
            if (json_number_value(v) < 1)
                return bad(err, "options.num_ctx: must be positive");
        } else if (!in_list(key, ignored, sizeof ignored / sizeof *ignored)) {
            /* Ollama logs and ignores an option it does not know; so does Lyra. */
        }
    }
check:;
    const char *field = NULL;
    struct lyra_err e = {0};
    int rc = lyra_sampling_params_check(params, &field, &e);
    if (rc == LYRA_ENOMEM)
        return nomem(err);
    if (rc < 0) {
        const char *why = e.msg;
        size_t fl = field ? strlen(field) : 0;
        if (field && strncmp(why, field, fl) == 0 && why[fl] == ':' && why[fl + 1] == ' ')
            why += fl + 2;
        const char *name = field ? client_name(field) : "options";
        if (strcmp(name, "format") == 0)
            return bad(err, "format: %s", why);
        return bad(err, "options.%s: %s", name, why);
    }
    return 0;
}

int lyra_ollama_format(const json_t *format, json_t *params, struct lyra_err *err)
{
    if (!format || json_is_null(format))
        return 0;
    if (json_is_string(format)) {
        const char *s = json_string_value(format);
        if (!*s)
            return 0;
        if (strcmp(s, "json") != 0)
            return bad(err, "format: '%.*s' is not a format (\"json\" or a JSON schema object)", QUOTE(s));
    } else if (!json_is_object(format)) {
        return bad(err, "format: must be \"json\" or a JSON schema object");
    }
    return json_object_set_new(params, "json_mode", json_true()) < 0 ? nomem(err) : 0;
}

void lyra_ollama_timestamp(int64_t wall_ns, char *buf, size_t len)
{
    time_t secs = (time_t)(wall_ns / 1000000000);
    long ns = (long)(wall_ns % 1000000000);
    if (ns < 0) {
        ns += 1000000000;
        secs--;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    char day[24];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%09ldZ", day, ns);
}

char *lyra_ollama_model_name(const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ":latest") == 0)
        n -= 7;
    if (n >= len)
        n = lyra_utf8_clip(name, len - 1);
    memcpy(buf, name, n);
    buf[n] = '\0';
    return buf;
}

/* ---- answers --------------------------------------------------------- */

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static json_t *error_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *error_json(const char *fmt, ...)
{
    char msg[LYRA_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_pack("{s:s}", "error", msg);
    return e ? e : json_pack("{s:s}", "error", "error");
}

/* Ollama's error shape {"error":"message"}. */
#define send_err(req, status, ...) lyra_http_send_json((req), (status), error_json(__VA_ARGS__))

static void send_not_found(struct lyra_http_req *req, const char *name)
{
    send_err(req, 404, "model '%.*s' not found", QUOTE(name));
}

/* The body as a JSON object, answering when it is not one. */
static json_t *read_body(struct lyra_http_req *req)
{
    json_t *body;
    if (lyra_http_read_json(req, &body) < 0)
        return NULL;
    if (!json_is_object(body)) {
        json_decref(body);
        send_err(req, 400, "the body must be a JSON object");
        return NULL;
    }
    return body;
}

/* body.model (or Ollama's older body.name), ":latest" dropped, into buf.
 * Answers 400 and returns false when missing or not a string. */
static bool model_field(struct lyra_http_req *req, const json_t *body, char *buf, size_t len)
{
    const json_t *m = json_object_get(body, "model");
    if (!m || json_is_null(m))
        m = json_object_get(body, "name");
    if (!json_is_string(m) || json_string_length(m) == 0) {
        send_err(req, 400, m && !json_is_null(m) ? "model must be a string" : "model is required");
        return false;
    }
    if (json_string_length(m) > LYRA_REQUESTS_MAX_MODEL || strlen(json_string_value(m)) != json_string_length(m)) {
        send_err(req, 400, "model: not a model name");
        return false;
    }
    lyra_ollama_model_name(json_string_value(m), buf, len);
    return true;
}

/* ---- inference: formatters --------------------------------------------- */

enum kind { CHAT, GENERATE, EMBED, EMBEDDINGS };

/* One inference request's state, shared with the bridge's hooks (never
 * run concurrently for one request; freed by free_ud). */
struct oreq {
    enum kind kind;
    struct lyra_server *srv;
    int keep_alive;    /* lyra_ollama_keep_alive's seconds */
    bool load_only;    /* empty prompt / messages: just load the model */
    int64_t t0_ns;     /* when the handler started (wall) */
    char name[LYRA_REQUESTS_MAX_MODEL + 8]; /* as the client named it, ":latest" dropped */
};

static json_t *chunk(const struct oreq *o, const char *text)
{
    char ts[40];
    lyra_ollama_timestamp(wall_ns(), ts, sizeof ts);
    json_t *c = json_pack("{s:s, s:s}", "model", o->name, "created_at", ts);
    if (!c)
        return NULL;
    if (o->kind == CHAT)
        json_object_set_new(c, "message", json_pack("{s:s, s:s}", "role", "assistant", "content", text));
    else
        json_object_set_new(c, "response", json_string(text));
    json_object_set_new(c, "done", json_false());
    return c;
}

static json_int_t ns_of(const json_t *timings, const char *key)
{
    json_t *v = json_object_get(timings, key);
    return json_is_number(v) ? (json_int_t)(json_number_value(v) * 1e6) : 0;
}

static json_int_t count_of(const json_t *usage, const char *key)
{
    return json_integer_value(json_object_get(usage, key));
}

/* The final object's fields. */
static void add_done(const struct oreq *o, const struct lyra_infer_result *r, json_t *c)
{
    const char *reason = o->load_only ? "load"
                         : r->finish_reason && strcmp(r->finish_reason, "length") == 0 ? "length"
                                                                                        : "stop";
    json_int_t total = ns_of(r->timings, "total_ms");
    if (!total)
        total = (json_int_t)(wall_ns() - o->t0_ns);
    json_object_set_new(c, "done", json_true());
    json_object_set_new(c, "done_reason", json_string(reason));
    json_object_set_new(c, "total_duration", json_integer(total));
    json_object_set_new(c, "load_duration", json_integer(ns_of(r->timings, "load_ms")));
    json_object_set_new(c, "prompt_eval_count", json_integer(count_of(r->usage, "prompt_tokens")));
    json_object_set_new(c, "prompt_eval_duration", json_integer(ns_of(r->timings, "prompt_ms")));
    json_object_set_new(c, "eval_count", json_integer(count_of(r->usage, "completion_tokens")));
    json_object_set_new(c, "eval_duration", json_integer(ns_of(r->timings, "predicted_ms")));
    if (o->kind == GENERATE)
        json_object_set_new(c, "context", json_array()); /* token context: Lyra keeps it in the slot */
}

static json_t *fmt_full(const struct lyra_infer_result *r, void *ud)
{
    struct oreq *o = ud;
    json_t *c = chunk(o, r->text);
    if (c)
        add_done(o, r, c);
    return c;
}

/* The stream's first line: Ollama's answers start with the first token;
 * the bridge needs an opening chunk, so it is an empty piece of text. */
static json_t *fmt_opening(const struct lyra_infer_result *r, void *ud)
{
    (void)r;
    return chunk(ud, "");
}

static json_t *fmt_delta(const struct lyra_infer_result *r, const char *text, void *ud)
{
    (void)r;
    return chunk(ud, text);
}

static json_t *fmt_closing(const struct lyra_infer_result *r, void *ud)
{
    struct oreq *o = ud;
    json_t *c = chunk(o, "");
    if (c)
        add_done(o, r, c);
    return c;
}

static json_t *fmt_error(const char *code, const char *message, int status, void *ud)
{
    struct oreq *o = ud;
    (void)status;
    if (o && code && strcmp(code, "model_not_found") == 0)
        return error_json("model '%.*s' not found", QUOTE(o->name));
    return error_json("%s", message ? message : "error");
}

static const struct lyra_infer_format gen_format = {
    .sse = false,
    .full = fmt_full,
    .opening = fmt_opening,
    .delta = fmt_delta,
    .closing = fmt_closing,
    .error = fmt_error,
    .free_ud = free,
};

static json_t *emb_full(const struct lyra_infer_result *r, void *ud)
{
    struct oreq *o = ud;
    json_t *vecs = json_object_get(r->embedding, "data");
    if (o->kind == EMBEDDINGS)
        return json_pack("{s:O}", "embedding", json_array_size(vecs) ? json_array_get(vecs, 0) : json_array());
    return json_pack("{s:s, s:O, s:I, s:I, s:I}", "model", o->name, "embeddings", vecs ? vecs : json_array(),
                     "total_duration", (json_int_t)(wall_ns() - o->t0_ns), "load_duration",
                     (json_int_t)0, "prompt_eval_count",
                     json_integer_value(json_object_get(r->embedding, "prompt_tokens")));
}

static const struct lyra_infer_format emb_format = {
    .sse = false,
    .full = emb_full,
    .error = fmt_error,
    .free_ud = free,
};

/* ---- inference: requests ---------------------------------------------- */

/* keep_alive 0 unloads a model others may be using, -1 keeps it loaded
 * past the operator's idle policy for ever: both are models.load's, as
 * POST /models/{name}/unload and a pin are (a caller with chat alone may
 * set a duration).  Answers 403 and returns false otherwise. */
static bool keep_alive_allowed(struct lyra_http_req *req, struct lyra_server *srv, const struct oreq *o)
{
    if ((o->keep_alive != 0 && o->keep_alive != -1) || lyra_authz_may(req, srv, "models.load", o->name))
        return true;
    send_err(req, 403, o->keep_alive == 0 ? "keep_alive 0 unloads the model, which needs permission models.load"
                                          : "keep_alive -1 keeps the model loaded for ever, which needs permission "
                                            "models.load");
    return false;
}

/* What chat and generate share: model, stream (default true), keep_alive,
 * options and format into params.  Answers and returns false on a bad one. */
static bool common_fields(struct lyra_http_req *req, const json_t *body, struct oreq *o, bool *stream,
                          json_t *params)
{
    if (!model_field(req, body, o->name, sizeof o->name))
        return false;
    const json_t *s = json_object_get(body, "stream");
    if (s && !json_is_null(s) && !json_is_boolean(s)) {
        send_err(req, 400, "stream: must be true or false");
        return false;
    }
    *stream = !s || json_is_null(s) || json_is_true(s); /* Ollama streams unless told not to */
    struct lyra_err err = {0};
    if (lyra_ollama_keep_alive(json_object_get(body, "keep_alive"), &o->keep_alive, &err) < 0 ||
        (params && (lyra_ollama_options(json_object_get(body, "options"), params, &err) < 0 ||
                    lyra_ollama_format(json_object_get(body, "format"), params, &err) < 0 ||
                    lyra_ollama_options(NULL, params, &err) < 0))) { /* format's json_mode checked too */
        send_err(req, err.code == LYRA_ENOMEM ? 500 : 400, "%s", err.msg);
        return false;
    }
    const json_t *tools = json_object_get(body, "tools");
    if (json_is_array(tools) && json_array_size(tools) > 0) {
        send_err(req, 400, "tools: tool calling is not supported by Lyra");
        return false;
    }
    const json_t *images = json_object_get(body, "images");
    if (json_is_array(images) && json_array_size(images) > 0) {
        send_err(req, 400, "images: image input is not supported by Lyra");
        return false;
    }
    return true;
}

/* keep_alive 0 with nothing to generate: unload now (Ollama answers done_reason "unload"). */
static void unload_now(struct lyra_http_req *req, struct oreq *o)
{
    const struct lyra_model *m = lyra_registry_lookup(o->srv->registry, o->name);
    if (!m) {
        send_not_found(req, o->name);
        return;
    }
    bool was_loaded = false;
    int rc = lyra_manager_unload(o->srv->manager, m->name, false, 5000, &was_loaded);
    lyra_registry_unref(m);
    if (rc == LYRA_EPERM) {
        send_err(req, 409, "model '%.*s' is pinned: unpin it to unload it", QUOTE(o->name));
        return;
    }
    char ts[40];
    lyra_ollama_timestamp(wall_ns(), ts, sizeof ts);
    json_t *c = json_pack("{s:s, s:s, s:b, s:s}", "model", o->name, "created_at", ts, "done", 1, "done_reason",
                          "unload");
    if (c && o->kind == CHAT)
        json_object_set_new(c, "message", json_pack("{s:s, s:s}", "role", "assistant", "content", ""));
    else if (c)
        json_object_set_new(c, "response", json_string(""));
    lyra_http_send_json(req, 200, c);
}

static void start(struct lyra_http_req *req, struct oreq *o, json_t *msg, bool stream,
                  const struct lyra_infer_format *fmt)
{
    if (o->keep_alive != LYRA_OLLAMA_KEEP_DEFAULT)
        json_object_set_new(msg, "keep_alive_s", json_integer(o->keep_alive < 0 ? -1 : o->keep_alive));
    struct lyra_infer_options opts = {
        .model = o->name,
        .msg = msg,
        .stream = stream,
        .id_prefix = "ollama-",
        .permission = "chat",
        .fmt = fmt,
        .ud = o,
    };
    lyra_infer_start(o->srv, req, &opts); /* takes msg and o */
}

static struct oreq *oreq_new(struct lyra_http_req *req, struct lyra_server *srv, enum kind kind)
{
    struct oreq *o = calloc(1, sizeof *o);
    if (!o) {
        send_err(req, 500, "out of memory");
        return NULL;
    }
    o->kind = kind;
    o->srv = srv;
    o->t0_ns = wall_ns();
    o->keep_alive = LYRA_OLLAMA_KEEP_DEFAULT;
    return o;
}

/* messages[] → the worker's [{role, content}] (new ref), or NULL after answering. */
static json_t *chat_messages(struct lyra_http_req *req, const json_t *messages)
{
    json_t *out = json_array();
    size_t i;
    const json_t *m;
    if (!out)
        goto oom;
    json_array_foreach(messages, i, m)
    {
        if (!json_is_object(m)) {
            send_err(req, 400, "messages[%zu]: must be an object", i);
            goto fail;
        }
        const json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        const char *r = json_string_value(role);
        if (!r) {
            send_err(req, 400, "messages[%zu].role: must be system, user or assistant", i);
            goto fail;
        }
        if (strcmp(r, "tool") == 0) {
            send_err(req, 400, "messages[%zu].role: tool messages are not supported (Lyra has no tool calling)", i);
            goto fail;
        }
        if (strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0) {
            send_err(req, 400, "messages[%zu].role: unknown role '%.*s' (system, user or assistant)", i, QUOTE(r));
            goto fail;
        }
        if (content && !json_is_null(content) && !json_is_string(content)) {
            send_err(req, 400, "messages[%zu].content: must be a string", i);
            goto fail;
        }
        const json_t *images = json_object_get(m, "images");
        if (json_is_array(images) && json_array_size(images) > 0) {
            send_err(req, 400, "messages[%zu].images: image input is not supported by Lyra", i);
            goto fail;
        }
        const char *text = json_is_string(content) ? json_string_value(content) : "";
        if (strlen(text) != (json_is_string(content) ? json_string_length(content) : 0)) {
            send_err(req, 400, "messages[%zu].content: must not contain NUL characters", i);
            goto fail;
        }
        json_t *wm = json_pack("{s:s, s:s}", "role", r, "content", text);
        if (!wm || json_array_append_new(out, wm) < 0)
            goto oom;
    }
    return out;
oom:
    send_err(req, 500, "out of memory");
fail:
    json_decref(out);
    return NULL;
}

/* Chat and generate: the worker message from the body, then the bridge. */
static void generate_like(struct lyra_http_req *req, struct lyra_server *srv, enum kind kind)
{
    json_t *body = read_body(req);
    if (!body)
        return;
    struct oreq *o = oreq_new(req, srv, kind);
    json_t *params = json_object(), *msg = NULL, *messages = NULL;
    bool stream = true;
    if (!o || !params) {
        if (o && !params)
            send_err(req, 500, "out of memory");
        goto out;
    }
    if (!common_fields(req, body, o, &stream, params))
        goto out;
    if (kind == CHAT) {
        const json_t *ms = json_object_get(body, "messages");
        if (ms && !json_is_null(ms) && !json_is_array(ms)) {
            send_err(req, 400, "messages: must be an array");
            goto out;
        }
        if (!(messages = chat_messages(req, ms)))
            goto out;
        o->load_only = json_array_size(messages) == 0;
    } else {
        const json_t *prompt = json_object_get(body, "prompt"), *system = json_object_get(body, "system"),
                     *raw = json_object_get(body, "raw"), *suffix = json_object_get(body, "suffix");
        if ((prompt && !json_is_null(prompt) && !json_is_string(prompt)) ||
            (system && !json_is_null(system) && !json_is_string(system))) {
            send_err(req, 400, "%s: must be a string", json_is_string(prompt) || !prompt ? "system" : "prompt");
            goto out;
        }
        if (raw && !json_is_null(raw) && !json_is_boolean(raw)) {
            send_err(req, 400, "raw: must be true or false");
            goto out;
        }
        if (json_is_string(suffix) && json_string_length(suffix) > 0) {
            send_err(req, 400, "suffix: fill-in-the-middle is not supported by Lyra");
            goto out;
        }
        const char *p = json_is_string(prompt) ? json_string_value(prompt) : "";
        o->load_only = !*p;
        if (json_is_true(raw)) {
            msg = json_pack("{s:s, s:s, s:O}", "type", "generate", "prompt", p, "params", params);
        } else {
            /* Ollama applies the model's template to prompt (and system):
             * Lyra's worker does that for messages. */
            messages = json_array();
            if (messages && json_is_string(system) && json_string_length(system))
                json_array_append_new(messages, json_pack("{s:s, s:O}", "role", "system", "content", system));
            if (messages)
                json_array_append_new(messages, json_pack("{s:s, s:s}", "role", "user", "content", p));
        }
    }
    /* Unloading is models.load's (POST /models/{name}/unload): keep_alive 0
     * may not let a caller with chat alone evict a model others use. */
    if (!keep_alive_allowed(req, srv, o))
        goto out;
    if (o->load_only && o->keep_alive == 0) {
        unload_now(req, o);
        goto out;
    }
    if (o->load_only) {
        json_decref(msg);
        msg = json_pack("{s:s}", "type", "load");
        stream = false; /* one line either way */
    } else if (!msg) {
        msg = messages ? json_pack("{s:s, s:O, s:O}", "type", "generate", "messages", messages, "params", params)
                       : NULL;
    }
    if (!msg) {
        send_err(req, 500, "out of memory");
        goto out;
    }
    start(req, o, msg, stream, &gen_format);
    o = NULL;
out:
    free(o);
    json_decref(messages);
    json_decref(params);
    json_decref(body);
}

void lyra_api_ollama_chat(struct lyra_http_req *req, void *ctx)
{
    generate_like(req, ctx, CHAT);
}

void lyra_api_ollama_generate(struct lyra_http_req *req, void *ctx)
{
    generate_like(req, ctx, GENERATE);
}

static void embed_like(struct lyra_http_req *req, struct lyra_server *srv, enum kind kind)
{
    json_t *body = read_body(req);
    if (!body)
        return;
    struct oreq *o = oreq_new(req, srv, kind);
    json_t *inputs = NULL;
    bool stream;
    if (!o || !common_fields(req, body, o, &stream, NULL))
        goto out;
    if (!keep_alive_allowed(req, srv, o))
        goto out;
    struct lyra_err err = {0};
    json_t *params = json_object(); /* checked for their types, not used by an embedding */
    int rc = params ? lyra_ollama_options(json_object_get(body, "options"), params, &err) : nomem(&err);
    json_decref(params);
    if (rc < 0) {
        send_err(req, rc == LYRA_ENOMEM ? 500 : 400, "%s", err.msg);
        goto out;
    }
    const char *field = kind == EMBED ? "input" : "prompt";
    const json_t *in = json_object_get(body, field);
    if (kind == EMBED && json_is_array(in)) {
        size_t i;
        const json_t *v;
        json_array_foreach(in, i, v) if (!json_is_string(v))
        {
            send_err(req, 400, "input[%zu]: must be a string", i);
            goto out;
        }
        if (json_array_size(in) == 0) {
            send_err(req, 400, "input: must not be empty");
            goto out;
        }
        inputs = json_copy((json_t *)in);
    } else if (json_is_string(in)) {
        inputs = json_pack("[O]", in);
    } else {
        send_err(req, 400, "%s: must be a string%s", field, kind == EMBED ? " or an array of strings" : "");
        goto out;
    }
    const json_t *dims = json_object_get(body, "dimensions");
    if (dims && !json_is_null(dims)) {
        send_err(req, 400, "dimensions: truncating embeddings is not supported by Lyra");
        goto out;
    }
    json_t *msg = inputs ? json_pack("{s:s, s:O}", "type", "embed", "inputs", inputs) : NULL;
    if (!msg) {
        send_err(req, 500, "out of memory");
        goto out;
    }
    start(req, o, msg, false, &emb_format);
    o = NULL;
out:
    free(o);
    json_decref(inputs);
    json_decref(body);
}

void lyra_api_ollama_embed(struct lyra_http_req *req, void *ctx)
{
    embed_like(req, ctx, EMBED);
}

void lyra_api_ollama_embeddings(struct lyra_http_req *req, void *ctx)
{
    embed_like(req, ctx, EMBEDDINGS);
}

/* ---- models ------------------------------------------------------------ */

/* "1.2B", "350M", "12K" as Ollama writes parameter sizes. */
static void param_size(uint64_t n, char *buf, size_t len)
{
    if (n >= 1000000000ULL)
        snprintf(buf, len, "%.1fB", (double)n / 1e9);
    else if (n >= 1000000ULL)
        snprintf(buf, len, "%.1fM", (double)n / 1e6);
    else if (n >= 1000ULL)
        snprintf(buf, len, "%.1fK", (double)n / 1e3);
    else
        snprintf(buf, len, "%llu", (unsigned long long)n);
}

static json_t *details_json(const struct lyra_model *m)
{
    const struct lyra_gguf_info *g = m->info;
    char ps[32] = "";
    if (g)
        param_size(g->n_params, ps, sizeof ps);
    const char *arch = g && g->architecture ? g->architecture : "";
    const char *q = g ? lyra_gguf_quantization(g) : NULL;
    return json_pack("{s:s, s:s, s:s, s:[s], s:s, s:s}", "parent_model", "", "format", "gguf", "family", arch,
                     "families", arch, "parameter_size", ps, "quantization_level", q ? q : "");
}

/* Ollama's digest names a model's content; Lyra does not hash whole files,
 * so this one names the file's version (path, size, modification time):
 * it changes when the file does. */
static void digest_of(const struct lyra_model *m, char hex[65])
{
    char key[4200];
    int n = snprintf(key, sizeof key, "%s\n%llu\n%lld", m->path ? m->path : m->name,
                     (unsigned long long)m->size_bytes, (long long)m->mtime_ns);
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)key, n > 0 && (size_t)n < sizeof key ? (size_t)n : strlen(key));
    sodium_bin2hex(hex, 65, h, sizeof h);
}

static json_t *model_json(const struct lyra_model *m)
{
    char ts[40], hex[65];
    lyra_ollama_timestamp(m->mtime_ns, ts, sizeof ts);
    digest_of(m, hex);
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:o}", "name", m->name, "model", m->name, "modified_at", ts, "size",
                     (json_int_t)m->size_bytes, "digest", hex, "details", details_json(m));
}

void lyra_api_ollama_tags(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    const struct lyra_model **models = NULL;
    size_t n = 0;
    if (lyra_registry_list(srv->registry, &models, &n) < 0) {
        send_err(req, 500, "out of memory");
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; list && i < n; i++)
        if (models[i]->valid && lyra_authz_may(req, srv, "models.read", models[i]->name))
            json_array_append_new(list, model_json(models[i]));
    lyra_registry_list_free(models, n);
    lyra_http_send_json(req, list ? 200 : 500, list ? json_pack("{s:o}", "models", list) : error_json("out of memory"));
}

void lyra_api_ollama_ps(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *status = lyra_manager_status(srv->manager);
    json_t *list = json_array();
    size_t i;
    json_t *w;
    json_array_foreach(status, i, w)
    {
        const char *name = json_string_value(json_object_get(w, "name"));
        const char *state = json_string_value(json_object_get(w, "state"));
        /* Ollama lists the runners that serve: a model stopping or failed is gone. */
        if (!name || !state || (strcmp(state, "loaded") != 0 && strcmp(state, "loading") != 0))
            continue;
        const struct lyra_model *m = lyra_authz_may(req, srv, "models.read", name)
                                         ? lyra_registry_lookup(srv->registry, name)
                                         : NULL;
        if (!m)
            continue;
        json_t *e = model_json(m);
        json_t *wka = json_object_get(w, "keep_alive_s");
        int ka = json_is_integer(wka) ? (int)json_integer_value(wka) : m->settings.keep_alive_s;
        lyra_registry_unref(m);
        if (!e)
            continue;
        /* Expiry: idle since idle_s, unloaded keep_alive_s after that; -1 never
         * (Ollama shows a far future then); a busy model is not idle. */
        double idle = json_number_value(json_object_get(w, "idle_s"));
        if (json_integer_value(json_object_get(w, "in_flight")) > 0)
            idle = 0;
        char ts[40] = "2300-01-01T00:00:00.000000000Z"; /* keep_alive -1: never */
        if (ka >= 0)
            lyra_ollama_timestamp(wall_ns() + (int64_t)((ka - idle) * 1e9), ts, sizeof ts);
        json_int_t rss = json_integer_value(json_object_get(w, "rss_bytes"));
        json_object_set_new(e, "size", json_integer(rss > 0 ? rss : json_integer_value(json_object_get(e, "size"))));
        json_object_set_new(e, "expires_at", json_string(ts));
        json_object_set_new(e, "size_vram", json_integer(0));
        json_array_append_new(list, e);
    }
    json_decref(status);
    lyra_http_send_json(req, 200, json_pack("{s:o}", "models", list ? list : json_array()));
}

void lyra_api_ollama_show(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *body = read_body(req);
    char name[LYRA_REQUESTS_MAX_MODEL + 8];
    if (!body)
        return;
    if (!model_field(req, body, name, sizeof name)) {
        json_decref(body);
        return;
    }
    json_decref(body);
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        send_not_found(req, name);
        return;
    }
    if (!lyra_authz_require(req, srv, "models.read", m->name)) {
        lyra_registry_unref(m);
        return;
    }
    if (!m->valid) {
        send_err(req, 422, "model '%.*s' is not usable: %s", QUOTE(name), m->error ? m->error : "invalid");
        lyra_registry_unref(m);
        return;
    }
    const struct lyra_gguf_info *g = m->info;
    const char *tmpl = m->settings.chat_template ? m->settings.chat_template : g ? g->chat_template : NULL;
    json_t *info = json_object();
    if (g && info) {
        const char *arch = g->architecture ? g->architecture : "";
        char key[160];
        json_object_set_new(info, "general.architecture", json_string(arch));
        json_object_set_new(info, "general.parameter_count", json_integer((json_int_t)g->n_params));
        if (g->name)
            json_object_set_new(info, "general.name", json_string(g->name));
        if (g->file_type >= 0)
            json_object_set_new(info, "general.file_type", json_integer(g->file_type));
#define ARCH_KV(field, suffix)                                                                                \
    if (g->field) {                                                                                           \
        snprintf(key, sizeof key, "%s." suffix, arch);                                                        \
        json_object_set_new(info, key, json_integer((json_int_t)g->field));                                   \
    }
        ARCH_KV(context_length, "context_length")
        ARCH_KV(embedding_length, "embedding_length")
        ARCH_KV(block_count, "block_count")
        ARCH_KV(feed_forward_length, "feed_forward_length")
        ARCH_KV(head_count, "attention.head_count")
        ARCH_KV(head_count_kv, "attention.head_count_kv")
#undef ARCH_KV
        if (g->tokenizer_model)
            json_object_set_new(info, "tokenizer.ggml.model", json_string(g->tokenizer_model));
    }
    char *modelfile = NULL;
    if (asprintf(&modelfile, "# Served by Lyra %s from its models directory\nFROM %s\n", LYRA_VERSION,
                 m->path ? m->path : m->name) < 0)
        modelfile = NULL;
    char params[64] = "";
    if (m->settings.ctx_size > 0)
        snprintf(params, sizeof params, "num_ctx %d", m->settings.ctx_size);
    json_t *caps = json_pack("[s]", "completion");
    if (caps && m->settings.embeddings)
        json_array_append_new(caps, json_string("embedding"));
    char ts[40];
    lyra_ollama_timestamp(m->mtime_ns, ts, sizeof ts);
    json_t *out = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:s}", "modelfile", modelfile ? modelfile : "",
                            "parameters", params, "template", tmpl ? tmpl : "", "details", details_json(m),
                            "model_info", info ? info : json_object(), "capabilities", caps ? caps : json_array(),
                            "modified_at", ts);
    free(modelfile);
    lyra_registry_unref(m);
    lyra_http_send_json(req, out ? 200 : 500, out ? out : error_json("out of memory"));
}

void lyra_api_ollama_version(struct lyra_http_req *req, void *ctx)
{
    (void)ctx;
    lyra_http_send_json(req, 200, json_pack("{s:s}", "version", LYRA_VERSION));
}

/* ---- DELETE /api/delete -------------------------------------------------- */

/* DELETE /api/delete: the same deletion as DELETE /models/{name}
 * (lyra_server_delete_model), answered in Ollama's shape. */
void lyra_api_ollama_delete(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *body = read_body(req);
    char name[LYRA_REQUESTS_MAX_MODEL + 8];
    if (!body)
        return;
    bool ok = model_field(req, body, name, sizeof name);
    json_decref(body);
    if (!ok)
        return;
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        send_not_found(req, name);
        return;
    }
    if (!lyra_authz_require(req, srv, "models.delete", m->name)) {
        lyra_registry_unref(m);
        return;
    }
    struct lyra_model_delete d;
    if (lyra_server_delete_model(srv, m, &d) < 0)
        send_err(req, d.status, "%s", d.msg);
    else
        lyra_http_send(req, 200, "application/json", NULL, 0);
    lyra_registry_unref(m);
}

/* ---- POST /api/pull ------------------------------------------------------ */

/* A pull being followed: the job's events become progress lines on the
 * stream.  Held by the handler and by the bus subscription; freed when both
 * let go. */
struct follow {
    pthread_mutex_t lock;
    int refs;
    struct lyra_server *srv;
    struct lyra_http_stream *st; /* NULL once ended */
    char id[40];                 /* the job; "" until submitted */
    int sub;                     /* bus subscription */
    bool progress_lines;         /* stream: true; stream false: only the last line */
    bool ended;
    bool cb_ended; /* ended by the subscriber, which drops the subscription */
    char name[LYRA_PULL_NAME_MAX + 1];
    /* stream false: the request is parked (lyra_http_park) until the job
     * ends, then answered with the job's outcome and a status that says
     * it (200 success, 500 failed or cancelled), as Ollama does. */
    struct lyra_http_req *req; /* while parked; NULL once the client left */
    json_t *final;             /* the answer, once ended */
    int final_status;
};

static void follow_unref(struct follow *f)
{
    pthread_mutex_lock(&f->lock);
    bool last = --f->refs == 0;
    pthread_mutex_unlock(&f->lock);
    if (last) {
        pthread_mutex_destroy(&f->lock);
        free(f);
    }
}

/* Writes a line (j taken). Under f->lock. */
static void write_line(struct follow *f, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s && f->st) {
        size_t n = strlen(s);
        s[n] = '\n'; /* json_dumps leaves room: write n + 1 bytes, the NUL replaced */
        lyra_http_stream_write(f->st, s, n + 1);
    }
    free(s);
}

/* Ends the answer with `last` (taken).  Under f->lock; once. */
static void end_follow(struct follow *f, json_t *last, bool success)
{
    if (f->ended)
        return;
    f->ended = true;
    if (!f->progress_lines) {
        f->final = last ? last : json_pack("{s:s}", "status", "success");
        f->final_status = success ? 200 : 500;
        if (f->req)
            lyra_http_wake(f->req);
        return;
    }
    if (success) {
        write_line(f, json_pack("{s:s}", "status", "verifying sha256 digest"));
        write_line(f, json_pack("{s:s}", "status", "writing manifest"));
    }
    write_line(f, last ? last : json_pack("{s:s}", "status", "success"));
    lyra_http_stream_close(f->st);
    f->st = NULL;
}

/* Ends the follow for a job in state `state` with `error` (NULL when none). */
static bool end_for_state(struct follow *f, const char *state, const char *error)
{
    if (!state)
        return false;
    if (strcmp(state, "succeeded") == 0)
        end_follow(f, NULL, true);
    else if (strcmp(state, "failed") == 0)
        end_follow(f, error_json("pull of %s failed: %s", f->name, error ? error : "unknown error"), false);
    else if (strcmp(state, "cancelled") == 0)
        end_follow(f, error_json("pull of %s was cancelled (job %s)", f->name, f->id), false);
    else
        return false;
    return true;
}

/* Database thread: unsubscribes a follow whose job ended (its callback,
 * under the bus lock, could not) and lets go of its subscription's hold. */
static int unsubscribe_job(struct sqlite3 *db, void *arg, struct lyra_err *err)
{
    (void)db;
    (void)err;
    struct follow *f = arg;
    lyra_bus_unsubscribe(f->srv->bus, f->sub);
    follow_unref(f);
    return 0;
}

/* Bus subscriber (the publisher's thread, under the bus lock): must not
 * block or call into the bus. */
static void on_job_event(const struct lyra_event *ev, void *ud)
{
    struct follow *f = ud;
    pthread_mutex_lock(&f->lock);
    bool ended_now = false;
    if (!f->ended && strcmp(ev->type, "system.shutdown") == 0) {
        end_follow(f,
                   error_json("the server is shutting down; the pull of %s resumes when it starts again (job %s)",
                              f->name, f->id),
                   false);
        ended_now = true;
    } else if (!f->ended && f->id[0] &&
               strcmp(json_string_value(json_object_get(ev->data, "id")) ?: "", f->id) == 0) {
        const char *state = json_string_value(json_object_get(ev->data, "state"));
        const char *error = json_string_value(json_object_get(ev->data, "error"));
        if (end_for_state(f, state, error)) {
            ended_now = true;
        } else if (f->progress_lines && strcmp(ev->type, "job.progress") == 0) {
            json_t *p = json_object_get(ev->data, "progress");
            json_int_t done = json_integer_value(json_object_get(p, "done"));
            json_int_t total = json_integer_value(json_object_get(p, "total"));
            char digest[64];
            snprintf(digest, sizeof digest, "lyra-job:%s", f->id);
            write_line(f, json_pack("{s:s, s:s, s:I, s:I}", "status", "downloading", "digest", digest, "total",
                                    total, "completed", done));
        }
    }
    if (ended_now)
        f->cb_ended = true;
    pthread_mutex_unlock(&f->lock);
    if (ended_now && lyra_store_submit(f->srv->store, unsubscribe_job, NULL, f) < 0)
        lyra_log(LYRA_LOG_WARN, "ollama", NULL, NULL, "pull follow of job %s left subscribed (store closing)",
                 f->id);
}

/* stream false, parked: the job ended (or the client went): answer. */
static void pull_resume(struct lyra_http_req *req, void *ud)
{
    struct follow *f = ud;
    pthread_mutex_lock(&f->lock);
    json_t *answer = f->final;
    int status = f->final_status ? f->final_status : 500;
    f->final = NULL;
    f->req = NULL;
    pthread_mutex_unlock(&f->lock);
    lyra_http_send_json(req, status, answer ? answer : error_json("the pull ended without an answer"));
    follow_unref(f); /* the parked request's hold */
}

/* The client hung up while parked: the pull goes on as a job (GET
 * /jobs/{id}); the request is woken so that it ends now. */
static void pull_gone(void *ud)
{
    struct follow *f = ud;
    pthread_mutex_lock(&f->lock);
    if (!f->ended) {
        f->ended = true;
        f->final = error_json("the client went away; the pull goes on as job %s", f->id);
        f->final_status = 500;
        if (f->req)
            lyra_http_wake(f->req);
    }
    pthread_mutex_unlock(&f->lock);
}

/* The connection ended before the resume could run: never wake it again. */
static void pull_dropped(void *ud)
{
    struct follow *f = ud;
    pthread_mutex_lock(&f->lock);
    f->req = NULL;
    json_decref(f->final);
    f->final = NULL;
    pthread_mutex_unlock(&f->lock);
    follow_unref(f);
}

/* The pull's source: an http(s):// URL or hf://ORG/REPO/FILE.gguf. */
static bool pull_source(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0 || strncmp(s, "hf://", 5) == 0;
}

void lyra_api_ollama_pull(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *body = read_body(req);
    if (!body)
        return;
    const json_t *m = json_object_get(body, "model");
    if (!m || json_is_null(m))
        m = json_object_get(body, "name");
    const json_t *s = json_object_get(body, "stream");
    const char *src = json_string_value(m);
    if (!src || !*src) {
        send_err(req, 400, "model is required");
        json_decref(body);
        return;
    }
    if (s && !json_is_null(s) && !json_is_boolean(s)) {
        send_err(req, 400, "stream: must be true or false");
        json_decref(body);
        return;
    }
    if (!pull_source(src)) {
        send_err(req, 400,
                 "pull '%.*s': Lyra has no Ollama registry; it pulls GGUF files from http(s):// URLs or "
                 "hf://ORG/REPO/FILE.gguf — pull the model by its URL",
                 QUOTE(src));
        json_decref(body);
        return;
    }
    json_t *params = json_pack("{s:s}", "source", src);
    const char *base = strrchr(src, '/');
    char name[LYRA_PULL_NAME_MAX + 1];
    lyra_fmt(name, sizeof name, "%s", base ? base + 1 : src);
    bool progress_lines = !s || json_is_null(s) || json_is_true(s);
    json_decref(body); /* src and s are gone from here */
    struct lyra_err err = {0};
    int rc = params ? lyra_pull_check_params(&srv->pull, params, &err) : nomem(&err);
    bool exists = rc == LYRA_EEXISTS;
    if (rc < 0 && !exists) {
        send_err(req, rc == LYRA_ENOMEM ? 500 : 400, "%s", err.msg);
        json_decref(params);
        return;
    }
    struct follow *f = calloc(1, sizeof *f);
    if (!f) {
        send_err(req, 500, "out of memory");
        json_decref(params);
        return;
    }
    pthread_mutex_init(&f->lock, NULL);
    f->refs = 1;
    f->srv = srv;
    f->progress_lines = progress_lines;
    lyra_fmt(f->name, sizeof f->name, "%s", name);
    if (f->progress_lines) {
        static const char first[] = "{\"status\":\"pulling manifest\"}\n";
        f->st = lyra_http_send_stream(req, 200, "application/x-ndjson", first, sizeof first - 1, NULL, NULL);
        if (!f->st) {
            json_decref(params);
            follow_unref(f);
            return;
        }
    } else {
        /* Parked before anything can end the follow (and wake it). */
        f->refs++; /* the parked request's hold: resume or dropped lets go */
        f->req = req;
        lyra_http_park(req, pull_resume, pull_gone, pull_dropped, f);
    }
    if (exists) { /* Ollama answers a pull of a model it has with success */
        json_decref(params);
        pthread_mutex_lock(&f->lock);
        end_follow(f, NULL, true);
        pthread_mutex_unlock(&f->lock);
        follow_unref(f);
        return;
    }
    /* Subscribed before the job exists, so that none of its events is
     * missed; they are matched once the id is known, and a job that ended
     * before that is seen by the lyra_jobs_get below (a job's state is
     * written before its event is published). */
    pthread_mutex_lock(&f->lock);
    f->refs++;
    pthread_mutex_unlock(&f->lock);
    f->sub = lyra_bus_subscribe(srv->bus, "job.*,system.shutdown", on_job_event, f);
    char id[40] = "";
    if (!f->sub) {
        json_decref(params);
        rc = nomem(&err);
    } else {
        rc = lyra_jobs_submit(srv->jobs, "pull", params, id, &err); /* takes params */
    }
    pthread_mutex_lock(&f->lock);
    if (rc < 0)
        end_follow(f, error_json("cannot start the pull: %s", err.msg[0] ? err.msg : lyra_strerror(rc)), false);
    else
        lyra_fmt(f->id, sizeof f->id, "%s", id);
    pthread_mutex_unlock(&f->lock);
    json_t *job = rc == 0 ? lyra_jobs_get(srv->jobs, id) : NULL;
    pthread_mutex_lock(&f->lock);
    if (job)
        end_for_state(f, json_string_value(json_object_get(job, "state")),
                      json_string_value(json_object_get(job, "error")));
    /* Ended here rather than by the subscriber (which then queued its own
     * unsubscribe): the subscription is the handler's to drop.  Once
     * ended, the subscriber does nothing more, so the flag cannot change. */
    bool ended_here = f->ended && !f->cb_ended;
    pthread_mutex_unlock(&f->lock);
    json_decref(job);
    if (ended_here) {
        if (f->sub)
            lyra_bus_unsubscribe(srv->bus, f->sub); /* waits for a callback in progress */
        follow_unref(f); /* the subscription's hold */
    }
    follow_unref(f);
}
