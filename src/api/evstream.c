/* evstream.c — see evstream.h.
 *
 * Everything about a client (its socket, wslay context, subscription,
 * timers, the client list) is touched only on the loop thread, so it needs
 * no lock.  Other threads reach a client only through posted tasks:
 *   - the subscription's notify (a publishing thread) posts a pump, at most
 *     one outstanding per client (pump_posted);
 *   - an HTTP thread posts the attach of a new client;
 *   - the HTTP hang-up watcher posts the end of an SSE stream.
 * A finished client is freed by one more posted task, which runs after
 * every task posted for it before (the loop runs tasks in posting order),
 * and nothing is posted for it after: its subscription is freed first
 * (no notify after lyra_evsub_free), and the SSE gone callback never runs
 * after lyra_http_stream_close. */
#include "api/evstream.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "core/evsub.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/util.h"
#include "http/wshandshake.h"

enum kind { WS, SSE };

struct client {
    struct lyra_evstream *es;
    enum kind kind;
    struct client *prev, *next; /* es->clients, once attached */
    struct lyra_evsub *sub;
    uint64_t since;
    char *types;
    bool attached, dead;
    bool gone_early; /* SSE: the client left before the attach ran */
    bool revoked;    /* ended by revalidate_tick */
    struct lyra_timer *timer;   /* WS: ping / pong deadline; SSE: ping */
    struct lyra_timer *retry;   /* SSE: buffer full, look again */
    /* WS */
    int fd;
    struct lyra_http_upgraded *up;
    wslay_event_context_ptr ctx;
    char *extra;
    size_t extra_len, extra_off;
    bool awaiting_pong;
    int64_t ping_sent_ms;
    struct lyra_timer *close_timer;
    uint32_t watched;
    /* SSE */
    struct lyra_http_stream *st;
    unsigned char *who; /* o.who_size bytes: the policy's view of this client */
    /* Set by publishing threads; apart from the loop-only flags above, so
     * that no load of those (the compiler may read neighbouring bytes in
     * one go) touches it. */
    atomic_bool pump_posted;
};

struct lyra_evstream {
    struct lyra_evstream_options o;
    struct lyra_loop *loop;
    pthread_mutex_t lock; /* guards accepting */
    bool accepting;
    bool shut;
    struct client *clients; /* loop thread only */
    struct lyra_timer *revalidate; /* loop thread only */
    atomic_int n_ws, n_sse;
    atomic_uint_fast64_t ws_total, sse_total;
};

/* ------------------------------------------------------------------ */
/* Common                                                             */

static bool accepting(struct lyra_evstream *es)
{
    pthread_mutex_lock(&es->lock);
    bool a = es->accepting;
    pthread_mutex_unlock(&es->lock);
    return a;
}

/* Posts a new client's attach unless shutdown began: under the lock, so
 * that nothing is posted once lyra_evstream_shutdown may free the loop. */
static int post_attach(struct lyra_evstream *es, lyra_loop_fn fn, void *c)
{
    pthread_mutex_lock(&es->lock);
    int rc = es->accepting ? lyra_loop_post(es->loop, fn, c) : LYRA_EUNAVAILABLE;
    pthread_mutex_unlock(&es->lock);
    return rc;
}

static void client_free_task(void *ud)
{
    struct client *c = ud;
    free(c->types);
    free(c->extra);
    free(c->who);
    free(c);
}

/* Loop thread: c leaves the list; freed after the tasks queued for it. */
static void client_release(struct client *c)
{
    struct lyra_evstream *es = c->es;
    if (c->attached) {
        if (c->prev)
            c->prev->next = c->next;
        else
            es->clients = c->next;
        if (c->next)
            c->next->prev = c->prev;
        atomic_fetch_sub(c->kind == WS ? &es->n_ws : &es->n_sse, 1);
    }
    if (lyra_loop_post(es->loop, client_free_task, c) < 0)
        client_free_task(c); /* the loop is being freed: no task of c is left */
}

