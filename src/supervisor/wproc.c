/* wproc.c — see wproc.h.
 *
 * Life of a worker: spawn (posix_spawn, so a large daemon forks cheaply and
 * only the kernel runs between fork and exec) → loading → ready → ... →
 * the process exits, is killed, or is stopped → the pidfd becomes readable
 * → what is still in the request socket is read and delivered → on_exit →
 * freed.  Killing never frees anything by itself: the end always goes
 * through the reap, so an op may stop or kill its own worker safely.
 *
 * Outbound frames wait in one frame writer; `marks` remember where each
 * request's frame starts, so that on_handed fires when its first byte left,
 * and the socket is watched for EPOLLOUT only while bytes wait. */
#include "supervisor/wproc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "proto/frame.h"

#define COMP "supervisor"
#define ERRLINE_MAX 4096

struct mark {
    uint64_t id;
    uint64_t start; /* byte offset of the frame in everything queued */
};

struct lyra_wproc {
    struct lyra_loop *loop;
    struct lyra_wproc_ops ops;
    void *ud;
    char model[128];
    pid_t pid;
    int pidfd;                 /* -1: reaped by polling instead */
    int fd, hb_fd, err_fd;     /* request socket, heartbeat socket, stderr pipe */
    bool fd_open, hb_open, err_open;
    struct lyra_frame_reader *rd, *hb_rd;
    struct lyra_frame_writer *wr;
    uint64_t queued_bytes;     /* everything ever queued on wr */
    struct mark *marks;        /* requests not yet handed, in order */
    size_t n_marks, cap_marks;
    uint64_t *inflight;        /* ids sent and not yet answered */
    size_t n_inflight, cap_inflight;
    bool ready, stopping, killed, shut_pending, watching_out;
    enum lyra_wproc_end end;
    char reason[LYRA_ERR_MSG_MAX];
    char *fatal;
    int load_ms, heartbeat_ms, progress_ms, stop_ms;
    int64_t t_start, t_heartbeat, t_progress;
    uint64_t steps;
    struct lyra_timer *tick, *stop_timer, *reap_timer;
    int stop_stage;
    char errline[ERRLINE_MAX];
    size_t errlen;
    double err_tokens;         /* lines the worker may still log now (token bucket) */
    int64_t err_refill_ms;     /* when the bucket was last refilled */
    uint64_t err_dropped;      /* lines dropped since the last report */
    int64_t err_reported_ms;
    bool err_paused;           /* stderr not read for a moment: the worker floods it */
    struct lyra_timer *err_timer;
};

/* ------------------------------------------------------------------ */
/* Environment                                                        */

char **lyra_wproc_environment(char *const *environ_)
{
    static const char *const exact[] = {"PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                                        "LD_LIBRARY_PATH", "LYRA_BACKEND_DIR",
                                        /* test only: fake GPU load failures (docs/gpu.md) */
                                        "LYRA_FAKE_GPU_FAIL_LAYERS"};
    static const char *const prefixes[] = {"LC_",   "LYRA_WORKER_", "GGML_", "CUDA_", "NVIDIA_", "HIP_",
                                           "ROCR_", "HSA_",         "VK_",   "OMP_",  "GOMP_",   "KMP_",
                                           "ASAN_", "UBSAN_",       "TSAN_", "LSAN_"};
    size_t n = 0;
    while (environ_ && environ_[n])
        n++;
    char **out = calloc(n + 1, sizeof *out);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ_[i];
        const char *eq = strchr(e, '=');
        if (!eq)
            continue;
        size_t nl = (size_t)(eq - e);
        bool ok = false;
        for (size_t j = 0; j < sizeof exact / sizeof *exact && !ok; j++)
            ok = strlen(exact[j]) == nl && strncmp(e, exact[j], nl) == 0;
        for (size_t j = 0; j < sizeof prefixes / sizeof *prefixes && !ok; j++)
            ok = strncmp(e, prefixes[j], strlen(prefixes[j])) == 0;
        if (ok)
            out[k++] = (char *)e;
    }
    out[k] = NULL;
    return out;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        lyra_fmt(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
        lyra_fmt(buf, len, "exited with status %d", WEXITSTATUS(status));
    else
        lyra_fmt(buf, len, "ended with wait status %d", status);
}

