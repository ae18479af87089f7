/* test_jobs.c — the job scheduler against a real store and bus, with test
 * job types whose runners block on a gate: the total and per-type
 * concurrency limits hold (counted at the peak, with jobs of a full type
 * skipped for another type), job.progress is rate-limited (1,000 progress
 * calls give a handful of events) and the final state is always published
 * with its progress, cancel of a queued and of a running job (and 409 /
 * 404), params refused by a type's validate, result and error persisted
 * across a reopen, list filters, a stop that leaves a resumable job to the
 * next start, and a real crash (a child process SIGKILLed mid-job): the
 * resumable job runs again with its saved resume state, the other fails
 * "interrupted by a restart". */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/events.h"
#include "core/store.h"
#include "core/util.h"
#include "jobs/jobs.h"

static char dir[64], path[128];

/* What the test runners share with the test. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool gate_open;        /* blocking runners return once it opens */
    int cur[2], peak[2];   /* running now / at most, per test type (A, B) */
    int cur_all, peak_all; /* all types together */
    int started;
    json_t *events;      /* job.* events seen: [{type, data}] */
    json_t *seen_resume; /* the resume state the last "res" run got */
} T = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

struct fixture {
    struct lyra_store *st;
    struct lyra_bus *bus;
    struct lyra_jobs *jobs;
    int sub;
};

static void on_event(const struct lyra_event *ev, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&T.lock);
    json_array_append_new(T.events, json_pack("{s:s, s:O}", "type", ev->type, "data", ev->data));
    pthread_mutex_unlock(&T.lock);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runner of types "A" (slot 0) and "B" (slot 1): counts itself running,
 * then waits for the gate (or a cancel) and returns {"n": params.n}. */
static int gated_run(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    int k = (int)(intptr_t)ud;
    pthread_mutex_lock(&T.lock);
    T.started++;
    if (++T.cur[k] > T.peak[k])
        T.peak[k] = T.cur[k];
    if (++T.cur_all > T.peak_all)
        T.peak_all = T.cur_all;
    pthread_cond_broadcast(&T.cond);
    int rc = 0;
    while (!T.gate_open) {
        pthread_mutex_unlock(&T.lock); /* T.lock is taken under the bus's: never hold it calling in */
        bool cancelled = c->cancelled(c);
        pthread_mutex_lock(&T.lock);
        if (cancelled) {
            rc = LYRA_EUNAVAILABLE;
            break;
        }
        struct timespec ts;
        lyra_deadline_in(&ts, 10);
        pthread_cond_timedwait(&T.cond, &T.lock, &ts);
    }
    T.cur[k]--;
    T.cur_all--;
    pthread_mutex_unlock(&T.lock);
    const char *fail = json_string_value(json_object_get(c->params, "fail"));
    if (rc == 0 && fail)
        return lyra_err_set(err, LYRA_EIO, "%s", fail);
    if (rc == 0)
        *result = json_pack("{s:O}", "n", json_object_get(c->params, "n") ?: json_null());
    return rc;
}

/* Type "P": 1,000 progress calls as fast as it can, over total 1000. */
static int progress_run(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    (void)err;
    (void)ud;
    int64_t t0 = lyra_now_us();
    for (uint64_t i = 1; i <= 1000; i++)
        c->progress(c, i, 1000);
    *result = json_pack("{s:I}", "elapsed_us", (json_int_t)(lyra_now_us() - t0));
    return 0;
}

/* Type "res" (resumable): records the resume state it got, saves
 * {"offset": 42} and progress 42/100, then blocks like the gated runner. */
static int res_run(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    pthread_mutex_lock(&T.lock);
    json_decref(T.seen_resume);
    T.seen_resume = c->resume ? json_deep_copy(c->resume) : NULL;
    pthread_mutex_unlock(&T.lock);
    json_t *s = json_pack("{s:i}", "offset", 42);
    c->save_resume(c, s);
    json_decref(s);
    c->progress(c, 42, 100);
    return gated_run(c, result, err, ud);
}

