/* test_worker.c — black-box tests of the real `lyra worker` process.
 *
 * Each test forks and execs the lyra binary with one end of a socketpair as
 * --fd 3 and speaks the frame protocol (proto/frame.h) to it, using the
 * tiny test model (random weights: the text is gibberish, so tests check
 * structure, counts and constraints, never content).
 *
 * Paths: env LYRA_BIN and LYRA_TEST_MODELS, else the lyra binary and models/
 * next to this test's executable (the build dir), else the repository's
 * build/ (found from __FILE__), else ../build relative to the working dir.
 * Tests are skipped only when tiny.gguf is missing. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "proto/frame.h"

static char lyra_bin[PATH_MAX];
static char models_dir[PATH_MAX];
static char tiny[PATH_MAX + 16];

static bool exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void resolve_paths(void)
{
    char exe_dir[PATH_MAX] = "", root[PATH_MAX] = "";
    ssize_t n = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 1);
    if (n > 0) {
        exe_dir[n] = '\0';
        char *slash = strrchr(exe_dir, '/');
        if (slash)
            *slash = '\0';
    }
    /* __FILE__ is tests/unit/test_worker.c under the source root (absolute
     * with CMake) */
    snprintf(root, sizeof root, "%s", __FILE__);
    char *t = strstr(root, "tests/unit/test_worker.c");
    if (t)
        *t = '\0';

    const char *env = getenv("LYRA_BIN");
    const char *cands[] = {"%s/lyra", "%sbuild/lyra", "%s../build/lyra"};
    const char *bases[] = {exe_dir, root, ""};
    if (env && *env) {
        snprintf(lyra_bin, sizeof lyra_bin, "%s", env);
    } else {
        for (int i = 0; i < 3; i++) {
            snprintf(lyra_bin, sizeof lyra_bin, cands[i], bases[i]);
            if (exists(lyra_bin))
                break;
        }
    }
    env = getenv("LYRA_TEST_MODELS");
    const char *mcands[] = {"%s/models", "%s/../build/models", "%sbuild/models", "%s../build/models"};
    const char *mbases[] = {exe_dir, exe_dir, root, ""};
    if (env && *env) {
        snprintf(models_dir, sizeof models_dir, "%s", env);
    } else {
        for (int i = 0; i < 4; i++) {
            snprintf(models_dir, sizeof models_dir, mcands[i], mbases[i]);
            snprintf(tiny, sizeof tiny, "%s/tiny.gguf", models_dir);
            if (exists(tiny))
                break;
        }
    }
    snprintf(tiny, sizeof tiny, "%s/tiny.gguf", models_dir);
}

/* ---- a worker process ------------------------------------------------------ */

struct worker {
    pid_t pid;
    int fd;
    struct lyra_frame_reader *rd;
    json_t *ready;
};

static int64_t now_ms(void)
{
    return lyra_now_ms();
}

/* Starts `lyra worker --fd 3 --model model [extra...]`; extra ends with NULL. */
static void spawn(struct worker *w, const char *model, const char *const *extra)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    const char *argv[32] = {lyra_bin, "worker", "--fd", "3", "--model", model};
    int argc = 6;
    for (int i = 0; extra && extra[i]; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(sv[1], 3); /* dup2 clears CLOEXEC on 3 */
        if (!getenv("LYRA_TEST_VERBOSE")) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 2);
        }
        execv(lyra_bin, (char **)argv);
        _exit(127);
    }
    close(sv[1]);
    w->pid = pid;
    w->fd = sv[0];
    w->rd = lyra_frame_reader_new();
    w->ready = NULL;
}

/* Next frame, or NULL on EOF or after timeout_ms. */
static json_t *recv_msg(struct worker *w, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        json_t *m = NULL;
        struct lyra_err err = {0};
        assert_int_equal(lyra_frame_reader_next(w->rd, &m, &err), 0);
        if (m)
            return m;
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            return NULL;
        struct pollfd p = {.fd = w->fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        int n = lyra_frame_reader_read(w->rd, w->fd, &err);
        if (n <= 0)
            return NULL;
    }
}

static void send_msg(struct worker *w, json_t *msg)
{
    assert_non_null(msg);
    struct lyra_err err = {0};
    assert_int_equal(lyra_frame_write(w->fd, msg, &err), 0);
    json_decref(msg);
}

static const char *type_of(const json_t *m)
{
    return json_string_value(json_object_get(m, "type"));
}

