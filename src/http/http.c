/* http.c — the HTTP server: libmicrohttpd (epoll, thread pool) under Lyra's
 * route table, limits, CORS, request ids and JSON errors.
 *
 * Life of a request in MHD's access handler:
 *   1st call (headers read): create the lyra_http_req, settle the request id,
 *     reject early what can be rejected without the body (431, 404, 405,
 *     413 from Content-Length, CORS preflight);
 *   next calls (body chunks): append, up to max_body_bytes, within
 *     request_timeout_s of the first call;
 *   last call (no more data): run the route's handler.
 * MHD's completion callback frees the request and counts it out of flight. */
#include "http/http.h"

#include "http/hupwatch.h"
#include "http/proxies.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/trace.h"
#include "core/util.h"

#define MAX_PARAMS 4
#define MAX_EXTRA_HEADERS 16
#define REQUEST_ID_MAX 128

/* Where a request is.  Every transition happens under req->lock, and each
 * MHD_resume_connection pairs with exactly one earlier
 * MHD_suspend_connection: resuming a connection that is not suspended is
 * outside libmicrohttpd's contract (in 0.9.75 it leaves `resuming` set and
 * the next suspend is lost), so only the one thread that moves a request
 * out of a suspended state may resume it.
 *
 *   NEW ──handler──▶ ANSWERED | STREAMING
 *    └──lyra_http_park──▶ PARKED ──lyra_http_wake──▶ WAKING ──MHD calls the
 *                           ▲                            resume handler──▶ ANSWERED |
 *                           └────────── (parked again) ◀─┘                  STREAMING
 *   STREAMING: the content reader suspends when the queue is empty
 *   (stream->suspended) and the next write or close resumes it.
 *   DONE: MHD's completion callback ran; the request is freed. */
enum req_state { REQ_NEW, REQ_PARKED, REQ_WAKING, REQ_ANSWERED, REQ_STREAMING };

struct lyra_http {
    atomic_bool xff_warned; /* format_client_addr said once that an untrusted proxy forwards */
    struct lyra_http_options opts;
    const struct lyra_route *routes;
    size_t n_routes;
    void *ctx;
    int listen_fd;          /* ours until MHD takes it at start, ours again after quiesce */
    bool mhd_owns_listener; /* MHD closes it at stop unless quiesced */
    int port;
    struct MHD_Daemon *daemon;
    atomic_int in_flight;
    atomic_int suspended;        /* connections suspended right now (for a safe stop) */
    atomic_bool draining;        /* new requests get 503 and Connection: close */
    atomic_int upgraded;         /* upgraded connections not closed yet */
    struct lyra_hupwatch *hupwatch; /* hang-ups of suspended connections */
    struct lyra_proxies *proxies;   /* server.trusted_proxies; NULL when none */
};

struct lyra_http_req {
    struct lyra_http *http;
    struct MHD_Connection *conn;
    const char *method;
    const char *path;
    const struct lyra_route *route;
    char request_id[REQUEST_ID_MAX + 1];
    char trace_id[33];           /* W3C: from traceparent, else generated */
    char span_id[17];
    char *param_names[MAX_PARAMS];
    char *param_values[MAX_PARAMS];
    int n_params;
    char *body;
    size_t body_len, body_cap;
    bool body_too_big;
    bool answered;
    int status;
    int64_t start_us;
    const char *origin;          /* allowed Origin to echo, or NULL */
    bool origin_credentials;     /* the Origin is listed by name (not "*"): credentials allowed */
    char client_addr[64];        /* the client's address as text (the peer, or X-Forwarded-For's) */
    bool client_forwarded;       /* client_addr came from a trusted proxy's X-Forwarded-For */
    void *principal;             /* lyra_http_set_principal: freed with the request */
    char *extra_names[MAX_EXTRA_HEADERS];
    char *extra_values[MAX_EXTRA_HEADERS];
    int n_extra;
    pthread_mutex_t lock;        /* guards state and the hang-up watch */
    enum req_state state;
    lyra_http_handler resume;    /* set while parked */
    void (*dropped)(void *ud);   /* the connection ended before resume could run */
    void *resume_ud;
    struct lyra_hup *hup;        /* while parked */
    struct lyra_http_stream *stream; /* its streamed answer, if any */
    /* lyra_http_upgrade: set until the upgrade handler ran (under lock), so
     * that a connection ending before it calls `upgrade_dropped` instead. */
    lyra_http_upgraded_fn upgrade_fn;
    void (*upgrade_dropped)(void *ud);
    void *upgrade_ud;
};

struct lyra_http_upgraded {
    struct lyra_http *http;
    struct MHD_UpgradeResponseHandle *urh;
};

/* A streamed body: a byte queue between a producer thread and MHD's
 * content reader.  Two holders: the producer (until close) and MHD (until
 * its free callback); freed when both let go.  When the queue runs dry the
 * reader suspends the connection and the next write resumes it; both
 * happen under the lock, so no wake-up is lost. */
struct lyra_http_stream {
    pthread_mutex_t lock;
    struct lyra_http *http;
    struct lyra_hup *hup;        /* the client's hang-up, for the producer (under lock) */
    struct MHD_Connection *conn;
    char *buf;
    size_t len, cap, off;
    bool finished;   /* the producer closed */
    bool overflowed; /* LYRA_HTTP_STREAM_MAX_QUEUED was reached: no more writes */
    bool gone;       /* MHD let go: the body is done or the client left */
    bool suspended;
    int holders;
};

/* ------------------------------------------------------------------ */
/* Responses                                                          */

