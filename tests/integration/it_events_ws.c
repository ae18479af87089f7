/* it_events_ws.c — the live event stream against the real daemon, with a
 * raw-socket WebSocket client (so that bad frames can be sent on purpose)
 * and a raw SSE reader: live events, ?since replay, reconnect without loss
 * or duplicate, the types filter, 400s before the upgrade, close codes for
 * unmasked (1002) and oversized (1009) frames, ping/pong keepalive and the
 * close of a client that does not pong, SIGTERM → 1001, SSE with
 * Last-Event-ID, and a client that never reads: it gets a stream.gap while
 * POST /events stays fast. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
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
/* Short keepalive timings and a small subscription queue, so that pings,
 * pong deadlines and gaps show within a test. */
static const char *const daemon_env[] = {"LYRA_LOG_LEVEL=warn", "LYRA_EVENTS_WS_PING_MS=300",
                                         "LYRA_EVENTS_WS_PONG_TIMEOUT_MS=400", "LYRA_EVENTS_SSE_PING_MS=300",
                                         "LYRA_EVENTS_CLIENT_QUEUE=64", NULL};

static int setup(void **state)
{
    if (it_server_start(&srv, NULL, NULL, daemon_env) == 0)
        return 0;
    char *log = lyra_read_file(srv.log_path, NULL);
    fprintf(stderr, "lyra serve did not start (status %d): %s\n", srv.exit_status, log ? log : "");
    free(log);
    return -1;
}

static int teardown(void **state)
{
    int rc = srv.pid > 0 ? it_server_stop(&srv, SIGTERM) : 0;
    it_server_cleanup(&srv);
    return rc == 0 ? 0 : -1;
}

/* --- a minimal WebSocket client --------------------------------------- */

struct ws {
    int fd;
    char buf[1 << 16];
    size_t len;
};

struct frame {
    int opcode;
    char *data; /* NUL-terminated, caller frees */
    size_t len;
};

/* Connects and sends the handshake for `query` ("?since=3"); returns the
 * HTTP status of the answer (101 on success), with the socket open. */
