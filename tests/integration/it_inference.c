/* it_inference.c — inference through the real daemon and real workers with
 * the tiny model: OpenAI chat/completions/embeddings, streaming, errors with
 * the right status, lazy loading shared by concurrent first requests, a
 * client leaving mid-stream, and a worker killed mid-stream. */
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

static struct it_server srv;
static char home[64];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    char p[256], models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0 ||
        it_install_model(models, "tiny.gguf", "tiny2.gguf", SIZE_MAX) < 0)
        return -1;
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    char yaml[2048];
    snprintf(yaml, sizeof yaml, "schema_version: 2\nmodels:\n  ctx_size: 256\n  parallel: 2\n  entries:\n"
                     "    - name: embedder\n      path: tiny.gguf\n      embeddings: true\n"
                     "    - name: long\n      path: tiny.gguf\n      ctx_size: 2048\n      parallel: 1\n"
                     "    - name: greedy\n      path: tiny.gguf\n      temperature: 0\n"
                     "    - name: badtpl\n      path: tiny.gguf\n      chat_template: no-such-template\n"
                     "    - name: small\n      path: %s\n      ctx_size: 4096\n      parallel: 1\n"
                     "    - name: swapper\n      path: swap.gguf\n      ctx_size: 2048\n      parallel: 1\n",
                     it_model_path("small.gguf"));
    it_write_file(p, yaml);
    if (it_install_model(models, "tiny.gguf", "truncated.gguf", 2 * 1024 * 1024) < 0 || /* half the file */
        it_install_model(models, "small.gguf", "swap.gguf", SIZE_MAX) < 0)
        return -1;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static json_t *post(const char *path, const char *body, int want)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", path, "Content-Type: application/json\r\n", body, &r), 0);
    if (r.status != want)
        fail_msg("POST %s: status %d, want %d: %s", path, r.status, want, r.body);
    json_t *j = it_json(&r);
    assert_non_null(j);
    it_response_free(&r);
    return j;
}

static const char *oai_code(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static void test_chat_non_stream(void **state)
{
    json_t *j = post("/v1/chat/completions",
                     "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}",
                     200);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "message"), "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 8);
    assert_true(json_integer_value(json_object_get(u, "prompt_tokens")) > 0);
    assert_true(json_is_object(json_object_get(j, "timings")));
    /* Greedy: the same request gives the same text, and reuses the prefix. */
    json_t *j2 = post("/v1/chat/completions",
                      "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                      "\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}",
                      200);
    json_t *c2 = json_array_get(json_object_get(j2, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "message"), "content")),
                        json_string_value(json_object_get(json_object_get(c2, "message"), "content")));
    assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(j2, "usage"), "prompt_tokens_details"),
                                                   "cached_tokens")) > 0);
    json_decref(j);
    json_decref(j2);
}

/* Reads an SSE response and returns the concatenated delta contents;
 * *chunks gets the number of data lines, *done whether [DONE] came. */
static char *read_sse(const char *body, int *chunks, bool *done, char *finish, size_t flen)
{
    char *text = calloc(1, 1);
    size_t len = 0;
    *chunks = 0;
    *done = false;
    for (const char *p = body; (p = strstr(p, "data: ")); p += 6) {
        const char *end = strstr(p, "\n\n");
        if (!end)
            break;
        if (strncmp(p + 6, "[DONE]", 6) == 0) {
            *done = true;
            break;
        }
        (*chunks)++;
        json_t *j = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
        assert_non_null(j);
        json_t *c = json_array_get(json_object_get(j, "choices"), 0);
        const char *t = json_string_value(json_object_get(json_object_get(c, "delta"), "content"));
        if (t) {
            text = realloc(text, len + strlen(t) + 1);
            strcpy(text + len, t);
            len += strlen(t);
        }
        const char *fr = json_string_value(json_object_get(c, "finish_reason"));
        if (fr && finish)
            snprintf(finish, flen, "%s", fr);
        json_decref(j);
    }
    return text;
}

