/* it_secrets.c — no secret leaves the daemon where it should not.
 *
 * Case 1: a daemon with auth.enabled, a bootstrap key from LYRA_ADMIN_KEY,
 * HF_TOKEN set to a known secret and LYRA_HF_ENDPOINT on a local pull
 * server (tests/tools/pull_server.py, which needs that token), logging at
 * debug level (the most it ever writes).  Keys of several roles are made
 * and used, good and bad: chat (OpenAI and /chat), /status, /metrics,
 * /events/recent, a refused `lyra login` with a revoked key, an expired
 * key, a revoked key, an unknown and a malformed key, a key in the query
 * string, a key as the WebSocket subprotocol, a key in a wrong header, a hf://
 * pull that works and one that fails.  Every answer of /status, /metrics,
 * /events/recent, /audit, /keys, /jobs is searched for every secret; then
 * the daemon stops and EVERYTHING it wrote is searched: every file under
 * LYRA_HOME (database, -wal, -shm, models dir, partials) and its
 * stdout/stderr log.  A secret is searched by pieces (a clipped copy,
 * "%.40s", is a leak too; only a key's 12-character display prefix may be
 * shown); a control string
 * (a principal's name) must be found in the same files, so that a scan
 * that reads nothing cannot pass.
 *
 * Case 2: no LYRA_ADMIN_KEY: the generated admin key is on the daemon's
 * stderr exactly once (the bootstrap lines) and in admin.key, nowhere else
 * (not even after a restart, which must not print it again); admin.key,
 * auth.secret, lyra.db (and its -wal) are mode 0600. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

#define ADMIN_KEY "itSecretsAdminKey0123456789abcdefghijklm"
#define HF_SECRET "hf_itSecretsToken7f3a9c2e5b8d1f4a6c0e"
/* Well-formed ("lyra_" + 43 base62) but issued by nobody. */
#define UNKNOWN_KEY "lyra_0000000000000000000000000000000000000000000"

static struct it_server srv;
static char home[64], tmp[64];
static pid_t pull_pid;
static int pull_port;

/* Every secret the case made or used, and the answers it collected. */
#define MAX_SECRETS 16
static char secrets[MAX_SECRETS][96];
static const char *secret_label[MAX_SECRETS];
static int n_secrets;

static void add_secret(const char *label, const char *s)
{
    assert_true(n_secrets < MAX_SECRETS);
    assert_true(strlen(s) >= 16 && strlen(s) < sizeof secrets[0]);
    snprintf(secrets[n_secrets], sizeof secrets[0], "%s", s);
    secret_label[n_secrets++] = label;
}

/* --- requests -------------------------------------------------------- */

static int request_h(const char *method, const char *path, const char *key, const char *extra,
                     const char *body, struct it_response *r)
{
    char headers[1024];
    int n =
        snprintf(headers, sizeof headers, "%s%s%s%s%s", key ? "Authorization: Bearer " : "", key ? key : "",
                 key ? "\r\n" : "", body ? "Content-Type: application/json\r\n" : "", extra ? extra : "");
    assert_true(n >= 0 && n < (int)sizeof headers);
    return it_http(srv.port, method, path, headers, body, r);
}

/* The answer of a request that must answer `want` (its body kept in *text
 * when text is not NULL: caller frees). */
static json_t *call_text(const char *method, const char *path, const char *key, const char *body, int want,
                         char **text)
{
    struct it_response r;
    if (request_h(method, path, key, NULL, body, &r) != 0)
        fail_msg("%s %s: no answer", method, path);
    if (r.status != want)
        fail_msg("%s %s: %d (wanted %d): %s", method, path, r.status, want, r.body ? r.body : "");
    json_t *j = it_json(&r);
    if (text)
        *text = strdup(r.body ? r.body : "");
    it_response_free(&r);
    return j;
}

static json_t *call(const char *method, const char *path, const char *key, const char *body, int want)
{
    json_t *j = call_text(method, path, key, body, want, NULL);
    if (!j)
        fail_msg("%s %s: the answer is not JSON", method, path);
    return j;
}