static void attach(struct client *c)
{
    struct lyra_evstream *es = c->es;
    c->attached = true;
    c->next = es->clients;
    if (es->clients)
        es->clients->prev = c;
    es->clients = c;
    atomic_fetch_add(c->kind == WS ? &es->n_ws : &es->n_sse, 1);
    atomic_fetch_add(c->kind == WS ? &es->ws_total : &es->sse_total, 1);
}

static void pump_task(void *ud);

/* A publishing thread: events are waiting for c. */
static void on_notify(void *ud)
{
    struct client *c = ud;
    if (!atomic_exchange(&c->pump_posted, true))
        (void)lyra_loop_post(c->es->loop, pump_task, c);
}

/* ?since / Last-Event-ID and ?types, checked: false after answering 400. */
static bool read_params(struct lyra_http_req *req, bool sse, uint64_t *since, const char **types)
{
    const char *s = sse ? lyra_http_header(req, "Last-Event-ID") : NULL;
    const char *what = "Last-Event-ID";
    if (!s || !*s) {
        s = lyra_http_query(req, "since");
        what = "since";
    }
    *since = LYRA_EVSUB_LIVE;
    if (s && (lyra_parse_u64(s, since) < 0 || *since == LYRA_EVSUB_LIVE)) {
        lyra_http_send_error(req, 400, "invalid_parameter", "%s must be an event seq (a non-negative integer)",
                             what);
        return false;
    }
    *types = lyra_http_query(req, "types");
    if (*types && !lyra_evsub_patterns_valid(*types)) {
        lyra_http_send_error(req, 400, "invalid_parameter",
                             "types must be a comma-separated list of event types or patterns such as "
                             "model.*,job.* (letters, digits, '.', '_', '-', and '*' as a whole last segment)");
        return false;
    }
    return true;
}

static struct client *client_new(struct lyra_evstream *es, enum kind kind, uint64_t since, const char *types,
                                 const void *who)
{
    struct client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->es = es;
    c->kind = kind;
    c->since = since;
    c->fd = -1;
    if ((types && !(c->types = strdup(types))) || (es->o.who_size && !(c->who = calloc(1, es->o.who_size)))) {
        free(c->types);
        free(c);
        return NULL;
    }
    if (es->o.who_size && who)
        memcpy(c->who, who, es->o.who_size);
    return c;
}

/* evsub filter (publishing thread): the policy decides. */
static bool client_sees(const char *type, const json_t *data, void *ud)
{
    struct client *c = ud;
    return c->es->o.visible(c->es->o.policy_ud, c->who, type, data);
}

/* Loop thread: the client's subscription.  Failing is unexpected (the
 * patterns were checked): the client is ended. */
static int subscribe(struct client *c)
{
    struct lyra_err err = {0};
    const struct lyra_evstream_options *o = &c->es->o;
    int rc = lyra_evsub_new_filtered(o->bus, o->store, c->since, c->types, o->max_queued, o->max_queued_bytes,
                                     on_notify, c, o->visible ? client_sees : NULL, c, &c->sub, &err);
    if (rc < 0)
        lyra_warn("events", "cannot subscribe a %s client: %s", c->kind == WS ? "WebSocket" : "SSE", err.msg);
    return rc;
}

/* ------------------------------------------------------------------ */
/* WebSocket                                                          */

