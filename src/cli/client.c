/* client.c — see client.h.  One CURL easy handle per client, reset before
 * each request; answers are collected in growable buffers capped at
 * LYRA_CLIENT_MAX_BODY, and event streams are parsed as bytes arrive (a
 * line may be split across any number of writes). */
#include "cli/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>
#include <unistd.h>

#include "cli/credentials.h"
#include "core/util.h"

struct lyra_client {
    CURL *curl;
    char *base;
    char *noproxy;
    char *key;              /* the bearer token, wiped at free; NULL: none */
    const char *key_source; /* where it came from ("LYRA_API_KEY"), static */
    bool no_hint;           /* a 401 does not say how to give a key */
    enum lyra_client_origin origin;
    long status;
    long retry_after; /* of the last answer, -1 when it had none */
    char msg[LYRA_ERR_MSG_MAX];
    char curl_err[CURL_ERROR_SIZE];
};

/* --- finding the daemon --------------------------------------------- */

/* "http://HOST:PORT", with the wildcard addresses a daemon binds to replaced
 * by the loopback address a client can connect to. */
static char *url_of(const char *host, long port)
{
    if (!host || !*host || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0 || strcmp(host, "[::]") == 0)
        host = "::1";
    bool v6 = strchr(host, ':') != NULL && host[0] != '[';
    char *url = NULL;
    if (asprintf(&url, "http://%s%s%s:%ld", v6 ? "[" : "", host, v6 ? "]" : "", port) < 0)
        return NULL;
    return url;
}

/* The URL in $home/serve.json, or NULL when there is none, it is unreadable
 * or the daemon that wrote it is gone (a crash leaves the file behind). */
static char *url_from_state_file(const char *home)
{
    char *path = NULL;
    if (!home || asprintf(&path, "%s/serve.json", home) < 0)
        return NULL;
    json_t *j = json_load_file(path, 0, NULL);
    free(path);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    char *url = NULL;
    json_int_t pid = json_integer_value(json_object_get(j, "pid"));
    bool alive = pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH;
    const char *host = json_string_value(json_object_get(j, "host"));
    json_int_t port = json_integer_value(json_object_get(j, "port"));
    const char *u = json_string_value(json_object_get(j, "url"));
    bool wildcard = host && (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0);
    if (alive && u && *u && !wildcard)
        url = strdup(u);
    else if (alive && port > 0)
        url = url_of(host, (long)port);
    json_decref(j);
    return url;
}

