/* evstream.h — the live event stream over WebSocket (GET /events/ws) and
 * Server-Sent Events (GET /events), both served by ONE event loop thread
 * (core/loop.h), never a thread per client.
 *
 * Each client has an event subscription (core/evsub.h: replay after
 * ?since / Last-Event-ID, then live, through a bounded queue) and a bounded
 * outbound buffer (max_out_bytes).  A client that does not read fills its
 * buffer, then its subscription's queue, and then gets a stream.gap event
 * saying where to resume: the publisher is never held up.
 *
 * WebSocket (RFC 6455, framing by wslay): text frames out, one event per
 * message; client text/binary messages are ignored; frames over 64 KiB
 * in → close 1009, unmasked or malformed frames → close 1002 (wslay); a
 * ping every ws_ping_ms, and a client that does not pong within
 * ws_pong_timeout_ms is closed with 1001; daemon stop → 1001 "server
 * shutting down".
 *
 * SSE: "id: SEQ\nevent: TYPE\ndata: JSON\n\n" per event, a ": ping"
 * comment every sse_ping_ms, resume from Last-Event-ID (preferred) or
 * ?since.
 *
 * Thread-safety: lyra_evstream_ws/sse are HTTP handlers (any HTTP thread);
 * new/shutdown/free and stats from the controlling thread (stats: any). */
#ifndef LYRA_EVSTREAM_H
#define LYRA_EVSTREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/events.h"
#include "http/http.h"

struct lyra_store;
struct lyra_evstream;

/* Largest client message accepted (a larger one is closed with 1009). */
#define LYRA_EVSTREAM_MAX_IN (64 * 1024)

struct lyra_evstream_options {
    struct lyra_bus *bus;     /* borrowed, outlives the evstream */
    struct lyra_store *store; /* borrowed (replay beyond the ring); NULL: ring only */
    size_t max_queued;        /* events a subscription holds (evsub); 0 = 1024 */
    size_t max_queued_bytes;    /* event text queued per client, replay included (0 = 1 MiB) */
    size_t max_out_bytes;     /* per client, waiting for the socket; 0 = 256 KiB */
    int ws_ping_ms;           /* 0 = 30000 */
    int ws_pong_timeout_ms;   /* 0 = 30000 */
    int sse_ping_ms;          /* 0 = 15000 */
    int close_grace_ms;       /* wait for the client's close frame; 0 = 1000 */
    /* Who may see what.  Each client carries a copy of the `who` its
     * handler was given (who_size bytes: the caller's principal).
     * visible(policy_ud, who, type, data) decides per event (publishing
     * thread, under the bus lock: must not block); still_valid(policy_ud,
     * who) is asked every revalidate_ms on the loop thread, and a client
     * for which it is false is ended (WebSocket close 1008, SSE an
     * "auth.revoked" event, then the end).  NULL = every client sees
     * everything, for ever. */
    bool (*visible)(void *policy_ud, const void *who, const char *type, const json_t *data);
    bool (*still_valid)(void *policy_ud, const void *who);
    void *policy_ud;
    size_t who_size;
    int revalidate_ms;        /* 0 = 1000 */
};

/* Creates the stream server and starts its loop thread ("lyra-events").
 * Returns 0 with *out (free with lyra_evstream_free), or a negative code. */
int lyra_evstream_new(const struct lyra_evstream_options *opts, struct lyra_evstream **out, struct lyra_err *err);

/* Handlers: GET /events/ws?since=SEQ&types=... and GET /events (same
 * parameters, Last-Event-ID header).  A bad since or types is 400 before
 * any upgrade; a request that is not a WebSocket handshake 400 (426 for a
 * wrong Sec-WebSocket-Version); after shutdown 503. */
/* `who` (who_size bytes, copied; may be NULL when who_size is 0) is what
 * the policy callbacks get for this client.  A WebSocket client that
 * offers the subprotocol "lyra-events" (Sec-WebSocket-Protocol) gets it
 * selected; any other offered protocol (the "lyra.bearer.<key>" a browser
 * uses to send its key) is never echoed. */
void lyra_evstream_ws(struct lyra_evstream *es, struct lyra_http_req *req, const void *who);
void lyra_evstream_sse(struct lyra_evstream *es, struct lyra_http_req *req, const void *who);

/* Ends every stream: WebSocket clients get close 1001 "server shutting
 * down" (up to timeout_ms for their close frames, then their sockets are
 * closed), SSE streams end; new ones are refused; then the loop thread is
 * joined.  Call it before the HTTP server is freed (its streams and
 * upgraded sockets must be gone first).  Idempotent. */
void lyra_evstream_shutdown(struct lyra_evstream *es, int timeout_ms);

/* Shuts down if not done yet and frees.  NULL is a no-op. */
void lyra_evstream_free(struct lyra_evstream *es);

struct lyra_evstream_stats {
    int ws_clients, sse_clients;
    uint64_t ws_total, sse_total; /* since start */
};
void lyra_evstream_stats(struct lyra_evstream *es, struct lyra_evstream_stats *out);

#endif