static void ws_finish(struct client *c);
static void ws_flush(struct client *c);

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    struct client *c = ud;
    if (c->extra_off < c->extra_len) { /* what MHD read after the headers */
        size_t n = c->extra_len - c->extra_off < len ? c->extra_len - c->extra_off : len;
        memcpy(buf, c->extra + c->extra_off, n);
        c->extra_off += n;
        return (ssize_t)n;
    }
    ssize_t n;
    do
        n = recv(c->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n <= 0) { /* EOF or reset: the connection is over */
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct client *c = ud;
    ssize_t n;
    do
        n = send(c->fd, data, len, MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        wslay_event_set_error(ctx, (errno == EAGAIN || errno == EWOULDBLOCK) ? WSLAY_ERR_WOULDBLOCK
                                                                            : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static void ws_ping_tick(void *ud);

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    struct client *c = ud;
    /* Text and binary messages are ignored: the stream is one-way.  A
     * ping is answered by wslay, a close too. */
    if (arg->opcode == WSLAY_PONG && c->awaiting_pong) {
        c->awaiting_pong = false;
        lyra_loop_timer_cancel(c->es->loop, c->timer);
        int64_t next = c->ping_sent_ms + c->es->o.ws_ping_ms - lyra_loop_now_ms(c->es->loop);
        c->timer = lyra_loop_timer(c->es->loop, next > 0 ? next : 0, ws_ping_tick, c);
    }
}

/* Queues our close frame once. */
static void ws_close(struct client *c, uint16_t code, const char *reason)
{
    if (c->dead || wslay_event_get_close_sent(c->ctx))
        return;
    wslay_event_queue_close(c->ctx, code, (const uint8_t *)reason, strlen(reason));
    ws_flush(c);
}

static void ws_pong_deadline(void *ud)
{
    struct client *c = ud;
    c->timer = NULL;
    if (c->awaiting_pong)
        ws_close(c, WSLAY_CODE_GOING_AWAY, "no pong");
}

static void ws_ping_tick(void *ud)
{
    struct client *c = ud;
    c->timer = NULL;
    struct wslay_event_msg ping = {WSLAY_PING, NULL, 0};
    if (wslay_event_queue_msg(c->ctx, &ping) != 0)
        return;
    c->awaiting_pong = true;
    c->ping_sent_ms = lyra_loop_now_ms(c->es->loop);
    c->timer = lyra_loop_timer(c->es->loop, c->es->o.ws_pong_timeout_ms, ws_pong_deadline, c);
    ws_flush(c);
}

static void ws_close_grace(void *ud)
{
    struct client *c = ud;
    c->close_timer = NULL;
    ws_finish(c); /* our close frame went out; the client did not answer in time */
}

/* Moves events from the subscription into wslay's queue, up to the
 * outbound bound: beyond it they wait in the subscription (which yields a
 * stream.gap when it overflows). */
static void ws_fill(struct client *c)
{
    while (!c->dead && c->sub && wslay_event_get_write_enabled(c->ctx) && !wslay_event_get_close_sent(c->ctx) &&
           wslay_event_get_queued_msg_length(c->ctx) < c->es->o.max_out_bytes) {
        char *json = NULL;
        uint64_t seq;
        if (lyra_evsub_next(c->sub, &json, &seq) != 0)
            break;
        struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)json, strlen(json)};
        int rc = wslay_event_queue_msg(c->ctx, &m); /* copies */
        free(json);
        if (rc != 0)
            break;
    }
}

/* Sends what wslay holds and sets the epoll interest from what wslay wants;
 * ends the client when wslay wants nothing more (close handshake done) or
 * failed. */
static void ws_flush(struct client *c)
{
    if (c->dead)
        return;
    if (wslay_event_want_write(c->ctx) && wslay_event_send(c->ctx) != 0) {
        ws_finish(c);
        return;
    }
    bool rd = wslay_event_want_read(c->ctx), wr = wslay_event_want_write(c->ctx);
    if (!rd && !wr) {
        ws_finish(c);
        return;
    }
    /* Events still waiting in the subscription that ws_fill left for want
     * of room: the socket took everything queued, so nothing would wake us
     * for them (their notify came when the queue was empty).  Ask for
     * EPOLLOUT: the next writable moment fills again. */
    if (!wr && c->sub && !wslay_event_get_close_sent(c->ctx) && lyra_evsub_pending(c->sub))
        wr = true;
    if (wslay_event_get_close_sent(c->ctx) && !c->close_timer)
        c->close_timer = lyra_loop_timer(c->es->loop, c->es->o.close_grace_ms, ws_close_grace, c);
    /* Hang-ups are reported while reading; once wslay reads no more, a
     * level-triggered EPOLLRDHUP would only spin. */
    uint32_t ev = (rd ? EPOLLIN | EPOLLRDHUP : 0) | (wr ? EPOLLOUT : 0);
    if (ev != c->watched && lyra_loop_watch_events(c->es->loop, c->fd, ev) == 0)
        c->watched = ev;
}