static char *strip_slashes(const char *url)
{
    char *s = strdup(url);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

int lyra_client_find_daemon(const char *url_flag, const struct lyra_common_flags *flags, char **out)
{
    return lyra_client_locate(url_flag, flags, out, NULL);
}

int lyra_client_locate(const char *url_flag, const struct lyra_common_flags *flags, char **out,
                       enum lyra_client_origin *origin)
{
    *out = NULL;
    enum lyra_client_origin dummy;
    if (!origin)
        origin = &dummy;
    bool from_flag = url_flag && *url_flag;
    const char *url = from_flag ? url_flag : getenv("LYRA_URL");
    if (url && *url) {
        *origin = from_flag ? LYRA_URL_FROM_FLAG : LYRA_URL_FROM_ENV;
        *out = strip_slashes(url);
        return *out ? 0 : LYRA_ENOMEM;
    }
    struct lyra_config cfg;
    if (lyra_cli_load_config(&cfg, flags, 0) != 0)
        return LYRA_ECONFIG;
    char *found = url_from_state_file(cfg.home);
    *origin = found ? LYRA_URL_FROM_STATE : LYRA_URL_FROM_CONFIG;
    if (!found)
        found = url_of(cfg.server.host, cfg.server.port > 0 ? cfg.server.port : 8000);
    lyra_config_free(&cfg);
    if (!found)
        return LYRA_ENOMEM;
    *out = strip_slashes(found);
    free(found);
    return *out ? 0 : LYRA_ENOMEM;
}

/* --- the handle ----------------------------------------------------- */

static int set_err(struct lyra_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(struct lyra_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    /* The key is never shown, whatever a daemon or a proxy sent back. */
    size_t kl = c->key ? strlen(c->key) : 0;
    for (char *k; kl > 0 && (k = strstr(c->msg, c->key));) {
        static const char mask[] = "[key]";
        size_t ml = sizeof mask - 1 < kl ? sizeof mask - 1 : kl;
        memcpy(k, mask, ml);
        memmove(k + ml, k + kl, strlen(k + kl) + 1);
    }
    return code;
}

int lyra_client_new(struct lyra_client **out, const char *base_url, struct lyra_err *err)
{
    *out = NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return lyra_err_set(err, LYRA_EINTERNAL, "cannot initialise libcurl");
    struct lyra_client *c = calloc(1, sizeof *c);
    if (c) {
        c->retry_after = -1;
        c->curl = curl_easy_init();
    }
    if (c && c->curl)
        c->base = strip_slashes(base_url);
    /* A proxy from the environment must not capture the local daemon;
     * the user's own exceptions still apply to other hosts. */
    const char *np = getenv("no_proxy");
    if (!np || !*np)
        np = getenv("NO_PROXY");
    if (c && c->base &&
        asprintf(&c->noproxy, "%s%s%s", np && strcmp(np, "*") == 0 ? "" : "localhost,127.0.0.1,::1",
                 np && *np && strcmp(np, "*") != 0 ? "," : "", np ? np : "") < 0)
        c->noproxy = NULL;
    if (!c || !c->noproxy) {
        lyra_client_free(c);
        if (!c)
            curl_global_cleanup();
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    *out = c;
    return 0;
}

void lyra_client_free(struct lyra_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    if (c->key)
        explicit_bzero(c->key, strlen(c->key));
    free(c->key);
    free(c->base);
    free(c->noproxy);
    free(c);
    curl_global_cleanup();
}

int lyra_client_set_key(struct lyra_client *c, const char *key, const char *source)
{
    if (key && !lyra_credentials_key_valid(key))
        return set_err(c, LYRA_EINVAL, "the API key from %s is malformed (printable characters, no spaces)",
                       source ? source : "the caller");
    char *copy = key ? strdup(key) : NULL;
    if (key && !copy)
        return set_err(c, LYRA_ENOMEM, "out of memory");
    if (c->key)
        explicit_bzero(c->key, strlen(c->key));
    free(c->key);
    c->key = copy;
    c->key_source = key ? (source ? source : "the caller") : NULL;
    return 0;
}

void lyra_client_set_origin(struct lyra_client *c, enum lyra_client_origin origin)
{
    c->origin = origin;
}

int lyra_client_unreachable(const char *base, enum lyra_client_origin origin, bool resolve_failed, bool slow,
                            char *msg, size_t len)
{
    const char *from = origin == LYRA_URL_FROM_FLAG  ? "--url"
                       : origin == LYRA_URL_FROM_ENV ? "env LYRA_URL"
                                                     : NULL;
    if (resolve_failed)
        lyra_fmt(msg, len, "cannot resolve the host of %s%s%s%s: check the address", base, from ? " (from " : "",
                 from ? from : "", from ? ")" : "");
    else if (slow)
        lyra_fmt(msg, len, "%s%s%s%s did not accept a connection in time: check the address and firewalls",
                 base, from ? " (from " : "", from ? from : "", from ? ")" : "");
    else if (from)
        lyra_fmt(msg, len,
                 "connection refused at %s (from %s): no Lyra daemon listens there; check the address "
                 "(`lyra serve` logs where it listens)",
                 base, from);
    else
        lyra_fmt(msg, len, "no Lyra daemon at %s: start it with `lyra serve` (or make run)", base);
    return LYRA_EUNAVAILABLE;
}

void lyra_client_set_hint(struct lyra_client *c, bool hint)
{
    c->no_hint = !hint;
}

bool lyra_client_has_key(const struct lyra_client *c)
{
    return c->key != NULL;
}

const char *lyra_client_url(const struct lyra_client *c)
{
    return c->base;
}

const char *lyra_client_errmsg(const struct lyra_client *c)
{
    return c->msg;
}

long lyra_client_status(const struct lyra_client *c)
{
    return c->status;
}

/* --- buffers and requests ------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
    bool too_big;
};

/* Appends n bytes, keeping the buffer NUL-terminated; false when the cap
 * or memory is exhausted. */
static bool buf_add(struct buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > LYRA_CLIENT_MAX_BODY) {
        b->too_big = true;
        return false;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return false;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
    return buf_add(ud, p, n) ? n : 0;
}

/* Resets the handle for a request to base + path. */
static int prepare(struct lyra_client *c, const char *path)
{
    curl_easy_reset(c->curl);
    c->status = 0;
    c->retry_after = -1;
    c->msg[0] = c->curl_err[0] = '\0';
    char *url = NULL;
    if (asprintf(&url, "%s%s", c->base, path) < 0)
        return set_err(c, LYRA_ENOMEM, "out of memory");
    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_URL, url); /* libcurl copies strings */
    free(url);
    curl_easy_setopt(h, CURLOPT_NOPROXY, c->noproxy);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "lyra/" LYRA_VERSION);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    if (c->key) {
        /* "Authorization: Bearer KEY" on the first request (one method, no
         * negotiation); libcurl does not hand it on to another host. */
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
        curl_easy_setopt(h, CURLOPT_XOAUTH2_BEARER, c->key);
    }
    return 0;
}

/* The message for a failed transfer. */
static int fail_transfer(struct lyra_client *c, CURLcode rc)
{
    curl_off_t connect_us = 0;
    curl_easy_getinfo(c->curl, CURLINFO_CONNECT_TIME_T, &connect_us);
    const char *detail = c->curl_err[0] ? c->curl_err : curl_easy_strerror(rc);
    char text[LYRA_ERR_MSG_MAX];
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        lyra_client_unreachable(c->base, c->origin, rc != CURLE_COULDNT_CONNECT, false, text, sizeof text);
        return set_err(c, LYRA_EUNAVAILABLE, "%s", text);
    case CURLE_OPERATION_TIMEDOUT:
        if (connect_us == 0) {
            lyra_client_unreachable(c->base, c->origin, false, true, text, sizeof text);
            return set_err(c, LYRA_EUNAVAILABLE, "%s", text);
        }
        return set_err(c, LYRA_ETIMEOUT, "the Lyra daemon at %s did not answer in time", c->base);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return set_err(c, LYRA_EINVAL, "invalid daemon URL '%s': %s", c->base, detail);
    default:
        return set_err(c, LYRA_EIO, "request to the Lyra daemon at %s failed: %s", c->base, detail);
    }
}

