/* it_chat.c — POST /chat and /conversations against the real daemon with
 * the tiny model: a new conversation, a second turn that carries the
 * history and reuses the first turn's KV (timings.prompt_n), the SSE form,
 * listing and deleting, 400s and 404s, a turn that fails before, at or in
 * the middle of generation (worker killed) or whose client leaves leaving
 * the stored history exactly as it was, a turn in flight holding its
 * conversation (409 conversation_busy, released on every end), concurrent
 * turns never interleaving, and conversations surviving a restart.  The
 * tiny model's weights are random, so replies are gibberish: every turn
 * bounds max_tokens; "long" (tiny with two 2048-token slots) makes turns
 * that are still running while the test looks at them. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define JSON_HEADER "Content-Type: application/json\r\n"
#define OPTIONS "\"options\":{\"temperature\":0,\"max_tokens\":8,\"ignore_eos\":true}"

static struct it_server srv;
static char home[64];

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    if (it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/lyra.yaml", home);
    it_write_file(cfg, "schema_version: 2\nmodels:\n  default_model: tiny\n  entries:\n"
                       "    - name: long\n      path: tiny.gguf\n      ctx_size: 4096\n      parallel: 2\n");
    return it_server_start(&srv, home, NULL, NULL);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static json_t *request(const char *method, const char *path, const char *body, int want)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, method, path, body ? JSON_HEADER : NULL, body, &r), 0);
    if (r.status != want)
        print_error("%s %s: %d %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, want);
    json_t *j = it_json(&r);
    it_response_free(&r);
    return j;
}

static json_t *chat(const char *body, int want)
{
    json_t *j = request("POST", "/chat", body, want);
    assert_non_null(j);
    return j;
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_int_t num(json_t *o, const char *a, const char *b)
{
    return json_integer_value(json_object_get(json_object_get(o, a), b));
}

static const char *error_code(json_t *j)
{
    return str(json_object_get(j, "error"), "code");
}

static json_t *get_conversation(const char *id, int want)
{
    char path[128];
    snprintf(path, sizeof path, "/conversations/%s", id);
    return request("GET", path, NULL, want);
}

static json_int_t conversation_total(void)
{
    json_t *j = request("GET", "/conversations", NULL, 200);
    json_int_t n = json_integer_value(json_object_get(j, "total"));
    json_decref(j);
    return n;
}

static void test_new_conversation(void **state)
{
    json_t *j = chat("{\"message\":\"Hello, who are you?\"," OPTIONS "}", 200);
    const char *id = str(j, "conversation_id");
    assert_non_null(id);
    assert_int_equal(strlen(id), 36);
    assert_string_equal(str(json_object_get(j, "message"), "role"), "assistant");
    const char *reply = str(json_object_get(j, "message"), "content");
    assert_non_null(reply);
    assert_string_equal(str(j, "model"), "tiny"); /* the default: the only model */
    assert_string_equal(str(j, "finish_reason"), "length");
    assert_int_equal(num(j, "usage", "completion_tokens"), 8);
    assert_true(num(j, "usage", "prompt_tokens") > 5);
    assert_true(json_is_number(json_object_get(json_object_get(j, "timings"), "predicted_ms")));

    json_t *c = get_conversation(id, 200);
    assert_string_equal(str(c, "id"), id);
    assert_string_equal(str(c, "title"), "Hello, who are you?");
    assert_string_equal(str(c, "model"), "tiny");
    assert_int_equal(json_integer_value(json_object_get(c, "message_count")), 2);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(str(json_array_get(msgs, 0), "role"), "user");
    assert_string_equal(str(json_array_get(msgs, 0), "content"), "Hello, who are you?");
    json_t *a = json_array_get(msgs, 1);
    assert_string_equal(str(a, "role"), "assistant");
    assert_string_equal(str(a, "content"), reply);
    assert_string_equal(str(a, "model"), "tiny");
    assert_int_equal(num(a, "usage", "completion_tokens"), 8);
    assert_int_equal(num(a, "usage", "prompt_tokens"), num(j, "usage", "prompt_tokens"));
    json_decref(c);
    json_decref(j);
}