static bool inflight_has(const struct lyra_wproc *w, uint64_t id)
{
    for (size_t i = 0; i < w->n_inflight; i++)
        if (w->inflight[i] == id)
            return true;
    return false;
}

static void inflight_remove(struct lyra_wproc *w, uint64_t id)
{
    for (size_t i = 0; i < w->n_inflight; i++) {
        if (w->inflight[i] == id) {
            w->inflight[i] = w->inflight[--w->n_inflight];
            return;
        }
    }
}

static void close_channel(struct lyra_wproc *w, int *fd, bool *open)
{
    if (*open) {
        lyra_loop_unwatch(w->loop, *fd);
        *open = false;
    }
}

/* Kills the worker now for `why`; the end is reported when it is reaped.
 * Nothing more is read from its request socket: after a broken promise its
 * frames are not trusted. */
static void kill_now(struct lyra_wproc *w, enum lyra_wproc_end why, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void kill_now(struct lyra_wproc *w, enum lyra_wproc_end why, const char *fmt, ...)
{
    if (w->killed)
        return;
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(w->reason, sizeof w->reason, fmt, ap);
    va_end(ap);
    w->killed = true;
    w->end = why;
    close_channel(w, &w->fd, &w->fd_open);
    kill(w->pid, SIGKILL);
    lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i}", "model", w->model, "pid", (int)w->pid),
             "killing worker for %s: %s", w->model, w->reason);
}

/* ------------------------------------------------------------------ */
/* Output                                                             */

static void on_request_fd(int fd, uint32_t events, void *ud);

static void want_output(struct lyra_wproc *w, bool want)
{
    if (!w->fd_open || want == w->watching_out)
        return;
    w->watching_out = want;
    lyra_loop_watch_events(w->loop, w->fd, EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0));
}

/* Writes what the socket takes; reports requests whose first byte left. */
static void flush_output(struct lyra_wproc *w)
{
    if (!w->fd_open && !w->shut_pending)
        return;
    struct lyra_err err = {0};
    int rc = lyra_frame_writer_send(w->wr, w->fd, &err);
    uint64_t sent = w->queued_bytes - lyra_frame_writer_pending(w->wr);
    size_t k = 0;
    while (k < w->n_marks && w->marks[k].start < sent)
        k++;
    if (k > 0) {
        uint64_t ids[64];
        size_t n = k < 64 ? k : 64;
        for (size_t i = 0; i < n; i++)
            ids[i] = w->marks[i].id;
        memmove(w->marks, w->marks + n, (w->n_marks - n) * sizeof *w->marks);
        w->n_marks -= n;
        for (size_t i = 0; i < n; i++)
            w->ops.on_handed(w, ids[i], w->ud);
        if (n < k) { /* more than 64 at once: the rest on the next pass */
            flush_output(w);
            return;
        }
    }
    if (rc == LYRA_EBUSY) {
        want_output(w, true);
        return;
    }
    want_output(w, false);
    if (rc < 0) {
        /* The worker closed its end or died: the reap will tell why. */
        lyra_log(LYRA_LOG_DEBUG, COMP, NULL, NULL, "worker %d: %s", (int)w->pid, err.msg);
        return;
    }
    if (w->shut_pending) { /* a stop waited for the queue to drain */
        w->shut_pending = false;
        shutdown(w->fd, SHUT_WR);
    }
}

