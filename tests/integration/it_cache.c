/* it_cache.c — acceptance tests of the model cache (issue 7) against a real
 * `lyra serve` on copies of the tiny test model: many models resident at
 * once, LRU eviction around a pinned model with exact counters, the memory
 * budget held by the workers' real resident size, keep_alive per model, the
 * admission queue (429 queue_full, 503 queue_timeout), the admin API
 * (load/unload/pin/unpin, draining, force) and fallback chains.  Long
 * generations run on "small" (2,000 tokens take tens of seconds here) and
 * are cancelled by closing their connection.  The memory watchdog's tests
 * are in it_watchdog.c. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cache_common.h"

/* 1. Twelve models resident at once, each with its own worker. */
static void test_twelve_resident(void **state)
{
    const char *names[] = {"m01", "m02", "m03", "m04", "m05", "m06", "m07",
                           "m08", "m09", "m10", "m11", "m12", NULL};
    make_home(names);
    start("models:\n  max_loaded: 12\n  parallel: 1\n  ctx_size: 256\n", NULL);
    for (int i = 0; names[i]; i++)
        complete_ok(names[i]);
    json_t *st = status();
    json_t *res = json_object_get(json_object_get(st, "cache"), "resident");
    assert_int_equal(json_array_size(res), 12);
    int pids[12];
    for (size_t i = 0; i < 12; i++) {
        json_t *e = json_array_get(res, i);
        assert_string_equal(json_string_value(json_object_get(e, "state")), "loaded");
        pids[i] = (int)json_integer_value(json_object_get(e, "pid"));
        assert_true(pids[i] > 0 && proc_exists(pids[i]));
        for (size_t k = 0; k < i; k++)
            assert_int_not_equal(pids[i], pids[k]);
    }
    assert_int_equal(evictions(st, "lru") + evictions(st, "budget"), 0);
    json_decref(st);
    stop();
}

/* Pinned means resident: a pinned model whose worker is killed is loaded
 * again without any request for it. */
static void test_pinned_comes_back_after_a_crash(void **state)
{
    const char *names[] = {"p", NULL};
    make_home(names);
    start("models:\n  parallel: 1\n  ctx_size: 256\n  entries:\n"
          "    - name: p\n      path: p.gguf\n      pinned: true\n",
          NULL);
    assert_true(wait_state("p", "loaded", 10000));
    int pid = pid_of("p");
    assert_true(pid > 0);
    uint64_t since = it_last_seq(srv.port);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_true(wait_events("worker.crashed", since, "p", NULL, 1, 10000));
    /* Back within a few reaper ticks, with no request sent. */
    assert_true(wait_events("model.loaded", since, "p", NULL, 1, 10000));
    assert_true(wait_state("p", "loaded", 5000));
    int again = pid_of("p");
    assert_true(again > 0 && again != pid);
    stop();
}

/* 2. max_loaded 2 with a pinned model: the other two take turns, the
 * pinned one never moves, and the counters say exactly what happened. */
/* The value of the sample line starting with `prefix` in a Prometheus
 * exposition, or -1. */
static long long metric(const char *text, const char *prefix)
{
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, strlen(prefix)) == 0)
            return (long long)strtod(p + strlen(prefix), NULL);
    return -1;
}