static void expect_error(const char *method, const char *path, const char *key, const char *body, int want,
                         const char *code)
{
    json_t *j = call(method, path, key, body, want);
    if (strcmp(it_error_code(j), code) != 0)
        fail_msg("%s %s: code '%s', wanted '%s'", method, path, it_error_code(j), code);
    json_decref(j);
}

/* POST /keys as admin; the key text into key (and the id into id). */
static void make_key(const char *body, char *key, size_t key_len, char *id, size_t id_len)
{
    json_t *j = call("POST", "/keys", ADMIN_KEY, body, 201);
    const char *k = json_string_value(json_object_get(j, "key"));
    assert_non_null(k);
    assert_int_equal(strlen(k), 48);
    snprintf(key, key_len, "%s", k);
    if (id)
        snprintf(id, id_len, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
}

/* --- searching ------------------------------------------------------- */

static size_t count_in(const char *data, size_t len, const char *needle)
{
    size_t n = 0, nl = strlen(needle);
    for (const char *p = data; len >= nl && (p = memmem(p, len - (size_t)(p - data), needle, nl)); p += nl)
        n++;
    return n;
}

/* Where a piece of secret i occurs in data (NULL: nowhere), and how many
 * times its most frequent piece does.  The pieces: 16-character windows
 * every 8 characters (and the last 16), from the end of what may be shown
 * (a key's display prefix, its first 12 characters) — so that any copy of
 * 24 characters or more past that prefix is found, a clipped one ("%.40s")
 * included. */
#define WINDOW 16
static const char *secret_piece(int i, const char *data, size_t len, size_t *count)
{
    const char *s = secrets[i];
    size_t sl = strlen(s), from = strncmp(s, "lyra_", 5) == 0 ? 12 : 0;
    const char *first = NULL;
    *count = 0;
    for (size_t off = from;; off += 8) {
        if (off + WINDOW > sl)
            off = sl - WINDOW;
        char piece[WINDOW + 1];
        memcpy(piece, s + off, WINDOW);
        piece[WINDOW] = '\0';
        size_t n = count_in(data, len, piece);
        if (n > *count) {
            *count = n;
            first = memmem(data, len, piece, WINDOW);
        }
        if (off + WINDOW >= sl)
            break;
    }
    return first;
}

/* Fails naming `where` when any secret occurs in data. */
static int leaks_in(const char *where, const char *data, size_t len)
{
    int leaks = 0;
    for (int i = 0; i < n_secrets; i++) {
        size_t n;
        const char *p = secret_piece(i, data, len, &n);
        if (p) {
            size_t off = (size_t)(p - data);
            size_t from = off > 120 ? off - 120 : 0;
            print_error("LEAK: %s (%s) occurs %zu time(s) in %s, e.g. ...%.*s...\n", secret_label[i],
                        secrets[i], n, where,
                        (int)(off + 40 - from < len - from ? off + 40 - from : len - from), data + from);
            leaks++;
        }
    }
    return leaks;
}

/* The walk over LYRA_HOME (nftw has no user pointer). */
static struct {
    int leaks;
    int files;
    size_t bytes;
    bool saw_db;
    bool control_found;
    const char *control;
    const char *skip; /* a path not searched (admin.key) */
} walk;

static int scan_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag != FTW_F || !S_ISREG(st->st_mode) || (walk.skip && strcmp(path, walk.skip) == 0))
        return 0;
    size_t len = 0;
    char *data = lyra_read_file(path, &len);
    if (!data) {
        print_error("cannot read %s\n", path);
        walk.leaks++;
        return 0;
    }
    walk.files++;
    walk.bytes += len;
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    walk.saw_db |= strcmp(base, "lyra.db") == 0;
    walk.control_found |= walk.control && count_in(data, len, walk.control) > 0;
    walk.leaks += leaks_in(path, data, len);
    free(data);
    return 0;
}

/* Searches every file under dir (but `skip`) and returns the leaks. */
static int scan_tree(const char *dir, const char *skip, const char *control)
{
    memset(&walk, 0, sizeof walk);
    walk.skip = skip;
    walk.control = control;
    assert_int_equal(nftw(dir, scan_one, 16, FTW_PHYS), 0);
    printf("searched %d files, %zu bytes under %s for %d secrets\n", walk.files, walk.bytes, dir, n_secrets);
    return walk.leaks;
}

