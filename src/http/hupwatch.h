/* hupwatch.h — notices clients that hang up while libmicrohttpd is not
 * looking at their socket (a suspended connection: a parked request, an idle
 * stream).
 *
 * One thread waits in epoll for EPOLLRDHUP on the sockets being watched and
 * calls the watch's `gone` callback once.  Registration and removal are
 * synchronous epoll_ctl calls made by the owner's thread while the socket is
 * still open (before libmicrohttpd may close it and the number be reused);
 * events carry a slot and a generation, so an event that was already
 * collected for a watch removed meanwhile is recognised and dropped.
 *
 * Thread-safety: lyra_hup_start/stop may be called from any thread;
 * new/free from one controlling thread. */
#ifndef LYRA_HUPWATCH_H
#define LYRA_HUPWATCH_H

#include "core/error.h"

struct lyra_hupwatch;
struct lyra_hup;

/* Starts the watcher thread.  Returns 0 with *out, or LYRA_EIO/LYRA_ENOMEM. */
int lyra_hupwatch_new(struct lyra_hupwatch **out, struct lyra_err *err);

/* Stops and joins the thread and frees the watcher; watches still started
 * must have been stopped.  NULL is a no-op. */
void lyra_hupwatch_free(struct lyra_hupwatch *w);

/* Watches the open socket fd; `gone(ud)` runs on the watcher thread, at most
 * once, when the peer hangs up (or the socket fails).  Returns the watch, or
 * NULL when it cannot be made (the hang-up is then only noticed at the next
 * write). */
struct lyra_hup *lyra_hup_start(struct lyra_hupwatch *w, int fd, void (*gone)(void *ud), void *ud);

/* Ends the watch and frees it.  Call while fd is still open.  When it
 * returns, `gone` is not running and will never run.  It may wait for a
 * `gone` in progress, so the caller must not hold a lock that `gone` takes.
 * NULL is a no-op. */
void lyra_hup_stop(struct lyra_hup *h);

#endif
