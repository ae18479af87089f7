/* it_lifecycle.c — start-up, shutdown and recovery of the real daemon:
 * SIGTERM drains in-flight requests and exits 0; kill -9 is detected at the
 * next start (system.recovered) with the database intact and event seqs
 * still increasing; bad configuration, a port in use, an unusable LYRA_HOME
 * and a second daemon on the same home each fail with a clear message. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static json_t *get_json(int port, const char *path, int want_status)
{
    json_t *j = it_get_json(port, path, want_status);
    assert_non_null(j);
    return j;
}

static bool output_has(const char *out, const char *needle)
{
    if (strstr(out, needle))
        return true;
    print_error("output lacks '%s':\n%s\n", needle, out);
    return false;
}

static void test_sigterm_drains_in_flight(void **state)
{
    struct it_server s;
    assert_int_equal(it_server_start(&s, NULL, NULL, NULL), 0);
    /* A request whose body is still arriving is in flight. */
    int fd = it_connect(s.port);
    const char head[] = "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                        "Content-Length: 19\r\n\r\n{\"type\":\"cu";
    assert_int_equal(send(fd, head, sizeof head - 1, MSG_NOSIGNAL), (ssize_t)(sizeof head - 1));
    sleep_ms(200);
    kill(s.pid, SIGTERM);
    sleep_ms(300);
    /* Draining: no new connections, but the in-flight request completes. */
    assert_true(it_connect(s.port) < 0);
    const char rest[] = "stom.a\"}";
    assert_int_equal(send(fd, rest, sizeof rest - 1, MSG_NOSIGNAL), (ssize_t)(sizeof rest - 1));
    struct it_response r;
    assert_int_equal(it_read_response(fd, &r), 0);
    assert_int_equal(r.status, 201);
    it_response_free(&r);
    close(fd);
    assert_int_equal(it_server_stop(&s, 0), 0); /* exits 0 by itself */
    char state_file[400];
    snprintf(state_file, sizeof state_file, "%s/serve.json", s.home);
    assert_int_not_equal(access(state_file, F_OK), 0);
    it_server_cleanup(&s);
}

/* Sends a POST on a fresh connection and returns the socket without
 * reading the answer. */
static int send_post(int port, const char *path, const char *body)
{
    int fd = it_connect(port);
    assert_true(fd >= 0);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    return fd;
}

/* Makes a fresh home whose lyra.yaml has the `settings` lines of the models
 * section (each "  key: value\n") and the model "small" (the generated
 * SmolLM-shaped file) with `parallel` slots, and starts a daemon on it. */
static void start_with_small(struct it_server *s, char *home, size_t home_len, const char *server,
                             const char *settings, int parallel, const char *extra_entries)
{
    char p[128], yaml[2048];
    it_mkdtemp(home, home_len);
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    snprintf(yaml, sizeof yaml,
             "schema_version: 2\n%smodels:\n%s  entries:\n"
             "    - name: small\n      path: %s\n      ctx_size: 4096\n      parallel: %d\n%s",
             server, settings, it_model_path("small.gguf"), parallel, extra_entries);
    it_write_file(p, yaml);
    assert_int_equal(it_server_start(s, home, NULL, NULL), 0);
}

static int small_in_flight(int port, const char *model)
{
    json_t *m = it_status_model(port, model);
    int n = m ? (int)json_integer_value(json_object_get(m, "in_flight")) : 0;
    json_decref(m);
    return n;
}

/* SIGTERM with a 2,000-token stream, a 2,000-token generation that is not
 * streamed and a request waiting for its model to load, all in flight, and
 * a drain of 1 s they cannot finish in: the stream ends with an error chunk
 * and [DONE], the others get 503, the daemon exits 0, and the next start
 * finds a clean shutdown (no system.recovered). */
