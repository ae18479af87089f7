/* sdnotify.c — READY/WATCHDOG/STOPPING for systemd (see sdnotify.h).
 *
 * One thread, woken every poll_ms (or at once by stop): it looks at the
 * daemon's state, sends READY=1 once serving is confirmed by the alive
 * hook, pings the watchdog on its interval, and sends STOPPING=1 when the
 * daemon starts to drain.  Each wait has a deadline (the probe's too), so
 * stop joins within one poll plus one probe. */
#include "sys/sdnotify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

struct lyra_sdnotify {
    struct lyra_sdnotify_hooks hooks;
    char *ready_status;
    int poll_ms;
    uint64_t watchdog_us; /* ping interval; 0 = no watchdog */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    bool quit;           /* under lock */
    bool stopping_sent;  /* notifier thread until joined */
};

bool lyra_sdnotify_active(void)
{
    const char *s = getenv("NOTIFY_SOCKET");
    return s && *s;
}

int lyra_sdnotify_send(const char *fmt, ...)
{
    if (!lyra_sdnotify_active())
        return 0;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* unset_environment 0: the notifier sends again later; the workers
     * inherit NOTIFY_SOCKET but never use it (NotifyAccess=main ignores
     * them anyway). */
    int rc = sd_notify(0, buf);
    return rc < 0 ? LYRA_EIO : 0;
}

uint64_t lyra_sdnotify_watchdog_interval_us(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec / 2;
}

/* ------------------------------------------------------------------ */
/* The probe                                                          */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to become ready for `events` until deadline (mono ms). */
static bool wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

bool lyra_sdnotify_probe_http(const char *host, int port, const char *path, int timeout_ms, int *status,
                              char *why, size_t why_len)
{
    int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 1000);
    const char *target = host;
    if (!host || !*host || strcmp(host, "0.0.0.0") == 0)
        target = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        target = "::1";
    char portbuf[16];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    int gai = getaddrinfo(target, portbuf, &hints, &ai);
    if (gai != 0) {
        snprintf(why, why_len, "cannot resolve %s: %s", target, gai_strerror(gai));
        return false;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, why_len, "socket: %s", strerror(errno));
        freeaddrinfo(ai);
        return false;
    }
    bool ok = false;
    int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (r < 0 && errno != EINPROGRESS) {
        snprintf(why, why_len, "connect to %s:%d: %s", target, port, strerror(errno));
        goto out;
    }
    if (r < 0) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (!wait_fd(fd, POLLOUT, deadline)) {
            snprintf(why, why_len, "connect to %s:%d: no answer in %d ms", target, port, timeout_ms);
            goto out;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            snprintf(why, why_len, "connect to %s:%d: %s", target, port, strerror(soerr ? soerr : errno));
            goto out;
        }
    }
    char req[512];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: lyra-sdnotify\r\n"
                       "Connection: close\r\n\r\n", path);
    if (len < 0 || (size_t)len >= sizeof req) {
        snprintf(why, why_len, "path too long");
        goto out;
    }
    for (int off = 0; off < len;) {
        if (!wait_fd(fd, POLLOUT, deadline)) {
            snprintf(why, why_len, "GET %s: cannot send in %d ms", path, timeout_ms);
            goto out;
        }
        ssize_t w = send(fd, req + off, (size_t)(len - off), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(why, why_len, "GET %s: %s", path, strerror(errno));
            goto out;
        }
        if (w > 0)
            off += (int)w;
    }
    char buf[64];
    size_t got = 0;
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
        if (!wait_fd(fd, POLLIN, deadline)) {
            snprintf(why, why_len, "GET %s: no answer in %d ms", path, timeout_ms);
            goto out;
        }
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n == 0)
            break;
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(why, why_len, "GET %s: %s", path, strerror(errno));
            goto out;
        }
        if (n > 0)
            got += (size_t)n;
    }
    buf[got] = '\0';
    int code = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1 || code < 100 || code > 599) {
        snprintf(why, why_len, "GET %s: not an HTTP answer", path);
        goto out;
    }
    if (status)
        *status = code;
    ok = true;
out:
    close(fd);
    return ok;
}

/* ------------------------------------------------------------------ */
/* The notifier thread                                                */

static void send_stopping(struct lyra_sdnotify *n)
{
    if (n->stopping_sent)
        return;
    n->stopping_sent = true;
    lyra_sdnotify_send("STOPPING=1\nSTATUS=draining");
}