static int validate_n(const json_t *params, struct lyra_err *err, void *ud)
{
    (void)ud;
    if (json_object_get(params, "bad"))
        return lyra_err_set(err, LYRA_EINVAL, "params.bad is not allowed");
    return 0;
}

static void reset_counters(void)
{
    pthread_mutex_lock(&T.lock);
    T.gate_open = false;
    memset(T.cur, 0, sizeof T.cur);
    memset(T.peak, 0, sizeof T.peak);
    T.cur_all = T.peak_all = T.started = 0;
    json_decref(T.events);
    T.events = json_array();
    json_decref(T.seen_resume);
    T.seen_resume = NULL;
    pthread_mutex_unlock(&T.lock);
}

static void open_gate(void)
{
    pthread_mutex_lock(&T.lock);
    T.gate_open = true;
    pthread_cond_broadcast(&T.cond);
    pthread_mutex_unlock(&T.lock);
}

/* Opens store, bus and scheduler with types A (max a), B (max b), P, res
 * (resumable) and non (not resumable), total `total`, and starts it. */
static void open_all(struct fixture *f, int total, int a, int b)
{
    struct lyra_err err = {0};
    f->st = lyra_store_open(path, &err);
    assert_non_null(f->st);
    struct lyra_bus_options bo = {.ring_size = 10000};
    f->bus = lyra_bus_new(&bo);
    assert_non_null(f->bus);
    f->sub = lyra_bus_subscribe(f->bus, "job.*", on_event, NULL);
    assert_true(f->sub > 0);
    struct lyra_jobs_options o = {.store = f->st, .bus = f->bus, .max_concurrent = total};
    assert_int_equal(lyra_jobs_new(&o, &f->jobs, &err), 0);
    struct lyra_job_type types[] = {
        {.name = "A", .max_concurrent = a, .run = gated_run, .ud = (void *)0, .validate = validate_n},
        {.name = "B", .max_concurrent = b, .run = gated_run, .ud = (void *)1},
        {.name = "P", .max_concurrent = 1, .run = progress_run},
        {.name = "res", .max_concurrent = 2, .resumable = true, .run = res_run, .ud = (void *)0},
        {.name = "non", .max_concurrent = 2, .run = gated_run, .ud = (void *)1},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        assert_int_equal(lyra_jobs_register(f->jobs, &types[i]), 0);
    assert_int_equal(lyra_jobs_register(f->jobs, &types[0]), LYRA_EEXISTS);
    assert_int_equal(lyra_jobs_start(f->jobs, &err), 0);
}

static void close_all(struct fixture *f)
{
    lyra_jobs_free(f->jobs);
    lyra_bus_unsubscribe(f->bus, f->sub);
    lyra_store_close(f->st);
    lyra_bus_free(f->bus);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/lyra-jobs-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/lyra.db", dir);
    reset_counters();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    open_gate();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static const char *state_of(struct lyra_jobs *j, const char *id)
{
    static char buf[32];
    json_t *o = lyra_jobs_get(j, id);
    snprintf(buf, sizeof buf, "%s", o ? json_string_value(json_object_get(o, "state")) : "(none)");
    json_decref(o);
    return buf;
}

/* Polls the job until it is in `want` (state, not sleeps: up to 10 s). */
static void wait_state(struct lyra_jobs *j, const char *id, const char *want)
{
    for (int i = 0; i < 1000 && strcmp(state_of(j, id), want) != 0; i++)
        sleep_ms(10);
    assert_string_equal(state_of(j, id), want);
}

/* Waits until `n` runners have started (up to 10 s). */
static void wait_started(int n)
{
    pthread_mutex_lock(&T.lock);
    for (int i = 0; i < 1000 && T.started < n; i++) {
        struct timespec ts;
        lyra_deadline_in(&ts, 10);
        pthread_cond_timedwait(&T.cond, &T.lock, &ts);
    }
    int started = T.started;
    pthread_mutex_unlock(&T.lock);
    assert_int_equal(started, n);
}

/* The "offset" of the resume state the last "res" run got (-1: none). */
static int seen_offset(void)
{
    pthread_mutex_lock(&T.lock);
    int v = T.seen_resume ? (int)json_integer_value(json_object_get(T.seen_resume, "offset")) : -1;
    pthread_mutex_unlock(&T.lock);
    return v;
}

static void submit(struct lyra_jobs *j, const char *type, json_t *params, char id[40])
{
    struct lyra_err err = {0};
    assert_int_equal(lyra_jobs_submit(j, type, params, id, &err), 0);
    assert_true(strncmp(id, "job_", 4) == 0);
}

/* Events of job `id` in order, as their type names joined by spaces. */
static void event_names(const char *id, char *out, size_t len)
{
    out[0] = '\0';
    pthread_mutex_lock(&T.lock);
    size_t i;
    json_t *e;
    json_array_foreach(T.events, i, e)
    {
        json_t *d = json_object_get(e, "data");
        if (strcmp(json_string_value(json_object_get(d, "id")), id) != 0)
            continue;
        const char *t = json_string_value(json_object_get(e, "type"));
        if (strcmp(t, "job.progress") == 0 && strstr(out, "job.progress"))
            continue; /* the count is test_progress_rate_limit's */
        size_t n = strlen(out);
        snprintf(out + n, len - n, "%s%s", n ? " " : "", t);
    }
    pthread_mutex_unlock(&T.lock);
}

static void test_concurrency_limits(void **state)
{
    (void)state;
    struct fixture f;
    /* 4 threads; A may run 2 at once, B 10.  4 A then 4 B queued: the
     * pool runs 2 A and, skipping the A that must wait, 2 B. */
    open_all(&f, 4, 2, 10);
    char ids[8][40];
    for (int i = 0; i < 4; i++)
        submit(f.jobs, "A", json_pack("{s:i}", "n", i), ids[i]);
    for (int i = 4; i < 8; i++)
        submit(f.jobs, "B", json_pack("{s:i}", "n", i), ids[i]);
    wait_started(4);
    sleep_ms(200); /* room for a fifth to start if a limit were broken */
    pthread_mutex_lock(&T.lock);
    int peak_a = T.peak[0], peak_b = T.peak[1], peak_all = T.peak_all;
    pthread_mutex_unlock(&T.lock);
    assert_int_equal(peak_a, 2);
    assert_int_equal(peak_b, 2);
    assert_int_equal(peak_all, 4);
    assert_string_equal(state_of(f.jobs, ids[0]), "running");
    assert_string_equal(state_of(f.jobs, ids[2]), "queued");
    json_t *queued = lyra_jobs_list(f.jobs, "queued", NULL, 0);
    assert_int_equal(json_array_size(queued), 4);
    json_decref(queued);
    open_gate();
    for (int i = 0; i < 8; i++)
        wait_state(f.jobs, ids[i], "succeeded");
    pthread_mutex_lock(&T.lock);
    peak_a = T.peak[0];
    peak_all = T.peak_all;
    pthread_mutex_unlock(&T.lock);
    assert_int_equal(peak_a, 2);
    assert_true(peak_all <= 4);
    json_t *o = lyra_jobs_get(f.jobs, ids[5]);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "n")), 5);
    assert_true(json_integer_value(json_object_get(o, "started_ms")) >=
                json_integer_value(json_object_get(o, "created_ms")));
    assert_true(json_integer_value(json_object_get(o, "finished_ms")) >=
                json_integer_value(json_object_get(o, "started_ms")));
    json_decref(o);
    char names[256];
    event_names(ids[0], names, sizeof names);
    assert_string_equal(names, "job.queued job.started job.succeeded");
    close_all(&f);
}