int lyra_wproc_send(struct lyra_wproc *w, uint64_t id, const char *text, size_t len)
{
    if (w->stopping || w->killed || !w->fd_open)
        return LYRA_EUNAVAILABLE;
    if (id != 0 && w->n_marks == w->cap_marks) {
        size_t cap = w->cap_marks ? 2 * w->cap_marks : 16;
        struct mark *m = realloc(w->marks, cap * sizeof *m);
        if (!m)
            return LYRA_ENOMEM;
        w->marks = m;
        w->cap_marks = cap;
    }
    if (id != 0 && w->n_inflight == w->cap_inflight) {
        size_t cap = w->cap_inflight ? 2 * w->cap_inflight : 16;
        uint64_t *v = realloc(w->inflight, cap * sizeof *v);
        if (!v)
            return LYRA_ENOMEM;
        w->inflight = v;
        w->cap_inflight = cap;
    }
    size_t before = lyra_frame_writer_pending(w->wr);
    int rc = lyra_frame_writer_add_raw(w->wr, text, len, NULL);
    if (rc < 0)
        return rc;
    uint64_t start = w->queued_bytes;
    w->queued_bytes += lyra_frame_writer_pending(w->wr) - before;
    if (id != 0) {
        if (w->n_inflight == 0)
            w->t_progress = lyra_now_ms(); /* the progress clock starts with the work */
        w->inflight[w->n_inflight++] = id;
        w->marks[w->n_marks++] = (struct mark){id, start};
    }
    flush_output(w);
    return 0;
}

void lyra_wproc_cancel(struct lyra_wproc *w, uint64_t id)
{
    char text[64];
    size_t n = lyra_msg_cancel_raw(text, sizeof text, id);
    if (n > 0 && w->fd_open && !w->killed && lyra_frame_writer_add_raw(w->wr, text, n, NULL) == 0) {
        w->queued_bytes += LYRA_FRAME_HEADER + n;
        flush_output(w);
    }
}

/* ------------------------------------------------------------------ */
/* Input                                                              */

static void handle_frame(struct lyra_wproc *w, json_t *frame)
{
    enum lyra_msg_kind kind;
    uint64_t id;
    struct lyra_err err = {0};
    if (lyra_msg_check_worker(frame, &kind, &id, &err) < 0) {
        kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: %s", err.msg);
        return;
    }
    switch (kind) {
    case LYRA_MSG_READY:
        if (w->ready) {
            kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: a second \"ready\"");
            return;
        }
        w->ready = true;
        w->ops.on_ready(w, frame, w->ud);
        return;
    case LYRA_MSG_FATAL:
        if (!w->fatal) {
            const char *m = json_string_value(json_object_get(frame, "message"));
            w->fatal = strdup(m);
        }
        return;
    case LYRA_MSG_HEARTBEAT:
        kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: a heartbeat on the request socket");
        return;
    default:
        break;
    }
    if (!inflight_has(w, id)) {
        kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: \"%s\" for request %" PRIu64 ", which is not in flight",
                 lyra_msg_name(kind), id);
        return;
    }
    w->t_progress = lyra_now_ms();
    if (lyra_msg_is_terminal(kind))
        inflight_remove(w, id);
    w->ops.on_frame(w, kind, id, frame, w->ud);
}

/* Reads everything the request socket has and handles its frames.  At end
 * of file (or an error) the channel is closed; the reap follows. */
static void read_requests(struct lyra_wproc *w)
{
    struct lyra_err err = {0};
    bool eof = false;
    while (w->fd_open && !eof) {
        int n = lyra_frame_reader_read(w->rd, w->fd, &err);
        if (n == LYRA_EBUSY)
            break;
        if (n <= 0) {
            eof = true;
            if (n < 0 && n != LYRA_EIO)
                kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: %s", err.msg);
        }
        json_t *frame;
        int rc = 0;
        while (w->fd_open && (rc = lyra_frame_reader_next(w->rd, &frame, &err)) == 0 && frame) {
            handle_frame(w, frame);
            json_decref(frame);
        }
        if (w->fd_open && rc < 0)
            kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error: %s", err.msg);
    }
    if (eof && w->fd_open) {
        if (lyra_frame_reader_eof(w->rd, &err) < 0 && !w->stopping)
            lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i}", "model", w->model, "pid", (int)w->pid),
                     "worker closed its socket: %s", err.msg);
        close_channel(w, &w->fd, &w->fd_open);
    }
}

