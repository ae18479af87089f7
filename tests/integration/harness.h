/* harness.h — black-box helpers for integration tests: start the real
 * `lyra serve` ($LYRA_BIN) on a free loopback port with a temporary
 * LYRA_HOME, and talk raw HTTP/1.1 to it over loopback sockets. */
#ifndef LYRA_IT_HARNESS_H
#define LYRA_IT_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct it_server {
    pid_t pid;
    int port;
    char home[256];
    char log_path[300];
    bool own_home;
    int exit_status;  /* when it_server_start saw the daemon exit: its status; else -1 */
};

/* Starts `lyra serve --home HOME --port 0 ARGS...` with extra environment
 * entries ("KEY=value", NULL-terminated, may be NULL) and waits until
 * $HOME/serve.json names its port.  `home` NULL makes a fresh temporary one.
 * Returns 0, or -1 if the daemon exited (s->exit_status says how; its output
 * stays in s->log_path) or did not come up in 15 s. */
int it_server_start(struct it_server *s, const char *home, const char *const *args, const char *const *env);

/* Sends `sig`, waits for exit and returns the exit status (128+N when killed
 * by signal N, -1 on timeout). */
int it_server_stop(struct it_server *s, int sig);

/* Removes the temporary home (if the harness made it). */
void it_server_cleanup(struct it_server *s);

/* Runs `lyra ARGS...` to completion with the given env additions, captures
 * stdout+stderr into *output (caller frees) and returns the exit status. */
int it_run_lyra(const char *const *args, const char *const *env, char **output);

/* Copies the generated test model `name` ("tiny.gguf", from
 * $LYRA_TEST_MODELS, default build/models) into `dir` as `as`, keeping at
 * most max_bytes (SIZE_MAX: the whole file; fewer makes a truncated model).
 * Returns 0, or -1 when the model cannot be read or written. */
int it_install_model(const char *dir, const char *name, const char *as, size_t max_bytes);

/* Makes a fresh temporary directory (caller removes with it_rmrf). */
void it_mkdtemp(char *out, size_t len);
void it_rmrf(const char *path);
void it_write_file(const char *path, const char *text);

struct it_response {
    int status;
    char *head;       /* status line + headers, NUL-terminated */
    char *body;       /* NUL-terminated */
    size_t body_len;
};

/* One request on a fresh connection ("Connection: close" is added).
 * `headers` are extra header lines each ending in \r\n (may be NULL). */
int it_http(int port, const char *method, const char *path, const char *headers, const char *body,
            struct it_response *out);
/* Sends raw bytes on a fresh connection and reads the response. */
int it_raw(int port, const void *data, size_t len, struct it_response *out);
/* Reads one response from a connected socket. */
int it_read_response(int fd, struct it_response *out);
int it_connect(int port);
/* GET path on a fresh connection; returns the JSON body (caller decrefs),
 * or NULL after printing why (no answer, another status, not JSON). */
json_t *it_get_json(int port, const char *path, int want_status);
/* A header's value, copied into buf; NULL when absent. */
const char *it_header(const struct it_response *r, const char *name, char *buf, size_t len);
/* The body parsed as JSON (caller decrefs), NULL if not JSON. */
json_t *it_json(const struct it_response *r);
void it_response_free(struct it_response *r);

/* POST body as application/json on a fresh connection.  Returns 0 when a
 * response arrived (then free *out). */
int it_post_json(int port, const char *path, const char *body, struct it_response *out);

/* Waits up to timeout_ms for an event of `type` with seq > since (polling
 * /events/recent: state, not sleeps).  Returns the event (caller decrefs)
 * or NULL. */
json_t *it_wait_event(int port, const char *type, uint64_t since, int timeout_ms);

/* The last event seq the daemon published (for it_wait_event's `since`). */
uint64_t it_last_seq(int port);

/* The /status entry of a resident model (caller decrefs), or NULL. */
json_t *it_status_model(int port, const char *name);

/* The error code of a JSON error body ({"error":{"code":...}}), or "" */
const char *it_error_code(json_t *body);

#endif