static void test_lru_around_pinned(void **state)
{
    const char *names[] = {"p", "a", "b", NULL};
    make_home(names);
    start("models:\n  max_loaded: 2\n  parallel: 1\n  ctx_size: 256\n  entries:\n"
          "    - name: p\n      path: p.gguf\n      pinned: true\n",
          NULL);
    assert_true(wait_state("p", "loaded", 10000)); /* pinned: loaded at start */
    json_t *st0 = status();
    complete_ok("p");
    int pid_p = pid_of("p");
    assert_true(pid_p > 0);
    uint64_t since0 = it_last_seq(srv.port);
    const char *order[] = {"a", "b", "a", "b", "a", "b"};
    for (int i = 0; i < 6; i++) {
        uint64_t since = it_last_seq(srv.port);
        complete_ok(order[i]);
        assert_int_equal(pid_of("p"), pid_p);
        if (i == 0)
            continue; /* p + a fit */
        const char *other = order[i - 1];
        assert_true(wait_events("cache.evicted", since, other, "lru", 1, 10000));
        assert_true(wait_events("model.unloaded", since, other, "evicted", 1, 10000));
        assert_int_equal(count_events("cache.evicted", since, order[i], NULL), 0);
    }
    complete_ok("b"); /* b was the last one: resident, a hit */
    assert_int_equal(pid_of("p"), pid_p);
    assert_int_equal(count_events("cache.evicted", since0, "p", NULL), 0);
    assert_int_equal(count_events("model.unloaded", since0, "p", NULL), 0);
    json_t *st1 = status();
    print_message("cache: hits %lld misses %lld loads %lld lru %lld\n", (long long)cache_num(st1, "hits"),
                  (long long)cache_num(st1, "misses"), (long long)cache_num(st1, "loads"),
                  (long long)evictions(st1, "lru"));
    assert_int_equal(cache_num(st1, "hits") - cache_num(st0, "hits"), 2);     /* p, then b again */
    assert_int_equal(cache_num(st1, "misses") - cache_num(st0, "misses"), 6); /* every a and b */
    assert_int_equal(cache_num(st1, "loads") - cache_num(st0, "loads"), 6);
    assert_int_equal(evictions(st1, "lru") - evictions(st0, "lru"), 5);
    assert_int_equal(evictions(st1, "budget"), 0);
    /* /metrics counts the same, from the same counters. */
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(metric(r.body, "lyra_cache_hits_total "), cache_num(st1, "hits"));
    assert_int_equal(metric(r.body, "lyra_cache_misses_total "), cache_num(st1, "misses"));
    assert_int_equal(metric(r.body, "lyra_cache_evictions_total{reason=\"lru\"} "), evictions(st1, "lru"));
    assert_int_equal(metric(r.body, "lyra_cache_evictions_total{reason=\"budget\"} "), 0);
    assert_int_equal(metric(r.body, "lyra_models_resident "), 2);
    it_response_free(&r);
    json_decref(st0);
    json_decref(st1);
    stop();
}

/* 3. The memory budget, checked against what the workers really hold. */
struct sampler {
    int daemon;
    atomic_bool stop;
    uint64_t max_bytes;
    int samples;
    int max_workers; /* worker processes alive at once */
};

/* Summed VmRSS of the daemon's children (its workers); *count of them. */
static uint64_t children_rss(int daemon, int *count)
{
    *count = 0;
    uint64_t sum = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char p[300], buf[512];
        snprintf(p, sizeof p, "/proc/%s/stat", de->d_name);
        FILE *f = fopen(p, "re");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')'); /* the name may hold spaces */
        int ppid = 0;
        char st;
        if (!rp || sscanf(rp + 1, " %c %d", &st, &ppid) != 2 || ppid != daemon)
            continue;
        ++*count;
        snprintf(p, sizeof p, "/proc/%s/status", de->d_name);
        if (!(f = fopen(p, "re")))
            continue;
        char line[256];
        while (fgets(line, sizeof line, f)) {
            unsigned long long kb;
            if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
                sum += kb * 1024;
        }
        fclose(f);
    }
    closedir(d);
    return sum;
}

static void *sample(void *arg)
{
    struct sampler *s = arg;
    while (!atomic_load(&s->stop)) {
        int n;
        uint64_t b = children_rss(s->daemon, &n);
        if (b > s->max_bytes)
            s->max_bytes = b;
        if (n > s->max_workers)
            s->max_workers = n;
        s->samples++;
        sleep_ms(5);
    }
    return NULL;
}