/* The message in an error body: Lyra's {"error":{"code","message"}},
 * OpenAI's {"error":{"message","type",...}}, or {"error":"text"}.  NULL
 * when there is none; borrowed from j. */
static const char *error_message(json_t *j)
{
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e))
        return json_string_value(json_object_get(e, "message"));
    if (json_is_string(e))
        return json_string_value(e);
    return NULL;
}

/* The message for a 4xx/5xx answer: the daemon's own, plus what to do for
 * the answers of authentication (401: where keys come from; 403: the
 * permission that is missing; 429: when to try again). */
static int fail_http(struct lyra_client *c, const struct buf *body)
{
    json_t *j = body->data ? json_loadb(body->data, body->len, 0, NULL) : NULL;
    const char *msg = error_message(j);
    char text[LYRA_ERR_MSG_MAX];
    if (msg && *msg)
        lyra_fmt(text, sizeof text, "%s", msg);
    else
        lyra_fmt(text, sizeof text, "the daemon at %s answered HTTP %ld", c->base, c->status);
    const char *perm = json_string_value(json_object_get(json_object_get(j, "error"), "permission"));
    int rc;
    if (c->status == 401 && c->no_hint)
        rc = set_err(c, LYRA_EIO, "%s", text);
    else if (c->status == 401 && c->key)
        rc = set_err(c, LYRA_EIO,
                     "%s (the key from %s was refused): set LYRA_API_KEY, pass --api-key or run `lyra login`",
                     text, c->key_source);
    else if (c->status == 401)
        rc = set_err(c, LYRA_EIO, "%s: set LYRA_API_KEY, pass --api-key or run `lyra login`", text);
    else if (c->status == 403 && perm && *perm && !strstr(text, perm))
        rc = set_err(c, LYRA_EIO, "%s (needs permission %s)", text, perm);
    else if (c->status == 429 && c->retry_after >= 0)
        rc = set_err(c, LYRA_EIO, "%s (retry after %ld s)", text, c->retry_after);
    else
        rc = set_err(c, LYRA_EIO, "%s", text);
    json_decref(j);
    return rc;
}