static void test_sigterm_with_generations_in_flight(void **state)
{
    char home[64], later[512];
    snprintf(later, sizeof later, "    - name: later\n      path: %s\n      ctx_size: 4096\n      parallel: 1\n",
             it_model_path("small.gguf"));
    struct it_server s;
    start_with_small(&s, home, sizeof home, "server:\n  drain_timeout_s: 1\n", "", 2, later);
    struct it_response r;
    assert_int_equal(it_post_json(s.port, "/v1/completions", "{\"model\":\"small\",\"prompt\":\"a\",\"max_tokens\":1}",
                                  &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);

    int stream = send_post(s.port, "/v1/completions",
                           "{\"model\":\"small\",\"prompt\":\"Once\",\"max_tokens\":2000,\"ignore_eos\":true,"
                           "\"stream\":true}");
    char first[256];
    assert_true(recv(stream, first, sizeof first, MSG_PEEK) > 0); /* under way */
    int plain = send_post(s.port, "/v1/completions",
                          "{\"model\":\"small\",\"prompt\":\"Twice\",\"max_tokens\":2000,\"ignore_eos\":true}");
    for (int i = 0; i < 500 && small_in_flight(s.port, "small") < 2; i++)
        sleep_ms(10);
    assert_int_equal(small_in_flight(s.port, "small"), 2);
    int loading = send_post(s.port, "/v1/completions",
                            "{\"model\":\"later\",\"prompt\":\"a\",\"max_tokens\":2000,\"ignore_eos\":true}");
    sleep_ms(50); /* let the daemon read it (it is then waiting for "later" to load) */
    kill(s.pid, SIGTERM);

    assert_int_equal(it_read_response(stream, &r), 0);
    assert_int_equal(r.status, 200);
    const char *err = strstr(r.body, "\"error\"");
    const char *done = strstr(r.body, "data: [DONE]");
    if (!err || !done || done < err)
        fail_msg("the stream did not end with an error chunk and [DONE]:\n%s", r.body + (r.body_len > 600 ? r.body_len - 600 : 0));
    assert_non_null(strstr(err, "shutting_down"));
    it_response_free(&r);
    int sockets[2] = {plain, loading};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(it_read_response(sockets[i], &r), 0);
        assert_int_equal(r.status, 503);
        json_t *j = it_json(&r);
        assert_string_equal(it_error_code(j), "shutting_down");
        json_decref(j);
        char conn[32];
        assert_non_null(it_header(&r, "Connection", conn, sizeof conn));
        assert_string_equal(conn, "close");
        it_response_free(&r);
        close(sockets[i]);
    }
    close(stream);
    assert_int_equal(it_server_stop(&s, 0), 0); /* exits 0 by itself */

    /* The session was closed clean: no false crash at the next start. */
    assert_int_equal(it_server_start(&s, home, NULL, NULL), 0);
    json_t *j = get_json(s.port, "/events/recent?types=system.recovered", 200);
    assert_int_equal(json_array_size(json_object_get(j, "events")), 0);
    json_decref(j);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
    it_rmrf(home);
}

/* A worker stopped with SIGSTOP (as a stuck process would be) is noticed by
 * its missing heartbeat within seconds: killed, the request in flight ends
 * with worker_hung, worker.hung is published, and the next request gets a
 * fresh worker.  Then SIGTERM with a stopped worker still exits 0 in time. */
static void test_stopped_worker_is_replaced(void **state)
{
    char home[64];
    struct it_server s;
    start_with_small(&s, home, sizeof home, "", "  heartbeat_timeout_s: 1\n  stop_timeout_s: 1\n", 1, "");
    struct it_response r;
    assert_int_equal(it_post_json(s.port, "/v1/completions", "{\"model\":\"small\",\"prompt\":\"a\",\"max_tokens\":1}",
                                  &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    json_t *m = it_status_model(s.port, "small");
    int pid = (int)json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    uint64_t seq = it_last_seq(s.port);
    int fd = send_post(s.port, "/v1/completions",
                       "{\"model\":\"small\",\"prompt\":\"Once\",\"max_tokens\":2000,\"ignore_eos\":true}");
    for (int i = 0; i < 500 && small_in_flight(s.port, "small") < 1; i++)
        sleep_ms(10);
    kill(pid, SIGSTOP);
    assert_int_equal(it_read_response(fd, &r), 0);
    assert_int_equal(r.status, 502);
    json_t *j = it_json(&r);
    assert_string_equal(it_error_code(j), "worker_hung");
    json_decref(j);
    it_response_free(&r);
    close(fd);
    json_t *ev = it_wait_event(s.port, "worker.hung", seq, 5000);
    assert_non_null(ev);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "pid")), pid);
    json_decref(ev);
    assert_int_equal(it_post_json(s.port, "/v1/completions", "{\"model\":\"small\",\"prompt\":\"a\",\"max_tokens\":1}",
                                  &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);
    m = it_status_model(s.port, "small");
    int pid2 = (int)json_integer_value(json_object_get(m, "pid"));
    json_decref(m);
    assert_int_not_equal(pid2, pid);

    /* A stopped worker at shutdown: SIGTERM cannot reach it, SIGKILL does. */
    kill(pid2, SIGSTOP);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    assert_int_not_equal(kill(pid2, 0), 0); /* reaped */
    it_server_cleanup(&s);
    it_rmrf(home);
}