static bool extra_has(const struct lyra_http_req *req, const char *name)
{
    for (int i = 0; i < req->n_extra; i++)
        if (strcasecmp(req->extra_names[i], name) == 0)
            return true;
    return false;
}

static void apply_common_headers(struct lyra_http_req *req, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    if (atomic_load(&req->http->draining)) /* keep-alive clients go elsewhere */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (req->trace_id[0]) {
        char tp[64];
        snprintf(tp, sizeof tp, "00-%s-%s-01", req->trace_id, req->span_id);
        MHD_add_response_header(resp, "traceparent", tp);
    }
    /* Every response: no MIME sniffing, no framing by other sites, no
     * Referer leaking paths.  API answers are never cached (they carry
     * state and may carry a principal's data); a handler that serves
     * cacheable static files sets its own Cache-Control first. */
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    if (!MHD_get_response_header(resp, "Cache-Control") && !extra_has(req, "Cache-Control"))
        MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (req->origin) {
        /* The allowed origin echoed, never "*": with "*" a browser refuses
         * credentials, and an explicit origin list means the operator
         * trusts those pages with the user's key.  Credentials only for an
         * origin listed by name. */
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", req->origin);
        if (req->origin_credentials)
            MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, WWW-Authenticate, Retry-After, X-Lyra-Model");
    }
    /* The answer depends on Origin whenever CORS is configured at all. */
    if (req->http->opts.n_cors_origins)
        MHD_add_response_header(resp, "Vary", "Origin");
    for (int i = 0; i < req->n_extra; i++)
        MHD_add_response_header(resp, req->extra_names[i], req->extra_values[i]);
}

/* The method as a metric label: client-chosen tokens fold into "other". */
static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(method, known[i]) == 0)
            return known[i];
    return "other";
}

/* lyra_http_requests_total, once per response queued. */
static void count_response(struct lyra_http_req *req, int status)
{
    if (req->http->opts.on_response)
        req->http->opts.on_response(req, status, req->http->ctx);
    if (!req->http->opts.requests_total)
        return;
    char code[12];
    snprintf(code, sizeof code, "%d", status);
    const char *labels[] = {req->route ? req->route->pattern : "unmatched", method_label(req->method), code};
    lyra_metric_add(req->http->opts.requests_total, labels, 1);
}

void lyra_http_add_header(struct lyra_http_req *req, const char *name, const char *value)
{
    if (req->n_extra >= MAX_EXTRA_HEADERS)
        return;
    req->extra_names[req->n_extra] = strdup(name);
    req->extra_values[req->n_extra] = strdup(value);
    if (!req->extra_names[req->n_extra] || !req->extra_values[req->n_extra]) {
        free(req->extra_names[req->n_extra]);
        free(req->extra_values[req->n_extra]);
        return;
    }
    req->n_extra++;
}

void lyra_http_send(struct lyra_http_req *req, int status, const char *content_type, char *body,
                    size_t len)
{
    if (req->answered) {
        lyra_log(LYRA_LOG_ERROR, "http", req->request_id, NULL, "handler answered twice: %s %s",
                 req->method, req->path);
        free(body);
        return;
    }
    req->answered = true;
    req->status = status;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE
                                                                             : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return;
    }
    if (content_type)
        MHD_add_response_header(resp, "Content-Type", content_type);
    apply_common_headers(req, resp);
    if (MHD_queue_response(req->conn, (unsigned)status, resp) == MHD_YES)
        count_response(req, status);
    MHD_destroy_response(resp);
}

void lyra_http_send_json(struct lyra_http_req *req, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(body);
    if (!s) {
        s = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"response encoding failed\"}}");
        status = 500;
    }
    lyra_http_send(req, status, "application/json", s, s ? strlen(s) : 0);
}

void lyra_http_send_error(struct lyra_http_req *req, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* msg is valid UTF-8 (lyra_vfmt); NULL here means out of memory, which
     * lyra_http_send_json answers with a static 500. */
    json_t *err = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg);
    /* The Ollama-compatible routes (api/ollama.c) answer every error —
     * the body's, authentication's and authorization's — in Ollama's
     * {"error":"message"}, the one shape its clients read (anything else
     * shows as "[object Object]"); the status and headers (WWW-Authenticate,
     * Retry-After) say the rest. */
    if (req->route && strncmp(req->route->pattern, "/api/", 5) == 0) {
        json_decref(err);
        err = json_pack("{s:s}", "error", msg);
    }
    if (status >= 500)
        lyra_log(LYRA_LOG_WARN, "http", req->request_id, json_pack("{s:i, s:s}", "status", status, "code", code),
                 "%s %s: %s", req->method, req->path, msg);
    lyra_http_send_json(req, status, err);
}

/* ------------------------------------------------------------------ */
/* Hang-ups of suspended connections (http/hupwatch.h)                */

/* Watches the connection's socket for the client's hang-up; NULL when it
 * cannot be (then it is only noticed at the next write). */
static struct lyra_hup *hup_start(struct lyra_http *http, struct MHD_Connection *conn, void (*gone)(void *),
                                  void *ud)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? lyra_hup_start(http->hupwatch, ci->connect_fd, gone, ud) : NULL;
}

/* ------------------------------------------------------------------ */
/* Parking                                                            */

