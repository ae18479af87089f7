/* it_jobs.c — background jobs against the real daemon: a warmup of tiny
 * succeeds with a token and its job.* events in order (queued, started,
 * ..., succeeded) and leaves the model loaded; cancel of a finished job is
 * 409, unknown jobs 404, bad submissions 400; a scheduled unload after 1 s
 * unloads the model (not before); and a scheduled unload survives a crash
 * (SIGKILL) of the daemon: the next run resumes it and it still fires, at
 * the time first promised. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64], models[128];

static int setup(void **state)
{
    (void)state;
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    return it_server_start(&srv, home, NULL, NULL);
}

static int teardown(void **state)
{
    (void)state;
    int rc = srv.pid ? it_server_stop(&srv, SIGTERM) : 0;
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* POSTs body to path, expects `want`; returns the JSON answer. */
static json_t *post(const char *path, const char *body, int want)
{
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, path, body ? body : "", &r), 0);
    if (r.status != want)
        fprintf(stderr, "POST %s: %d %s\n", path, r.status, r.body);
    assert_int_equal(r.status, want);
    json_t *j = it_json(&r);
    it_response_free(&r);
    assert_non_null(j);
    return j;
}

static const char *str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Polls GET /jobs/{id} until the job is in `want` (up to timeout_ms);
 * returns it. */
static json_t *wait_job(const char *id, const char *want, int timeout_ms)
{
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s", id);
    json_t *j = NULL;
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        json_decref(j);
        j = it_get_json(srv.port, path, 200);
        assert_non_null(j);
        if (strcmp(str(j, "state"), want) == 0)
            return j;
        sleep_ms(50);
    }
    fprintf(stderr, "job %s: %s, not %s: %s\n", id, str(j, "state"), want, str(j, "error") ?: "");
    fail();
    return NULL;
}

static const char *model_state(void)
{
    static char buf[32];
    json_t *m = it_get_json(srv.port, "/models/tiny", 200);
    assert_non_null(m);
    snprintf(buf, sizeof buf, "%s", str(m, "state"));
    json_decref(m);
    return buf;
}

static void test_warmup(void **state)
{
    (void)state;
    uint64_t since = it_last_seq(srv.port);
    json_t *job = post("/models/tiny/warmup", NULL, 202);
    char id[40];
    snprintf(id, sizeof id, "%s", str(job, "id"));
    assert_string_equal(str(job, "type"), "warmup");
    assert_string_equal(str(json_object_get(job, "params"), "model"), "tiny");
    json_decref(job);
    job = wait_job(id, "succeeded", 30000);
    json_t *res = json_object_get(job, "result");
    assert_non_null(str(res, "token"));
    assert_true(strlen(str(res, "token")) > 0);
    assert_true(json_number_value(json_object_get(res, "load_ms")) > 0); /* it was not loaded before */
    assert_true(json_integer_value(json_object_get(res, "ms")) >= 0);
    json_decref(job);
    assert_string_equal(model_state(), "loaded");

    /* Its events, in order. */
    json_t *done = it_wait_event(srv.port, "job.succeeded", since, 5000);
    assert_non_null(done);
    json_decref(done);
    char path[128];
    snprintf(path, sizeof path, "/events/recent?types=job.*&since=%llu", (unsigned long long)since);
    json_t *ev = it_get_json(srv.port, path, 200);
    assert_non_null(ev);
    char seen[512] = "";
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(ev, "events"), i, e)
    {
        if (strcmp(str(json_object_get(e, "data"), "id"), id) != 0)
            continue;
        const char *t = str(e, "type");
        if (strcmp(t, "job.progress") == 0 && strstr(seen, "job.progress"))
            continue;
        size_t n = strlen(seen);
        snprintf(seen + n, sizeof seen - n, "%s%s", n ? " " : "", t);
        if (strcmp(t, "job.succeeded") == 0)
            assert_non_null(str(json_object_get(json_object_get(e, "data"), "result"), "token"));
    }
    json_decref(ev);
    /* job.progress is rate-limited: it may or may not come between. */
    if (strcmp(seen, "job.queued job.started job.succeeded") != 0)
        assert_string_equal(seen, "job.queued job.started job.progress job.succeeded");

    /* A warmup of a loaded model loads nothing. */
    job = post("/models/tiny/warmup", NULL, 202);
    snprintf(id, sizeof id, "%s", str(job, "id"));
    json_decref(job);
    job = wait_job(id, "succeeded", 30000);
    assert_true(json_number_value(json_object_get(json_object_get(job, "result"), "load_ms")) == 0);
    json_decref(job);

    /* The list shows both, newest first. */
    json_t *list = it_get_json(srv.port, "/jobs?type=warmup", 200);
    assert_int_equal(json_array_size(json_object_get(list, "jobs")), 2);
    assert_string_equal(str(json_array_get(json_object_get(list, "jobs"), 0), "id"), id);
    json_decref(list);
}