static void on_request_fd(int fd, uint32_t events, void *ud)
{
    struct lyra_wproc *w = ud;
    if (events & EPOLLOUT)
        flush_output(w);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
        read_requests(w);
}

static void on_heartbeat_fd(int fd, uint32_t events, void *ud)
{
    struct lyra_wproc *w = ud;
    struct lyra_err err = {0};
    for (;;) {
        int n = lyra_frame_reader_read(w->hb_rd, w->hb_fd, &err);
        if (n == LYRA_EBUSY)
            break;
        json_t *frame;
        while (lyra_frame_reader_next(w->hb_rd, &frame, &err) == 0 && frame) {
            enum lyra_msg_kind kind;
            uint64_t id;
            if (lyra_msg_check_worker(frame, &kind, &id, &err) < 0 || kind != LYRA_MSG_HEARTBEAT) {
                json_decref(frame);
                kill_now(w, LYRA_WPROC_PROTOCOL, "protocol error on the heartbeat socket: %s",
                         err.msg[0] ? err.msg : "not a heartbeat");
                close_channel(w, &w->hb_fd, &w->hb_open);
                return;
            }
            int64_t now = lyra_now_ms();
            w->t_heartbeat = now;
            uint64_t steps = (uint64_t)json_integer_value(json_object_get(frame, "steps"));
            if (steps != w->steps) {
                w->steps = steps;
                w->t_progress = now;
            }
            json_decref(frame);
        }
        if (n <= 0) { /* the worker is exiting; the reap follows */
            close_channel(w, &w->hb_fd, &w->hb_open);
            return;
        }
    }
}

/* Logs one line of the worker's stderr: its own JSON log lines keep their
 * level and fields; anything else (llama.cpp's verbose log, an abort
 * message, a sanitizer report) is logged as a warning. */
static void relog_line(struct lyra_wproc *w, char *line)
{
    lyra_utf8_scrub(line);
    if (!line[0])
        return;
    json_t *j = line[0] == '{' ? json_loads(line, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(j, "msg"));
    if (!json_is_object(j) || !msg) {
        json_decref(j);
        lyra_log(LYRA_LOG_WARN, "worker", NULL, json_pack("{s:s, s:i}", "model", w->model, "pid", (int)w->pid),
                 "%s", line);
        return;
    }
    const char *lvl = json_string_value(json_object_get(j, "level"));
    enum lyra_log_level level = !lvl                       ? LYRA_LOG_INFO
                                : strcmp(lvl, "debug") == 0 ? LYRA_LOG_DEBUG
                                : strcmp(lvl, "warn") == 0  ? LYRA_LOG_WARN
                                : strcmp(lvl, "error") == 0 ? LYRA_LOG_ERROR
                                                            : LYRA_LOG_INFO;
    char text[LYRA_ERR_MSG_MAX * 2];
    lyra_fmt(text, sizeof text, "%s", msg);
    json_object_del(j, "ts");
    json_object_del(j, "level");
    json_object_del(j, "component");
    json_object_del(j, "msg");
    json_object_set_new(j, "model", json_string(w->model));
    json_object_set_new(j, "pid", json_integer(w->pid));
    lyra_log(level, "worker", NULL, j, "%s", text);
}

/* A worker's stderr may not take the supervisor loop from the other
 * workers: at most ERR_LINES_PER_S lines a second are logged (bursts of
 * ERR_BURST), the rest are counted and reported; one wake-up reads at most
 * ERR_READ_MAX bytes, and when the bucket is empty the pipe is not read for
 * ERR_PAUSE_MS (the worker then waits on its own writes, not the daemon). */
#define ERR_LINES_PER_S 100
#define ERR_BURST 1000
#define ERR_READ_MAX (64 * 1024)
#define ERR_PAUSE_MS 100