static void test_chat_stream(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", "/v1/chat/completions", "Content-Type: application/json\r\n",
                             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                             "\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true,\"stream\":true,"
                             "\"stream_options\":{\"include_usage\":true}}",
                             &r),
                     0);
    assert_int_equal(r.status, 200);
    char ct[64];
    assert_string_equal(it_header(&r, "Content-Type", ct, sizeof ct), "text/event-stream");
    int chunks;
    bool done;
    char finish[16] = "";
    char *text = read_sse(r.body, &chunks, &done, finish, sizeof finish);
    assert_true(done);
    assert_true(chunks >= 3); /* role, content..., finish, usage */
    assert_string_equal(finish, "length");
    assert_non_null(strstr(r.body, "\"role\":\"assistant\""));
    assert_non_null(strstr(r.body, "\"usage\":{\"prompt_tokens\""));
    free(text);
    it_response_free(&r);
}

static void test_completions_and_embeddings(void **state)
{
    json_t *j = post("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"Once upon\",\"max_tokens\":4,\"ignore_eos\":true}",
                     200);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_true(json_is_string(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    j = post("/v1/embeddings", "{\"model\":\"embedder\",\"input\":[\"hello\",\"world\"]}", 200);
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_int_equal(json_array_size(json_object_get(json_array_get(data, 0), "embedding")), 128);
    json_decref(j);
    j = post("/v1/embeddings", "{\"model\":\"tiny\",\"input\":\"hello\"}", 400);
    assert_string_equal(oai_code(j), "embeddings_disabled");
    json_decref(j);
}

static void test_errors(void **state)
{
    json_t *j = post("/v1/chat/completions", "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 404);
    assert_string_equal(oai_code(j), "model_not_found");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "nope"));
    json_decref(j);
    j = post("/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "param")), "temperature");
    json_decref(j);
    j = post("/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":-1}", 400);
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "temperature"));
    json_decref(j);
    j = post("/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", 400);
    json_decref(j);
    j = post("/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[]}", 400);
    json_decref(j);
    /* Prompt longer than the 256-token slot context: 400 with the counts. */
    char *big = malloc(20000);
    int n = sprintf(big, "{\"model\":\"tiny\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 600; i++)
        n += sprintf(big + n, "word ");
    sprintf(big + n, "\"}]}");
    j = post("/v1/chat/completions", big, 400);
    assert_string_equal(oai_code(j), "context_length_exceeded");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "256"));
    json_decref(j);
    free(big);
}

static json_t *status_model(const char *name)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/status", NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    it_response_free(&r);
    json_t *found = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0)
        found = json_incref(m);
    json_decref(j);
    return found;
}

/* Starts a streaming POST on its own connection and returns the socket once
 * the first bytes of the answer arrived (the stream has started). */
static int open_stream(const char *path, const char *body)
{
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    char req[1024];
    int n = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    char buf[256];
    assert_true(recv(fd, buf, sizeof buf, 0) > 0);
    return fd;
}

/* Waits until `model` has no request in flight. */
static void wait_idle(const char *model)
{
    int in_flight = -1;
    for (int i = 0; i < 400 && in_flight != 0; i++) {
        json_t *m = status_model(model);
        in_flight = m ? (int)json_integer_value(json_object_get(m, "in_flight")) : -1;
        json_decref(m);
        if (in_flight != 0)
            sleep_ms(25);
    }
    assert_int_equal(in_flight, 0);
}

/* Sends a POST with X-Request-Id `rid` on its own connection, without
 * reading the answer; returns the socket. */
static int post_with_id(const char *path, const char *rid, const char *body)
{
    int fd = it_connect(srv.port);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     path, rid, strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    return fd;
}

/* A 2,000-token generation on "small" takes tens of seconds here; a
 * client that leaves must stop it within a decode step, so the trace shows
 * far fewer tokens than asked for. */
static void test_client_leaves_frees_slot(void **state)
{
    const char *body = "{\"model\":\"small\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                       "\"max_tokens\":2000,\"ignore_eos\":true,\"stream\":true}";
    int fd = post_with_id("/v1/chat/completions", "leave-stream", body);
    char buf[512];
    assert_true(recv(fd, buf, sizeof buf, 0) > 0); /* the stream started */
    close(fd);
    wait_idle("small");
    int generated = it_trace_generated(srv.port, "leave-stream");
    print_message("stream: %d of 2000 tokens generated before the client left\n", generated);
    assert_true(generated >= 0 && generated < 500);
}