void lyra_http_park(struct lyra_http_req *req, lyra_http_handler resume, void (*gone)(void *ud),
                    void (*dropped)(void *ud), void *ud)
{
    pthread_mutex_lock(&req->lock);
    req->resume = resume;
    req->dropped = dropped;
    req->resume_ud = ud;
    req->state = REQ_PARKED;
    atomic_fetch_add(&req->http->suspended, 1);
    MHD_suspend_connection(req->conn);
    req->hup = hup_start(req->http, req->conn, gone, ud);
    pthread_mutex_unlock(&req->lock);
}

void lyra_http_wake(struct lyra_http_req *req)
{
    pthread_mutex_lock(&req->lock);
    if (req->state == REQ_PARKED) {
        req->state = REQ_WAKING;
        MHD_resume_connection(req->conn);
        atomic_fetch_sub(&req->http->suspended, 1);
    }
    pthread_mutex_unlock(&req->lock);
}

/* ------------------------------------------------------------------ */
/* Streams                                                            */

static void stream_release(struct lyra_http_stream *st)
{
    /* Called with st->lock held; unlocks. */
    bool last = --st->holders == 0;
    pthread_mutex_unlock(&st->lock);
    if (last) {
        pthread_mutex_destroy(&st->lock);
        free(st->buf);
        free(st);
    }
}

/* Resumes the stream's connection if its reader suspended it.  st->lock
 * held. */
static void stream_resume_locked(struct lyra_http_stream *st)
{
    if (st->suspended && !st->gone) {
        st->suspended = false;
        MHD_resume_connection(st->conn);
        atomic_fetch_sub(&st->http->suspended, 1);
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct lyra_http_stream *st = cls;
    pthread_mutex_lock(&st->lock);
    size_t avail = st->len - st->off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, st->buf + st->off, n);
        st->off += n;
        if (st->off == st->len)
            st->off = st->len = 0;
        pthread_mutex_unlock(&st->lock);
        return (ssize_t)n;
    }
    if (st->finished) {
        pthread_mutex_unlock(&st->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send: suspended until the next write (or close) resumes
     * it, both under this lock, so no wake-up is lost. */
    st->suspended = true;
    atomic_fetch_add(&st->http->suspended, 1);
    MHD_suspend_connection(st->conn);
    pthread_mutex_unlock(&st->lock);
    return 0;
}

static void stream_free(void *cls)
{
    struct lyra_http_stream *st = cls;
    pthread_mutex_lock(&st->lock);
    if (st->suspended) { /* cannot happen: MHD frees only a connection it runs */
        st->suspended = false;
        atomic_fetch_sub(&st->http->suspended, 1);
    }
    st->gone = true;
    stream_release(st);
}

struct lyra_http_stream *lyra_http_send_stream(struct lyra_http_req *req, int status, const char *content_type,
                                               const void *first, size_t first_len, void (*gone)(void *ud),
                                               void *ud)
{
    struct lyra_http_stream *st = calloc(1, sizeof *st);
    struct MHD_Response *resp = NULL;
    if (st && first_len > 0 && (st->buf = malloc(first_len))) {
        memcpy(st->buf, first, first_len);
        st->len = st->cap = first_len;
        pthread_mutex_init(&st->lock, NULL);
        st->http = req->http;
        st->conn = req->conn;
        st->holders = 3; /* the producer, the response, the request */
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, st, stream_free);
    }
    if (!resp) {
        if (st) {
            if (st->http)
                pthread_mutex_destroy(&st->lock);
            free(st->buf);
            free(st);
        }
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return NULL;
    }
    req->answered = true;
    req->status = status;
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    apply_common_headers(req, resp);
    st->hup = hup_start(req->http, req->conn, gone, ud);
    pthread_mutex_lock(&req->lock);
    req->state = REQ_STREAMING;
    req->stream = st;
    pthread_mutex_unlock(&req->lock);
    if (MHD_queue_response(req->conn, (unsigned)status, resp) == MHD_YES)
        count_response(req, status);
    MHD_destroy_response(resp);
    return st;
}

int lyra_http_stream_write(struct lyra_http_stream *st, const void *data, size_t len)
{
    pthread_mutex_lock(&st->lock);
    if (st->gone) {
        pthread_mutex_unlock(&st->lock);
        return LYRA_EIO;
    }
    /* A client that does not read may not make the daemon hold its whole
     * answer: past the cap the stream takes nothing more (its producer
     * stops), and what was queued is still sent. */
    if (st->overflowed || st->len - st->off + len > LYRA_HTTP_STREAM_MAX_QUEUED) {
        st->overflowed = true;
        pthread_mutex_unlock(&st->lock);
        return LYRA_ETOOBIG;
    }
    if (st->off > 0 && st->len + len > st->cap) { /* reuse what was sent */
        memmove(st->buf, st->buf + st->off, st->len - st->off);
        st->len -= st->off;
        st->off = 0;
    }
    if (st->len + len > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + len)
            cap *= 2;
        char *nb = realloc(st->buf, cap);
        if (!nb) {
            pthread_mutex_unlock(&st->lock);
            return LYRA_ENOMEM;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    stream_resume_locked(st);
    pthread_mutex_unlock(&st->lock);
    return 0;
}

void lyra_http_stream_close(struct lyra_http_stream *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&st->lock);
    /* Under the lock: the completion callback takes it too before
     * libmicrohttpd closes the socket, so the socket is still open here.
     * After this the producer's gone callback never runs. */
    lyra_hup_stop(st->hup);
    st->hup = NULL;
    st->finished = true;
    stream_resume_locked(st);
    stream_release(st);
}

size_t lyra_http_stream_queued(struct lyra_http_stream *st)
{
    pthread_mutex_lock(&st->lock);
    size_t n = st->gone ? 0 : st->len - st->off;
    pthread_mutex_unlock(&st->lock);
    return n;
}

