/* requests.c — request bodies of the inference endpoints (see requests.h).
 *
 * Each parser walks the body once, refusing the first thing that is wrong
 * with the field's name as the client wrote it, and builds the worker's
 * message from validated parts only.  The sampling parameters are copied
 * into the worker's "params" under the worker's names and then checked with
 * core/sampling_params.c — the worker's own parser — so the two sides cannot
 * disagree; its error is reported under the client's name for the field. */
#include "api/requests.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampling_params.h"
#include "core/util.h"

/* Client text quoted in a message is cut to this many bytes (on a
 * character boundary). */
#define QUOTE_MAX 32

struct parser {
    bool lyra; /* /chat: Lyra's error codes ("invalid_field" for everything) */
    struct lyra_request_error *err;
};

/* "%.*s%s" arguments for quoting client text: at most QUOTE_MAX bytes, never
 * half a character, and "..." when something was cut. */
#define QUOTE(s)                                                                                             \
    (int)lyra_utf8_clip((s), QUOTE_MAX), (s), (strlen(s) > lyra_utf8_clip((s), QUOTE_MAX) ? "..." : "")

/* Records a 400 for `param` with the message "<param>: <why>" and returns
 * LYRA_EINVAL.  `code` is the OpenAI code; /chat uses "invalid_field". */
