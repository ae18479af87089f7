/* loop.c — see loop.h.
 *
 * The thread sleeps in epoll_wait with the timeout of the nearest timer.
 * Posted tasks sit in a FIFO under `lock`; posting writes the eventfd,
 * which the loop watches like any fd.  Watches removed during an iteration
 * are only marked dead and freed once the iteration's events are handled,
 * so an event collected for a removed fd never reaches freed memory. */
#include "core/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/util.h"

struct watch {
    int fd;
    lyra_loop_io_fn fn;
    void *ud;
    bool dead;
    struct watch *next;
};

struct task {
    lyra_loop_fn fn;
    void *ud;
    struct task *next;
};

struct lyra_timer {
    int64_t at_ms;
    lyra_loop_fn fn;
    void *ud;
    struct lyra_timer *next;
};

struct lyra_loop {
    int epfd, evfd;
    pthread_t thread;
    pthread_t tid;            /* set by the loop thread itself before `started` */
    pthread_mutex_t lock;     /* guards tasks, stopping, started */
    pthread_cond_t started_cond;
    bool started, stopping;
    struct task *tasks, *tasks_tail;
    /* Loop thread only: */
    struct watch *watches;
    bool any_dead;
    struct lyra_timer *timers; /* sorted by at_ms */
    char name[16];
};

int64_t lyra_loop_now_ms(const struct lyra_loop *l)
{
    (void)l;
    return lyra_now_ms();
}

bool lyra_loop_on_thread(const struct lyra_loop *l)
{
    return pthread_equal(l->tid, pthread_self()) != 0;
}

static struct watch *find_watch(struct lyra_loop *l, int fd)
{
    for (struct watch *w = l->watches; w; w = w->next)
        if (w->fd == fd && !w->dead)
            return w;
    return NULL;
}

int lyra_loop_watch(struct lyra_loop *l, int fd, uint32_t events, lyra_loop_io_fn fn, void *ud)
{
    struct watch *w = calloc(1, sizeof *w);
    if (!w)
        return LYRA_ENOMEM;
    w->fd = fd;
    w->fn = fn;
    w->ud = ud;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(w);
        return LYRA_EIO;
    }
    w->next = l->watches;
    l->watches = w;
    return 0;
}

int lyra_loop_watch_events(struct lyra_loop *l, int fd, uint32_t events)
{
    struct watch *w = find_watch(l, fd);
    if (!w)
        return LYRA_ENOTFOUND;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? LYRA_EIO : 0;
}

void lyra_loop_unwatch(struct lyra_loop *l, int fd)
{
    struct watch *w = find_watch(l, fd);
    if (!w)
        return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    w->dead = true;
    l->any_dead = true;
}

static void free_dead_watches(struct lyra_loop *l)
{
    if (!l->any_dead)
        return;
    for (struct watch **pp = &l->watches; *pp;) {
        struct watch *w = *pp;
        if (w->dead) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
    l->any_dead = false;
}

struct lyra_timer *lyra_loop_timer(struct lyra_loop *l, int64_t delay_ms, lyra_loop_fn fn, void *ud)
{
    struct lyra_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->at_ms = lyra_now_ms() + (delay_ms > 0 ? delay_ms : 0);
    t->fn = fn;
    t->ud = ud;
    struct lyra_timer **pp = &l->timers;
    while (*pp && (*pp)->at_ms <= t->at_ms)
        pp = &(*pp)->next;
    t->next = *pp;
    *pp = t;
    return t;
}

void lyra_loop_timer_cancel(struct lyra_loop *l, struct lyra_timer *t)
{
    if (!t)
        return;
    for (struct lyra_timer **pp = &l->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            free(t);
            return;
        }
    }
}

/* Fires the timers that are due, earliest first.  A timer callback may add
 * or cancel timers; each fired timer is unlinked before its call. */
static void run_timers(struct lyra_loop *l)
{
    int64_t now = lyra_now_ms();
    while (l->timers && l->timers->at_ms <= now) {
        struct lyra_timer *t = l->timers;
        l->timers = t->next;
        lyra_loop_fn fn = t->fn;
        void *ud = t->ud;
        free(t);
        fn(ud);
    }
}