static void test_second_turn_history_and_prefix_reuse(void **state)
{
    /* A long first message, so that reusing it is clearly visible. */
    char first[1200] = "";
    for (int i = 0; i < 20; i++)
        strcat(first, "The quick brown fox jumps over the lazy dog. ");
    char body[2048];
    snprintf(body, sizeof body, "{\"message\":\"%s\"," OPTIONS "}", first);
    json_t *t1 = chat(body, 200);
    char id[37];
    snprintf(id, sizeof id, "%s", str(t1, "conversation_id"));
    json_int_t p1 = num(t1, "usage", "prompt_tokens");
    assert_true(p1 > 150);

    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"And then?\"," OPTIONS "}", id);
    json_t *t2 = chat(body, 200);
    assert_string_equal(str(t2, "conversation_id"), id);
    json_int_t p2 = num(t2, "usage", "prompt_tokens");
    /* The worker got the history: both turns and the reply are in the prompt. */
    assert_true(p2 > p1 + 8);
    /* ... and evaluated only what is new since the first turn. */
    json_int_t prompt_n = num(t2, "timings", "prompt_n");
    json_int_t cached = num(t2, "usage", "cached_tokens");
    if (!(prompt_n > 0 && prompt_n * 3 < p2 && cached > p1 / 2))
        print_error("no prefix reuse: prompt_tokens %lld, prompt_n %lld, cached %lld (first turn %lld)\n",
                    (long long)p2, (long long)prompt_n, (long long)cached, (long long)p1);
    assert_true(prompt_n > 0 && prompt_n * 3 < p2);
    assert_true(cached > p1 / 2);

    json_t *c = get_conversation(id, 200);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 4);
    const char *roles[] = {"user", "assistant", "user", "assistant"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(str(json_array_get(msgs, i), "role"), roles[i]);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(msgs, i), "seq")),
                         (json_int_t)i + 1);
    }
    assert_string_equal(str(json_array_get(msgs, 0), "content"), first);
    assert_string_equal(str(json_array_get(msgs, 1), "content"),
                        str(json_object_get(t1, "message"), "content"));
    assert_string_equal(str(json_array_get(msgs, 2), "content"), "And then?");
    assert_string_equal(str(json_array_get(msgs, 3), "content"),
                        str(json_object_get(t2, "message"), "content"));
    assert_int_equal(num(json_array_get(msgs, 3), "usage", "cached_tokens"), cached);
    /* The title is the first message cut to 60 characters. */
    assert_int_equal(strlen(str(c, "title")), 60);
    assert_memory_equal(str(c, "title"), first, 60);
    json_decref(c);
    json_decref(t1);
    json_decref(t2);
}

static void test_stream(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", "/chat", JSON_HEADER,
                             "{\"message\":\"Stream me a story\",\"stream\":true," OPTIONS "}", &r),
                     0);
    assert_int_equal(r.status, 200);
    char ct[64];
    assert_non_null(it_header(&r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "text/event-stream");

    char id[37] = "", deltas[4096] = "";
    int n_chunks = 0, n_done = 0;
    bool saw_end = false;
    json_int_t completion = -1;
    for (char *line = strtok(r.body, "\n"); line; line = strtok(NULL, "\n")) {
        assert_memory_equal(line, "data: ", 6);
        assert_false(saw_end); /* nothing after [DONE] */
        if (strcmp(line + 6, "[DONE]") == 0) {
            saw_end = true;
            continue;
        }
        json_t *chunk = json_loads(line + 6, 0, NULL);
        assert_non_null(chunk);
        if (n_chunks++ == 0) { /* the opening chunk */
            snprintf(id, sizeof id, "%s", str(chunk, "conversation_id"));
            assert_string_equal(str(chunk, "model"), "tiny");
        } else {
            assert_string_equal(str(chunk, "conversation_id"), id);
        }
        if (json_is_string(json_object_get(chunk, "delta"))) {
            assert_int_equal(n_done, 0);
            strcat(deltas, str(chunk, "delta"));
        }
        if (json_is_true(json_object_get(chunk, "done"))) {
            n_done++;
            assert_string_equal(str(chunk, "finish_reason"), "length");
            completion = num(chunk, "usage", "completion_tokens");
            assert_true(json_is_object(json_object_get(chunk, "timings")));
        }
        json_decref(chunk);
    }
    it_response_free(&r);
    assert_true(saw_end);
    assert_int_equal(n_done, 1);
    assert_int_equal(completion, 8);
    assert_int_equal(strlen(id), 36);

    json_t *c = get_conversation(id, 200);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(str(json_array_get(msgs, 1), "content"), deltas);
    assert_string_equal(str(c, "title"), "Stream me a story");
    json_decref(c);
}