static json_int_t int_of(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

/* Waits for exit; returns the exit status, or -1 (and kills it) after
 * timeout_ms. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Starts a worker on the tiny model and waits for "ready". */
static void start(struct worker *w, const char *const *extra)
{
    if (!exists(tiny))
        skip();
    spawn(w, tiny, extra);
    w->ready = recv_msg(w, 60000);
    assert_non_null(w->ready);
    if (strcmp(type_of(w->ready), "ready") != 0)
        fail_msg("expected ready, got %s", json_dumps(w->ready, 0));
}

/* Closes the socket (EOF) and expects a clean exit. */
static void stop_worker(struct worker *w)
{
    close(w->fd);
    assert_int_equal(wait_exit(w->pid, 10000), 0);
    lyra_frame_reader_free(w->rd);
    json_decref(w->ready);
}

static const char *const one_thread[] = {"--threads", "1", NULL};

/* ---- per-request results ------------------------------------------------------ */

struct result {
    json_int_t id;
    json_t *started, *done, *error;
    char text[1 << 16];
    size_t len;
    int n_sum;    /* sum of "n" over token frames */
    int frames;   /* token frames */
    size_t frame_end[2048];
    int seq_started, seq_done; /* order among all events seen */
    bool bad_utf8;
};

static void result_clear(struct result *r)
{
    json_decref(r->started);
    json_decref(r->done);
    json_decref(r->error);
}

/* Reads frames until every result has its done or error. */
static void collect(struct worker *w, struct result **res, int n, int timeout_ms)
{
    int seq = 0, open = n;
    int64_t deadline = now_ms() + timeout_ms;
    while (open > 0) {
        int left = (int)(deadline - now_ms());
        json_t *m = left > 0 ? recv_msg(w, left) : NULL;
        if (!m)
            fail_msg("timed out or EOF with %d requests open", open);
        const char *t = type_of(m);
        json_int_t id = json_integer_value(json_object_get(m, "id"));
        struct result *r = NULL;
        for (int i = 0; i < n; i++)
            if (res[i]->id == id)
                r = res[i];
        if (!r)
            fail_msg("frame for unknown request: %s", json_dumps(m, 0));
        seq++;
        if (strcmp(t, "token") == 0) {
            const json_t *text = json_object_get(m, "text");
            size_t l = json_string_length(text);
            assert_true(r->len + l < sizeof r->text);
            memcpy(r->text + r->len, json_string_value(text), l);
            r->len += l;
            r->text[r->len] = '\0';
            if (!lyra_utf8_valid(json_string_value(text), l))
                r->bad_utf8 = true;
            r->n_sum += (int)int_of(m, "n");
            if (r->frames < 2048)
                r->frame_end[r->frames] = r->len;
            r->frames++;
            json_decref(m);
        } else if (strcmp(t, "started") == 0) {
            assert_null(r->started);
            r->started = m;
            r->seq_started = seq;
        } else if (strcmp(t, "done") == 0 || strcmp(t, "error") == 0) {
            if (strcmp(t, "done") == 0)
                r->done = m;
            else
                r->error = m;
            r->seq_done = seq;
            open--;
        } else {
            fail_msg("unexpected frame: %s", json_dumps(m, 0));
        }
    }
}

static struct result *new_result(json_int_t id)
{
    struct result *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->id = id;
    return r;
}

static void send_generate(struct worker *w, json_int_t id, const char *prompt, json_t *params)
{
    send_msg(w, json_pack("{s:s, s:I, s:s, s:o}", "type", "generate", "id", id, "prompt", prompt, "params",
                          params ? params : json_object()));
}

/* Runs one request to completion. */
static struct result *generate(struct worker *w, json_int_t id, const char *prompt, json_t *params)
{
    struct result *r = new_result(id);
    send_generate(w, id, prompt, params);
    collect(w, &r, 1, 60000);
    return r;
}

static const char *finish_reason(const struct result *r)
{
    if (!r->done)
        fail_msg("request %lld ended with %s", (long long)r->id,
                 r->error ? json_dumps(r->error, 0) : "nothing");
    return json_string_value(json_object_get(r->done, "finish_reason"));
}

static json_int_t usage(const struct result *r, const char *key)
{
    return int_of(json_object_get(r->done, "usage"), key);
}

static json_int_t timing_n(const struct result *r, const char *key)
{
    return int_of(json_object_get(r->done, "timings"), key);
}

/* An error reply (not done) for one request, for the negative tests. */
static json_t *expect_error(struct worker *w, json_int_t id, const char *code)
{
    json_t *m = recv_msg(w, 30000);
    assert_non_null(m);
    if (strcmp(type_of(m), "error") != 0)
        fail_msg("expected error %s, got %s", code, json_dumps(m, 0));
    assert_int_equal(int_of(m, "id"), id);
    assert_string_equal(json_string_value(json_object_get(m, "code")), code);
    return m;
}

static int cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    return (int)sysconf(_SC_NPROCESSORS_ONLN);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_ready(void **state)
{
    struct worker w;
    start(&w, (const char *const[]){"--name", "tiny", "--parallel", "3", NULL});
    const json_t *r = w.ready;
    assert_string_equal(json_string_value(json_object_get(r, "name")), "tiny");
    assert_true(json_number_value(json_object_get(r, "load_ms")) > 0);
    assert_int_equal(int_of(r, "n_slots"), 3);
    /* --ctx defaults to 4096, capped at the model's 2048 */
    assert_int_equal(int_of(r, "n_ctx_slot"), 2048);
    assert_int_equal(int_of(r, "threads"), cpus());
    const json_t *m = json_object_get(r, "model");
    assert_int_equal(int_of(m, "n_vocab"), 32000);
    assert_int_equal(int_of(m, "n_embd"), 128);
    assert_int_equal(int_of(m, "n_ctx_train"), 2048);
    assert_true(int_of(m, "n_params") > 4000000);
    assert_true(int_of(m, "size_bytes") > 1000000);
    assert_true(json_string_length(json_object_get(m, "desc")) > 0);
    assert_non_null(strstr(json_string_value(json_object_get(m, "chat_template")), "<|im_start|>"));
    assert_true(json_is_false(json_object_get(m, "has_encoder")));
    const json_t *devs = json_object_get(r, "devices");
    assert_true(json_array_size(devs) >= 1);
    bool cpu = false;
    size_t i;
    const json_t *d;
    json_array_foreach(devs, i, d) {
        assert_true(json_is_string(json_object_get(d, "name")));
        cpu |= strcmp(json_string_value(json_object_get(d, "type")), "cpu") == 0;
    }
    assert_true(cpu);
    stop_worker(&w);
}

static void test_max_tokens_length(void **state)
{
    struct worker w;
    start(&w, one_thread);
    struct result *r = generate(&w, 1, "The quick brown fox",
                                json_pack("{s:i, s:b, s:f}", "max_tokens", 37, "ignore_eos", 1, "temperature", 0.8));
    assert_string_equal(finish_reason(r), "length");
    assert_int_equal(usage(r, "completion_tokens"), 37);
    assert_int_equal(r->n_sum, 37);
    assert_int_equal(timing_n(r, "predicted_n"), 37);
    assert_int_equal(usage(r, "prompt_tokens"), int_of(r->started, "prompt_tokens"));
    assert_true(r->frames >= 1 && r->frames <= 37); /* at most one frame per step */
    assert_false(r->bad_utf8);
    assert_true(r->len > 0);
    result_clear(r);
    free(r);
    stop_worker(&w);
}

/* "stream": false: the text comes in one token frame before "done", equal
 * to what the streamed form of the same greedy request produces. */
static void test_quiet_request(void **state)
{
    struct worker w;
    start(&w, one_thread);
    const char *prompt = "The quick brown fox";
    struct result *streamed = generate(&w, 1, prompt, json_pack("{s:i, s:b, s:f}", "max_tokens", 20, "ignore_eos", 1,
                                                                "temperature", 0.0));
    struct result *quiet = new_result(2);
    send_msg(&w, json_pack("{s:s, s:i, s:s, s:b, s:{s:i, s:b, s:f}}", "type", "generate", "id", 2, "prompt", prompt,
                           "stream", 0, "params", "max_tokens", 20, "ignore_eos", 1, "temperature", 0.0));
    collect(&w, &quiet, 1, 60000);
    assert_string_equal(finish_reason(quiet), "length");
    assert_int_equal(quiet->frames, 1);
    assert_int_equal(quiet->n_sum, 20);
    assert_string_equal(quiet->text, streamed->text);
    assert_true(streamed->frames > 1);
    result_clear(streamed);
    free(streamed);
    result_clear(quiet);
    free(quiet);
    stop_worker(&w);
}

static void test_greedy_deterministic(void **state)
{
    struct worker w;
    start(&w, one_thread);
    const char *prompt = "In a distant land there lived";
    struct result *a = generate(&w, 1, prompt, json_pack("{s:i, s:f, s:b}", "max_tokens", 48, "temperature", 0.0,
                                                         "ignore_eos", 1));
    struct result *b = generate(&w, 2, prompt, json_pack("{s:i, s:f, s:b}", "max_tokens", 48, "temperature", 0.0,
                                                         "ignore_eos", 1));
    assert_true(a->len > 0);
    assert_string_equal(a->text, b->text);
    /* and a seeded sampler repeats itself too */
    struct result *c = generate(&w, 3, prompt, json_pack("{s:i, s:f, s:i, s:b}", "max_tokens", 48, "temperature",
                                                         1.0, "seed", 1234, "ignore_eos", 1));
    struct result *d = generate(&w, 4, prompt, json_pack("{s:i, s:f, s:i, s:b}", "max_tokens", 48, "temperature",
                                                         1.0, "seed", 1234, "ignore_eos", 1));
    assert_string_equal(c->text, d->text);
    struct result *rs[] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        result_clear(rs[i]);
        free(rs[i]);
    }
    stop_worker(&w);
}