static void ws_io(int fd, uint32_t events, void *ud)
{
    struct client *c = ud;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        if (wslay_event_recv(c->ctx) != 0) {
            /* The peer is gone, or its frame was malformed (a control
             * frame over 125 bytes or fragmented, ...): for the latter
             * wslay 1.1.1 fails with WSLAY_ERR_CALLBACK_FAILURE and its
             * close frame queued.  Send what is queued (one non-blocking
             * try; to a gone peer it fails harmlessly) so the client learns
             * why, then end. */
            if (wslay_event_want_write(c->ctx))
                (void)wslay_event_send(c->ctx);
            ws_finish(c);
            return;
        }
        if (!wslay_event_want_read(c->ctx) && !wslay_event_get_close_received(c->ctx) &&
            (events & (EPOLLHUP | EPOLLERR))) {
            ws_finish(c);
            return;
        }
    }
    ws_fill(c);
    ws_flush(c);
    if (!c->dead && (events & (EPOLLHUP | EPOLLERR)) && !wslay_event_want_write(c->ctx))
        ws_finish(c);
}

static void ws_finish(struct client *c)
{
    if (c->dead)
        return;
    c->dead = true;
    struct lyra_loop *l = c->es->loop;
    lyra_loop_timer_cancel(l, c->timer);
    lyra_loop_timer_cancel(l, c->close_timer);
    c->timer = c->close_timer = NULL;
    if (c->watched)
        lyra_loop_unwatch(l, c->fd);
    lyra_evsub_free(c->sub); /* no notify after this */
    c->sub = NULL;
    if (c->ctx)
        wslay_event_context_free(c->ctx);
    c->ctx = NULL;
    lyra_http_upgraded_close(c->up); /* closes the socket */
    c->up = NULL;
    client_release(c);
}

static void ws_attach_task(void *ud)
{
    struct client *c = ud;
    struct lyra_evstream *es = c->es;
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = ws_recv_cb, .send_callback = ws_send_cb, .on_msg_recv_callback = ws_on_msg};
    if (!accepting(es) || wslay_event_context_server_init(&c->ctx, &cbs, c) != 0) {
        /* Shutting down before this client was attached (its 101 went out
         * just before the stop): it still gets its close 1001, written
         * directly — one small frame on a fresh socket — not a bare cut. */
        if (!accepting(es)) {
            static const char reason[] = "server shutting down";
            unsigned char frame[4 + sizeof reason - 1] = {0x88, 2 + sizeof reason - 1, 0x03, 0xe9};
            memcpy(frame + 4, reason, sizeof reason - 1);
            (void)!write(c->fd, frame, sizeof frame);
        }
        c->ctx = NULL;
        lyra_http_upgraded_close(c->up);
        client_release(c);
        return;
    }
    wslay_event_config_set_max_recv_msg_length(c->ctx, LYRA_EVSTREAM_MAX_IN);
    attach(c);
    if (lyra_loop_watch(es->loop, c->fd, EPOLLIN | EPOLLRDHUP, ws_io, c) < 0) {
        ws_finish(c);
        return;
    }
    c->watched = EPOLLIN | EPOLLRDHUP;
    if (subscribe(c) < 0) {
        ws_close(c, WSLAY_CODE_INTERNAL_SERVER_ERROR, "cannot subscribe");
        return;
    }
    c->timer = lyra_loop_timer(es->loop, es->o.ws_ping_ms, ws_ping_tick, c);
    if (c->extra_len) /* the client's first frames came with the handshake */
        ws_io(c->fd, EPOLLIN, c);
    else
        pump_task(c);
}

struct ws_pending {
    struct lyra_evstream *es;
    uint64_t since;
    char *types;
    unsigned char *who;
};

static void ws_dropped(void *ud)
{
    struct ws_pending *p = ud;
    free(p->types);
    free(p->who);
    free(p);
}