long lyra_client_retry_after(const struct lyra_client *c)
{
    return c->retry_after;
}

/* Retry-After in seconds (the delta-seconds form Lyra sends), -1 when the
 * answer has none or it is an HTTP date. */
static long retry_after_of(CURL *h)
{
    struct curl_header *hdr = NULL;
    if (curl_easy_header(h, "Retry-After", 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK || !hdr->value)
        return -1;
    char *end = NULL;
    long v = strtol(hdr->value, &end, 10);
    return end != hdr->value && *end == '\0' && v >= 0 ? v : -1;
}

int lyra_client_get(struct lyra_client *c, const char *path, char **body, size_t *len)
{
    *body = NULL;
    if (len)
        *len = 0;
    int rc = prepare(c, path);
    if (rc < 0)
        return rc;
    struct buf b = {0};
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 120L);
    CURLcode cr = curl_easy_perform(c->curl);
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status > 0)
        c->retry_after = retry_after_of(c->curl);
    if (cr == CURLE_WRITE_ERROR)
        rc = b.too_big ? set_err(c, LYRA_ETOOBIG, "the answer from %s%s is larger than %u MiB", c->base, path,
                                 LYRA_CLIENT_MAX_BODY >> 20)
                       : set_err(c, LYRA_ENOMEM, "out of memory");
    else if (cr != CURLE_OK)
        rc = fail_transfer(c, cr);
    else if (c->status >= 400)
        rc = fail_http(c, &b);
    if (rc < 0) {
        buf_free(&b);
        return rc;
    }
    if (!b.data && !buf_add(&b, "", 0))
        return set_err(c, LYRA_ENOMEM, "out of memory");
    *body = b.data;
    if (len)
        *len = b.len;
    return 0;
}

int lyra_client_post_json(struct lyra_client *c, const char *path, const json_t *body, long timeout_s,
                          json_t **answer)
{
    return lyra_client_request_json(c, "POST", path, body, timeout_s, answer);
}

int lyra_client_request_json(struct lyra_client *c, const char *method, const char *path, const json_t *body,
                             long timeout_s, json_t **answer)
{
    *answer = NULL;
    int rc = prepare(c, path);
    if (rc < 0)
        return rc;
    bool post = strcmp(method, "POST") == 0;
    char *text = body ? json_dumps(body, JSON_COMPACT) : strdup("");
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (!text || !headers) {
        free(text);
        curl_slist_free_all(headers);
        return set_err(c, LYRA_ENOMEM, "out of memory");
    }
    struct buf b = {0};
    CURL *h = c->curl;
    if (post || body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text));
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    }
    if (!post)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s > 0 ? timeout_s : 120L);
    CURLcode cr = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status > 0)
        c->retry_after = retry_after_of(h);
    if (cr == CURLE_WRITE_ERROR)
        rc = b.too_big ? set_err(c, LYRA_ETOOBIG, "the answer from %s%s is larger than %u MiB", c->base, path,
                                 LYRA_CLIENT_MAX_BODY >> 20)
                       : set_err(c, LYRA_ENOMEM, "out of memory");
    else if (cr != CURLE_OK)
        rc = fail_transfer(c, cr);
    else if (c->status >= 400)
        rc = fail_http(c, &b);
    else if (!(*answer = b.data ? json_loadb(b.data, b.len, 0, NULL) : NULL))
        rc = set_err(c, LYRA_EPARSE, "the answer from %s%s is not JSON", c->base, path);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    free(text);
    buf_free(&b);
    return rc;
}

