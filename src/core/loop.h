/* loop.h — a single-threaded event loop: epoll for file descriptors, an
 * eventfd for tasks posted from other threads, and one-shot timers.
 *
 * One thread (started by lyra_loop_new, joined by lyra_loop_free) runs
 * everything registered on the loop: fd callbacks, timers and posted tasks,
 * one at a time, so state touched only from those callbacks needs no lock.
 * This is the shape of libuv's or nginx's loop, reduced to what Lyra needs.
 *
 * Thread-safety: lyra_loop_post, lyra_loop_call and lyra_loop_on_thread may
 * be called from any thread.  Everything else (watch/unwatch, timers,
 * lyra_loop_now_ms) only from callbacks running on the loop thread. */
#ifndef LYRA_LOOP_H
#define LYRA_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_loop;
struct lyra_timer;

typedef void (*lyra_loop_fn)(void *ud);
/* `events` is the epoll mask that fired (EPOLLIN, EPOLLOUT, EPOLLHUP, ...). */
typedef void (*lyra_loop_io_fn)(int fd, uint32_t events, void *ud);

/* Creates the loop and starts its thread (named `name`, up to 15 bytes).
 * Returns 0 with *out (free with lyra_loop_free), or LYRA_EIO / LYRA_ENOMEM. */
int lyra_loop_new(const char *name, struct lyra_loop **out, struct lyra_err *err);

/* Runs the tasks already posted, stops the thread and joins it, then frees
 * the loop.  Watches and timers still registered are dropped without being
 * called.  Must not be called from the loop thread.  NULL is a no-op. */
void lyra_loop_free(struct lyra_loop *l);

/* Queues fn(ud) to run on the loop thread, in posting order.  Returns 0, or
 * LYRA_ENOMEM, or LYRA_EUNAVAILABLE once lyra_loop_free has begun (fn will
 * then never run). */
int lyra_loop_post(struct lyra_loop *l, lyra_loop_fn fn, void *ud);

/* Runs fn(ud) on the loop thread and waits until it returned.  Called on
 * the loop thread it runs fn at once.  The caller must not hold a lock that
 * loop callbacks take.  Returns 0 or the error of lyra_loop_post. */
int lyra_loop_call(struct lyra_loop *l, lyra_loop_fn fn, void *ud);

/* True when called on the loop's thread. */
bool lyra_loop_on_thread(const struct lyra_loop *l);

/* Loop thread only.  Watches fd for `events` (EPOLLIN, EPOLLOUT, EPOLLRDHUP
 * ...; level-triggered).  One watch per fd.  Returns 0 or LYRA_EIO. */
int lyra_loop_watch(struct lyra_loop *l, int fd, uint32_t events, lyra_loop_io_fn fn, void *ud);
/* Changes the events of a watched fd. */
int lyra_loop_watch_events(struct lyra_loop *l, int fd, uint32_t events);
/* Stops watching fd (before closing it); its callback is not called again,
 * even for events already collected in the current iteration. */
void lyra_loop_unwatch(struct lyra_loop *l, int fd);

/* Loop thread only.  Calls fn(ud) once, `delay_ms` from now.  Returns the
 * timer (valid until it fired or was cancelled), or NULL when out of
 * memory. */
struct lyra_timer *lyra_loop_timer(struct lyra_loop *l, int64_t delay_ms, lyra_loop_fn fn, void *ud);
/* Cancels a timer that has not fired yet.  NULL is a no-op. */
void lyra_loop_timer_cancel(struct lyra_loop *l, struct lyra_timer *t);

/* Monotonic milliseconds (lyra_now_ms). */
int64_t lyra_loop_now_ms(const struct lyra_loop *l);

#endif
