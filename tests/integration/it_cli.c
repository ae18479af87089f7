/* it_cli.c — the client commands `lyra run`, `ls`, `ps`, `load`, `unload`,
 * `pin` and `unpin`, run as
 * the real binary against a real daemon with the tiny model: the daemon is
 * found by --url, by LYRA_HOME's serve.json and by --home; answers are
 * compared with what the HTTP API gives for the same request (sampling
 * with a fixed seed is repeatable); errors name their cause. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64], models[128], url[64], home_env[128];

/* LYRA_URL from the test's own environment must not pick the daemon. */
#define NO_URL_ENV "LYRA_URL="

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "broken.gguf", 100000), 0); /* truncated in the tensor data */
    /* "small" for a long answer to interrupt (2,000 tokens take tens of s). */
    char yaml[1024], p[160];
    snprintf(yaml, sizeof yaml,
             "schema_version: 2\nmodels:\n  entries:\n    - name: small\n      path: %s\n      ctx_size: 4096\n"
             "      parallel: 1\n",
             it_model_path("small.gguf"));
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    it_write_file(p, yaml);
    if (it_server_start(&srv, home, NULL, NULL) < 0)
        return -1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    snprintf(home_env, sizeof home_env, "LYRA_HOME=%s", home);
    return 0;
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    if (rc != 0) {
        char *log = lyra_read_file(srv.log_path, NULL);
        fprintf(stderr, "lyra serve exited with %d; its log:\n%s\n", rc, log ? log : "");
        free(log);
    }
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

/* `lyra ARGS...` with stdin read from `input` (NULL: /dev/null). */
static int lyra_in(const char *const *args, const char *const *env, const char *input, char **out)
{
    char path[] = "/tmp/lyra-it-stdin-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    if (input)
        assert_int_equal(write(fd, input, strlen(input)), (ssize_t)strlen(input));
    lseek(fd, 0, SEEK_SET);
    int saved = dup(0);
    dup2(fd, 0);
    close(fd);
    int rc = it_run_lyra(args, env, out);
    dup2(saved, 0);
    close(saved);
    return rc;
}

static int lyra(const char *const *args, const char *const *env, char **out)
{
    return lyra_in(args, env, NULL, out);
}

/* The line of `out` that starts with `name` followed by a space. */
static const char *row(const char *out, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return p;
    return NULL;
}

static bool row_has(const char *out, const char *name, const char *text)
{
    const char *r = row(out, name);
    if (!r)
        return false;
    const char *end = strchr(r, '\n');
    const char *hit = strstr(r, text);
    return hit && (!end || hit < end);
}

static void sleep_ms(int ms);

/* Whether `lyra ps` shows `text` on the row of `name` within 5 s.  The
 * daemon measures its workers' memory every second, so MEMORY reads "-"
 * until the first measurement after a load. */
static bool ps_shows(const char *name, const char *text)
{
    for (int waited = 0;; waited += 100) {
        char *out = NULL;
        const char *args[] = {"ps", "--url", url, NULL};
        int rc = it_run_lyra(args, NULL, &out);
        bool shown = rc == 0 && row_has(out, name, text);
        if (shown || waited >= 5000) {
            if (!shown)
                print_message("lyra ps (exit %d) after %d ms:\n%s", rc, waited, out ? out : "");
            free(out);
            return shown;
        }
        free(out);
        sleep_ms(100);
    }
}

/* The content of a non-streamed chat answer from the API (caller frees). */
static char *api_answer(json_t *messages, int max_tokens, double temperature, int seed)
{
    json_t *body = json_pack("{s:s, s:O, s:i, s:f, s:i}", "model", "tiny", "messages", messages, "max_tokens",
                             max_tokens, "temperature", temperature, "seed", seed);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct it_response r;
    assert_int_equal(
        it_http(srv.port, "POST", "/v1/chat/completions", "Content-Type: application/json\r\n", text, &r), 0);
    free(text);
    assert_int_equal(r.status, 200);
    json_t *j = it_json(&r);
    const char *content = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    assert_non_null(content);
    char *copy = strdup(content);
    json_decref(j);
    it_response_free(&r);
    return copy;
}

/* What `lyra run` prints for an answer: the text, then a newline unless
 * it already ends with one. */