/* --- event streams -------------------------------------------------- */

enum stream_mode { UNDECIDED, SSE, WHOLE };

struct stream {
    struct lyra_client *c;
    lyra_client_chunk_fn fn;
    void *ud;
    const volatile sig_atomic_t *cancel;
    enum stream_mode mode;
    struct buf line; /* the current line, without its end */
    struct buf data; /* the current event's data lines, joined by \n */
    bool has_data;
    struct buf whole; /* a plain (error or non-streamed) answer */
    bool done;        /* [DONE] seen */
    bool stopped;     /* cancelled, or fn asked to stop */
    int rc;           /* an error found in the stream */
};

/* Hands one JSON text to the callback; false to end the transfer. */
static bool deliver(struct stream *s, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(text, len, 0, &jerr);
    if (!j) {
        s->rc = set_err(s->c, LYRA_EPARSE, "the daemon sent a chunk that is not JSON: %s", jerr.text);
        return false;
    }
    const char *msg = json_object_get(j, "error") ? error_message(j) : NULL;
    if (json_object_get(j, "error")) {
        s->rc =
            set_err(s->c, LYRA_EIO, "%s", msg && *msg ? msg : "the daemon reported an error in the stream");
        json_decref(j);
        return false;
    }
    if (s->fn(j, s->ud) != 0)
        s->stopped = true;
    json_decref(j);
    return !s->stopped;
}

/* The end of an event (a blank line, or the end of the stream). */
static bool dispatch(struct stream *s)
{
    if (!s->has_data)
        return true;
    s->has_data = false;
    size_t len = s->data.len;
    s->data.len = 0;
    if (len == 6 && memcmp(s->data.data, "[DONE]", 6) == 0) {
        s->done = true;
        return true;
    }
    return deliver(s, s->data.data, len);
}

/* One complete line of the event stream (its \n or \r\n removed). */
static bool sse_line(struct stream *s, const char *line, size_t len)
{
    if (len == 0)
        return dispatch(s);
    if (line[0] == ':')
        return true; /* a comment, e.g. a keep-alive */
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    if (name_len != 4 || memcmp(line, "data", 4) != 0)
        return true; /* event:, id:, retry: mean nothing here */
    const char *value = colon ? colon + 1 : line + len;
    if (value < line + len && *value == ' ')
        value++;
    size_t vlen = (size_t)(line + len - value);
    bool ok = (!s->has_data || buf_add(&s->data, "\n", 1)) && buf_add(&s->data, value, vlen);
    if (!ok) {
        s->rc = s->data.too_big ? set_err(s->c, LYRA_ETOOBIG, "a stream event is larger than %u MiB",
                                          LYRA_CLIENT_MAX_BODY >> 20)
                                : set_err(s->c, LYRA_ENOMEM, "out of memory");
        return false;
    }
    s->has_data = true;
    return true;
}

static size_t on_stream_data(char *p, size_t size, size_t n, void *ud)
{
    struct stream *s = ud;
    if (s->cancel && *s->cancel) {
        s->stopped = true;
        return 0;
    }
    if (s->mode == UNDECIDED) {
        char *type = NULL;
        curl_easy_getinfo(s->c->curl, CURLINFO_RESPONSE_CODE, &s->c->status);
        curl_easy_getinfo(s->c->curl, CURLINFO_CONTENT_TYPE, &type);
        bool sse = s->c->status < 400 && type && strncasecmp(type, "text/event-stream", 17) == 0;
        s->mode = sse ? SSE : WHOLE;
    }
    if (s->mode == WHOLE) {
        if (!buf_add(&s->whole, p, n)) {
            s->rc = s->whole.too_big ? set_err(s->c, LYRA_ETOOBIG, "the answer is larger than %u MiB",
                                               LYRA_CLIENT_MAX_BODY >> 20)
                                     : set_err(s->c, LYRA_ENOMEM, "out of memory");
            return 0;
        }
        return n;
    }
    size_t i = 0;
    while (i < n && !s->done) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t take = nl ? (size_t)(nl - (p + i)) : n - i;
        if (!buf_add(&s->line, p + i, take)) {
            s->rc = s->line.too_big ? set_err(s->c, LYRA_ETOOBIG, "a stream line is larger than %u MiB",
                                              LYRA_CLIENT_MAX_BODY >> 20)
                                    : set_err(s->c, LYRA_ENOMEM, "out of memory");
            return 0;
        }
        i += take;
        if (!nl)
            break;
        i++; /* the \n */
        size_t len = s->line.len;
        if (len > 0 && s->line.data[len - 1] == '\r')
            len--;
        s->line.len = 0;
        if (!sse_line(s, s->line.data ? s->line.data : "", len))
            return 0;
    }
    return n; /* after [DONE], the rest is read and dropped */
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    struct stream *s = ud;
    if (s->cancel && *s->cancel) {
        s->stopped = true;
        return 1;
    }
    return 0;
}