/* The same for a request that is not streamed: the client is watched while
 * its request is parked (libmicrohttpd does not watch suspended sockets). */
static void test_client_leaves_non_stream(void **state)
{
    const char *body = "{\"model\":\"small\",\"prompt\":\"Once\",\"max_tokens\":2000,\"ignore_eos\":true}";
    int fd = post_with_id("/v1/completions", "leave-parked", body);
    int in_flight = 0;
    for (int i = 0; i < 400 && in_flight < 1; i++) {
        json_t *m = status_model("small");
        in_flight = m ? (int)json_integer_value(json_object_get(m, "in_flight")) : 0;
        json_decref(m);
        if (in_flight < 1)
            sleep_ms(10);
    }
    assert_int_equal(in_flight, 1);
    close(fd);
    wait_idle("small");
    int generated = it_trace_generated(srv.port, "leave-parked");
    print_message("parked: %d of 2000 tokens generated before the client left\n", generated);
    assert_true(generated >= 0 && generated < 500);
}

/* max_tokens above what the context leaves is clamped, not refused; a
 * prompt that cannot fit is a 400 with the counts. */
static void test_max_tokens_clamped(void **state)
{
    json_t *j = post("/v1/completions",
                     "{\"model\":\"tiny\",\"prompt\":\"a b\",\"max_tokens\":100000,\"ignore_eos\":true}", 200);
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "length");
    json_int_t prompt = json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    json_int_t completion = json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
    assert_int_equal(prompt + completion, 256); /* the slot's context, full */
    json_decref(j);
    char *big = malloc(8192);
    strcpy(big, "{\"model\":\"tiny\",\"prompt\":\"");
    for (int i = 0; i < 400; i++)
        strcat(big, "go ");
    strcat(big, "\",\"max_tokens\":4}");
    j = post("/v1/completions", big, 400);
    free(big);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(strstr(msg, "the slot context holds 256"));
    json_decref(j);
}

/* The request that used to kill its worker: a role cut by "%.32s" inside a
 * two-byte character became invalid UTF-8, the worker's reply could not be
 * encoded and it exited; retried twice, it opened the circuit.  Now it is a
 * 400 naming the field, and the worker lives on. */
static void test_poison_role_is_a_400(void **state)
{
    json_decref(post("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"a\",\"max_tokens\":1}", 200));
    json_t *m = status_model("tiny");
    json_int_t pid = json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    for (int i = 0; i < 3; i++) {
        json_t *j = post("/v1/chat/completions",
                         "{\"model\":\"tiny\",\"messages\":[{\"role\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\","
                         "\"content\":\"hi\"}]}",
                         400);
        json_t *e = json_object_get(j, "error");
        assert_string_equal(json_string_value(json_object_get(e, "param")), "messages[0].role");
        const char *msg = json_string_value(json_object_get(e, "message"));
        assert_non_null(msg);
        assert_non_null(strstr(msg, "unknown role"));
        assert_true(lyra_utf8_valid(msg, strlen(msg)));
        json_decref(j);
    }
    m = status_model("tiny");
    assert_int_equal(json_integer_value(json_object_get(m, "pid")), pid);
    assert_int_equal(json_integer_value(json_object_get(m, "crashes")), 0);
    json_decref(m);
}

/* A model file copied into the models dir is servable by name at once, and
 * an unknown name with non-ASCII, over-long text gets a valid JSON 404. */