static void append_shown(char **acc, const char *answer)
{
    size_t n = strlen(answer);
    char *s = NULL;
    assert_true(asprintf(&s, "%s%s%s", *acc ? *acc : "", answer, n > 0 && answer[n - 1] == '\n' ? "" : "\n") >
                0);
    free(*acc);
    *acc = s;
}

static void test_ls_by_url(void **state)
{
    char *out = NULL;
    int rc = lyra((const char *[]){"ls", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "NAME"));
    assert_non_null(strstr(out, "QUANT"));
    assert_true(row_has(out, "tiny", "available"));
    assert_true(row_has(out, "tiny", "Q8_0"));
    assert_true(row_has(out, "tiny", "4.5M")); /* ~4.5M parameters */
    assert_true(row_has(out, "tiny", "2048"));
    assert_true(row_has(out, "tiny", "MB"));
    assert_true(row_has(out, "broken", "invalid"));
    assert_true(row_has(out, "broken", "truncated"));
    free(out);
}

static void test_ls_json_by_home(void **state)
{
    /* LYRA_HOME: the address comes from $LYRA_HOME/serve.json. */
    char *out = NULL;
    int rc = lyra((const char *[]){"ls", "--json", NULL}, (const char *[]){home_env, NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    json_t *list = json_object_get(j, "models");
    assert_int_equal(json_array_size(list), 3);
    size_t i;
    json_t *m;
    bool tiny = false;
    json_array_foreach(list, i, m) {
        if (strcmp(json_string_value(json_object_get(m, "name")), "tiny") == 0)
            tiny = true;
    }
    assert_true(tiny);
    json_decref(j);
    free(out);

    /* --home: the same, from the flag. */
    rc = lyra((const char *[]){"ls", "--home", home, NULL},
              (const char *[]){"LYRA_HOME=/nonexistent", NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 0);
    assert_true(row_has(out, "tiny", "available"));
    free(out);

    /* LYRA_URL wins over serve.json. */
    char env_url[96];
    snprintf(env_url, sizeof env_url, "LYRA_URL=%s", url);
    rc = lyra((const char *[]){"ls", NULL}, (const char *[]){env_url, "LYRA_HOME=/nonexistent", NULL}, &out);
    assert_int_equal(rc, 0);
    assert_true(row_has(out, "broken", "invalid"));
    free(out);
}

static void test_run_prompt(void **state)
{
    char *out = NULL;
    int rc = lyra((const char *[]){"run", "tiny", "hello", "--max-tokens", "8", "--temperature", "0", "--url",
                                   url, NULL},
                  NULL, &out);
    assert_int_equal(rc, 0);
    size_t n = strlen(out);
    assert_true(n > 0);
    assert_int_equal(out[n - 1], '\n');
    assert_null(strstr(out, "lyra run:"));
    free(out);

    /* With a seed the answer is repeatable: the CLI prints exactly what
     * the API answers (the words of the prompt joined by spaces). */
    json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", "Say something nice");
    char *want = NULL, *answer = api_answer(msgs, 12, 1.0, 42);
    append_shown(&want, answer);
    rc = lyra((const char *[]){"run", "tiny", "Say", "something", "nice", "--max-tokens", "12",
                               "--temperature=1", "--seed", "42", NULL},
              (const char *[]){home_env, NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, want);
    free(out);
    free(want);
    free(answer);
    json_decref(msgs);
}

static void test_run_prompt_from_stdin(void **state)
{
    json_t *msgs = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "system", "content", "Be brief.", "role",
                             "user", "content", "a question\non two lines");
    char *want = NULL, *answer = api_answer(msgs, 10, 1.0, 5);
    append_shown(&want, answer);
    char *out = NULL;
    int rc = lyra_in((const char *[]){"run", "tiny", "-", "--system", "Be brief.", "--max-tokens", "10",
                                      "--temperature", "1", "--seed", "5", "--url", url, NULL},
                     NULL, "a question\non two lines\n", &out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, want);
    free(out);
    free(want);
    free(answer);
    json_decref(msgs);
}

static void test_chat_keeps_the_conversation(void **state)
{
    /* Two turns from a pipe: the second is answered with the first in the
     * context; /bye ends the chat before the last line. */
    json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", "hi");
    char *want = NULL, *a1 = api_answer(msgs, 6, 1.0, 7);
    append_shown(&want, a1);
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content", a1));
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", "how are you"));
    char *a2 = api_answer(msgs, 6, 1.0, 7);
    append_shown(&want, a2);

    char *out = NULL;
    int rc = lyra_in((const char *[]){"run", "tiny", "--max-tokens", "6", "--temperature", "1", "--seed", "7",
                                      "--url", url, NULL},
                     NULL, "hi\n\nhow are you\n/bye\nnever sent\n", &out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, want);
    free(out);
    free(want);
    free(a1);
    free(a2);
    json_decref(msgs);
}

static void test_ps(void **state)
{
    char *out = NULL;
    int rc = lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    /* tiny answered above, so a worker holds it. */
    assert_non_null(strstr(out, "IN FLIGHT"));
    assert_true(row_has(out, "tiny", "loaded"));
    free(out);
    assert_true(ps_shows("tiny", "MB"));

    rc = lyra((const char *[]){"ps", "--json", NULL}, (const char *[]){home_env, NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_true(json_is_array(j));
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "name")), "tiny");
    assert_true(json_integer_value(json_object_get(json_array_get(j, 0), "pid")) > 0);
    json_decref(j);
    free(out);
}

/* The PID column of `lyra ps` for `name`, -1 when it has no row or no pid. */
static long ps_pid(const char *name)
{
    char *out = NULL;
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    const char *r = row(out, name);
    long pid = -1;
    if (!r || sscanf(r + strlen(name), " %ld", &pid) != 1)
        pid = -1;
    free(out);
    return pid;
}

static void test_load_ps_unload(void **state)
{
    /* Nothing else is resident here: tiny served the tests above. */
    char *out = NULL;
    int rc = lyra((const char *[]){"unload", "tiny", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "unloaded tiny"));
    free(out);
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    assert_string_equal(out, "no models loaded\n");
    free(out);

    rc = lyra((const char *[]){"load", "tiny", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    long ms = -1;
    const char *said = strstr(out, "loaded tiny in ");
    assert_non_null(said);
    assert_int_equal(sscanf(said, "loaded tiny in %ld ms", &ms), 1);
    assert_true(ms >= 0);
    free(out);

    /* ps: the worker's pid, a process that exists; the columns asked for. */
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    const char *heads[] = {"NAME", "PID", "STATE", "PINNED", "MEMORY", "IN FLIGHT", "IDLE"};
    for (size_t i = 0; i < sizeof heads / sizeof *heads; i++)
        assert_non_null(strstr(out, heads[i]));
    assert_true(row_has(out, "tiny", "loaded"));
    assert_true(row_has(out, "tiny", " no ")); /* not pinned */
    free(out);
    assert_true(ps_shows("tiny", "MB")); /* measured memory */
    long pid = ps_pid("tiny");
    assert_true(pid > 0);
    assert_int_equal(kill((pid_t)pid, 0), 0);

    /* unload waits until the worker exited: no row, and no process. */
    rc = lyra((const char *[]){"unload", "tiny", NULL}, (const char *[]){home_env, NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "unloaded tiny"));
    free(out);
    assert_int_equal(kill((pid_t)pid, 0), -1);
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    assert_string_equal(out, "no models loaded\n");
    free(out);

    /* Unloading what is not loaded is not an error, and says so. */
    rc = lyra((const char *[]){"unload", "tiny", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "tiny was not loaded"));
    free(out);
}

static void test_pin_unpin(void **state)
{
    char *out = NULL;
    /* pin loads */
    int rc = lyra((const char *[]){"pin", "tiny", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "pinned tiny"));
    free(out);
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    assert_true(row_has(out, "tiny", "loaded"));
    assert_true(row_has(out, "tiny", " yes "));
    free(out);
    assert_true(ps_pid("tiny") > 0);

    rc = lyra((const char *[]){"unpin", "tiny", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "unpinned tiny"));
    free(out);
    assert_int_equal(lyra((const char *[]){"ps", "--json", "--url", url, NULL}, NULL, &out), 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_true(json_is_array(j));
    assert_int_equal(json_array_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "name")), "tiny");
    assert_true(json_is_false(json_object_get(json_array_get(j, 0), "pinned")));
    json_decref(j);
    free(out);

    rc = lyra((const char *[]){"unload", "tiny", "--json", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    j = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "available");
    assert_true(json_is_true(json_object_get(j, "was_loaded")));
    json_decref(j);
    free(out);
}

static void test_control_errors(void **state)
{
    char *out = NULL;
    /* An unknown model: the daemon's message, exit 1. */
    const char *actions[] = {"load", "unload", "pin", "unpin"};
    for (size_t i = 0; i < 4; i++) {
        int rc = lyra((const char *[]){actions[i], "nope", "--url", url, NULL}, NULL, &out);
        assert_int_equal(rc, 1);
        char want[32];
        snprintf(want, sizeof want, "lyra %s: ", actions[i]);
        assert_non_null(strstr(out, want));
        assert_non_null(strstr(out, "nope"));
        assert_non_null(strstr(out, "not found"));
        free(out);
    }
    /* An invalid model file: 422, the reason. */
    int rc = lyra((const char *[]){"load", "broken", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "lyra load: "));
    free(out);
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    assert_null(row(out, "broken"));
    free(out);
    /* Usage: exit 2, before any request. */
    assert_int_equal(lyra((const char *[]){"load", "--url", "http://127.0.0.1:1", NULL}, NULL, &out), 2);
    assert_non_null(strstr(out, "which model?"));
    free(out);
    assert_int_equal(
        lyra((const char *[]){"load", "a", "b", "--url", "http://127.0.0.1:1", NULL}, NULL, &out), 2);
    free(out);
    assert_int_equal(lyra((const char *[]){"pin", "tiny", "--timeout", "0", NULL}, NULL, &out), 2);
    assert_non_null(strstr(out, "--timeout"));
    free(out);
    assert_int_equal(lyra((const char *[]){"pin", "tiny", "--force", NULL}, NULL, &out), 2);
    free(out);
    /* No daemon: exit 3, said so. */
    assert_int_equal(lyra((const char *[]){"load", "tiny", "--url", "http://127.0.0.1:1", NULL}, NULL, &out),
                     3);
    assert_non_null(strstr(out, "connection refused at http://127.0.0.1:1"));
    free(out);
}

static json_int_t in_flight(const char *model)
{
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/status", NULL, NULL, &r), 0);
    json_t *j = it_json(&r);
    json_int_t n = -1;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) {
        if (strcmp(json_string_value(json_object_get(m, "name")), model) == 0)
            n = json_integer_value(json_object_get(m, "in_flight"));
    }
    json_decref(j);
    it_response_free(&r);
    return n;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_ctrl_c_stops_the_answer(void **state)
{
    const char *bin = getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "build/lyra";
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        execl(bin, bin, "run", "small", "tell me a long story", "--max-tokens", "2000", "--temperature", "1",
              "--url", url, (char *)NULL);
        _exit(127);
    }
    int waited = 0;
    while (in_flight("small") < 1 && waited < 10000) {
        sleep_ms(5);
        waited += 5;
    }
    assert_true(in_flight("small") >= 1);
    kill(pid, SIGINT);
    int status = 0;
    for (waited = 0; waitpid(pid, &status, WNOHANG) == 0 && waited < 5000; waited += 10)
        sleep_ms(10);
    if (waited >= 5000) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("lyra run did not stop on SIGINT");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 130);
    /* The daemon saw the client go and freed the slot, long before the
     * 2,000 tokens asked for. */
    for (waited = 0; in_flight("small") != 0 && waited < 5000; waited += 10)
        sleep_ms(10);
    assert_int_equal(in_flight("small"), 0);
    int generated = it_trace_generated(srv.port, NULL);
    print_message("%d of 2000 tokens generated before Ctrl-C\n", generated);
    assert_true(generated >= 0 && generated < 500);
}

static void test_unload_draining_then_force(void **state)
{
    /* A long answer on small: unload without --force leaves it running
     * (draining), --force stops it and the client gets an error. */
    const char *bin = getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "build/lyra";
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(bin, bin, "run", "small", "tell me a long story", "--max-tokens", "2000", "--temperature", "1",
              "--url", url, (char *)NULL);
        _exit(127);
    }
    int waited = 0;
    while (in_flight("small") < 1 && waited < 10000) {
        sleep_ms(5);
        waited += 5;
    }
    assert_true(in_flight("small") >= 1);
    char *out = NULL;
    int rc = lyra((const char *[]){"unload", "small", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "small is draining"));
    free(out);
    assert_int_equal(waitpid(pid, NULL, WNOHANG), 0); /* still answering */

    rc = lyra((const char *[]){"unload", "small", "--force", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "unloaded small"));
    free(out);
    int status = 0;
    for (waited = 0; waitpid(pid, &status, WNOHANG) == 0 && waited < 5000; waited += 10)
        sleep_ms(10);
    if (waited >= 5000) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("lyra run went on after its model was unloaded with --force");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1); /* the daemon's error, printed */
    assert_int_equal(lyra((const char *[]){"ps", "--url", url, NULL}, NULL, &out), 0);
    assert_null(row(out, "small"));
    free(out);
}

