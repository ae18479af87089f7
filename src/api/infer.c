/* infer.c — see infer.h.  One struct lyra_infer per request, shared by the
 * HTTP side (until it has answered) and the job side (until the terminal
 * frame); freed when both let go.
 *
 * Threads: job frames arrive on the supervisor thread (on_frame, under the
 * job's lock), the answer of a parked request is sent on an HTTP thread
 * (on_resume), and a client hang-up is reported on the HTTP watcher thread
 * (on_gone, which takes no lock of ours).  Lock order: the job's lock,
 * in->lock, then the HTTP layer's stream, request and hang-up locks. */
#include "api/infer.h"

#include "api/authz.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/server.h"
#include "core/log.h"
#include "core/trace.h"
#include "core/util.h"
#include "models/manager.h"
#include "proto/messages.h"

struct lyra_infer {
    pthread_mutex_t lock;
    int refs;
    struct lyra_server *srv;
    struct lyra_http_req *req;   /* valid while parked */
    struct lyra_http_stream *st; /* while streaming */
    struct lyra_job *job;
    const struct lyra_infer_format *fmt;
    void *ud;
    bool stream, parked, woken, started, gone;
    char *text;
    size_t len, cap;
    bool text_lost;              /* out of memory while collecting the text */
    json_t *terminal;            /* done / error / embedding frame (a copy) */
    char model[128];
    char id[64];
    char request_id[130];
    char trace_id[33];
    char endpoint[64];
    long created;
    int64_t t0_us;
    int64_t first_token_us;      /* the first "token" frame came (0: none yet) */
    const char *route;           /* the route's pattern (static), the metrics' route label */
};

static void infer_unref_locked(struct lyra_infer *in)
{
    /* Called with in->lock held; unlocks. */
    bool last = --in->refs == 0;
    pthread_mutex_unlock(&in->lock);
    if (!last)
        return;
    lyra_job_release(in->job);
    json_decref(in->terminal);
    if (in->fmt->free_ud)
        in->fmt->free_ud(in->ud);
    free(in->text);
    pthread_mutex_destroy(&in->lock);
    free(in);
}

static void append_text(struct lyra_infer *in, const char *s)
{
    size_t n = strlen(s);
    if (in->len + n + 1 > in->cap) {
        size_t cap = in->cap ? in->cap : 256;
        while (cap < in->len + n + 1)
            cap *= 2;
        char *nt = realloc(in->text, cap);
        if (!nt) {
            in->text_lost = true;
            return;
        }
        in->text = nt;
        in->cap = cap;
    }
    memcpy(in->text + in->len, s, n + 1);
    in->len += n;
}

/* The result view the formatters read. */
static void result_of(struct lyra_infer *in, struct lyra_infer_result *r)
{
    memset(r, 0, sizeof *r);
    r->model = in->model;
    r->text = in->text ? in->text : "";
    r->id = in->id;
    r->created = in->created;
    if (in->terminal) {
        r->finish_reason = json_string_value(json_object_get(in->terminal, "finish_reason"));
        r->usage = json_object_get(in->terminal, "usage");
        r->timings = json_object_get(in->terminal, "timings");
        if (json_object_get(in->terminal, "data"))
            r->embedding = in->terminal;
    }
}