/* An HTTP thread, once the 101 went out: hand the socket to the loop. */
static void ws_upgraded(int fd, const char *extra, size_t extra_len, struct lyra_http_upgraded *up, void *ud)
{
    struct ws_pending *p = ud;
    struct lyra_evstream *es = p->es;
    struct client *c = accepting(es) ? client_new(es, WS, p->since, p->types, p->who) : NULL;
    ws_dropped(p);
    if (c && extra_len && !(c->extra = malloc(extra_len))) {
        client_free_task(c);
        c = NULL;
    }
    if (!c) {
        lyra_http_upgraded_close(up);
        return;
    }
    if (extra_len)
        memcpy(c->extra, extra, extra_len);
    c->extra_len = extra_len;
    c->fd = fd;
    c->up = up;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    if (post_attach(es, ws_attach_task, c) < 0) {
        lyra_http_upgraded_close(up);
        client_free_task(c);
    }
}

/* True when the comma-separated Sec-WebSocket-Protocol list offers `name`. */
static bool offers_protocol(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        if ((size_t)(e - p) == n && strncmp(p, name, n) == 0)
            return true;
        p = e;
    }
    return false;
}

void lyra_evstream_ws(struct lyra_evstream *es, struct lyra_http_req *req, const void *who)
{
    uint64_t since;
    const char *types;
    if (!read_params(req, false, &since, &types))
        return;
    struct lyra_err err = {0};
    int rc = lyra_ws_check_request(lyra_http_header(req, "Upgrade"), lyra_http_header(req, "Connection"),
                                   lyra_http_header(req, "Sec-WebSocket-Key"),
                                   lyra_http_header(req, "Sec-WebSocket-Version"), &err);
    if (rc == LYRA_EUNSUPPORTED) {
        lyra_http_add_header(req, "Sec-WebSocket-Version", "13");
        lyra_http_send_error(req, 426, "upgrade_required", "%s", err.msg);
        return;
    }
    if (rc < 0) {
        lyra_http_send_error(req, 400, "invalid_handshake", "%s (GET /events is the same stream as SSE)", err.msg);
        return;
    }
    if (!accepting(es)) {
        lyra_http_add_header(req, "Retry-After", "5");
        lyra_http_send_error(req, 503, "shutting_down", "the server is shutting down");
        return;
    }
    struct ws_pending *p = calloc(1, sizeof *p);
    if (!p || (types && !(p->types = strdup(types))) ||
        (es->o.who_size && !(p->who = calloc(1, es->o.who_size)))) {
        if (p)
            free(p->types);
        free(p);
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return;
    }
    p->es = es;
    p->since = since;
    if (es->o.who_size && who)
        memcpy(p->who, who, es->o.who_size);
    if (offers_protocol(lyra_http_header(req, "Sec-WebSocket-Protocol"), "lyra-events"))
        lyra_http_add_header(req, "Sec-WebSocket-Protocol", "lyra-events");
    char accept[29];
    lyra_ws_accept_key(lyra_http_header(req, "Sec-WebSocket-Key"), accept);
    lyra_http_add_header(req, "Upgrade", "websocket");
    lyra_http_add_header(req, "Connection", "Upgrade");
    lyra_http_add_header(req, "Sec-WebSocket-Accept", accept);
    lyra_http_upgrade(req, ws_upgraded, ws_dropped, p);
}

/* ------------------------------------------------------------------ */
/* Server-Sent Events                                                 */

static void sse_finish(struct client *c)
{
    if (c->dead)
        return;
    c->dead = true;
    lyra_loop_timer_cancel(c->es->loop, c->timer);
    lyra_loop_timer_cancel(c->es->loop, c->retry);
    c->timer = c->retry = NULL;
    lyra_evsub_free(c->sub);
    c->sub = NULL;
    lyra_http_stream_close(c->st); /* the gone callback does not run after this */
    c->st = NULL;
    client_release(c);
}

static void sse_retry(void *ud)
{
    struct client *c = ud;
    c->retry = NULL;
    pump_task(c);
}