static void *notifier(void *arg)
{
    struct lyra_sdnotify *n = arg;
    bool ready = false;
    bool failing = false; /* the last alive check failed (logged once per spell) */
    int64_t next_ping = n->watchdog_us ? mono_ms() : INT64_MAX;
    pthread_mutex_lock(&n->lock);
    while (!n->quit) {
        pthread_mutex_unlock(&n->lock);
        enum lyra_sdnotify_state st = n->hooks.state(n->hooks.ud);
        char why[256] = "";
        if (st == LYRA_SDNOTIFY_STOPPING) {
            send_stopping(n);
        } else if (st == LYRA_SDNOTIFY_SERVING && !ready) {
            if (n->hooks.alive(n->hooks.ud, why, sizeof why)) {
                ready = true;
                lyra_sdnotify_send("READY=1\nSTATUS=%s", n->ready_status);
                lyra_info("sdnotify", "told systemd: ready (%s)", n->ready_status);
            }
        }
        int64_t now = mono_ms();
        if (now >= next_ping) {
            /* Serving: ping only if the daemon answers.  Starting or
             * stopping: TimeoutStartSec / the drain bound those. */
            bool ok = st != LYRA_SDNOTIFY_SERVING || !ready || n->hooks.alive(n->hooks.ud, why, sizeof why);
            if (ok) {
                lyra_sdnotify_send("WATCHDOG=1");
                if (failing) {
                    lyra_info("sdnotify", "health check passes again");
                    lyra_sdnotify_send("STATUS=%s", n->ready_status);
                }
                failing = false;
            } else if (!failing) {
                failing = true;
                lyra_warn("sdnotify", "health check failed, not pinging the watchdog: %s", why);
                lyra_sdnotify_send("STATUS=health check failed: %s", why);
            }
            next_ping = mono_ms() + (int64_t)(n->watchdog_us / 1000);
        }
        int64_t wake = mono_ms() + n->poll_ms;
        if (next_ping < wake)
            wake = next_ping;
        struct timespec ts = {wake / 1000, (long)(wake % 1000) * 1000000L};
        pthread_mutex_lock(&n->lock);
        while (!n->quit && pthread_cond_timedwait(&n->cond, &n->lock, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

int lyra_sdnotify_start(struct lyra_sdnotify **out, const struct lyra_sdnotify_hooks *hooks,
                        const char *ready_status, int poll_ms, struct lyra_err *err)
{
    *out = NULL;
    if (!lyra_sdnotify_active())
        return 0;
    struct lyra_sdnotify *n = calloc(1, sizeof *n);
    if (!n || !(n->ready_status = strdup(ready_status ? ready_status : "serving"))) {
        free(n);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    n->hooks = *hooks;
    n->poll_ms = poll_ms > 0 ? poll_ms : 100;
    n->watchdog_us = lyra_sdnotify_watchdog_interval_us();
    /* A watchdog interval under the poll would ping late. */
    if (n->watchdog_us && n->watchdog_us / 1000 < (uint64_t)n->poll_ms)
        n->poll_ms = n->watchdog_us / 1000 > 0 ? (int)(n->watchdog_us / 1000) : 1;
    pthread_mutex_init(&n->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&n->cond, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&n->thread, NULL, notifier, n);
    if (rc != 0) {
        pthread_cond_destroy(&n->cond);
        pthread_mutex_destroy(&n->lock);
        free(n->ready_status);
        free(n);
        return lyra_err_set(err, LYRA_EIO, "sdnotify: cannot start its thread: %s", strerror(rc));
    }
    if (n->watchdog_us)
        lyra_info("sdnotify", "systemd watchdog: pinging every %llu ms while /health answers",
                  (unsigned long long)(n->watchdog_us / 1000));
    *out = n;
    return 0;
}

void lyra_sdnotify_stop(struct lyra_sdnotify *n)
{
    if (!n)
        return;
    pthread_mutex_lock(&n->lock);
    n->quit = true;
    pthread_cond_signal(&n->cond);
    pthread_mutex_unlock(&n->lock);
    pthread_join(n->thread, NULL);
    send_stopping(n);
    pthread_cond_destroy(&n->cond);
    pthread_mutex_destroy(&n->lock);
    free(n->ready_status);
    free(n);
}