static void test_errors(void **state)
{
    (void)state;
    json_t *job = post("/models/tiny/verify", NULL, 202);
    char id[40], path[96];
    snprintf(id, sizeof id, "%s", str(job, "id"));
    json_decref(job);
    json_decref(wait_job(id, "succeeded", 30000));
    snprintf(path, sizeof path, "/jobs/%s/cancel", id);
    json_t *err = post(path, NULL, 409);
    assert_string_equal(it_error_code(err), "job_finished");
    json_decref(err);
    err = post("/jobs/job_0000000000000000/cancel", NULL, 404);
    assert_string_equal(it_error_code(err), "job_not_found");
    json_decref(err);
    json_decref(it_get_json(srv.port, "/jobs/job_0000000000000000", 404));
    json_decref(it_get_json(srv.port, "/jobs?state=done", 400));
    json_decref(it_get_json(srv.port, "/jobs?limit=0", 400));
    json_decref(post("/models/nope/warmup", NULL, 404));
    json_decref(post("/jobs", "{\"type\":\"nope\",\"params\":{}}", 400));
    json_decref(post("/jobs", "{\"type\":\"unload\",\"params\":{\"model\":\"tiny\"}}", 400));
    json_decref(post("/jobs", "{\"type\":\"unload\",\"params\":{\"model\":\"tiny\",\"after_s\":-1}}", 400));
    /* Verify leaves residency as it was: tiny was not loaded. */
    assert_string_equal(model_state(), "available");
}

static void test_scheduled_unload(void **state)
{
    (void)state;
    json_decref(post("/models/tiny/load", NULL, 200));
    assert_string_equal(model_state(), "loaded");
    json_t *job = post("/jobs", "{\"type\":\"unload\",\"params\":{\"model\":\"tiny\",\"after_s\":1}}", 202);
    char id[40];
    snprintf(id, sizeof id, "%s", str(job, "id"));
    json_decref(job);
    sleep_ms(300);
    assert_string_equal(model_state(), "loaded"); /* not yet */
    job = wait_job(id, "succeeded", 10000);
    assert_true(json_integer_value(json_object_get(job, "finished_ms")) -
                    json_integer_value(json_object_get(job, "created_ms")) >=
                1000);
    assert_true(json_is_true(json_object_get(json_object_get(job, "result"), "was_loaded")));
    json_decref(job);
    assert_string_equal(model_state(), "available");

    /* A scheduled unload can be cancelled while it waits. */
    job = post("/jobs", "{\"type\":\"unload\",\"params\":{\"model\":\"tiny\",\"after_s\":60}}", 202);
    snprintf(id, sizeof id, "%s", str(job, "id"));
    json_decref(job);
    json_decref(wait_job(id, "running", 5000));
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s/cancel", id);
    json_decref(post(path, NULL, 200));
    json_decref(wait_job(id, "cancelled", 5000));
}

/* The daemon is killed while an unload waits; the next run resumes it. */
static void test_unload_resumes_after_crash(void **state)
{
    (void)state;
    json_t *job = post("/jobs", "{\"type\":\"unload\",\"params\":{\"model\":\"tiny\",\"after_s\":4}}", 202);
    char id[40];
    snprintf(id, sizeof id, "%s", str(job, "id"));
    int64_t created = json_integer_value(json_object_get(job, "created_ms"));
    json_decref(job);
    json_decref(wait_job(id, "running", 5000));
    sleep_ms(300); /* its due time is saved with the start */
    assert_int_equal(it_server_stop(&srv, SIGKILL), 128 + SIGKILL);
    assert_int_equal(it_server_start(&srv, home, NULL, NULL), 0);
    /* Load tiny in the new run: the resumed job must unload it. */
    json_decref(post("/models/tiny/load", NULL, 200));
    job = wait_job(id, "succeeded", 15000);
    assert_int_equal(json_integer_value(json_object_get(job, "runs")), 2);
    /* At the time first promised, not 4 s after the restart's resume. */
    int64_t due = json_integer_value(json_object_get(json_object_get(job, "result"), "at_ms"));
    assert_true(due >= created + 4000 && due < created + 5000);
    assert_true(json_integer_value(json_object_get(job, "finished_ms")) >= due);
    json_decref(job);
    assert_string_equal(model_state(), "available");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_warmup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scheduled_unload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unload_resumes_after_crash, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