static void test_list_and_delete(void **state)
{
    json_int_t before = conversation_total();
    json_t *j = chat("{\"message\":\"to be deleted\"," OPTIONS "}", 200);
    char id[37];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    json_decref(j);

    json_t *list = request("GET", "/conversations", NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(list, "total")), before + 1);
    json_t *newest = json_array_get(json_object_get(list, "conversations"), 0);
    assert_string_equal(str(newest, "id"), id); /* most recent first */
    assert_string_equal(str(newest, "title"), "to be deleted");
    assert_string_equal(str(newest, "model"), "tiny");
    assert_int_equal(json_integer_value(json_object_get(newest, "message_count")), 2);
    assert_non_null(str(newest, "created"));
    assert_non_null(str(newest, "updated"));
    json_decref(list);

    list = request("GET", "/conversations?limit=1&offset=1", NULL, 200);
    json_t *page = json_object_get(list, "conversations");
    assert_int_equal(json_array_size(page), before >= 1 ? 1 : 0);
    if (before >= 1)
        assert_string_not_equal(str(json_array_get(page, 0), "id"), id);
    json_decref(list);

    char path[128];
    snprintf(path, sizeof path, "/conversations/%s", id);
    json_decref(request("DELETE", path, NULL, 204));
    j = get_conversation(id, 404);
    assert_string_equal(error_code(j), "conversation_not_found");
    json_decref(j);
    j = request("DELETE", path, NULL, 404);
    assert_string_equal(error_code(j), "conversation_not_found");
    json_decref(j);
    assert_int_equal(conversation_total(), before);

    /* A deleted conversation cannot be continued. */
    char body[256];
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"still there?\"}", id);
    j = chat(body, 404);
    assert_string_equal(error_code(j), "conversation_not_found");
    json_decref(j);
}

static void expect_400(const char *body, const char *code, const char *needle)
{
    json_t *j = chat(body, 400);
    assert_string_equal(error_code(j), code);
    const char *msg = str(json_object_get(j, "error"), "message");
    if (!strstr(msg, needle))
        print_error("error for %s does not name '%s': %s\n", body, needle, msg);
    assert_non_null(strstr(msg, needle));
    json_decref(j);
}

static void test_errors(void **state)
{
    json_int_t before = conversation_total();
    expect_400("{}", "invalid_field", "message");
    expect_400("{\"message\":42}", "invalid_field", "message");
    expect_400("{\"message\":\"\"}", "invalid_field", "message");
    expect_400("[\"message\"]", "invalid_field", "object");
    expect_400("{\"message\":\"hi\",\"options\":{\"temperature\":\"hot\"}}", "invalid_field",
               "options.temperature");
    expect_400("{\"message\":\"hi\",\"options\":{\"max_tokens\":1.5}}", "invalid_field",
               "options.max_tokens");
    expect_400("{\"message\":\"hi\",\"options\":{\"max_tokens\":0}}", "invalid_field", "options.max_tokens");
    expect_400("{\"message\":\"hi\",\"options\":{\"ignore_eos\":1}}", "invalid_field", "options.ignore_eos");
    expect_400("{\"message\":\"hi\",\"options\":{\"stop\":[\"a\",2]}}", "invalid_field", "options.stop");
    expect_400("{\"message\":\"hi\",\"options\":{\"temprature\":1}}", "invalid_field", "options.temprature");
    expect_400("{\"message\":\"hi\",\"options\":\"fast\"}", "invalid_field", "options");
    expect_400("{\"message\":\"hi\",\"stream\":\"yes\"}", "invalid_field", "stream");
    expect_400("{\"message\":\"hi\",\"conversation_id\":7}", "invalid_field", "conversation_id");
    expect_400("{\"message\":\"hi\",\"model\":[]}", "invalid_field", "model");
    expect_400("{\"message\":\"hi\"", "invalid_json", "line 1");
    /* A value out of range is refused in the daemon by the worker's own rules. */
    expect_400("{\"message\":\"hi\",\"options\":{\"temperature\":-1}}", "invalid_field", "options.temperature");

    json_t *j = chat("{\"message\":\"hi\",\"model\":\"no-such-model\"," OPTIONS "}", 404);
    assert_string_equal(error_code(j), "model_not_found");
    json_decref(j);
    j = chat("{\"message\":\"hi\",\"conversation_id\":\"00000000-0000-4000-8000-000000000000\"}", 404);
    assert_string_equal(error_code(j), "conversation_not_found");
    json_decref(j);
    /* Failed turns leave no conversation behind. */
    assert_int_equal(conversation_total(), before);

    j = get_conversation("no-such-conversation", 404);
    assert_string_equal(error_code(j), "conversation_not_found");
    json_decref(j);
    j = request("GET", "/conversations?limit=0", NULL, 400);
    assert_string_equal(error_code(j), "invalid_parameter");
    json_decref(j);
    j = request("GET", "/conversations?offset=-3", NULL, 400);
    assert_string_equal(error_code(j), "invalid_parameter");
    json_decref(j);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The messages of a conversation, as GET returns them (new reference). */
static json_t *messages_of(const char *id)
{
    json_t *c = get_conversation(id, 200);
    json_t *m = json_incref(json_object_get(c, "messages"));
    json_decref(c);
    return m;
}

static void assert_history(const char *id, json_t *want)
{
    json_t *now = messages_of(id);
    if (!json_equal(now, want)) {
        char *a = json_dumps(want, JSON_COMPACT), *b = json_dumps(now, JSON_COMPACT);
        fail_msg("history of %s changed:\nwas %s\nnow %s", id, a, b);
    }
    json_decref(now);
}

/* A field of GET /status (two levels), -1 when absent. */
static json_int_t status_num(const char *a, const char *b)
{
    json_t *j = request("GET", "/status", NULL, 200);
    json_t *v = json_object_get(json_object_get(j, a), b);
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(j);
    return n;
}

/* Waits (state, bounded) until no /chat turn holds a conversation. */
static void wait_turns_idle(void)
{
    for (int i = 0; i < 1500; i++) {
        if (status_num("chat", "turns_in_flight") == 0)
            return;
        sleep_ms(20);
    }
    fail_msg("a /chat turn still holds its conversation after 30 s");
}

static int model_pid(const char *name)
{
    json_t *j = request("GET", "/status", NULL, 200);
    int pid = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) if (strcmp(str(m, "name"), name) == 0) pid =
        (int)json_integer_value(json_object_get(m, "pid"));
    json_decref(j);
    return pid;
}