static void test_concurrent_overlap(void **state)
{
    struct worker w;
    start(&w, one_thread);
    struct result *r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = new_result(10 + i);
        char prompt[64];
        snprintf(prompt, sizeof prompt, "Request number %d says", i);
        send_generate(&w, 10 + i, prompt, json_pack("{s:i, s:b}", "max_tokens", 200, "ignore_eos", 1));
    }
    collect(&w, r, 4, 120000);
    int max_started = 0, min_done = INT_MAX;
    bool slot_used[4] = {false};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(finish_reason(r[i]), "length");
        assert_int_equal(usage(r[i], "completion_tokens"), 200);
        assert_int_equal(r[i]->n_sum, 200);
        json_int_t slot = int_of(r[i]->started, "slot");
        assert_true(slot >= 0 && slot < 4);
        assert_false(slot_used[slot]);
        slot_used[slot] = true;
        if (r[i]->seq_started > max_started)
            max_started = r[i]->seq_started;
        if (r[i]->seq_done < min_done)
            min_done = r[i]->seq_done;
    }
    /* all four were running at once: every start came before any end */
    assert_true(max_started < min_done);
    for (int i = 0; i < 4; i++) {
        result_clear(r[i]);
        free(r[i]);
    }
    stop_worker(&w);
}

static void test_queueing(void **state)
{
    struct worker w;
    start(&w, one_thread);
    enum { N = 6 };
    struct result *r[N + 1];
    for (int i = 0; i < N + 1; i++) {
        r[i] = new_result(20 + i);
        send_generate(&w, 20 + i, "Queue me", json_pack("{s:i, s:b}", "max_tokens", 64, "ignore_eos", 1));
    }
    /* the 7th is cancelled while it waits */
    send_msg(&w, json_pack("{s:s, s:i}", "type", "cancel", "id", 20 + N));
    collect(&w, r, N + 1, 120000);
    assert_string_equal(finish_reason(r[N]), "cancelled");
    if (!r[N]->started)
        assert_int_equal(usage(r[N], "completion_tokens"), 0);
    int first_done = INT_MAX;
    for (int i = 0; i < 4; i++)
        if (r[i]->seq_done < first_done)
            first_done = r[i]->seq_done;
    for (int i = 0; i < N; i++) {
        assert_string_equal(finish_reason(r[i]), "length");
        assert_int_equal(usage(r[i], "completion_tokens"), 64);
    }
    /* the 5th and 6th waited for a free slot */
    for (int i = 4; i < N; i++) {
        assert_true(r[i]->seq_started > first_done);
        assert_true(json_number_value(json_object_get(r[i]->started, "queue_ms")) > 0);
    }
    for (int i = 0; i < N + 1; i++) {
        result_clear(r[i]);
        free(r[i]);
    }
    stop_worker(&w);
}

static json_t *status(struct worker *w, json_int_t id)
{
    send_msg(w, json_pack("{s:s, s:I}", "type", "status", "id", id));
    json_t *m;
    /* token frames of a running request may come first */
    while ((m = recv_msg(w, 10000)) && strcmp(type_of(m), "token") == 0)
        json_decref(m);
    assert_non_null(m);
    assert_string_equal(type_of(m), "status");
    assert_int_equal(int_of(m, "id"), id);
    return m;
}

static void test_cancel(void **state)
{
    struct worker w;
    start(&w, one_thread);
    send_generate(&w, 5, "Tell me a very long story",
                  json_pack("{s:i, s:b}", "max_tokens", 1900, "ignore_eos", 1));
    json_t *m;
    int slot = -1;
    /* wait until it is generating, then cancel */
    for (;;) {
        m = recv_msg(&w, 30000);
        assert_non_null(m);
        if (strcmp(type_of(m), "started") == 0)
            slot = (int)int_of(m, "slot");
        bool tok = strcmp(type_of(m), "token") == 0;
        json_decref(m);
        if (tok)
            break;
    }
    json_t *st = status(&w, 6);
    const json_t *s0 = json_array_get(json_object_get(st, "slots"), (size_t)slot);
    assert_string_equal(json_string_value(json_object_get(s0, "state")), "generating");
    assert_int_equal(int_of(s0, "request"), 5);
    json_decref(st);

    send_msg(&w, json_pack("{s:s, s:i}", "type", "cancel", "id", 5));
    for (;;) {
        m = recv_msg(&w, 30000);
        assert_non_null(m);
        if (strcmp(type_of(m), "done") == 0)
            break;
        assert_string_equal(type_of(m), "token");
        json_decref(m);
    }
    assert_string_equal(json_string_value(json_object_get(m, "finish_reason")), "cancelled");
    assert_true(int_of(json_object_get(m, "usage"), "completion_tokens") < 1900);
    json_decref(m);

    st = status(&w, 7);
    const json_t *slots = json_object_get(st, "slots");
    assert_int_equal(json_array_size(slots), 4);
    s0 = json_array_get(slots, (size_t)slot);
    assert_string_equal(json_string_value(json_object_get(s0, "state")), "idle");
    assert_true(json_is_null(json_object_get(s0, "request")));
    assert_true(int_of(s0, "n_cached") > 0);
    assert_int_equal(int_of(st, "queued"), 0);
    json_decref(st);

    /* the slot serves the next request */
    struct result *r = generate(&w, 8, "Short", json_pack("{s:i, s:b}", "max_tokens", 5, "ignore_eos", 1));
    assert_string_equal(finish_reason(r), "length");
    result_clear(r);
    free(r);
    stop_worker(&w);
}