static char *sse_encode(json_t *chunk, bool sse)
{
    char *body = json_dumps(chunk, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (!body)
        return NULL;
    char *out = NULL;
    if (asprintf(&out, sse ? "data: %s\n\n" : "%s\n", body) < 0)
        out = NULL;
    free(body);
    return out;
}

/* Appends the encoded chunk(s) of `j` (object or array of objects; taken).
 * Returns false when something could not be encoded. */
static bool encode_into(struct lyra_infer *in, json_t *j, char **buf, size_t *len)
{
    if (!j)
        return false;
    bool ok = true;
    size_t n = json_is_array(j) ? json_array_size(j) : 1;
    for (size_t i = 0; i < n; i++) {
        char *s = sse_encode(json_is_array(j) ? json_array_get(j, i) : j, in->fmt->sse);
        size_t sl = s ? strlen(s) : 0;
        char *nb = s ? realloc(*buf, *len + sl + 1) : NULL;
        if (nb) {
            memcpy(nb + *len, s, sl + 1);
            *buf = nb;
            *len += sl;
        } else {
            ok = false;
        }
        free(s);
    }
    json_decref(j);
    return ok;
}

/* The chunk for an error that could not be encoded: static bytes, so that a
 * stream always ends with an error the client can read. */
static const char fallback_sse[] =
    "data: {\"error\":{\"message\":\"the request failed and its error could not be reported\","
    "\"type\":\"server_error\",\"code\":\"internal\"}}\n\n";
static const char fallback_ndjson[] =
    "{\"error\":{\"code\":\"internal\",\"message\":\"the request failed and its error could not be reported\"}}\n";

static void stream_write_json(struct lyra_infer *in, json_t *j, bool is_error)
{
    char *buf = NULL;
    size_t len = 0;
    bool ok = encode_into(in, j, &buf, &len);
    int rc = 0;
    if (ok && buf)
        rc = lyra_http_stream_write(in->st, buf, len);
    else if (is_error)
        rc = in->fmt->sse ? lyra_http_stream_write(in->st, fallback_sse, sizeof fallback_sse - 1)
                          : lyra_http_stream_write(in->st, fallback_ndjson, sizeof fallback_ndjson - 1);
    free(buf);
    if (rc != 0 && in->job && !in->gone) {
        in->gone = true;
        lyra_manager_cancel(in->job); /* the client left: free the slot */
    }
}

static void stream_finish(struct lyra_infer *in)
{
    if (in->fmt->sse) {
        static const char done[] = "data: [DONE]\n\n";
        lyra_http_stream_write(in->st, done, sizeof done - 1);
    }
    lyra_http_stream_close(in->st);
    in->st = NULL;
}

static json_t *error_body(struct lyra_infer *in, json_t *frame, int *status)
{
    *status = (int)json_integer_value(json_object_get(frame, "status"));
    if (*status < 400 || *status > 599)
        *status = 500;
    return in->fmt->error(json_string_value(json_object_get(frame, "code")),
                          json_string_value(json_object_get(frame, "message")), *status, in->ud);
}

/* Adds the daemon's own spans to the worker's timings. */
static void complete_timings(struct lyra_infer *in)
{
    json_t *t = json_object_get(in->terminal, "timings");
    if (!json_is_object(t)) {
        t = json_object();
        json_object_set_new(in->terminal, "timings", t);
    }
    json_object_set_new(t, "load_ms", json_real(in->job ? lyra_job_load_ms(in->job) : 0.0));
    json_object_set_new(t, "total_ms", json_real((double)(lyra_now_us() - in->t0_us) / 1000.0));
}

/* Records the request's spans in the trace ring and the log (job side,
 * at the terminal frame). */
static void record_trace(struct lyra_infer *in)
{
    json_t *t = json_object_get(in->terminal, "timings");
    const char *type = json_string_value(json_object_get(in->terminal, "type"));
    bool ok = type && strcmp(type, "error") != 0;
    int status = ok ? 200 : (int)json_integer_value(json_object_get(in->terminal, "status"));
    double total = (double)(lyra_now_us() - in->t0_us) / 1000.0;
    json_t *u = json_object_get(in->terminal, "usage");
    json_t *spans = json_pack("[{s:s, s:f}, {s:s, s:f}]", "name", "queue", "ms",
                              json_real_value(json_object_get(t, "queue_ms")), "name", "load", "ms",
                              in->job ? lyra_job_load_ms(in->job) : 0.0);
    if (!spans)
        return;
    if (json_object_get(t, "prompt_ms"))
        json_array_append_new(spans, json_pack("{s:s, s:O, s:O, s:O?}", "name", "prompt", "ms",
                                               json_object_get(t, "prompt_ms"), "tokens", json_object_get(t, "prompt_n"),
                                               "cached_tokens", json_object_get(u, "cached_tokens")));
    if (json_object_get(t, "predicted_ms"))
        json_array_append_new(spans, json_pack("{s:s, s:O, s:O, s:O}", "name", "generation", "ms",
                                               json_object_get(t, "predicted_ms"), "tokens",
                                               json_object_get(t, "predicted_n"), "tokens_per_second",
                                               json_object_get(t, "predicted_per_second")));
    json_array_append_new(spans, json_pack("{s:s, s:f}", "name", "total", "ms", total));
    char ts[40];
    lyra_format_ts(lyra_wall_ms() - (int64_t)total, ts, sizeof ts);
    json_t *trace = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s?, s:o}", "request_id", in->request_id, "trace_id",
                              in->trace_id, "endpoint", in->endpoint, "model", in->model, "started", ts, "status",
                              status, "error", ok ? NULL : json_string_value(json_object_get(in->terminal, "code")),
                              "spans", spans);
    if (!trace)
        return;
    lyra_log(LYRA_LOG_INFO, "trace", in->request_id, json_deep_copy(trace), "%s %s %.1f ms", in->endpoint, in->model,
             total);
    lyra_trace_add(in->srv->traces, trace);
}

