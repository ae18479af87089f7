/* it_ollama.c — what the ollama client hides, on the wire: the NDJSON
 * framing of a streamed /api/chat and /api/generate (content type, one
 * JSON object per line, every line ended, done:true only on the last),
 * "stream": false as one JSON body, HEAD / (Ollama clients probe it), and
 * Ollama's error shape {"error":"…"} for an unknown model (404), bad
 * fields and options (400), a body that is not JSON (400) and one over
 * server.max_body_bytes (413). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64];

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", "LYRA_SERVER_MAX_BODY_BYTES=65536",
                                      "LYRA_MODELS_KEEP_ALIVE_S=1", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return 0;
}

/* Checks r's body is Ollama's {"error": string} (and nothing else) and
 * returns the message (static). */
static const char *ollama_error(const struct it_response *r, int status)
{
    static char msg[512];
    if (r->status != status)
        fail_msg("expected %d, got %d: %s", status, r->status, r->body ? r->body : "");
    json_t *j = it_json(r);
    assert_non_null(j);
    assert_int_equal(json_object_size(j), 1);
    const char *e = json_string_value(json_object_get(j, "error"));
    if (!e)
        fail_msg("not Ollama's error shape: %s", r->body);
    snprintf(msg, sizeof msg, "%s", e);
    json_decref(j);
    return msg;
}

/* Splits an NDJSON body: every line a JSON object, ended by \n; done:false
 * on all but the last, done:true on the last.  Returns the line count. */
