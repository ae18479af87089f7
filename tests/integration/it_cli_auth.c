/* it_cli_auth.c — the client commands against a daemon with auth.enabled
 * (LYRA_AUTH_ENABLED=true, the admin key from LYRA_ADMIN_KEY), run as the
 * real binary: without a key a command fails and says how to give one;
 * LYRA_API_KEY, --api-key, --api-key-file and `lyra login`'s credentials
 * file each work; `lyra keys create` prints a key that works for what its
 * role may do (GET /status) and is refused the rest (403 naming the
 * permission); `lyra keys revoke` ends it (401); `lyra users
 * add|list|set-role|remove`; and no key ever appears in what the commands
 * print, but for the one line of `keys create` (or `users add --key`). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define ADMIN_KEY "it-cli-auth-admin-key-0123456789abcdefgh" /* 40 characters */
#define HINT "set LYRA_API_KEY, pass --api-key or run `lyra login`"

extern char **environ;

static struct it_server srv;
static char home[64], conf[128], url[64];
static char url_env[96], conf_env[160];

/* Everything the commands printed, but the key lines of `keys create`. */
static char *printed;
static size_t printed_len;

static void remember(const char *text)
{
    size_t n = strlen(text);
    printed = realloc(printed, printed_len + n + 1);
    assert_non_null(printed);
    memcpy(printed + printed_len, text, n + 1);
    printed_len += n;
}

/* Runs `lyra ARGS...` with stdin from `input` (NULL: /dev/null) and the
 * environment: ours, then LYRA_URL, LYRA_CONFIG_DIR and an empty
 * LYRA_API_KEY (no key), then `env` (may override those).  *out and *err
 * get stdout and stderr (caller frees).  Returns the exit status. */
static int run(const char *const *args, const char *const *env, const char *input, char **out, char **err)
{
    char opath[] = "/tmp/lyra-it-out-XXXXXX", epath[] = "/tmp/lyra-it-err-XXXXXX",
         ipath[] = "/tmp/lyra-it-in-XXXXXX";
    int ofd = mkstemp(opath), efd = mkstemp(epath), ifd = mkstemp(ipath);
    assert_true(ofd >= 0 && efd >= 0 && ifd >= 0);
    unlink(opath);
    unlink(epath);
    unlink(ipath);
    if (input)
        assert_int_equal(write(ifd, input, strlen(input)), (ssize_t)strlen(input));
    lseek(ifd, 0, SEEK_SET);
    const char *argv[32] = {getenv("LYRA_BIN") ? getenv("LYRA_BIN") : "build/lyra"};
    int argc = 1;
    for (int i = 0; args[i] && argc < 31; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    const char *base[] = {url_env, conf_env, "LYRA_API_KEY=", NULL};
    size_t n = 0;
    while (environ[n])
        n++;
    const char **envp = calloc(n + 16, sizeof *envp);
    assert_non_null(envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LYRA_URL=", 9) != 0 && strncmp(environ[i], "LYRA_CONFIG_DIR=", 16) != 0 &&
            strncmp(environ[i], "LYRA_API_KEY=", 13) != 0)
            envp[k++] = environ[i];
    for (size_t i = 0; base[i]; i++) {
        bool overridden = false;
        size_t klen = (size_t)(strchr(base[i], '=') - base[i]);
        for (size_t j = 0; env && env[j]; j++)
            overridden |= strncmp(env[j], base[i], klen + 1) == 0;
        if (!overridden)
            envp[k++] = base[i];
    }
    for (size_t j = 0; env && env[j] && k < n + 15; j++)
        envp[k++] = env[j];
    envp[k] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(ifd, 0);
        dup2(ofd, 1);
        dup2(efd, 2);
        execve(argv[0], (char **)argv, (char **)envp);
        _exit(127);
    }
    free(envp);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char *texts[2] = {NULL, NULL};
    int fds[2] = {ofd, efd};
    for (int i = 0; i < 2; i++) {
        off_t len = lseek(fds[i], 0, SEEK_END);
        texts[i] = calloc(1, (size_t)len + 1);
        assert_non_null(texts[i]);
        assert_int_equal(pread(fds[i], texts[i], (size_t)len, 0), (ssize_t)len);
        close(fds[i]);
    }
    close(ifd);
    remember(texts[1]);
    *out = texts[0];
    *err = texts[1];
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* run() for a command whose stdout is remembered too (everything but a
 * new key). */
static int run_all(const char *const *args, const char *const *env, const char *input, char **out, char **err)
{
    int rc = run(args, env, input, out, err);
    remember(*out);
    return rc;
}

static int setup(void **state)
{
    it_mkdtemp(home, sizeof home);
    snprintf(conf, sizeof conf, "%s/conf/lyra", home); /* created by `lyra login` */
    char models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    /* viewer for anonymous requests: with auth.enabled it must not matter,
     * and a daemon that let it matter would fail the first test. */
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_ADMIN_KEY=" ADMIN_KEY,
                         "LYRA_AUTH_ANONYMOUS_ROLE=viewer", NULL};
    if (it_server_start(&srv, home, NULL, env) < 0)
        return -1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    snprintf(url_env, sizeof url_env, "LYRA_URL=%s", url);
    snprintf(conf_env, sizeof conf_env, "LYRA_CONFIG_DIR=%s", conf);
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
    free(printed);
    return rc == 0 ? 0 : -1;
}

