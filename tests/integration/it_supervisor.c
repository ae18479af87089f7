/* it_supervisor.c — the daemon against workers that misbehave: a fake
 * worker (tests/fake/fake_worker.c, run through LYRA_WORKER_EXE) that sends
 * garbage, oversize or mislabelled frames, never gets ready, hangs, goes
 * silent, crashes on a request or ignores the stop; each must end its
 * requests with a clear error, publish the right event, and leave the
 * daemon serving.  Deadlines are set to 1 s so that the test is quick; the
 * checks synchronise on events and state. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64];
static char count_path[128];

static const char *const modes[] = {"ok",       "never-ready", "slow-ready", "second-ready", "garbage",
                                    "oversize", "mislabelled", "bad-field",  "hang",         "silent",
                                    "crash",    "stubborn",    "flaky",      "chatty"};

static int setup(void **state)
{
    const char *fake = getenv("LYRA_FAKE_WORKER");
    if (!fake || !*fake) {
        fprintf(stderr, "LYRA_FAKE_WORKER is not set (run through ctest)\n");
        return -1;
    }
    it_mkdtemp(home, sizeof home);
    char models[128], p[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    char yaml[4096];
    int n = snprintf(yaml, sizeof yaml,
                     "schema_version: 2\nserver:\n  drain_timeout_s: 0\nmodels:\n  load_timeout_s: 1\n"
                     "  heartbeat_timeout_s: 1\n  progress_timeout_s: 1\n  stop_timeout_s: 1\n  circuit_backoff_s: 1\n"
                     "  max_loaded: 20\n  entries:\n");
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        n += snprintf(yaml + n, sizeof yaml - (size_t)n, "    - name: fake-%s\n      path: tiny.gguf\n", modes[i]);
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    it_write_file(p, yaml);
    snprintf(count_path, sizeof count_path, "%s/starts", home);
    static char exe_env[512], count_env[256];
    snprintf(exe_env, sizeof exe_env, "LYRA_WORKER_EXE=%s", fake);
    snprintf(count_env, sizeof count_env, "LYRA_WORKER_FAKE_COUNT=%s", count_path);
    const char *const env[] = {exe_env, count_env, "HF_TOKEN=hf_secret_value", "LYRA_LOG_LEVEL=info", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    it_server_stop(&srv, SIGKILL);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return 0;
}

/* POSTs a short completion for `model`; returns the status and, when not
 * NULL, the error code into code[0..64). */
static int complete(const char *model, char *code)
{
    char body[256];
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"hi\",\"max_tokens\":4}", model);
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/v1/completions", body, &r), 0);
    int status = r.status;
    if (code) {
        json_t *j = it_json(&r);
        snprintf(code, 64, "%s", it_error_code(j));
        json_decref(j);
    }
    it_response_free(&r);
    return status;
}

/* How many times the daemon started the worker of `model`. */
static int starts(const char *model)
{
    char *text = lyra_read_file(count_path, NULL);
    int n = 0;
    char want[64];
    snprintf(want, sizeof want, "fake-%s ", model);
    for (char *p = text; p && (p = strstr(p, want)); p += strlen(want))
        n++;
    free(text);
    return n;
}

static bool log_has(const char *needle)
{
    char *text = lyra_read_file(srv.log_path, NULL);
    bool found = text && strstr(text, needle);
    free(text);
    return found;
}

static void test_protocol_errors_kill_the_worker(void **state)
{
    static const char *const bad[] = {"garbage", "oversize", "mislabelled", "bad-field", "second-ready"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t seq = it_last_seq(srv.port);
        char model[64], code[64];
        snprintf(model, sizeof model, "fake-%s", bad[i]);
        int status = complete(model, code);
        if (status != 502 || strcmp(code, "worker_protocol_error") != 0)
            fail_msg("%s: got %d %s, want 502 worker_protocol_error", model, status, code);
        json_t *ev = it_wait_event(srv.port, "worker.crashed", seq, 5000);
        assert_non_null(ev);
        const char *reason = json_string_value(json_object_get(json_object_get(ev, "data"), "reason"));
        if (!reason || !strstr(reason, "protocol error"))
            fail_msg("%s: reason '%s'", model, reason ? reason : "(none)");
        json_decref(ev);
        assert_int_equal(starts(bad[i]), 1); /* it had the request: never retried */
    }
    assert_true(log_has("protocol error: frame is not valid JSON"));
    assert_true(log_has("exceeds the"));
    assert_true(log_has("which is not in flight"));
    assert_true(log_has("field 'text' must be a string"));
    assert_true(log_has("a second \\\"ready\\\""));
    /* The daemon serves on. */
    assert_int_equal(complete("fake-ok", NULL), 200);
}