/* A long prompt is one decode step of many seconds; the progress deadline
 * must see it advance (graph nodes count) and not take it for a hang. */
static void test_long_decode_step_is_not_a_hang(void **state)
{
    char home[64];
    struct it_server s;
    start_with_small(&s, home, sizeof home, "", "  progress_timeout_s: 1\n", 1, "");
    char *body = malloc(16384);
    int n = snprintf(body, 16384, "{\"model\":\"small\",\"max_tokens\":2,\"prompt\":\"");
    for (int i = 0; i < 120; i++) /* ~800 tokens: one step of seconds with one thread */
        n += snprintf(body + n, 16384 - (size_t)n, "word%d is here. ", i);
    snprintf(body + n, 16384 - (size_t)n, "\"}");
    struct it_response r;
    assert_int_equal(it_post_json(s.port, "/v1/completions", body, &r), 0);
    free(body);
    if (r.status != 200)
        fail_msg("a long prompt with a 1 s progress deadline: %d %s", r.status, r.body);
    json_t *j = it_json(&r);
    double prompt_ms = json_real_value(json_object_get(json_object_get(j, "timings"), "prompt_ms"));
    print_message("prompt of %lld tokens in %.0f ms, in steps the deadline saw move\n",
                  (long long)json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")),
                  prompt_ms);
    json_decref(j);
    it_response_free(&r);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
    it_rmrf(home);
}

static uint64_t max_seq(json_t *events)
{
    uint64_t m = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        uint64_t seq = (uint64_t)json_integer_value(json_object_get(e, "seq"));
        assert_true(seq > m); /* oldest first, strictly increasing */
        m = seq;
    }
    return m;
}

static void test_crash_recovery(void **state)
{
    struct it_server s;
    assert_int_equal(it_server_start(&s, NULL, NULL, NULL), 0);
    char home[256];
    snprintf(home, sizeof home, "%s", s.home);
    json_t *j = get_json(s.port, "/events/recent", 200);
    uint64_t seq_before = max_seq(json_object_get(j, "events"));
    assert_true(seq_before >= 1);
    json_decref(j);
    json_t *root = get_json(s.port, "/", 200);
    char crashed_session[64];
    snprintf(crashed_session, sizeof crashed_session, "%s", json_string_value(json_object_get(root, "session_id")));
    json_decref(root);
    assert_int_equal(it_server_stop(&s, SIGKILL), 128 + SIGKILL);

    /* Next start: recovered event naming the crashed session, seq goes on. */
    struct it_server s2;
    assert_int_equal(it_server_start(&s2, home, NULL, NULL), 0);
    j = get_json(s2.port, "/events/recent", 200);
    json_t *events = json_object_get(j, "events");
    uint64_t first = (uint64_t)json_integer_value(json_object_get(json_array_get(events, 0), "seq"));
    assert_true(first > seq_before);
    max_seq(events);
    bool recovered = false;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        if (strcmp(json_string_value(json_object_get(e, "type")), "system.recovered") == 0) {
            recovered = true;
            assert_string_equal(json_string_value(json_object_get(json_object_get(e, "data"), "previous_session")),
                                crashed_session);
        }
    }
    assert_true(recovered);
    json_decref(j);
    assert_int_equal(it_server_stop(&s2, SIGTERM), 0);

    /* The database is sound and a clean stop is not reported again. */
    char db_path[300];
    snprintf(db_path, sizeof db_path, "%s/lyra.db", home);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_prepare_v2(db, "SELECT count(*) FROM sessions WHERE clean = 1", -1, &st, NULL);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);

    struct it_server s3;
    assert_int_equal(it_server_start(&s3, home, NULL, NULL), 0);
    j = get_json(s3.port, "/events/recent?types=system.recovered", 200);
    assert_int_equal(json_array_size(json_object_get(j, "events")), 0);
    json_decref(j);
    assert_int_equal(it_server_stop(&s3, SIGINT), 0);
    it_rmrf(home);
    it_server_cleanup(&s3);
}

