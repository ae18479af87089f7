/* it_review.c — reproductions from the hostile review of issue 6 (the
 * hardening of the core).  Each test states the behaviour a user would
 * expect; on the reviewed code each of them fails:
 *
 *  - clients that leave parked requests at once leak them: a woken
 *    connection whose client is gone is closed by libmicrohttpd without the
 *    resume handler, so the bridge never lets go (for /chat: the turn keeps
 *    its conversation, 409 conversation_busy until the daemon restarts);
 *  - a client that half-closes after sending its request (shutdown(SHUT_WR))
 *    is taken for a hang-up (documented): its generation stops, and it is
 *    never told that a cut answer is complete (200, finish_reason "stop");
 *  - one request with an ambiguous grammar freezes its model's worker (every
 *    request on it waits) until the progress deadline kills it, failing the
 *    other users' requests with 502 worker_hung. */
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
    /* A short progress deadline, so that the grammar test is quick; it is
     * still hundreds of times what a decode step of tiny takes. */
    it_write_file(cfg, "schema_version: 2\nmodels:\n  default_model: tiny\n  progress_timeout_s: 5\n");
    return it_server_start(&srv, home, NULL, NULL);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static json_t *request(const char *method, const char *path, const char *body, int *status)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, method, path, body ? JSON_HEADER : NULL, body, &r), 0);
    *status = r.status;
    json_t *j = it_json(&r);
    it_response_free(&r);
    return j;
}

static json_int_t turns_in_flight(void)
{
    int status;
    json_t *j = request("GET", "/status", NULL, &status);
    json_int_t n = json_integer_value(json_object_get(json_object_get(j, "chat"), "turns_in_flight"));
    json_decref(j);
    return n;
}

/* Sends a whole request on a fresh connection and returns the socket. */
static int send_request(const char *path, const char *body)
{
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    return fd;
}

#define N_CONV 40
#define N_AT_ONCE 10

struct leaver {
    const char *id;
    int n;
};

static void *leave_turn(void *arg)
{
    struct leaver *l = arg;
    char body[512];
    snprintf(body, sizeof body,
             "{\"conversation_id\":\"%s\",\"message\":\"bye %d\",\"stream\":%s,"
             "\"options\":{\"max_tokens\":%d,\"ignore_eos\":true}}",
             l->id, l->n, l->n % 2 ? "true" : "false", 1 + l->n % 4 * 10);
    int fd = send_request("/chat", body);
    sleep_ms(l->n % 7 * 3); /* gone at once or a few ms later, as a timed-out client is */
    close(fd);
    return NULL;
}

static void test_clients_leaving_parked_turns_release_them(void **state)
{
    char ids[N_CONV][37];
    for (int i = 0; i < N_CONV; i++) {
        int status;
        json_t *j = request("POST", "/chat", "{\"message\":\"hi\",\"options\":{\"max_tokens\":1}}", &status);
        assert_int_equal(status, 200);
        snprintf(ids[i], sizeof ids[i], "%s", json_string_value(json_object_get(j, "conversation_id")));
        json_decref(j);
    }
    /* More clients at once than the worker has slots, so that some turns
     * wait in its queue when their clients leave. */
    for (int k = 0; k < N_CONV; k += N_AT_ONCE) {
        pthread_t th[N_AT_ONCE];
        struct leaver l[N_AT_ONCE];
        for (int i = 0; i < N_AT_ONCE; i++) {
            l[i] = (struct leaver){ids[k + i], k + i};
            pthread_create(&th[i], NULL, leave_turn, &l[i]);
        }
        for (int i = 0; i < N_AT_ONCE; i++)
            pthread_join(th[i], NULL);
    }
    /* Every turn ends within a few decode steps once its client is gone. */
    json_int_t left = -1;
    for (int i = 0; i < 500 && (left = turns_in_flight()) != 0; i++)
        sleep_ms(20);
    if (left != 0)
        print_error("%lld turn(s) still hold their conversation 10 s after their clients left\n",
                    (long long)left);
    int busy = 0;
    for (int i = 0; i < N_CONV; i++) {
        char body[2048];
        snprintf(body, sizeof body,
                 "{\"conversation_id\":\"%s\",\"message\":\"back\",\"options\":{\"max_tokens\":1}}", ids[i]);
        int status;
        json_decref(request("POST", "/chat", body, &status));
        busy += status == 409;
    }
    if (busy)
        print_error("%d of %d conversations refuse every new turn (409 conversation_busy)\n", busy, N_CONV);
    assert_int_equal(left, 0);
    assert_int_equal(busy, 0);
}

