/* wproc.h — one supervised `lyra worker` process, driven by the supervisor
 * loop (core/loop.h).
 *
 * A wproc owns the process and its three channels: the request socket
 * (frames both ways, non-blocking, with an outbound queue), the heartbeat
 * socket (the worker's heartbeat thread reports every interval, whatever
 * its decoding thread is doing) and the stderr pipe (each line is logged
 * again with the model and pid, so the daemon's log holds everything).  The
 * worker gets stdin from /dev/null, its own process group, an empty signal
 * mask, no inherited descriptors but these, and an environment reduced to
 * what llama.cpp and the loader need (no secrets).
 *
 * Every frame the worker sends is checked (proto/messages.h) before it is
 * handed on: a malformed frame, one about a request that is not in flight,
 * or a second "ready" is a protocol error — logged with the reason, the
 * worker killed.  Deadlines run on the loop's clock: "ready" within the load
 * timeout; a heartbeat within the heartbeat timeout; while requests are in
 * flight, progress (a decode step counted by the heartbeat, or any frame)
 * within the progress timeout.  A worker that misses one is killed with
 * SIGKILL.  lyra_wproc_stop() escalates on the same clock: EOF on the
 * request socket, then SIGTERM, then SIGKILL, `stop_timeout_ms` apart.
 *
 * The owner learns everything through ops, always on the loop thread, and
 * last of all through on_exit, after the process was reaped and every frame
 * it sent was delivered.  The wproc is freed right after on_exit returns.
 *
 * Thread-safety: everything here runs on the loop thread only. */
#ifndef LYRA_WPROC_H
#define LYRA_WPROC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/error.h"
#include "core/loop.h"
#include "proto/messages.h"

struct lyra_wproc;

struct lyra_wproc_spec {
    const char *exe;          /* the program (the lyra binary) */
    const char *const *args;  /* argv after argv[0] ("worker", "--model", ...), NULL-terminated;
                                 "--fd 3 --heartbeat-fd 4 --heartbeat-ms N" are appended */
    const char *model;        /* name, for logs and messages */
    int load_timeout_ms;      /* "ready" (or "fatal") by then */
    int heartbeat_timeout_ms; /* silence longer than this = hung */
    int progress_timeout_ms;  /* requests in flight and no progress this long = hung */
    int stop_timeout_ms;      /* each step of lyra_wproc_stop's escalation */
};

enum lyra_wproc_end {
    LYRA_WPROC_EXITED,       /* it ended by itself (exit status or a signal not ours) */
    LYRA_WPROC_STOPPED,      /* lyra_wproc_stop() ended it */
    LYRA_WPROC_HUNG,         /* missed its heartbeat or progress deadline: killed */
    LYRA_WPROC_LOAD_TIMEOUT, /* no "ready" within the load timeout: killed */
    LYRA_WPROC_PROTOCOL,     /* sent a frame that breaks the protocol: killed */
};

struct lyra_wproc_exit {
    enum lyra_wproc_end why;
    int status;              /* waitpid() status */
    bool clean;              /* exited with status 0 */
    bool was_ready;          /* "ready" had arrived */
    const char *reason;      /* "exited with status 1", "killed by signal 9 (Killed)",
                                "no heartbeat for 10 s", "protocol error: ..." (valid UTF-8) */
    const char *fatal;       /* the worker's own "fatal" message, or NULL */
};

struct lyra_wproc_ops {
    /* "ready" arrived (frame borrowed). */
    void (*on_ready)(struct lyra_wproc *w, const json_t *frame, void *ud);
    /* A checked frame about request `id` (borrowed). */
    void (*on_frame)(struct lyra_wproc *w, enum lyra_msg_kind kind, uint64_t id, const json_t *frame, void *ud);
    /* The first byte of request `id`'s frame reached the socket: from now
     * on the worker may have acted on it (not safe to retry elsewhere). */
    void (*on_handed)(struct lyra_wproc *w, uint64_t id, void *ud);
    /* The process is gone (reaped); the last call.  `e` is borrowed. */
    void (*on_exit)(struct lyra_wproc *w, const struct lyra_wproc_exit *e, void *ud);
};

/* Starts the worker.  Returns 0 with *out, or LYRA_EIO / LYRA_ENOMEM with
 * err naming the failed step; then no op is ever called. */
int lyra_wproc_spawn(struct lyra_loop *loop, const struct lyra_wproc_spec *spec, const struct lyra_wproc_ops *ops,
                     void *ud, struct lyra_wproc **out, struct lyra_err *err);

/* Queues the serialised frame text[0..len) (copied).  When `id` is not 0
 * the frame is a request whose terminal reply is then expected (id must not
 * be in flight already).  Returns 0, LYRA_ETOOBIG (over the frame limit:
 * nothing queued), LYRA_EUNAVAILABLE (the worker is stopping or dead),
 * LYRA_ENOMEM. */
int lyra_wproc_send(struct lyra_wproc *w, uint64_t id, const char *text, size_t len);

/* Asks the worker to end request id (its terminal reply still comes). */
void lyra_wproc_cancel(struct lyra_wproc *w, uint64_t id);

/* Stops the worker: EOF on its socket at once, SIGTERM after
 * stop_timeout_ms, SIGKILL after twice that.  on_exit reports
 * LYRA_WPROC_STOPPED (unless it had already ended another way).  `reason`
 * (static text) is logged.  Idempotent. */
void lyra_wproc_stop(struct lyra_wproc *w, const char *reason);

/* Stops the worker with SIGKILL now (an impatient stop); on_exit still
 * reports LYRA_WPROC_STOPPED. */
void lyra_wproc_kill(struct lyra_wproc *w);

pid_t lyra_wproc_pid(const struct lyra_wproc *w);

/* Writes the environment a worker gets: the entries of `environ_` whose
 * names are on the allow-list (PATH, HOME, locale, TMPDIR, LD_LIBRARY_PATH,
 * LYRA_BACKEND_DIR, LYRA_WORKER_*, ggml/CUDA/ROCm/Vulkan/OpenMP settings,
 * sanitizer options, the test knob LYRA_FAKE_GPU_FAIL_LAYERS) into a NULL-terminated array of borrowed pointers
 * (caller frees the array only).  Returns NULL when out of memory. */
char **lyra_wproc_environment(char *const *environ_);

#endif
