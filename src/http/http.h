/* http.h — Lyra's thin HTTP layer over libmicrohttpd.
 *
 * Routes are declared in one table (method, path pattern, handler, required
 * permission).  The layer owns everything that is the same for every route:
 * request ids (X-Request-Id accepted or generated, always echoed), the Host
 * guard (403, http/hostcheck.h), limits (body → 413, headers → 431, body
 * read deadline), CORS (allowed origins, preflight), 404 / 405 with Allow,
 * JSON errors
 * {"error":{"code":"...","message":"..."}}, and draining on shutdown.
 *
 * Handlers run on one of the server's worker threads; each must answer the
 * request exactly once with one of the lyra_http_send* functions (a handler
 * that does not is answered 500).  A lyra_http_req is valid until the
 * handler returns.
 *
 * Thread-safety: lyra_http_* request functions are called only by the thread
 * running that request's handler, except lyra_http_wake and the stream
 * functions, which any thread may call.  lyra_http_quiesce/set_draining/
 * in_flight may be called from any thread; new/start/free from one
 * controlling thread. */
#ifndef LYRA_HTTP_H
#define LYRA_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/metrics.h"
#include "http/hostcheck.h"

struct lyra_http;
struct lyra_http_req;

typedef void (*lyra_http_handler)(struct lyra_http_req *req, void *ctx);

struct lyra_route;

/* Decides whether the caller may use `route` (its permission: "" =
 * public).  Runs for every matched route (public ones included, so the
 * auth module can attach the anonymous principal and refuse keys in the
 * URL) once the headers are in, BEFORE the body is read: an
 * unauthenticated client cannot make the daemon read a body.  Returns 0 to
 * proceed; otherwise it has answered the request itself (400/401/403/429).
 * Installed by the server; NULL allows everything. */
typedef int (*lyra_http_authorize_fn)(struct lyra_http_req *req, const struct lyra_route *route, void *ctx);

/* Runs once per request, when its response (or the head of its stream, or
 * its 101) is queued, on the thread that queued it, with the status: the
 * audit hook.  Request accessors are valid during the call.  Must not
 * block.  NULL = none. */
typedef void (*lyra_http_response_fn)(struct lyra_http_req *req, int status, void *ctx);

struct lyra_route {
    const char *method;      /* "GET", "POST", "DELETE", ... */
    const char *pattern;     /* "/conversations/{id}": {name} matches one segment */
    lyra_http_handler handler;
    const char *permission;  /* required permission, "" = public */
};

struct lyra_http_options {
    const char *host;              /* "127.0.0.1", "::1", "0.0.0.0" */
    int port;                      /* 0 = any free port; see lyra_http_port() */
    int threads;                   /* worker threads (>= 1) */
    size_t max_body_bytes;
    size_t max_header_bytes;
    int idle_timeout_s;            /* an idle connection is closed after this */
    int request_timeout_s;         /* a body that takes longer to arrive is cut off */
    int max_connections;
    char *const *cors_origins;     /* borrowed; "*" = any */
    size_t n_cors_origins;
    /* server.trusted_proxies: addresses or CIDR blocks (http/proxies.h)
     * whose X-Forwarded-For is believed; a bad entry fails lyra_http_new.
     * Borrowed during lyra_http_new only.  None: the peer is the client. */
    char *const *trusted_proxies;
    size_t n_trusted_proxies;
    lyra_http_authorize_fn authorize;
    lyra_http_response_fn on_response;
    /* The DNS-rebinding guard: an anonymous request (no Authorization
     * header) whose Host header it refuses is answered 403
     * host_not_allowed before routing (unknown paths and OPTIONS preflights
     * included).  A request that carries credentials is not checked: a
     * rebinding page cannot know the key, and the key is checked instead.
     * Borrowed, must outlive the server; NULL serves any Host. */
    const struct lyra_hostcheck *hostcheck;
    /* Counted once per response queued (lyra_http_send*), with labels
     * {route, method, code}: route is the matched route's pattern
     * ("/models/{name}", never the raw path) or "unmatched"; method one of
     * the standard methods or "other".  Borrowed, must outlive the server;
     * NULL counts nothing. */
    struct lyra_metric *requests_total;
};

/* Creates the server and binds the listening socket (so "address in use"
 * is reported here, with the address).  Routes and ctx are borrowed and
 * must outlive the server.  Returns NULL with err set. */
struct lyra_http *lyra_http_new(const struct lyra_http_options *opts, const struct lyra_route *routes,
                                size_t n_routes, void *ctx, struct lyra_err *err);