static void test_prefix_reuse(void **state)
{
    struct worker w;
    start(&w, one_thread);
    char prompt[4096] = "";
    for (int i = 0; i < 120; i++) {
        char word[32];
        snprintf(word, sizeof word, "item%d ", i);
        strcat(prompt, word);
    }
    struct result *a = generate(&w, 1, prompt, json_pack("{s:i}", "max_tokens", 4));
    struct result *b = generate(&w, 2, prompt, json_pack("{s:i}", "max_tokens", 4));
    json_int_t n = int_of(b->started, "prompt_tokens");
    assert_true(n > 200);
    assert_int_equal(int_of(a->started, "cached_tokens"), 0);
    assert_int_equal(timing_n(a, "prompt_n"), n);
    assert_int_equal(int_of(b->started, "cached_tokens"), n - 1);
    assert_int_equal(usage(b, "cached_tokens"), n - 1);
    assert_int_equal(timing_n(b, "prompt_n"), 1);

    /* a chat that continues: the earlier turn's KV is reused */
    json_t *msgs = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "system", "content", prompt, "role", "user",
                             "content", "Hello there");
    struct result *c = new_result(3);
    send_msg(&w, json_pack("{s:s, s:i, s:O, s:{s:i, s:f}}", "type", "generate", "id", 3, "messages", msgs,
                           "params", "max_tokens", 8, "temperature", 0.0));
    collect(&w, &c, 1, 60000);
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content", c->text));
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", "And then?"));
    struct result *d = new_result(4);
    send_msg(&w, json_pack("{s:s, s:i, s:o, s:{s:i}}", "type", "generate", "id", 4, "messages", msgs, "params",
                           "max_tokens", 8));
    collect(&w, &d, 1, 60000);
    json_int_t first = int_of(c->started, "prompt_tokens");
    assert_true(int_of(d->started, "cached_tokens") >= first);
    assert_true(timing_n(d, "prompt_n") < int_of(d->started, "prompt_tokens") / 4);
    struct result *rs[] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        result_clear(rs[i]);
        free(rs[i]);
    }
    stop_worker(&w);
}

static int count_tokens(struct worker *w, json_int_t id, json_t *msg)
{
    json_object_set_new(msg, "type", json_string("tokenize"));
    json_object_set_new(msg, "id", json_integer(id));
    send_msg(w, msg);
    json_t *m = recv_msg(w, 10000);
    assert_non_null(m);
    assert_string_equal(type_of(m), "tokens");
    int n = (int)int_of(m, "count");
    json_decref(m);
    return n;
}

static void test_context_length(void **state)
{
    struct worker w;
    start(&w, (const char *const[]){"--threads", "1", "--ctx", "512", NULL});
    assert_int_equal(int_of(w.ready, "n_ctx_slot"), 512);
    const char *prompt = "A prompt of a few tokens";
    int n = count_tokens(&w, 1, json_pack("{s:s}", "text", prompt));
    assert_true(n > 3);
    /* max_tokens above what the context leaves is clamped (as llama-server
     * and Ollama do): the answer fills the context and ends with "length". */
    struct result *r = generate(&w, 2, prompt, json_pack("{s:i, s:b}", "max_tokens", 100000, "ignore_eos", 1));
    assert_string_equal(finish_reason(r), "length");
    assert_int_equal(usage(r, "completion_tokens"), 512 - n);
    result_clear(r);
    free(r);

    /* -1 means "until the context is full" */
    r = generate(&w, 3, prompt, json_pack("{s:i, s:b}", "max_tokens", -1, "ignore_eos", 1));
    assert_string_equal(finish_reason(r), "length");
    assert_int_equal(usage(r, "completion_tokens"), 512 - n);
    result_clear(r);
    free(r);
    json_t *e;

    /* a prompt longer than the context */
    char *long_prompt = calloc(1, 8192);
    for (int i = 0; i < 600; i++)
        strcat(long_prompt, "go ");
    send_generate(&w, 4, long_prompt, json_pack("{s:i}", "max_tokens", 10));
    e = expect_error(&w, 4, "context_length_exceeded");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "the slot context holds 512"));
    assert_int_equal(int_of(e, "status"), 400);
    json_decref(e);
    free(long_prompt);

    /* Megabytes of prompt are refused from their length, without the
     * seconds of tokenizing that would stall every slot (the message says
     * so: it counts bytes, not tokens). */
    char *huge = malloc(4 << 20);
    memset(huge, 'x', (4 << 20) - 1);
    huge[(4 << 20) - 1] = '\0';
    send_generate(&w, 5, huge, json_pack("{s:i}", "max_tokens", 10));
    free(huge);
    e = expect_error(&w, 5, "context_length_exceeded");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "bytes is far more than"));
    json_decref(e);
    stop_worker(&w);
}

static void test_invalid_params(void **state)
{
    struct worker w;
    start(&w, one_thread);
    static const struct {
        const char *params, *field;
    } cases[] = {
        {"{\"temperature\": -1}", "temperature"},
        {"{\"temperature\": \"hot\"}", "temperature"},
        {"{\"top_p\": 1.5}", "top_p"},
        {"{\"min_p\": -0.1}", "min_p"},
        {"{\"max_tokens\": 0}", "max_tokens"},
        {"{\"top_k\": -3}", "top_k"},
        {"{\"repeat_penalty\": 0}", "repeat_penalty"},
        {"{\"seed\": 5000000000}", "seed"},
        {"{\"stop\": [\"ok\", 3]}", "stop"},
        {"{\"ignore_eos\": \"yes\"}", "ignore_eos"},
        {"{\"grammar\": 5}", "grammar"},
        {"[1]", "params"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *p = json_loads(cases[i].params, 0, NULL);
        assert_non_null(p);
        send_msg(&w, json_pack("{s:s, s:i, s:s, s:o}", "type", "generate", "id", (int)i, "prompt", "hi",
                               "params", p));
        json_t *e = expect_error(&w, (json_int_t)i, "invalid_request");
        if (!strstr(json_string_value(json_object_get(e, "message")), cases[i].field))
            fail_msg("message '%s' does not name %s", json_string_value(json_object_get(e, "message")),
                     cases[i].field);
        assert_int_equal(int_of(e, "status"), 400);
        json_decref(e);
    }
    /* messages: unknown role, content not a string, not an array */
    send_msg(&w, json_pack("{s:s, s:i, s:[{s:s, s:s}]}", "type", "generate", "id", 100, "messages", "role",
                           "wizard", "content", "hi"));
    json_t *e = expect_error(&w, 100, "invalid_request");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "messages[0].role"));
    json_decref(e);
    send_msg(&w, json_pack("{s:s, s:i, s:[{s:s, s:i}]}", "type", "generate", "id", 101, "messages", "role",
                           "user", "content", 42));
    e = expect_error(&w, 101, "invalid_request");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "messages[0].content"));
    json_decref(e);
    send_msg(&w, json_pack("{s:s, s:i}", "type", "generate", "id", 102));
    json_decref(expect_error(&w, 102, "invalid_request"));
    /* an unknown message type is answered, not fatal */
    send_msg(&w, json_pack("{s:s, s:i}", "type", "frobnicate", "id", 103));
    e = expect_error(&w, 103, "invalid_request");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "frobnicate"));
    json_decref(e);
    /* a NUL in a prompt is data (the tokenizer gets the length) and a NUL in
     * a chat message is refused, neither is fatal */
    send_msg(&w, json_pack("{s:s, s:i, s:s%, s:{s:i}}", "type", "generate", "id", 105, "prompt", "a\0b",
                           (size_t)3, "params", "max_tokens", 2));
    struct result *nul = new_result(105);
    collect(&w, &nul, 1, 30000);
    assert_int_equal(usage(nul, "completion_tokens"), 2);
    result_clear(nul);
    free(nul);
    send_msg(&w, json_pack("{s:s, s:i, s:[{s:s, s:s%}]}", "type", "generate", "id", 106, "messages", "role",
                           "user", "content", "a\0b", (size_t)3));
    json_decref(expect_error(&w, 106, "invalid_request"));
    /* the worker still serves */
    struct result *r = generate(&w, 104, "Still alive?", json_pack("{s:i}", "max_tokens", 3));
    assert_non_null(r->done);
    result_clear(r);
    free(r);
    stop_worker(&w);
}