/* A streamed turn on its own connection, open once its opening chunk (with
 * the conversation id) has arrived: the job has started. */
struct stream {
    int fd;
    char id[37];
    char *all; /* everything read (up to 1 MiB) */
    size_t len;
};

static void stream_open(struct stream *st, const char *body)
{
    memset(st, 0, sizeof *st);
    st->all = calloc(1, 1 << 20);
    st->fd = it_connect(srv.port);
    assert_true(st->fd >= 0);
    char req[2048];
    int n = snprintf(req, sizeof req, "POST /chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    assert_int_equal(send(st->fd, req, (size_t)n, MSG_NOSIGNAL), n);
    const char *key = "\"conversation_id\":\"";
    for (;;) {
        ssize_t got = recv(st->fd, st->all + st->len, (1 << 20) - st->len - 1, 0);
        if (got <= 0)
            fail_msg("the stream ended before its opening chunk: %s", st->all);
        st->len += (size_t)got;
        const char *p = strstr(st->all, key);
        if (p && strlen(p) >= strlen(key) + 36) {
            memcpy(st->id, p + strlen(key), 36);
            st->id[36] = '\0';
            break;
        }
    }
    assert_non_null(strstr(st->all, "200 OK"));
}

/* Reads the rest of the stream and closes it. */
static void stream_finish(struct stream *st)
{
    ssize_t got;
    while (st->len < (1 << 20) - 1 && (got = recv(st->fd, st->all + st->len, (1 << 20) - st->len - 1, 0)) > 0)
        st->len += (size_t)got;
    close(st->fd);
}

#define LONG_TURN "\"model\":\"long\",\"stream\":true,\"options\":{\"max_tokens\":1900,\"ignore_eos\":true}"

static void test_failed_turn_keeps_history_intact(void **state)
{
    json_t *j = chat("{\"message\":\"first\"," OPTIONS "}", 200);
    char id[37], body[512];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    json_decref(j);
    json_t *before = messages_of(id);
    assert_int_equal(json_array_size(before), 2);

    /* Refused before the job (no such model) and by the worker (top_p). */
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"x\",\"model\":\"no-such-model\"}",
             id);
    json_decref(chat(body, 404));
    assert_history(id, before);
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"x\",\"options\":{\"top_p\":7}}",
             id);
    json_decref(chat(body, 400));
    assert_history(id, before);

    /* The worker dies in the middle of two long turns, one on this
     * conversation, one starting a new one.  While they run, the new user
     * messages are not in the history (they are written only with the
     * reply); after the crash, neither is, and the new conversation does not
     * exist. */
    json_int_t total = conversation_total();
    json_decref(chat("{\"message\":\"load long\",\"model\":\"long\"," OPTIONS "}", 200));
    total++;
    int pid = model_pid("long");
    assert_true(pid > 0);
    struct stream st, fresh;
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"killed midway\"," LONG_TURN "}", id);
    stream_open(&st, body);
    stream_open(&fresh, "{\"message\":\"a new one, killed\"," LONG_TURN "}");
    assert_history(id, before);
    json_decref(get_conversation(fresh.id, 404));
    kill(pid, SIGKILL);
    stream_finish(&st);
    stream_finish(&fresh);
    if (!strstr(st.all, "worker_crashed") || !strstr(fresh.all, "worker_crashed"))
        fail_msg("no worker_crashed at the end of the streams: %s", st.all + (st.len > 400 ? st.len - 400 : 0));
    free(st.all);
    free(fresh.all);
    wait_turns_idle();
    assert_history(id, before);
    json_decref(get_conversation(fresh.id, 404));
    assert_int_equal(conversation_total(), total);

    /* And the conversation goes on where it was. */
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"second\"," OPTIONS "}", id);
    j = chat(body, 200);
    json_t *after = messages_of(id);
    assert_int_equal(json_array_size(after), 4);
    for (size_t i = 0; i < 2; i++)
        assert_true(json_equal(json_array_get(after, i), json_array_get(before, i)));
    assert_string_equal(str(json_array_get(after, 2), "content"), "second");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(after, 2), "seq")), 3);
    assert_string_equal(str(json_array_get(after, 3), "content"), str(json_object_get(j, "message"), "content"));
    json_decref(after);
    json_decref(j);
    json_decref(before);
}