static void test_progress_rate_limit(void **state)
{
    (void)state;
    struct fixture f;
    open_all(&f, 2, 1, 1);
    char id[40];
    submit(f.jobs, "P", NULL, id);
    wait_state(f.jobs, id, "succeeded");
    json_t *o = lyra_jobs_get(f.jobs, id);
    json_int_t elapsed_us = json_integer_value(json_object_get(json_object_get(o, "result"), "elapsed_us"));
    json_t *p = json_object_get(o, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "done")), 1000);
    assert_int_equal(json_integer_value(json_object_get(p, "total")), 1000);
    json_decref(o);
    int n_progress = 0;
    json_t *final = NULL;
    pthread_mutex_lock(&T.lock);
    size_t i;
    json_t *e;
    json_array_foreach(T.events, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "type"));
        if (strcmp(t, "job.progress") == 0)
            n_progress++;
        if (strcmp(t, "job.succeeded") == 0)
            final = json_incref(json_object_get(e, "data"));
    }
    pthread_mutex_unlock(&T.lock);
    /* 1,000 calls: the first is published, then at most one per 250 ms. */
    assert_true(n_progress >= 1);
    assert_true(n_progress <= 1 + (int)(elapsed_us / 250000) + 1);
    assert_non_null(final);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(final, "progress"), "done")), 1000);
    assert_non_null(json_object_get(final, "result"));
    json_decref(final);
    close_all(&f);
}

