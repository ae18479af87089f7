/* harness.c — see harness.h. */
#include "harness.h"

#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *lyra_bin(void)
{
    const char *b = getenv("LYRA_BIN");
    return b ? b : "build/lyra";
}

int it_install_model(const char *dir, const char *name, const char *as, size_t max_bytes)
{
    char from[512], to[512];
    const char *models = getenv("LYRA_TEST_MODELS");
    snprintf(from, sizeof from, "%s/%s", models ? models : "build/models", name);
    snprintf(to, sizeof to, "%s/%s", dir, as);
    size_t len = 0;
    char *data = lyra_read_file(from, &len);
    if (!data)
        return -1;
    int rc = lyra_write_file_atomic(to, data, len < max_bytes ? len : max_bytes, 0644);
    free(data);
    return rc < 0 ? -1 : 0;
}

void it_mkdtemp(char *out, size_t len)
{
    snprintf(out, len, "/tmp/lyra-it-XXXXXX");
    if (!mkdtemp(out))
        abort();
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void it_rmrf(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void it_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        abort();
    fputs(text, f);
    fclose(f);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Builds envp = environ + extra (extra entries override same-named ones). */
static char **make_env(const char *const *extra)
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (extra && extra[m])
        m++;
    char **env = calloc(n + m + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool overridden = false;
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        for (size_t j = 0; j < m; j++)
            if (strncmp(extra[j], environ[i], klen) == 0 && extra[j][klen] == '=')
                overridden = true;
        if (!overridden)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        env[k++] = (char *)extra[j];
    /* ctest runs two test programs at once on CI's two cores: workers with
     * one thread each, so that OpenMP's spinning threads never fight over a
     * core (a 250-token answer then took 15 s instead of 0.3 s).  A test or
     * the environment may say otherwise. */
    bool threads_given = getenv("LYRA_MODELS_THREADS") != NULL;
    for (size_t j = 0; j < m; j++)
        threads_given |= strncmp(extra[j], "LYRA_MODELS_THREADS=", 20) == 0;
    /* The tests of everything but RBAC act as admin without a key (the
     * default anonymous role is user); a test of auth says otherwise. */
    bool role_given = getenv("LYRA_AUTH_ANONYMOUS_ROLE") != NULL;
    for (size_t j = 0; j < m; j++)
        role_given |= strncmp(extra[j], "LYRA_AUTH_ANONYMOUS_ROLE=", 25) == 0;
    env = realloc(env, (n + m + 3) * sizeof *env);
    if (!threads_given)
        env[k++] = (char *)"LYRA_MODELS_THREADS=1";
    if (!role_given)
        env[k++] = (char *)"LYRA_AUTH_ANONYMOUS_ROLE=admin";
    env[k] = NULL;
    return env;
}

static int read_port(const char *home)
{
    char path[400];
    snprintf(path, sizeof path, "%s/serve.json", home);
    json_t *j = json_load_file(path, 0, NULL);
    int port = j ? (int)json_integer_value(json_object_get(j, "port")) : 0;
    json_decref(j);
    return port;
}

int it_server_start(struct it_server *s, const char *home, const char *const *args, const char *const *env)
{
    memset(s, 0, sizeof *s);
    s->exit_status = -1;
    if (home) {
        snprintf(s->home, sizeof s->home, "%s", home);
    } else {
        it_mkdtemp(s->home, sizeof s->home);
        s->own_home = true;
    }
    snprintf(s->log_path, sizeof s->log_path, "%s.log", s->home);
    char state[400];
    snprintf(state, sizeof state, "%s/serve.json", s->home);
    unlink(state);

    const char *argv[64] = {lyra_bin(), "serve", "--home", s->home, "--port", "0"};
    int argc = 6;
    for (int i = 0; args && args[i] && argc < 62; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    char **envp = make_env(env);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execve(argv[0], (char **)argv, envp);
        _exit(127);
    }
    free(envp);
    s->pid = pid;
    for (int i = 0; i < 1500; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            s->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return -1;
        }
        s->port = read_port(s->home);
        if (s->port > 0)
            return 0;
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* Prints the daemon's log (its sanitizer reports, its last words) when it
 * ended in an unexpected way. */
static void show_log(const struct it_server *s, int status)
{
    char *log = lyra_read_file(s->log_path, NULL);
    size_t len = log ? strlen(log) : 0;
    fprintf(stderr, "lyra serve ended with status %d; the end of its log:\n%s\n", status,
            log ? log + (len > 12000 ? len - 12000 : 0) : "(none)");
    free(log);
}

int it_server_stop(struct it_server *s, int sig)
{
    if (s->pid <= 0)
        return -1;
    kill(s->pid, sig);
    for (int i = 0; i < 3000; i++) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (rc != 0 && sig != SIGKILL)
                show_log(s, rc);
            return rc;
        }
        sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

void it_server_cleanup(struct it_server *s)
{
    if (s->pid > 0)
        it_server_stop(s, SIGKILL);
    if (s->own_home)
        it_rmrf(s->home);
    unlink(s->log_path);
}

int it_run_lyra(const char *const *args, const char *const *env, char **output)
{
    int pipefd[2];
    if (pipe(pipefd) < 0)
        return -1;
    const char *argv[64] = {lyra_bin()};
    int argc = 1;
    for (int i = 0; args && args[i] && argc < 62; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    char **envp = make_env(env);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        close(pipefd[1]);
        execve(argv[0], (char **)argv, envp);
        _exit(127);
    }
    free(envp);
    close(pipefd[1]);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(pipefd[0], buf + n, cap - n - 1);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (output)
        *output = buf;
    else
        free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int it_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Decodes a chunked body in place; returns the decoded length. */
static size_t dechunk(char *body, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        char *end;
        unsigned long n = strtoul(body + in, &end, 16);
        char *line_end = strstr(body + in, "\r\n");
        if (!line_end || n == 0)
            break;
        in = (size_t)(line_end - body) + 2;
        if (in + n > len)
            n = len - in;
        memmove(body + out, body + in, n);
        out += n;
        in += n + 2;
    }
    body[out] = '\0';
    return out;
}

int it_read_response(int fd, struct it_response *out)
{
    memset(out, 0, sizeof *out);
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    char *head_end = NULL; /* kept as an offset across reallocs: */
    size_t head_off = 0;
    long content_length = -1;
    bool chunked = false;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 30000) <= 0)
            break;
        if (n + 4096 > cap) {
            buf = realloc(buf, cap *= 2);
            if (head_end)
                head_end = buf + head_off;
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        buf[n] = '\0';
        if (!head_end && (head_end = strstr(buf, "\r\n\r\n"))) {
            head_off = (size_t)(head_end - buf);
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            if (cl && cl < head_end)
                content_length = strtol(cl + 17, NULL, 10);
            char *te = strcasestr(buf, "\r\nTransfer-Encoding: chunked");
            chunked = te && te < head_end;
        }
        if (head_end) {
            size_t body_have = n - (size_t)(head_end + 4 - buf);
            if (content_length >= 0 && body_have >= (size_t)content_length)
                break;
            if (chunked && n >= 7 && strstr(buf + (n > head_off + 4 + 8 ? n - 8 : head_off + 2), "\r\n0\r\n\r\n"))
                break;
            if (content_length < 0 && !chunked && strncmp(buf + 9, "204", 3) == 0)
                break;
        }
    }
    if (!head_end) {
        out->head = buf;
        return n == 0 ? -1 : -2;
    }
    size_t head_len = (size_t)(head_end - buf);
    out->head = strndup(buf, head_len + 2);
    out->status = atoi(buf + 9);
    out->body_len = n - head_len - 4;
    out->body = malloc(out->body_len + 1);
    memcpy(out->body, head_end + 4, out->body_len);
    out->body[out->body_len] = '\0';
    if (chunked)
        out->body_len = dechunk(out->body, out->body_len);
    free(buf);
    return 0;
}

int it_raw(int port, const void *data, size_t len, struct it_response *out)
{
    int fd = it_connect(port);
    if (fd < 0)
        return -1;
    int rc = send_all(fd, data, len);
    if (rc == 0)
        rc = it_read_response(fd, out);
    else
        memset(out, 0, sizeof *out);
    close(fd);
    return rc;
}

int it_http(int port, const char *method, const char *path, const char *headers, const char *body,
            struct it_response *out)
{
    char *req = NULL;
    size_t blen = body ? strlen(body) : 0;
    int n = asprintf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%zu\r\n\r\n%s",
                     method, path, headers ? headers : "", "Content-Length: ", blen, body ? body : "");
    if (n < 0)
        return -1;
    int rc = it_raw(port, req, (size_t)n, out);
    free(req);
    return rc;
}