static void test_memory_budget(void **state)
{
    const char *names[] = {"x", "y", NULL};
    make_home(names);
    const char *base = "models:\n  parallel: 1\n  ctx_size: 256\n";
    start(base, NULL);
    json_t *m = it_get_json(srv.port, "/models/x", 200);
    assert_non_null(m);
    json_int_t est = json_integer_value(json_object_get(m, "estimate_bytes"));
    json_decref(m);
    assert_true(est > 0);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);

    uint64_t budget = (uint64_t)est * 3 / 2;
    char yaml[256];
    snprintf(yaml, sizeof yaml, "%s  max_loaded: 8\n  memory_budget: %llu\n", base,
             (unsigned long long)budget);
    start(yaml, NULL);
    struct sampler s = {.daemon = srv.pid};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sample, &s), 0);
    int answered = 0;
    for (int i = 0; i < 6; i++) {
        struct answer a = complete(i % 2 ? "y" : "x");
        if (a.status == 200)
            answered++;
        else
            print_message("request %d: %d %s\n", i, a.status, a.code);
    }
    atomic_store(&s.stop, true);
    pthread_join(t, NULL);
    json_t *st = status();
    print_message("estimate %lld, budget %llu, max summed worker RSS %llu over %d samples, at most %d "
                  "workers at once, evictions.budget %lld\n",
                  (long long)est, (unsigned long long)budget, (unsigned long long)s.max_bytes, s.samples,
                  s.max_workers, (long long)evictions(st, "budget"));
    assert_int_equal(answered, 6);
    assert_true(evictions(st, "budget") > 0);
    assert_int_equal(evictions(st, "lru"), 0);
    assert_true(s.samples > 10);
    assert_true(s.max_bytes > 0);
    /* The budget holds one model's estimate, not two: the next worker
     * starts only once the previous one has exited.  (The estimate is above
     * what a tiny worker really holds, so the RSS bound alone would also hold
     * with both alive.) */
    assert_int_equal(s.max_workers, 1);
    if (s.max_bytes > budget)
        fail_msg("the workers held %llu bytes, over the %llu-byte budget", (unsigned long long)s.max_bytes,
                 (unsigned long long)budget);
    json_decref(st);
    stop();
}

/* 4. keep_alive per model: 0 unloads after each request, -1 never, and
 * the global value applies to scanned models. */
static void test_keep_alive(void **state)
{
    const char *names[] = {"tiny", NULL};
    make_home(names);
    start("models:\n  keep_alive_s: 1\n  parallel: 1\n  ctx_size: 256\n  entries:\n"
          "    - name: zero\n      path: tiny.gguf\n      keep_alive_s: 0\n"
          "    - name: forever\n      path: tiny.gguf\n      keep_alive_s: -1\n",
          NULL);
    uint64_t since = it_last_seq(srv.port);
    for (int i = 1; i <= 3; i++) {
        complete_ok("zero");
        assert_true(wait_events("model.unloaded", since, "zero", "idle", i, 5000));
        assert_true(wait_events("cache.evicted", since, "zero", "idle", i, 5000));
    }
    json_t *st = status();
    assert_int_equal(evictions(st, "idle"), 3);
    json_decref(st);

    complete_ok("forever");
    int pid = pid_of("forever");
    complete_ok("tiny"); /* requested after forever: its idle time is shorter */
    assert_true(wait_events("model.unloaded", since, "tiny", "idle", 1, 8000));
    assert_int_equal(pid_of("forever"), pid);
    assert_int_equal(count_events("model.unloaded", since, "forever", NULL), 0);
    st = status();
    assert_int_equal(evictions(st, "idle"), 4);
    json_decref(st);
    stop();
}

static const char *long_entry(void)
{
    static char e[512];
    snprintf(e, sizeof e, "    - name: long\n      path: %s\n      ctx_size: 2048\n      parallel: 1\n",
             it_model_path("small.gguf"));
    return e;
}