/* ------------------------------------------------------------------ */
/* Upgrade                                                            */

/* libmicrohttpd's upgrade handler (an HTTP thread): con_cls is still the
 * request, which lives until the completion callback. */
static void on_upgraded(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
                        size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    struct lyra_http_req *req = con_cls;
    struct lyra_http *http = cls;
    struct lyra_http_upgraded *up = calloc(1, sizeof *up);
    pthread_mutex_lock(&req->lock);
    lyra_http_upgraded_fn fn = req->upgrade_fn;
    void *ud = req->upgrade_ud;
    void (*dropped)(void *) = req->upgrade_dropped;
    req->upgrade_fn = NULL;
    req->upgrade_dropped = NULL;
    pthread_mutex_unlock(&req->lock);
    if (!up || !fn) { /* out of memory: nothing can serve the socket */
        free(up);
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        if (dropped)
            dropped(ud);
        return;
    }
    up->http = http;
    up->urh = urh;
    atomic_fetch_add(&http->upgraded, 1);
    fn(sock, extra_in, extra_in_size, up, ud);
}

void lyra_http_upgrade(struct lyra_http_req *req, lyra_http_upgraded_fn upgraded, void (*dropped)(void *ud),
                       void *ud)
{
    struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgraded, req->http);
    if (!resp) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        if (dropped)
            dropped(ud);
        return;
    }
    req->answered = true;
    req->status = MHD_HTTP_SWITCHING_PROTOCOLS;
    apply_common_headers(req, resp);
    pthread_mutex_lock(&req->lock);
    req->upgrade_fn = upgraded;
    req->upgrade_dropped = dropped;
    req->upgrade_ud = ud;
    pthread_mutex_unlock(&req->lock);
    if (MHD_queue_response(req->conn, MHD_HTTP_SWITCHING_PROTOCOLS, resp) == MHD_YES) {
        count_response(req, MHD_HTTP_SWITCHING_PROTOCOLS);
    } else {
        /* Refused (not HTTP/1.1, upgrade not allowed): the connection is
         * closed by MHD; the owner lets go now. */
        pthread_mutex_lock(&req->lock);
        req->upgrade_fn = NULL;
        req->upgrade_dropped = NULL;
        pthread_mutex_unlock(&req->lock);
        if (dropped)
            dropped(ud);
    }
    MHD_destroy_response(resp);
}

void lyra_http_upgraded_close(struct lyra_http_upgraded *up)
{
    if (!up)
        return;
    struct lyra_http *http = up->http;
    MHD_upgrade_action(up->urh, MHD_UPGRADE_ACTION_CLOSE);
    free(up);
    atomic_fetch_sub(&http->upgraded, 1);
}

int lyra_http_upgraded_count(struct lyra_http *http)
{
    return atomic_load(&http->upgraded);
}

/* ------------------------------------------------------------------ */
/* Request accessors                                                  */

const char *lyra_http_path(const struct lyra_http_req *req) { return req->path; }

static bool text_loopback(const char *addr)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

bool lyra_http_peer_loopback(const struct lyra_http_req *req)
{
    if (req->client_forwarded)
        return text_loopback(req->client_addr);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}
const char *lyra_http_request_id(const struct lyra_http_req *req) { return req->request_id; }
const char *lyra_http_client_addr(const struct lyra_http_req *req) { return req->client_addr; }
const char *lyra_http_method(const struct lyra_http_req *req) { return req->method; }

void lyra_http_set_principal(struct lyra_http_req *req, void *data)
{
    free(req->principal);
    req->principal = data;
}

void *lyra_http_principal(const struct lyra_http_req *req) { return req->principal; }

/* Every X-Forwarded-For header of the request, joined with ", " in the
 * order received (a client may send its own; the proxy appends to the
 * last or adds one). */
struct xff_join {
    char buf[2048];
    size_t len;
};

static enum MHD_Result join_xff(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct xff_join *j = cls;
    if (!key || strcasecmp(key, "X-Forwarded-For") != 0 || !value)
        return MHD_YES;
    size_t vlen = strlen(value), need = vlen + (j->len ? 2 : 0);
    if (j->len + need >= sizeof j->buf) {
        /* Too long to hold: keep the right-most whole hops, which the walk
         * reads first (the trusted hops are on the right); a hop cut in
         * two could read as another address, so the cut one goes. */
        j->len = 0;
        if (vlen >= sizeof j->buf) {
            value += vlen - (sizeof j->buf - 1);
            const char *comma = strchr(value, ',');
            value = comma ? comma + 1 : value + strlen(value);
            vlen = strlen(value);
        }
    }
    if (j->len)
        memcpy(j->buf + j->len, ", ", 2), j->len += 2;
    memcpy(j->buf + j->len, value, vlen);
    j->len += vlen;
    j->buf[j->len] = '\0';
    return MHD_YES;
}