static int check_ndjson(const struct it_response *r, const char *text_key, json_t **last)
{
    char ct[128];
    assert_non_null(it_header(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/x-ndjson");
    assert_true(r->body_len > 0);
    assert_int_equal(r->body[r->body_len - 1], '\n');
    int n = 0;
    *last = NULL;
    for (char *line = r->body, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, &je);
        if (!j)
            fail_msg("line %d is not JSON: %.*s", n + 1, (int)(nl - line), line);
        if (*last) {
            assert_false(json_is_true(json_object_get(*last, "done")));
            json_decref(*last);
        }
        assert_non_null(json_object_get(j, "created_at"));
        assert_string_equal(json_string_value(json_object_get(j, "model")), "tiny");
        json_t *t = strcmp(text_key, "message") == 0 ? json_object_get(json_object_get(j, "message"), "content")
                                                     : json_object_get(j, "response");
        assert_true(json_is_string(t));
        *last = j;
        n++;
    }
    assert_non_null(*last);
    assert_true(json_is_true(json_object_get(*last, "done")));
    return n;
}

static void test_ndjson_framing(void **state)
{
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/api/chat",
                                  "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                  "\"options\":{\"num_predict\":12}}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    json_t *last;
    int n = check_ndjson(&r, "message", &last);
    assert_true(n >= 6); /* opening, >= 5 text lines (some tokens may join), done */
    assert_int_equal(json_integer_value(json_object_get(last, "eval_count")), 12);
    assert_string_equal(json_string_value(json_object_get(last, "done_reason")), "length");
    assert_true(json_integer_value(json_object_get(last, "eval_duration")) > 0);
    json_decref(last);
    it_response_free(&r);

    assert_int_equal(it_post_json(srv.port, "/api/generate",
                                  "{\"model\":\"tiny\",\"prompt\":\"hi\",\"options\":{\"num_predict\":4}}", &r),
                     0);
    assert_int_equal(r.status, 200);
    n = check_ndjson(&r, "response", &last);
    assert_true(n >= 3);
    assert_true(json_is_array(json_object_get(last, "context")));
    json_decref(last);
    it_response_free(&r);

    /* stream false: one JSON object, not NDJSON */
    assert_int_equal(it_post_json(srv.port, "/api/generate",
                                  "{\"model\":\"tiny\",\"prompt\":\"hi\",\"stream\":false,\"options\":{\"num_predict\":"
                                  "4}}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    char ct[128];
    assert_string_equal(it_header(&r, "Content-Type", ct, sizeof ct), "application/json");
    json_t *j = it_json(&r);
    assert_non_null(j);
    assert_true(json_is_true(json_object_get(j, "done")));
    assert_int_equal(json_integer_value(json_object_get(j, "eval_count")), 4);
    json_decref(j);
    it_response_free(&r);
}

static bool tiny_running(void)
{
    json_t *ps = it_get_json(srv.port, "/api/ps", 200);
    bool found = false;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(ps, "models"), i, m) found |=
        strcmp(json_string_value(json_object_get(m, "name")) ?: "", "tiny") == 0;
    json_decref(ps);
    return found;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* keep_alive per request, on a daemon whose models idle out after 1 s:
 * -1 keeps the model loaded past that, a duration sets its own idle time,
 * and the next request's keep_alive replaces the last one's. */
static void test_keep_alive(void **state)
{
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/api/generate",
                                  "{\"model\":\"tiny\",\"prompt\":\"hi\",\"stream\":false,\"keep_alive\":-1,"
                                  "\"options\":{\"num_predict\":2}}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    sleep_ms(3000);
    assert_true(tiny_running()); /* the model's own 1 s would have unloaded it */
    json_t *ps = it_get_json(srv.port, "/api/ps", 200);
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(json_object_get(ps, "models"), 0),
                                                             "expires_at")) ?: "",
                           "2300-"));
    json_decref(ps);
    assert_int_equal(it_post_json(srv.port, "/api/generate",
                                  "{\"model\":\"tiny\",\"prompt\":\"hi\",\"stream\":false,\"keep_alive\":\"2s\","
                                  "\"options\":{\"num_predict\":2}}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_true(tiny_running());
    int waited = 0;
    while (tiny_running() && waited < 10000) {
        sleep_ms(200);
        waited += 200;
    }
    assert_false(tiny_running());
    assert_true(waited >= 1200); /* about 2 s of idle, not at once */
}

static void test_head_root(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "HEAD", "/", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    it_response_free(&r);
}

static void test_error_shapes(void **state)
{
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/api/chat",
                                  "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r),
                     0);
    assert_string_equal(ollama_error(&r, 404), "model 'nope' not found");
    it_response_free(&r);

    assert_int_equal(it_post_json(srv.port, "/api/show", "{\"model\":\"nope:latest\"}", &r), 0);
    assert_string_equal(ollama_error(&r, 404), "model 'nope' not found");
    it_response_free(&r);

    assert_int_equal(
        it_post_json(srv.port, "/api/generate", "{\"model\":\"tiny\",\"prompt\":\"x\",\"options\":{\"seed\":\"x\"}}", &r),
        0);
    assert_string_equal(ollama_error(&r, 400), "options.seed: must be an integer");
    it_response_free(&r);

    assert_int_equal(it_post_json(srv.port, "/api/generate", "{\"prompt\":\"x\"}", &r), 0);
    assert_string_equal(ollama_error(&r, 400), "model is required");
    it_response_free(&r);

    assert_int_equal(it_post_json(srv.port, "/api/chat",
                                  "{\"model\":\"tiny\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", &r),
                     0);
    ollama_error(&r, 400);
    it_response_free(&r);

    assert_int_equal(it_post_json(srv.port, "/api/chat", "{\"model\":", &r), 0);
    ollama_error(&r, 400);
    it_response_free(&r);

    /* over server.max_body_bytes (64 KiB here) */
    size_t big = 70 * 1024;
    char *body = malloc(big + 64);
    assert_non_null(body);
    int off = snprintf(body, 64, "{\"model\":\"tiny\",\"prompt\":\"");
    memset(body + off, 'a', big);
    strcpy(body + off + big, "\"}");
    assert_int_equal(it_post_json(srv.port, "/api/generate", body, &r), 0);
    free(body);
    ollama_error(&r, 413);
    it_response_free(&r);

    /* the rest of the API keeps Lyra's shape */
    assert_int_equal(it_post_json(srv.port, "/chat", "{\"model\":", &r), 0);
    assert_int_equal(r.status, 400);
    json_t *j = it_json(&r);
    assert_string_equal(it_error_code(j), "invalid_json");
    json_decref(j);
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ndjson_framing),
        cmocka_unit_test(test_head_root),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_error_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
