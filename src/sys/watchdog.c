/* watchdog.c — see watchdog.h.  One thread samples; the level and the last
 * reading sit under one mutex for readers on other threads.  Events and log
 * lines are made on the watchdog thread, outside that mutex, so a slow
 * subscriber never stalls lyra_watchdog_level(). */
#include "sys/watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "core/log.h"
#include "core/util.h"

#define FIRST_SAMPLE_WAIT_MS 5000 /* new() waits this long at most for the first sample */

struct lyra_watchdog {
    struct lyra_watchdog_options o;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;      /* under lock */
    bool sampled;   /* the first sample was taken and reported (under lock) */
    bool have_last; /* under lock */
    struct lyra_mem_reading last;
    enum lyra_mem_level level;
    pthread_t thread;
};

const char *lyra_mem_level_name(enum lyra_mem_level l)
{
    switch (l) {
    case LYRA_MEM_OK:
        return "ok";
    case LYRA_MEM_WARNING:
        return "warning";
    case LYRA_MEM_CRITICAL:
        return "critical";
    }
    return "unknown";
}

void lyra_watchdog_options_init(struct lyra_watchdog_options *o, struct lyra_memsource *source)
{
    *o = (struct lyra_watchdog_options){
        .source = source,
        .interval_ms = 1000,
        .warn_percent = 85,
        .critical_percent = 95,
        .psi_warn = 20,
        .psi_critical = 50,
        .min_available_bytes = 64ull << 20,
    };
}

/* True when value >= threshold; when the level is already held, while the
 * value is still above threshold - hysteresis (at 5 points below, it is
 * left). */
static bool at_least(double value, double threshold, bool held)
{
    return held ? value > threshold - LYRA_WATCHDOG_HYSTERESIS : value >= threshold;
}

static bool psi_at_least(double psi, double threshold, bool held)
{
    return threshold > 0 && psi >= 0 && at_least(psi, threshold, held);
}

enum lyra_mem_level lyra_watchdog_classify(const struct lyra_watchdog_options *o,
                                           const struct lyra_mem_reading *r, enum lyra_mem_level previous)
{
    uint64_t limit = lyra_mem_limit(r);
    if (limit == 0) /* no reading worth the name: nothing to decide on */
        return previous;
    double used = lyra_mem_used_percent(r);
    double psi = r->psi_some_avg10;
    bool crit_held = previous >= LYRA_MEM_CRITICAL, warn_held = previous >= LYRA_MEM_WARNING;

    uint64_t min_room = o->min_available_bytes;
    if (min_room > 0 && crit_held) {
        uint64_t extra = limit / 100 * LYRA_WATCHDOG_HYSTERESIS;
        min_room = min_room > UINT64_MAX - extra ? UINT64_MAX : min_room + extra;
    }
    if (at_least(used, o->critical_percent, crit_held) || psi_at_least(psi, o->psi_critical, crit_held) ||
        (o->min_available_bytes > 0 && lyra_mem_headroom(r) < min_room))
        return LYRA_MEM_CRITICAL;
    if (at_least(used, o->warn_percent, warn_held) || psi_at_least(psi, o->psi_warn, warn_held))
        return LYRA_MEM_WARNING;
    return LYRA_MEM_OK;
}

static json_t *psi_json(double v)
{
    return v >= 0 ? json_real(v) : json_null();
}

/* The event and the log line of a level change. */
static void announce(struct lyra_watchdog *w, const struct lyra_mem_reading *r, enum lyra_mem_level from,
                     enum lyra_mem_level to)
{
    uint64_t used = lyra_mem_used(r), limit = lyra_mem_limit(r), room = lyra_mem_headroom(r);
    double pct = lyra_mem_used_percent(r);
    bool cgroup = r->cgroup_max > 0;
    json_t *fields =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:f, s:o, s:b}", "level", lyra_mem_level_name(to), "previous",
                  lyra_mem_level_name(from), "used_bytes", (json_int_t)used, "limit_bytes", (json_int_t)limit,
                  "available_bytes", (json_int_t)room, "used_percent", pct, "psi_some_avg10",
                  psi_json(r->psi_some_avg10), "cgroup", cgroup);
    lyra_log(to == LYRA_MEM_OK ? LYRA_LOG_INFO : LYRA_LOG_WARN, "watchdog", NULL,
             fields ? json_incref(fields) : NULL,
             "memory %s (was %s): %.1f%% of %llu MiB used, %llu MiB available", lyra_mem_level_name(to),
             lyra_mem_level_name(from), pct, (unsigned long long)(limit >> 20),
             (unsigned long long)(room >> 20));
    if (!w->o.bus) {
        json_decref(fields);
        return;
    }
    const char *type = to == LYRA_MEM_CRITICAL  ? "memory.critical"
                       : to == LYRA_MEM_WARNING ? "memory.warning"
                                                : "memory.ok";
    if (fields)
        json_object_del(fields, "previous");
    else /* json_pack failed (no memory): the event still goes out, without data */
        lyra_warn("watchdog", "memory event %s without data (out of memory)", type);
    lyra_bus_publish(w->o.bus, type, "memory", fields);
}

