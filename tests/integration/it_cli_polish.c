/* it_cli_polish.c — the CLI for scripts and people, against a real daemon
 * with the tiny model: every client command's --json parses and has the
 * fields it promises; output written to a pipe has no ANSI escapes and no
 * progress bar (no \r), even with TERM set; on a terminal (a pty) `lyra
 * status` is coloured unless NO_COLOR or TERM=dumb; `lyra status` shows the
 * loaded model's row; a daemon that is not running is exit status 3 with
 * a message that says how to start it, distinct from a refused --url; a
 * usage error is 2. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
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
static char home[64], models[128], url[64], home_env[160], cfgdir_env[160], cfgdir[64];

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    it_mkdtemp(cfgdir, sizeof cfgdir);
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    if (it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    if (it_server_start(&srv, home, NULL, NULL) < 0)
        return -1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    snprintf(home_env, sizeof home_env, "LYRA_HOME=%s", home);
    snprintf(cfgdir_env, sizeof cfgdir_env, "LYRA_CONFIG_DIR=%s", cfgdir);
    return 0;
}

static int teardown(void **state)
{
    it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    it_rmrf(cfgdir);
    return 0;
}

struct out {
    char *out, *err; /* NUL-terminated, caller frees */
    int status;
};

static void out_free(struct out *o)
{
    free(o->out);
    free(o->err);
    memset(o, 0, sizeof *o);
}