static void test_turn_in_flight_holds_its_conversation(void **state)
{
    json_t *j = chat("{\"message\":\"hold on\"," OPTIONS "}", 200);
    char id[37], body[512];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    json_decref(j);
    json_t *before = messages_of(id);

    struct stream st;
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"a long answer\"," LONG_TURN "}", id);
    stream_open(&st, body);
    /* A second turn on it meanwhile is refused, streamed or not. */
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"interleave?\"," OPTIONS "}", id);
    j = chat(body, 409);
    assert_string_equal(error_code(j), "conversation_busy");
    assert_non_null(strstr(str(json_object_get(j, "error"), "message"), id));
    json_decref(j);
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"again?\",\"stream\":true}", id);
    json_decref(chat(body, 409));
    assert_int_equal(status_num("chat", "turns_in_flight"), 1);

    /* So is one on a new conversation whose first turn is still running. */
    struct stream st2;
    stream_open(&st2, "{\"message\":\"a new one\"," LONG_TURN "}");
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"me too\"," OPTIONS "}", st2.id);
    json_decref(chat(body, 409));

    /* The worker dies: both turns end, store nothing and let go. */
    kill(model_pid("long"), SIGKILL);
    stream_finish(&st);
    stream_finish(&st2);
    free(st.all);
    free(st2.all);
    wait_turns_idle();
    assert_history(id, before);
    json_decref(get_conversation(st2.id, 404));

    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"my turn now\"," OPTIONS "}", id);
    json_decref(chat(body, 200));
    json_t *after = messages_of(id);
    assert_int_equal(json_array_size(after), 4);
    json_decref(after);
    json_decref(before);
}

static void test_client_leaves_mid_turn(void **state)
{
    /* A client that leaves cancels its turn (within a decode step, long
     * before its 1,900 tokens), which then stores nothing and lets go of the
     * conversation. */
    json_t *j = chat("{\"message\":\"stay\"," OPTIONS "}", 200);
    char id[37], body[512];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    json_decref(j);
    json_t *before = messages_of(id);
    struct stream st;
    snprintf(body, sizeof body,
             "{\"conversation_id\":\"%s\",\"message\":\"leaving\"," LONG_TURN "}", id);
    stream_open(&st, body);
    close(st.fd);
    free(st.all);
    wait_turns_idle();
    json_t *now = messages_of(id);
    assert_true(json_equal(now, before));
    json_decref(now);
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"back\"," OPTIONS "}", id);
    json_decref(chat(body, 200));
    json_decref(before);
}