int lyra_client_post_stream(struct lyra_client *c, const char *path, const json_t *body,
                            lyra_client_chunk_fn fn, void *ud, const volatile sig_atomic_t *cancel)
{
    int rc = prepare(c, path);
    if (rc < 0)
        return rc;
    char *text = json_dumps(body, JSON_COMPACT);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *h2 = headers ? curl_slist_append(headers, "Accept: text/event-stream") : NULL;
    if (!text || !h2) {
        free(text);
        curl_slist_free_all(headers);
        return set_err(c, LYRA_ENOMEM, "out of memory");
    }
    headers = h2;
    struct stream s = {.c = c, .fn = fn, .ud = ud, .cancel = cancel};
    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_stream_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &s);
    CURLcode cr = curl_easy_perform(h);
    if (c->status == 0)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status > 0)
        c->retry_after = retry_after_of(h);

    if (s.stopped || (cancel && *cancel))
        rc = 0;
    else if (s.rc < 0)
        rc = s.rc;
    else if (cr != CURLE_OK)
        rc = fail_transfer(c, cr);
    else if (c->status >= 400)
        rc = fail_http(c, &s.whole);
    else if (s.mode == WHOLE)
        rc = s.whole.len > 0 && !deliver(&s, s.whole.data, s.whole.len) && s.rc < 0 ? s.rc : 0;
    else if (!s.done && (!dispatch(&s) || !s.done))
        rc = s.rc < 0    ? s.rc
             : s.stopped ? 0
                         : set_err(c, LYRA_EIO, "the daemon closed the stream before it finished");

    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    free(text);
    buf_free(&s.line);
    buf_free(&s.data);
    buf_free(&s.whole);
    return rc;
}

/* --- the API key ---------------------------------------------------- */

/* The first line of `path` as a key (surrounding whitespace dropped). */
static int key_from_file(const char *path, const char *cmd, char **key)
{
    size_t len = 0;
    char *text = lyra_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "lyra %s: cannot read the API key file %s: %s\n", cmd, path, strerror(errno));
        return LYRA_EIO;
    }
    size_t a = strspn(text, " \t\r\n"), b = a;
    while (b < len && text[b] != '\n' && text[b] != '\r')
        b++;
    while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t'))
        b--;
    char *k = strndup(text + a, b - a);
    explicit_bzero(text, len);
    free(text);
    if (!k) {
        fprintf(stderr, "lyra %s: out of memory\n", cmd);
        return LYRA_ENOMEM;
    }
    *key = k;
    return 0;
}

/* The local operator's key: the daemon's own LYRA_HOME holds admin.key
 * (written 0600 when it made its first admin), and a user who can read it
 * owns that daemon anyway.  Used only for the URL that home's serve.json
 * names (this machine's daemon), and only when the file is a regular file
 * of this user that nobody else can read.  Nothing found is not an error. */