static void test_new_model_file_and_unknown_names(void **state)
{
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(it_install_model(models, "tiny.gguf", "fresh.gguf", SIZE_MAX), 0);
    json_decref(post("/v1/completions", "{\"model\":\"fresh\",\"prompt\":\"a\",\"max_tokens\":1}", 200));
    /* 200 bytes of "é": an unknown name, quoted in the 404 on a character
     * boundary; 600 bytes: over the 256-byte limit on names, a 400. */
    static const struct {
        int repeat, status;
    } cases[] = {{100, 404}, {300, 400}};
    for (size_t k = 0; k < 2; k++) {
        char body[2048] = "{\"model\":\"";
        for (int i = 0; i < cases[k].repeat; i++)
            strcat(body, "\xc3\xa9");
        strcat(body, "\",\"prompt\":\"a\"}");
        json_t *j = post("/v1/completions", body, cases[k].status);
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        assert_non_null(msg);
        assert_true(lyra_utf8_valid(msg, strlen(msg)));
        json_decref(j);
    }
}

static json_int_t models_field(const char *name, const char *field, bool *changed)
{
    char path[128];
    snprintf(path, sizeof path, "/models/%s", name);
    json_t *j = it_get_json(srv.port, path, 200);
    assert_non_null(j);
    json_int_t v = json_integer_value(json_object_get(j, field));
    if (changed)
        *changed = json_is_true(json_object_get(j, "file_changed"));
    json_decref(j);
    return v;
}

/* A model file replaced while its worker serves it: the request in flight
 * finishes on the old file, /models shows the metadata of what is served
 * (and that the file changed), then the worker restarts on the new file. */
static void test_model_file_replaced_while_loaded(void **state)
{
    json_decref(post("/v1/completions", "{\"model\":\"swapper\",\"prompt\":\"a\",\"max_tokens\":1}", 200));
    json_t *m = status_model("swapper");
    json_int_t pid = json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    json_int_t old_params = models_field("swapper", "parameters", NULL);
    assert_true(old_params > 100000000); /* small */

    /* 100 tokens of small: seconds, long enough to replace the file. */
    int fd = open_stream("/v1/completions", "{\"model\":\"swapper\",\"prompt\":\"a\",\"max_tokens\":100,"
                                            "\"ignore_eos\":true,\"stream\":true}");
    /* Replace the file the way a download would: write aside, rename. */
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(it_install_model(models, "tiny.gguf", "swap.gguf.part", SIZE_MAX), 0);
    char from[256], to[256];
    snprintf(from, sizeof from, "%s/swap.gguf.part", models);
    snprintf(to, sizeof to, "%s/swap.gguf", models);
    assert_int_equal(rename(from, to), 0);
    uint64_t seq = it_last_seq(srv.port);
    /* While the stream runs, /models describes the file being served. */
    bool changed = false;
    for (int i = 0; i < 200 && !changed; i++) {
        json_int_t p = models_field("swapper", "parameters", &changed);
        assert_int_equal(p, old_params);
        if (!changed)
            sleep_ms(20);
    }
    assert_true(changed);
    m = status_model("swapper");
    assert_int_equal(json_integer_value(json_object_get(m, "in_flight")), 1); /* still serving the old file */
    json_decref(m);
    /* The stream is not cut: it ends well, with its 100 tokens. */
    struct it_response r;
    assert_int_equal(it_read_response(fd, &r), 0);
    assert_non_null(strstr(r.body, "\"finish_reason\":\"length\""));
    assert_non_null(strstr(r.body, "data: [DONE]"));
    it_response_free(&r);
    close(fd);
    json_t *ev = it_wait_event(srv.port, "model.unloaded", seq, 10000);
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "reason")), "file changed");
    json_decref(ev);
    /* The next request loads the new file. */
    json_decref(post("/v1/completions", "{\"model\":\"swapper\",\"prompt\":\"a\",\"max_tokens\":1}", 200));
    m = status_model("swapper");
    assert_int_not_equal(json_integer_value(json_object_get(m, "pid")), pid);
    json_decref(m);
    json_int_t new_params = models_field("swapper", "parameters", &changed);
    assert_true(new_params > 0 && new_params < 10000000); /* tiny */
    assert_false(changed);
}

