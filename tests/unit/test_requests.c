/* test_requests.c — the request parsers of the inference endpoints
 * (api/requests.h) and the sampling rules they share with the worker
 * (core/sampling_params.h): every enumerated field refused with 400 naming
 * it, error text that stays valid UTF-8 whatever the client sent, and the
 * worker messages built from valid bodies. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/requests.h"
#include "core/sampling_params.h"
#include "core/util.h"

typedef int (*parse_fn)(const json_t *, struct lyra_request *, struct lyra_request_error *);

#define CHAT lyra_requests_openai_chat
#define COMPL lyra_requests_openai_completions
#define EMB lyra_requests_openai_embeddings
#define LYRA lyra_requests_chat

/* A user message, for bodies that are about something else. */
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j)
        fail_msg("test body does not parse: %s: %s", text, jerr.text);
    return j;
}

/* Everything every refusal must satisfy: a 4xx/5xx status, a code, a
 * message that is valid UTF-8, starts with the param and that jansson
 * accepts (the crash of issue 6 was jansson refusing a cut message). */
static void check_error(const struct lyra_request_error *e)
{
    assert_true(e->status == 400 || e->status == 500);
    assert_non_null(e->code);
    assert_true(lyra_utf8_valid(e->param, strlen(e->param)));
    assert_true(lyra_utf8_valid(e->err.msg, strlen(e->err.msg)));
    assert_true(strncmp(e->err.msg, e->param, strlen(e->param)) == 0);
    json_t *s = json_pack("{s:s, s:s}", "message", e->err.msg, "param", e->param);
    assert_non_null(s);
    json_decref(s);
}

/* Parses text with fn and expects a 400 naming param with code. */
static void refused(parse_fn fn, const char *text, const char *param, const char *code)
{
    json_t *body = load(text);
    struct lyra_request r;
    struct lyra_request_error e;
    int rc = fn(body, &r, &e);
    if (rc != LYRA_EINVAL)
        fail_msg("accepted: %s", text);
    check_error(&e);
    assert_null(r.msg);
    assert_null(r.params);
    if (strcmp(e.param, param) != 0 || strcmp(e.code, code) != 0)
        fail_msg("%s: got param '%s' code '%s' (%s), want '%s' '%s'", text, e.param, e.code, e.err.msg, param,
                 code);
    assert_int_equal(e.status, 400);
    json_decref(body);
}

/* Parses text with fn and expects success; *body keeps r's strings alive. */
static void accepted(parse_fn fn, const char *text, json_t **body, struct lyra_request *r)
{
    *body = load(text);
    struct lyra_request_error e;
    if (fn(*body, r, &e) != 0)
        fail_msg("refused: %s: %s", text, e.err.msg);
}

/* A worker message the daemon accepts must pass the worker's own parser. */
static void worker_accepts(const json_t *params)
{
    struct lyra_sampling_params p;
    struct lyra_err err;
    if (lyra_sampling_params_parse(params, &p, &err) != 0)
        fail_msg("the worker refuses what the daemon accepted: %s", err.msg);
    lyra_sampling_params_clear(&p);
}

/* The reproduction of issue 6: a 31-byte role and an "é" that "%.32s" cut
 * in half, which made the worker exit.  Refused in the daemon, with a message
 * that is valid UTF-8 and still quotes the role. */
static void test_role_reproduction(void **state)
{
    const char *text =
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\","
        "\"content\":\"hi\"}]}";
    refused(CHAT, text, "messages[0].role", "invalid_value");
    json_t *body = load(text);
    struct lyra_request r;
    struct lyra_request_error e;
    assert_int_equal(CHAT(body, &r, &e), LYRA_EINVAL);
    assert_non_null(strstr(e.err.msg, "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'"));
    json_decref(body);
}