static void on_stderr_fd(int fd, uint32_t events, void *ud);

static void err_resume(void *ud)
{
    struct lyra_wproc *w = ud;
    w->err_timer = NULL;
    if (w->err_paused && w->err_open) {
        w->err_paused = false;
        lyra_loop_watch_events(w->loop, w->err_fd, EPOLLIN);
    }
}

/* Logs a line if the bucket allows; returns false when it is empty. */
static bool err_line(struct lyra_wproc *w, char *line)
{
    int64_t now = lyra_now_ms();
    w->err_tokens += (double)(now - w->err_refill_ms) * ERR_LINES_PER_S / 1000.0;
    if (w->err_tokens > ERR_BURST)
        w->err_tokens = ERR_BURST;
    w->err_refill_ms = now;
    if (w->err_dropped && now - w->err_reported_ms >= 1000) {
        lyra_log(LYRA_LOG_WARN, "worker", NULL, json_pack("{s:s, s:i, s:I}", "model", w->model, "pid", (int)w->pid,
                                                          "dropped", (json_int_t)w->err_dropped),
                 "%" PRIu64 " line(s) of the worker's stderr dropped (more than %d a second)", w->err_dropped,
                 ERR_LINES_PER_S);
        w->err_dropped = 0;
        w->err_reported_ms = now;
    }
    if (w->err_tokens < 1) {
        w->err_dropped++;
        return false;
    }
    w->err_tokens -= 1;
    relog_line(w, line);
    return true;
}

static void on_stderr_fd(int fd, uint32_t events, void *ud)
{
    struct lyra_wproc *w = ud;
    char buf[4096];
    size_t taken = 0;
    bool flooding = false;
    while (taken < ERR_READ_MAX && !flooding) {
        ssize_t n = read(w->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (w->errlen > 0) {
                w->errline[w->errlen] = '\0';
                err_line(w, w->errline);
                w->errlen = 0;
            }
            close_channel(w, &w->err_fd, &w->err_open);
            return;
        }
        taken += (size_t)n;
        for (ssize_t i = 0; i < n; i++) {
            char c = buf[i];
            if (c == '\n' || w->errlen == ERRLINE_MAX - 1) {
                w->errline[w->errlen] = '\0';
                flooding |= !err_line(w, w->errline);
                w->errlen = 0;
                if (c == '\n')
                    continue;
            }
            w->errline[w->errlen++] = c;
        }
    }
    if (flooding && !w->err_paused && w->err_open) {
        w->err_paused = true;
        lyra_loop_watch_events(w->loop, w->err_fd, 0);
        w->err_timer = lyra_loop_timer(w->loop, ERR_PAUSE_MS, err_resume, w);
    }
}

/* ------------------------------------------------------------------ */
/* The end                                                            */

