/* it_nginx.c — deploy/nginx/lyra.conf with Debian's nginx in front of a
 * real `lyra serve` (server.trusted_proxies=127.0.0.1), both on loopback.
 * The template is used as written except what a test box cannot have: the
 * upstream port, a loopback listen port instead of 443 ssl, no ssl_ lines,
 * no port-80 server.  Checked through nginx:
 *  - a streamed /v1/completions arrives in many reads spread over the
 *    generation (not one buffered blob at the end);
 *  - WebSocket /events/ws upgrades, gets a live event, and resumes with
 *    ?since; SSE /events passes events with their ids;
 *  - a body over client_max_body_size (= Lyra's max_body_bytes) gets 413
 *    in Lyra's JSON shape; Lyra's own 404 and its answer to a bad key pass
 *    unchanged (status, JSON body, WWW-Authenticate);
 *  - the client address Lyra records is the X-Forwarded-For client the
 *    test claims to be (203.0.113.7), not nginx's 127.0.0.1. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static pid_t nginx_pid;
static int nginx_port;
static char prefix[64];

static const char *source_dir(void)
{
    const char *s = getenv("LYRA_SOURCE_DIR");
    return s ? s : "..";
}

static const char *nginx_bin(void)
{
    static const char *const candidates[] = {"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++)
        if (access(candidates[i], X_OK) == 0)
            return candidates[i];
    return NULL;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

static bool port_answers(int port)
{
    int fd = it_connect(port);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

static int setup(void **state)
{
    const char *nginx = nginx_bin();
    if (!nginx) {
        if (it_in_ci()) {
            fprintf(stderr, "nginx is missing: scripts/setup-packages.sh installs nginx-light\n");
            return -1;
        }
        fprintf(stderr, "nginx is missing: skipping\n");
        exit(77);
    }
    char models[128];
    it_mkdtemp(prefix, sizeof prefix);
    snprintf(models, sizeof models, "%s/models", prefix);
    if (lyra_mkdirs(models) != 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) != 0)
        return -1;
    const char *args[] = {"--models-dir", models, NULL};
    /* debug: the request log (with its client address) */
    static const char *const env[] = {"LYRA_SERVER_TRUSTED_PROXIES=127.0.0.1", "LYRA_LOG_LEVEL=debug",
                                      "LYRA_LOG_FORMAT=json", NULL};
    if (it_server_start(&srv, NULL, args, env) != 0) {
        char *log = lyra_read_file(srv.log_path, NULL);
        fprintf(stderr, "lyra serve did not start (status %d): %s\n", srv.exit_status, log ? log : "");
        free(log);
        return -1;
    }

    /* The template, rendered for a test box. */
    nginx_port = free_port();
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "sed -e '/# BEGIN http-redirect/,/# END http-redirect/d' "
             "-e 's/^\\( *\\)listen 443 ssl http2;/\\1listen 127.0.0.1:%d;/' -e '/listen \\[::\\]:443/d' "
             "-e '/^ *ssl_/d' -e 's/server 127.0.0.1:8000;/server 127.0.0.1:%d;/' '%s/deploy/nginx/lyra.conf' "
             "> '%s/lyra.conf' && grep -q 'listen 127.0.0.1:%d;' '%s/lyra.conf' && grep -q 'server 127.0.0.1:%d;' "
             "'%s/lyra.conf'",
             nginx_port, srv.port, source_dir(), prefix, nginx_port, prefix, srv.port, prefix);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot render deploy/nginx/lyra.conf\n");
        return -1;
    }
    char conf[256], text[2048];
    snprintf(conf, sizeof conf, "%s/nginx.conf", prefix);
    snprintf(text, sizeof text,
             "worker_processes 1;\nevents { worker_connections 256; }\nhttp {\n"
             "  access_log %s/access.log;\n"
             "  client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fcgi;\n"
             "  uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;\n"
             "  include %s/lyra.conf;\n}\n",
             prefix, prefix, prefix, prefix, prefix, prefix, prefix);
    it_write_file(conf, text);
    char errlog[128], globals[256];
    snprintf(errlog, sizeof errlog, "%s/error.log", prefix);
    snprintf(globals, sizeof globals, "daemon off; master_process on; pid %s/nginx.pid;", prefix);
    nginx_pid = fork();
    if (nginx_pid == 0) {
        execl(nginx, "nginx", "-p", prefix, "-e", errlog, "-c", conf, "-g", globals, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        if (port_answers(nginx_port))
            return 0;
        if (waitpid(nginx_pid, NULL, WNOHANG) == nginx_pid) {
            char *log = lyra_read_file(errlog, NULL);
            fprintf(stderr, "nginx exited: %s\n", log ? log : "");
            free(log);
            nginx_pid = 0;
            return -1;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "nginx did not listen on %d\n", nginx_port);
    return -1;
}

static int teardown(void **state)
{
    if (nginx_pid > 0) {
        kill(nginx_pid, SIGQUIT);
        waitpid(nginx_pid, NULL, 0);
    }
    int rc = srv.pid > 0 ? it_server_stop(&srv, SIGTERM) : 0;
    it_server_cleanup(&srv);
    it_rmrf(prefix);
    return rc == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* A streamed completion, read as it comes                            */

static void test_stream_not_buffered(void **state)
{
    int fd = it_connect(nginx_port);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* The same generation unstreamed first: loads the model (so the
     * stream below measures generation only) and times it. */
    struct it_response warm;
    int64_t w0 = lyra_now_us();
    assert_int_equal(it_http(nginx_port, "POST", "/v1/completions", "Content-Type: application/json\r\n",
                             "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":400,"
                             "\"temperature\":0,\"ignore_eos\":true}",
                             &warm),
                     0);
    assert_int_equal(warm.status, 200);
    it_response_free(&warm);
    w0 = lyra_now_us(); /* the second one, loaded: generation alone */
    assert_int_equal(it_http(nginx_port, "POST", "/v1/completions", "Content-Type: application/json\r\n",
                             "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":400,"
                             "\"temperature\":0,\"ignore_eos\":true}",
                             &warm),
                     0);
    double gen_ms = (double)(lyra_now_us() - w0) / 1000.0;
    it_response_free(&warm);
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":400,\"temperature\":0,"
                       "\"ignore_eos\":true,\"stream\":true}";
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
    int64_t t0 = lyra_now_us();
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    size_t cap = 1 << 20, len = 0;
    char *all = malloc(cap);
    int reads_with_data = 0;
    int64_t first_data = 0, last_data = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        assert_true(poll(&p, 1, 60000) > 0);
        ssize_t r = recv(fd, all + len, cap - len - 1, 0);
        if (r <= 0)
            break;
        all[len + (size_t)r] = '\0';
        if (strstr(all + len, "data: {")) {
            reads_with_data++;
            last_data = lyra_now_us();
            if (!first_data)
                first_data = last_data;
        }
        len += (size_t)r;
        assert_true(len < cap - 1);
    }
    close(fd);
    all[len] = '\0';
    assert_int_equal(strncmp(all, "HTTP/1.1 200", 12), 0);
    assert_non_null(strcasestr(all, "Content-Type: text/event-stream"));
    assert_non_null(strstr(all, "data: [DONE]"));
    double total_ms = (double)(last_data - t0) / 1000.0, spread_ms = (double)(last_data - first_data) / 1000.0;
    print_message("stream through nginx: %zu bytes in %d reads with events; first event %.1f ms, last %.1f ms "
                  "(the same generation unstreamed: %.1f ms)\n",
                  len, reads_with_data, (double)(first_data - t0) / 1000.0, total_ms, gen_ms);
    /* Buffered, 400 tokens (~90 KB of events) would come in a few
     * proxy_buffers-sized pieces, or at once at the end. */
    assert_true(reads_with_data >= 20);
    /* ... and the pieces are spread over the generation, not a burst at
     * its end. */
    assert_true(spread_ms > gen_ms / 4);
    free(all);
}

/* ------------------------------------------------------------------ */
/* WebSocket and SSE events                                           */

static uint64_t publish(const char *type, int n)
{
    char body[128];
    snprintf(body, sizeof body, "{\"type\":\"%s\",\"data\":{\"n\":%d}}", type, n);
    struct it_response r;
    assert_int_equal(it_post_json(nginx_port, "/events", body, &r), 0);
    assert_int_equal(r.status, 201);
    json_t *j = it_json(&r);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(j, "seq"));
    json_decref(j);
    it_response_free(&r);
    return seq;
}