/* "id: SEQ\nevent: TYPE\ndata: JSON\n\n" (the JSON is one line). */
static int sse_write_event(struct client *c, const char *json, uint64_t seq)
{
    json_t *j = json_loads(json, 0, NULL);
    const char *type = json_string_value(json_object_get(j, "type"));
    char head[128];
    int n = snprintf(head, sizeof head, "id: %llu\nevent: %s\ndata: ", (unsigned long long)seq,
                     type ? type : "message");
    size_t jl = strlen(json);
    char *buf = malloc((size_t)n + jl + 2);
    int rc = LYRA_ENOMEM;
    if (buf) {
        memcpy(buf, head, (size_t)n);
        memcpy(buf + n, json, jl);
        memcpy(buf + n + jl, "\n\n", 2);
        rc = lyra_http_stream_write(c->st, buf, (size_t)n + jl + 2);
        free(buf);
    }
    json_decref(j);
    return rc;
}

static void sse_pump(struct client *c)
{
    while (!c->dead && c->sub) {
        if (lyra_http_stream_queued(c->st) >= c->es->o.max_out_bytes) {
            /* The client reads slowly: look again soon; meanwhile events
             * wait in the subscription (and overflow into a stream.gap). */
            if (!c->retry)
                c->retry = lyra_loop_timer(c->es->loop, 20, sse_retry, c);
            return;
        }
        char *json = NULL;
        uint64_t seq;
        if (lyra_evsub_next(c->sub, &json, &seq) != 0)
            return;
        int rc = sse_write_event(c, json, seq);
        free(json);
        if (rc < 0) {
            sse_finish(c);
            return;
        }
    }
}

static void sse_ping(void *ud)
{
    struct client *c = ud;
    c->timer = NULL;
    if (lyra_http_stream_write(c->st, ": ping\n\n", 8) < 0) {
        sse_finish(c);
        return;
    }
    c->timer = lyra_loop_timer(c->es->loop, c->es->o.sse_ping_ms, sse_ping, c);
}

static void sse_gone_task(void *ud)
{
    struct client *c = ud;
    if (!c->attached && !c->dead)
        c->gone_early = true;
    else
        sse_finish(c);
}

/* The HTTP hang-up watcher: the client left. */
static void sse_gone(void *ud)
{
    struct client *c = ud;
    (void)lyra_loop_post(c->es->loop, sse_gone_task, c);
}

static void sse_attach_task(void *ud)
{
    struct client *c = ud;
    attach(c);
    if (c->gone_early || !accepting(c->es) || subscribe(c) < 0) {
        sse_finish(c);
        return;
    }
    c->timer = lyra_loop_timer(c->es->loop, c->es->o.sse_ping_ms, sse_ping, c);
    sse_pump(c);
}

void lyra_evstream_sse(struct lyra_evstream *es, struct lyra_http_req *req, const void *who)
{
    uint64_t since;
    const char *types;
    if (!read_params(req, true, &since, &types))
        return;
    if (!accepting(es)) {
        lyra_http_add_header(req, "Retry-After", "5");
        lyra_http_send_error(req, 503, "shutting_down", "the server is shutting down");
        return;
    }
    struct client *c = client_new(es, SSE, since, types, who);
    if (!c) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return;
    }
    /* The first chunk tells EventSource to retry after 1 s; the headers go
     * out at once. */
    static const char first[] = "retry: 1000\n\n";
    c->st = lyra_http_send_stream(req, 200, "text/event-stream", first, sizeof first - 1, sse_gone, c);
    if (!c->st) {
        client_free_task(c);
        return;
    }
    if (post_attach(es, sse_attach_task, c) < 0) {
        lyra_http_stream_close(c->st);
        client_free_task(c);
    }
}

/* ------------------------------------------------------------------ */
/* Both                                                               */

static void pump_task(void *ud)
{
    struct client *c = ud;
    atomic_store(&c->pump_posted, false);
    if (!c->attached || c->dead)
        return; /* the attach pumps once it ran */
    if (c->kind == WS) {
        ws_fill(c);
        ws_flush(c);
    } else {
        sse_pump(c);
    }
}

/* Loop thread, every revalidate_ms: a client whose key was revoked, or
 * expired, since it connected is ended (the policy says why it may no
 * longer read; its next request would get 401). */