static void finish(struct lyra_wproc *w, int status)
{
    /* Deliver what the worker wrote before it went (a last "done"). */
    if (w->fd_open && !w->killed)
        read_requests(w);
    if (w->err_open)
        on_stderr_fd(w->err_fd, EPOLLIN, w);
    close_channel(w, &w->fd, &w->fd_open);
    close_channel(w, &w->hb_fd, &w->hb_open);
    close_channel(w, &w->err_fd, &w->err_open);
    if (w->pidfd >= 0)
        lyra_loop_unwatch(w->loop, w->pidfd);
    lyra_loop_timer_cancel(w->loop, w->tick);
    lyra_loop_timer_cancel(w->loop, w->stop_timer);
    lyra_loop_timer_cancel(w->loop, w->reap_timer);
    lyra_loop_timer_cancel(w->loop, w->err_timer);
    if (w->err_dropped)
        lyra_log(LYRA_LOG_WARN, "worker", NULL, json_pack("{s:s, s:i, s:I}", "model", w->model, "pid", (int)w->pid,
                                                          "dropped", (json_int_t)w->err_dropped),
                 "%" PRIu64 " line(s) of the worker's stderr dropped (more than %d a second)", w->err_dropped,
                 ERR_LINES_PER_S);

    char how[160];
    describe_status(status, how, sizeof how);
    struct lyra_wproc_exit e = {.status = status, .was_ready = w->ready, .fatal = w->fatal,
                                .clean = WIFEXITED(status) && WEXITSTATUS(status) == 0};
    if (w->killed) {
        e.why = w->end;
        e.reason = w->reason;
    } else {
        e.why = w->stopping ? LYRA_WPROC_STOPPED : LYRA_WPROC_EXITED;
        lyra_fmt(w->reason, sizeof w->reason, "%s", how);
        e.reason = w->reason;
    }
    w->ops.on_exit(w, &e, w->ud);

    close(w->fd);
    close(w->hb_fd);
    close(w->err_fd);
    if (w->pidfd >= 0)
        close(w->pidfd);
    lyra_frame_reader_free(w->rd);
    lyra_frame_reader_free(w->hb_rd);
    lyra_frame_writer_free(w->wr);
    free(w->marks);
    free(w->inflight);
    free(w->fatal);
    free(w);
}

static bool try_reap(struct lyra_wproc *w)
{
    int status = 0;
    pid_t r;
    while ((r = waitpid(w->pid, &status, WNOHANG)) < 0 && errno == EINTR)
        ;
    if (r != w->pid)
        return false;
    finish(w, status);
    return true;
}

static void on_pidfd(int fd, uint32_t events, void *ud)
{
    try_reap(ud);
}

/* Without pidfds (old kernels) the exit is polled. */
static void reap_poll(void *ud)
{
    struct lyra_wproc *w = ud;
    w->reap_timer = NULL;
    if (!try_reap(w))
        w->reap_timer = lyra_loop_timer(w->loop, 50, reap_poll, w);
}

static int tick_interval(const struct lyra_wproc *w)
{
    int t = w->heartbeat_ms;
    if (w->progress_ms < t)
        t = w->progress_ms;
    if (!w->ready && w->load_ms < t)
        t = w->load_ms;
    t /= 4;
    return t < 20 ? 20 : t > 1000 ? 1000 : t;
}

/* The deadlines, checked on the loop's clock. */
static void tick(void *ud)
{
    struct lyra_wproc *w = ud;
    w->tick = NULL;
    int64_t now = lyra_now_ms();
    if (!w->killed) {
        if (!w->ready && !w->stopping && now - w->t_start > w->load_ms)
            kill_now(w, LYRA_WPROC_LOAD_TIMEOUT, "not ready after %d s (models.load_timeout_s)", w->load_ms / 1000);
        else if (now - w->t_heartbeat > w->heartbeat_ms)
            kill_now(w, LYRA_WPROC_HUNG, "hung: no heartbeat for %.1f s (models.heartbeat_timeout_s)",
                     (double)(now - w->t_heartbeat) / 1000.0);
        else if (w->n_inflight > 0 && now - w->t_progress > w->progress_ms)
            kill_now(w, LYRA_WPROC_HUNG,
                     "hung: no decode step for %.1f s with %zu request(s) in flight (models.progress_timeout_s)",
                     (double)(now - w->t_progress) / 1000.0, w->n_inflight);
    }
    if (!w->killed)
        w->tick = lyra_loop_timer(w->loop, tick_interval(w), tick, w);
}

static void stop_step(void *ud)
{
    struct lyra_wproc *w = ud;
    w->stop_timer = NULL;
    if (w->killed)
        return;
    if (++w->stop_stage == 1) {
        lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i}", "model", w->model, "pid", (int)w->pid),
                 "worker for %s did not exit after EOF: SIGTERM", w->model);
        kill(w->pid, SIGTERM);
        w->stop_timer = lyra_loop_timer(w->loop, w->stop_ms, stop_step, w);
    } else {
        lyra_log(LYRA_LOG_WARN, COMP, NULL, json_pack("{s:s, s:i}", "model", w->model, "pid", (int)w->pid),
                 "worker for %s did not exit after SIGTERM: SIGKILL", w->model);
        kill(w->pid, SIGKILL);
    }
}