static void test_openai_chat_refusals(void **state)
{
    refused(CHAT, "[1]", "", "invalid_request");
    refused(CHAT, "{}", "messages", "invalid_value");
    refused(CHAT, "{\"messages\":{}}", "messages", "invalid_type");
    refused(CHAT, "{\"messages\":[]}", "messages", "invalid_value");
    refused(CHAT, "{\"messages\":[7]}", "messages[0]", "invalid_type");
    refused(CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role", "invalid_value");
    refused(CHAT, "{\"messages\":[{\"role\":5,\"content\":\"x\"}]}", "messages[0].role", "invalid_type");
    refused(CHAT,
            "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
            "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"bot\",\"content\":\"b\"}]}",
            "messages[3].role", "invalid_value");
    refused(CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}]}",
            "messages[0].role", "unsupported_value");
    refused(CHAT, "{\"messages\":[{\"role\":\"User\",\"content\":\"x\"}]}", "messages[0].role",
            "invalid_value");
    refused(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content",
            "invalid_type");
    refused(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}", "messages[0].content[0]",
            "invalid_type");
    refused(CHAT,
            "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
            "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x\"}}]}]}",
            "messages[0].content[1].type", "unsupported_value");
    refused(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}",
            "messages[0].content[0].type", "invalid_type");
    refused(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
            "messages[0].content[0].text", "invalid_type");
    refused(CHAT, "{" MSGS ",\"model\":5}", "model", "invalid_type");
    refused(CHAT, "{" MSGS ",\"model\":\"\"}", "model", "invalid_value");
    refused(CHAT, "{" MSGS ",\"stream\":\"yes\"}", "stream", "invalid_type");
    refused(CHAT, "{" MSGS ",\"stream_options\":true}", "stream_options", "invalid_type");
    refused(CHAT, "{" MSGS ",\"stream_options\":{\"include_usage\":1}}", "stream_options.include_usage",
            "invalid_type");
    refused(CHAT, "{" MSGS ",\"n\":2}", "n", "unsupported_value");
    refused(CHAT, "{" MSGS ",\"n\":\"1\"}", "n", "invalid_type");
    refused(CHAT, "{" MSGS ",\"n\":1.5}", "n", "invalid_type");
    refused(CHAT, "{" MSGS ",\"response_format\":\"json\"}", "response_format", "invalid_type");
    refused(CHAT, "{" MSGS ",\"response_format\":{}}", "response_format.type", "invalid_value");
    refused(CHAT, "{" MSGS ",\"response_format\":{\"type\":\"xml\"}}", "response_format.type",
            "invalid_value");
    refused(CHAT, "{" MSGS ",\"response_format\":{\"type\":3}}", "response_format.type", "invalid_type");
    refused(CHAT,
            "{" MSGS ",\"response_format\":{\"type\":\"json_object\"},\"grammar\":\"root ::= \\\"a\\\"\"}",
            "response_format", "invalid_value");
    refused(CHAT, "{" MSGS ",\"stop\":5}", "stop", "invalid_value");
    refused(CHAT, "{" MSGS ",\"stop\":[\"a\",2]}", "stop", "invalid_value");
    refused(CHAT, "{" MSGS ",\"stop\":[\"\"]}", "stop", "invalid_value");
    refused(CHAT,
            "{" MSGS ",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
            "\"13\",\"14\",\"15\",\"16\",\"17\"]}",
            "stop", "invalid_value");
    refused(CHAT, "{" MSGS ",\"temperature\":\"hot\"}", "temperature", "invalid_value");
    refused(CHAT, "{" MSGS ",\"temperature\":-1}", "temperature", "invalid_value");
    refused(CHAT, "{" MSGS ",\"temperature\":1e300}", "temperature", "invalid_value");
    refused(CHAT, "{" MSGS ",\"top_p\":1.5}", "top_p", "invalid_value");
    refused(CHAT, "{" MSGS ",\"min_p\":-0.1}", "min_p", "invalid_value");
    refused(CHAT, "{" MSGS ",\"top_k\":-1}", "top_k", "invalid_value");
    refused(CHAT, "{" MSGS ",\"top_k\":2.5}", "top_k", "invalid_value");
    refused(CHAT, "{" MSGS ",\"seed\":-2}", "seed", "invalid_value");
    refused(CHAT, "{" MSGS ",\"seed\":4294967296}", "seed", "invalid_value");
    refused(CHAT, "{" MSGS ",\"repeat_penalty\":0}", "repeat_penalty", "invalid_value");
    refused(CHAT, "{" MSGS ",\"repeat_last_n\":-2}", "repeat_last_n", "invalid_value");
    refused(CHAT, "{" MSGS ",\"presence_penalty\":[]}", "presence_penalty", "invalid_value");
    refused(CHAT, "{" MSGS ",\"ignore_eos\":1}", "ignore_eos", "invalid_value");
    refused(CHAT, "{" MSGS ",\"grammar\":7}", "grammar", "invalid_value");
    refused(CHAT, "{" MSGS ",\"max_tokens\":-5}", "max_tokens", "invalid_value");
    refused(CHAT, "{" MSGS ",\"max_tokens\":0}", "max_tokens", "invalid_value");
    refused(CHAT, "{" MSGS ",\"max_tokens\":1.5}", "max_tokens", "invalid_value");
    refused(CHAT, "{" MSGS ",\"max_tokens\":\"10\"}", "max_tokens", "invalid_value");
    refused(CHAT, "{" MSGS ",\"max_tokens\":5,\"max_completion_tokens\":-3}", "max_completion_tokens",
            "invalid_value");
    refused(CHAT, "{" MSGS ",\"tools\":[{\"type\":\"function\"}]}", "tools", "unsupported_value");
    refused(CHAT, "{" MSGS ",\"tools\":{}}", "tools", "invalid_type");
    refused(CHAT, "{" MSGS ",\"logprobs\":1}", "logprobs", "invalid_type");
    refused(CHAT, "{" MSGS ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "invalid_value");
    refused(CHAT, "{" MSGS ",\"logprobs\":true,\"top_logprobs\":-1}", "top_logprobs", "invalid_value");
    refused(CHAT, "{" MSGS ",\"logprobs\":true,\"top_logprobs\":\"3\"}", "top_logprobs", "invalid_type");
    refused(CHAT, "{" MSGS ",\"top_logprobs\":3}", "top_logprobs", "invalid_value");
}