struct racer {
    const char *id;
    int n;
    int status;
    char reply[4096];
};

static void *race_turn(void *arg)
{
    struct racer *r = arg;
    char body[512];
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"racer %d\"," OPTIONS "}", r->id, r->n);
    struct it_response resp;
    if (it_http(srv.port, "POST", "/chat", JSON_HEADER, body, &resp) == 0) {
        r->status = resp.status;
        json_t *j = it_json(&resp);
        if (r->status == 200)
            snprintf(r->reply, sizeof r->reply, "%s", str(json_object_get(j, "message"), "content"));
        else if (r->status != 409 || strcmp(error_code(j), "conversation_busy") != 0)
            r->status = -r->status;
        json_decref(j);
        it_response_free(&resp);
    }
    return NULL;
}

static void test_concurrent_turns_never_interleave(void **state)
{
    /* Turns racing on one conversation are refused (409) or run one after
     * the other; the stored history always pairs each user message with the
     * reply that answered it. */
    json_t *j = chat("{\"message\":\"race\"," OPTIONS "}", 200);
    char id[37];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    json_decref(j);
    enum { N = 6 };
    struct racer r[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        r[i] = (struct racer){.id = id, .n = i};
        pthread_create(&t[i], NULL, race_turn, &r[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (r[i].status != 200 && r[i].status != 409)
            fail_msg("racer %d: status %d", i, r[i].status);
        ok += r[i].status == 200;
    }
    assert_true(ok >= 1);
    json_t *msgs = messages_of(id);
    assert_int_equal(json_array_size(msgs), 2 + 2 * (size_t)ok);
    for (size_t k = 2; k < json_array_size(msgs); k += 2) {
        /* Each turn that ran saw every turn stored before it: its prompt
         * holds the earlier prompt and reply (turns that overlapped would
         * have had the same history). */
        json_t *prev = json_array_get(msgs, k - 1), *reply = json_array_get(msgs, k + 1);
        assert_true(num(reply, "usage", "prompt_tokens") >
                    num(prev, "usage", "prompt_tokens") + num(prev, "usage", "completion_tokens"));
        json_t *u = json_array_get(msgs, k), *a = json_array_get(msgs, k + 1);
        assert_string_equal(str(u, "role"), "user");
        assert_string_equal(str(a, "role"), "assistant");
        int n = -1;
        assert_int_equal(sscanf(str(u, "content"), "racer %d", &n), 1);
        assert_true(n >= 0 && n < N);
        assert_int_equal(r[n].status, 200);
        assert_string_equal(str(a, "content"), r[n].reply);
    }
    json_decref(msgs);
    wait_turns_idle();
}

static void test_persists_across_restart(void **state)
{
    json_t *j = chat("{\"message\":\"remember me\"," OPTIONS "}", 200);
    char id[37];
    snprintf(id, sizeof id, "%s", str(j, "conversation_id"));
    char reply[1024];
    snprintf(reply, sizeof reply, "%s", str(json_object_get(j, "message"), "content"));
    json_decref(j);
    json_int_t total = conversation_total();

    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    assert_int_equal(it_server_start(&srv, home, NULL, NULL), 0);

    assert_int_equal(conversation_total(), total);
    json_t *c = get_conversation(id, 200);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(str(json_array_get(msgs, 0), "content"), "remember me");
    assert_string_equal(str(json_array_get(msgs, 1), "content"), reply);
    assert_string_equal(str(c, "title"), "remember me");
    json_decref(c);

    /* And it goes on, on the conversation's model. */
    char body[256];
    snprintf(body, sizeof body, "{\"conversation_id\":\"%s\",\"message\":\"still here?\"," OPTIONS "}", id);
    j = chat(body, 200);
    assert_string_equal(str(j, "model"), "tiny");
    json_decref(j);
    c = get_conversation(id, 200);
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 4);
    json_decref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_conversation),
        cmocka_unit_test(test_second_turn_history_and_prefix_reuse),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_list_and_delete),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_failed_turn_keeps_history_intact),
        cmocka_unit_test(test_turn_in_flight_holds_its_conversation),
        cmocka_unit_test(test_client_leaves_mid_turn),
        cmocka_unit_test(test_concurrent_turns_never_interleave),
        cmocka_unit_test(test_persists_across_restart),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