/* A client that half-closes after its request (shutdown(SHUT_WR)) is taken
 * for one that left — libmicrohttpd itself closes a connection whose client
 * sent EOF, and nginx treats it the same (499) — so its generation stops
 * within a decode step; what it must never get is a 200 with a cut answer
 * reported as complete (finish_reason "stop"). */
static void test_half_close_is_a_hang_up_never_a_cut_success(void **state)
{
    int fd = send_request("/v1/chat/completions",
                          "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":"
                          "\"hi\"}],\"max_tokens\":2000,\"ignore_eos\":true}");
    shutdown(fd, SHUT_WR);
    struct it_response r;
    int got = it_read_response(fd, &r);
    close(fd);
    if (got == 0) {
        if (r.status == 200)
            fail_msg("a half-closed client got 200: %.200s", r.body);
        it_response_free(&r);
    }
    /* The slot is free at once, long before 2,000 tokens. */
    json_int_t left = -1;
    for (int i = 0; i < 200 && left != 0; i++) {
        json_t *m = it_status_model(srv.port, "tiny");
        left = m ? json_integer_value(json_object_get(m, "in_flight")) : -1;
        json_decref(m);
        if (left != 0)
            sleep_ms(20);
    }
    assert_int_equal(left, 0);
    int generated = it_trace_generated(srv.port, NULL);
    assert_true(generated >= 0 && generated < 500);
}

struct timed {
    const char *body;
    int status;
    double seconds;
    char code[64];
};

static void *timed_request(void *arg)
{
    struct timed *t = arg;
    int64_t t0 = lyra_now_us();
    json_t *j = request("POST", "/v1/chat/completions", t->body, &t->status);
    t->seconds = (double)(lyra_now_us() - t0) / 1e6;
    snprintf(t->code, sizeof t->code, "%s", it_error_code(j));
    json_decref(j);
    return NULL;
}

static void test_a_grammar_does_not_stall_other_users(void **state)
{
    /* Warm: the worker is loaded. */
    struct timed warm = {.body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                 "\"max_tokens\":1}"};
    timed_request(&warm);
    assert_int_equal(warm.status, 200);
    /* root ::= x*, x ::= "a" | "a" | ... (200 times): llama.cpp's grammar
     * keeps a stack per alternative and per repetition, so each sampled
     * token costs seconds to minutes. */
    static char body[4096];
    size_t n = (size_t)snprintf(body, sizeof body,
                                "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                "\"max_tokens\":2,\"grammar\":\"root ::= x*\\nx ::= \\\"a\\\"");
    for (int i = 1; i < 200; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, " | \\\"a\\\"");
    snprintf(body + n, sizeof body - n, "\"}");
    struct timed bad = {.body = body};
    pthread_t th;
    pthread_create(&th, NULL, timed_request, &bad);
    sleep_ms(500);
    struct timed other = {
        .body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"another user\"}],"
                "\"max_tokens\":3}"};
    timed_request(&other);
    pthread_join(th, NULL);
    print_message("grammar request: %d %s in %.1f s; another user's 3 tokens: %d %s in %.1f s\n", bad.status,
                  bad.code, bad.seconds, other.status, other.code, other.seconds);
    assert_int_equal(other.status, 200);
    assert_true(other.seconds < 2.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clients_leaving_parked_turns_release_them),
        cmocka_unit_test(test_half_close_is_a_hang_up_never_a_cut_success),
        cmocka_unit_test(test_a_grammar_does_not_stall_other_users),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