/* The request's metrics (api/metrics.h), once, at the terminal frame: its
 * duration always; for a generation its token counts, rate and time to the
 * first token; for an embedding its prompt tokens.  Time to first token is
 * when the first token frame came for a stream.  A request that is not
 * streamed gets all its text in one frame at the end, so there it is the
 * request's duration less the worker's generation time (predicted_ms runs
 * from the prompt's last decode, which yields the first token, to the end). */
static void observe_metrics(struct lyra_infer *in)
{
    const struct lyra_server_metrics *sm = &in->srv->m;
    const char *const model[] = {in->model};
    int64_t now = lyra_now_us();
    lyra_metric_observe(sm->request_duration, (const char *const[]){in->route, in->model},
                        (double)(now - in->t0_us) / 1e6);
    const char *type = json_string_value(json_object_get(in->terminal, "type"));
    if (type && strcmp(type, "embedding") == 0) {
        json_int_t n = json_integer_value(json_object_get(in->terminal, "prompt_tokens"));
        lyra_metric_add(sm->prompt_tokens, model, (double)n);
        return;
    }
    if (!type || strcmp(type, "done") != 0)
        return;
    json_t *u = json_object_get(in->terminal, "usage"), *t = json_object_get(in->terminal, "timings");
    json_int_t generated = json_integer_value(json_object_get(u, "completion_tokens"));
    lyra_metric_add(sm->prompt_tokens, model, (double)json_integer_value(json_object_get(u, "prompt_tokens")));
    lyra_metric_add(sm->generated_tokens, model, (double)generated);
    if (generated <= 0)
        return;
    double ttft = (double)(now - in->t0_us) / 1e6 - json_number_value(json_object_get(t, "predicted_ms")) / 1e3;
    if (in->stream && in->first_token_us)
        ttft = (double)(in->first_token_us - in->t0_us) / 1e6;
    lyra_metric_observe(sm->ttft, model, ttft > 0 ? ttft : 0);
    double rate = json_number_value(json_object_get(t, "predicted_per_second"));
    if (rate > 0)
        lyra_metric_observe(sm->tokens_per_second, model, rate);
}

/* A copy of the terminal frame to keep; if even that fails, a minimal
 * error (the answer still goes out, with what could be said). */
static json_t *keep_terminal(const json_t *frame)
{
    json_t *copy = json_deep_copy(frame);
    if (!copy)
        copy = json_pack("{s:s, s:s, s:s, s:i}", "type", "error", "code", "internal", "message",
                         "out of memory while finishing the request", "status", 500);
    return copy;
}

static void wake_http(struct lyra_infer *in)
{
    if (in->parked && !in->woken) {
        in->woken = true;
        lyra_http_wake(in->req);
    }
}

/* Job side (supervisor thread). */
static void on_frame(struct lyra_job *job, const json_t *frame, void *ud)
{
    struct lyra_infer *in = ud;
    const char *type = json_string_value(json_object_get(frame, "type"));
    if (!type)
        return;
    pthread_mutex_lock(&in->lock);
    /* The one list of what ends a request (the manager only hands on
     * checked frames, so every job ends with exactly one of them). */
    bool terminal = lyra_msg_is_terminal(lyra_msg_kind_of(frame));
    if (strcmp(type, "started") == 0 || terminal) /* the model that serves it (a fallback, maybe) */
        lyra_fmt(in->model, sizeof in->model, "%s", lyra_job_model(job));
    if (strcmp(type, "started") == 0) {
        in->started = true;
        if (in->stream)
            wake_http(in);
    } else if (strcmp(type, "token") == 0) {
        if (!in->first_token_us)
            in->first_token_us = lyra_now_us();
        const char *text = json_string_value(json_object_get(frame, "text"));
        if (text && *text) {
            append_text(in, text);
            if (in->st && !in->gone) {
                struct lyra_infer_result r;
                result_of(in, &r);
                stream_write_json(in, in->fmt->delta(&r, text, in->ud), false);
            }
        }
    } else if (terminal) {
        in->terminal = keep_terminal(frame);
        if (in->text_lost && strcmp(type, "done") == 0) {
            json_decref(in->terminal);
            in->terminal = json_pack("{s:s, s:s, s:s, s:i}", "type", "error", "code", "internal", "message",
                                     "out of memory while collecting the answer", "status", 500);
            if (!in->terminal)
                in->terminal = keep_terminal(frame);
        }
        const char *ttype = json_string_value(json_object_get(in->terminal, "type"));
        bool done = ttype && strcmp(ttype, "done") == 0;
        if (done)
            complete_timings(in);
        record_trace(in);
        observe_metrics(in);
        if (in->st) {
            struct lyra_infer_result r;
            result_of(in, &r);
            if (done) {
                if (in->fmt->finished)
                    in->fmt->finished(&r, NULL, in->ud);
                stream_write_json(in, in->fmt->closing(&r, in->ud), false);
            } else if (!ttype || strcmp(ttype, "embedding") != 0) {
                int status;
                stream_write_json(in, error_body(in, in->terminal, &status), true);
            }
            stream_finish(in);
        } else {
            wake_http(in);
        }
    }
    if (terminal)
        infer_unref_locked(in); /* the job side lets go */
    else
        pthread_mutex_unlock(&in->lock);
}