static void test_never_ready_times_out(void **state)
{
    uint64_t seq = it_last_seq(srv.port);
    char code[64];
    assert_int_equal(complete("fake-never-ready", code), 503);
    assert_string_equal(code, "model_load_timeout");
    json_t *ev = it_wait_event(srv.port, "model.failed", seq, 5000);
    assert_non_null(ev);
    json_decref(ev);
}

static void test_hung_worker_is_killed(void **state)
{
    /* "started", then nothing: its heartbeats go on but no step is made. */
    uint64_t seq = it_last_seq(srv.port);
    char code[64];
    assert_int_equal(complete("fake-hang", code), 502);
    assert_string_equal(code, "worker_hung");
    json_t *ev = it_wait_event(srv.port, "worker.hung", seq, 5000);
    assert_non_null(ev);
    const char *reason = json_string_value(json_object_get(json_object_get(ev, "data"), "reason"));
    assert_non_null(strstr(reason, "no decode step"));
    json_decref(ev);

    /* Heartbeats stop on an idle worker: killed too. */
    seq = it_last_seq(srv.port);
    assert_int_equal(complete("fake-silent", NULL), 200);
    ev = it_wait_event(srv.port, "worker.hung", seq, 5000);
    assert_non_null(ev);
    reason = json_string_value(json_object_get(json_object_get(ev, "data"), "reason"));
    assert_non_null(strstr(reason, "no heartbeat"));
    json_decref(ev);
    /* The next request gets a fresh worker. */
    assert_int_equal(complete("fake-silent", NULL), 200);
    assert_int_equal(starts("silent"), 2);
}

static void test_crash_on_a_request_is_not_retried(void **state)
{
    char code[64];
    assert_int_equal(complete("fake-crash", code), 502);
    assert_string_equal(code, "worker_crashed");
    assert_int_equal(starts("crash"), 1);
    json_t *m = it_status_model(srv.port, "fake-crash");
    assert_non_null(m);
    assert_int_equal(json_integer_value(json_object_get(m, "crashes")), 1); /* counted once */
    json_decref(m);
}

/* Three failures within 60 s open the circuit: 503 with Retry-After, no
 * worker started; after the back-off the next request starts a fresh worker
 * and, when it works, the model serves again. */
static void test_circuit_opens_and_closes_again(void **state)
{
    char code[64];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(complete("fake-flaky", code), 502);
        assert_string_equal(code, "worker_crashed");
    }
    assert_int_equal(starts("flaky"), 3);
    char body[128];
    snprintf(body, sizeof body, "{\"model\":\"fake-flaky\",\"prompt\":\"hi\",\"max_tokens\":4}");
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/v1/completions", body, &r), 0);
    assert_int_equal(r.status, 503);
    char ra[16];
    assert_non_null(it_header(&r, "Retry-After", ra, sizeof ra));
    assert_true(atoi(ra) >= 1);
    json_t *j = it_json(&r);
    assert_string_equal(it_error_code(j), "model_unavailable");
    json_decref(j);
    it_response_free(&r);
    assert_int_equal(starts("flaky"), 3); /* refused without a worker */
    /* Synchronise on the circuit's state, not on a sleep of its length. */
    json_int_t open_s = 1;
    for (int i = 0; i < 300 && open_s > 0; i++) {
        json_t *m = it_status_model(srv.port, "fake-flaky");
        open_s = m ? json_integer_value(json_object_get(m, "circuit_open_s")) : 0;
        json_decref(m);
        if (open_s > 0)
            usleep(20000);
    }
    assert_int_equal(open_s, 0);
    assert_int_equal(complete("fake-flaky", NULL), 200);
    assert_int_equal(starts("flaky"), 4);
}