static void test_port_in_use(void **state)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    listen(fd, 1);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    char port[16], home[64];
    snprintf(port, sizeof port, "%d", ntohs(sa.sin_port));
    it_mkdtemp(home, sizeof home);
    const char *args[] = {"serve", "--home", home, "--port", port, NULL};
    char *out = NULL;
    assert_int_equal(it_run_lyra(args, NULL, &out), 1);
    assert_true(output_has(out, "in use"));
    assert_true(output_has(out, port));
    free(out);
    close(fd);
    it_rmrf(home);
}

static void test_bad_home(void **state)
{
    char dir[64], home[128];
    it_mkdtemp(dir, sizeof dir);
    snprintf(home, sizeof home, "%s/file", dir);
    it_write_file(home, "not a directory");
    const char *args[] = {"serve", "--home", home, "--port", "0", NULL};
    char *out = NULL;
    assert_int_equal(it_run_lyra(args, NULL, &out), 1);
    assert_true(output_has(out, "LYRA_HOME"));
    free(out);
    if (geteuid() != 0) { /* root ignores permission bits */
        snprintf(home, sizeof home, "%s/ro", dir);
        mkdir(home, 0500);
        assert_int_equal(it_run_lyra(args, NULL, &out), 1);
        assert_true(output_has(out, "not writable"));
        free(out);
    }
    it_rmrf(dir);
}

static void test_second_daemon_same_home(void **state)
{
    struct it_server s;
    assert_int_equal(it_server_start(&s, NULL, NULL, NULL), 0);
    const char *args[] = {"serve", "--home", s.home, "--port", "0", NULL};
    char *out = NULL;
    assert_int_equal(it_run_lyra(args, NULL, &out), 1);
    assert_true(output_has(out, "another lyra serve"));
    free(out);
    json_decref(get_json(s.port, "/health", 200)); /* the first one is unharmed */
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    it_server_cleanup(&s);
}

static void test_bad_config(void **state)
{
    char home[64], path[128];
    it_mkdtemp(home, sizeof home);
    snprintf(path, sizeof path, "%s/lyra.yaml", home);
    const char *args[] = {"serve", "--home", home, "--port", "0", NULL};
    char *out = NULL;

    it_write_file(path, "schema_version: 2\nserver:\n  prot: 80\n");
    assert_int_equal(it_run_lyra(args, NULL, &out), 1);
    assert_true(output_has(out, "lyra.yaml:3:3"));
    assert_true(output_has(out, "prot"));
    free(out);

    it_write_file(path, "schema_version: 2\nserver:\n  port: [1\n");
    assert_int_equal(it_run_lyra(args, NULL, &out), 1);
    assert_true(output_has(out, "lyra.yaml:"));
    free(out);

    const char *env[] = {"LYRA_SERVER_PORT=eighty", NULL};
    unlink(path);
    assert_int_equal(it_run_lyra(args, env, &out), 1);
    assert_true(output_has(out, "LYRA_SERVER_PORT"));
    free(out);

    const char *args_missing[] = {"serve", "--home", home, "--config", "/nonexistent/lyra.yaml", NULL};
    assert_int_equal(it_run_lyra(args_missing, NULL, &out), 1);
    assert_true(output_has(out, "/nonexistent/lyra.yaml"));
    free(out);

    /* A directory where the file should be cannot be read. */
    const char *args_dir[] = {"serve", "--home", home, "--config", home, NULL};
    assert_int_equal(it_run_lyra(args_dir, NULL, &out), 1);
    free(out);
    it_rmrf(home);
}