/* The status of METHOD path with `key` as bearer token. */
static int http_with(const char *method, const char *path, const char *key)
{
    char hdr[400];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", key);
    struct it_response r;
    assert_int_equal(it_http(srv.port, method, path, hdr, strcmp(method, "POST") == 0 ? "{}" : NULL, &r), 0);
    int status = r.status;
    it_response_free(&r);
    return status;
}

/* A key of the generated format: "lyra_" + 43 base62 characters. */
static bool is_key(const char *s)
{
    if (strncmp(s, "lyra_", 5) != 0 || strlen(s) != 48)
        return false;
    for (const char *p = s + 5; *p; p++)
        if (!isalnum((unsigned char)*p))
            return false;
    return true;
}

/* The one line of `out` (its trailing \n removed in place). */
static char *one_line(char *out)
{
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_int_equal(nl[1], '\0');
    *nl = '\0';
    return out;
}

/* The key id ("k_...") named in a `keys create` note. */
static void key_id_of(const char *note, char *id, size_t len)
{
    const char *p = strstr(note, "key k_");
    assert_non_null(p);
    p += 4;
    size_t n = strcspn(p, " ");
    assert_true(n > 2 && n < len);
    memcpy(id, p, n);
    id[n] = '\0';
}

static void test_cli_auth(void **state)
{
    char *out, *err;
    const char *admin_env[] = {"LYRA_API_KEY=" ADMIN_KEY, NULL};

    /* No key: refused, with the hint. */
    int rc = run_all((const char *[]){"ps", NULL}, NULL, NULL, &out, &err);
    assert_int_not_equal(rc, 0);
    if (!strstr(err, HINT))
        fail_msg("no hint in: %s", err);
    free(out), free(err);

    /* A wrong key: refused too, naming where it came from, never showing it. */
    rc = run_all((const char *[]){"ps", NULL},
                 (const char *[]){"LYRA_API_KEY=lyra_not-a-real-key-000000", NULL}, NULL, &out, &err);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err, HINT));
    assert_non_null(strstr(err, "LYRA_API_KEY"));
    assert_null(strstr(err, "lyra_not-a-real-key-000000"));
    free(out), free(err);

    /* LYRA_API_KEY works. */
    rc = run_all((const char *[]){"ps", NULL}, admin_env, NULL, &out, &err);
    if (rc != 0)
        fail_msg("lyra ps with LYRA_API_KEY: %d %s", rc, err);
    free(out), free(err);

    /* keys create --role viewer: the key alone on stdout. */
    rc = run((const char *[]){"keys", "create", "--role", "viewer", "--label", "it viewer", "--expires",
                              "30d", NULL},
             admin_env, NULL, &out, &err);
    if (rc != 0)
        fail_msg("keys create: %d %s", rc, err);
    char viewer[64];
    lyra_fmt(viewer, sizeof viewer, "%s", one_line(out));
    if (!is_key(viewer))
        fail_msg("not a key: '%s'", viewer);
    assert_non_null(strstr(err, "shown this once"));
    char viewer_id[32];
    key_id_of(err, viewer_id, sizeof viewer_id);
    free(out), free(err);

    /* It may read the status, not load a model. */
    assert_int_equal(http_with("GET", "/status", viewer), 200);
    assert_int_equal(http_with("POST", "/models/x/load", viewer), 403);
    char viewer_env[96];
    snprintf(viewer_env, sizeof viewer_env, "LYRA_API_KEY=%s", viewer);
    rc = run_all((const char *[]){"load", "x", NULL}, (const char *[]){viewer_env, NULL}, NULL, &out, &err);
    assert_int_equal(rc, 1);
    if (!strstr(err, "models.load"))
        fail_msg("403 without the permission: %s", err);
    free(out), free(err);
    /* keys list needs permissions.manage. */
    rc =
        run_all((const char *[]){"keys", "list", NULL}, (const char *[]){viewer_env, NULL}, NULL, &out, &err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, "permissions.manage"));
    free(out), free(err);

    /* --api-key and --api-key-file. */
    char keyfile[160];
    snprintf(keyfile, sizeof keyfile, "%s/viewer.key", home);
    char keytext[80];
    snprintf(keytext, sizeof keytext, "%s\n", viewer);
    it_write_file(keyfile, keytext);
    rc = run_all((const char *[]){"ps", "--api-key-file", keyfile, NULL}, NULL, NULL, &out, &err);
    if (rc != 0)
        fail_msg("--api-key-file: %d %s", rc, err);
    free(out), free(err);
    rc = run_all((const char *[]){"ls", "--api-key", viewer, NULL}, NULL, NULL, &out, &err);
    if (rc != 0)
        fail_msg("--api-key: %d %s", rc, err);
    assert_non_null(strstr(out, "tiny"));
    free(out), free(err);

    /* login with the key on stdin: stored 0600 in a 0700 directory. */
    char login_input[80];
    snprintf(login_input, sizeof login_input, "%s\n", viewer);
    rc = run_all((const char *[]){"login", NULL}, NULL, login_input, &out, &err);
    if (rc != 0)
        fail_msg("login: %d %s", rc, err);
    char want[160];
    snprintf(want, sizeof want, "logged in to %s as ", url);
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "(role viewer)"));
    free(out), free(err);
    char cred[200];
    snprintf(cred, sizeof cred, "%s/credentials", conf);
    struct stat st;
    assert_int_equal(stat(cred, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(conf, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* Later commands use it without any key in the environment. */
    rc = run_all((const char *[]){"ps", NULL}, NULL, NULL, &out, &err);
    if (rc != 0)
        fail_msg("ps after login: %d %s", rc, err);
    free(out), free(err);
    /* A bad key is not stored. */
    rc = run_all((const char *[]){"login", NULL}, NULL, "lyra_wrongwrongwrong0000\n", &out, &err);
    assert_int_equal(rc, 1);
    char *text = lyra_read_file(cred, NULL);
    assert_non_null(strstr(text, viewer));
    assert_null(strstr(text, "lyra_wrongwrongwrong0000"));
    free(text);
    free(out), free(err);

    /* keys list shows it (no key text); revoke ends it. */
    rc = run_all((const char *[]){"keys", "list", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, viewer_id));
    assert_non_null(strstr(out, "it viewer"));
    free(out), free(err);
    rc = run_all((const char *[]){"keys", "list", "--json", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    json_decref(j);
    free(out), free(err);
    rc = run_all((const char *[]){"keys", "revoke", viewer_id, NULL}, admin_env, NULL, &out, &err);
    if (rc != 0)
        fail_msg("keys revoke: %d %s", rc, err);
    free(out), free(err);
    assert_int_equal(http_with("GET", "/status", viewer), 401);
    rc = run_all((const char *[]){"ps", NULL}, NULL, NULL, &out, &err); /* the stored key, revoked */
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, HINT));
    free(out), free(err);

    /* logout forgets it. */
    rc = run_all((const char *[]){"logout", NULL}, NULL, NULL, &out, &err);
    assert_int_equal(rc, 0);
    text = lyra_read_file(cred, NULL);
    assert_null(strstr(text, url));
    free(text);
    free(out), free(err);

    /* users add/list/set-role/remove. */
    rc = run((const char *[]){"users", "add", "bob", "--role", "user", "--key", NULL}, admin_env, NULL, &out,
             &err);
    if (rc != 0)
        fail_msg("users add: %d %s", rc, err);
    char bob[64];
    lyra_fmt(bob, sizeof bob, "%s", one_line(out));
    assert_true(is_key(bob));
    free(out), free(err);
    assert_int_equal(http_with("GET", "/status", bob), 200);
    rc = run_all((const char *[]){"users", "add", "ci-bot", "--role", "viewer", "--service", NULL}, admin_env,
                 NULL, &out, &err);
    assert_int_equal(rc, 0);
    free(out), free(err);
    rc = run_all((const char *[]){"users", "list", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "bob"));
    assert_non_null(strstr(out, "ci-bot"));
    assert_non_null(strstr(out, "service"));
    free(out), free(err);
    rc = run_all((const char *[]){"users", "set-role", "bob", "viewer", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    free(out), free(err);
    rc = run_all((const char *[]){"users", "list", "--json", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    j = json_loads(out, 0, NULL);
    assert_non_null(j);
    json_t *users = json_is_array(j) ? j : json_object_get(j, "users");
    bool bob_viewer = false;
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u)
    {
        const char *name = json_string_value(json_object_get(u, "name"));
        const char *role = json_string_value(json_object_get(u, "role"));
        bob_viewer |= name && role && strcmp(name, "bob") == 0 && strcmp(role, "viewer") == 0;
    }
    assert_true(bob_viewer);
    json_decref(j);
    free(out), free(err);
    rc = run_all((const char *[]){"users", "remove", "bob", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    free(out), free(err);
    rc = run_all((const char *[]){"users", "list", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "bob"));
    free(out), free(err);
    assert_int_equal(http_with("GET", "/status", bob), 401); /* its keys went with it */

    /* Removing the only admin is refused (409), the message printed. */
    rc = run_all((const char *[]){"users", "remove", "admin", NULL}, admin_env, NULL, &out, &err);
    assert_int_equal(rc, 1);
    free(out), free(err);
    assert_int_equal(http_with("GET", "/status", ADMIN_KEY), 200);

    /* No key was printed anywhere else. */
    assert_null(strstr(printed, ADMIN_KEY));
    assert_null(strstr(printed, viewer));
    assert_null(strstr(printed, bob));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_auth),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