/* Starts serving on worker threads. */
int lyra_http_start(struct lyra_http *http, struct lyra_err *err);

/* The bound port (useful with port 0). */
int lyra_http_port(const struct lyra_http *http);

/* Stops accepting new connections; requests in flight go on. */
void lyra_http_quiesce(struct lyra_http *http);

/* Requests being handled right now. */
int lyra_http_in_flight(struct lyra_http *http);

/* From now on new requests (also on kept-alive connections) get 503 with
 * Retry-After, and every response carries Connection: close.  Thread-safe. */
void lyra_http_set_draining(struct lyra_http *http);

/* Stops the server (closing remaining connections) and frees it.  Call it
 * once every parked request was woken and every stream closed: it waits a
 * little for those to be resumed (libmicrohttpd must not be stopped with a
 * suspended connection). */
void lyra_http_free(struct lyra_http *http);

/* --- request accessors (strings borrowed, valid during the handler) --- */
const char *lyra_http_path(const struct lyra_http_req *req);
const char *lyra_http_header(const struct lyra_http_req *req, const char *name);
const char *lyra_http_query(const struct lyra_http_req *req, const char *name);
/* True when the client connected from a loopback address (127.0.0.0/8,
 * ::1, or an IPv4-mapped 127.x): what an endpoint that touches the local
 * file system checks before it trusts a path.  Through a trusted proxy it
 * is the forwarded client that counts (a remote client behind a local
 * nginx is not local). */
bool lyra_http_peer_loopback(const struct lyra_http_req *req);
/* The client's address as text ("127.0.0.1", "::1"; "" when unknown):
 * what the audit log and the failed-authentication back-off key on.  When
 * the peer is one of the trusted proxies, the client X-Forwarded-For names
 * (http/proxies.h: the right-most untrusted hop); otherwise the peer. */
const char *lyra_http_client_addr(const struct lyra_http_req *req);
/* The method ("GET", ...). */
const char *lyra_http_method(const struct lyra_http_req *req);
/* A per-request slot for the auth module: `data` (taken; a plain block
 * that free() releases, or NULL) replaces what was there and is freed when
 * the request ends.  Only the request's own threads touch it. */
void lyra_http_set_principal(struct lyra_http_req *req, void *data);
void *lyra_http_principal(const struct lyra_http_req *req);
/* A {name} segment of the matched route pattern, NULL if none. */
const char *lyra_http_param(const struct lyra_http_req *req, const char *name);
const char *lyra_http_request_id(const struct lyra_http_req *req);
/* The pattern of the route the request matched ("/models/{name}"; static,
 * valid as long as the route table), or NULL when none matched. */
const char *lyra_http_route(const struct lyra_http_req *req);
/* The request's W3C trace id: from a valid `traceparent` header, else a new
 * random one.  Once asked for, the response echoes a traceparent with this
 * trace id and a span id of Lyra's own. */
const char *lyra_http_trace_id(struct lyra_http_req *req);

/* Parses the body as JSON.  On failure the request has been answered (415
 * wrong content type, 400 invalid UTF-8 or malformed JSON naming line,
 * column and byte) and a negative code is returned. */
int lyra_http_read_json(struct lyra_http_req *req, json_t **out);

/* --- responses: call exactly one send per request --- */
/* Adds a response header (copied). Call before sending. */
void lyra_http_add_header(struct lyra_http_req *req, const char *name, const char *value);
/* Sends body (taken; malloc'd) with the given type. */
void lyra_http_send(struct lyra_http_req *req, int status, const char *content_type, char *body,
                    size_t len);