/* Runs every task posted so far.  Returns true when the loop must stop. */
static bool run_tasks(struct lyra_loop *l)
{
    uint64_t n;
    while (read(l->evfd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    for (;;) {
        pthread_mutex_lock(&l->lock);
        struct task *t = l->tasks;
        if (t) {
            l->tasks = t->next;
            if (!l->tasks)
                l->tasks_tail = NULL;
        }
        bool stop = l->stopping;
        pthread_mutex_unlock(&l->lock);
        if (!t)
            return stop;
        t->fn(t->ud);
        free(t);
    }
}

static void *loop_main(void *arg)
{
    struct lyra_loop *l = arg;
    pthread_setname_np(pthread_self(), l->name);
    pthread_mutex_lock(&l->lock);
    l->tid = pthread_self();
    l->started = true;
    pthread_cond_broadcast(&l->started_cond);
    pthread_mutex_unlock(&l->lock);
    struct epoll_event events[64];
    for (;;) {
        int timeout = -1;
        if (l->timers) {
            int64_t d = l->timers->at_ms - lyra_now_ms();
            timeout = d <= 0 ? 0 : d > 60000 ? 60000 : (int)d;
        }
        int n = epoll_wait(l->epfd, events, 64, timeout);
        if (n < 0 && errno != EINTR)
            break; /* EBADF/EINVAL: nothing sensible left to do */
        bool stop = false;
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                stop = run_tasks(l);
                continue;
            }
            struct watch *w = events[i].data.ptr;
            if (!w->dead)
                w->fn(w->fd, events[i].events, w->ud);
        }
        free_dead_watches(l);
        run_timers(l);
        if (stop)
            break;
    }
    return NULL;
}

int lyra_loop_new(const char *name, struct lyra_loop **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_loop *l = calloc(1, sizeof *l);
    if (!l)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    lyra_fmt(l->name, sizeof l->name, "%s", name ? name : "loop");
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (l->epfd < 0 || l->evfd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) < 0) {
        int e = errno;
        if (l->epfd >= 0)
            close(l->epfd);
        if (l->evfd >= 0)
            close(l->evfd);
        free(l);
        return lyra_err_set(err, LYRA_EIO, "cannot create an event loop: %s", strerror(e));
    }
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->started_cond, NULL);
    pthread_mutex_lock(&l->lock);
    int rc = pthread_create(&l->thread, NULL, loop_main, l);
    /* Wait for the thread, so that l->tid is set before anyone reads it in
     * lyra_loop_on_thread. */
    while (rc == 0 && !l->started)
        pthread_cond_wait(&l->started_cond, &l->lock);
    pthread_mutex_unlock(&l->lock);
    if (rc != 0) {
        close(l->epfd);
        close(l->evfd);
        pthread_cond_destroy(&l->started_cond);
        pthread_mutex_destroy(&l->lock);
        free(l);
        return lyra_err_set(err, LYRA_ENOMEM, "cannot start the %s thread", name);
    }
    *out = l;
    return 0;
}

static void wake(struct lyra_loop *l)
{
    uint64_t one = 1;
    while (write(l->evfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

int lyra_loop_post(struct lyra_loop *l, lyra_loop_fn fn, void *ud)
{
    struct task *t = malloc(sizeof *t);
    if (!t)
        return LYRA_ENOMEM;
    t->fn = fn;
    t->ud = ud;
    t->next = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->stopping) {
        pthread_mutex_unlock(&l->lock);
        free(t);
        return LYRA_EUNAVAILABLE;
    }
    bool was_empty = l->tasks == NULL;
    if (l->tasks_tail)
        l->tasks_tail->next = t;
    else
        l->tasks = t;
    l->tasks_tail = t;
    pthread_mutex_unlock(&l->lock);
    if (was_empty)
        wake(l);
    return 0;
}

struct call {
    lyra_loop_fn fn;
    void *ud;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void call_trampoline(void *arg)
{
    struct call *c = arg;
    c->fn(c->ud);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

int lyra_loop_call(struct lyra_loop *l, lyra_loop_fn fn, void *ud)
{
    if (lyra_loop_on_thread(l)) {
        fn(ud);
        return 0;
    }
    struct call c = {.fn = fn, .ud = ud};
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    int rc = lyra_loop_post(l, call_trampoline, &c);
    if (rc == 0) {
        pthread_mutex_lock(&c.lock);
        while (!c.done)
            pthread_cond_wait(&c.cond, &c.lock);
        pthread_mutex_unlock(&c.lock);
    }
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
    return rc;
}

void lyra_loop_free(struct lyra_loop *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    l->stopping = true;
    pthread_mutex_unlock(&l->lock);
    wake(l);
    pthread_join(l->thread, NULL);
    /* Tasks posted before `stopping` ran in the thread's last pass. */
    for (struct watch *w = l->watches, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    for (struct lyra_timer *t = l->timers, *next; t; t = next) {
        next = t->next;
        free(t);
    }
    close(l->epfd);
    close(l->evfd);
    pthread_cond_destroy(&l->started_cond);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