/* --- the pull server -------------------------------------------------- */

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

static int start_pull_server(const char *dir)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    char script[600];
    snprintf(script, sizeof script, "%s/pull_server.py", tools_dir());
    pull_pid = fork();
    if (pull_pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execlp("python3", "python3", script, dir, HF_SECRET, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    int ok = in && fscanf(in, "%d", &pull_port) == 1;
    if (in)
        fclose(in);
    return ok ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (srv.pid > 0)
        it_server_stop(&srv, SIGKILL);
    it_server_cleanup(&srv);
    memset(&srv, 0, sizeof srv);
    if (pull_pid > 0) {
        kill(pull_pid, SIGTERM);
        waitpid(pull_pid, NULL, 0);
        pull_pid = 0;
    }
    if (home[0])
        it_rmrf(home);
    if (tmp[0])
        it_rmrf(tmp);
    home[0] = tmp[0] = '\0';
    n_secrets = 0;
    return 0;
}

/* --- case 1 ---------------------------------------------------------- */

/* POSTs an hf:// pull as `key`; waits for the job and returns its final
 * state (static). */
static const char *pull_and_wait(const char *key, const char *file, const char *name, char **answers)
{
    char body[512], path[128];
    snprintf(body, sizeof body, "{\"source\":\"hf://itorg/itrepo/%s\",\"name\":\"%s\"}", file, name);
    json_t *j = call("POST", "/models/pull", key, body, 202);
    snprintf(path, sizeof path, "/jobs/%s",
             json_string_value(json_object_get(json_object_get(j, "job"), "id")));
    json_decref(j);
    static char state[32];
    for (int i = 0; i < 400; i++) {
        char *text = NULL;
        json_t *job = call_text("GET", path, key, NULL, 200, &text);
        snprintf(state, sizeof state, "%s", json_string_value(json_object_get(job, "state")));
        json_decref(job);
        if (strcmp(state, "queued") != 0 && strcmp(state, "running") != 0) {
            size_t n = strlen(*answers) + strlen(text) + 2;
            *answers = realloc(*answers, n);
            strcat(*answers, text);
            free(text);
            return state;
        }
        free(text);
        usleep(50 * 1000);
    }
    fail_msg("pull of %s did not end", file);
    return NULL;
}

static void append(char **all, const char *text)
{
    size_t n = strlen(*all) + strlen(text) + 2;
    *all = realloc(*all, n);
    strcat(*all, text);
    strcat(*all, "\n");
}

/* GET path as key (200) and keeps the body in *all. */
static json_t *get_kept(const char *path, const char *key, char **all)
{
    char *text = NULL;
    json_t *j = call_text("GET", path, key, NULL, 200, &text);
    append(all, text);
    free(text);
    return j;
}

/* The status of a WebSocket handshake on /events/ws with `protocols`. */
static int ws_handshake_status(const char *protocols)
{
    char req[1024];
    int n =
        snprintf(req, sizeof req,
                 "GET /events/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: %s\r\n\r\n",
                 protocols);
    int fd = it_connect(srv.port);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, req, (size_t)n), n);
    char buf[512] = "";
    ssize_t got = 0;
    for (int i = 0; i < 100 && !strstr(buf, "\r\n\r\n"); i++) {
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - (size_t)got);
        if (r <= 0)
            break;
        got += r;
        buf[got] = '\0';
    }
    close(fd);
    int status = 0;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    return status;
}