static void test_worker_killed_mid_stream(void **state)
{
    /* Load "long" (2048-token slot: 2000 tokens take a while). */
    json_decref(post("/v1/completions", "{\"model\":\"long\",\"prompt\":\"a\",\"max_tokens\":1}", 200));
    json_t *m = status_model("long");
    assert_non_null(m);
    int pid = (int)json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    int fd = open_stream("/v1/chat/completions", "{\"model\":\"long\",\"messages\":[{\"role\":\"user\","
                                                  "\"content\":\"Hi\"}],\"max_tokens\":2000,\"ignore_eos\":true,\"stream\":true}");
    kill(pid, SIGKILL);
    /* The stream ends with an error chunk and [DONE]. */
    char *all = calloc(1, 1 << 20);
    size_t len = 0;
    ssize_t got;
    while ((got = recv(fd, all + len, (1 << 20) - len - 1, 0)) > 0)
        len += (size_t)got;
    close(fd);
    if (!strstr(all, "worker_crashed"))
        fail_msg("no worker_crashed in the stream's end: ...%s", len > 300 ? all + len - 300 : all);
    assert_non_null(strstr(all, "data: [DONE]"));
    free(all);
    /* The next request is served by a new worker. */
    json_t *j = post("/v1/chat/completions", "{\"model\":\"long\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                             "\"max_tokens\":2,\"ignore_eos\":true}", 200);
    json_decref(j);
    m = status_model("long");
    assert_int_not_equal(json_integer_value(json_object_get(m, "pid")), pid);
    assert_int_equal(json_integer_value(json_object_get(m, "crashes")), 1);
    json_decref(m);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/events/recent?types=worker.crashed", NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "worker.crashed"));
    it_response_free(&r);
}

static void *one_request(void *arg)
{
    json_t *j = post("/v1/completions", "{\"model\":\"tiny2\",\"prompt\":\"a\",\"max_tokens\":2,\"ignore_eos\":true}", 200);
    json_decref(j);
    return NULL;
}

static void test_concurrent_first_requests_share_one_load(void **state)
{
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, one_request, NULL);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/events/recent?types=model.loading,model.loaded", NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    it_response_free(&r);
    int loading = 0, loaded = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e) {
        if (strcmp(json_string_value(json_object_get(json_object_get(e, "data"), "model")), "tiny2") != 0)
            continue;
        if (strcmp(json_string_value(json_object_get(e, "type")), "model.loading") == 0)
            loading++;
        else {
            loaded++;
            assert_true(json_real_value(json_object_get(json_object_get(e, "data"), "load_ms")) > 0);
        }
    }
    assert_int_equal(loading, 1);
    assert_int_equal(loaded, 1);
    json_decref(j);
}

struct bg_post {
    const char *path, *body;
    int status;
    pthread_t t;
};

static void *bg_post_main(void *arg)
{
    struct bg_post *b = arg;
    struct it_response r;
    b->status = it_http(srv.port, "POST", b->path, "Content-Type: application/json\r\n", b->body, &r) == 0 ? r.status : -1;
    it_response_free(&r);
    return NULL;
}

static int long_pid(void)
{
    json_t *m = status_model("long");
    int pid = m ? (int)json_integer_value(json_object_get(m, "pid")) : 0;
    json_decref(m);
    return pid;
}

/* Runs after test_worker_killed_mid_stream (one crash of "long" so far). */
static void test_retry_then_circuit(void **state)
{
    /* A stream occupies "long"'s only slot; a non-streaming request waits
     * behind it inside the worker.  Killing the worker fails both: the
     * waiting request had reached the worker, so it is not retried (a
     * request that killed its worker must not kill the next one). */
    int fd = open_stream("/v1/completions",
                         "{\"model\":\"long\",\"prompt\":\"a\",\"max_tokens\":2000,\"ignore_eos\":true,\"stream\":true}");
    struct bg_post waiting = {.path = "/v1/completions", .body = "{\"model\":\"long\",\"prompt\":\"b\",\"max_tokens\":2}"};
    pthread_create(&waiting.t, NULL, bg_post_main, &waiting);
    sleep_ms(150);
    kill(long_pid(), SIGKILL);
    pthread_join(waiting.t, NULL);
    close(fd);
    assert_int_equal(waiting.status, 502);

    /* The next request starts a fresh worker. */
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", "/v1/completions", "Content-Type: application/json\r\n",
                             "{\"model\":\"long\",\"prompt\":\"b\",\"max_tokens\":2}", &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);

    /* Third crash within 60 s: the circuit opens; 503 with Retry-After. */
    int pid = long_pid();
    assert_true(pid > 0);
    kill(pid, SIGKILL);
    for (int i = 0; i < 100 && long_pid() == pid; i++)
        sleep_ms(20);
    assert_int_equal(it_http(srv.port, "POST", "/v1/completions", "Content-Type: application/json\r\n",
                             "{\"model\":\"long\",\"prompt\":\"c\",\"max_tokens\":2}", &r), 0);
    assert_int_equal(r.status, 503);
    char ra[16];
    assert_non_null(it_header(&r, "Retry-After", ra, sizeof ra));
    assert_true(atoi(ra) > 0);
    it_response_free(&r);
}