static int ws_open_ex(struct ws *w, const char *query, const char *extra_headers, int rcvbuf)
{
    memset(w, 0, sizeof *w);
    w->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0)
        setsockopt(w->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)srv.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(w->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -1;
    int one = 1;
    setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET /events/ws%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n",
                     query ? query : "",
                     extra_headers ? extra_headers : "Sec-WebSocket-Version: 13\r\n");
    if (send(w->fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return -1;
    /* Headers, byte by byte up to the blank line: frames may follow. */
    char head[4096];
    size_t hl = 0;
    while (hl < sizeof head - 1) {
        struct pollfd p = {w->fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0 || recv(w->fd, head + hl, 1, 0) != 1)
            return -1;
        hl++;
        if (hl >= 4 && memcmp(head + hl - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    head[hl] = '\0';
    int status = 0;
    sscanf(head, "HTTP/1.1 %d", &status);
    if (status == 101) {
        assert_non_null(strcasestr(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_non_null(strcasestr(head, "Upgrade: websocket"));
    }
    return status;
}

static void ws_open(struct ws *w, const char *query)
{
    assert_int_equal(ws_open_ex(w, query, NULL, 0), 101);
}

/* Reads one frame within timeout_ms: 0, or -1 on timeout / EOF. */
static int ws_read(struct ws *w, struct frame *f, int timeout_ms)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    for (;;) {
        if (w->len >= 2) {
            size_t hl = 2;
            uint64_t pl = w->buf[1] & 0x7f;
            if (pl == 126) {
                hl = 4;
                if (w->len >= 4)
                    pl = (uint64_t)(uint8_t)w->buf[2] << 8 | (uint8_t)w->buf[3];
            } else if (pl == 127) {
                hl = 10;
                if (w->len >= 10) {
                    pl = 0;
                    for (int i = 0; i < 8; i++)
                        pl = pl << 8 | (uint8_t)w->buf[2 + i];
                }
            }
            assert_false(w->buf[1] & 0x80); /* server frames are never masked */
            if (w->len >= hl && w->len >= hl + pl) {
                f->opcode = w->buf[0] & 0x0f;
                f->len = (size_t)pl;
                f->data = malloc(f->len + 1);
                memcpy(f->data, w->buf + hl, f->len);
                f->data[f->len] = '\0';
                memmove(w->buf, w->buf + hl + pl, w->len - hl - pl);
                w->len -= hl + pl;
                return 0;
            }
        }
        int left = (int)(deadline - lyra_now_ms());
        struct pollfd p = {w->fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        ssize_t r = recv(w->fd, w->buf + w->len, sizeof w->buf - w->len, 0);
        if (r <= 0)
            return -1;
        w->len += (size_t)r;
    }
}

/* Sends a frame, masked unless `unmasked`. */
static void ws_send(struct ws *w, int opcode, const void *data, size_t len, bool unmasked)
{
    size_t cap = len + 14;
    uint8_t *b = malloc(cap), *p = b;
    *p++ = (uint8_t)(0x80 | opcode);
    uint8_t m = unmasked ? 0 : 0x80;
    if (len < 126) {
        *p++ = (uint8_t)(m | len);
    } else if (len < 65536) {
        *p++ = m | 126;
        *p++ = (uint8_t)(len >> 8);
        *p++ = (uint8_t)len;
    } else {
        *p++ = m | 127;
        for (int i = 7; i >= 0; i--)
            *p++ = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    if (!unmasked) {
        memcpy(p, key, 4);
        p += 4;
    }
    for (size_t i = 0; i < len; i++)
        p[i] = ((const uint8_t *)data)[i] ^ (unmasked ? 0 : key[i % 4]);
    p += len;
    size_t n = (size_t)(p - b), off = 0;
    while (off < n) {
        ssize_t s = send(w->fd, b + off, n - off, MSG_NOSIGNAL);
        if (s <= 0)
            break;
        off += (size_t)s;
    }
    free(b);
}

/* The next text frame (answering pings on the way); its JSON, or NULL. */
static json_t *ws_next_event(struct ws *w, int timeout_ms)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    for (;;) {
        struct frame f;
        int left = (int)(deadline - lyra_now_ms());
        if (left <= 0 || ws_read(w, &f, left) < 0)
            return NULL;
        if (f.opcode == 0x9) {
            ws_send(w, 0xA, f.data, f.len, false);
        } else if (f.opcode == 0x1) {
            json_t *j = json_loads(f.data, 0, NULL);
            free(f.data);
            return j;
        } else if (f.opcode == 0x8) {
            free(f.data);
            return NULL;
        }
        free(f.data);
    }
}

/* Reads until a close frame; returns its code (-1 none within timeout). */
static int ws_close_code(struct ws *w, int timeout_ms, char *reason, size_t rlen)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    for (;;) {
        struct frame f;
        int left = (int)(deadline - lyra_now_ms());
        if (left <= 0 || ws_read(w, &f, left) < 0)
            return -1;
        if (f.opcode == 0x8) {
            int code = f.len >= 2 ? ((uint8_t)f.data[0] << 8 | (uint8_t)f.data[1]) : 1005;
            if (reason)
                snprintf(reason, rlen, "%s", f.len > 2 ? f.data + 2 : "");
            free(f.data);
            return code;
        }
        free(f.data);
    }
}

/* True when the server closed the TCP connection within timeout_ms. */
static bool ws_eof(struct ws *w, int timeout_ms)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    char b[4096];
    for (;;) {
        int left = (int)(deadline - lyra_now_ms());
        struct pollfd p = {w->fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return false;
        ssize_t r = recv(w->fd, b, sizeof b, 0);
        if (r <= 0)
            return true;
    }
}

static void ws_close(struct ws *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
}

static uint64_t publish(const char *type, const char *data_json)
{
    size_t cap = (data_json ? strlen(data_json) : 2) + 128;
    char *body = malloc(cap);
    snprintf(body, cap, "{\"type\":\"%s\",\"data\":%s}", type, data_json ? data_json : "{}");
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/events", body, &r), 0);
    free(body);
    assert_int_equal(r.status, 201);
    json_t *j = it_json(&r);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(j, "seq"));
    json_decref(j);
    it_response_free(&r);
    return seq;
}

static uint64_t seq_of(json_t *ev)
{
    return (uint64_t)json_integer_value(json_object_get(ev, "seq"));
}

static const char *type_of(json_t *ev)
{
    return json_string_value(json_object_get(ev, "type"));
}

/* --- tests ------------------------------------------------------------ */

static void test_live_event_arrives(void **state)
{
    struct ws w;
    ws_open(&w, "?types=custom.*");
    /* The subscription is made on the loop right after the upgrade: an
     * event published now may or may not be before it, so publish until
     * one arrives, then check the next one is exactly what follows. */
    json_t *ev = NULL;
    for (int i = 0; i < 50 && !ev; i++) {
        publish("custom.live", "{\"n\":1}");
        ev = ws_next_event(&w, 100);
    }
    assert_non_null(ev);
    assert_string_equal(type_of(ev), "custom.live");
    json_decref(ev);
    while ((ev = ws_next_event(&w, 200))) /* the rest of the burst */
        json_decref(ev);
    uint64_t seq = publish("custom.live", "{\"n\":2}");
    ev = ws_next_event(&w, 2000);
    assert_non_null(ev);
    assert_int_equal(seq_of(ev), seq);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "n")), 2);
    assert_string_equal(json_string_value(json_object_get(ev, "source")), "api");
    json_decref(ev);
    ws_close(&w);
}

static void test_since_replays_exactly_the_missed(void **state)
{
    uint64_t first = publish("custom.since", "{\"i\":0}");
    uint64_t seqs[5];
    for (int i = 0; i < 5; i++)
        seqs[i] = publish("custom.since", "{}");
    char q[64];
    snprintf(q, sizeof q, "?since=%llu&types=custom.since", (unsigned long long)first);
    struct ws w;
    ws_open(&w, q);
    for (int i = 0; i < 5; i++) {
        json_t *ev = ws_next_event(&w, 2000);
        assert_non_null(ev);
        assert_int_equal(seq_of(ev), seqs[i]);
        json_decref(ev);
    }
    json_t *extra = ws_next_event(&w, 300);
    assert_null(extra); /* nothing more, and not the event at `since` */
    ws_close(&w);
}

static void test_reconnect_gets_every_event_in_order(void **state)
{
    uint64_t base = publish("custom.rc", "{}");
    char q[64];
    snprintf(q, sizeof q, "?since=%llu&types=custom.rc", (unsigned long long)base);
    struct ws w;
    ws_open(&w, q);
    uint64_t pub[40];
    for (int i = 0; i < 20; i++)
        pub[i] = publish("custom.rc", "{}");
    uint64_t last = base;
    for (int i = 0; i < 10; i++) { /* read half, then drop */
        json_t *ev = ws_next_event(&w, 2000);
        assert_non_null(ev);
        assert_int_equal(seq_of(ev), pub[i]);
        last = seq_of(ev);
        json_decref(ev);
    }
    ws_close(&w);
    for (int i = 20; i < 40; i++)
        pub[i] = publish("custom.rc", "{}");
    snprintf(q, sizeof q, "?since=%llu&types=custom.rc", (unsigned long long)last);
    ws_open(&w, q);
    for (int i = 10; i < 40; i++) {
        json_t *ev = ws_next_event(&w, 2000);
        assert_non_null(ev);
        assert_int_equal(seq_of(ev), pub[i]); /* in order, no duplicate, none lost */
        json_decref(ev);
    }
    assert_null(ws_next_event(&w, 300));
    ws_close(&w);
}

static void test_types_filter(void **state)
{
    uint64_t base = publish("custom.other", "{}");
    char q[96];
    snprintf(q, sizeof q, "?since=%llu&types=custom.want.*,custom.exact", (unsigned long long)base);
    struct ws w;
    ws_open(&w, q);
    publish("custom.other", "{}");
    uint64_t a = publish("custom.want.x", "{}");
    publish("custom.exactly", "{}");
    uint64_t b = publish("custom.exact", "{}");
    json_t *ev = ws_next_event(&w, 2000);
    assert_non_null(ev);
    assert_int_equal(seq_of(ev), a);
    json_decref(ev);
    ev = ws_next_event(&w, 2000);
    assert_non_null(ev);
    assert_int_equal(seq_of(ev), b);
    json_decref(ev);
    assert_null(ws_next_event(&w, 300));
    ws_close(&w);
}

static void test_bad_parameters_are_400_before_upgrade(void **state)
{
    struct ws w;
    assert_int_equal(ws_open_ex(&w, "?since=abc", NULL, 0), 400);
    ws_close(&w);
    assert_int_equal(ws_open_ex(&w, "?since=-1", NULL, 0), 400);
    ws_close(&w);
    assert_int_equal(ws_open_ex(&w, "?types=model.*x", NULL, 0), 400);
    ws_close(&w);
    assert_int_equal(ws_open_ex(&w, "?types=a,,b", NULL, 0), 400);
    ws_close(&w);
    assert_int_equal(ws_open_ex(&w, "", "Sec-WebSocket-Version: 8\r\n", 0), 426);
    ws_close(&w);
    /* Not a handshake at all. */
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/events/ws", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 400);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/events?since=x", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 400);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/events?types=%21", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 400);
    it_response_free(&r);
}