json_t *it_get_json(int port, const char *path, int want_status)
{
    struct it_response r;
    if (it_http(port, "GET", path, NULL, NULL, &r) != 0) {
        fprintf(stderr, "GET %s: no answer\n", path);
        it_response_free(&r);
        return NULL;
    }
    json_t *j = r.status == want_status ? it_json(&r) : NULL;
    if (!j)
        fprintf(stderr, "GET %s: status %d (wanted %d): %s\n", path, r.status, want_status, r.body ? r.body : "");
    it_response_free(&r);
    return j;
}

const char *it_header(const struct it_response *r, const char *name, char *buf, size_t len)
{
    if (!r->head)
        return NULL;
    char pat[128];
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *p = strcasestr(r->head, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    const char *e = strstr(p, "\r\n");
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n >= len)
        n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

json_t *it_json(const struct it_response *r)
{
    return r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
}

void it_response_free(struct it_response *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

int it_post_json(int port, const char *path, const char *body, struct it_response *out)
{
    return it_http(port, "POST", path, "Content-Type: application/json\r\n", body, out);
}

uint64_t it_last_seq(int port)
{
    json_t *j = it_get_json(port, "/status", 200);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(json_object_get(j, "events"), "last_seq"));
    json_decref(j);
    return seq;
}

json_t *it_wait_event(int port, const char *type, uint64_t since, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        char path[256];
        snprintf(path, sizeof path, "/events/recent?since=%llu&types=%s", (unsigned long long)since, type);
        json_t *j = it_get_json(port, path, 200);
        json_t *ev = json_array_get(json_object_get(j, "events"), 0);
        if (ev) {
            json_incref(ev);
            json_decref(j);
            return ev;
        }
        json_decref(j);
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "no %s event within %d ms\n", type, timeout_ms);
    return NULL;
}