/* A sample was taken and reported: what lyra_watchdog_new waits for. */
static void mark_sampled(struct lyra_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    if (!w->sampled) {
        w->sampled = true;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

/* One sample: read, classify, store, report.  Called on the watchdog
 * thread without the lock. */
static void sample(struct lyra_watchdog *w, bool *failing)
{
    struct lyra_mem_reading r;
    int rc = lyra_memsource_read(w->o.source, &r);
    if (rc != 0) {
        if (!*failing)
            lyra_warn("watchdog", "memory reading failed (%s); keeping the last level", lyra_strerror(rc));
        *failing = true;
        mark_sampled(w);
        return;
    }
    if (*failing)
        lyra_info("watchdog", "memory readings are back");
    *failing = false;
    pthread_mutex_lock(&w->lock);
    enum lyra_mem_level from = w->have_last ? w->level : LYRA_MEM_OK;
    enum lyra_mem_level to = lyra_watchdog_classify(&w->o, &r, from);
    w->level = to;
    w->last = r;
    w->have_last = true;
    pthread_mutex_unlock(&w->lock);
    if (to != from)
        announce(w, &r, from, to);
    if (w->o.on_sample)
        w->o.on_sample(&r, to, w->o.ud);
    mark_sampled(w);
}

static void *watchdog_main(void *arg)
{
    struct lyra_watchdog *w = arg;
    pthread_setname_np(pthread_self(), "lyra-watchdog");
    bool failing = false;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        pthread_mutex_unlock(&w->lock);
        sample(w, &failing);
        pthread_mutex_lock(&w->lock);
        struct timespec ts;
        lyra_deadline_in(&ts, w->o.interval_ms);
        while (!w->stop && pthread_cond_timedwait(&w->cond, &w->lock, &ts) == 0)
            ;
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int lyra_watchdog_new(const struct lyra_watchdog_options *o, struct lyra_watchdog **out, struct lyra_err *err)
{
    *out = NULL;
    if (!o || !o->source)
        return lyra_err_set(err, LYRA_EINVAL, "watchdog: a memory source is required");
    if (o->interval_ms <= 0)
        return lyra_err_set(err, LYRA_EINVAL, "watchdog: interval_ms must be > 0 (got %d)", o->interval_ms);
    if (o->warn_percent <= 0 || o->warn_percent > o->critical_percent || o->critical_percent > 100)
        return lyra_err_set(err, LYRA_EINVAL,
                            "watchdog: need 0 < warn_percent (%d) <= critical_percent (%d) <= 100",
                            o->warn_percent, o->critical_percent);
    if (o->psi_warn > 0 && o->psi_critical > 0 && o->psi_warn > o->psi_critical)
        return lyra_err_set(err, LYRA_EINVAL, "watchdog: psi_warn (%g) must not be above psi_critical (%g)",
                            o->psi_warn, o->psi_critical);
    struct lyra_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return lyra_err_set(err, LYRA_ENOMEM, "watchdog: out of memory");
    w->o = *o;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    /* Signals belong to the main thread's sigwait. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, watchdog_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return lyra_err_set(err, rc == EAGAIN ? LYRA_ENOMEM : LYRA_EINTERNAL,
                            "watchdog: cannot start its thread");
    }
    /* The first sample is taken at once; wait for it (bounded: a read is a
     * few small files, but never wait on faith). */
    struct timespec ts;
    lyra_deadline_in(&ts, FIRST_SAMPLE_WAIT_MS);
    pthread_mutex_lock(&w->lock);
    while (!w->sampled && pthread_cond_timedwait(&w->cond, &w->lock, &ts) == 0)
        ;
    pthread_mutex_unlock(&w->lock);
    *out = w;
    return 0;
}

void lyra_watchdog_free(struct lyra_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

enum lyra_mem_level lyra_watchdog_level(struct lyra_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    enum lyra_mem_level l = w->level;
    pthread_mutex_unlock(&w->lock);
    return l;
}

int lyra_watchdog_last(struct lyra_watchdog *w, struct lyra_mem_reading *out)
{
    pthread_mutex_lock(&w->lock);
    bool have = w->have_last;
    if (have)
        *out = w->last;
    pthread_mutex_unlock(&w->lock);
    return have ? 0 : LYRA_EUNAVAILABLE;
}
