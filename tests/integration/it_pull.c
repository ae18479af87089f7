/* it_pull.c — model pull end to end: POST /models/pull against a local HTTP
 * server (tests/tools/pull_server.py) that drops the connection halfway,
 * through the job scheduler, into the models dir; the model is then listed
 * and answers.  A non-GGUF file fails the job and leaves nothing behind;
 * `lyra pull` shows progress and exits 0; cancelling a finished job is 409. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64], models[128], serve[128];
static pid_t server_pid;
static int server_port;

/* tests/tools/ next to this file's directory. */
static const char *tools_dir(void)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    strncat(dir, "/../tools", sizeof dir - strlen(dir) - 1);
    return dir;
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(models, sizeof models, "%s/models", home);
    snprintf(serve, sizeof serve, "%s/serve", home);
    if (lyra_mkdirs(models) || lyra_mkdirs(serve) || it_install_model(serve, "tiny.gguf", "tiny.gguf", SIZE_MAX))
        return -1;
    char junk[160];
    snprintf(junk, sizeof junk, "%s/junk.gguf", serve);
    it_write_file(junk, "this is not a GGUF file, only text pretending to be one\n");
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    char script[600];
    snprintf(script, sizeof script, "%s/pull_server.py", tools_dir());
    server_pid = fork();
    if (server_pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execlp("python3", "python3", script, serve, "token", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    int ok = in && fscanf(in, "%d", &server_port) == 1;
    if (in)
        fclose(in);
    if (!ok)
        return -1;
    const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
    }
    it_rmrf(home);
    return 0;
}

/* POSTs a pull; returns the job id (static) or NULL. */
static const char *pull(const char *path, const char *name)
{
    static char id[64];
    char body[512];
    snprintf(body, sizeof body, "{\"source\":\"http://127.0.0.1:%d/%s\",\"name\":\"%s\"}", server_port, path, name);
    struct it_response r;
    assert_int_equal(it_post_json(srv.port, "/models/pull", body, &r), 0);
    if (r.status != 202)
        fail_msg("pull %s: %d %s", path, r.status, r.body ? r.body : "");
    json_t *j = it_json(&r);
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(json_object_get(j, "job"), "id")));
    json_decref(j);
    it_response_free(&r);
    return id[0] ? id : NULL;
}

/* Polls GET /jobs/{id} until it ends; returns the job (new reference). */
static json_t *wait_job(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s", id);
    for (int i = 0; i < 400; i++) {
        json_t *j = it_get_json(srv.port, path, 200);
        const char *st = json_string_value(json_object_get(j, "state"));
        if (st && strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
            return j;
        json_decref(j);
        usleep(50 * 1000);
    }
    fail_msg("job %s did not end", id);
    return NULL;
}

static bool partial_dir_empty(void)
{
    char p[200];
    snprintf(p, sizeof p, "%s/.partial", models);
    DIR *d = opendir(p);
    if (!d)
        return true;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && !strstr(de->d_name, ".lock"))
            n++;
    closedir(d);
    return n == 0;
}

static void test_pull_after_a_dropped_connection_serves_the_model(void **state)
{
    uint64_t since = it_last_seq(srv.port);
    const char *id = pull("drop/tiny.gguf", "pulled");
    assert_non_null(id);
    json_t *job = wait_job(id);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "succeeded");
    json_t *res = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(res, "name")), "pulled");
    assert_true(json_integer_value(json_object_get(res, "bytes")) > 0);
    assert_true(json_is_string(json_object_get(res, "sha256")));
    json_decref(job);
    json_t *ev = it_wait_event(srv.port, "model.added", since, 5000);
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "name")), "pulled");
    json_decref(ev);
    ev = it_wait_event(srv.port, "job.succeeded", since, 5000);
    assert_non_null(ev);
    json_decref(ev);
    json_t *m = it_get_json(srv.port, "/models/pulled", 200);
    assert_true(json_is_true(json_object_get(m, "valid")));
    json_decref(m);
    struct it_response r;
    assert_int_equal(
        it_post_json(srv.port, "/v1/completions", "{\"model\":\"pulled\",\"prompt\":\"hi\",\"max_tokens\":2}", &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    assert_true(partial_dir_empty());
    /* A finished job cannot be cancelled. */
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s/cancel", id);
    assert_int_equal(it_post_json(srv.port, path, "", &r), 0);
    assert_int_equal(r.status, 409);
    it_response_free(&r);
}

static void test_non_gguf_fails_and_leaves_nothing(void **state)
{
    const char *id = pull("normal/junk.gguf", "junk");
    json_t *job = wait_job(id);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "failed");
    const char *e = json_string_value(json_object_get(job, "error"));
    assert_non_null(e);
    assert_non_null(strstr(e, "GGUF"));
    json_decref(job);
    char p[200];
    snprintf(p, sizeof p, "%s/junk.gguf", models);
    struct stat st;
    assert_int_not_equal(stat(p, &st), 0);
    assert_true(partial_dir_empty());
    json_decref(it_get_json(srv.port, "/models/junk", 404));
}

/* A pull interrupted by a crash of the daemon goes on after the restart,
 * from the bytes it had (Range), and completes. */
static void test_pull_resumes_after_a_daemon_crash(void **state)
{
    const char *id0 = pull("slow/tiny.gguf", "survivor");
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s", id);
    /* Wait until some bytes are in, then kill -9. */
    for (int i = 0; i < 200; i++) {
        json_t *j = it_get_json(srv.port, path, 200);
        json_int_t done = json_integer_value(json_object_get(json_object_get(j, "progress"), "done"));
        json_decref(j);
        if (done > 1 << 20)
            break;
        usleep(20 * 1000);
    }
    kill(srv.pid, SIGKILL);
    it_server_stop(&srv, SIGKILL);
    it_server_cleanup(&srv);
    const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    assert_int_equal(it_server_start(&srv, home, NULL, env), 0);
    json_t *job = wait_job(id);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "succeeded");
    json_t *res = json_object_get(job, "result");
    assert_true(json_integer_value(json_object_get(res, "resumed_from")) > 0);
    json_decref(job);
    json_t *m = it_get_json(srv.port, "/models/survivor", 200);
    assert_true(json_is_true(json_object_get(m, "valid")));
    json_decref(m);
}

static void test_cli_pull_shows_progress(void **state)
{
    char url[200], port[16];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/slow/tiny.gguf", server_port);
    snprintf(port, sizeof port, "%d", srv.port);
    const char *const args[] = {"pull", url, "--name", "viacli", "--home", home, NULL};
    char *out = NULL;
    int rc = it_run_lyra(args, NULL, &out);
    if (rc != 0)
        fail_msg("lyra pull: %d %s", rc, out ? out : "");
    assert_non_null(strstr(out, "viacli"));
    assert_non_null(strstr(out, "%")); /* the progress bar */
    free(out);
    json_t *m = it_get_json(srv.port, "/models/viacli", 200);
    json_decref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pull_after_a_dropped_connection_serves_the_model),
        cmocka_unit_test(test_non_gguf_fails_and_leaves_nothing),
        cmocka_unit_test(test_pull_resumes_after_a_daemon_crash),
        cmocka_unit_test(test_cli_pull_shows_progress),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
