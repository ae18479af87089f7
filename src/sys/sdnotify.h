/* sdnotify.h — systemd's service notification protocol for `lyra serve`
 * (deploy/lyra.service: Type=notify, WatchdogSec=).
 *
 * Under systemd, NOTIFY_SOCKET names a datagram socket; libsystemd's
 * sd_notify(3) sends "READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1"
 * to it.  Without NOTIFY_SOCKET every function here is a no-op (a daemon
 * started by hand, by the tests or under another supervisor).
 *
 * The notifier is one thread that watches the daemon through two hooks:
 *  - state(ud), cheap, polled every poll_ms: starting, serving or stopping;
 *  - alive(ud), a real check that the daemon answers, run before READY=1
 *    and before every watchdog ping (serve.c: a GET /health over loopback
 *    until it first answers, so READY=1 means "answering HTTP"; then a
 *    call through the supervisor loop, so a daemon whose loop hangs stops
 *    pinging and is restarted by systemd, WatchdogSec, while a client
 *    holding every connection slot cannot cause restarts).
 * It sends READY=1 (with STATUS) once state says serving and alive
 * agrees; WATCHDOG=1 every WATCHDOG_USEC/2 (sd_watchdog_enabled(3)) while
 * alive holds (while starting or stopping, on time alone: those phases
 * have their own deadlines); STOPPING=1 as soon as state says stopping,
 * or at lyra_sdnotify_stop.
 *
 * Thread-safety: lyra_sdnotify_send is thread-safe; start/stop from one
 * controlling thread.  The hooks run on the notifier's thread. */
#ifndef LYRA_SDNOTIFY_H
#define LYRA_SDNOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

enum lyra_sdnotify_state {
    LYRA_SDNOTIFY_STARTING,
    LYRA_SDNOTIFY_SERVING,
    LYRA_SDNOTIFY_STOPPING,
};

struct lyra_sdnotify_hooks {
    enum lyra_sdnotify_state (*state)(void *ud);
    /* True when the daemon answers; otherwise a reason in why. */
    bool (*alive)(void *ud, char *why, size_t why_len);
    void *ud; /* borrowed; must outlive lyra_sdnotify_stop */
};

struct lyra_sdnotify;

/* True when NOTIFY_SOCKET is set. */
bool lyra_sdnotify_active(void);

/* sd_notify(0, formatted text): "READY=1", "STATUS=loading\nEXTEND_...".
 * Returns 0 (also when inactive) or LYRA_EIO when sending failed. */
int lyra_sdnotify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Starts the notifier.  *out is NULL (and 0 returned) when NOTIFY_SOCKET is
 * not set: nothing to do.  `ready_status` (copied) is the STATUS= sent with
 * READY=1.  poll_ms <= 0 means 100.  The watchdog interval is read here
 * (WATCHDOG_USEC, WATCHDOG_PID).  Caller stops with lyra_sdnotify_stop. */
int lyra_sdnotify_start(struct lyra_sdnotify **out, const struct lyra_sdnotify_hooks *hooks,
                        const char *ready_status, int poll_ms, struct lyra_err *err);

/* Sends STOPPING=1 (unless sent already) and joins the thread.  NULL is a
 * no-op. */
void lyra_sdnotify_stop(struct lyra_sdnotify *n);

/* The watchdog ping interval the notifier uses: WATCHDOG_USEC / 2, or 0
 * when the watchdog is off (not set, or meant for another PID). */
uint64_t lyra_sdnotify_watchdog_interval_us(void);

/* A liveness probe for `alive`: GET `path` over TCP to host:port (a
 * wildcard host, 0.0.0.0 or ::, is reached on its loopback address) with
 * a whole-exchange deadline of timeout_ms.  True when an HTTP status line
 * came back; its code in *status (may be NULL).  Otherwise false with the
 * reason in why. */
bool lyra_sdnotify_probe_http(const char *host, int port, const char *path, int timeout_ms, int *status,
                              char *why, size_t why_len);

#endif