static void test_no_key_nor_token_written(void **state)
{
    (void)state;
    it_mkdtemp(home, sizeof home);
    it_mkdtemp(tmp, sizeof tmp);
    char models[128], serve[128];
    snprintf(models, sizeof models, "%s/models", home);
    snprintf(serve, sizeof serve, "%s/serve/itorg/itrepo/resolve/main", tmp);
    assert_int_equal(lyra_mkdirs(models), 0);
    assert_int_equal(lyra_mkdirs(serve), 0);
    assert_int_equal(it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    snprintf(serve, sizeof serve, "%s/serve", tmp);
    assert_int_equal(it_install_model(serve, "tiny.gguf", "tiny.gguf", SIZE_MAX), 0);
    assert_int_equal(start_pull_server(serve), 0);

    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "LYRA_HF_ENDPOINT=http://127.0.0.1:%d/hf", pull_port);
    const char *env[] = {"LYRA_AUTH_ENABLED=true",
                         "LYRA_ADMIN_KEY=" ADMIN_KEY,
                         "HF_TOKEN=" HF_SECRET,
                         endpoint,
                         "LYRA_LOG_LEVEL=debug",
                         "LYRA_AUTH_MAX_FAILURES=1000",
                         NULL};
    if (it_server_start(&srv, home, NULL, env) != 0) {
        char *log = lyra_read_file(srv.log_path, NULL);
        fail_msg("lyra serve did not start:\n%s", log ? log : "");
    }
    add_secret("LYRA_ADMIN_KEY", ADMIN_KEY);
    add_secret("HF_TOKEN", HF_SECRET);

    char op[80], user[80], viewer[80], expiring[80], revoked[80], revoked_id[64];
    make_key("{\"role\":\"operator\",\"label\":\"it_secrets operator\"}", op, sizeof op, NULL, 0);
    add_secret("operator key", op);
    json_t *ua = call("POST", "/users", ADMIN_KEY,
                      "{\"name\":\"itsecrets-alice\",\"role\":\"user\",\"key\":true}", 201);
    snprintf(user, sizeof user, "%s", json_string_value(json_object_get(ua, "key")));
    json_decref(ua);
    add_secret("user key", user);
    make_key("{\"role\":\"viewer\"}", viewer, sizeof viewer, NULL, 0);
    add_secret("viewer key", viewer);
    /* Used at once, while it is good (3 s: a loaded machine is slow). */
    json_t *ek = call("POST", "/keys", ADMIN_KEY,
                      "{\"principal\":\"itsecrets-alice\",\"label\":\"expires\",\"expires_in\":3}", 201);
    snprintf(expiring, sizeof expiring, "%s", json_string_value(json_object_get(ek, "key")));
    int64_t expires_ms = json_integer_value(json_object_get(ek, "expires_ms"));
    json_decref(ek);
    add_secret("expiring key", expiring);
    json_decref(call("GET", "/status", expiring, NULL, 200));
    make_key("{\"principal\":\"itsecrets-alice\",\"label\":\"revoked\"}", revoked, sizeof revoked, revoked_id,
             sizeof revoked_id);
    add_secret("revoked key", revoked);

    /* Good use. */
    char *answers = calloc(1, 1);
    json_decref(
        call("POST", "/v1/chat/completions", user,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":4}",
             200));
    json_decref(call("POST", "/chat", user, "{\"model\":\"tiny\",\"message\":\"hello again\"}", 200));
    json_decref(call("GET", "/conversations", user, NULL, 200));
    json_decref(call("GET", "/status", revoked, NULL, 200));
    json_decref(call("POST", "/models/tiny/load", op, "{}", 200));
    json_decref(get_kept("/status", viewer, &answers));
    json_decref(get_kept("/status", ADMIN_KEY, &answers));
    char *metrics = NULL;
    json_decref(call_text("GET", "/metrics", viewer, NULL, 200, &metrics));
    assert_non_null(strstr(metrics, "lyra_"));
    append(&answers, metrics);
    free(metrics);

    /* Bad use. */
    expect_error("GET", "/metrics", user, NULL, 403, "forbidden");
    expect_error("POST", "/keys", op, "{\"role\":\"admin\"}", 403, "forbidden");
    expect_error("GET", "/status", UNKNOWN_KEY, NULL, 401, "invalid_key");
    /* A real key inside a wrong one, and in a malformed header. */
    char wrong[96];
    snprintf(wrong, sizeof wrong, "%s-and-more", user);
    expect_error("GET", "/status", wrong, NULL, 401, "invalid_key");
    struct it_response r;
    char extra[160];
    snprintf(extra, sizeof extra, "Authorization: Basic %s\r\n", op);
    assert_int_equal(request_h("GET", "/status", NULL, extra, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    it_response_free(&r);
    char path[160];
    snprintf(path, sizeof path, "/keys/%s", revoked_id);
    json_decref(call("DELETE", path, ADMIN_KEY, NULL, 200));
    expect_error("GET", "/status", revoked, NULL, 401, "revoked_key");
    while (lyra_wall_ms() <= expires_ms + 50)
        usleep(50 * 1000);
    expect_error("GET", "/status", expiring, NULL, 401, "expired_key");
    /* A key in the URL is refused: the URL must not be logged with it. */
    snprintf(path, sizeof path, "/status?api_key=%s", viewer);
    expect_error("GET", path, NULL, NULL, 400, "key_in_query");
    snprintf(path, sizeof path, "/v1/models?token=%s&x=1", user);
    expect_error("GET", path, NULL, NULL, 400, "key_in_query");
    /* A key in a header Lyra does not read, and as a subprotocol. */
    snprintf(extra, sizeof extra, "X-Api-Key: %s\r\n", op);
    assert_int_equal(request_h("GET", "/status", NULL, extra, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    it_response_free(&r);
    char protocols[160];
    snprintf(protocols, sizeof protocols, "lyra-events, lyra.bearer.%s", viewer);
    assert_int_equal(ws_handshake_status(protocols), 101);
    snprintf(protocols, sizeof protocols, "lyra-events, lyra.bearer.%s", revoked);
    assert_int_equal(ws_handshake_status(protocols), 401);

    /* A refused `lyra login` (the revoked key), then a good one. */
    char cfg[128], keyfile[160], url[64], env_cfg[160];
    snprintf(cfg, sizeof cfg, "%s/cfg", tmp);
    snprintf(keyfile, sizeof keyfile, "%s/key.txt", tmp);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    snprintf(env_cfg, sizeof env_cfg, "LYRA_CONFIG_DIR=%s", cfg);
    it_write_file(keyfile, revoked);
    const char *login[] = {"login", "--url", url, "--api-key-file", keyfile, NULL};
    const char *cli_env[] = {env_cfg, NULL};
    char *out = NULL;
    assert_int_equal(it_run_lyra(login, cli_env, &out), 1);
    assert_int_equal(leaks_in("the output of a refused lyra login", out, strlen(out)), 0);
    free(out);
    it_write_file(keyfile, user);
    assert_int_equal(it_run_lyra(login, cli_env, &out), 0);
    assert_int_equal(leaks_in("the output of lyra login", out, strlen(out)), 0);
    free(out);

    /* A pull that needs HF_TOKEN (the server saw it: it was used), and one
     * that fails (its error message is stored with the job). */
    assert_string_equal(pull_and_wait(op, "tiny.gguf", "pulled", &answers), "succeeded");
    const char *failed = pull_and_wait(op, "missing.gguf", "missing", &answers);
    assert_string_not_equal(failed, "succeeded");
    struct it_response pl;
    char req[256];
    int n = snprintf(req, sizeof req, "GET /__log HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    assert_int_equal(it_raw(pull_port, req, (size_t)n, &pl), 0);
    assert_non_null(strstr(pl.body, "Bearer " HF_SECRET));
    it_response_free(&pl);

    /* What the API shows. */
    json_decref(get_kept("/events/recent?since=0&limit=100000", ADMIN_KEY, &answers));
    json_decref(get_kept("/events/recent?since=0&limit=100000", op, &answers));
    json_decref(get_kept("/events/recent?since=0&limit=100000", user, &answers));
    json_decref(get_kept("/audit?limit=1000", ADMIN_KEY, &answers));
    json_decref(get_kept("/keys", ADMIN_KEY, &answers));
    json_decref(get_kept("/users", ADMIN_KEY, &answers));
    json_decref(get_kept("/jobs", op, &answers));
    json_decref(get_kept("/traces", ADMIN_KEY, &answers));
    json_decref(get_kept("/permissions", user, &answers));
    /* The answers carry what was done (a control: they are the real ones). */
    assert_non_null(strstr(answers, "auth.failed"));
    assert_non_null(strstr(answers, "itsecrets-alice"));
    int leaks = leaks_in("the API answers", answers, strlen(answers));
    free(answers);

    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    leaks += scan_tree(home, NULL, "itsecrets-alice");
    assert_true(walk.saw_db);
    assert_true(walk.control_found);
    size_t log_len = 0;
    char *log = lyra_read_file(srv.log_path, &log_len);
    assert_non_null(log);
    assert_true(log_len > 1000); /* debug level: it did write */
    leaks += leaks_in("the daemon's stdout/stderr", log, log_len);
    free(log);
    assert_int_equal(leaks, 0);
}

/* --- case 2 ---------------------------------------------------------- */

static void expect_mode_0600(const char *dir, const char *name, bool required)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (stat(path, &st) != 0) {
        if (required)
            fail_msg("%s is missing", path);
        return;
    }
    if ((st.st_mode & 0777) != 0600)
        fail_msg("%s has mode %03o, wanted 0600", path, st.st_mode & 0777);
}

/* The first generated key ("lyra_" + 43 base62) in text. */
static bool find_generated_key(const char *text, char out[64])
{
    for (const char *p = text; (p = strstr(p, "lyra_")); p++) {
        int n = 0;
        while (n < 44 && isalnum((unsigned char)p[5 + n]))
            n++;
        if (n == 43 && (p == text || !isalnum((unsigned char)p[-1]))) {
            memcpy(out, p, 48);
            out[48] = '\0';
            return true;
        }
    }
    return false;
}

static void test_generated_key_shown_once(void **state)
{
    (void)state;
    it_mkdtemp(home, sizeof home);
    const char *env[] = {"LYRA_AUTH_ENABLED=true", "LYRA_LOG_LEVEL=debug", NULL};
    assert_int_equal(it_server_start(&srv, home, NULL, env), 0);
    char *log = lyra_read_file(srv.log_path, NULL);
    char key[64];
    assert_non_null(log);
    if (!find_generated_key(log, key))
        fail_msg("no generated key on the daemon's stderr:\n%s", log);
    free(log);
    add_secret("generated admin key", key);

    char path[160];
    snprintf(path, sizeof path, "%s/admin.key", home);
    char *file = lyra_read_file(path, NULL);
    assert_non_null(file);
    assert_int_equal(strcspn(file, "\r\n"), 48);
    assert_memory_equal(file, key, 48);
    free(file);
    expect_mode_0600(home, "admin.key", true);
    expect_mode_0600(home, "auth.secret", true);
    expect_mode_0600(home, "lyra.db", true);

    /* It works, and using it writes it nowhere. */
    json_t *j = call("GET", "/permissions", key, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "caller"), "principal")),
                        "admin");
    json_decref(j);
    char op[80];
    json_t *k = call("POST", "/keys", key, "{\"role\":\"operator\",\"label\":\"case2\"}", 201);
    snprintf(op, sizeof op, "%s", json_string_value(json_object_get(k, "key")));
    json_decref(k);
    add_secret("operator key", op);
    json_decref(call("POST", "/models/nonexistent/load", op, "{}", 404));
    expect_error("GET", "/status", NULL, NULL, 401, "missing_key");
    char *audit = NULL;
    json_decref(call_text("GET", "/audit", key, NULL, 200, &audit));
    assert_int_equal(leaks_in("GET /audit", audit, strlen(audit)), 0);
    free(audit);
    expect_mode_0600(home, "lyra.db-wal", false);

    /* A restart does not print it again (the log is appended to). */
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    assert_int_equal(it_server_start(&srv, home, NULL, env), 0);
    json_decref(call("GET", "/status", key, NULL, 200));
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);

    size_t len = 0;
    log = lyra_read_file(srv.log_path, &len);
    assert_non_null(log);
    size_t shown = count_in(log, len, key);
    if (shown != 1)
        fail_msg("the generated key occurs %zu times in the daemon's stderr, wanted 1", shown);
    /* No piece of it elsewhere either (the one line has each piece once). */
    size_t pieces;
    assert_non_null(secret_piece(0, log, len, &pieces));
    assert_int_equal(pieces, 1);
    assert_null(secret_piece(1, log, len, &pieces));
    free(log);
    snprintf(path, sizeof path, "%s/admin.key", home);
    int leaks = scan_tree(home, path, "case2");
    assert_true(walk.saw_db);
    assert_true(walk.control_found);
    assert_int_equal(leaks, 0);
    expect_mode_0600(home, "admin.key", true);
    expect_mode_0600(home, "auth.secret", true);
    expect_mode_0600(home, "lyra.db", true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_no_key_nor_token_written, teardown),
        cmocka_unit_test_teardown(test_generated_key_shown_once, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