static int key_from_home(const struct lyra_common_flags *flags, const char *url, char **key, char **path_out)
{
    struct lyra_config cfg;
    if (!flags || lyra_cli_load_config(&cfg, flags, 0) != 0)
        return 0;
    char *local = url_from_state_file(cfg.home);
    char *stripped = local ? strip_slashes(local) : NULL;
    char *path = NULL;
    struct stat st;
    int rc = 0;
    if (stripped && strcmp(stripped, url) == 0 && asprintf(&path, "%s/admin.key", cfg.home) >= 0 &&
        lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & 077)) {
        rc = key_from_file(path, "", key);
        if (rc == 0) {
            *path_out = path;
            path = NULL;
        }
    }
    free(path);
    free(stripped);
    free(local);
    lyra_config_free(&cfg);
    return rc;
}

int lyra_client_resolve_key(const struct lyra_common_flags *flags, const char *url, const char *cmd,
                            char **key, const char **source)
{
    *key = NULL;
    const char *src = NULL;
    int rc = 0;
    const char *env = getenv("LYRA_API_KEY");
    if (flags && flags->api_key && flags->api_key_file) {
        fprintf(stderr, "lyra %s: --api-key and --api-key-file: one of them\n", cmd);
        return LYRA_EINVAL;
    }
    if (flags && flags->api_key) {
        src = "--api-key";
        *key = strdup(flags->api_key);
    } else if (flags && flags->api_key_file) {
        src = "--api-key-file";
        rc = key_from_file(flags->api_key_file, cmd, key);
    } else if (env && *env) {
        src = "LYRA_API_KEY";
        *key = strdup(env);
    } else {
        char *dir = NULL;
        struct lyra_err err = {0};
        if (lyra_credentials_dir(&dir) == 0) {
            src = "the credentials file (`lyra login`)";
            rc = lyra_credentials_lookup(dir, url, key, &err);
            if (rc == LYRA_ENOTFOUND)
                rc = 0, src = NULL; /* no key known: the request goes without one */
            else if (rc < 0)
                fprintf(stderr, "lyra %s: %s\n", cmd, err.msg);
        }
        free(dir);
        if (rc < 0)
            return rc;
        if (!*key) {
            src = NULL;
            static char home_src[300];
            char *path = NULL;
            key_from_home(flags, url, key, &path);
            if (*key) {
                snprintf(home_src, sizeof home_src, "%s (this machine's daemon)", path);
                src = home_src;
            }
            free(path);
        }
    }
    if (rc < 0)
        return rc;
    if (src && !*key) {
        fprintf(stderr, "lyra %s: out of memory\n", cmd);
        return LYRA_ENOMEM;
    }
    if (*key && !lyra_credentials_key_valid(*key)) {
        fprintf(stderr,
                "lyra %s: the API key from %s is malformed (1 to %d printable characters, no spaces)\n", cmd,
                src, LYRA_CREDENTIALS_KEY_MAX);
        explicit_bzero(*key, strlen(*key));
        free(*key);
        *key = NULL;
        return LYRA_EINVAL;
    }
    if (source)
        *source = src;
    return 0;
}

int lyra_client_connect(const char *url_flag, const struct lyra_common_flags *flags, const char *cmd,
                        struct lyra_client **out)
{
    *out = NULL;
    char *url = NULL, *key = NULL;
    const char *source = NULL;
    enum lyra_client_origin origin;
    int rc = lyra_client_locate(url_flag, flags, &url, &origin);
    if (rc < 0) {
        if (rc != LYRA_ECONFIG) /* configuration errors are printed where found */
            fprintf(stderr, "lyra %s: %s\n", cmd, lyra_strerror(rc));
        return rc;
    }
    rc = lyra_client_resolve_key(flags, url, cmd, &key, &source);
    struct lyra_err err = {0};
    if (rc == 0 && (rc = lyra_client_new(out, url, &err)) < 0)
        fprintf(stderr, "lyra %s: %s\n", cmd, err.msg);
    if (rc == 0)
        lyra_client_set_origin(*out, origin);
    if (rc == 0 && key && (rc = lyra_client_set_key(*out, key, source)) < 0)
        fprintf(stderr, "lyra %s: %s\n", cmd, lyra_client_errmsg(*out));
    if (rc < 0) {
        lyra_client_free(*out);
        *out = NULL;
    }
    if (key)
        explicit_bzero(key, strlen(key));
    free(key);
    free(url);
    return rc;
}