struct ws {
    int fd;
    char buf[1 << 16];
    size_t len;
};

static int ws_open(struct ws *w, const char *query)
{
    memset(w, 0, sizeof *w);
    w->fd = it_connect(nginx_port);
    if (w->fd < 0)
        return -1;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET /events/ws%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     query ? query : "");
    if (send(w->fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return -1;
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
    if (status == 101)
        assert_non_null(strcasestr(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    return status;
}

/* The next text frame's JSON (pings answered), or NULL within timeout_ms. */
static json_t *ws_next_event(struct ws *w, int timeout_ms)
{
    int64_t deadline = lyra_now_ms() + timeout_ms;
    for (;;) {
        while (w->len >= 2) {
            size_t hl = 2;
            uint64_t pl = w->buf[1] & 0x7f;
            if (pl == 126) {
                hl = 4;
                if (w->len < 4)
                    break;
                pl = (uint64_t)(uint8_t)w->buf[2] << 8 | (uint8_t)w->buf[3];
            } else if (pl == 127) {
                fail_msg("frame over 64 KiB");
            }
            if (w->len < hl + pl)
                break;
            int opcode = w->buf[0] & 0x0f;
            char *data = strndup(w->buf + hl, (size_t)pl);
            memmove(w->buf, w->buf + hl + pl, w->len - hl - pl);
            w->len -= hl + pl;
            if (opcode == 0x9) { /* ping: a masked pong with the same data */
                uint8_t pong[2 + 4 + 125] = {0x8A, (uint8_t)(0x80 | pl)};
                memcpy(pong + 6, data, (size_t)pl);
                send(w->fd, pong, 6 + (size_t)pl, MSG_NOSIGNAL); /* zero mask key */
            } else if (opcode == 0x1) {
                json_t *j = json_loads(data, 0, NULL);
                free(data);
                return j;
            } else if (opcode == 0x8) {
                free(data);
                return NULL;
            }
            free(data);
        }
        int left = (int)(deadline - lyra_now_ms());
        struct pollfd p = {w->fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return NULL;
        ssize_t r = recv(w->fd, w->buf + w->len, sizeof w->buf - w->len, 0);
        if (r <= 0)
            return NULL;
        w->len += (size_t)r;
    }
}

static void test_websocket_live_and_resume(void **state)
{
    struct ws w;
    assert_int_equal(ws_open(&w, "?types=custom.*"), 101);
    /* subscribed right after the upgrade: publish until one arrives */
    json_t *ev = NULL;
    uint64_t first = 0;
    for (int i = 0; i < 50 && !ev; i++) {
        uint64_t s = publish("custom.nginx", i);
        if (!first)
            first = s;
        ev = ws_next_event(&w, 100);
    }
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), "custom.nginx");
    json_decref(ev);
    /* drain what was published meanwhile, then a live one */
    while ((ev = ws_next_event(&w, 200)))
        json_decref(ev);
    uint64_t live = publish("custom.nginx", 1000);
    ev = ws_next_event(&w, 5000);
    assert_non_null(ev);
    assert_int_equal(json_integer_value(json_object_get(ev, "seq")), live);
    json_decref(ev);
    close(w.fd);

    /* missed while away: two events, replayed on reconnect with ?since */
    uint64_t a = publish("custom.nginx", 2000);
    uint64_t b = publish("custom.nginx", 2001);
    char q[64];
    snprintf(q, sizeof q, "?types=custom.*&since=%llu", (unsigned long long)live);
    assert_int_equal(ws_open(&w, q), 101);
    ev = ws_next_event(&w, 5000);
    assert_non_null(ev);
    assert_int_equal(json_integer_value(json_object_get(ev, "seq")), a);
    json_decref(ev);
    ev = ws_next_event(&w, 5000);
    assert_non_null(ev);
    assert_int_equal(json_integer_value(json_object_get(ev, "seq")), b);
    json_decref(ev);
    close(w.fd);
}

static void test_sse_events(void **state)
{
    uint64_t a = publish("custom.sse", 1);
    int fd = it_connect(nginx_port);
    assert_true(fd >= 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET /events?types=custom.sse&since=%llu HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     (unsigned long long)(a - 1));
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    /* the replayed one, then a live one published while the stream is open */
    char all[16384];
    size_t len = 0;
    uint64_t b = 0;
    char want_a[32], want_b[32] = "\x01";
    snprintf(want_a, sizeof want_a, "id: %llu\n", (unsigned long long)a);
    int64_t deadline = lyra_now_ms() + 10000;
    while (lyra_now_ms() < deadline && !strstr(all, want_b)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
            ssize_t r = recv(fd, all + len, sizeof all - len - 1, 0);
            assert_true(r > 0);
            len += (size_t)r;
            all[len] = '\0';
        }
        if (!b && strstr(all, want_a)) {
            b = publish("custom.sse", 2);
            snprintf(want_b, sizeof want_b, "id: %llu\n", (unsigned long long)b);
        }
    }
    close(fd);
    assert_non_null(strcasestr(all, "Content-Type: text/event-stream"));
    assert_non_null(strstr(all, want_a));
    assert_true(b > 0);
    assert_non_null(strstr(all, want_b));
}

/* ------------------------------------------------------------------ */
/* Errors pass through                                                */

static void test_body_too_large(void **state)
{
    /* one byte over 8 MiB (Lyra's default and the template's limit) */
    size_t size = 8u * 1024 * 1024 + 1;
    int fd = it_connect(nginx_port);
    assert_true(fd >= 0);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     size);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    struct it_response r;
    assert_int_equal(it_read_response(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 413);
    json_t *j = it_json(&r);
    assert_non_null(j);
    assert_string_equal(it_error_code(j), "body_too_large");
    json_decref(j);
    it_response_free(&r);

    /* 8 MiB exactly reaches Lyra (which says what is wrong with it: not a
     * 413 from either) */
    size = 8u * 1024 * 1024;
    char *big = malloc(size + 1);
    memset(big, ' ', size);
    big[0] = '{';
    big[size - 1] = '}';
    big[size] = '\0';
    assert_int_equal(it_http(nginx_port, "POST", "/v1/completions", "Content-Type: application/json\r\n", big, &r),
                     0);
    free(big);
    assert_int_equal(r.status, 400);
    it_response_free(&r);
}

/* The same request straight to Lyra and through nginx: same status, same
 * body (but the request id), same WWW-Authenticate. */
static void same_answer(const char *method, const char *path, const char *headers, int want)
{
    struct it_response direct, proxied;
    assert_int_equal(it_http(srv.port, method, path, headers, NULL, &direct), 0);
    assert_int_equal(it_http(nginx_port, method, path, headers, NULL, &proxied), 0);
    if (want)
        assert_int_equal(proxied.status, want);
    assert_int_equal(proxied.status, direct.status);
    json_t *a = it_json(&direct), *b = it_json(&proxied);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(it_error_code(a), it_error_code(b));
    if (direct.status >= 400) /* an error body, the same through nginx */
        assert_true(json_equal(json_object_get(a, "error"), json_object_get(b, "error")));
    char h1[256], h2[256];
    const char *w1 = it_header(&direct, "WWW-Authenticate", h1, sizeof h1);
    const char *w2 = it_header(&proxied, "WWW-Authenticate", h2, sizeof h2);
    assert_true((w1 == NULL) == (w2 == NULL));
    if (w1)
        assert_string_equal(w1, w2);
    /* Lyra answered it (its request id), not an nginx error page */
    assert_non_null(it_header(&proxied, "X-Request-Id", h2, sizeof h2));
    print_message("%s %s: %d through nginx, as direct\n", method, path, proxied.status);
    json_decref(a);
    json_decref(b);
    it_response_free(&direct);
    it_response_free(&proxied);
}

static void test_errors_pass_through(void **state)
{
    same_answer("GET", "/no/such/route", NULL, 404);
    same_answer("GET", "/models/no-such-model", NULL, 404);
    /* a key that is not one: 401 with WWW-Authenticate once auth exists */
    same_answer("GET", "/status", "Authorization: Bearer lyra_notAkeyAtAllnotAkeyAtAllnotAkeyAtAll1234\r\n", 0);
}

/* ------------------------------------------------------------------ */
/* The client address                                                 */

static void test_client_address(void **state)
{
    /* the test claims to be 203.0.113.7 to nginx; nginx appends the
     * address it saw (127.0.0.1), which Lyra trusts and skips */
    struct it_response r;
    assert_int_equal(it_http(nginx_port, "GET", "/health?probe=xff", "X-Forwarded-For: 203.0.113.7\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    /* without the header the client is the peer nginx saw: us, 127.0.0.1 */
    assert_int_equal(it_http(nginx_port, "GET", "/health?probe=plain", NULL, NULL, &r), 0);
    it_response_free(&r);

    /* Lyra's request log (debug, JSON) records each request's client */
    bool xff = false, plain = false;
    for (int i = 0; i < 100 && !(xff && plain); i++) {
        char *log = lyra_read_file(srv.log_path, NULL);
        xff = log && strstr(log, "\"client\":\"203.0.113.7\"");
        plain = log && strstr(log, "\"client\":\"127.0.0.1\"");
        free(log);
        if (!(xff && plain)) {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    assert_true(xff);
    assert_true(plain);

    /* With RBAC in: a failed authentication through nginx is audited
     * under the original client. */
    assert_int_equal(it_http(nginx_port, "GET", "/status",
                             "X-Forwarded-For: 203.0.113.7\r\n"
                             "Authorization: Bearer lyra_notAkeyAtAllnotAkeyAtAllnotAkeyAtAll1234\r\n",
                             NULL, &r),
                     0);
    int failed = r.status;
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/audit", NULL, NULL, &r), 0);
    if (failed == 401 && r.status == 200) {
        assert_non_null(strstr(r.body, "203.0.113.7"));
        print_message("audit: the failed authentication is recorded for 203.0.113.7\n");
    } else {
        print_message("audit not checked: bad key got %d, GET /audit %d (RBAC not merged yet)\n", failed, r.status);
    }
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_not_buffered), cmocka_unit_test(test_websocket_live_and_resume),
        cmocka_unit_test(test_sse_events),          cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_errors_pass_through), cmocka_unit_test(test_client_address),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
