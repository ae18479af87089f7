/* events.c — the event bus over HTTP (JSON; the live SSE/WebSocket stream
 * builds on the same bus):
 *   GET  /events/recent?since=SEQ&types=model.*,job.*&limit=N
 *        events still in the replay ring, oldest first, and where the ring
 *        starts (first_seq; truncated when events after `since` are gone)
 *   POST /events {"type":"custom.NAME","data":{...}}
 *        publishes an application event (types must start with "custom."
 *        so clients cannot forge system events; data at most
 *        events.max_payload_bytes encoded)
 *   GET  /events/ws, GET /events
 *        the live stream over WebSocket and SSE (api/evstream.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/authz.h"
#include "api/server.h"
#include "core/util.h"

struct collect {
    json_t *list;
    size_t limit;
    struct lyra_server *srv;
    const struct lyra_principal *who; /* NULL: no policy installed */
};

static void collect_event(const struct lyra_event *ev, void *ud)
{
    struct collect *c = ud;
    if (c->who && lyra_authz_event_visible(c->srv, c->who, ev->type, ev->data) != LYRA_AUTHZ_SHOW)
        return;
    if (json_array_size(c->list) < c->limit)
        json_array_append_new(c->list, lyra_event_to_json(ev));
}

void lyra_api_events_recent(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    uint64_t since = 0, limit = 1000;
    const char *since_s = lyra_http_query(req, "since");
    const char *limit_s = lyra_http_query(req, "limit");
    if (since_s && lyra_parse_u64(since_s, &since) < 0) {
        lyra_http_send_error(req, 400, "invalid_parameter", "since must be a non-negative integer");
        return;
    }
    if (limit_s && (lyra_parse_u64(limit_s, &limit) < 0 || limit == 0 || limit > 100000)) {
        lyra_http_send_error(req, 400, "invalid_parameter", "limit must be an integer from 1 to 100000");
        return;
    }
    struct collect c = {json_array(), (size_t)limit, srv, lyra_authz_principal(req)};
    uint64_t first = 0;
    lyra_bus_replay(srv->bus, since, lyra_http_query(req, "types"), collect_event, &c, &first);
    lyra_http_send_json(req, 200,
                        json_pack("{s:o, s:I, s:I, s:b}", "events", c.list, "last_seq",
                                  (json_int_t)lyra_bus_last_seq(srv->bus), "first_seq", (json_int_t)first,
                                  "truncated", since + 1 < first));
}

static bool valid_custom_type(const char *t)
{
    size_t n = strlen(t);
    if (n <= 7 || n >= 64 || strncmp(t, "custom.", 7) != 0)
        return false;
    for (size_t i = 7; i < n; i++)
        if (!(t[i] == '.' || t[i] == '_' || t[i] == '-' || (t[i] >= 'a' && t[i] <= 'z') ||
              (t[i] >= '0' && t[i] <= '9')))
            return false;
    return true;
}

void lyra_api_events_publish(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    json_t *body;
    if (lyra_http_read_json(req, &body) < 0)
        return;
    json_t *type = json_object_get(body, "type");
    json_t *data = json_object_get(body, "data");
    if (!json_is_object(body) || !json_is_string(type)) {
        lyra_http_send_error(req, 400, "invalid_field", "body must be an object with a string field 'type'");
    } else if (!valid_custom_type(json_string_value(type))) {
        lyra_http_send_error(req, 400, "invalid_field",
                             "type must be 'custom.' followed by lower-case letters, digits, '.', '_' or '-' "
                             "(at most 63 characters)");
    } else if (data && !json_is_object(data)) {
        lyra_http_send_error(req, 400, "invalid_field", "data must be an object");
    } else {
        /* The payload as it would be stored and replayed: compact JSON. */
        size_t size = data ? json_dumpb(data, NULL, 0, JSON_COMPACT) : 2;
        size_t max = srv->cfg->events.max_payload_bytes;
        if (size > max) {
            lyra_http_send_error(req, 413, "payload_too_large",
                                 "event data is %zu bytes encoded, more than events.max_payload_bytes (%zu)",
                                 size, max);
        } else {
            uint64_t seq = lyra_bus_publish(srv->bus, json_string_value(type), "api", json_incref(data));
            if (seq == 0)
                lyra_http_send_error(req, 503, "events_unavailable",
                                     "the event was not published: event numbers cannot be reserved (the "
                                     "database cannot be written)");
            else
                lyra_http_send_json(req, 201, json_pack("{s:I}", "seq", (json_int_t)seq));
        }
    }
    json_decref(body);
}

void lyra_api_events_ws(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    lyra_evstream_ws(srv->evstream, req, lyra_authz_principal(req));
}

void lyra_api_events_sse(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    lyra_evstream_sse(srv->evstream, req, lyra_authz_principal(req));
}