/* Requests queued for `model` beyond those its slots run. */
static int queued(const char *model)
{
    json_t *st = status();
    json_t *q = json_object_get(json_object_get(st, "queues"), model);
    int waiting = (int)json_integer_value(json_object_get(q, "waiting"));
    int pending = (int)json_integer_value(json_object_get(q, "pending"));
    int over = (int)(json_integer_value(json_object_get(q, "in_flight")) -
                     json_integer_value(json_object_get(q, "slots")));
    json_decref(st);
    return waiting + pending + (over > 0 ? over : 0);
}

/* 7. The admission queue: depth (429) and timeout (503). */
static void test_queue(void **state)
{
    const char *names[] = {"tiny", NULL};
    make_home(names);
    char yaml[1024];
    snprintf(
        yaml, sizeof yaml,
        "models:\n  max_loaded: 1\n  parallel: 1\n  ctx_size: 256\n  queue_depth: 1\n  queue_timeout_s: 1\n"
        "  entries:\n%s",
        long_entry());
    start(yaml, NULL);
    int fd1 = long_generation("long");
    assert_true(wait_in_flight("long", 1, 15000));
    int pid = pid_of("long");
    int fd2 = long_generation("long");
    int q = 0;
    for (double end = now_ms() + 5000; now_ms() < end && (q = queued("long")) < 1;)
        sleep_ms(20);
    assert_int_equal(q, 1);
    assert_true(no_answer_yet(fd2)); /* accepted: it waits */
    struct answer a = complete("long");
    assert_int_equal(a.status, 429);
    assert_string_equal(a.code, "queue_full");
    assert_true(atoi(a.retry) >= 1);
    close(fd2);

    /* tiny needs the only place, which the busy "long" holds. */
    double t0 = now_ms();
    a = complete("tiny");
    double waited = now_ms() - t0;
    print_message("queue_timeout after %.0f ms\n", waited);
    assert_int_equal(a.status, 503);
    assert_string_equal(a.code, "queue_timeout");
    assert_true(atoi(a.retry) >= 1);
    assert_true(waited >= 900 && waited < 10000);
    assert_int_equal(pid_of("long"), pid);
    char st[32];
    state_of("long", st, sizeof st);
    assert_string_equal(st, "loaded");
    assert_true(no_answer_yet(fd1)); /* still generating */
    close(fd1);
    stop();
}

/* One admin POST; returns the status and fills code/state/pid. */
static int admin(const char *path, char *code, char *state_, int *pid)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", path, NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    if (code)
        snprintf(code, 64, "%s", it_error_code(j));
    if (state_)
        snprintf(state_, 32, "%s", json_string_value(json_object_get(j, "state")) ?: "");
    if (pid)
        *pid = (int)json_integer_value(json_object_get(j, "pid"));
    json_decref(j);
    int status_ = r.status;
    it_response_free(&r);
    return status_;
}

static bool listed(const char *query, const char *model)
{
    json_t *j = it_get_json(srv.port, query, 200);
    bool found = false;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) found |=
        strcmp(json_string_value(json_object_get(m, "name")) ?: "", model) == 0;
    json_decref(j);
    return found;
}

