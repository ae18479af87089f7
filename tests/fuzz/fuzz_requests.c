/* fuzz_requests.c — the request parsers of the inference endpoints
 * (api/requests.h) from raw bytes: the input is parsed with json_loadb as a
 * request body and given to every parser (OpenAI chat completions,
 * completions, embeddings, and /chat).
 *
 * The JSON flags are a superset of the HTTP layer's (lyra_http_read_json:
 * JSON_REJECT_DUPLICATES, objects and arrays only): any value and "\u0000"
 * in strings are accepted too, since the parsers take any json_t.
 *
 * Beyond "no crash, no leak":
 *   - a refusal is a 400 (or a 500 for out of memory) with a code, and a
 *     message that is valid UTF-8, starts with the param it names, and that
 *     jansson accepts (an error body that cannot be built was issue 6's
 *     worker crash);
 *   - an accepted body gives a worker message that serialises, fits a
 *     frame, and that the worker accepts: its params pass the worker's own
 *     parser (lyra_sampling_params_parse), its messages are what the chat
 *     template takes (non-empty, roles system|user|assistant, string
 *     content without NUL), its prompt a string, its inputs strings. */
#include <jansson.h>
#include <string.h>

#include "api/requests.h"
#include "core/sampling_params.h"
#include "core/util.h"
#include "fuzz.h"
#include "proto/frame.h"

static void check_error(int rc, const struct lyra_request_error *e, const struct lyra_request *r)
{
    CHECKF(rc == LYRA_EINVAL || rc == LYRA_ENOMEM, "rc %d", rc);
    CHECK(e->err.code == rc);
    CHECK(e->status == (rc == LYRA_ENOMEM ? 500 : 400));
    CHECK(e->code && e->code[0]);
    CHECK(e->err.msg[0]);
    CHECK(lyra_utf8_valid(e->param, strlen(e->param)));
    CHECK(lyra_utf8_valid(e->err.msg, strlen(e->err.msg)));
    CHECK(strncmp(e->err.msg, e->param, strlen(e->param)) == 0);
    json_t *body = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", e->err.msg, "param", e->param, "code",
                             e->code);
    CHECK(body);
    json_decref(body);
    CHECK(!r->msg && !r->params && !r->model && !r->message && !r->conversation_id);
}

static void check_params(const json_t *params)
{
    CHECK(json_is_object(params));
    struct lyra_sampling_params p;
    struct lyra_err err = {0};
    int rc = lyra_sampling_params_parse(params, &p, &err);
    CHECKF(rc == 0, "the worker refuses params the daemon accepted: %s", err.msg);
    lyra_sampling_params_clear(&p);
}

static bool string_without_nul(const json_t *s)
{
    return json_is_string(s) && strlen(json_string_value(s)) == json_string_length(s);
}

/* The worker's contract for `messages` (worker/template.c). */
static void check_messages(const json_t *messages)
{
    CHECK(json_is_array(messages) && json_array_size(messages) > 0);
    size_t i;
    const json_t *m;
    json_array_foreach(messages, i, m) {
        CHECK(json_is_object(m) && json_object_size(m) == 2);
        const char *role = json_string_value(json_object_get(m, "role"));
        CHECK(role && (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant")));
        CHECK(string_without_nul(json_object_get(m, "content")));
    }
}

/* The message goes out as a frame: it must serialise and fit one. */
static void check_frame(const json_t *msg)
{
    struct lyra_frame_writer *w = lyra_frame_writer_new();
    CHECK(w);
    struct lyra_err err = {0};
    CHECKF(lyra_frame_writer_add(w, msg, &err) == 0, "%s", err.msg);
    lyra_frame_writer_free(w);
}

static void check_openai(const struct lyra_request *r, bool embed)
{
    CHECK(json_is_object(r->msg) && !r->params && !r->message && !r->conversation_id);
    const char *type = json_string_value(json_object_get(r->msg, "type"));
    if (embed) {
        CHECK(type && strcmp(type, "embed") == 0);
        const json_t *inputs = json_object_get(r->msg, "inputs");
        CHECK(json_is_array(inputs) && json_array_size(inputs) > 0);
        size_t i;
        const json_t *v;
        json_array_foreach(inputs, i, v) CHECK(json_is_string(v));
    } else {
        CHECK(type && strcmp(type, "generate") == 0);
        const json_t *prompt = json_object_get(r->msg, "prompt"), *messages = json_object_get(r->msg, "messages");
        CHECK(!prompt != !messages);
        if (prompt)
            CHECK(json_is_string(prompt));
        else
            check_messages(messages);
        check_params(json_object_get(r->msg, "params"));
    }
    if (r->model)
        CHECK(r->model[0] && strlen(r->model) <= LYRA_REQUESTS_MAX_MODEL);
    check_frame(r->msg);
}

static void check_chat(const struct lyra_request *r)
{
    CHECK(!r->msg && r->message && r->message[0]);
    check_params(r->params);
    if (r->conversation_id) {
        size_t n = strlen(r->conversation_id);
        CHECK(n > 0 && n <= LYRA_REQUESTS_MAX_CONV_ID);
        CHECK(strspn(r->conversation_id, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_") == n);
    }
    if (r->model)
        CHECK(r->model[0] && strlen(r->model) <= LYRA_REQUESTS_MAX_MODEL);
    json_t *msg = json_pack("{s:s, s:[{s:s, s:s}], s:O}", "type", "generate", "messages", "role", "user",
                            "content", r->message, "params", r->params);
    CHECK(msg);
    check_frame(msg);
    json_decref(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *body =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!body)
        return 0;
    static const struct {
        int (*parse)(const json_t *, struct lyra_request *, struct lyra_request_error *);
        char kind; /* g generate, e embed, c /chat */
    } parsers[] = {
        {lyra_requests_openai_chat, 'g'},
        {lyra_requests_openai_completions, 'g'},
        {lyra_requests_openai_embeddings, 'e'},
        {lyra_requests_chat, 'c'},
    };
    for (size_t i = 0; i < sizeof parsers / sizeof *parsers; i++) {
        struct lyra_request r;
        struct lyra_request_error e;
        memset(&e, 0x55, sizeof e); /* nothing may be read that was not written */
        int rc = parsers[i].parse(body, &r, &e);
        if (rc < 0)
            check_error(rc, &e, &r);
        else if (parsers[i].kind == 'c')
            check_chat(&r);
        else
            check_openai(&r, parsers[i].kind == 'e');
        lyra_requests_clear(&r);
    }
    json_decref(body);
    return 0;
}