/* logprobs become the worker message's "logprobs" (top entries),
 * echo with logprobs "prompt_logprobs", echo with max_tokens 0 "score_only". */
static void test_openai_logprobs(void **state)
{
    json_t *body;
    struct lyra_request r;
    accepted(CHAT, "{" MSGS ",\"logprobs\":true,\"top_logprobs\":20}", &body, &r);
    assert_int_equal(json_integer_value(json_object_get(r.msg, "logprobs")), 20);
    lyra_requests_clear(&r);
    json_decref(body);
    accepted(CHAT, "{" MSGS ",\"logprobs\":true}", &body, &r);
    assert_int_equal(json_integer_value(json_object_get(r.msg, "logprobs")), 0);
    lyra_requests_clear(&r);
    json_decref(body);
    accepted(CHAT, "{" MSGS ",\"logprobs\":false,\"top_logprobs\":0}", &body, &r);
    assert_null(json_object_get(r.msg, "logprobs"));
    assert_int_equal(r.logprobs, -1);
    lyra_requests_clear(&r);
    json_decref(body);
    accepted(COMPL, "{\"prompt\":\"a b\",\"logprobs\":3,\"echo\":true,\"max_tokens\":0}", &body, &r);
    assert_int_equal(json_integer_value(json_object_get(r.msg, "logprobs")), 3);
    assert_true(json_is_true(json_object_get(r.msg, "prompt_logprobs")));
    assert_true(json_is_true(json_object_get(r.msg, "score_only")));
    assert_null(json_object_get(json_object_get(r.msg, "params"), "max_tokens"));
    worker_accepts(json_object_get(r.msg, "params"));
    assert_true(r.echo);
    assert_string_equal(r.prompt, "a b");
    lyra_requests_clear(&r);
    json_decref(body);
    accepted(COMPL, "{\"prompt\":\"a\",\"echo\":true,\"max_tokens\":4}", &body, &r);
    assert_null(json_object_get(r.msg, "logprobs"));
    assert_null(json_object_get(r.msg, "prompt_logprobs"));
    assert_null(json_object_get(r.msg, "score_only"));
    lyra_requests_clear(&r);
    json_decref(body);
}

