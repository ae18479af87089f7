/* evlog.c — the event log (see evlog.h): a bus subscriber that batches
 * events into the database on its thread, with retention. */
#include "core/evlog.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/store.h"
#include "core/util.h"

#define PRUNED_KEY "events.pruned_through"

struct pending {
    uint64_t seq;
    int64_t ts_ms;
    char type[64];
    char *json;
    struct pending *next;
};

struct lyra_evlog {
    struct lyra_bus *bus;
    struct lyra_store *store;
    uint64_t keep;
    int sub;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    struct pending *head, **tail; /* waiting for the next write */
    size_t n;
    bool writing;                 /* a write job is queued or running */
    bool failing;                 /* the last write failed (logged once per run of failures) */
    uint64_t dropped;
};

struct batch {
    struct lyra_evlog *log;
    struct pending *list;
};

static void free_list(struct pending *p)
{
    while (p) {
        struct pending *next = p->next;
        free(p->json);
        free(p);
        p = next;
    }
}

static int exec_meta_pruned(sqlite3 *db, uint64_t through, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "writing the event log");
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)through);
    sqlite3_bind_text(s, 1, PRUNED_KEY, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, buf, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    return step == SQLITE_DONE ? 0 : lyra_store_error(err, db, "writing the event log");
}

/* Transaction body: the batch's events, then retention. */
static int tx_write(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct batch *b = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO events (seq, ts_ms, type, json) VALUES (?, ?, ?, ?)", -1,
                           &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "writing the event log");
    for (struct pending *p = b->list; p; p = p->next) {
        sqlite3_bind_int64(s, 1, (sqlite3_int64)p->seq);
        sqlite3_bind_int64(s, 2, p->ts_ms);
        sqlite3_bind_text(s, 3, p->type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, p->json, -1, SQLITE_STATIC);
        int step = sqlite3_step(s);
        sqlite3_reset(s);
        if (step != SQLITE_DONE) {
            sqlite3_finalize(s);
            return lyra_store_error(err, db, "writing the event log");
        }
    }
    sqlite3_finalize(s);
    /* Retention: the newest `keep` stay; the highest seq deleted is kept. */
    if (sqlite3_prepare_v2(db, "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", -1, &s, NULL) !=
        SQLITE_OK)
        return lyra_store_error(err, db, "pruning the event log");
    sqlite3_bind_int64(s, 1, (sqlite3_int64)b->log->keep);
    uint64_t cut = sqlite3_step(s) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    if (!cut)
        return 0;
    if (sqlite3_prepare_v2(db, "DELETE FROM events WHERE seq <= ?", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "pruning the event log");
    sqlite3_bind_int64(s, 1, (sqlite3_int64)cut);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        return lyra_store_error(err, db, "pruning the event log");
    return exec_meta_pruned(db, cut, err);
}

static int job_write(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return lyra_store_tx(db, 0, tx_write, arg, err);
}

static void write_done(int rc, const struct lyra_err *err, void *arg);

/* Takes what is pending and queues its write; called with log->lock held
 * and log->writing set.  False when nothing could be queued. */
static bool queue_write(struct lyra_evlog *log)
{
    struct batch *b = malloc(sizeof *b);
    if (!b)
        return false;
    b->log = log;
    b->list = log->head;
    log->head = NULL;
    log->tail = &log->head;
    log->n = 0;
    if (lyra_store_submit(log->store, job_write, write_done, b) < 0) {
        /* closing or out of memory: these events stay in memory only */
        free_list(b->list);
        free(b);
        return false;
    }
    return true;
}

static void write_done(int rc, const struct lyra_err *err, void *arg)
{
    struct batch *b = arg;
    struct lyra_evlog *log = b->log;
    free_list(b->list);
    free(b);
    pthread_mutex_lock(&log->lock);
    if (rc < 0 && !log->failing)
        lyra_log(LYRA_LOG_WARN, "events", NULL, NULL,
                 "cannot write the event log (events stay replayable from memory only): %s",
                 err ? err->msg : "error");
    log->failing = rc < 0;
    log->writing = log->head != NULL && queue_write(log);
    if (!log->writing)
        pthread_cond_broadcast(&log->idle);
    pthread_mutex_unlock(&log->lock);
}