static void test_unmasked_frame_closes_1002(void **state)
{
    struct ws w;
    ws_open(&w, "?types=custom.none");
    ws_send(&w, 0x1, "hello", 5, true);
    assert_int_equal(ws_close_code(&w, 3000, NULL, 0), 1002);
    assert_true(ws_eof(&w, 3000));
    ws_close(&w);
}

/* Control frames over 125 bytes or fragmented are malformed: the client is
 * told with a close frame (wslay queues it without a status code), not just
 * cut off. */
static void test_malformed_control_frame_gets_a_close(void **state)
{
    struct ws w;
    ws_open(&w, "?types=custom.none");
    char big[126];
    memset(big, 'p', sizeof big);
    ws_send(&w, 0x9, big, sizeof big, false);
    int code = ws_close_code(&w, 3000, NULL, 0);
    assert_true(code == 1002 || code == 1005);
    assert_true(ws_eof(&w, 3000));
    ws_close(&w);
}

static void test_oversized_frame_closes_1009(void **state)
{
    struct ws w;
    ws_open(&w, "?types=custom.none");
    size_t n = 70000; /* over the 64 KiB limit */
    char *big = malloc(n);
    memset(big, 'a', n);
    ws_send(&w, 0x1, big, n, false);
    free(big);
    assert_int_equal(ws_close_code(&w, 3000, NULL, 0), 1009);
    ws_close(&w);
    /* A text message within the limit is ignored: the stream goes on. */
    ws_open(&w, "?types=custom.ok");
    ws_send(&w, 0x1, "hi", 2, false);
    uint64_t s = 0;
    json_t *ev = NULL;
    for (int i = 0; i < 50 && !ev; i++) {
        s = publish("custom.ok", "{}");
        ev = ws_next_event(&w, 100);
    }
    assert_non_null(ev);
    assert_true(seq_of(ev) <= s);
    json_decref(ev);
    ws_close(&w);
}