void lyra_wproc_stop(struct lyra_wproc *w, const char *reason)
{
    if (w->stopping || w->killed)
        return;
    w->stopping = true;
    lyra_log(LYRA_LOG_INFO, COMP, NULL, json_pack("{s:s, s:i, s:s}", "model", w->model, "pid", (int)w->pid,
                                                  "reason", reason ? reason : "requested"),
             "stopping worker for %s (%s)", w->model, reason ? reason : "requested");
    if (lyra_frame_writer_pending(w->wr) > 0)
        w->shut_pending = true; /* EOF once what is queued (cancels) is out */
    else
        shutdown(w->fd, SHUT_WR);
    w->stop_timer = lyra_loop_timer(w->loop, w->stop_ms, stop_step, w);
}

void lyra_wproc_kill(struct lyra_wproc *w)
{
    if (w->killed)
        return;
    if (!w->stopping)
        lyra_wproc_stop(w, "shutdown");
    lyra_loop_timer_cancel(w->loop, w->stop_timer);
    w->stop_timer = NULL;
    kill(w->pid, SIGKILL); /* still reported as stopped: it was asked to go */
}

pid_t lyra_wproc_pid(const struct lyra_wproc *w)
{
    return w->pid;
}

/* ------------------------------------------------------------------ */
/* Spawn                                                              */

/* Moves fd above the descriptors the child maps (0-4), keeping CLOEXEC. */
static int high_fd(int fd)
{
    if (fd > 4)
        return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    close(fd);
    return h;
}

