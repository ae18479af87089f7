/* it_http.c — the real `lyra serve` over loopback: endpoints, request ids,
 * JSON errors with the right status, limits, CORS, slow clients. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static struct it_server srv;

static int setup(void **state)
{
    static const char *const env[] = {"LYRA_SERVER_CORS_ORIGINS=http://allowed.example",
                                      "LYRA_SERVER_MAX_BODY_BYTES=4096", "LYRA_SERVER_MAX_HEADER_BYTES=8192",
                                      "LYRA_SERVER_IDLE_TIMEOUT_S=2", "LYRA_LOG_FORMAT=json", NULL};
    return it_server_start(&srv, NULL, NULL, env);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    return rc == 0 ? 0 : -1;
}

static json_t *get_json(const char *path, int want_status)
{
    json_t *j = it_get_json(srv.port, path, want_status);
    assert_non_null(j);
    return j;
}

/* Asserts an error body {"error":{"code":code,"message":...}} and returns
 * the message (valid while j lives). */
static const char *assert_error(json_t *j, const char *code)
{
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    return msg;
}

static void test_root(void **state)
{
    json_t *j = get_json("/", 200);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "Lyra");
    assert_non_null(json_string_value(json_object_get(j, "version")));
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ready");
    assert_int_equal(strlen(json_string_value(json_object_get(j, "session_id"))), 36);
    assert_true(json_is_number(json_object_get(j, "uptime_s")));
    json_decref(j);
}

static void test_health_and_ready(void **state)
{
    json_t *j = get_json("/health", 200);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    j = get_json("/health/ready", 200);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ready");
    json_decref(j);
}

static void test_status(void **state)
{
    json_t *j = get_json("/status", 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "process"), "pid")), srv.pid);
    assert_true(json_integer_value(json_object_get(json_object_get(j, "process"), "rss_bytes")) > 0);
    assert_true(json_is_number(json_object_get(json_object_get(j, "process"), "cpu_percent")));
    json_t *mem = json_object_get(j, "memory");
    assert_true(json_integer_value(json_object_get(mem, "total_bytes")) >=
                json_integer_value(json_object_get(mem, "available_bytes")));
    assert_true(json_integer_value(json_object_get(mem, "available_bytes")) > 0);
    assert_int_equal(strlen(json_string_value(json_object_get(json_object_get(j, "session"), "id"))), 36);
    json_decref(j);
}

static void test_request_id(void **state)
{
    struct it_response r;
    char buf[256];
    assert_int_equal(it_http(srv.port, "GET", "/health", "X-Request-Id: my-trace-42\r\n", NULL, &r), 0);
    assert_string_equal(it_header(&r, "X-Request-Id", buf, sizeof buf), "my-trace-42");
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/nope", NULL, NULL, &r), 0);
    assert_non_null(it_header(&r, "X-Request-Id", buf, sizeof buf));
    assert_int_equal(strlen(buf), 32); /* generated: 16 random bytes in hex */
    it_response_free(&r);
}

static void test_not_found_and_method(void **state)
{
    json_t *j = get_json("/no/such/thing", 404);
    assert_error(j, "not_found");
    json_decref(j);

    struct it_response r;
    char buf[128];
    assert_int_equal(it_http(srv.port, "DELETE", "/health", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 405);
    assert_string_equal(it_header(&r, "Allow", buf, sizeof buf), "GET");
    j = it_json(&r);
    assert_error(j, "method_not_allowed");
    json_decref(j);
    it_response_free(&r);
}

static void post_expect(const char *headers, const char *body, int status, const char *code, const char *in_msg)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", "/events", headers, body, &r), 0);
    assert_int_equal(r.status, status);
    json_t *j = it_json(&r);
    assert_non_null(j);
    if (code) {
        const char *msg = assert_error(j, code);
        if (in_msg && !strstr(msg, in_msg))
            fail_msg("message '%s' lacks '%s'", msg, in_msg);
    }
    json_decref(j);
    it_response_free(&r);
}

