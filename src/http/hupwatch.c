/* hupwatch.c — see hupwatch.h.
 *
 * A watch sits in one slot of a table (under w->lock) while it is
 * registered; its epoll data is (slot << 32 | generation).  The thread
 * looks the slot up under the lock, takes a reference when the generation
 * still matches, and calls `gone` under the watch's own lock, which
 * lyra_hup_stop also takes after removing the slot: so either `gone` runs
 * before stop returns, or it sees the watch inactive and does nothing. */
#include "http/hupwatch.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct lyra_hup {
    struct lyra_hupwatch *w;
    pthread_mutex_t lock;   /* serialises gone with stop */
    int refs;               /* under lock: the owner's, and the thread's while it calls gone */
    bool active;
    int fd;
    uint32_t slot;
    void (*gone)(void *ud);
    void *ud;
};

struct slot {
    struct lyra_hup *h;     /* NULL when free */
    uint32_t gen;
};

struct lyra_hupwatch {
    int epfd, stopfd;
    pthread_t thread;
    pthread_mutex_t lock;   /* guards slots */
    struct slot *slots;
    size_t n_slots;
};

static void hup_unref(struct lyra_hup *h)
{
    pthread_mutex_lock(&h->lock);
    bool last = --h->refs == 0;
    pthread_mutex_unlock(&h->lock);
    if (last) {
        pthread_mutex_destroy(&h->lock);
        free(h);
    }
}

static void fire(struct lyra_hupwatch *w, uint64_t data)
{
    uint32_t slot = (uint32_t)(data >> 32), gen = (uint32_t)data;
    pthread_mutex_lock(&w->lock);
    struct lyra_hup *h = slot < w->n_slots && w->slots[slot].gen == gen ? w->slots[slot].h : NULL;
    if (h) {
        pthread_mutex_lock(&h->lock);
        h->refs++;
        pthread_mutex_unlock(&h->lock);
    }
    pthread_mutex_unlock(&w->lock);
    if (!h)
        return; /* removed after the event was collected */
    pthread_mutex_lock(&h->lock);
    if (h->active) {
        h->active = false;
        h->gone(h->ud);
    }
    pthread_mutex_unlock(&h->lock);
    hup_unref(h);
}

static void *watch_main(void *arg)
{
    struct lyra_hupwatch *w = arg;
    struct epoll_event ev[32];
    for (;;) {
        int n = epoll_wait(w->epfd, ev, 32, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        for (int i = 0; i < n; i++) {
            if (ev[i].data.u64 == UINT64_MAX)
                return NULL; /* stopfd */
            fire(w, ev[i].data.u64);
        }
    }
}

int lyra_hupwatch_new(struct lyra_hupwatch **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_hupwatch *w = calloc(1, sizeof *w);
    if (!w)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (w->epfd < 0 || w->stopfd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stopfd, &ev) < 0) {
        int e = errno;
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->stopfd >= 0)
            close(w->stopfd);
        free(w);
        return lyra_err_set(err, LYRA_EIO, "cannot create the hang-up watcher: %s", strerror(e));
    }
    pthread_mutex_init(&w->lock, NULL);
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        close(w->epfd);
        close(w->stopfd);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return lyra_err_set(err, LYRA_ENOMEM, "cannot start the hang-up watcher thread");
    }
    pthread_setname_np(w->thread, "lyra-http-hup");
    *out = w;
    return 0;
}

void lyra_hupwatch_free(struct lyra_hupwatch *w)
{
    if (!w)
        return;
    uint64_t one = 1;
    while (write(w->stopfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_join(w->thread, NULL);
    close(w->epfd);
    close(w->stopfd);
    pthread_mutex_destroy(&w->lock);
    free(w->slots);
    free(w);
}

struct lyra_hup *lyra_hup_start(struct lyra_hupwatch *w, int fd, void (*gone)(void *ud), void *ud)
{
    if (!w || !gone || fd < 0)
        return NULL;
    struct lyra_hup *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    h->w = w;
    h->refs = 1;
    h->active = true;
    h->fd = fd;
    h->gone = gone;
    h->ud = ud;
    pthread_mutex_lock(&w->lock);
    size_t i = 0;
    while (i < w->n_slots && w->slots[i].h)
        i++;
    if (i == w->n_slots) {
        size_t n = w->n_slots ? 2 * w->n_slots : 64;
        struct slot *s = n <= UINT32_MAX ? realloc(w->slots, n * sizeof *s) : NULL;
        if (!s) {
            pthread_mutex_unlock(&w->lock);
            pthread_mutex_destroy(&h->lock);
            free(h);
            return NULL;
        }
        memset(s + w->n_slots, 0, (n - w->n_slots) * sizeof *s);
        w->slots = s;
        w->n_slots = n;
    }
    w->slots[i].h = h;
    h->slot = (uint32_t)i;
    /* EPOLLRDHUP only: data waiting (a pipelined request) is not a hang-up.
     * One-shot: after it fired nothing more is wanted. */
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT,
                             .data.u64 = (uint64_t)i << 32 | w->slots[i].gen};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        w->slots[i].h = NULL;
        w->slots[i].gen++;
        pthread_mutex_unlock(&w->lock);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    pthread_mutex_unlock(&w->lock);
    return h;
}

void lyra_hup_stop(struct lyra_hup *h)
{
    if (!h)
        return;
    struct lyra_hupwatch *w = h->w;
    pthread_mutex_lock(&w->lock);
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, h->fd, NULL);
    w->slots[h->slot].h = NULL;
    w->slots[h->slot].gen++; /* an event already collected no longer matches */
    pthread_mutex_unlock(&w->lock);
    pthread_mutex_lock(&h->lock); /* waits for a gone in progress */
    h->active = false;
    pthread_mutex_unlock(&h->lock);
    hup_unref(h);
}