static void test_openai_completions_refusals(void **state)
{
    refused(COMPL, "\"text\"", "", "invalid_request");
    refused(COMPL, "{}", "prompt", "invalid_value");
    refused(COMPL, "{\"prompt\":5}", "prompt", "invalid_type");
    refused(COMPL, "{\"prompt\":[1,2,3]}", "prompt", "unsupported_value");
    refused(COMPL, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "unsupported_value");
    refused(COMPL, "{\"prompt\":[]}", "prompt", "unsupported_value");
    refused(COMPL, "{\"prompt\":[{}]}", "prompt[0]", "invalid_type");
    refused(COMPL, "{\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens", "invalid_value");
    refused(COMPL, "{\"prompt\":\"a\",\"echo\":\"no\"}", "echo", "invalid_type");
    refused(COMPL, "{\"prompt\":\"a\",\"suffix\":\"end\"}", "suffix", "unsupported_value");
    refused(COMPL, "{\"prompt\":\"a\",\"best_of\":3}", "best_of", "unsupported_value");
    refused(COMPL, "{\"prompt\":\"a\",\"logprobs\":21}", "logprobs", "invalid_value");
    refused(COMPL, "{\"prompt\":\"a\",\"logprobs\":true}", "logprobs", "invalid_type");
    refused(COMPL, "{\"prompt\":\"a\",\"n\":3}", "n", "unsupported_value");
    refused(COMPL, "{\"prompt\":\"a\",\"top_p\":-1}", "top_p", "invalid_value");
    refused(COMPL, "{\"prompt\":\"a\",\"max_completion_tokens\":0}", "max_completion_tokens",
            "invalid_value");
    refused(COMPL, "{\"prompt\":\"a\",\"response_format\":{\"type\":\"yaml\"}}", "response_format.type",
            "invalid_value");
}

static void test_openai_embeddings_refusals(void **state)
{
    refused(EMB, "null", "", "invalid_request");
    refused(EMB, "{}", "input", "invalid_value");
    refused(EMB, "{\"input\":[]}", "input", "invalid_value");
    refused(EMB, "{\"input\":3}", "input", "invalid_type");
    refused(EMB, "{\"input\":[\"a\",{}]}", "input[1]", "invalid_type");
    refused(EMB, "{\"input\":[1,2]}", "input[0]", "unsupported_value");
    refused(EMB, "{\"input\":\"a\",\"encoding_format\":\"hex\"}", "encoding_format", "invalid_value");
    refused(EMB, "{\"input\":\"a\",\"model\":[]}", "model", "invalid_type");
}

static void test_chat_refusals(void **state)
{
    refused(LYRA, "[\"message\"]", "", "invalid_field");
    refused(LYRA, "{}", "message", "invalid_field");
    refused(LYRA, "{\"message\":42}", "message", "invalid_field");
    refused(LYRA, "{\"message\":\"\"}", "message", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"stream\":\"yes\"}", "stream", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"model\":[]}", "model", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"conversation_id\":7}", "conversation_id", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"conversation_id\":\"../../etc\"}", "conversation_id",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":\"fast\"}", "options", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"temprature\":1}}", "options.temprature",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"add_special\":false}}", "options.add_special",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"temperature\":\"hot\"}}", "options.temperature",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"temperature\":-1}}", "options.temperature",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"max_tokens\":1.5}}", "options.max_tokens",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"max_tokens\":0}}", "options.max_tokens",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"max_tokens\":-7}}", "options.max_tokens",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"ignore_eos\":1}}", "options.ignore_eos",
            "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"stop\":[\"a\",2]}}", "options.stop", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"top_p\":7}}", "options.top_p", "invalid_field");
    refused(LYRA, "{\"message\":\"hi\",\"options\":{\"json_mode\":true,\"grammar\":\"root ::= \\\"a\\\"\"}}",
            "options.json_mode", "invalid_field");
}

/* Every error that quotes client text, with text of every length around
 * the cut and a two-, three- and four-byte character at each position. */
static void test_error_text_is_valid_utf8(void **state)
{
    static const struct {
        parse_fn fn;
        const char *fmt; /* %s = the client text */
        const char *param;
    } paths[] = {
        {CHAT, "{\"messages\":[{\"role\":\"%s\",\"content\":\"x\"}]}", "messages[0].role"},
        {CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"%s\"}]}]}",
         "messages[0].content[0].type"},
        {CHAT, "{" MSGS ",\"response_format\":{\"type\":\"%s\"}}", "response_format.type"},
        {COMPL, "{\"prompt\":\"p\",\"response_format\":{\"type\":\"%s\"}}", "response_format.type"},
        {EMB, "{\"input\":\"x\",\"encoding_format\":\"%s\"}", "encoding_format"},
        {LYRA, "{\"message\":\"hi\",\"options\":{\"%s\":1}}", NULL}, /* param quotes the key */
    };
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t p = 0; p < sizeof paths / sizeof *paths; p++) {
        for (size_t c = 0; c < 3; c++) {
            for (int pad = 0; pad < 140; pad++) {
                char text[600], body[900];
                memset(text, 'a', (size_t)pad);
                text[pad] = '\0';
                for (int k = 0; k < 40; k++)
                    strcat(text, chars[c]);
                snprintf(body, sizeof body, paths[p].fmt, text);
                json_t *j = load(body);
                struct lyra_request r;
                struct lyra_request_error e;
                assert_int_equal(paths[p].fn(j, &r, &e), LYRA_EINVAL);
                check_error(&e);
                if (paths[p].param)
                    assert_string_equal(e.param, paths[p].param);
                else
                    assert_true(strncmp(e.param, "options.", 8) == 0);
                json_decref(j);
            }
        }
    }
}