static void format_client_addr(struct lyra_http_req *req)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    req->client_addr[0] = '\0';
    req->client_forwarded = false;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, req->client_addr, sizeof req->client_addr);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, req->client_addr,
                  sizeof req->client_addr);
    if (!req->http->proxies || !lyra_proxies_trusts(req->http->proxies, req->client_addr)) {
        /* A proxy on this host that Lyra was not told to trust: every client
         * then looks like the proxy (one back-off bucket, loopback-only
         * operations allowed through it, one address in the audit log).
         * Said once per server. */
        if (!req->http->proxies && lyra_http_peer_loopback(req) &&
            MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Forwarded-For") &&
            !atomic_exchange(&req->http->xff_warned, true))
            lyra_warn("http",
                      "a request from %s carries X-Forwarded-For, but server.trusted_proxies is empty: behind a "
                      "reverse proxy every client looks like the proxy (set server.trusted_proxies to its address)",
                      req->client_addr);
        return;
    }
    struct xff_join j = {.len = 0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, join_xff, &j);
    if (j.len == 0)
        return;
    char peer[sizeof req->client_addr];
    memcpy(peer, req->client_addr, sizeof peer);
    req->client_forwarded = lyra_proxies_client(req->http->proxies, peer, j.buf, req->client_addr,
                                                sizeof req->client_addr);
}
const char *lyra_http_route(const struct lyra_http_req *req) { return req->route ? req->route->pattern : NULL; }

const char *lyra_http_trace_id(struct lyra_http_req *req)
{
    if (!req->trace_id[0]) {
        const char *tp = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "traceparent");
        if (!lyra_traceparent_parse(tp, req->trace_id))
            lyra_random_hex(req->trace_id, 16);
        lyra_random_hex(req->span_id, 8);
    }
    return req->trace_id;
}