static void test_grammar(void **state)
{
    struct worker w;
    start(&w, one_thread);
    for (int seed = 0; seed < 6; seed++) {
        struct result *r = generate(&w, seed, "Is the sky blue? Answer:",
                                    json_pack("{s:s, s:f, s:i, s:i}", "grammar", "root ::= \"yes\" | \"no\"",
                                              "temperature", 1.0, "seed", seed, "max_tokens", 20));
        assert_string_equal(finish_reason(r), "stop");
        if (strcmp(r->text, "yes") != 0 && strcmp(r->text, "no") != 0)
            fail_msg("grammar output '%s'", r->text);
        result_clear(r);
        free(r);
    }
    send_generate(&w, 50, "x", json_pack("{s:s}", "grammar", "root ::= undefined-rule"));
    json_t *e = expect_error(&w, 50, "invalid_grammar");
    assert_int_equal(int_of(e, "status"), 400);
    json_decref(e);
    send_generate(&w, 51, "x", json_pack("{s:s}", "grammar", "root ::= \"unterminated"));
    json_decref(expect_error(&w, 51, "invalid_grammar"));
    stop_worker(&w);
}

/* An ambiguous grammar makes llama.cpp's grammar engine slow for every
 * request of the worker (its stacks multiply with each character): one with
 * duplicate branches is refused at once, and one whose constraint reaches
 * the per-token budget ends its own request (the worker, and the others'
 * requests, go on). */
static void test_ambiguous_grammar_is_contained(void **state)
{
    struct worker w;
    start(&w, one_thread);
    send_generate(&w, 1, "x", json_pack("{s:s}", "grammar", "root ::= x*\nx ::= \"a\" | \"b\" | \"a\""));
    json_t *e = expect_error(&w, 1, "invalid_grammar");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "appears twice"));
    json_decref(e);
    stop_worker(&w);
    /* The per-token budget, at 0 ms so that any grammar reaches it (what is
     * tested is what happens then, not how slow a grammar is): the request
     * ends with grammar_too_slow and the worker serves on. */
    setenv("LYRA_WORKER_GRAMMAR_BUDGET_MS", "0", 1);
    start(&w, one_thread);
    unsetenv("LYRA_WORKER_GRAMMAR_BUDGET_MS");
    const char *g = "root ::= x*\nx ::= \"a\" | \"b\"";
    struct result *r = generate(&w, 2, "hi", json_pack("{s:s, s:i}", "grammar", g, "max_tokens", 50));
    assert_non_null(r->error); /* after "started": the first token measured the cost */
    assert_string_equal(json_string_value(json_object_get(r->error, "code")), "grammar_too_slow");
    assert_int_equal(int_of(r->error, "status"), 400);
    result_clear(r);
    free(r);
    r = generate(&w, 3, "still here", json_pack("{s:i, s:b}", "max_tokens", 4, "ignore_eos", 1));
    assert_int_equal(usage(r, "completion_tokens"), 4);
    result_clear(r);
    free(r);
    stop_worker(&w);
}

/* True when s is a prefix of some JSON text whose root is an object;
 * *complete when it is a whole one (trailing whitespace allowed). */