int lyra_wproc_spawn(struct lyra_loop *loop, const struct lyra_wproc_spec *spec, const struct lyra_wproc_ops *ops,
                     void *ud, struct lyra_wproc **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_wproc *w = calloc(1, sizeof *w);
    if (!w)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    w->loop = loop;
    w->ops = *ops;
    w->ud = ud;
    w->pidfd = w->fd = w->hb_fd = w->err_fd = -1;
    lyra_fmt(w->model, sizeof w->model, "%s", spec->model);
    w->load_ms = spec->load_timeout_ms > 0 ? spec->load_timeout_ms : 120000;
    w->heartbeat_ms = spec->heartbeat_timeout_ms > 0 ? spec->heartbeat_timeout_ms : 10000;
    w->progress_ms = spec->progress_timeout_ms > 0 ? spec->progress_timeout_ms : 60000;
    w->stop_ms = spec->stop_timeout_ms > 0 ? spec->stop_timeout_ms : 5000;
    w->rd = lyra_frame_reader_new();
    w->hb_rd = lyra_frame_reader_new();
    w->wr = lyra_frame_writer_new();

    int sv[2] = {-1, -1}, hv[2] = {-1, -1}, ep[2] = {-1, -1};
    int rc = 0;
    if (!w->rd || !w->hb_rd || !w->wr) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, hv) < 0 ||
        pipe2(ep, O_CLOEXEC | O_NONBLOCK) < 0) {
        rc = lyra_err_set(err, LYRA_EIO, "cannot create the worker's channels: %s", strerror(errno));
        goto fail;
    }
    /* The child's ends are blocking: the worker sets what it needs. */
    sv[1] = high_fd(sv[1]);
    hv[1] = high_fd(hv[1]);
    ep[1] = high_fd(ep[1]);
    fcntl(sv[1], F_SETFL, 0);
    fcntl(hv[1], F_SETFL, 0);
    fcntl(ep[1], F_SETFL, 0);

    /* Progress reaches the daemon only with heartbeats: beat well within
     * both the heartbeat and the progress deadline. */
    int hb_interval = (w->heartbeat_ms < w->progress_ms ? w->heartbeat_ms : w->progress_ms) / 4;
    hb_interval = hb_interval < 20 ? 20 : hb_interval > 1000 ? 1000 : hb_interval;
    char hb_ms[16];
    snprintf(hb_ms, sizeof hb_ms, "%d", hb_interval);
    size_t n_args = 0;
    while (spec->args[n_args])
        n_args++;
    const char **argv = calloc(n_args + 8, sizeof *argv);
    char **envp = lyra_wproc_environment(environ);
    if (!argv || !envp) {
        free(argv);
        free(envp);
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto fail;
    }
    size_t a = 0;
    argv[a++] = spec->exe;
    for (size_t i = 0; i < n_args; i++)
        argv[a++] = spec->args[i];
    argv[a++] = "--fd";
    argv[a++] = "3";
    argv[a++] = "--heartbeat-fd";
    argv[a++] = "4";
    argv[a++] = "--heartbeat-ms";
    argv[a++] = hb_ms;
    argv[a] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, ep[1], 1);
    posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    posix_spawn_file_actions_adddup2(&fa, hv[1], 4);
    posix_spawn_file_actions_addclosefrom_np(&fa, 5);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    /* Its own process group: a terminal's ^C reaches the daemon, which
     * decides when requests are drained and workers stopped. */
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    pid_t pid;
    int src = posix_spawn(&pid, spec->exe, &fa, &attr, (char *const *)argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(argv);
    free(envp);
    close(sv[1]);
    close(hv[1]);
    close(ep[1]);
    sv[1] = hv[1] = ep[1] = -1;
    if (src != 0) {
        rc = lyra_err_set(err, LYRA_EIO, "cannot start %s: %s", spec->exe, strerror(src));
        goto fail;
    }
    w->pid = pid;
    w->fd = sv[0];
    w->hb_fd = hv[0];
    w->err_fd = ep[0];
    w->t_start = w->t_heartbeat = w->t_progress = lyra_now_ms();
    w->err_tokens = ERR_BURST;
    w->err_refill_ms = w->err_reported_ms = w->t_start;
    w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    bool ok = lyra_loop_watch(loop, w->fd, EPOLLIN | EPOLLRDHUP, on_request_fd, w) == 0;
    w->fd_open = ok;
    ok = ok && lyra_loop_watch(loop, w->hb_fd, EPOLLIN, on_heartbeat_fd, w) == 0;
    w->hb_open = ok;
    ok = ok && lyra_loop_watch(loop, w->err_fd, EPOLLIN, on_stderr_fd, w) == 0;
    w->err_open = ok;
    if (ok && w->pidfd >= 0)
        ok = lyra_loop_watch(loop, w->pidfd, EPOLLIN, on_pidfd, w) == 0;
    else if (ok)
        ok = (w->reap_timer = lyra_loop_timer(loop, 50, reap_poll, w)) != NULL;
    if (ok)
        ok = (w->tick = lyra_loop_timer(loop, tick_interval(w), tick, w)) != NULL;
    if (!ok) {
        /* Cannot supervise it: make sure it does not live on unsupervised. */
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        close_channel(w, &w->fd, &w->fd_open);
        close_channel(w, &w->hb_fd, &w->hb_open);
        close_channel(w, &w->err_fd, &w->err_open);
        if (w->pidfd >= 0) {
            lyra_loop_unwatch(loop, w->pidfd);
            close(w->pidfd);
        }
        lyra_loop_timer_cancel(loop, w->reap_timer);
        rc = lyra_err_set(err, LYRA_ENOMEM, "cannot watch the worker's channels");
        goto fail;
    }
    *out = w;
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0)
            close(sv[i]);
        if (hv[i] >= 0)
            close(hv[i]);
        if (ep[i] >= 0)
            close(ep[i]);
    }
    lyra_frame_reader_free(w->rd);
    lyra_frame_reader_free(w->hb_rd);
    lyra_frame_writer_free(w->wr);
    free(w);
    return rc;
}