/* HTTP watcher thread: the client hung up while the request was parked or
 * streaming.  The job is cancelled so that its slot is free within one
 * decode step; its terminal frame still comes and ends the request.
 *
 * No in->lock here: the watcher calls this holding its hang-up token's
 * lock, which the job side takes under in->lock when it closes the stream
 * (lock order: in->lock before the token's).  in->job is set before the
 * request is parked and stays until `in` is freed, which cannot happen
 * while this may run (the token is stopped first).  A cancel after the end
 * is a no-op. */
static void on_gone(void *ud)
{
    struct lyra_infer *in = ud;
    lyra_manager_cancel(in->job);
}

/* HTTP thread: the connection ended while the request was parked or woken,
 * before on_resume could run (libmicrohttpd read the client's EOF).  The
 * HTTP side lets go: the job is cancelled if it still runs, and nothing may
 * wake the request any more. */
static void on_dropped(void *ud)
{
    struct lyra_infer *in = ud;
    pthread_mutex_lock(&in->lock);
    in->parked = false;
    in->woken = true;
    in->req = NULL;
    if (!in->terminal && in->job)
        lyra_manager_cancel(in->job);
    infer_unref_locked(in); /* the HTTP side lets go */
}

static void add_retry_after(struct lyra_http_req *req, const json_t *frame)
{
    json_int_t s = json_integer_value(json_object_get(frame, "retry_after_s"));
    if (s > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%lld", (long long)s);
        lyra_http_add_header(req, "Retry-After", ra);
    }
}

/* HTTP side (an HTTP thread), after lyra_http_wake. */
static void on_resume(struct lyra_http_req *req, void *ud)
{
    struct lyra_infer *in = ud;
    pthread_mutex_lock(&in->lock);
    in->parked = false;
    const char *type = in->terminal ? json_string_value(json_object_get(in->terminal, "type")) : NULL;
    struct lyra_infer_result r;
    result_of(in, &r);
    lyra_http_add_header(req, "X-Lyra-Model", in->model);
    if (type && strcmp(type, "error") == 0) {
        int status;
        json_t *body = error_body(in, in->terminal, &status);
        add_retry_after(req, in->terminal);
        lyra_http_send_json(req, status, body);
    } else if (!in->stream && type && r.finish_reason && strcmp(r.finish_reason, "cancelled") == 0) {
        /* Cancelled because the client hung up (or half-closed): never a
         * 200 with a cut answer.  499 as nginx logs it ("client closed
         * request"); usually nobody is left to read it. */
        lyra_http_send_json(req, 499,
                            in->fmt->error("client_closed_request",
                                           "the request was cancelled: the client closed the connection", 499,
                                           in->ud));
    } else if (!in->stream && type) {
        json_t *body = in->fmt->full(&r, in->ud);
        if (in->fmt->finished)
            in->fmt->finished(&r, body, in->ud);
        lyra_http_send_json(req, 200, body);
    } else if (in->stream && (in->started || type)) {
        char *buf = NULL;
        size_t len = 0;
        encode_into(in, in->fmt->opening(&r, in->ud), &buf, &len);
        if (in->len > 0)
            encode_into(in, in->fmt->delta(&r, in->text, in->ud), &buf, &len);
        if (type) {
            if (in->fmt->finished)
                in->fmt->finished(&r, NULL, in->ud);
            encode_into(in, in->fmt->closing(&r, in->ud), &buf, &len);
        }
        if (!buf) { /* nothing could be encoded: still one answer */
            lyra_http_send_json(req, 500, in->fmt->error("internal", "out of memory", 500, in->ud));
        } else {
            in->st = lyra_http_send_stream(req, 200, in->fmt->sse ? "text/event-stream" : "application/x-ndjson",
                                           buf, len, on_gone, in);
            if (in->st && type)
                stream_finish(in);
            else if (!in->st && in->job && !type)
                lyra_manager_cancel(in->job); /* answered 500: stop the generation */
        }
        free(buf);
    } else {
        /* Woken without cause (cannot happen: wake_http only fires on
         * "started" or the terminal frame): park again. */
        in->parked = true;
        in->woken = false;
        in->req = req;
        lyra_http_park(req, on_resume, on_gone, on_dropped, in);
        pthread_mutex_unlock(&in->lock);
        return;
    }
    in->req = NULL;
    infer_unref_locked(in); /* the HTTP side lets go */
}