static void test_ping_pong(void **state)
{
    /* A client that answers pings stays (ping every 300 ms, deadline
     * 400 ms): after 2 s it still gets events. */
    struct ws w;
    ws_open(&w, "?types=custom.pp");
    int pings = 0;
    int64_t end = lyra_now_ms() + 2000;
    while (lyra_now_ms() < end) {
        struct frame f;
        if (ws_read(&w, &f, 100) == 0) {
            assert_int_not_equal(f.opcode, 0x8);
            if (f.opcode == 0x9) {
                pings++;
                ws_send(&w, 0xA, f.data, f.len, false);
            }
            free(f.data);
        }
    }
    assert_true(pings >= 3);
    uint64_t s = publish("custom.pp", "{}");
    json_t *ev = ws_next_event(&w, 2000);
    assert_non_null(ev);
    assert_int_equal(seq_of(ev), s);
    json_decref(ev);
    ws_close(&w);

    /* One that does not pong is closed with 1001 after the deadline. */
    ws_open(&w, "?types=custom.pp");
    char reason[64] = "";
    int64_t t0 = lyra_now_ms();
    assert_int_equal(ws_close_code(&w, 3000, reason, sizeof reason), 1001);
    assert_true(lyra_now_ms() - t0 >= 600); /* the first ping at 300 ms, its deadline 400 ms later */
    assert_string_equal(reason, "no pong");
    ws_close(&w);
}