static bool json_prefix_ok(const char *s, bool *complete)
{
    enum { VAL, VAL_OR_END, KEY_OR_END, KEY, COLON, AFTER, STR, ESC, UHEX, NUM, LIT, DONE } st = VAL;
    enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP } ns = N_INT;
    char stack[512];
    int depth = 0, uleft = 0;
    bool key = false, started = false;
    const char *lit = "";
    *complete = false;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    again:
        switch (st) {
        case VAL:
        case VAL_OR_END:
            if (ws)
                break;
            if (!started && c != '{')
                return false;
            started = true;
            if (st == VAL_OR_END && c == ']') {
                depth--;
                st = depth ? AFTER : DONE;
            } else if (c == '{' || c == '[') {
                if (depth == (int)sizeof stack)
                    return false;
                stack[depth++] = (char)c;
                st = c == '{' ? KEY_OR_END : VAL_OR_END;
            } else if (c == '"') {
                key = false;
                st = STR;
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                ns = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
                st = NUM;
            } else if (c == 't' || c == 'f' || c == 'n') {
                lit = c == 't' ? "rue" : c == 'f' ? "alse" : "ull";
                st = LIT;
            } else {
                return false;
            }
            break;
        case KEY_OR_END:
        case KEY:
            if (ws)
                break;
            if (c == '"') {
                key = true;
                st = STR;
            } else if (st == KEY_OR_END && c == '}') {
                depth--;
                st = depth ? AFTER : DONE;
            } else {
                return false;
            }
            break;
        case COLON:
            if (ws)
                break;
            if (c != ':')
                return false;
            st = VAL;
            break;
        case AFTER:
            if (ws)
                break;
            if (c == ',')
                st = stack[depth - 1] == '{' ? KEY : VAL;
            else if ((c == '}' && stack[depth - 1] == '{') || (c == ']' && stack[depth - 1] == '[')) {
                depth--;
                st = depth ? AFTER : DONE;
            } else
                return false;
            break;
        case STR:
            if (c == '"')
                st = key ? COLON : AFTER;
            else if (c == '\\')
                st = ESC;
            else if (c < 0x20)
                return false;
            break;
        case ESC:
            if (c == 'u') {
                uleft = 4;
                st = UHEX;
            } else if (strchr("\"\\/bfnrt", c)) {
                st = STR;
            } else {
                return false;
            }
            break;
        case UHEX:
            if (!strchr("0123456789abcdefABCDEF", c))
                return false;
            if (--uleft == 0)
                st = STR;
            break;
        case NUM: {
            bool digit = c >= '0' && c <= '9';
            switch (ns) {
            case N_MINUS:
                if (!digit)
                    return false;
                ns = c == '0' ? N_ZERO : N_INT;
                continue;
            case N_ZERO:
            case N_INT:
                if (digit && ns == N_INT)
                    continue;
                if (c == '.') {
                    ns = N_DOT;
                    continue;
                }
                if (c == 'e' || c == 'E') {
                    ns = N_E;
                    continue;
                }
                break;
            case N_DOT:
                if (!digit)
                    return false;
                ns = N_FRAC;
                continue;
            case N_FRAC:
                if (digit)
                    continue;
                if (c == 'e' || c == 'E') {
                    ns = N_E;
                    continue;
                }
                break;
            case N_E:
                if (c == '+' || c == '-') {
                    ns = N_ESIGN;
                    continue;
                }
                if (!digit)
                    return false;
                ns = N_EXP;
                continue;
            case N_ESIGN:
                if (!digit)
                    return false;
                ns = N_EXP;
                continue;
            case N_EXP:
                if (digit)
                    continue;
                break;
            }
            /* the number ended: c belongs to what follows */
            st = depth ? AFTER : DONE;
            goto again;
        }
        case LIT:
            if (c != (unsigned char)*lit)
                return false;
            if (*++lit == '\0')
                st = depth ? AFTER : DONE;
            break;
        case DONE:
            if (!ws)
                return false;
            break;
        }
    }
    *complete = st == DONE;
    return true;
}

static void test_json_mode(void **state)
{
    /* the checker itself */
    bool complete;
    assert_true(json_prefix_ok("{\"a\": [1, -2.5e3, true, null, \"x\\u00e9\"], \"b\": {}}", &complete));
    assert_true(complete);
    assert_true(json_prefix_ok("{\"a\": [1, tr", &complete));
    assert_false(complete);
    assert_false(json_prefix_ok("{\"a\" 1", &complete));
    assert_false(json_prefix_ok("[1]", &complete));
    assert_false(json_prefix_ok("{\"a\": 01}", &complete));
    assert_false(json_prefix_ok("{} x", &complete));

    struct worker w;
    start(&w, one_thread);
    /* A random model never learned to close a string, so the output may run
     * to max_tokens; what json_mode guarantees is that every prefix is valid
     * JSON and that a finished output is a whole object. */
    for (int seed = 0; seed < 4; seed++) {
        struct result *r = generate(&w, seed, "Reply in JSON:",
                                    json_pack("{s:b, s:i, s:i, s:f}", "json_mode", 1, "seed", seed, "max_tokens", 120,
                                              "temperature", 1.0));
        assert_true(r->len > 0);
        assert_int_equal(r->text[0], '{');
        if (!json_prefix_ok(r->text, &complete))
            fail_msg("json_mode output is not a JSON prefix: %s", r->text);
        if (strcmp(finish_reason(r), "stop") == 0) {
            assert_true(complete);
            json_t *j = json_loads(r->text, 0, NULL);
            assert_non_null(j);
            json_decref(j);
        } else {
            assert_string_equal(finish_reason(r), "length");
        }
        result_clear(r);
        free(r);
    }
    /* a grammar that must end does end, with a parseable object */
    struct result *r = generate(&w, 10, "x",
                                json_pack("{s:s, s:i}", "grammar", "root ::= \"{\\\"n\\\": \" [1-9] [0-9]? \"}\"",
                                          "max_tokens", 30));
    assert_string_equal(finish_reason(r), "stop");
    json_t *j = json_loads(r->text, 0, NULL);
    assert_non_null(j);
    assert_true(json_is_integer(json_object_get(j, "n")));
    json_decref(j);
    result_clear(r);
    free(r);
    /* json_mode and a grammar together are refused */
    send_generate(&w, 11, "x", json_pack("{s:b, s:s}", "json_mode", 1, "grammar", "root ::= \"a\""));
    json_decref(expect_error(&w, 11, "invalid_request"));
    stop_worker(&w);
}

/* Length of the UTF-8 character ending at s[end-1]. */
static size_t last_char_len(const char *s, size_t end)
{
    size_t k = 1;
    while (k < end && ((unsigned char)s[end - k] & 0xC0) == 0x80)
        k++;
    return k;
}