/* A worker that floods its stderr takes no more than its share of the
 * supervisor loop: another model's requests stay quick, and what was not
 * logged is counted. */
static void test_stderr_flood_does_not_stall_the_others(void **state)
{
    assert_int_equal(complete("fake-chatty", NULL), 200);
    for (int i = 0; i < 20; i++) { /* while it floods */
        int64_t t0 = lyra_now_ms();
        assert_int_equal(complete("fake-ok", NULL), 200);
        assert_true(lyra_now_ms() - t0 < 2000); /* a sanity bound, not a benchmark: unbounded it took seconds */
    }
    for (int i = 0; i < 300 && !log_has("stderr dropped"); i++)
        usleep(10000);
    assert_true(log_has("stderr dropped"));
}

/* The worker's environment holds no secret, stdin is /dev/null, and its
 * stderr reaches the daemon's log with the model and pid. */
static void test_worker_process_hygiene(void **state)
{
    assert_int_equal(complete("fake-ok", NULL), 200);
    json_t *m = it_status_model(srv.port, "fake-ok");
    assert_non_null(m);
    int pid = (int)json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    size_t len = 0;
    char *env = lyra_read_file(path, &len);
    assert_non_null(env);
    bool has_path = false, has_token = false;
    for (size_t off = 0; off < len; off += strlen(env + off) + 1) {
        has_path |= strncmp(env + off, "PATH=", 5) == 0;
        has_token |= strncmp(env + off, "HF_TOKEN=", 9) == 0;
    }
    free(env);
    assert_true(has_path);
    assert_false(has_token);
    char fd0[64], target[64] = {0};
    snprintf(fd0, sizeof fd0, "/proc/%d/fd/0", pid);
    assert_true(readlink(fd0, target, sizeof target - 1) > 0);
    assert_string_equal(target, "/dev/null");
    assert_true(log_has("fake worker ok starting"));
    char pid_field[32];
    snprintf(pid_field, sizeof pid_field, "\"pid\":%d", pid);
    assert_true(log_has(pid_field));
}

/* SIGTERM (no drain time) with a request waiting for a load, and a
 * worker that ignores EOF and SIGTERM: the request gets 503, the worker is
 * killed on the daemon's clock, and the daemon exits 0. */
static void test_shutdown_with_a_load_in_flight_and_a_stubborn_worker(void **state)
{
    assert_int_equal(complete("fake-stubborn", NULL), 200);
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    const char *body = "{\"model\":\"fake-slow-ready\",\"prompt\":\"hi\",\"max_tokens\":4}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    assert_int_equal(write(fd, req, (size_t)n), n);
    /* Wait until its load has begun. */
    for (int i = 0; i < 200 && starts("slow-ready") == 0; i++)
        usleep(10000);
    assert_int_equal(starts("slow-ready"), 1);
    kill(srv.pid, SIGTERM);
    struct it_response r;
    assert_int_equal(it_read_response(fd, &r), 0);
    assert_int_equal(r.status, 503);
    json_t *j = it_json(&r);
    assert_string_equal(it_error_code(j), "shutting_down");
    json_decref(j);
    it_response_free(&r);
    close(fd);
    assert_int_equal(it_server_stop(&srv, 0), 0);
    assert_true(log_has("did not exit after SIGTERM: SIGKILL"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_errors_kill_the_worker),
        cmocka_unit_test(test_never_ready_times_out),
        cmocka_unit_test(test_hung_worker_is_killed),
        cmocka_unit_test(test_crash_on_a_request_is_not_retried),
        cmocka_unit_test(test_circuit_opens_and_closes_again),
        cmocka_unit_test(test_stderr_flood_does_not_stall_the_others),
        cmocka_unit_test(test_worker_process_hygiene),
        cmocka_unit_test(test_shutdown_with_a_load_in_flight_and_a_stubborn_worker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