static void test_config_commands(void **state)
{
    char home[64], path[128], bak[160];
    it_mkdtemp(home, sizeof home);
    snprintf(path, sizeof path, "%s/lyra.yaml", home);
    snprintf(bak, sizeof bak, "%s.v1.bak", path);
    const char *v1 = "schema_version: 1\nserver:\n  listen: \"127.0.0.1:9123\"\nmodels:\n  path: /srv/models\n";
    it_write_file(path, v1);
    char *out = NULL;

    const char *validate[] = {"config", "validate", "--home", home, NULL};
    assert_int_equal(it_run_lyra(validate, NULL, &out), 0);
    free(out);

    const char *show[] = {"config", "show", "--home", home, NULL};
    const char *env[] = {"LYRA_ADMIN_KEY=super-secret-value", NULL};
    assert_int_equal(it_run_lyra(show, env, &out), 0);
    assert_true(output_has(out, "port: 9123"));
    assert_true(output_has(out, "dir: /srv/models"));
    assert_null(strstr(out, "super-secret-value"));
    free(out);

    const char *migrate[] = {"config", "migrate", "--home", home, NULL};
    assert_int_equal(it_run_lyra(migrate, NULL, &out), 0);
    assert_true(output_has(out, "from schema 1 to 3"));
    free(out);
    char *backup = NULL, *now = NULL;
    FILE *f = fopen(bak, "r");
    assert_non_null(f);
    backup = calloc(1, 4096);
    assert_true(fread(backup, 1, 4095, f) > 0);
    fclose(f);
    assert_string_equal(backup, v1);
    free(backup);
    f = fopen(path, "r");
    now = calloc(1, 4096);
    assert_true(fread(now, 1, 4095, f) > 0);
    fclose(f);
    assert_non_null(strstr(now, "schema_version: 3"));
    assert_non_null(strstr(now, "port: 9123"));
    free(now);
    assert_int_equal(it_run_lyra(migrate, NULL, &out), 0);
    assert_true(output_has(out, "already at schema 3"));
    free(out);
    it_rmrf(home);
}

/* The file's bytes (caller frees), NULL when unreadable. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The daemon's log line whose msg holds `needle` (caller decrefs), NULL if
 * none.  The tests below run with log.format json. */
static json_t *log_line_with(const char *log_path, const char *needle)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return NULL;
    char line[4096];
    json_t *found = NULL;
    while (!found && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "msg"));
        if (msg && strstr(msg, needle))
            found = j;
        else
            json_decref(j);
    }
    fclose(f);
    return found;
}

/* Asserts the warning that an old config was migrated in memory only. */
static void assert_migration_warning(const char *log_path, const char *config_path)
{
    json_t *w = log_line_with(log_path, "migrated in memory");
    if (!w)
        print_error("no in-memory migration warning in %s\n", log_path);
    assert_non_null(w);
    const char *msg = json_string_value(json_object_get(w, "msg"));
    assert_string_equal(json_string_value(json_object_get(w, "level")), "warn");
    assert_non_null(strstr(msg, config_path));
    assert_non_null(strstr(msg, "schema_version 1"));
    assert_non_null(strstr(msg, "to 3"));
    assert_non_null(strstr(msg, "run `lyra config migrate` to rewrite it"));
    json_decref(w);
}

static const char V1_CONFIG[] = "# an old file\nserver:\n  listen: \"127.0.0.1:0\"\nlog:\n  json: true\n";

static void test_serve_migrates_in_memory_at_start(void **state)
{
    char home[64], path[128], bak[160];
    it_mkdtemp(home, sizeof home);
    snprintf(path, sizeof path, "%s/lyra.yaml", home);
    snprintf(bak, sizeof bak, "%s.v1.bak", path);
    it_write_file(path, V1_CONFIG);
    struct it_server s;
    assert_int_equal(it_server_start(&s, home, NULL, NULL), 0);
    assert_int_equal(it_server_stop(&s, SIGTERM), 0);
    /* log.json: true became log.format: json — the daemon logged JSON
     * lines — but the file is as it was, with no backup beside it. */
    char *now = slurp(path);
    assert_non_null(now);
    assert_string_equal(now, V1_CONFIG);
    free(now);
    assert_int_not_equal(access(bak, F_OK), 0);
    assert_migration_warning(s.log_path, path);
    it_server_cleanup(&s);
    it_rmrf(home);
}

/* Names in dir, sorted and joined by '/' (for comparing listings). */
static void listing(const char *dir, char *out, size_t len)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls -A '%s'", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = '\0';
    char name[256];
    while (fgets(name, sizeof name, p)) {
        name[strcspn(name, "\n")] = '\0';
        strncat(out, name, len - strlen(out) - 2);
        strcat(out, "/");
    }
    pclose(p);
}

/* chattr +i/-i on path; false where the file system or tool cannot. */
static bool set_immutable(const char *path, bool on)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chattr %ci '%s' 2>/dev/null", on ? '+' : '-', path);
    return system(cmd) == 0;
}