/* Reads fds[0..1] to their ends into o->out / o->err. */
static void drain(int fd_out, int fd_err, struct out *o)
{
    struct {
        char *p;
        size_t len, cap;
    } b[2] = {{0}};
    struct pollfd p[2] = {{.fd = fd_out, .events = POLLIN}, {.fd = fd_err, .events = POLLIN}};
    int open_ = fd_err >= 0 ? 2 : 1;
    while (open_ > 0) {
        if (poll(p, fd_err >= 0 ? 2 : 1, 60000) <= 0)
            break;
        for (int k = 0; k < 2; k++) {
            if (p[k].fd < 0 || !(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (b[k].len + 4097 > b[k].cap) {
                b[k].cap = b[k].cap ? b[k].cap * 2 : 8192;
                b[k].p = realloc(b[k].p, b[k].cap);
                assert_non_null(b[k].p);
            }
            ssize_t r = read(p[k].fd, b[k].p + b[k].len, 4096);
            if (r <= 0) {
                p[k].fd = -1;
                open_--;
            } else {
                b[k].len += (size_t)r;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (!b[k].p)
            b[k].p = calloc(1, 1);
        else
            b[k].p[b[k].len] = '\0';
    }
    o->out = b[0].p;
    o->err = b[1].p;
}

static void child_env(const char *const *env)
{
    unsetenv("LYRA_URL");
    unsetenv("LYRA_API_KEY");
    unsetenv("NO_COLOR");
    setenv("TERM", "xterm-256color", 1); /* a pipe must stay plain even so */
    for (size_t i = 0; env && env[i]; i++) {
        char *kv = strdup(env[i]), *eq = strchr(kv, '=');
        *eq = '\0';
        setenv(kv, eq + 1, 1);
        free(kv);
    }
}

/* Runs `lyra ARGS...` with stdout and stderr on separate pipes (neither a
 * terminal) and stdin from /dev/null. */
static struct out run(const char *const *args, const char *const *env)
{
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]), close(pe[0]), close(po[1]), close(pe[1]);
        child_env(env);
        const char *argv[40] = {getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "lyra"};
        for (size_t i = 0; args[i] && i < 38; i++)
            argv[i + 1] = args[i];
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(po[1]), close(pe[1]);
    struct out o = {0};
    drain(po[0], pe[0], &o);
    close(po[0]), close(pe[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return o;
}

/* Runs `lyra ARGS...` on a pseudo-terminal (stdout and stderr both). */
static struct out run_pty(const char *const *args, const char *const *env)
{
    int master = -1;
    struct winsize ws = {.ws_row = 50, .ws_col = 200};
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    assert_true(pid >= 0);
    if (pid == 0) {
        child_env(env);
        const char *argv[40] = {getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "lyra"};
        for (size_t i = 0; args[i] && i < 38; i++)
            argv[i + 1] = args[i];
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    struct out o = {0};
    drain(master, -1, &o); /* EIO at the child's exit ends it */
    close(master);
    int st = 0;
    waitpid(pid, &st, 0);
    o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return o;
}

#define ENV (const char *[]){home_env, cfgdir_env, NULL}

/* Runs the command with --json, checks the status and returns its stdout
 * parsed (caller decrefs). */
static json_t *json_of(const char *const *args, int want_status)
{
    struct out o = run(args, ENV);
    if (o.status != want_status)
        fprintf(stderr, "lyra %s: status %d, stderr: %s\n", args[0], o.status, o.err);
    assert_int_equal(o.status, want_status);
    json_error_t jerr;
    json_t *j = json_loads(o.out, 0, &jerr);
    if (!j)
        fprintf(stderr, "lyra %s --json: not JSON (%s): %s\n", args[0], jerr.text, o.out);
    assert_non_null(j);
    assert_null(strchr(o.out, '\033'));
    assert_null(strchr(o.err, '\033'));
    out_free(&o);
    return j;
}

static void test_json_of_every_command(void **state)
{
    json_t *j = json_of((const char *[]){"version", "--json", NULL}, 0);
    assert_string_equal(json_string_value(json_object_get(j, "version")), LYRA_VERSION);
    assert_true(json_is_string(json_object_get(j, "llama_cpp")));
    json_decref(j);

    j = json_of((const char *[]){"ls", "--json", NULL}, 0);
    assert_int_equal(json_array_size(json_object_get(j, "models")), 1);
    json_decref(j);

    j = json_of((const char *[]){"load", "tiny", "--json", NULL}, 0);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "loaded");
    assert_true(json_is_integer(json_object_get(j, "pid")));
    json_decref(j);

    j = json_of((const char *[]){"ps", "--json", NULL}, 0);
    assert_int_equal(json_array_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "name")), "tiny");
    json_decref(j);

    j = json_of((const char *[]){"pin", "tiny", "--json", NULL}, 0);
    assert_true(json_is_true(json_object_get(j, "pinned")));
    json_decref(j);
    j = json_of((const char *[]){"unpin", "tiny", "--json", NULL}, 0);
    assert_true(json_is_false(json_object_get(j, "pinned")));
    json_decref(j);

    j = json_of((const char *[]){"status", "--json", NULL}, 0);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ready");
    assert_true(json_is_object(json_object_get(j, "memory")));
    assert_true(json_is_object(json_object_get(j, "cache")));
    assert_int_equal(json_array_size(json_object_get(j, "models")), 1);
    json_decref(j);

    j = json_of((const char *[]){"run", "tiny", "say", "hi", "--max-tokens", "3", "--seed", "1", "--json", NULL},
                0);
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    assert_true(json_is_string(json_object_get(json_object_get(choice, "message"), "content")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), 3);
    json_decref(j);

    j = json_of((const char *[]){"jobs", "--json", NULL}, 0);
    assert_true(json_is_array(json_object_get(j, "jobs")));
    json_decref(j);

    /* A pull of a local file: the job's final state, and nothing on stderr. */
    char src[192];
    snprintf(src, sizeof src, "%s/copy-src.gguf", home);
    assert_int_equal(it_install_model(home, "tiny.gguf", "copy-src.gguf", SIZE_MAX), 0);
    struct out o = run((const char *[]){"pull", src, "--name", "copied", "--json", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_string_equal(o.err, "");
    j = json_loads(o.out, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "succeeded");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "result"), "name")), "copied");
    json_decref(j);
    out_free(&o);

    j = json_of((const char *[]){"config", "show", "--json", NULL}, 0);
    assert_int_equal(json_integer_value(json_object_get(j, "schema_version")), 3);
    assert_true(json_is_integer(json_object_get(json_object_get(j, "server"), "port")));
    assert_string_equal(json_string_value(json_object_get(j, "home")), home);
    json_decref(j);
    j = json_of((const char *[]){"config", "validate", "--json", NULL}, 0);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);

    j = json_of((const char *[]){"keys", "list", "--json", NULL}, 0);
    assert_true(json_is_array(json_object_get(j, "keys")));
    json_decref(j);
    j = json_of((const char *[]){"users", "list", "--json", NULL}, 0);
    assert_true(json_is_array(json_object_get(j, "users")));
    json_decref(j);
    j = json_of((const char *[]){"logout", "--json", NULL}, 0);
    assert_string_equal(json_string_value(json_object_get(j, "url")), url);
    assert_true(json_is_false(json_object_get(j, "removed")));
    json_decref(j);

    j = json_of((const char *[]){"unload", "tiny", "--json", NULL}, 0);
    assert_true(json_is_true(json_object_get(j, "was_loaded")));
    json_decref(j);
}