static void test_json_errors(void **state)
{
    const char *ct = "Content-Type: application/json\r\n";
    post_expect(ct, "{\"type\": \"custom.a\", ", 400, "invalid_json", "line 1, column");
    post_expect(ct, "{\"type\": \"custom.a\"}", 201, NULL, NULL);
    post_expect("Content-Type: text/plain\r\n", "{}", 415, "unsupported_media_type", "text/plain");
    post_expect(NULL, "{}", 415, "unsupported_media_type", NULL);
    post_expect(ct, "{\"type\": \"system.startup\"}", 400, "invalid_field", "custom.");
    post_expect(ct, "{\"type\": \"custom.x\", \"data\": 5}", 400, "invalid_field", "data");
    post_expect(ct, "{\"type\": \"custom.a\", \"type\": \"custom.b\"}", 400, "invalid_json", "duplicate");
}

static void test_invalid_utf8(void **state)
{
    const char body[] = "{\"type\": \"custom.a\", \"data\": {\"x\": \"\xc3\x28\"}}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    struct it_response r;
    assert_int_equal(it_raw(srv.port, req, (size_t)n, &r), 0);
    assert_int_equal(r.status, 400);
    json_t *j = it_json(&r);
    assert_error(j, "invalid_utf8");
    json_decref(j);
    it_response_free(&r);
}

static void test_body_limit(void **state)
{
    /* Declared too large: refused before the body is read. */
    const char head[] = "POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
                        "Content-Length: 999999\r\n\r\n";
    struct it_response r;
    assert_int_equal(it_raw(srv.port, head, sizeof head - 1, &r), 0);
    assert_int_equal(r.status, 413);
    json_t *j = it_json(&r);
    assert_error(j, "body_too_large");
    json_decref(j);
    it_response_free(&r);

    /* Chunked, no length: cut off once past the limit. */
    size_t big = 10000;
    char *req = malloc(big + 512);
    int n = sprintf(req, "POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n%zx\r\n",
                    big);
    memset(req + n, 'a', big);
    n += (int)big;
    n += sprintf(req + n, "\r\n0\r\n\r\n");
    assert_int_equal(it_raw(srv.port, req, (size_t)n, &r), 0);
    assert_int_equal(r.status, 413);
    it_response_free(&r);
    free(req);

    /* The server goes on serving. */
    json_decref(get_json("/health", 200));
}