static void test_serve_starts_with_read_only_config(void **state)
{
    /* The config lives in a directory of its own that nobody may write:
     * immutable where chattr works (root ignores permission bits, and CI
     * runs as root), mode 0555/0444 as well.  Whatever the privileges, a
     * write is also caught by the bytes, inode, mtime and listing below. */
    char home[64], dir[64], path[128], before[512], after[512];
    it_mkdtemp(home, sizeof home);
    it_mkdtemp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/lyra.yaml", dir);
    it_write_file(path, V1_CONFIG);
    struct stat st0, st1;
    assert_int_equal(stat(path, &st0), 0);
    listing(dir, before, sizeof before);
    assert_int_equal(chmod(path, 0444), 0);
    assert_int_equal(chmod(dir, 0555), 0);
    bool immutable = set_immutable(path, true) && set_immutable(dir, true);
    if (getuid() == 0 && !immutable)
        print_message("chattr +i unavailable: relying on bytes, inode, mtime and listing\n");

    struct it_server s;
    const char *args[] = {"--config", path, NULL};
    int started = it_server_start(&s, home, args, NULL);
    if (started == 0)
        assert_int_equal(it_server_stop(&s, SIGTERM), 0);

    set_immutable(dir, false);
    set_immutable(path, false);
    assert_int_equal(stat(path, &st1), 0);
    listing(dir, after, sizeof after);
    char *now = slurp(path);
    chmod(dir, 0700);
    assert_int_equal(started, 0);
    assert_non_null(now);
    assert_string_equal(now, V1_CONFIG);
    free(now);
    assert_true(st0.st_ino == st1.st_ino);
    assert_true(st0.st_mtim.tv_sec == st1.st_mtim.tv_sec && st0.st_mtim.tv_nsec == st1.st_mtim.tv_nsec);
    assert_string_equal(after, before);
    assert_migration_warning(s.log_path, path);
    it_server_cleanup(&s);
    it_rmrf(dir);
    it_rmrf(home);
}

static void test_validate_refuses_what_a_worker_would(void **state)
{
    /* parallel: 300 used to validate, and then every load failed with
     * "exited with status 2": the range is now the worker's. */
    char home[64], path[128];
    it_mkdtemp(home, sizeof home);
    snprintf(path, sizeof path, "%s/lyra.yaml", home);
    it_write_file(path, "schema_version: 2\nmodels: {parallel: 300}\n");
    char *out = NULL, want[256];
    const char *validate[] = {"config", "validate", "--home", home, NULL};
    assert_int_equal(it_run_lyra(validate, NULL, &out), 1);
    snprintf(want, sizeof want, "%s:2:20: models.parallel: 300 is out of range (1..256)", path);
    assert_true(output_has(out, want));
    free(out);
    it_write_file(path, "schema_version: 2\nmodels: {parallel: 256}\n");
    assert_int_equal(it_run_lyra(validate, NULL, &out), 0);
    free(out);
    it_rmrf(home);
}

static void test_cli_basics(void **state)
{
    char *out = NULL;
    const char *version[] = {"version", NULL};
    assert_int_equal(it_run_lyra(version, NULL, &out), 0);
    assert_true(output_has(out, "lyra "));
    free(out);
    const char *help[] = {"help", NULL};
    assert_int_equal(it_run_lyra(help, NULL, &out), 0);
    assert_true(output_has(out, "serve"));
    free(out);
    const char *sub_help[][3] = {{"serve", "--help", NULL}, {"config", "--help", NULL}, {"version", "--help", NULL}};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(it_run_lyra(sub_help[i], NULL, &out), 0);
        assert_true(output_has(out, "usage: lyra"));
        free(out);
    }
    const char *bogus[] = {"frobnicate", NULL};
    assert_int_equal(it_run_lyra(bogus, NULL, &out), 2);
    assert_true(output_has(out, "unknown command"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_drains_in_flight),
        cmocka_unit_test(test_sigterm_with_generations_in_flight),
        cmocka_unit_test(test_stopped_worker_is_replaced),
        cmocka_unit_test(test_long_decode_step_is_not_a_hang),
        cmocka_unit_test(test_crash_recovery),
        cmocka_unit_test(test_port_in_use),
        cmocka_unit_test(test_bad_home),
        cmocka_unit_test(test_second_daemon_same_home),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_config_commands),
        cmocka_unit_test(test_serve_migrates_in_memory_at_start),
        cmocka_unit_test(test_serve_starts_with_read_only_config),
        cmocka_unit_test(test_validate_refuses_what_a_worker_would),
        cmocka_unit_test(test_cli_basics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