static void test_cancel(void **state)
{
    (void)state;
    struct fixture f;
    open_all(&f, 1, 1, 1);
    char running[40], queued[40];
    submit(f.jobs, "A", NULL, running);
    wait_started(1);
    submit(f.jobs, "A", NULL, queued);
    assert_string_equal(state_of(f.jobs, queued), "queued");
    struct lyra_err err = {0};
    assert_int_equal(lyra_jobs_cancel(f.jobs, queued, &err), 0);
    assert_string_equal(state_of(f.jobs, queued), "cancelled");
    assert_int_equal(lyra_jobs_cancel(f.jobs, queued, &err), LYRA_EEXISTS);
    assert_non_null(strstr(err.msg, "cancelled"));
    assert_int_equal(lyra_jobs_cancel(f.jobs, "job_nope", &err), LYRA_ENOTFOUND);
    /* The running one sees cancelled() and stops. */
    assert_int_equal(lyra_jobs_cancel(f.jobs, running, &err), 0);
    wait_state(f.jobs, running, "cancelled");
    assert_int_equal(lyra_jobs_cancel(f.jobs, running, &err), LYRA_EEXISTS);
    pthread_mutex_lock(&T.lock);
    int started = T.started;
    pthread_mutex_unlock(&T.lock);
    assert_int_equal(started, 1); /* the cancelled queued job never ran */
    char names[256];
    event_names(queued, names, sizeof names);
    assert_string_equal(names, "job.queued job.cancelled");
    event_names(running, names, sizeof names);
    assert_string_equal(names, "job.queued job.started job.cancelled");
    /* Unknown types and refused params queue nothing. */
    char id[40];
    assert_int_equal(lyra_jobs_submit(f.jobs, "nope", NULL, id, &err), LYRA_ENOTFOUND);
    assert_int_equal(lyra_jobs_submit(f.jobs, "A", json_pack("{s:b}", "bad", 1), id, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "bad"));
    json_t *all = lyra_jobs_list(f.jobs, NULL, NULL, 0);
    assert_int_equal(json_array_size(all), 2);
    json_decref(all);
    close_all(&f);
}