/* Clients send a large max_tokens by default: it passes through unchanged
 * (the worker clamps it to the context), and the worker's parser takes it. */
static void test_large_max_tokens_passes(void **state)
{
    json_t *body;
    struct lyra_request r;
    accepted(CHAT, "{" MSGS ",\"max_tokens\":1000000000}", &body, &r);
    json_t *params = json_object_get(r.msg, "params");
    assert_int_equal(json_integer_value(json_object_get(params, "max_tokens")), 1000000000);
    worker_accepts(params);
    lyra_requests_clear(&r);
    json_decref(body);

    accepted(COMPL, "{\"prompt\":\"a\",\"max_completion_tokens\":99999999999}", &body, &r);
    params = json_object_get(r.msg, "params");
    assert_true(json_integer_value(json_object_get(params, "max_tokens")) == 99999999999LL);
    struct lyra_sampling_params sp;
    struct lyra_err err;
    assert_int_equal(lyra_sampling_params_parse(params, &sp, &err), 0);
    assert_int_equal(sp.max_tokens, INT32_MAX);
    lyra_sampling_params_clear(&sp);
    lyra_requests_clear(&r);
    json_decref(body);

    accepted(LYRA, "{\"message\":\"hi\",\"options\":{\"max_tokens\":1000000000,\"temperature\":0}}", &body,
             &r);
    assert_int_equal(json_integer_value(json_object_get(r.params, "max_tokens")), 1000000000);
    worker_accepts(r.params);
    lyra_requests_clear(&r);
    json_decref(body);

    accepted(CHAT, "{" MSGS ",\"max_tokens\":-1}", &body, &r);
    lyra_requests_clear(&r);
    json_decref(body);
}

static void test_openai_chat_message(void **state)
{
    json_t *body;
    struct lyra_request r;
    accepted(
        CHAT,
        "{\"model\":\"tiny\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"n\":1,"
        "\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"caf\xc3\xa9 \"},"
        "{\"type\":\"text\",\"text\":\"au lait\"}]},{\"role\":\"assistant\",\"content\":null}],"
        "\"temperature\":0,\"top_k\":1.0,\"stop\":[\"\\n\"],\"max_tokens\":8,\"max_completion_tokens\":9,"
        "\"response_format\":{\"type\":\"json_object\"},\"user\":\"ignored\",\"tools\":[],"
        "\"logprobs\":false}",
        &body, &r);
    assert_string_equal(r.model, "tiny");
    assert_true(r.stream);
    assert_true(r.include_usage);
    assert_null(r.params);
    json_t *expect =
        json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s}], s:{s:i, s:f, s:[s], s:i, s:b}}", "type",
                  "generate", "messages", "role", "system", "content", "be brief", "role", "user", "content",
                  "caf\xc3\xa9 au lait", "role", "assistant", "content", "", "params", "temperature", 0,
                  "top_k", 1.0, "stop", "\n", "max_tokens", 9, "json_mode", 1);
    /* temperature 0 is an integer in the body: compare it as given. */
    json_object_set_new(json_object_get(expect, "params"), "temperature", json_integer(0));
    char *got = json_dumps(r.msg, JSON_SORT_KEYS | JSON_COMPACT);
    char *want = json_dumps(expect, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(got, want);
    free(got);
    free(want);
    json_decref(expect);
    worker_accepts(json_object_get(r.msg, "params"));
    lyra_requests_clear(&r);
    json_decref(body);

    /* Only what the client set goes to the worker; null means absent. */
    accepted(CHAT, "{" MSGS ",\"temperature\":null,\"model\":null,\"stream\":null}", &body, &r);
    assert_int_equal(json_object_size(json_object_get(r.msg, "params")), 0);
    assert_null(r.model);
    assert_false(r.stream);
    lyra_requests_clear(&r);
    json_decref(body);
}

