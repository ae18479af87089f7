/* it_metrics.c — GET /metrics on the real daemon: after one chat completion
 * on tiny, one 404 and one GET /models/{name}, the exposition passes
 * `promtool check metrics` (Prometheus's own linter; its absence is a
 * failure) and its values match what happened: the chat route counted once
 * with code 200, the 404 as route "unmatched", the parameterised route by
 * its pattern, one request duration and one time to first token for tiny,
 * and token counters equal to the usage the response reported. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64];

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0 || it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

/* The value of the sample whose line starts with `series` followed by a
 * space ("name{labels}"), or -1 when absent. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static char *scrape(void)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char ct[128];
    assert_non_null(it_header(&r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "text/plain; version=0.0.4; charset=utf-8");
    char *body = strdup(r.body);
    it_response_free(&r);
    return body;
}

/* `promtool check metrics` reads the exposition on stdin; exit 0 means no
 * format error and no lint finding.  Returns its exit status, 127 when
 * promtool is not installed. */
static int promtool_check(const char *text, char *out, size_t out_len)
{
    char path[128], cmd[512];
    snprintf(path, sizeof path, "%s/metrics.txt", home);
    it_write_file(path, text);
    snprintf(cmd, sizeof cmd, "command -v promtool >/dev/null || exit 127; promtool check metrics < '%s' 2>&1",
             path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t got = fread(out, 1, out_len - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void test_metrics_after_requests(void **state)
{
    /* before any inference: the families are there, the request ones empty */
    char *before = scrape();
    assert_true(sample(before, "lyra_up") == 1);
    assert_true(sample(before, "lyra_build_info{version=\"" LYRA_VERSION "\"}") == 1);
    assert_true(sample(before, "lyra_cache_evictions_total{reason=\"watchdog\"}") == 0);
    assert_true(sample(before, "lyra_cache_evictions_total{reason=\"admin\"}") == 0);
    assert_true(sample(before, "lyra_process_resident_memory_bytes") > 1e6);
    assert_null(strstr(before, "lyra_request_duration_seconds_count{"));
    free(before);

    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/v1/chat/completions",
                                  "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                                  "\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    json_t *j = it_json(&r);
    assert_non_null(j);
    json_t *usage = json_object_get(j, "usage");
    json_int_t prompt = json_integer_value(json_object_get(usage, "prompt_tokens"));
    json_int_t completion = json_integer_value(json_object_get(usage, "completion_tokens"));
    assert_true(prompt > 0);
    assert_int_equal(completion, 6);
    json_decref(j);
    it_response_free(&r);

    assert_int_equal(it_http(srv.port, "GET", "/no/such/thing", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    assert_int_equal(it_http(srv.port, "GET", "/models/tiny", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);

    char *text = scrape();
    char lint[4096];
    int rc = promtool_check(text, lint, sizeof lint);
    if (rc == 127)
        fail_msg("promtool is not installed (Debian package prometheus, scripts/setup-packages.sh): "
                 "/metrics cannot be checked%s",
                 it_in_ci() ? " in CI" : "");
    if (rc != 0)
        fail_msg("promtool check metrics exited %d:\n%s\n--- exposition:\n%s", rc, lint, text);

    assert_true(sample(text, "lyra_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",code="
                             "\"200\"}") == 1);
    assert_true(sample(text, "lyra_http_requests_total{route=\"unmatched\",method=\"GET\",code=\"404\"}") == 1);
    assert_true(sample(text, "lyra_http_requests_total{route=\"/models/{name}\",method=\"GET\",code=\"200\"}") ==
                1);
    assert_null(strstr(text, "route=\"/no/such/thing\""));
    assert_null(strstr(text, "route=\"/models/tiny\""));
    assert_true(sample(text, "lyra_request_duration_seconds_count{route=\"/v1/chat/completions\",model="
                             "\"tiny\"}") == 1);
    assert_true(sample(text, "lyra_request_duration_seconds_sum{route=\"/v1/chat/completions\",model="
                             "\"tiny\"}") > 0);
    assert_true(sample(text, "lyra_time_to_first_token_seconds_count{model=\"tiny\"}") == 1);
    /* the first token came within the request */
    double ttft = sample(text, "lyra_time_to_first_token_seconds_sum{model=\"tiny\"}");
    assert_true(ttft > 0);
    assert_true(ttft <= sample(text, "lyra_request_duration_seconds_sum{route=\"/v1/chat/completions\",model="
                                     "\"tiny\"}"));
    assert_true(sample(text, "lyra_tokens_per_second_count{model=\"tiny\"}") == 1);
    assert_true(sample(text, "lyra_generated_tokens_total{model=\"tiny\"}") == (double)completion);
    assert_true(sample(text, "lyra_prompt_tokens_total{model=\"tiny\"}") == (double)prompt);
    /* the first scrape is counted too, once its response was queued */
    assert_true(sample(text, "lyra_http_requests_total{route=\"/metrics\",method=\"GET\",code=\"200\"}") == 1);
    free(text);
}

/* A streamed request is counted like any other: its first token frame
 * gives the time to first token. */
static void test_streamed_request_is_counted(void **state)
{
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/v1/completions",
                                  "{\"model\":\"tiny\",\"prompt\":\"Once\",\"max_tokens\":4,\"ignore_eos\":true,"
                                  "\"stream\":true}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "[DONE]"));
    it_response_free(&r);
    char *text = scrape();
    assert_true(sample(text, "lyra_request_duration_seconds_count{route=\"/v1/completions\",model=\"tiny\"}") ==
                1);
    assert_true(sample(text, "lyra_time_to_first_token_seconds_count{model=\"tiny\"}") == 2);
    assert_true(sample(text, "lyra_generated_tokens_total{model=\"tiny\"}") == 6 + 4);
    assert_true(sample(text, "lyra_http_requests_total{route=\"/v1/completions\",method=\"POST\",code=\"200\"}") ==
                1);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_after_requests),
        cmocka_unit_test(test_streamed_request_is_counted),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
