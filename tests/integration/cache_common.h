/* cache_common.h — helpers shared by it_cache.c and it_watchdog.c (the
 * acceptance tests of the model cache, issue 7): one daemon per test with
 * its own schema-3 lyra.yaml, short completions, long generations that a
 * test cancels by closing the connection, and reads of /status and
 * /events/recent.  Header-only (static functions, marked unused: not every
 * file calls each): each it_*.c is its own program. */

#ifndef LYRA_IT_CACHE_COMMON_H
#define LYRA_IT_CACHE_COMMON_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define UNUSED __attribute__((unused))

static struct it_server srv;
static char home[64], models[128];

static UNUSED void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static UNUSED double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A fresh home with models/ (copies of tiny named in `copies`, NULL-ended). */
static UNUSED void make_home(const char *const *copies)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    assert_int_equal(lyra_mkdirs(models), 0);
    for (size_t i = 0; copies && copies[i]; i++) {
        char as[96];
        snprintf(as, sizeof as, "%s.gguf", copies[i]);
        assert_int_equal(it_install_model(models, "tiny.gguf", as, SIZE_MAX), 0);
    }
}

/* Writes "schema_version: 3\n" + yaml and starts the daemon on the home. */
static UNUSED void start(const char *yaml, const char *const *env)
{
    char p[128], *full = NULL;
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    assert_true(asprintf(&full, "schema_version: 3\n%s", yaml) > 0);
    it_write_file(p, full);
    free(full);
    if (it_server_start(&srv, home, NULL, env) != 0)
        fail_msg("the daemon did not start (log: %s)", srv.log_path);
}

static UNUSED void stop(void)
{
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
    it_rmrf(home);
}

struct answer {
    int status;
    char code[64];  /* error code, "" on success */
    char model[64]; /* X-Lyra-Model */
    char retry[16]; /* Retry-After */
};

static UNUSED void fill_answer(struct it_response *r, struct answer *a)
{
    memset(a, 0, sizeof *a);
    a->status = r->status;
    json_t *j = it_json(r);
    snprintf(a->code, sizeof a->code, "%s", it_error_code(j));
    json_decref(j);
    it_header(r, "X-Lyra-Model", a->model, sizeof a->model);
    it_header(r, "Retry-After", a->retry, sizeof a->retry);
}

/* A short /v1/completions for `model`. */
static UNUSED struct answer complete(const char *model)
{
    char body[256];
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"hi\",\"max_tokens\":2}", model);
    struct it_response r;
    struct answer a;
    assert_int_equal(it_post_json(srv.port, "/v1/completions", body, &r), 0);
    fill_answer(&r, &a);
    it_response_free(&r);
    return a;
}

static UNUSED void complete_ok(const char *model)
{
    struct answer a = complete(model);
    if (a.status != 200)
        fail_msg("completion for %s: %d %s", model, a.status, a.code);
}

/* POST without reading the answer (it stays open: close() cancels). */
static UNUSED int post_open(const char *path, const char *body)
{
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    char *req = NULL;
    int n = asprintf(&req,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    assert_true(n > 0);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    free(req);
    return fd;
}

/* A 2,000-token generation (not streamed, so that its end is an HTTP
 * status): on "small" it takes tens of seconds here. */
static UNUSED int long_generation(const char *model)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"model\":\"%s\",\"prompt\":\"Once\",\"max_tokens\":2000,\"ignore_eos\":true}", model);
    return post_open("/v1/completions", body);
}

/* True when nothing came back on fd yet (and it is still open). */
static UNUSED bool no_answer_yet(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static UNUSED json_t *status(void)
{
    json_t *st = it_get_json(srv.port, "/status", 200);
    assert_non_null(st);
    return st;
}

static UNUSED json_int_t cache_num(json_t *st, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(st, "cache"), key));
}

static UNUSED json_int_t evictions(json_t *st, const char *reason)
{
    return json_integer_value(
        json_object_get(json_object_get(json_object_get(st, "cache"), "evictions"), reason));
}

/* The worker pid of a model (from /status models[]), 0 when none runs. */
static UNUSED int pid_of(const char *model)
{
    json_t *m = it_status_model(srv.port, model);
    int pid = m ? (int)json_integer_value(json_object_get(m, "pid")) : 0;
    json_decref(m);
    return pid;
}

/* The model's state in /status models[] ("loaded", ...), "" when none. */
static UNUSED void state_of(const char *model, char *buf, size_t len)
{
    json_t *m = it_status_model(srv.port, model);
    snprintf(buf, len, "%s", m ? json_string_value(json_object_get(m, "state")) ?: "" : "");
    json_decref(m);
}

static UNUSED bool wait_state(const char *model, const char *want, int timeout_ms)
{
    char st[32];
    for (double end = now_ms() + timeout_ms; now_ms() < end; sleep_ms(20)) {
        state_of(model, st, sizeof st);
        if (strcmp(st, want) == 0)
            return true;
    }
    fprintf(stderr, "%s is '%s', not '%s', after %d ms\n", model, st, want, timeout_ms);
    return false;
}

static UNUSED bool wait_in_flight(const char *model, int n, int timeout_ms)
{
    for (double end = now_ms() + timeout_ms; now_ms() < end; sleep_ms(20)) {
        json_t *m = it_status_model(srv.port, model);
        int got = m ? (int)json_integer_value(json_object_get(m, "in_flight")) : 0;
        json_decref(m);
        if (got >= n)
            return true;
    }
    fprintf(stderr, "%s never had %d requests in flight\n", model, n);
    return false;
}

/* Every event of `types` after `since` (new reference: an array). */
static UNUSED json_t *events_since(const char *types, uint64_t since)
{
    char path[256];
    snprintf(path, sizeof path, "/events/recent?since=%llu&types=%s&limit=10000", (unsigned long long)since,
             types);
    json_t *j = it_get_json(srv.port, path, 200);
    assert_non_null(j);
    json_t *ev = json_incref(json_object_get(j, "events"));
    json_decref(j);
    return ev ? ev : json_array();
}

static UNUSED const char *ev_data(json_t *ev, const char *key)
{
    return json_string_value(json_object_get(json_object_get(ev, "data"), key)) ?: "";
}

/* How many events of `type` after `since` have data.model == model (NULL:
 * any) and data.reason == reason (NULL: any). */
static UNUSED int count_events(const char *type, uint64_t since, const char *model, const char *reason)
{
    json_t *list = events_since(type, since);
    int n = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(list, i, ev)
    {
        if ((!model || strcmp(ev_data(ev, "model"), model) == 0) &&
            (!reason || strcmp(ev_data(ev, "reason"), reason) == 0))
            n++;
    }
    json_decref(list);
    return n;
}

/* Waits for `want` such events (state polling, generous deadline). */
static UNUSED bool wait_events(const char *type, uint64_t since, const char *model, const char *reason,
                               int want, int timeout_ms)
{
    int n = 0;
    for (double end = now_ms() + timeout_ms; now_ms() < end; sleep_ms(20))
        if ((n = count_events(type, since, model, reason)) >= want)
            return true;
    fprintf(stderr, "%d of %d %s events (model %s, reason %s) within %d ms\n", n, want, type,
            model ? model : "*", reason ? reason : "*", timeout_ms);
    return false;
}

static UNUSED bool proc_exists(int pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d", pid);
    return access(p, F_OK) == 0;
}

#endif
