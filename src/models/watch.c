/* watch.c — see watch.h. */
#include "models/watch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"

/* A refresh waits until the directory has been quiet this long. */
#define QUIET_MS 250

struct lyra_models_watch {
    struct lyra_registry *reg;
    struct lyra_loop *loop;
    int fd;                   /* inotify, -1 when nothing is watched */
    struct lyra_timer *timer; /* loop thread only */
};

static void refresh(void *ud)
{
    struct lyra_models_watch *w = ud;
    w->timer = NULL;
    struct lyra_err err = {0};
    if (lyra_registry_refresh(w->reg, NULL, &err) < 0)
        lyra_warn("models", "models dir: %s", err.msg);
}

static void on_events(int fd, uint32_t events, void *ud)
{
    struct lyra_models_watch *w = ud;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool any = false;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        any = true;
    }
    if (!any)
        return;
    lyra_loop_timer_cancel(w->loop, w->timer);
    w->timer = lyra_loop_timer(w->loop, QUIET_MS, refresh, w);
}

static void start_watch(void *ud)
{
    struct lyra_models_watch *w = ud;
    if (w->fd >= 0 && lyra_loop_watch(w->loop, w->fd, EPOLLIN, on_events, w) < 0) {
        lyra_warn("models", "cannot watch the models dir; new files are found when a request names them");
        close(w->fd);
        w->fd = -1;
    }
}

static void stop_watch(void *ud)
{
    struct lyra_models_watch *w = ud;
    lyra_loop_timer_cancel(w->loop, w->timer);
    w->timer = NULL;
    if (w->fd >= 0)
        lyra_loop_unwatch(w->loop, w->fd);
}

int lyra_models_watch_new(struct lyra_registry *reg, struct lyra_models_watch **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_models_watch *w = calloc(1, sizeof *w);
    if (!w)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    w->reg = reg;
    w->fd = -1;
    const char *dir = lyra_registry_dir(reg);
    if (dir) {
        w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w->fd >= 0 && inotify_add_watch(w->fd, dir,
                                            IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                                IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0) {
            lyra_log(LYRA_LOG_WARN, "models", NULL, NULL,
                     "not watching %s (%s): new files are found when a request names them", dir, strerror(errno));
            close(w->fd);
            w->fd = -1;
        }
    }
    int rc = lyra_loop_new("lyra-models", &w->loop, err);
    if (rc < 0) {
        if (w->fd >= 0)
            close(w->fd);
        free(w);
        return rc;
    }
    lyra_loop_call(w->loop, start_watch, w);
    *out = w;
    return 0;
}

void lyra_models_watch_free(struct lyra_models_watch *w)
{
    if (!w)
        return;
    lyra_loop_call(w->loop, stop_watch, w);
    lyra_loop_free(w->loop);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
}