static void test_model_defaults_and_load_errors(void **state)
{
    /* "greedy" is configured with temperature 0: two requests that give no
     * temperature agree. */
    const char *body = "{\"model\":\"greedy\",\"prompt\":\"x y\",\"max_tokens\":6,\"ignore_eos\":true}";
    json_t *a = post("/v1/completions", body, 200), *b = post("/v1/completions", body, 200);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(a, "choices"), 0), "text")),
                        json_string_value(json_object_get(json_array_get(json_object_get(b, "choices"), 0), "text")));
    json_decref(a);
    json_decref(b);
    /* A truncated file is refused with the reason, without a worker. */
    json_t *j = post("/v1/completions", "{\"model\":\"truncated\",\"prompt\":\"x\",\"max_tokens\":2}", 422);
    assert_string_equal(oai_code(j), "model_invalid");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "truncated"));
    json_decref(j);
    /* A worker that cannot start reports its own reason. */
    j = post("/v1/chat/completions", "{\"model\":\"badtpl\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":2}", 500);
    assert_string_equal(oai_code(j), "model_load_failed");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "template"));
    json_decref(j);
}

static void test_traces(void **state)
{
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    struct it_response r;
    char hdr[256];
    char headers[256];
    snprintf(headers, sizeof headers, "Content-Type: application/json\r\ntraceparent: %s\r\nX-Request-Id: trace-me-1\r\n", tp);
    assert_int_equal(it_http(srv.port, "POST", "/v1/completions", headers,
                             "{\"model\":\"tiny\",\"prompt\":\"a b c\",\"max_tokens\":3,\"ignore_eos\":true}", &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_non_null(it_header(&r, "traceparent", hdr, sizeof hdr));
    assert_int_equal(strncmp(hdr, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36), 0);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/traces?id=trace-me-1", NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    it_response_free(&r);
    json_t *t = json_array_get(json_object_get(j, "traces"), 0);
    assert_non_null(t);
    assert_string_equal(json_string_value(json_object_get(t, "trace_id")), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(json_string_value(json_object_get(t, "endpoint")), "/v1/completions");
    const char *names[] = {"queue", "load", "prompt", "generation", "total"};
    json_t *spans = json_object_get(t, "spans");
    assert_int_equal(json_array_size(spans), 5);
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(spans, i), "name")), names[i]);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(spans, 3), "tokens")), 3);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_non_stream),
        cmocka_unit_test(test_chat_stream),
        cmocka_unit_test(test_completions_and_embeddings),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_client_leaves_frees_slot),
        cmocka_unit_test(test_client_leaves_non_stream),
        cmocka_unit_test(test_max_tokens_clamped),
        cmocka_unit_test(test_poison_role_is_a_400),
        cmocka_unit_test(test_new_model_file_and_unknown_names),
        cmocka_unit_test(test_model_file_replaced_while_loaded),
        cmocka_unit_test(test_worker_killed_mid_stream),
        cmocka_unit_test(test_retry_then_circuit),
        cmocka_unit_test(test_concurrent_first_requests_share_one_load),
        cmocka_unit_test(test_traces),
        cmocka_unit_test(test_model_defaults_and_load_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