static void test_run_unknown_model(void **state)
{
    char *out = NULL;
    int rc = lyra((const char *[]){"run", "nope", "hi", "--url", url, NULL}, NULL, &out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "model 'nope' not found"));
    free(out);
}

static void test_no_daemon(void **state)
{
    char *out = NULL;
    int rc = lyra((const char *[]){"ls", "--url", "http://127.0.0.1:1", NULL}, NULL, &out);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "connection refused at http://127.0.0.1:1 (from --url)"));
    free(out);
    rc = lyra((const char *[]){"run", "tiny", "hi", "--url", "http://127.0.0.1:1", NULL}, NULL, &out);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "connection refused at http://127.0.0.1:1"));
    free(out);

    /* A serve.json left by a daemon that is gone is not believed: the
     * configured address is tried instead. */
    char other[64], path[128], env_port[] = "LYRA_SERVER_PORT=1", env_home[96];
    it_mkdtemp(other, sizeof other);
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0);
    char text[160];
    snprintf(text, sizeof text,
             "{\"pid\":%d,\"host\":\"127.0.0.1\",\"port\":2,\"url\":\"http://127.0.0.1:2\"}", (int)gone);
    snprintf(path, sizeof path, "%s/serve.json", other);
    it_write_file(path, text);
    snprintf(env_home, sizeof env_home, "LYRA_HOME=%s", other);
    rc = lyra((const char *[]){"ps", NULL}, (const char *[]){env_home, env_port, NO_URL_ENV, NULL}, &out);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "no Lyra daemon at http://127.0.0.1:1: start it with `lyra serve`"));
    free(out);
    it_rmrf(other);
}