/* Reads SSE text until `count` events were seen or timeout; appends their
 * ids to ids[]. */
static int sse_read(int fd, uint64_t *ids, int count, int timeout_ms, char *all, size_t all_len)
{
    int got = 0;
    size_t n = strlen(all);
    int64_t deadline = lyra_now_ms() + timeout_ms;
    while (got < count) {
        int left = (int)(deadline - lyra_now_ms());
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        ssize_t r = recv(fd, all + n, all_len - n - 1, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        all[n] = '\0';
        got = 0;
        for (char *s = all; (s = strstr(s, "\nid: ")); s++)
            if (got < count)
                ids[got++] = strtoull(s + 5, NULL, 10);
    }
    return got;
}

static void test_sse_with_last_event_id(void **state)
{
    uint64_t base = publish("custom.sse", "{}");
    uint64_t pub[3];
    for (int i = 0; i < 3; i++)
        pub[i] = publish("custom.sse", "{\"k\":\"v\"}");
    int fd = it_connect(srv.port);
    char req[512];
    /* Last-Event-ID wins over ?since (a browser reconnects with both). */
    int n = snprintf(req, sizeof req,
                     "GET /events?since=0&types=custom.sse HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: %llu\r\n\r\n",
                     (unsigned long long)base);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    static char all[1 << 16];
    all[0] = '\0';
    uint64_t ids[4];
    assert_int_equal(sse_read(fd, ids, 3, 3000, all, sizeof all), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ids[i], pub[i]);
    assert_non_null(strstr(all, "Content-Type: text/event-stream"));
    assert_non_null(strstr(all, "event: custom.sse\ndata: {"));
    assert_non_null(strstr(all, "\"k\":\"v\""));
    /* then live, and pings */
    uint64_t live = publish("custom.sse", "{}");
    assert_int_equal(sse_read(fd, ids, 4, 3000, all, sizeof all), 4);
    assert_int_equal(ids[3], live);
    int64_t end = lyra_now_ms() + 700;
    while (lyra_now_ms() < end)
        sse_read(fd, ids, 5, 100, all, sizeof all);
    assert_non_null(strstr(all, ": ping\n\n"));
    close(fd);
}

static void test_slow_client_gets_gap_publisher_not_blocked(void **state)
{
    /* A daemon of its own with the default keepalive: a stalled client
     * cannot pong, and would be closed (rightly) before it reads. */
    struct it_server keep = srv;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", "LYRA_EVENTS_CLIENT_QUEUE=64", NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    uint64_t base = publish("custom.slow", "{}");
    char q[64];
    snprintf(q, sizeof q, "?since=%llu&types=custom.slow", (unsigned long long)base);
    struct ws w;
    assert_int_equal(ws_open_ex(&w, q, NULL, 4096), 101); /* a small window, and never read */
    /* 2000 events of 8 KiB: 16 MiB, far more than the socket buffers, the
     * outbound bound (256 KiB) and the queue (64 events) hold together. */
    static char pad[8200], data[8300];
    memset(pad, 'x', 8192);
    pad[8192] = '\0';
    snprintf(data, sizeof data, "{\"pad\":\"%s\"}", pad);
    int64_t worst = 0;
    for (int i = 0; i < 2000; i++) {
        int64_t t0 = lyra_now_us();
        publish("custom.slow", data);
        int64_t dt = lyra_now_us() - t0;
        if (dt > worst)
            worst = dt;
    }
    /* Not a timing assertion on speed, a bound on blocking: a publisher
     * held by the client would wait for its reads, forever. */
    print_message("slowest POST /events with a stalled client: %lld us\n", (long long)worst);
    assert_true(worst < 1000000);
    /* Now read: the stream holds a stream.gap saying where to resume. */
    bool gap = false;
    uint64_t resume = 0, prev = base;
    for (;;) {
        /* Generous: under a sanitizer the daemon refills the window slowly. */
        json_t *ev = ws_next_event(&w, 3000);
        if (!ev)
            break;
        if (strcmp(type_of(ev), "stream.gap") == 0) {
            gap = true;
            resume = (uint64_t)json_integer_value(json_object_get(json_object_get(ev, "data"), "resume_from"));
            assert_int_equal(resume, prev); /* the last event this client got */
        } else {
            assert_true(seq_of(ev) > prev);
            prev = seq_of(ev);
        }
        json_decref(ev);
    }
    if (!gap)
        fail_msg("no stream.gap: read up to seq %llu (published %llu..%llu)", (unsigned long long)prev,
                 (unsigned long long)base + 1, (unsigned long long)base + 2000);
    ws_close(&w);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
    srv = keep;
}

/* Last: stops the daemon. */
/* What a client missed is replayed from the database after the daemon
 * restarted — after a clean stop and after a kill -9 alike. */
static void replay_across_restart(int sig)
{
    struct it_server keep = srv;
    char home[64];
    it_mkdtemp(home, sizeof home);
    assert_int_equal(it_server_start(&srv, home, NULL, daemon_env), 0);
    uint64_t base = publish("custom.restart", "{}");
    uint64_t pub[4];
    for (int i = 0; i < 4; i++)
        pub[i] = publish("custom.restart", "{\"i\":1}");
    /* The log is written behind the publishers: give it a moment before a
     * kill -9 (a clean stop writes what is pending). */
    if (sig == SIGKILL) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    it_server_stop(&srv, sig);
    it_server_cleanup(&srv);
    assert_int_equal(it_server_start(&srv, home, NULL, daemon_env), 0);
    char q[96];
    snprintf(q, sizeof q, "?since=%llu&types=custom.restart", (unsigned long long)base);
    struct ws w;
    ws_open(&w, q);
    for (int i = 0; i < 4; i++) {
        json_t *ev = ws_next_event(&w, 3000);
        assert_non_null(ev);
        assert_int_equal(seq_of(ev), pub[i]);
        json_decref(ev);
    }
    uint64_t live = publish("custom.restart", "{}");
    assert_true(live > pub[3]);
    json_t *ev = ws_next_event(&w, 3000);
    assert_non_null(ev);
    assert_int_equal(seq_of(ev), live);
    json_decref(ev);
    ws_close(&w);
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    srv = keep;
}

static void test_replay_across_clean_restart(void **state)
{
    replay_across_restart(SIGTERM);
}

static void test_replay_across_crash(void **state)
{
    replay_across_restart(SIGKILL);
}

static void test_sigterm_sends_1001(void **state)
{
    struct ws a, b;
    ws_open(&a, "?types=custom.*");
    ws_open(&b, NULL);
    kill(srv.pid, SIGTERM);
    char reason[64] = "";
    assert_int_equal(ws_close_code(&a, 5000, reason, sizeof reason), 1001);
    assert_string_equal(reason, "server shutting down");
    assert_int_equal(ws_close_code(&b, 5000, NULL, 0), 1001);
    ws_send(&a, 0x8, "\x03\xe9", 2, false);
    ws_close(&a);
    ws_close(&b);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    srv.pid = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_event_arrives),
        cmocka_unit_test(test_since_replays_exactly_the_missed),
        cmocka_unit_test(test_reconnect_gets_every_event_in_order),
        cmocka_unit_test(test_types_filter),
        cmocka_unit_test(test_bad_parameters_are_400_before_upgrade),
        cmocka_unit_test(test_unmasked_frame_closes_1002),
        cmocka_unit_test(test_malformed_control_frame_gets_a_close),
        cmocka_unit_test(test_oversized_frame_closes_1009),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_sse_with_last_event_id),
        cmocka_unit_test(test_slow_client_gets_gap_publisher_not_blocked),
        cmocka_unit_test(test_replay_across_clean_restart),
        cmocka_unit_test(test_replay_across_crash),
        cmocka_unit_test(test_sigterm_sends_1001),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