/* Status and code for a submit error. */
static int submit_status(int rc, const char **code)
{
    switch (rc) {
    case LYRA_ENOTFOUND: *code = "model_not_found"; return 404;
    case LYRA_EINVAL: *code = "model_invalid"; return 422;
    case LYRA_ETOOBIG: *code = "request_too_large"; return 413;
    case LYRA_EUNAVAILABLE: *code = "shutting_down"; return 503;
    default: *code = "internal"; return 500;
    }
}

void lyra_infer_start(struct lyra_server *srv, struct lyra_http_req *req, const struct lyra_infer_options *opts)
{
    char denied[400];
    if (opts->permission && !lyra_authz_check(req, srv, opts->permission, opts->model, denied, sizeof denied)) {
        json_decref(opts->msg);
        lyra_http_send_json(req, 403, opts->fmt->error("model_forbidden", denied, 403, opts->ud));
        if (opts->fmt->free_ud)
            opts->fmt->free_ud(opts->ud);
        return;
    }
    struct lyra_infer *in = calloc(1, sizeof *in);
    if (!in) {
        json_decref(opts->msg);
        lyra_http_send_json(req, 500, opts->fmt->error("internal", "out of memory", 500, opts->ud));
        if (opts->fmt->free_ud)
            opts->fmt->free_ud(opts->ud);
        return;
    }
    pthread_mutex_init(&in->lock, NULL);
    in->refs = 2;
    in->srv = srv;
    in->req = req;
    in->fmt = opts->fmt;
    in->ud = opts->ud;
    in->stream = opts->stream;
    in->t0_us = lyra_now_us();
    in->created = (long)time(NULL);
    char rnd[25];
    lyra_random_hex(rnd, 12);
    snprintf(in->id, sizeof in->id, "%s%s", opts->id_prefix, rnd);
    snprintf(in->request_id, sizeof in->request_id, "%s", lyra_http_request_id(req));
    snprintf(in->trace_id, sizeof in->trace_id, "%s", lyra_http_trace_id(req));
    lyra_fmt(in->endpoint, sizeof in->endpoint, "%s", lyra_http_path(req));
    in->route = lyra_http_route(req) ? lyra_http_route(req) : "unmatched";

    /* A request that is not streamed needs no token frames: the worker then
     * sends the text once, at the end. */
    if (!opts->stream)
        json_object_set_new(opts->msg, "stream", json_false());
    /* The lock is held until the request is parked: the job's first frame
     * may come at once, on the supervisor thread, and must find it parked. */
    pthread_mutex_lock(&in->lock);
    struct lyra_err err = {0};
    int rc = lyra_manager_submit(srv->manager, opts->model, opts->msg, on_frame, in, &in->job, &err);
    if (rc < 0) {
        const char *code;
        int status = submit_status(rc, &code);
        if (rc == LYRA_EUNAVAILABLE)
            lyra_http_add_header(req, "Retry-After", "5");
        lyra_http_send_json(req, status, in->fmt->error(code, err.msg, status, in->ud));
        in->refs = 1; /* no job side */
        infer_unref_locked(in);
        return;
    }
    lyra_fmt(in->model, sizeof in->model, "%s", lyra_job_requested_model(in->job));
    in->parked = true;
    lyra_http_park(req, on_resume, on_gone, on_dropped, in);
    pthread_mutex_unlock(&in->lock);
}

json_t *lyra_openai_error(const char *code, const char *message, int status, void *ud)
{
    const char *type = status == 401 || status == 403 ? "authentication_error"
                       : status < 500              ? "invalid_request_error"
                       : status == 503             ? "server_overloaded"
                                                   : "server_error";
    json_t *e = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", message ? message : "error", "type", type,
                          "param", "code", code ? code : "error");
    return e;
}

char *lyra_default_model(struct lyra_server *srv)
{
    if (srv->cfg->models.default_model)
        return strdup(srv->cfg->models.default_model);
    const struct lyra_model **models = NULL;
    size_t n = 0;
    char *name = NULL;
    if (lyra_registry_list(srv->registry, &models, &n) == 0) {
        for (size_t i = 0; i < n && !name; i++)
            if (models[i]->valid)
                name = strdup(models[i]->name);
        lyra_registry_list_free(models, n);
    }
    return name;
}