/* Sends a JSON value (reference taken). */
void lyra_http_send_json(struct lyra_http_req *req, int status, json_t *body);
/* Sends {"error":{"code":code,"message":...}}. */
void lyra_http_send_error(struct lyra_http_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* --- deferred answers and streams --------------------------------- */

/* Parks the request so that the handler can return without answering
 * while another thread prepares the answer.  Call it from the handler
 * BEFORE handing the request to another thread.  Later, that thread calls
 * lyra_http_wake(); then `resume` runs on an HTTP thread with `ud`, and
 * must answer (or park again).  While parked, the request stays valid and
 * the connection does not time out.  If the client hangs up while the
 * request is parked, `gone(ud)` (may be NULL) runs once on the HTTP
 * watcher thread — never after `resume` started; the owner should then stop
 * its work and still wake the request (the answer goes nowhere).  If the
 * connection ends while parked or woken, before `resume` could run (the
 * client left), `dropped(ud)` (may be NULL) runs instead, on an HTTP thread:
 * the request is gone, `resume` will never run, and the owner must not wake
 * it any more.  Exactly one of `resume` and `dropped` runs. */
void lyra_http_park(struct lyra_http_req *req, lyra_http_handler resume, void (*gone)(void *ud),
                    void (*dropped)(void *ud), void *ud);
/* Thread-safe: makes a parked request's `resume` run soon.  Only the first
 * wake after a park counts (each resume pairs with one suspend). */
void lyra_http_wake(struct lyra_http_req *req);

struct lyra_http_stream;

/* Answers with a streamed body (chunked transfer encoding) that starts
 * with `first` (copied; at least one byte) and returns the stream, which
 * the caller owns until lyra_http_stream_close().  Data written to the
 * stream is sent as the client can take it.  The request itself may be
 * freed once the handler returns; only the stream remains valid.  NULL on
 * allocation failure (the request is then answered 500).
 *
 * Why a first chunk: the content reader then never suspends the connection
 * while the headers are still being sent, a path libmicrohttpd 0.9.75
 * handles less well than suspension between body chunks.  Park the
 * request (lyra_http_park) until there is something to send.
 *
 * `gone(ud)` (may be NULL) runs once on the HTTP watcher thread when the
 * client hangs up while the stream is open, even if nothing is written
 * meanwhile; never after lyra_http_stream_close() returned. */
struct lyra_http_stream *lyra_http_send_stream(struct lyra_http_req *req, int status, const char *content_type,
                                               const void *first, size_t first_len, void (*gone)(void *ud),
                                               void *ud);
/* Bytes a stream may hold for a client that does not read them. */
#define LYRA_HTTP_STREAM_MAX_QUEUED ((size_t)4 << 20)

/* Thread-safe.  Queues data (copied).  Returns 0, LYRA_EIO once the client
 * has gone, or LYRA_ETOOBIG once more than LYRA_HTTP_STREAM_MAX_QUEUED bytes
 * would wait for a client that does not read (the stream then takes nothing
 * more); on either the caller should stop producing and close. */
int lyra_http_stream_write(struct lyra_http_stream *st, const void *data, size_t len);
/* Thread-safe.  Ends the body after what was written, and releases the
 * caller's hold on the stream. */
void lyra_http_stream_close(struct lyra_http_stream *st);
/* Thread-safe.  Bytes written to the stream that the client has not taken
 * yet (0 once it is gone): a producer that wants backpressure, rather than
 * LYRA_ETOOBIG, stops writing above its own mark. */
size_t lyra_http_stream_queued(struct lyra_http_stream *st);

/* --- protocol upgrade (WebSocket) --------------------------------- */

/* An upgraded connection: the socket belongs to its owner until
 * lyra_http_upgraded_close(). */
struct lyra_http_upgraded;

/* Runs on an HTTP thread once the 101 response went out; must not block
 * (hand the socket to a loop).  `extra` (extra_len bytes, valid during the
 * call only) is what the client sent after its headers, to be treated as
 * the first bytes read from fd.  fd must not be closed directly: the owner
 * ends the connection with lyra_http_upgraded_close(up), exactly once. */
typedef void (*lyra_http_upgraded_fn)(int fd, const char *extra, size_t extra_len, struct lyra_http_upgraded *up,
                                      void *ud);

/* Answers 101 Switching Protocols with the headers added so far
 * (lyra_http_add_header: Upgrade, Connection, Sec-WebSocket-Accept ...) and
 * hands the socket over: `upgraded(...)` runs once the response is sent.
 * If the connection ends before that (the client left), `dropped(ud)`
 * (may be NULL) runs instead, on an HTTP thread: exactly one of the two
 * runs.  Upgraded connections count in lyra_http_in_flight until closed,
 * and lyra_http_free waits (bounded) for every one of them to be closed:
 * close them before freeing the server (libmicrohttpd must not be stopped
 * with an upgraded connection open). */
void lyra_http_upgrade(struct lyra_http_req *req, lyra_http_upgraded_fn upgraded, void (*dropped)(void *ud),
                       void *ud);

/* Thread-safe.  Closes an upgraded connection's socket (through
 * libmicrohttpd) and frees `up`.  Call exactly once per upgraded run. */
void lyra_http_upgraded_close(struct lyra_http_upgraded *up);

/* Upgraded connections not closed yet. */
int lyra_http_upgraded_count(struct lyra_http *http);

#endif
