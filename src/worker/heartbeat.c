/* heartbeat.c — see heartbeat.h. */
#include "worker/heartbeat.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "core/util.h"
#include "proto/frame.h"

struct lyra_heartbeat {
    int fd;
    int interval_ms;
    atomic_uint_fast64_t steps;
    atomic_bool busy;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    pthread_t thread;
};

/* One frame, written at once or not at all: a partial frame would corrupt
 * the channel, so a full socket buffer drops the beat (the daemon then sees
 * the silence it should see). */
static bool beat(struct lyra_heartbeat *hb)
{
    char buf[128];
    int n = snprintf(buf + LYRA_FRAME_HEADER, sizeof buf - LYRA_FRAME_HEADER,
                     "{\"type\":\"heartbeat\",\"steps\":%" PRIuFAST64 ",\"busy\":%s}", atomic_load(&hb->steps),
                     atomic_load(&hb->busy) ? "true" : "false");
    buf[0] = buf[1] = 0;
    buf[2] = (char)((n >> 8) & 0xff);
    buf[3] = (char)(n & 0xff);
    size_t len = LYRA_FRAME_HEADER + (size_t)n;
    for (;;) {
        ssize_t w = send(hb->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w == (ssize_t)len || (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
            return true;
        return false; /* partial write or the daemon is gone: stop beating */
    }
}

static void *heartbeat_main(void *arg)
{
    struct lyra_heartbeat *hb = arg;
    pthread_mutex_lock(&hb->lock);
    while (!hb->stop) {
        pthread_mutex_unlock(&hb->lock);
        bool ok = beat(hb);
        pthread_mutex_lock(&hb->lock);
        if (!ok)
            break;
        struct timespec ts;
        lyra_deadline_in(&ts, hb->interval_ms);
        while (!hb->stop && pthread_cond_timedwait(&hb->cond, &hb->lock, &ts) == 0)
            ;
    }
    pthread_mutex_unlock(&hb->lock);
    return NULL;
}

struct lyra_heartbeat *lyra_heartbeat_start(int fd, int interval_ms)
{
    struct lyra_heartbeat *hb = calloc(1, sizeof *hb);
    if (!hb)
        return NULL;
    hb->fd = fd;
    hb->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    atomic_init(&hb->steps, 0);
    atomic_init(&hb->busy, false);
    pthread_mutex_init(&hb->lock, NULL);
    pthread_cond_init(&hb->cond, NULL);
    /* Signals (SIGTERM) belong to the main thread, whose poll they wake. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&hb->thread, NULL, heartbeat_main, hb);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&hb->cond);
        pthread_mutex_destroy(&hb->lock);
        free(hb);
        return NULL;
    }
    return hb;
}

void lyra_heartbeat_step(struct lyra_heartbeat *hb)
{
    if (hb)
        atomic_fetch_add(&hb->steps, 1);
}

void lyra_heartbeat_set_busy(struct lyra_heartbeat *hb, bool busy)
{
    if (hb)
        atomic_store(&hb->busy, busy);
}

void lyra_heartbeat_stop(struct lyra_heartbeat *hb)
{
    if (!hb)
        return;
    pthread_mutex_lock(&hb->lock);
    hb->stop = true;
    pthread_cond_signal(&hb->cond);
    pthread_mutex_unlock(&hb->lock);
    pthread_join(hb->thread, NULL);
    pthread_cond_destroy(&hb->cond);
    pthread_mutex_destroy(&hb->lock);
    free(hb);
}