static int refuse(struct parser *ps, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int refuse(struct parser *ps, const char *code, const char *param, const char *fmt, ...)
{
    struct lyra_request_error *e = ps->err;
    char why[LYRA_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(why, sizeof why, fmt, ap);
    va_end(ap);
    e->status = 400;
    e->code = ps->lyra ? "invalid_field" : code;
    lyra_fmt(e->param, sizeof e->param, "%s", param);
    e->err.code = LYRA_EINVAL;
    if (param[0])
        lyra_fmt(e->err.msg, sizeof e->err.msg, "%s: %s", e->param, why);
    else
        lyra_fmt(e->err.msg, sizeof e->err.msg, "%s", why);
    return LYRA_EINVAL;
}

static int nomem(struct parser *ps)
{
    struct lyra_request_error *e = ps->err;
    e->status = 500;
    e->code = "internal";
    e->param[0] = '\0';
    e->err.code = LYRA_ENOMEM;
    lyra_fmt(e->err.msg, sizeof e->err.msg, "out of memory");
    return LYRA_ENOMEM;
}

/* body[key], with null counting as absent. */
static const json_t *get(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : NULL;
}

static bool has_nul(const json_t *s)
{
    return strlen(json_string_value(s)) != json_string_length(s);
}

static int body_object(struct parser *ps, const json_t *body)
{
    if (!json_is_object(body))
        return refuse(ps, "invalid_request", "", "the body must be a JSON object");
    return 0;
}

/* An optional boolean body[key]. */
static int opt_bool(struct parser *ps, const json_t *o, const char *key, const char *param, bool *out)
{
    const json_t *v = get(o, key);
    *out = false;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return refuse(ps, "invalid_type", param, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* An optional non-empty string of at most max bytes without NUL. */
static int opt_string(struct parser *ps, const json_t *o, const char *key, size_t max, const char **out)
{
    const json_t *v = get(o, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v))
        return refuse(ps, "invalid_type", key, "must be a string");
    size_t len = json_string_length(v);
    if (len == 0)
        return refuse(ps, "invalid_value", key, "must not be empty");
    if (len > max)
        return refuse(ps, "invalid_value", key, "longer than %zu bytes", max);
    if (has_nul(v))
        return refuse(ps, "invalid_value", key, "must not contain NUL characters");
    *out = json_string_value(v);
    return 0;
}

/* `n` (choices per request): absent or 1. */
static int check_n(struct parser *ps, const json_t *body)
{
    const json_t *n = get(body, "n");
    if (!n)
        return 0;
    /* 1.0 is 1 (JavaScript clients do not distinguish them). */
    if (!json_is_integer(n) && !(json_is_real(n) && json_real_value(n) == floor(json_real_value(n))))
        return refuse(ps, "invalid_type", "n", "must be an integer");
    if (json_number_value(n) != 1.0)
        return refuse(ps, "unsupported_value", "n", "only n = 1 is supported");
    return 0;
}

/* ---- sampling parameters ------------------------------------------------- */

/* Checks the worker params p (built by the caller) with the worker's own
 * rules.  name_of maps a worker key back to the client's field. */
static int check_params(struct parser *ps, const json_t *p, const char *(*name_of)(const char *, void *),
                        void *ud)
{
    const char *field = NULL;
    struct lyra_err e = {0};
    int rc = lyra_sampling_params_check(p, &field, &e);
    if (rc == LYRA_ENOMEM)
        return nomem(ps);
    if (rc == 0)
        return 0;
    if (!field)
        field = "params";
    /* The shared message reads "<worker key>: why"; keep only the why. */
    const char *why = e.msg;
    size_t fl = strlen(field);
    if (strncmp(why, field, fl) == 0 && why[fl] == ':' && why[fl + 1] == ' ')
        why += fl + 2;
    return refuse(ps, "invalid_value", name_of(field, ud), "%s", why);
}

/* The OpenAI body fields copied into params as they are (OpenAI's and
 * llama-server's names are the worker's). */
static const char *const openai_sampling[] = {
    "temperature",       "top_p",          "top_k",         "min_p",      "seed",    "presence_penalty",
    "frequency_penalty", "repeat_penalty", "repeat_last_n", "ignore_eos", "grammar", "stop",
};

struct openai_names {
    const char *max_tokens; /* the field max_tokens came from */
};

static const char *openai_name(const char *field, void *ud)
{
    struct openai_names *n = ud;
    if (strcmp(field, "max_tokens") == 0)
        return n->max_tokens;
    if (strcmp(field, "json_mode") == 0)
        return "response_format";
    return field;
}

static bool put(json_t *o, const char *key, json_t *v)
{
    return v && json_object_set_new(o, key, v) == 0;
}

/* response_format: {"type": "text" | "json_object" | "json_schema"}.  Sets
 * *json for the two JSON types (json_schema is enforced as "some JSON
 * object": the schema itself is not compiled to a grammar). */
static int response_format(struct parser *ps, const json_t *body, bool *json)
{
    *json = false;
    const json_t *rf = get(body, "response_format");
    if (!rf)
        return 0;
    if (!json_is_object(rf))
        return refuse(ps, "invalid_type", "response_format", "must be an object");
    const json_t *t = json_object_get(rf, "type");
    if (!t)
        return refuse(ps, "invalid_value", "response_format.type",
                      "missing (text, json_object or json_schema)");
    if (!json_is_string(t))
        return refuse(ps, "invalid_type", "response_format.type", "must be a string");
    const char *s = json_string_value(t);
    if (strcmp(s, "json_object") == 0 || strcmp(s, "json_schema") == 0)
        *json = true;
    else if (strcmp(s, "text") != 0)
        return refuse(ps, "invalid_value", "response_format.type",
                      "unknown type '%.*s%s' (expected text, json_object or json_schema)", QUOTE(s));
    return 0;
}

/* The worker params of an OpenAI body (chat or completions): the sampling
 * fields, max_tokens (max_completion_tokens wins, being OpenAI's newer
 * name), json_mode from response_format.  Returns 0 with *out (new ref). */
static int openai_params(struct parser *ps, const json_t *body, json_t **out)
{
    *out = NULL;
    json_t *p = json_object();
    if (!p)
        return nomem(ps);
    for (size_t i = 0; i < sizeof openai_sampling / sizeof *openai_sampling; i++) {
        json_t *v = json_object_get(body, openai_sampling[i]);
        if (v && !json_is_null(v) && json_object_set(p, openai_sampling[i], v) < 0)
            goto oom;
    }
    struct openai_names names = {"max_tokens"};
    json_t *mt = json_object_get(body, "max_tokens");
    json_t *mct = json_object_get(body, "max_completion_tokens");
    if (mct && !json_is_null(mct)) {
        mt = mct;
        names.max_tokens = "max_completion_tokens";
    }
    if (mt && !json_is_null(mt) && json_object_set(p, "max_tokens", mt) < 0)
        goto oom;
    bool json = false;
    int rc = response_format(ps, body, &json);
    if (rc == 0 && json && !put(p, "json_mode", json_true()))
        goto oom;
    if (rc == 0)
        rc = check_params(ps, p, openai_name, &names);
    if (rc < 0) {
        json_decref(p);
        return rc;
    }
    *out = p;
    return 0;
oom:
    json_decref(p);
    return nomem(ps);
}

/* What the two OpenAI generate endpoints share: the body an object, model,
 * stream, stream_options and n. */
static int openai_common(struct parser *ps, const json_t *body, struct lyra_request *out)
{
    int rc;
    if ((rc = body_object(ps, body)) < 0 ||
        (rc = opt_string(ps, body, "model", LYRA_REQUESTS_MAX_MODEL, &out->model)) < 0 ||
        (rc = opt_bool(ps, body, "stream", "stream", &out->stream)) < 0 || (rc = check_n(ps, body)) < 0)
        return rc;
    const json_t *so = get(body, "stream_options");
    if (so && !json_is_object(so))
        return refuse(ps, "invalid_type", "stream_options", "must be an object");
    if (so &&
        (rc = opt_bool(ps, so, "include_usage", "stream_options.include_usage", &out->include_usage)) < 0)
        return rc;
    return 0;
}

/* ---- chat messages ------------------------------------------------------- */

/* The worker's role for an OpenAI role, or NULL. */
static const char *worker_role(const char *role)
{
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return "system";
    if (strcmp(role, "user") == 0)
        return "user";
    if (strcmp(role, "assistant") == 0)
        return "assistant";
    return NULL;
}

/* The text of messages[i].content (a string, null, or an array of parts of
 * which only text parts are supported) as a new JSON string in *out. */
static int content_text(struct parser *ps, const json_t *content, size_t i, json_t **out)
{
    char param[96];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    *out = NULL;
    if (!content) { /* an assistant turn that only called tools has none */
        *out = json_string("");
        return *out ? 0 : nomem(ps);
    }
    if (json_is_string(content)) {
        if (has_nul(content))
            return refuse(ps, "invalid_value", param, "must not contain NUL characters");
        *out = json_incref((json_t *)content);
        return 0;
    }
    if (!json_is_array(content))
        return refuse(ps, "invalid_type", param, "must be a string or an array of content parts");
    size_t k, total = 0;
    const json_t *part;
    json_array_foreach(content, k, part)
    {
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, k);
        if (!json_is_object(part))
            return refuse(ps, "invalid_type", param, "must be an object");
        snprintf(param, sizeof param, "messages[%zu].content[%zu].type", i, k);
        const json_t *type = json_object_get(part, "type");
        if (!json_is_string(type))
            return refuse(ps, "invalid_type", param, "must be a string");
        const char *t = json_string_value(type);
        if (strcmp(t, "text") != 0)
            return refuse(ps, "unsupported_value", param, "'%.*s%s' parts are not supported (only text)",
                          QUOTE(t));
        snprintf(param, sizeof param, "messages[%zu].content[%zu].text", i, k);
        const json_t *text = json_object_get(part, "text");
        if (!json_is_string(text))
            return refuse(ps, "invalid_type", param, "must be a string");
        if (has_nul(text))
            return refuse(ps, "invalid_value", param, "must not contain NUL characters");
        total += json_string_length(text);
    }
    /* Text parts are joined as they are, like one string. */
    char *joined = malloc(total + 1);
    if (!joined)
        return nomem(ps);
    size_t len = 0;
    json_array_foreach(content, k, part)
    {
        const json_t *text = json_object_get(part, "text");
        memcpy(joined + len, json_string_value(text), json_string_length(text));
        len += json_string_length(text);
    }
    *out = json_stringn(joined, len);
    free(joined);
    return *out ? 0 : nomem(ps);
}

/* messages → the worker's [{"role","content"}] in *out (new ref). */
static int chat_messages(struct parser *ps, const json_t *messages, json_t **out)
{
    *out = NULL;
    if (!messages)
        return refuse(ps, "invalid_value", "messages", "missing (a non-empty array of messages)");
    if (!json_is_array(messages))
        return refuse(ps, "invalid_type", "messages", "must be an array");
    if (json_array_size(messages) == 0)
        return refuse(ps, "invalid_value", "messages", "must not be empty");
    json_t *msgs = json_array();
    if (!msgs)
        return nomem(ps);
    size_t i;
    const json_t *m;
    int rc = 0;
    json_array_foreach(messages, i, m)
    {
        char param[96];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) {
            rc = refuse(ps, "invalid_type", param, "must be an object");
            break;
        }
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const json_t *role = json_object_get(m, "role");
        if (!role || json_is_null(role)) {
            rc = refuse(ps, "invalid_value", param, "missing (system, developer, user or assistant)");
            break;
        }
        if (!json_is_string(role)) {
            rc = refuse(ps, "invalid_type", param, "must be a string");
            break;
        }
        const char *r = json_string_value(role);
        const char *wr = worker_role(r);
        if (!wr && strcmp(r, "tool") == 0) {
            rc = refuse(ps, "unsupported_value", param,
                        "tool messages are not supported (Lyra does not implement tool calling)");
            break;
        }
        if (!wr) {
            rc = refuse(ps, "invalid_value", param,
                        "unknown role '%.*s%s' (expected system, developer, user or assistant)", QUOTE(r));
            break;
        }
        json_t *text;
        if ((rc = content_text(ps, get(m, "content"), i, &text)) < 0)
            break;
        json_t *wm = json_pack("{s:s, s:o}", "role", wr, "content", text);
        if (!wm || json_array_append_new(msgs, wm) < 0) {
            rc = nomem(ps);
            break;
        }
    }
    if (rc < 0) {
        json_decref(msgs);
        return rc;
    }
    *out = msgs;
    return 0;
}

/* ---- OpenAI endpoints ---------------------------------------------------- */

/* An integer field from 0 to max (absent or null: *out = -1).  Above the
 * maximum is invalid_value naming the field; `why_max` says where the limit
 * comes from. */
static int opt_count(struct parser *ps, const json_t *body, const char *key, int max, const char *why_max, int *out)
{
    const json_t *v = get(body, key);
    *out = -1;
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return refuse(ps, "invalid_type", key, "must be an integer");
    json_int_t n = json_integer_value(v);
    if (n < 0 || n > max)
        return refuse(ps, "invalid_value", key, "must be from 0 to %d%s, got %" JSON_INTEGER_FORMAT, max, why_max, n);
    *out = (int)n;
    return 0;
}

/* Refuses a present field whose value asks for a feature Lyra lacks. */
static int unsupported_if(struct parser *ps, bool cond, const char *param, const char *why)
{
    return cond ? refuse(ps, "unsupported_value", param, "%s", why) : 0;
}

int lyra_requests_openai_chat(const json_t *body, struct lyra_request *out, struct lyra_request_error *err)
{
    struct parser ps = {.err = err};
    *out = (struct lyra_request){0};
    json_t *msgs = NULL, *params = NULL;
    out->logprobs = -1;
    int rc = openai_common(&ps, body, out);
    if (rc == 0) {
        const json_t *tools = get(body, "tools");
        bool logprobs;
        int top;
        if (tools && !json_is_array(tools))
            rc = refuse(&ps, "invalid_type", "tools", "must be an array");
        else if ((rc = opt_bool(&ps, body, "logprobs", "logprobs", &logprobs)) == 0 &&
                 (rc = opt_count(&ps, body, "top_logprobs", LYRA_REQUESTS_MAX_TOP_LOGPROBS, "", &top)) == 0 &&
                 (rc = unsupported_if(&ps, tools && json_array_size(tools) > 0, "tools",
                                      "tool calling is not supported")) == 0) {
            if (top > 0 && !logprobs)
                rc = refuse(&ps, "invalid_value", "top_logprobs", "needs logprobs: true");
            out->logprobs = logprobs ? (top > 0 ? top : 0) : -1;
        }
    }
    if (rc == 0)
        rc = chat_messages(&ps, get(body, "messages"), &msgs);
    if (rc == 0)
        rc = openai_params(&ps, body, &params);
    if (rc == 0) {
        out->msg = json_pack("{s:s, s:o, s:o}", "type", "generate", "messages", msgs, "params", params);
        msgs = params = NULL; /* taken by json_pack, even when it fails */
        if (!out->msg || (out->logprobs >= 0 && !put(out->msg, "logprobs", json_integer(out->logprobs))))
            rc = nomem(&ps);
    }
    json_decref(msgs);
    json_decref(params);
    if (rc < 0)
        lyra_requests_clear(out);
    return rc;
}

/* prompt: a string, or an array holding one string. */
static int completion_prompt(struct parser *ps, const json_t *body, const json_t **out)
{
    const json_t *prompt = get(body, "prompt");
    *out = NULL;
    if (!prompt)
        return refuse(ps, "invalid_value", "prompt", "missing (a string)");
    if (json_is_array(prompt)) {
        size_t n = json_array_size(prompt);
        const json_t *first = json_array_get(prompt, 0);
        if (n > 0 && json_is_integer(first))
            return refuse(ps, "unsupported_value", "prompt",
                          "token id prompts are not supported (send text)");
        if (n != 1)
            return refuse(ps, "unsupported_value", "prompt", "exactly one prompt per request (got %zu)", n);
        if (!json_is_string(first))
            return refuse(ps, "invalid_type", "prompt[0]", "must be a string");
        prompt = first;
    } else if (!json_is_string(prompt)) {
        return refuse(ps, "invalid_type", "prompt", "must be a string");
    }
    *out = prompt;
    return 0;
}

int lyra_requests_openai_completions(const json_t *body, struct lyra_request *out,
                                     struct lyra_request_error *err)
{
    struct parser ps = {.err = err};
    *out = (struct lyra_request){0};
    const json_t *prompt = NULL;
    json_t *params = NULL, *scored = NULL;
    bool score_only = false;
    out->logprobs = -1;
    int rc = openai_common(&ps, body, out);
    if (rc == 0) {
        const json_t *suffix = get(body, "suffix"), *best_of = get(body, "best_of");
        if ((rc = opt_bool(&ps, body, "echo", "echo", &out->echo)) == 0) {
            if (suffix && !json_is_string(suffix))
                rc = refuse(&ps, "invalid_type", "suffix", "must be a string");
            else if (best_of && !json_is_integer(best_of))
                rc = refuse(&ps, "invalid_type", "best_of", "must be an integer");
            else if ((rc = opt_count(&ps, body, "logprobs", LYRA_REQUESTS_MAX_TOP_LOGPROBS,
                                     " (OpenAI allows 5; Lyra, like llama-server, up to 20)", &out->logprobs)) == 0 &&
                     (rc = unsupported_if(&ps, suffix && json_string_length(suffix) > 0, "suffix",
                                          "suffix (fill-in-the-middle) is not supported")) == 0)
                rc = unsupported_if(&ps, best_of && json_integer_value(best_of) != 1, "best_of",
                                    "only best_of = 1 is supported");
        }
    }
    if (rc == 0)
        rc = completion_prompt(&ps, body, &prompt);
    if (rc == 0 && out->echo) {
        /* max_tokens 0 with echo: score the prompt, generate nothing */
        const json_t *mt = get(body, "max_completion_tokens");
        const char *key = mt ? "max_completion_tokens" : "max_tokens";
        mt = mt ? mt : get(body, "max_tokens");
        if (json_is_integer(mt) && json_integer_value(mt) == 0) {
            score_only = true;
            if (!(scored = json_copy((json_t *)body)) || json_object_del(scored, key) < 0)
                rc = nomem(&ps);
        }
    }
    if (rc == 0)
        rc = openai_params(&ps, scored ? scored : body, &params);
    if (rc == 0) {
        out->msg = json_pack("{s:s, s:O, s:o}", "type", "generate", "prompt", prompt, "params", params);
        params = NULL;
        if (!out->msg || (out->logprobs >= 0 && !put(out->msg, "logprobs", json_integer(out->logprobs))) ||
            (out->logprobs >= 0 && out->echo && !put(out->msg, "prompt_logprobs", json_true())) ||
            (score_only && !put(out->msg, "score_only", json_true())))
            rc = nomem(&ps);
        else
            out->prompt = json_string_value(prompt);
    }
    json_decref(scored);
    json_decref(params);
    if (rc < 0)
        lyra_requests_clear(out);
    return rc;
}

/* The body of /v1/embeddings into *inputs (new ref), out->model set. */
static int embeddings(struct parser *ps, const json_t *body, struct lyra_request *out, json_t **inputs)
{
    int rc;
    if ((rc = body_object(ps, body)) < 0 ||
        (rc = opt_string(ps, body, "model", LYRA_REQUESTS_MAX_MODEL, &out->model)) < 0)
        return rc;
    /* We answer floats; "base64" is what OpenAI's own clients ask for by
     * default, and they read floats too. */
    const json_t *ef = get(body, "encoding_format");
    if (ef && !json_is_string(ef))
        return refuse(ps, "invalid_type", "encoding_format", "must be a string");
    if (ef && strcmp(json_string_value(ef), "float") != 0 && strcmp(json_string_value(ef), "base64") != 0)
        return refuse(ps, "invalid_value", "encoding_format", "unknown format '%.*s%s' (expected float)",
                      QUOTE(json_string_value(ef)));
    const json_t *input = get(body, "input");
    if (!input)
        return refuse(ps, "invalid_value", "input", "missing (a string or an array of strings)");
    if (!json_is_string(input) && !json_is_array(input))
        return refuse(ps, "invalid_type", "input", "must be a string or an array of strings");
    if (json_is_array(input) && json_array_size(input) == 0)
        return refuse(ps, "invalid_value", "input", "must not be empty");
    size_t i;
    const json_t *v;
    json_array_foreach(input, i, v)
    {
        char param[48];
        snprintf(param, sizeof param, "input[%zu]", i);
        if (json_is_integer(v) || json_is_array(v))
            return refuse(ps, "unsupported_value", param, "token id inputs are not supported (send text)");
        if (!json_is_string(v))
            return refuse(ps, "invalid_type", param, "must be a string");
    }
    *inputs = json_is_string(input) ? json_pack("[O]", input) : json_copy((json_t *)input);
    return *inputs ? 0 : nomem(ps);
}

int lyra_requests_openai_embeddings(const json_t *body, struct lyra_request *out,
                                    struct lyra_request_error *err)
{
    struct parser ps = {.err = err};
    *out = (struct lyra_request){0};
    json_t *inputs = NULL;
    int rc = embeddings(&ps, body, out, &inputs);
    if (rc == 0 && !(out->msg = json_pack("{s:s, s:o}", "type", "embed", "inputs", inputs)))
        rc = nomem(&ps);
    if (rc < 0)
        lyra_requests_clear(out);
    return rc;
}

/* ---- POST /chat ------------------------------------------------------------ */

/* The options a /chat turn may set: the worker's sampling parameters under
 * their own names (add_special is the daemon's business). */
static const char *const chat_options[] = {
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
    "stop",
    "grammar",
    "json_mode",
};
#define N_CHAT_OPTIONS (sizeof chat_options / sizeof *chat_options)

static const char *chat_option_name(const char *field, void *ud)
{
    char *buf = ud; /* 64 bytes */
    snprintf(buf, 64, "options.%s", field);
    return buf;
}

static int options_params(struct parser *ps, const json_t *options, json_t **out)
{
    *out = NULL;
    if (options && !json_is_object(options))
        return refuse(ps, "invalid_field", "options", "must be an object");
    json_t *p = json_object();
    if (!p)
        return nomem(ps);
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach((json_t *)options, key, v)
    {
        size_t i = 0;
        while (i < N_CHAT_OPTIONS && strcmp(chat_options[i], key) != 0)
            i++;
        if (i == N_CHAT_OPTIONS) {
            char param[96];
            lyra_fmt(param, sizeof param, "options.%.*s%s", QUOTE(key));
            rc = refuse(ps, "invalid_field", param,
                        "not an option (known: max_tokens, temperature, top_p, top_k, min_p, seed, stop, "
                        "repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty, ignore_eos, "
                        "grammar, json_mode)");
            break;
        }
        if (!json_is_null(v) && json_object_set(p, key, v) < 0) {
            rc = nomem(ps);
            break;
        }
    }
    char name[64];
    if (rc == 0)
        rc = check_params(ps, p, chat_option_name, name);
    if (rc < 0) {
        json_decref(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* Conversation ids are UUIDs; anything else of bounded length made of
 * letters, digits, '-' and '_' is looked up (and not found). */
static int conversation_id(struct parser *ps, const json_t *body, const char **out)
{
    int rc = opt_string(ps, body, "conversation_id", LYRA_REQUESTS_MAX_CONV_ID, out);
    if (rc < 0 || !*out)
        return rc;
    for (const char *c = *out; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '-' ||
              *c == '_')) {
            *out = NULL;
            return refuse(ps, "invalid_value", "conversation_id", "not a conversation id (a UUID)");
        }
    return 0;
}

int lyra_requests_chat(const json_t *body, struct lyra_request *out, struct lyra_request_error *err)
{
    struct parser ps = {.lyra = true, .err = err};
    *out = (struct lyra_request){0};
    int rc;
    if ((rc = body_object(&ps, body)) < 0)
        return rc;
    const json_t *message = get(body, "message");
    if (!message)
        return refuse(&ps, "", "message", "missing (the user's message, a non-empty string)");
    if (!json_is_string(message))
        return refuse(&ps, "", "message", "must be a string");
    if (json_string_length(message) == 0)
        return refuse(&ps, "", "message", "must not be empty");
    if (has_nul(message))
        return refuse(&ps, "", "message", "must not contain NUL characters");
    if ((rc = conversation_id(&ps, body, &out->conversation_id)) < 0 ||
        (rc = opt_string(&ps, body, "model", LYRA_REQUESTS_MAX_MODEL, &out->model)) < 0 ||
        (rc = opt_bool(&ps, body, "stream", "stream", &out->stream)) < 0 ||
        (rc = options_params(&ps, get(body, "options"), &out->params)) < 0) {
        lyra_requests_clear(out);
        return rc;
    }
    out->message = json_string_value(message);
    return 0;
}

void lyra_requests_clear(struct lyra_request *r)
{
    if (!r)
        return;
    json_decref(r->msg);
    json_decref(r->params);
    *r = (struct lyra_request){0};
}