static size_t first_char_len(const char *s)
{
    unsigned char c = (unsigned char)s[0];
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static void test_stop_strings(void **state)
{
    struct worker w;
    start(&w, one_thread);
    const char *prompt = "Once upon a time";
    struct result *a = generate(&w, 1, prompt,
                                json_pack("{s:i, s:f, s:b}", "max_tokens", 60, "temperature", 0.0, "ignore_eos", 1));
    /* a stop string spanning two frames: the end of one token's text and
     * the start of the next, so it can only match across tokens */
    int k = -1;
    for (int i = a->frames / 2; i + 1 < a->frames && k < 0; i++) {
        size_t start = i ? a->frame_end[i - 1] : 0;
        if (a->frame_end[i] > start && a->frame_end[i + 1] > a->frame_end[i])
            k = i;
    }
    assert_true(k >= 0);
    size_t e = a->frame_end[k];
    size_t l1 = last_char_len(a->text, e), l2 = first_char_len(a->text + e);
    char stop[32];
    snprintf(stop, sizeof stop, "%.*s", (int)(l1 + l2), a->text + e - l1);
    size_t pos = (size_t)(strstr(a->text, stop) - a->text);

    struct result *b = generate(&w, 2, prompt,
                                json_pack("{s:i, s:f, s:b, s:[s,s]}", "max_tokens", 60, "temperature", 0.0,
                                          "ignore_eos", 1, "stop", "\x01never", stop));
    assert_string_equal(finish_reason(b), "stop");
    assert_null(strstr(b->text, stop));
    assert_int_equal(b->len, pos);
    assert_memory_equal(b->text, a->text, pos);
    assert_int_equal(b->n_sum, usage(b, "completion_tokens"));

    /* a stop string that never occurs changes nothing */
    struct result *c = generate(&w, 3, prompt,
                                json_pack("{s:i, s:f, s:b, s:s}", "max_tokens", 60, "temperature", 0.0,
                                          "ignore_eos", 1, "stop", "\x02\x03"));
    assert_string_equal(finish_reason(c), "length");
    assert_string_equal(c->text, a->text);
    struct result *rs[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        result_clear(rs[i]);
        free(rs[i]);
    }
    stop_worker(&w);
}

static void test_chat_template(void **state)
{
    struct worker w;
    start(&w, one_thread);
    json_t *msgs = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "system", "content", "You are terse.", "role",
                             "user", "content", "Hello!");
    const char *chatml = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
                         "<|im_start|>assistant\n";
    int n_chatml = count_tokens(&w, 1, json_pack("{s:s}", "text", chatml));
    int n_raw = count_tokens(&w, 2, json_pack("{s:s}", "text", "You are terse. Hello!"));
    int n_msgs = count_tokens(&w, 3, json_pack("{s:O}", "messages", msgs));
    assert_int_equal(n_msgs, n_chatml);
    assert_true(n_msgs > n_raw + 5);
    struct result *r = new_result(4);
    send_msg(&w, json_pack("{s:s, s:i, s:O, s:{s:i}}", "type", "generate", "id", 4, "messages", msgs, "params",
                           "max_tokens", 4));
    collect(&w, &r, 1, 60000);
    assert_int_equal(int_of(r->started, "prompt_tokens"), n_chatml);
    result_clear(r);
    free(r);
    json_decref(msgs);
    stop_worker(&w);

    /* an override by name applies another template */
    start(&w, (const char *const[]){"--threads", "1", "--chat-template", "llama3", NULL});
    msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", "Hello!");
    int n3 = count_tokens(&w, 5, json_pack("{s:O}", "messages", msgs));
    int n3_text = count_tokens(
        &w, 6,
        json_pack("{s:s}", "text", "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>"
                                   "assistant<|end_header_id|>\n\n"));
    assert_int_equal(n3, n3_text);
    json_decref(msgs);
    stop_worker(&w);
}

/* A worker that cannot load its model says why and exits 1, quickly. */
static void expect_fatal(const char *model, const char *needle)
{
    if (!exists(tiny))
        skip();
    struct worker w;
    int64_t t0 = now_ms();
    spawn(&w, model, one_thread);
    json_t *m = recv_msg(&w, 20000);
    assert_non_null(m);
    assert_string_equal(type_of(m), "fatal");
    const char *msg = json_string_value(json_object_get(m, "message"));
    assert_non_null(msg);
    if (!strstr(msg, model) || !strstr(msg, needle))
        fail_msg("fatal message '%s' lacks '%s' or the path", msg, needle);
    assert_int_equal(wait_exit(w.pid, 10000), 1);
    assert_true(now_ms() - t0 < 10000);
    json_decref(m);
    close(w.fd);
    lyra_frame_reader_free(w.rd);
}

static void test_fatal_missing(void **state)
{
    expect_fatal("/nonexistent/dir/model.gguf", "No such file");
}

/* A usage error reaches the daemon as a "fatal" frame with the reason, not
 * only as exit status 2 (the daemon's supervisor puts the message into the
 * failed request's error). */
static void test_fatal_usage_error(void **state)
{
    static const struct {
        const char *const args[4];
        const char *needle;
    } cases[] = {
        {{"--parallel", "300", NULL}, "--parallel needs an integer between 1 and 256"},
        {{"--bogus", NULL}, "unknown option '--bogus'"},
        {{"--ctx", "x", NULL}, "--ctx needs an integer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct worker w;
        spawn(&w, "/nonexistent.gguf", cases[i].args);
        json_t *m = recv_msg(&w, 10000);
        assert_non_null(m);
        assert_string_equal(type_of(m), "fatal");
        const char *msg = json_string_value(json_object_get(m, "message"));
        if (!msg || !strstr(msg, cases[i].needle))
            fail_msg("fatal message '%s' lacks '%s'", msg ? msg : "(none)", cases[i].needle);
        json_decref(m);
        assert_int_equal(wait_exit(w.pid, 10000), 2);
        close(w.fd);
        lyra_frame_reader_free(w.rd);
    }
}

static void test_fatal_truncated(void **state)
{
    if (!exists(tiny))
        skip();
    size_t len;
    char *data = lyra_read_file(tiny, &len);
    assert_non_null(data);
    char path[] = "/tmp/lyra-test-truncated-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len / 2), (ssize_t)(len / 2));
    close(fd);
    free(data);
    expect_fatal(path, "corrupted or incomplete");
    /* and one cut inside the header */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "GGUF\3\0\0\0", 8), 8);
    close(fd);
    expect_fatal(path, "failed");
    unlink(path);
}

/* LYRA_FAKE_GPU_FAIL_LAYERS=1: more than 1 GPU layer (or -1, all) fails
 * the load before anything is loaded, with an out-of-memory "fatal" that
 * names the bytes and the layers llama.cpp would offload (tiny has 3: two
 * blocks and the output), and exit status 1; 1 or fewer loads (on the CPU
 * here). */
