/* test_http.c — the HTTP layer in-process with its own routes: parked
 * requests answered from another thread, streamed bodies, a client that
 * leaves mid-stream, route parameters. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "http/http.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* --- a parked request woken by another thread ----------------------- */

static void parked_resume(struct lyra_http_req *req, void *ud)
{
    lyra_http_send_json(req, 202, json_pack("{s:s}", "answered_by", (const char *)ud));
}

static void *wake_later(void *arg)
{
    sleep_ms(getenv("PARK_MS") ? atoi(getenv("PARK_MS")) : 100);
    lyra_http_wake(arg);
    return NULL;
}

static void h_park(struct lyra_http_req *req, void *ctx)
{
    lyra_http_park(req, parked_resume, NULL, NULL, "worker");
    pthread_t t;
    pthread_create(&t, NULL, wake_later, req);
    pthread_detach(t);
}

/* --- a stream fed by another thread --------------------------------- */

struct feeder {
    int tag;
    struct lyra_http_stream *st;
    int n;
    int delay_ms;
    int write_failed_at; /* -1 if every write succeeded */
    int rc;              /* the failed write's result */
    int chunk;           /* bytes per write beyond the line (query "pad") */
};

static pthread_mutex_t feed_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t feed_done = PTHREAD_COND_INITIALIZER;
static struct feeder last_feed;
static bool feed_finished;

static void *feed(void *arg)
{
    struct feeder *f = arg;
    f->write_failed_at = -1;
    char *line = malloc((size_t)f->chunk + 64);
    for (int i = 1; i < f->n; i++) {
        int len = snprintf(line, 64, "data: %d\n\n", i);
        memset(line + len, ' ', (size_t)f->chunk);
        int rc = lyra_http_stream_write(f->st, line, (size_t)len + (size_t)f->chunk);
        if (rc != 0) {
            f->write_failed_at = i;
            f->rc = rc;
            break;
        }
        if (f->delay_ms)
            sleep_ms(f->delay_ms);
    }
    free(line);
    lyra_http_stream_close(f->st);
    pthread_mutex_lock(&feed_lock);
    if (f->tag >= 7) { /* only the client-leaves and slow-client tests' feeders report */
        last_feed = *f;
        feed_finished = true;
    }
    pthread_cond_broadcast(&feed_done);
    pthread_mutex_unlock(&feed_lock);
    free(f);
    return NULL;
}

static void h_stream(struct lyra_http_req *req, void *ctx)
{
    const char *n = lyra_http_query(req, "n");
    const char *d = lyra_http_query(req, "delay");
    struct feeder *f = calloc(1, sizeof *f);
    const char *tag = lyra_http_query(req, "tag");
    f->tag = tag ? atoi(tag) : 0;
    f->n = n ? atoi(n) : 5;
    f->delay_ms = d ? atoi(d) : 5;
    const char *pad = lyra_http_query(req, "pad");
    f->chunk = pad ? atoi(pad) : 0;
    f->st = lyra_http_send_stream(req, 200, "text/event-stream", "data: 0\n\n", 9, NULL, NULL);
    assert_non_null(f->st);
    pthread_t t;
    pthread_create(&t, NULL, feed, f);
    pthread_detach(t);
}

static void h_item(struct lyra_http_req *req, void *ctx)
{
    lyra_http_send_json(req, 200, json_pack("{s:s, s:s}", "kind", lyra_http_param(req, "kind"), "id",
                                            lyra_http_param(req, "id")));
}

static const struct lyra_route routes[] = {
    {"GET", "/park", h_park, ""},
    {"GET", "/stream", h_stream, ""},
    {"GET", "/items/{kind}/{id}", h_item, ""},
};

static struct lyra_http *http;

static int setup(void **state)
{
    struct lyra_http_options opts = {.host = "127.0.0.1", .port = 0, .threads = 2, .max_body_bytes = 1024,
                                     .max_header_bytes = 8192, .idle_timeout_s = 10, .max_connections = 64};
    struct lyra_err err = {0};
    http = lyra_http_new(&opts, routes, sizeof routes / sizeof *routes, NULL, &err);
    if (!http || lyra_http_start(http, &err) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    lyra_http_free(http);
    return 0;
}

static void test_parked_request(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/park", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 202);
    assert_non_null(strstr(r.body, "\"answered_by\":\"worker\""));
    it_response_free(&r);
}

static void test_stream_complete(void **state)
{
    feed_finished = false;
    struct it_response r;
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/stream?n=20&delay=2", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char buf[64];
    assert_string_equal(it_header(&r, "Content-Type", buf, sizeof buf), "text/event-stream");
    for (int i = 0; i < 20; i++) {
        char want[32];
        snprintf(want, sizeof want, "data: %d\n\n", i);
        assert_non_null(strstr(r.body, want));
    }
    it_response_free(&r);
}

static void test_stream_client_leaves(void **state)
{
    feed_finished = false;
    int fd = it_connect(lyra_http_port(http));
    const char req[] = "GET /stream?n=1000&delay=5&tag=7 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    char buf[256];
    assert_true(read(fd, buf, sizeof buf) > 0); /* the stream started */
    close(fd);
    /* The producer learns that the client left, well before 1000 writes. */
    pthread_mutex_lock(&feed_lock);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    while (!feed_finished)
        if (pthread_cond_timedwait(&feed_done, &feed_lock, &deadline) != 0)
            break;
    bool finished = feed_finished;
    int failed_at = last_feed.write_failed_at;
    pthread_mutex_unlock(&feed_lock);
    assert_true(finished);
    if (!(failed_at >= 0 && failed_at < 1000))
        fail_msg("write_failed_at = %d", failed_at);
}

/* A client that reads nothing: the stream holds at most
 * LYRA_HTTP_STREAM_MAX_QUEUED bytes for it, then refuses writes (the
 * producer stops) instead of holding the whole answer. */
static void test_stream_for_a_client_that_never_reads_is_capped(void **state)
{
    feed_finished = false;
    int fd = it_connect(lyra_http_port(http));
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const char req[] = "GET /stream?n=400&delay=0&tag=8&pad=65536 HTTP/1.1\r\nHost: x\r\n\r\n"; /* 26 MB */
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    pthread_mutex_lock(&feed_lock);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    while (!feed_finished)
        if (pthread_cond_timedwait(&feed_done, &feed_lock, &deadline) != 0)
            break;
    bool finished = feed_finished;
    struct feeder f = last_feed;
    pthread_mutex_unlock(&feed_lock);
    close(fd);
    assert_true(finished);
    assert_int_equal(f.rc, LYRA_ETOOBIG);
    /* refused once about 4 MiB (plus what the sockets hold) waited */
    assert_true(f.write_failed_at > 16 && f.write_failed_at < 200);
}

static void test_route_params(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model/tiny", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"kind\":\"model\""));
    assert_non_null(strstr(r.body, "\"id\":\"tiny\""));
    it_response_free(&r);
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model/tiny/extra", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parked_request),
        cmocka_unit_test(test_stream_complete),
        cmocka_unit_test(test_stream_client_leaves),
        cmocka_unit_test(test_stream_for_a_client_that_never_reads_is_capped),
        cmocka_unit_test(test_route_params),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