static void test_completions_and_embeddings_message(void **state)
{
    json_t *body;
    struct lyra_request r;
    accepted(COMPL, "{\"prompt\":[\"Once\"],\"seed\":7,\"response_format\":{\"type\":\"text\"}}", &body, &r);
    assert_string_equal(json_string_value(json_object_get(r.msg, "prompt")), "Once");
    assert_string_equal(json_string_value(json_object_get(r.msg, "type")), "generate");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.msg, "params"), "seed")), 7);
    assert_null(json_object_get(json_object_get(r.msg, "params"), "json_mode"));
    lyra_requests_clear(&r);
    json_decref(body);

    accepted(EMB, "{\"input\":\"hello\",\"encoding_format\":\"base64\"}", &body, &r);
    assert_string_equal(json_string_value(json_object_get(r.msg, "type")), "embed");
    assert_string_equal(json_string_value(json_array_get(json_object_get(r.msg, "inputs"), 0)), "hello");
    lyra_requests_clear(&r);
    json_decref(body);
}

static void test_chat_request(void **state)
{
    json_t *body;
    struct lyra_request r;
    accepted(LYRA,
             "{\"message\":\"Hello!\",\"conversation_id\":\"9b2f0000-0000-4000-8000-000000000000\","
             "\"model\":\"tiny\",\"stream\":true,\"options\":{\"temperature\":0.5,\"stop\":\"\\n\\n\","
             "\"seed\":null}}",
             &body, &r);
    assert_string_equal(r.message, "Hello!");
    assert_string_equal(r.conversation_id, "9b2f0000-0000-4000-8000-000000000000");
    assert_string_equal(r.model, "tiny");
    assert_true(r.stream);
    assert_null(r.msg);
    assert_int_equal(json_object_size(r.params), 2);
    worker_accepts(r.params);
    lyra_requests_clear(&r);
    lyra_requests_clear(&r); /* twice is harmless */
    lyra_requests_clear(NULL);
    json_decref(body);

    accepted(LYRA, "{\"message\":\"x\",\"options\":null,\"conversation_id\":null}", &body, &r);
    assert_null(r.conversation_id);
    assert_int_equal(json_object_size(r.params), 0);
    lyra_requests_clear(&r);
    json_decref(body);
}

/* The shared rules report the key at fault, for the daemon to rename. */
static void test_sampling_params_check(void **state)
{
    const char *field = "unset";
    struct lyra_err err;
    json_t *p = load("{\"top_p\":0.5,\"stop\":[\"a\",\"b\"],\"grammar\":\"root ::= \\\"a\\\"\"}");
    assert_int_equal(lyra_sampling_params_check(p, &field, &err), 0);
    assert_null(field);
    json_decref(p);
    p = load("{\"top_p\":0.5,\"min_p\":9}");
    assert_int_equal(lyra_sampling_params_check(p, &field, &err), LYRA_EINVAL);
    assert_string_equal(field, "min_p");
    assert_non_null(strstr(err.msg, "min_p: must be between 0 and 1, got 9"));
    json_decref(p);
    /* Defaults are llama-server's. */
    struct lyra_sampling_params sp;
    assert_int_equal(lyra_sampling_params_parse(NULL, &sp, &err), 0);
    assert_int_equal(sp.max_tokens, 256);
    assert_int_equal(sp.top_k, 40);
    assert_true(sp.seed == LYRA_SEED_RANDOM);
    lyra_sampling_params_clear(&sp);
    lyra_sampling_params_clear(&sp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role_reproduction),
        cmocka_unit_test(test_openai_chat_refusals),
        cmocka_unit_test(test_openai_completions_refusals),
        cmocka_unit_test(test_openai_logprobs),
        cmocka_unit_test(test_openai_embeddings_refusals),
        cmocka_unit_test(test_chat_refusals),
        cmocka_unit_test(test_error_text_is_valid_utf8),
        cmocka_unit_test(test_large_max_tokens_passes),
        cmocka_unit_test(test_openai_chat_message),
        cmocka_unit_test(test_completions_and_embeddings_message),
        cmocka_unit_test(test_chat_request),
        cmocka_unit_test(test_sampling_params_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