/* Bus subscriber (publishing thread, bus lock held): append, never wait. */
static void on_event(const struct lyra_event *ev, void *ud)
{
    struct lyra_evlog *log = ud;
    json_t *j = lyra_event_to_json(ev);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    struct pending *p = text ? calloc(1, sizeof *p) : NULL;
    if (!p) {
        free(text);
        return;
    }
    p->seq = ev->seq;
    p->ts_ms = ev->ts_ms;
    lyra_fmt(p->type, sizeof p->type, "%s", ev->type);
    p->json = text;
    pthread_mutex_lock(&log->lock);
    if (log->n >= LYRA_EVLOG_MAX_PENDING) {
        log->dropped++;
        pthread_mutex_unlock(&log->lock);
        free(text);
        free(p);
        return;
    }
    *log->tail = p;
    log->tail = &p->next;
    log->n++;
    if (!log->writing)
        log->writing = queue_write(log);
    pthread_mutex_unlock(&log->lock);
}

int lyra_evlog_new(struct lyra_bus *bus, struct lyra_store *store, uint64_t keep, struct lyra_evlog **out,
                   struct lyra_err *err)
{
    *out = NULL;
    struct lyra_evlog *log = calloc(1, sizeof *log);
    if (!log)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    log->bus = bus;
    log->store = store;
    log->keep = keep ? keep : 1;
    log->tail = &log->head;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->idle, NULL);
    log->sub = lyra_bus_subscribe(bus, "*", on_event, log);
    if (!log->sub) {
        lyra_evlog_free(log);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    *out = log;
    return 0;
}

void lyra_evlog_free(struct lyra_evlog *log)
{
    if (!log)
        return;
    if (log->sub)
        lyra_bus_unsubscribe(log->bus, log->sub);
    /* What is queued is written; bounded so that a wedged disk cannot hold
     * up the shutdown (the store's own close waits for its thread). */
    struct timespec deadline;
    lyra_deadline_in(&deadline, 5000);
    pthread_mutex_lock(&log->lock);
    while (log->writing && pthread_cond_timedwait(&log->idle, &log->lock, &deadline) == 0)
        ;
    bool still = log->writing;
    pthread_mutex_unlock(&log->lock);
    if (still)
        return; /* its last write still refers to it: leaked rather than freed under it */
    free_list(log->head);
    pthread_cond_destroy(&log->idle);
    pthread_mutex_destroy(&log->lock);
    free(log);
}

struct replay {
    uint64_t since, before;
    const char *patterns;
    lyra_evlog_row_fn fn;
    void *ud;
    uint64_t pruned;
    long n;
};

static int job_replay(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct replay *r = arg;
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?", -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_text(s, 1, PRUNED_KEY, -1, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
            r->pruned = strtoull((const char *)sqlite3_column_text(s, 0), NULL, 10);
        sqlite3_finalize(s);
    }
    if (sqlite3_prepare_v2(db, "SELECT seq, type, json FROM events WHERE seq > ? AND seq < ? ORDER BY seq", -1, &s,
                           NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "reading the event log");
    sqlite3_bind_int64(s, 1, r->since > INT64_MAX ? INT64_MAX : (sqlite3_int64)r->since);
    sqlite3_bind_int64(s, 2, r->before > INT64_MAX ? INT64_MAX : (sqlite3_int64)r->before);
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        const char *type = (const char *)sqlite3_column_text(s, 1);
        const char *json = (const char *)sqlite3_column_text(s, 2);
        if (!type || !json || (r->patterns && !lyra_event_type_matches(r->patterns, type)))
            continue;
        r->fn((uint64_t)sqlite3_column_int64(s, 0), type, json, r->ud);
        r->n++;
    }
    sqlite3_finalize(s);
    return step == SQLITE_DONE ? 0 : lyra_store_error(err, db, "reading the event log");
}

long lyra_evlog_replay(struct lyra_store *store, uint64_t since, uint64_t before, const char *patterns,
                       lyra_evlog_row_fn fn, void *ud, uint64_t *pruned_through, struct lyra_err *err)
{
    struct replay r = {.since = since, .before = before, .patterns = patterns, .fn = fn, .ud = ud};
    int rc = lyra_store_run(store, job_replay, &r, err);
    if (pruned_through)
        *pruned_through = r.pruned;
    return rc < 0 ? rc : r.n;
}