const char *lyra_http_header(const struct lyra_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *lyra_http_query(const struct lyra_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *lyra_http_param(const struct lyra_http_req *req, const char *name)
{
    for (int i = 0; i < req->n_params; i++)
        if (strcmp(req->param_names[i], name) == 0)
            return req->param_values[i];
    return NULL;
}

int lyra_http_read_json(struct lyra_http_req *req, json_t **out)
{
    *out = NULL;
    const char *ct = lyra_http_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        lyra_http_send_error(req, 415, "unsupported_media_type",
                             "Content-Type must be application/json, got '%s'", ct ? ct : "(none)");
        return LYRA_EUNSUPPORTED;
    }
    if (!lyra_utf8_valid(req->body ? req->body : "", req->body_len)) {
        lyra_http_send_error(req, 400, "invalid_utf8", "request body is not valid UTF-8");
        return LYRA_EPARSE;
    }
    json_error_t jerr;
    json_t *j = json_loadb(req->body ? req->body : "", req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        lyra_http_send_error(req, 400, "invalid_json", "malformed JSON at line %d, column %d (byte %d): %s",
                             jerr.line, jerr.column, jerr.position, jerr.text);
        return LYRA_EPARSE;
    }
    *out = j;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Routing                                                            */

/* Matches path against pattern, filling req's params.  Segments of the form
 * {name} match any one non-empty segment. */
static bool match_pattern(const char *pattern, const char *path, struct lyra_http_req *req)
{
    int n = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (*p == '{') {
            const char *pe = strchr(p, '}');
            const char *se = strchr(s, '/');
            if (!pe)
                return false;
            if (!se)
                se = s + strlen(s);
            if (se == s || n >= MAX_PARAMS)
                return false;
            if (req) {
                req->param_names[n] = strndup(p + 1, (size_t)(pe - p - 1));
                req->param_values[n] = strndup(s, (size_t)(se - s));
            }
            n++;
            p = pe + 1;
            s = se;
            continue;
        }
        if (*p != *s)
            return false;
        p++, s++;
    }
    if (*p || *s)
        return false;
    if (req)
        req->n_params = n;
    return true;
}

static bool method_matches(const char *route_method, const char *method)
{
    return strcmp(route_method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0);
}

/* Finds the route for method+path.  When the path exists under other
 * methods only, *allow lists them ("GET, POST") and NULL is returned. */
static const struct lyra_route *find_route(struct lyra_http *http, const char *method, const char *path,
                                           char *allow, size_t allow_len)
{
    allow[0] = '\0';
    for (size_t i = 0; i < http->n_routes; i++) {
        const struct lyra_route *r = &http->routes[i];
        if (!match_pattern(r->pattern, path, NULL))
            continue;
        if (method_matches(r->method, method))
            return r;
        if (!strstr(allow, r->method)) {
            size_t used = strlen(allow);
            snprintf(allow + used, allow_len - used, "%s%s", used ? ", " : "", r->method);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* CORS                                                               */

/* 0: not allowed; 1: allowed by "*"; 2: listed by name. */
static int origin_allowed(struct lyra_http *http, const char *origin)
{
    int best = 0;
    for (size_t i = 0; i < http->opts.n_cors_origins; i++) {
        const char *o = http->opts.cors_origins[i];
        if (strcasecmp(o, origin) == 0)
            return 2;
        if (strcmp(o, "*") == 0)
            best = 1;
    }
    return best;
}

/* Answers an OPTIONS request: a CORS preflight when it carries Origin and
 * Access-Control-Request-Method, else a plain OPTIONS listing Allow. */
static void answer_options(struct lyra_http_req *req, const char *allow)
{
    char methods[128];
    snprintf(methods, sizeof methods, "%s%sOPTIONS", allow, allow[0] ? ", " : "");
    const char *origin = lyra_http_header(req, "Origin");
    const char *want = lyra_http_header(req, "Access-Control-Request-Method");
    if (origin && want) {
        if (!req->origin) {
            lyra_http_send_error(req, 403, "cors_forbidden", "origin '%.*s' is not allowed",
                                 (int)lyra_utf8_clip(origin, 200), origin);
            return;
        }
        lyra_http_add_header(req, "Access-Control-Allow-Methods", methods);
        /* A fixed list: echoing what was asked would allow anything. */
        lyra_http_add_header(req, "Access-Control-Allow-Headers",
                             "Authorization, Content-Type, X-Request-Id, traceparent, Last-Event-ID");
        lyra_http_add_header(req, "Access-Control-Max-Age", "600");
    }
    lyra_http_add_header(req, "Allow", methods);
    lyra_http_send(req, 204, NULL, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* MHD callbacks                                                      */

static bool request_id_acceptable(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (id[i] < 0x21 || id[i] > 0x7e)
            return false;
    return true;
}

struct header_sum {
    size_t bytes;
    int hosts;
    int authorizations;
};

static enum MHD_Result sum_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct header_sum *sum = cls;
    sum->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
    sum->hosts += strcasecmp(key, "Host") == 0;
    sum->authorizations += strcasecmp(key, "Authorization") == 0;
    return MHD_YES;
}

static struct lyra_http_req *begin_request(struct lyra_http *http, struct MHD_Connection *conn,
                                           const char *url, const char *method)
{
    struct lyra_http_req *req = calloc(1, sizeof *req);
    if (!req)
        return NULL;
    req->http = http;
    req->conn = conn;
    req->method = method;
    req->path = url;
    req->start_us = lyra_now_us();
    pthread_mutex_init(&req->lock, NULL);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && request_id_acceptable(rid))
        snprintf(req->request_id, sizeof req->request_id, "%s", rid);
    else
        lyra_random_hex(req->request_id, 16);
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    int allowed = origin ? origin_allowed(http, origin) : 0;
    if (allowed) {
        req->origin = origin;
        req->origin_credentials = allowed == 2;
    }
    format_client_addr(req);
    atomic_fetch_add(&http->in_flight, 1);
    return req;
}

/* Decides what can be decided from the headers alone.  Returns true when
 * the request has been answered. */
static bool screen_request(struct lyra_http_req *req)
{
    struct lyra_http *http = req->http;
    if (atomic_load(&http->draining)) {
        lyra_http_add_header(req, "Retry-After", "5");
        lyra_http_send_error(req, 503, "shutting_down", "the server is shutting down");
        return true;
    }
    struct header_sum sum = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, sum_header, &sum);
    if (sum.bytes > http->opts.max_header_bytes) {
        lyra_http_send_error(req, 431, "headers_too_large", "request headers are %zu bytes; the limit is %zu",
                             sum.bytes, http->opts.max_header_bytes);
        return true;
    }
    if (sum.hosts > 1) { /* RFC 9112 3.2: and the Host guard would only see the first */
        lyra_http_send_error(req, 400, "invalid_host", "the request has %d Host headers; one is allowed", sum.hosts);
        return true;
    }
    if (sum.authorizations > 1) { /* which one counts would depend on who reads it: a proxy, or us */
        lyra_http_send_error(req, 400, "invalid_authorization",
                             "the request has %d Authorization headers; one is allowed", sum.authorizations);
        return true;
    }
    struct lyra_err host_err = {0};
    if (http->opts.hostcheck && !lyra_http_header(req, "Authorization") &&
        lyra_hostcheck_check(http->opts.hostcheck, lyra_http_header(req, "Host"), &host_err) < 0) {
        lyra_http_send_error(req, 403, "host_not_allowed", "%s", host_err.msg);
        return true;
    }
    char allow[128];
    req->route = find_route(http, req->method, req->path, allow, sizeof allow);
    if (strcmp(req->method, "OPTIONS") == 0 && (req->route || allow[0])) {
        answer_options(req, allow);
        return true;
    }
    if (!req->route) {
        if (allow[0]) {
            lyra_http_add_header(req, "Allow", allow);
            lyra_http_send_error(req, 405, "method_not_allowed", "%s is not allowed on %s (allowed: %s)",
                                 req->method, req->path, allow);
        } else {
            lyra_http_send_error(req, 404, "not_found", "no such endpoint: %s", req->path);
        }
        return true;
    }
    match_pattern(req->route->pattern, req->path, req);
    if (http->opts.authorize && http->opts.authorize(req, req->route, http->ctx) != 0) {
        if (!req->answered)
            lyra_http_send_error(req, 403, "forbidden", "permission %s required", req->route->permission);
        return true;
    }
    const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || *end || n > http->opts.max_body_bytes) {
            lyra_http_send_error(req, 413, "body_too_large", "request body of %s bytes exceeds the limit of %zu",
                                 cl, http->opts.max_body_bytes);
            return true;
        }
    }
    return false;
}

static int append_body(struct lyra_http_req *req, const char *data, size_t len)
{
    if (req->body_too_big || req->body_len + len > req->http->opts.max_body_bytes) {
        req->body_too_big = true;
        return 0;
    }
    if (req->body_len + len + 1 > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 1024;
        while (cap < req->body_len + len + 1)
            cap *= 2;
        char *nb = realloc(req->body, cap);
        if (!nb)
            return LYRA_ENOMEM;
        req->body = nb;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
    return 0;
}

static void dispatch(struct lyra_http_req *req)
{
    struct lyra_http *http = req->http;
    req->route->handler(req, http->ctx);
    if (!req->answered && !req->resume)
        lyra_http_send_error(req, 500, "internal", "the handler for %s %s gave no response", req->method,
                             req->path);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    struct lyra_http *http = cls;
    struct lyra_http_req *req = *con_cls;
    if (!req) {
        req = begin_request(http, conn, url, method);
        if (!req)
            return MHD_NO;
        *con_cls = req;
        screen_request(req);
        return MHD_YES;
    }
    pthread_mutex_lock(&req->lock);
    bool woken = req->state == REQ_WAKING;
    struct lyra_hup *h = NULL;
    if (woken) {
        req->state = REQ_NEW;
        h = req->hup;
        req->hup = NULL;
    }
    pthread_mutex_unlock(&req->lock);
    if (woken) { /* resumed after lyra_http_park() + lyra_http_wake() */
        lyra_hup_stop(h);
        lyra_http_handler resume = req->resume;
        req->resume = NULL;
        req->dropped = NULL;
        resume(req, req->resume_ud);
        if (!req->answered && req->state != REQ_PARKED)
            lyra_http_send_error(req, 500, "internal", "a parked request was resumed without an answer");
        return MHD_YES;
    }
    if (req->answered) { /* rejected early: discard whatever body comes */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if ((lyra_now_us() - req->start_us) / 1000000 >= http->opts.request_timeout_s) {
            lyra_log(LYRA_LOG_WARN, "http", req->request_id, NULL,
                     "request body not received within %d s: closing", http->opts.request_timeout_s);
            return MHD_NO;
        }
        if (append_body(req, upload_data, *upload_size) < 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->body_too_big) {
        lyra_http_send_error(req, 413, "body_too_large", "request body exceeds the limit of %zu bytes",
                             http->opts.max_body_bytes);
        return MHD_YES;
    }
    dispatch(req);
    return MHD_YES;
}

static void free_request(struct lyra_http_req *req)
{
    for (int i = 0; i < req->n_params; i++) {
        free(req->param_names[i]);
        free(req->param_values[i]);
    }
    for (int i = 0; i < req->n_extra; i++) {
        free(req->extra_names[i]);
        free(req->extra_values[i]);
    }
    free(req->body);
    free(req->principal);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct lyra_http *http = cls;
    struct lyra_http_req *req = *con_cls;
    if (!req)
        return;
    *con_cls = NULL;
    /* Unwatch the socket before libmicrohttpd closes it and the number is
     * reused. */
    pthread_mutex_lock(&req->lock);
    struct lyra_hup *h = req->hup;
    req->hup = NULL;
    struct lyra_http_stream *st = req->stream;
    req->stream = NULL;
    if (req->state == REQ_PARKED) /* cannot happen: MHD does not end a suspended connection */
        atomic_fetch_sub(&http->suspended, 1);
    /* Parked or woken, but the resume handler will never run: a woken
     * connection whose client left is read by libmicrohttpd (EOF, reset)
     * and closed without calling the access handler again (0.9.75,
     * connection.c MHD_connection_handle_read).  The owner must still let go
     * of the request. */
    void (*dropped)(void *) = (req->state == REQ_PARKED || req->state == REQ_WAKING) ? req->dropped : NULL;
    void *dropped_ud = req->resume_ud;
    req->dropped = NULL;
    req->resume = NULL;
    void (*up_dropped)(void *) = req->upgrade_dropped; /* the upgrade never happened */
    void *up_ud = req->upgrade_ud;
    bool up_pending = req->upgrade_fn != NULL;
    req->upgrade_fn = NULL;
    req->upgrade_dropped = NULL;
    pthread_mutex_unlock(&req->lock);
    lyra_hup_stop(h);
    if (dropped)
        dropped(dropped_ud);
    if (up_pending && up_dropped)
        up_dropped(up_ud);
    if (st) {
        pthread_mutex_lock(&st->lock);
        lyra_hup_stop(st->hup);
        st->hup = NULL;
        stream_release(st); /* the request's hold */
    }
    if (lyra_log_enabled(LYRA_LOG_DEBUG) || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        enum lyra_log_level lvl = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? LYRA_LOG_DEBUG : LYRA_LOG_INFO;
        lyra_log(lvl, "http", req->request_id,
                 json_pack("{s:o, s:o, s:s, s:i, s:I, s:b}", "method", lyra_log_string(req->method), "path",
                           lyra_log_string(req->path), "client", req->client_addr, "status",
                           req->status, "duration_us", (json_int_t)(lyra_now_us() - req->start_us),
                           "completed", toe == MHD_REQUEST_TERMINATED_COMPLETED_OK),
                 "%s", toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "request" : "request ended early");
    }
    free_request(req);
    atomic_fetch_sub(&http->in_flight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    lyra_log(LYRA_LOG_DEBUG, "http", NULL, NULL, "libmicrohttpd: %s", msg);
}

/* libmicrohttpd calls its panic handler on an internal inconsistency it
 * cannot survive (stopping with a suspended connection is one).  The default
 * prints to stderr and aborts; this one puts the place and reason into
 * Lyra's log (log.file) first.  It never returns: the header says going on
 * after a panic "is never safe". */
static void on_mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
    char msg[256];
    lyra_fmt(msg, sizeof msg, "%s", reason ? reason : "(no reason given)");
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    lyra_log(LYRA_LOG_ERROR, "http", NULL,
             json_pack("{s:o, s:i, s:o}", "file", lyra_log_string(file), "line", (int)line, "reason",
                       lyra_log_string(msg)),
             "libmicrohttpd panic at %s:%u: %s; aborting", file ? file : "?", line, msg);
    abort();
}

/* The panic handler is process-wide in libmicrohttpd: set it once, before
 * the first daemon starts. */
static pthread_once_t mhd_panic_once = PTHREAD_ONCE_INIT;

static void set_mhd_panic(void)
{
    MHD_set_panic_func(on_mhd_panic, NULL);
}

/* ------------------------------------------------------------------ */
/* Server                                                             */

static int open_listener(const char *host, int port, int *bound_port, struct lyra_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0)
        return lyra_err_set(err, LYRA_EINVAL, "cannot listen on host '%s': %s (give a numeric IPv4 or IPv6 address)",
                            host, gai_strerror(rc));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return lyra_err_set(err, LYRA_EIO, "socket: %s", strerror(errno));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        close(fd);
        freeaddrinfo(ai);
        return lyra_err_set(err, e == EADDRINUSE ? LYRA_EADDRINUSE : LYRA_EIO, "cannot listen on %s:%d: %s%s",
                            host, port, strerror(e),
                            e == EADDRINUSE ? " (another process holds the port; pick another with --port)" : "");
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

struct lyra_http *lyra_http_new(const struct lyra_http_options *opts, const struct lyra_route *routes,
                                size_t n_routes, void *ctx, struct lyra_err *err)
{
    struct lyra_http *http = calloc(1, sizeof *http);
    if (!http) {
        lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return NULL;
    }
    http->opts = *opts;
    if (http->opts.threads < 1)
        http->opts.threads = 1;
    if (http->opts.request_timeout_s < 1)
        http->opts.request_timeout_s = 60;
    http->routes = routes;
    http->n_routes = n_routes;
    http->ctx = ctx;
    http->listen_fd = -1;
    if (lyra_hupwatch_new(&http->hupwatch, err) < 0) {
        lyra_http_free(http);
        return NULL;
    }
    if (opts->n_trusted_proxies > 0 &&
        lyra_proxies_new(&http->proxies, opts->trusted_proxies, opts->n_trusted_proxies, err) < 0) {
        lyra_http_free(http);
        return NULL;
    }
    /* The list is borrowed for this call only. */
    http->opts.trusted_proxies = NULL;
    http->opts.n_trusted_proxies = 0;
    http->listen_fd = open_listener(opts->host, opts->port, &http->port, err);
    if (http->listen_fd < 0) {
        lyra_http_free(http);
        return NULL;
    }
    return http;
}

int lyra_http_start(struct lyra_http *http, struct lyra_err *err)
{
    /* The pool holds the headers, MHD's ~56-byte record per header and its
     * read buffer; headers beyond max_header_bytes but within the pool get
     * our JSON 431, beyond the pool MHD answers 431 itself (HTML body).  It
     * is kept small: libmicrohttpd 0.9.75 clears the pool for every request
     * on a connection (a memset of its whole size), which at 8x the header
     * limit plus 64 KiB was a third of the time of a /health request. */
    size_t pool = http->opts.max_header_bytes * 3 + 16 * 1024;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_TURBO;
    pthread_once(&mhd_panic_once, set_mhd_panic);
    http->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, http, MHD_OPTION_LISTEN_SOCKET, http->listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)http->opts.threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)http->opts.idle_timeout_s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)http->opts.max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_NOTIFY_COMPLETED, on_completed, http,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, http, MHD_OPTION_END);
    if (!http->daemon)
        return lyra_err_set(err, LYRA_EIO, "libmicrohttpd failed to start on port %d", http->port);
    http->mhd_owns_listener = true;
    return 0;
}