static void test_help(void **state)
{
    char *out = NULL;
    assert_int_equal(lyra((const char *[]){"help", NULL}, NULL, &out), 0);
    assert_non_null(strstr(out, "  run "));
    assert_non_null(strstr(out, "  ls "));
    assert_non_null(strstr(out, "  ps "));
    assert_non_null(strstr(out, "  load "));
    assert_non_null(strstr(out, "  unload "));
    assert_non_null(strstr(out, "  pin "));
    assert_non_null(strstr(out, "  unpin "));
    free(out);
    const char *cmds[] = {"run", "ls", "ps", "load", "unload", "pin", "unpin"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        assert_int_equal(lyra((const char *[]){cmds[i], "--help", NULL}, NULL, &out), 0);
        char want[32];
        snprintf(want, sizeof want, "usage: lyra %s", cmds[i]);
        assert_non_null(strstr(out, want));
        free(out);
    }
    assert_int_equal(lyra((const char *[]){"run", "tiny", "--max-tokens", "0", "x", NULL}, NULL, &out), 2);
    assert_non_null(strstr(out, "--max-tokens"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ls_by_url),
        cmocka_unit_test(test_ls_json_by_home),
        cmocka_unit_test(test_run_prompt),
        cmocka_unit_test(test_run_prompt_from_stdin),
        cmocka_unit_test(test_chat_keeps_the_conversation),
        cmocka_unit_test(test_ps),
        cmocka_unit_test(test_load_ps_unload),
        cmocka_unit_test(test_pin_unpin),
        cmocka_unit_test(test_control_errors),
        cmocka_unit_test(test_ctrl_c_stops_the_answer),
        cmocka_unit_test(test_unload_draining_then_force),
        cmocka_unit_test(test_run_unknown_model),
        cmocka_unit_test(test_no_daemon),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