static void test_header_limit(void **state)
{
    /* 400 headers of ~24 bytes: over the 8 KiB limit, answered as JSON. */
    size_t cap = 64 * 1024;
    char *req = malloc(cap);
    int n = sprintf(req, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (int i = 0; i < 400; i++)
        n += sprintf(req + n, "X-Filler-%04d: abcdefgh\r\n", i);
    n += sprintf(req + n, "\r\n");
    struct it_response r;
    assert_int_equal(it_raw(srv.port, req, (size_t)n, &r), 0);
    assert_int_equal(r.status, 431);
    json_t *j = it_json(&r);
    assert_error(j, "headers_too_large");
    json_decref(j);
    it_response_free(&r);

    /* 1000 of them no longer fit the connection's memory: libmicrohttpd's
     * own 431 (the pool is kept small: libmicrohttpd clears it for every
     * request, and at 8x the header limit that was a third of /health's
     * time). */
    n = sprintf(req, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (int i = 0; i < 1000; i++)
        n += sprintf(req + n, "X-Filler-%04d: abcdefgh\r\n", i);
    n += sprintf(req + n, "\r\n");
    assert_int_equal(it_raw(srv.port, req, (size_t)n, &r), 0);
    assert_int_equal(r.status, 431);
    it_response_free(&r);

    /* Far beyond the connection's memory: still 431, and still serving. */
    free(req);
    cap = 600 * 1024; /* 10000 lines of 44 bytes */
    req = malloc(cap);
    n = sprintf(req, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (int i = 0; i < 10000; i++)
        n += sprintf(req + n, "X-Filler-%05d: abcdefghijklmnopqrstuvwxyz\r\n", i);
    n += sprintf(req + n, "\r\n");
    int rc = it_raw(srv.port, req, (size_t)n, &r);
    if (rc == 0)
        assert_int_equal(r.status, 431);
    it_response_free(&r);
    free(req);
    json_decref(get_json("/health", 200));
}

static void test_cors(void **state)
{
    struct it_response r;
    char buf[256];
    const char *pre = "Origin: http://allowed.example\r\nAccess-Control-Request-Method: POST\r\n"
                      "Access-Control-Request-Headers: content-type\r\n";
    assert_int_equal(it_http(srv.port, "OPTIONS", "/events", pre, NULL, &r), 0);
    assert_int_equal(r.status, 204);
    assert_string_equal(it_header(&r, "Access-Control-Allow-Origin", buf, sizeof buf), "http://allowed.example");
    assert_non_null(strstr(it_header(&r, "Access-Control-Allow-Methods", buf, sizeof buf), "POST"));
    /* A fixed list (never an echo of what was asked), with Authorization
     * so that a page may send its key; the origin is listed by name, so
     * credentials are allowed, and the answer varies with Origin. */
    const char *allow_headers = it_header(&r, "Access-Control-Allow-Headers", buf, sizeof buf);
    assert_non_null(allow_headers);
    assert_non_null(strcasestr(allow_headers, "content-type"));
    assert_non_null(strcasestr(allow_headers, "authorization"));
    assert_string_equal(it_header(&r, "Access-Control-Allow-Credentials", buf, sizeof buf), "true");
    assert_non_null(strstr(it_header(&r, "Vary", buf, sizeof buf), "Origin"));
    it_response_free(&r);

    assert_int_equal(it_http(srv.port, "OPTIONS", "/events",
                             "Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n", NULL, &r),
                     0);
    assert_int_equal(r.status, 403);
    assert_null(it_header(&r, "Access-Control-Allow-Origin", buf, sizeof buf));
    it_response_free(&r);

    assert_int_equal(it_http(srv.port, "GET", "/health", "Origin: http://allowed.example\r\n", NULL, &r), 0);
    assert_string_equal(it_header(&r, "Access-Control-Allow-Origin", buf, sizeof buf), "http://allowed.example");
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/health", "Origin: http://evil.example\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(it_header(&r, "Access-Control-Allow-Origin", buf, sizeof buf));
    it_response_free(&r);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_slow_clients(void **state)
{
    /* A client sending its request one byte a second does not hold up
     * others, and an idle connection is closed after idle_timeout_s (2). */
    int slow = it_connect(srv.port);
    int idle = it_connect(srv.port);
    assert_true(slow >= 0 && idle >= 0);
    const char *req = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    for (int i = 0; i < 4; i++) {
        assert_int_equal(send(slow, req + i, 1, MSG_NOSIGNAL), 1);
        for (int k = 0; k < 3; k++)
            json_decref(get_json("/health", 200)); /* others are served meanwhile */
        sleep_ms(1000);
    }
    char c;
    ssize_t got = recv(idle, &c, 1, MSG_DONTWAIT);
    assert_int_equal(got, 0); /* idle for 4 s: closed by the server */
    close(idle);
    /* The slow one was never idle that long: it is still served once done. */
    size_t rest = strlen(req) - 4;
    assert_int_equal(send(slow, req + 4, rest, MSG_NOSIGNAL), (ssize_t)rest);
    struct it_response r;
    assert_int_equal(it_read_response(slow, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    close(slow);
}

static void test_events_recent(void **state)
{
    json_t *j = get_json("/events/recent?types=system.*", 200);
    json_t *events = json_object_get(j, "events");
    assert_true(json_array_size(events) >= 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(events, 0), "type")), "system.startup");
    json_decref(j);
    j = get_json("/events/recent?since=abc", 400);
    assert_error(j, "invalid_parameter");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root),         cmocka_unit_test(test_health_and_ready),
        cmocka_unit_test(test_status),       cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_not_found_and_method), cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_invalid_utf8), cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_header_limit), cmocka_unit_test(test_cors),
        cmocka_unit_test(test_slow_clients), cmocka_unit_test(test_events_recent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