static void test_fake_gpu_failure(void **state)
{
    if (!exists(tiny))
        skip();
    setenv("LYRA_FAKE_GPU_FAIL_LAYERS", "1", 1);
    static const struct {
        const char *layers, *needle;
    } cases[] = {
        {"2", "for 2 layers"},
        {"-1", "for 3 layers"},
        {"5", "for 3 layers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *args[] = {"--threads", "1", "--gpu-layers", cases[i].layers, NULL};
        struct worker w;
        spawn(&w, tiny, args);
        json_t *m = recv_msg(&w, 20000);
        assert_non_null(m);
        assert_string_equal(type_of(m), "fatal");
        const char *msg = json_string_value(json_object_get(m, "message"));
        if (!msg || !strstr(msg, "fake GPU: out of memory allocating ") || !strstr(msg, cases[i].needle))
            fail_msg("fatal message '%s' lacks the fake GPU failure '%s'", msg ? msg : "(none)", cases[i].needle);
        /* the bytes are the estimate's: never 0 for a real model */
        assert_null(strstr(msg, "allocating 0 bytes"));
        json_decref(m);
        assert_int_equal(wait_exit(w.pid, 10000), 1);
        close(w.fd);
        lyra_frame_reader_free(w.rd);
    }
    struct worker w;
    const char *fits[] = {"--threads", "1", "--gpu-layers", "1", NULL};
    start(&w, fits);
    stop_worker(&w);
}

static int unset_fake_gpu(void **state)
{
    unsetenv("LYRA_FAKE_GPU_FAIL_LAYERS");
    return 0;
}

/* `lyra worker --probe-devices` prints exactly one JSON line listing at
 * least the CPU, with memory numbers, and exits 0. */
static void test_probe_devices(void **state)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        if (!getenv("LYRA_TEST_VERBOSE")) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 2);
        }
        execl(lyra_bin, lyra_bin, "worker", "--probe-devices", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char out[65536];
    size_t len = 0;
    ssize_t r;
    while ((r = read(pfd[0], out + len, sizeof out - 1 - len)) > 0)
        len += (size_t)r;
    close(pfd[0]);
    out[len] = '\0';
    assert_int_equal(wait_exit(pid, 30000), 0);
    assert_true(len > 0 && out[len - 1] == '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1); /* one line */
    json_error_t jerr;
    json_t *m = json_loads(out, 0, &jerr);
    if (!m)
        fail_msg("not JSON: %s (%s)", out, jerr.text);
    assert_string_equal(type_of(m), "devices");
    json_t *devs = json_object_get(m, "devices");
    assert_true(json_array_size(devs) >= 1);
    bool cpu = false;
    size_t i;
    json_t *d;
    json_array_foreach(devs, i, d) {
        const char *t = json_string_value(json_object_get(d, "type"));
        assert_non_null(t);
        assert_non_null(json_string_value(json_object_get(d, "name")));
        assert_true(int_of(d, "memory_total") > 0);
        assert_true(int_of(d, "memory_free") <= int_of(d, "memory_total"));
        cpu |= strcmp(t, "cpu") == 0;
    }
    assert_true(cpu);
    json_decref(m);
}

static void test_eof_exit(void **state)
{
    struct worker w;
    start(&w, one_thread);
    int64_t t0 = now_ms();
    stop_worker(&w); /* asserts exit status 0 */
    assert_true(now_ms() - t0 < 5000);

    /* also in the middle of generating */
    start(&w, one_thread);
    send_generate(&w, 1, "Go on and on", json_pack("{s:i, s:b}", "max_tokens", 1900, "ignore_eos", 1));
    json_t *m = recv_msg(&w, 30000);
    assert_non_null(m);
    json_decref(m);
    stop_worker(&w);
}

static void test_sigterm(void **state)
{
    struct worker w;
    start(&w, one_thread);
    send_generate(&w, 1, "Go on and on", json_pack("{s:i, s:b}", "max_tokens", 1900, "ignore_eos", 1));
    json_t *m = recv_msg(&w, 30000);
    assert_non_null(m);
    json_decref(m);
    int64_t t0 = now_ms();
    kill(w.pid, SIGTERM);
    assert_int_equal(wait_exit(w.pid, 5000), 0);
    assert_true(now_ms() - t0 < 5000);
    close(w.fd);
    lyra_frame_reader_free(w.rd);
    json_decref(w.ready);
}

static void test_protocol_violation(void **state)
{
    struct worker w;
    start(&w, one_thread);
    const char bad[] = "\0\0\0\5{bad}";
    assert_int_equal(write(w.fd, bad, sizeof bad - 1), (ssize_t)(sizeof bad - 1));
    assert_int_equal(wait_exit(w.pid, 5000), 2);
    close(w.fd);
    lyra_frame_reader_free(w.rd);
    json_decref(w.ready);

    /* an oversized length prefix too */
    start(&w, one_thread);
    const char huge[] = "\x7f\xff\xff\xff";
    assert_int_equal(write(w.fd, huge, 4), 4);
    assert_int_equal(wait_exit(w.pid, 5000), 2);
    close(w.fd);
    lyra_frame_reader_free(w.rd);
    json_decref(w.ready);
}

static void test_embeddings(void **state)
{
    struct worker w;
    start(&w, one_thread);
    send_msg(&w, json_pack("{s:s, s:i, s:[s]}", "type", "embed", "id", 1, "inputs", "hello"));
    json_decref(expect_error(&w, 1, "embeddings_disabled"));
    stop_worker(&w);

    start(&w, (const char *const[]){"--threads", "1", "--embeddings", NULL});
    assert_true(json_is_true(json_object_get(w.ready, "embeddings")));
    send_msg(&w, json_pack("{s:s, s:i, s:[s,s,s]}", "type", "embed", "id", 2, "inputs", "hello world",
                           "something else entirely", "hello world"));
    json_t *m = recv_msg(&w, 30000);
    assert_non_null(m);
    assert_string_equal(type_of(m), "embedding");
    const json_t *data = json_object_get(m, "data");
    assert_int_equal(json_array_size(data), 3);
    double dot01 = 0, dot02 = 0;
    for (size_t i = 0; i < 3; i++) {
        const json_t *v = json_array_get(data, i);
        assert_int_equal(json_array_size(v), 128);
        double norm = 0;
        for (size_t d = 0; d < 128; d++) {
            double x = json_number_value(json_array_get(v, d));
            norm += x * x;
            if (i == 1)
                dot01 += x * json_number_value(json_array_get(json_array_get(data, 0), d));
            if (i == 2)
                dot02 += x * json_number_value(json_array_get(json_array_get(data, 0), d));
        }
        assert_true(fabs(norm - 1.0) < 1e-3);
    }
    assert_true(dot02 > 0.9999); /* same input, same vector */
    assert_true(dot01 < 0.9999);
    assert_true(int_of(m, "prompt_tokens") > 6);
    json_decref(m);
    /* generation still works beside embeddings */
    struct result *r = generate(&w, 3, "Hello", json_pack("{s:i, s:b}", "max_tokens", 5, "ignore_eos", 1));
    assert_int_equal(usage(r, "completion_tokens"), 5);
    result_clear(r);
    free(r);
    stop_worker(&w);
}

int main(void)
{
    resolve_paths();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready),
        cmocka_unit_test(test_max_tokens_length),
        cmocka_unit_test(test_quiet_request),
        cmocka_unit_test(test_greedy_deterministic),
        cmocka_unit_test(test_concurrent_overlap),
        cmocka_unit_test(test_queueing),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_context_length),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_grammar),
        cmocka_unit_test(test_ambiguous_grammar_is_contained),
        cmocka_unit_test(test_json_mode),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_fatal_missing),
        cmocka_unit_test(test_fatal_usage_error),
        cmocka_unit_test(test_fatal_truncated),
        cmocka_unit_test_teardown(test_fake_gpu_failure, unset_fake_gpu),
        cmocka_unit_test(test_probe_devices),
        cmocka_unit_test(test_eof_exit),
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_protocol_violation),
        cmocka_unit_test(test_embeddings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