int lyra_http_port(const struct lyra_http *http)
{
    return http->port;
}

/* MHD hands the listening socket back, but with internal polling threads
 * it must stay open until after MHD_stop_daemon (microhttpd.h: a worker may
 * still be using it; a closed number could be reused by a new socket).  So
 * it is kept and closed in lyra_http_free; shutdown() now makes the kernel
 * refuse new connections instead of queueing them unaccepted, as a close
 * would have. */
void lyra_http_quiesce(struct lyra_http *http)
{
    if (http->daemon && http->mhd_owns_listener) {
        MHD_socket fd = MHD_quiesce_daemon(http->daemon);
        if (fd == MHD_INVALID_SOCKET) {
            lyra_warn("http", "libmicrohttpd did not quiesce: new connections are still accepted");
            return;
        }
        (void)shutdown(fd, SHUT_RDWR);
        http->listen_fd = fd;
        http->mhd_owns_listener = false;
    }
}

int lyra_http_in_flight(struct lyra_http *http)
{
    return atomic_load(&http->in_flight);
}


void lyra_http_set_draining(struct lyra_http *http)
{
    atomic_store(&http->draining, true);
}


void lyra_http_free(struct lyra_http *http)
{
    if (!http)
        return;
    bool left_running = false;
    if (http->daemon) {
        /* MHD_stop_daemon with a suspended connection aborts the process.
         * The caller ended every parked request and stream first (producers
         * before consumers); what was resumed still needs its thread to run,
         * so wait for that, bounded. */
        for (int i = 0; i < 500 && atomic_load(&http->suspended) + atomic_load(&http->upgraded) > 0; i++)
            usleep(10000);
        int left = atomic_load(&http->suspended) + atomic_load(&http->upgraded);
        if (left > 0) {
            lyra_log(LYRA_LOG_ERROR, "http", NULL, json_pack("{s:i}", "suspended", left),
                     "%d connection(s) still suspended or upgraded at stop: leaving libmicrohttpd running rather than abort",
                     left);
            left_running = true;
        } else {
            MHD_stop_daemon(http->daemon);
        }
    }
    /* The socket before start, or the quiesced one: only once MHD stopped. */
    if (http->listen_fd >= 0 && !http->mhd_owns_listener && !left_running)
        close(http->listen_fd);
    lyra_hupwatch_free(http->hupwatch);
    lyra_proxies_free(http->proxies);
    free(http);
}