static void test_result_and_error_persist(void **state)
{
    (void)state;
    struct fixture f;
    open_all(&f, 2, 2, 2);
    open_gate();
    char ok[40], bad[40];
    submit(f.jobs, "A", json_pack("{s:i}", "n", 7), ok);
    wait_state(f.jobs, ok, "succeeded");
    submit(f.jobs, "B", json_pack("{s:s}", "fail", "the disk caught fire"), bad);
    wait_state(f.jobs, bad, "failed");
    close_all(&f);

    open_all(&f, 2, 2, 2);
    json_t *o = lyra_jobs_get(f.jobs, ok);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "n")), 7);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "params"), "n")), 7);
    assert_true(json_is_null(json_object_get(o, "error")));
    json_decref(o);
    o = lyra_jobs_get(f.jobs, bad);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(o, "error")), "the disk caught fire");
    json_decref(o);
    assert_null(lyra_jobs_get(f.jobs, "job_nope"));
    /* Newest first; filters. */
    json_t *l = lyra_jobs_list(f.jobs, NULL, NULL, 0);
    assert_int_equal(json_array_size(l), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(l, 0), "id")), bad);
    json_decref(l);
    l = lyra_jobs_list(f.jobs, "failed", NULL, 0);
    assert_int_equal(json_array_size(l), 1);
    json_decref(l);
    l = lyra_jobs_list(f.jobs, NULL, "A", 0);
    assert_int_equal(json_array_size(l), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(l, 0), "id")), ok);
    json_decref(l);
    l = lyra_jobs_list(f.jobs, NULL, NULL, 1);
    assert_int_equal(json_array_size(l), 1);
    json_decref(l);
    close_all(&f);
}

/* A stop (free) while jobs run: the resumable one stays for the next
 * start, which gives it its saved resume state; the other fails now. */
static void test_stop_then_resume(void **state)
{
    (void)state;
    struct fixture f;
    open_all(&f, 4, 2, 2);
    char res[40], non[40];
    submit(f.jobs, "res", NULL, res);
    submit(f.jobs, "non", NULL, non);
    wait_started(2);
    close_all(&f);

    reset_counters();
    open_all(&f, 4, 2, 2);
    wait_started(1); /* res, again */
    assert_int_equal(seen_offset(), 42);
    json_t *o = lyra_jobs_get(f.jobs, non);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(o, "error")), "interrupted: the daemon stopped");
    json_decref(o);
    open_gate();
    wait_state(f.jobs, res, "succeeded");
    o = lyra_jobs_get(f.jobs, res);
    assert_int_equal(json_integer_value(json_object_get(o, "runs")), 2);
    json_decref(o);
    char names[256];
    event_names(res, names, sizeof names);
    assert_string_equal(names, "job.queued job.started job.progress job.succeeded");
    close_all(&f);
}

/* A real crash: a child runs the scheduler and is SIGKILLed with both
 * jobs running; the parent's start resumes one and fails the other. */
static void test_crash_then_resume(void **state)
{
    (void)state;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        struct fixture f;
        open_all(&f, 4, 2, 2);
        char res[40], non[40];
        submit(f.jobs, "res", NULL, res);
        submit(f.jobs, "non", NULL, non);
        wait_started(2);
        sleep_ms(100); /* the queued writes (resume state) reach the database */
        char line[100];
        int n = snprintf(line, sizeof line, "%s %s\n", res, non);
        if (write(pfd[1], line, (size_t)n) != n)
            _exit(2);
        for (;;)
            pause(); /* killed here, mid-job */
    }
    close(pfd[1]);
    char line[100] = {0};
    ssize_t n = read(pfd[0], line, sizeof line - 1);
    close(pfd[0]);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(n > 0);
    char res[40], non[40];
    assert_int_equal(sscanf(line, "%39s %39s", res, non), 2);

    reset_counters();
    struct fixture f;
    open_all(&f, 4, 2, 2);
    wait_started(1);
    assert_int_equal(seen_offset(), 42);
    json_t *o = lyra_jobs_get(f.jobs, non);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(o, "error")), "interrupted by a restart");
    json_decref(o);
    char names[256];
    event_names(non, names, sizeof names);
    assert_string_equal(names, "job.failed");
    o = lyra_jobs_get(f.jobs, res);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "progress"), "done")), 42);
    json_decref(o);
    open_gate();
    wait_state(f.jobs, res, "succeeded");
    close_all(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrency_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_progress_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_and_error_persist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_then_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_then_resume, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