/* `lyra events --json --since 0`: one JSON object per line, replayed. */
static void test_events_json_lines(void **state)
{
    int po[2];
    assert_int_equal(pipe(po), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(po[1], 1);
        close(po[0]), close(po[1]);
        child_env(ENV);
        execl(getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "lyra", "lyra", "events", "--json", "--since", "0",
              (char *)NULL);
        _exit(127);
    }
    close(po[1]);
    struct timespec ts = {1, 500000000};
    nanosleep(&ts, NULL);
    kill(pid, SIGTERM);
    struct out o = {0};
    drain(po[0], -1, &o);
    close(po[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    int lines = 0;
    for (char *line = strtok(o.out, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *e = json_loads(line, 0, NULL);
        assert_non_null(e);
        assert_true(json_is_integer(json_object_get(e, "seq")));
        assert_true(json_is_string(json_object_get(e, "type")));
        json_decref(e);
        lines++;
    }
    assert_true(lines >= 1);
    out_free(&o);
}

static void assert_plain(const struct out *o)
{
    assert_null(strchr(o->out, '\033'));
    assert_null(strchr(o->err, '\033'));
    assert_null(strchr(o->out, '\r'));
    assert_null(strchr(o->err, '\r'));
}

static void test_piped_output_is_plain(void **state)
{
    struct out o = run((const char *[]){"load", "tiny", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_plain(&o);
    out_free(&o);

    /* The status summary, with the loaded model's row. */
    o = run((const char *[]){"status", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_plain(&o);
    assert_non_null(strstr(o.out, "Lyra " LYRA_VERSION " at "));
    assert_non_null(strstr(o.out, "memory "));
    assert_non_null(strstr(o.out, "cgroup"));
    assert_non_null(strstr(o.out, "cache "));
    assert_non_null(strstr(o.out, "evictions"));
    assert_non_null(strstr(o.out, "MODEL"));
    assert_non_null(strstr(o.out, "GPU LAYERS"));
    char *row = strstr(o.out, "\ntiny ");
    assert_non_null(row);
    char *end = strchr(row + 1, '\n');
    assert_non_null(end);
    *end = '\0';
    assert_non_null(strstr(row, "loaded"));
    assert_non_null(strstr(row, "MiB"));
    out_free(&o);

    o = run((const char *[]){"ps", NULL}, ENV);
    assert_plain(&o);
    out_free(&o);
    o = run((const char *[]){"run", "tiny", "hi", "--max-tokens", "3", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_plain(&o);
    out_free(&o);

    /* A pull to a pipe: step lines, no bar redrawn in place. */
    char src[192];
    snprintf(src, sizeof src, "%s/copy-src2.gguf", home);
    assert_int_equal(it_install_model(home, "tiny.gguf", "copy-src2.gguf", SIZE_MAX), 0);
    o = run((const char *[]){"pull", src, "--name", "copied2", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_plain(&o);
    assert_null(strstr(o.err, "[#"));
    assert_non_null(strstr(o.out, "pulled copied2"));
    out_free(&o);
}

static void test_color_only_on_a_terminal(void **state)
{
    struct out o = run_pty((const char *[]){"status", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_non_null(strstr(o.out, "\033["));
    assert_non_null(strstr(o.out, "tiny"));
    out_free(&o);
    o = run_pty((const char *[]){"status", NULL}, (const char *[]){home_env, "NO_COLOR=1", NULL});
    assert_int_equal(o.status, 0);
    assert_null(strchr(o.out, '\033'));
    out_free(&o);
    o = run_pty((const char *[]){"status", NULL}, (const char *[]){home_env, "TERM=dumb", NULL});
    assert_int_equal(o.status, 0);
    assert_null(strchr(o.out, '\033'));
    out_free(&o);
    o = run_pty((const char *[]){"status", "--json", NULL}, ENV);
    assert_int_equal(o.status, 0);
    assert_null(strchr(o.out, '\033'));
    out_free(&o);
}

static void test_not_running(void **state)
{
    /* No daemon where the configuration points: exit 3, how to start one. */
    char empty[64], env_home[128];
    it_mkdtemp(empty, sizeof empty);
    snprintf(env_home, sizeof env_home, "LYRA_HOME=%s", empty);
    const char *const env[] = {env_home, "LYRA_SERVER_PORT=1", NULL};
    const char *const *cmds[] = {
        (const char *[]){"status", NULL},
        (const char *[]){"status", "--json", NULL},
        (const char *[]){"ls", NULL},
        (const char *[]){"ps", "--json", NULL},
        (const char *[]){"load", "tiny", NULL},
        (const char *[]){"run", "tiny", "hi", NULL},
        (const char *[]){"run", "tiny", "hi", "--json", NULL},
        (const char *[]){"jobs", NULL},
        (const char *[]){"pull", "http://127.0.0.1:1/x.gguf", "--json", NULL},
        (const char *[]){"events", NULL},
        (const char *[]){"keys", "list", NULL},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        struct out o = run(cmds[i], env);
        if (o.status != 3 || !strstr(o.err, "no Lyra daemon at http://127.0.0.1:1: start it with `lyra serve` "
                                            "(or make run)"))
            fprintf(stderr, "lyra %s: status %d, stderr: %s\n", cmds[i][0], o.status, o.err);
        assert_int_equal(o.status, 3);
        assert_non_null(strstr(o.err, "no Lyra daemon at http://127.0.0.1:1: start it with `lyra serve` (or make run)"));
        assert_string_equal(o.out, "");
        out_free(&o);
    }
    /* A wrong --url (or LYRA_URL) is named as such. */
    struct out o = run((const char *[]){"status", "--url", "http://127.0.0.1:1", NULL}, ENV);
    assert_int_equal(o.status, 3);
    assert_non_null(strstr(o.err, "connection refused at http://127.0.0.1:1 (from --url)"));
    assert_null(strstr(o.err, "start it with"));
    out_free(&o);
    o = run((const char *[]){"ls", NULL}, (const char *[]){home_env, "LYRA_URL=http://127.0.0.1:1", NULL});
    assert_int_equal(o.status, 3);
    assert_non_null(strstr(o.err, "(from env LYRA_URL)"));
    out_free(&o);
    /* An unknown host. */
    o = run((const char *[]){"status", "--url", "http://no-such-host.invalid:8000", NULL}, ENV);
    assert_int_equal(o.status, 3);
    assert_non_null(strstr(o.err, "cannot resolve the host of http://no-such-host.invalid:8000"));
    out_free(&o);
    /* The daemon's refusal is 1, a usage error 2. */
    o = run((const char *[]){"load", "no-such-model", NULL}, ENV);
    assert_int_equal(o.status, 1);
    out_free(&o);
    o = run((const char *[]){"status", "--bogus", NULL}, ENV);
    assert_int_equal(o.status, 2);
    out_free(&o);
    o = run((const char *[]){"version", "--bogus", NULL}, ENV);
    assert_int_equal(o.status, 2);
    out_free(&o);
    it_rmrf(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_of_every_command),
        cmocka_unit_test(test_events_json_lines),
        cmocka_unit_test(test_piped_output_is_plain),
        cmocka_unit_test(test_color_only_on_a_terminal),
        cmocka_unit_test(test_not_running),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