json_t *it_status_model(int port, const char *name)
{
    json_t *j = it_get_json(port, "/status", 200);
    json_t *found = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) {
        const char *n = json_string_value(json_object_get(m, "name"));
        if (n && strcmp(n, name) == 0)
            found = json_incref(m);
    }
    json_decref(j);
    return found;
}

const char *it_error_code(json_t *body)
{
    const char *c = json_string_value(json_object_get(json_object_get(body, "error"), "code"));
    return c ? c : "";
}

int it_trace_generated(int port, const char *id)
{
    char path[256];
    snprintf(path, sizeof path, "/traces?limit=1%s%s", id ? "&id=" : "", id ? id : "");
    json_t *j = it_get_json(port, path, 200);
    json_t *trace = json_array_get(json_object_get(j, "traces"), 0);
    int tokens = -1;
    size_t i;
    json_t *span;
    json_array_foreach(json_object_get(trace, "spans"), i, span) {
        const char *name = json_string_value(json_object_get(span, "name"));
        if (name && strcmp(name, "generation") == 0)
            tokens = (int)json_integer_value(json_object_get(span, "tokens"));
    }
    json_decref(j);
    return tokens;
}

const char *it_model_path(const char *name)
{
    static char path[1024];
    const char *dir = getenv("LYRA_TEST_MODELS");
    char rel[900];
    snprintf(rel, sizeof rel, "%s/%s", dir && *dir ? dir : "build/models", name);
    if (!realpath(rel, path))
        snprintf(path, sizeof path, "%s", rel);
    return path;
}

bool it_in_ci(void)
{
    const char *ci = getenv("CI");
    return ci && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
}