static void revalidate_tick(void *ud)
{
    struct lyra_evstream *es = ud;
    es->revalidate = NULL;
    for (struct client *c = es->clients, *n; c; c = n) {
        n = c->next;
        if (c->dead || c->revoked || !c->attached || es->o.still_valid(es->o.policy_ud, c->who))
            continue;
        c->revoked = true;
        if (c->kind == WS) {
            ws_close(c, 1008, "the API key was revoked or has expired");
        } else {
            static const char ev[] = "event: auth.revoked\ndata: {\"message\":\"the API key was revoked or has "
                                     "expired\"}\n\n";
            (void)lyra_http_stream_write(c->st, ev, sizeof ev - 1);
            sse_finish(c);
        }
    }
    if (!es->shut && accepting(es))
        es->revalidate = lyra_loop_timer(es->loop, es->o.revalidate_ms, revalidate_tick, es);
}

static void revalidate_start(void *ud)
{
    struct lyra_evstream *es = ud;
    es->revalidate = lyra_loop_timer(es->loop, es->o.revalidate_ms, revalidate_tick, es);
}

int lyra_evstream_new(const struct lyra_evstream_options *opts, struct lyra_evstream **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_evstream *es = calloc(1, sizeof *es);
    if (!es)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    es->o = *opts;
    if (!es->o.max_out_bytes)
        es->o.max_out_bytes = 256 * 1024;
    if (es->o.ws_ping_ms <= 0)
        es->o.ws_ping_ms = 30000;
    if (es->o.ws_pong_timeout_ms <= 0)
        es->o.ws_pong_timeout_ms = 30000;
    if (es->o.sse_ping_ms <= 0)
        es->o.sse_ping_ms = 15000;
    if (es->o.close_grace_ms <= 0)
        es->o.close_grace_ms = 1000;
    if (es->o.revalidate_ms <= 0)
        es->o.revalidate_ms = 1000;
    pthread_mutex_init(&es->lock, NULL);
    es->accepting = true;
    int rc = lyra_loop_new("lyra-events", &es->loop, err);
    if (rc < 0) {
        pthread_mutex_destroy(&es->lock);
        free(es);
        return rc;
    }
    if (es->o.still_valid)
        (void)lyra_loop_call(es->loop, revalidate_start, es);
    *out = es;
    return 0;
}

static void close_all_task(void *ud)
{
    struct lyra_evstream *es = ud;
    lyra_loop_timer_cancel(es->loop, es->revalidate);
    es->revalidate = NULL;
    for (struct client *c = es->clients, *n; c; c = n) {
        n = c->next;
        if (c->kind == WS)
            ws_close(c, WSLAY_CODE_GOING_AWAY, "server shutting down");
        else
            sse_finish(c);
    }
}

static void finish_all_task(void *ud)
{
    struct lyra_evstream *es = ud;
    while (es->clients) {
        struct client *c = es->clients;
        if (c->kind == WS)
            ws_finish(c);
        else
            sse_finish(c);
    }
}

void lyra_evstream_shutdown(struct lyra_evstream *es, int timeout_ms)
{
    if (!es || es->shut)
        return;
    pthread_mutex_lock(&es->lock);
    es->accepting = false;
    pthread_mutex_unlock(&es->lock);
    lyra_loop_call(es->loop, close_all_task, es);
    /* The clients' close frames come back within the grace period; a
     * client that answers nothing is cut at close_grace_ms by its timer. */
    int64_t deadline = lyra_now_ms() + timeout_ms;
    while (atomic_load(&es->n_ws) > 0 && lyra_now_ms() < deadline)
        usleep(5000);
    lyra_loop_call(es->loop, finish_all_task, es);
    lyra_loop_free(es->loop); /* joins: nothing of ours touches HTTP after this */
    es->loop = NULL;
    es->shut = true;
}

void lyra_evstream_free(struct lyra_evstream *es)
{
    if (!es)
        return;
    lyra_evstream_shutdown(es, 0);
    pthread_mutex_destroy(&es->lock);
    free(es);
}

void lyra_evstream_stats(struct lyra_evstream *es, struct lyra_evstream_stats *out)
{
    out->ws_clients = atomic_load(&es->n_ws);
    out->sse_clients = atomic_load(&es->n_sse);
    out->ws_total = atomic_load(&es->ws_total);
    out->sse_total = atomic_load(&es->sse_total);
}