/* 8. The admin API: load, unload, pin, unpin, draining and force. */
static void test_admin(void **state)
{
    const char *names[] = {"tiny", NULL};
    make_home(names);
    char yaml[1024], code[64], st[32];
    snprintf(yaml, sizeof yaml, "models:\n  parallel: 1\n  ctx_size: 256\n  entries:\n%s", long_entry());
    start(yaml, NULL);
    int pid = 0;
    assert_int_equal(admin("/models/tiny/load", NULL, st, &pid), 200);
    assert_string_equal(st, "loaded");
    assert_true(pid > 0 && proc_exists(pid));
    assert_true(listed("/models?state=loaded", "tiny"));
    assert_false(listed("/models?state=loaded", "long"));
    assert_int_equal(admin("/models/tiny/unload", NULL, st, NULL), 200);
    assert_string_equal(st, "available");
    assert_false(proc_exists(pid));
    assert_true(listed("/models?state=available", "tiny"));

    assert_int_equal(admin("/models/nope/unload", code, NULL, NULL), 404);
    assert_string_equal(code, "model_not_found");
    assert_int_equal(admin("/models/nope/load", code, NULL, NULL), 404);
    assert_string_equal(code, "model_not_found");

    assert_int_equal(admin("/models/tiny/pin", NULL, st, &pid), 200);
    assert_string_equal(st, "loaded");
    assert_true(pid > 0 && proc_exists(pid));
    assert_int_equal(admin("/models/tiny/unload", code, NULL, NULL), 409);
    assert_string_equal(code, "model_pinned");
    assert_int_equal(pid_of("tiny"), pid);
    assert_int_equal(admin("/models/tiny/unpin", NULL, NULL, NULL), 200);
    assert_int_equal(admin("/models/tiny/unload", NULL, st, NULL), 200);
    assert_string_equal(st, "available");
    assert_false(proc_exists(pid));

    /* Busy: 202 draining, it goes once the generation ends. */
    int fd = long_generation("long");
    assert_true(wait_in_flight("long", 1, 15000));
    pid = pid_of("long");
    uint64_t since = it_last_seq(srv.port);
    assert_int_equal(admin("/models/long/unload", NULL, st, NULL), 202);
    assert_string_equal(st, "draining");
    assert_int_equal(pid_of("long"), pid);
    assert_true(no_answer_yet(fd));
    close(fd); /* cancels the generation */
    assert_true(wait_events("model.unloaded", since, "long", NULL, 1, 10000));
    assert_false(proc_exists(pid));
    assert_true(listed("/models?state=available", "long"));

    /* Force: at once, the running request ends with 503. */
    fd = long_generation("long");
    assert_true(wait_in_flight("long", 1, 15000));
    pid = pid_of("long");
    double t0 = now_ms();
    assert_int_equal(admin("/models/long/unload?force=true", NULL, st, NULL), 200);
    assert_string_equal(st, "available");
    assert_false(proc_exists(pid));
    struct it_response r;
    assert_int_equal(it_read_response(fd, &r), 0);
    close(fd);
    json_t *j = it_json(&r);
    print_message("forced unload: the request ended %.0f ms later with %d %s\n", now_ms() - t0, r.status,
                  it_error_code(j));
    assert_int_equal(r.status, 503);
    assert_string_equal(it_error_code(j), "model_unloaded");
    json_decref(j);
    it_response_free(&r);
    stop();
}

/* 9. A model that cannot be loaded goes to its fallback. */
static void test_fallback(void **state)
{
    const char *names[] = {"tiny", NULL};
    make_home(names);
    assert_int_equal(it_install_model(models, "tiny.gguf", "broken.gguf", 100000), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "lonely.gguf", 100000), 0);
    start("models:\n  parallel: 1\n  ctx_size: 256\n  entries:\n"
          "    - name: broken\n      path: broken.gguf\n      fallback: [tiny]\n"
          "    - name: lonely\n      path: lonely.gguf\n",
          NULL);
    /* Without a fallback: today's answer for a truncated file. */
    struct answer a = complete("lonely");
    print_message("lonely (no fallback): %d %s\n", a.status, a.code);
    assert_int_equal(a.status, 422);
    assert_string_equal(a.code, "model_invalid");

    uint64_t since = it_last_seq(srv.port);
    a = complete("broken");
    print_message("broken (fallback tiny): %d %s X-Lyra-Model '%s'\n", a.status, a.code, a.model);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.model, "tiny");
    assert_true(wait_events("model.fallback", since, "broken", NULL, 1, 5000));
    json_t *st = status();
    json_t *fb = json_object_get(st, "fallbacks");
    assert_int_equal(json_integer_value(json_object_get(fb, "count")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(fb, "last"), "to")) ?: "", "tiny");
    json_decref(st);
    stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twelve_resident),
        cmocka_unit_test(test_pinned_comes_back_after_a_crash),
        cmocka_unit_test(test_lru_around_pinned),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_queue),
        cmocka_unit_test(test_admin),
        cmocka_unit_test(test_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
