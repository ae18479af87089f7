/* evsub.c — a subscription with replay and a bounded queue (see evsub.h).
 *
 * The queue holds each event's JSON text.  Replayed events (from the
 * database, then the ring) are queued without a bound — a replay is bounded
 * by the retention — and live ones count against max_queued. */
#include "core/evsub.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/evlog.h"
#include "core/util.h"

struct item {
    uint64_t seq;
    char *json; /* NULL: the gap marker */
    bool live;  /* counts against max_queued */
    struct item *next;
};

struct lyra_evsub {
    struct lyra_bus *bus;
    int sub;
    pthread_mutex_t lock;
    struct item *head, **tail;
    size_t n_live, max;
    size_t bytes, max_bytes;  /* event text queued, and its bound (replay included) */
    bool replay_full;         /* the replay hit max_bytes: the rest of it is skipped */
    uint64_t last_seq;      /* the highest seq queued (or delivered) */
    uint64_t delivered_seq; /* the seq of the last event handed out */
    bool replaying;         /* inside replay_and_subscribe: no bound */
    uint64_t dropped;       /* events lost since the last gap marker was delivered */
    bool closed;
    lyra_evsub_notify_fn notify;
    void *ud;
    lyra_evsub_filter_fn filter; /* NULL: everything */
    void *filter_ud;
};

bool lyra_evsub_patterns_valid(const char *p)
{
    if (!p)
        return true;
    if (!*p || strlen(p) > 1024)
        return false;
    /* segments separated by ',', each a dotted name whose last part may be '*' */
    const char *s = p;
    for (;;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0 || len > 63)
            return false;
        for (size_t i = 0; i < len; i++) {
            char c = s[i];
            if (c == '*') {
                if (i != len - 1 || (i > 0 && s[i - 1] != '.'))
                    return false;
            } else if (!(isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-')) {
                return false;
            }
        }
        if (!e)
            return true;
        s = e + 1;
    }
}

static void drop_all(struct lyra_evsub *s)
{
    for (struct item *i = s->head, *next; i; i = next) {
        next = i->next;
        if (i->json)
            s->dropped++;
        s->bytes -= i->json ? strlen(i->json) : 0;
        free(i->json);
        free(i);
    }
    s->head = NULL;
    s->tail = &s->head;
    s->n_live = 0;
}

/* Appends an item (json NULL: the gap marker).  Lock held.  Returns true
 * when the queue went from empty to non-empty. */
static bool append(struct lyra_evsub *s, uint64_t seq, char *json, bool live)
{
    struct item *it = malloc(sizeof *it);
    if (!it) {
        free(json);
        return false;
    }
    it->seq = seq;
    it->json = json;
    it->live = live;
    it->next = NULL;
    if (live)
        s->n_live++;
    s->bytes += json ? strlen(json) : 0;
    bool was_empty = !s->head;
    *s->tail = it;
    s->tail = &it->next;
    return was_empty;
}

/* Queues an event (lock held).  A live event that finds the queue full
 * drops what waits and leaves a gap marker in its place, so that the gap
 * reaches the client exactly where the events went missing. */
static bool push(struct lyra_evsub *s, uint64_t seq, char *json, bool live)
{
    if (s->last_seq && seq <= s->last_seq) { /* seen already (database and ring overlap) */
        free(json);
        return false;
    }
    size_t len = strlen(json);
    if ((!live || s->replaying) && (s->replay_full || (s->head && s->bytes + len > s->max_bytes))) {
        /* A replay larger than the byte bound: it stops here, with a gap
         * the client resumes from (the seq of the last event it gets). */
        bool first = !s->replay_full;
        s->replay_full = true;
        s->dropped++;
        s->last_seq = seq;
        free(json);
        return first ? append(s, 0, NULL, false) : false;
    }
    s->last_seq = seq;
    if (live && !s->replaying && (s->n_live >= s->max || (s->head && s->bytes + len > s->max_bytes))) {
        drop_all(s);
        s->dropped++; /* this one */
        free(json);
        return append(s, 0, NULL, false);
    }
    return append(s, seq, json, live && !s->replaying);
}

/* Bus subscriber: runs under the bus lock, on the publishing thread. */
static void on_event(const struct lyra_event *ev, void *ud)
{
    struct lyra_evsub *s = ud;
    if (s->filter && !s->filter(ev->type, ev->data, s->filter_ud))
        return;
    json_t *j = lyra_event_to_json(ev);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    pthread_mutex_lock(&s->lock);
    bool tell = false;
    if (!s->closed) {
        if (text) {
            tell = push(s, ev->seq, text, true);
        } else { /* out of memory: the client learns it missed one */
            s->dropped++;
            tell = append(s, 0, NULL, false);
        }
        text = NULL;
        tell = tell && !s->replaying; /* new() tells once the replay is in */
    }
    pthread_mutex_unlock(&s->lock);
    free(text);
    if (tell && s->notify)
        s->notify(s->ud);
}

static void on_row(uint64_t seq, const char *type, const char *json, void *ud)
{
    struct lyra_evsub *s = ud;
    if (s->filter) {
        json_t *row = json_loads(json, 0, NULL);
        bool show = row && s->filter(type, json_object_get(row, "data"), s->filter_ud);
        json_decref(row);
        if (!show)
            return;
    }
    char *copy = strdup(json);
    if (!copy)
        return;
    pthread_mutex_lock(&s->lock);
    push(s, seq, copy, false);
    pthread_mutex_unlock(&s->lock);
}

int lyra_evsub_new(struct lyra_bus *bus, struct lyra_store *store, uint64_t since, const char *patterns,
                   size_t max_queued, size_t max_bytes, lyra_evsub_notify_fn notify, void *ud,
                   struct lyra_evsub **out, struct lyra_err *err)
{
    return lyra_evsub_new_filtered(bus, store, since, patterns, max_queued, max_bytes, notify, ud, NULL, NULL, out,
                                   err);
}

int lyra_evsub_new_filtered(struct lyra_bus *bus, struct lyra_store *store, uint64_t since, const char *patterns,
                            size_t max_queued, size_t max_bytes, lyra_evsub_notify_fn notify, void *ud,
                            lyra_evsub_filter_fn filter, void *filter_ud, struct lyra_evsub **out,
                            struct lyra_err *err)
{
    *out = NULL;
    if (patterns && strcmp(patterns, "*") == 0)
        patterns = NULL;
    if (!lyra_evsub_patterns_valid(patterns))
        return lyra_err_set(err, LYRA_EINVAL,
                            "invalid event type filter: comma-separated names like model.* or job.progress");
    struct lyra_evsub *s = calloc(1, sizeof *s);
    if (!s)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    s->bus = bus;
    s->max = max_queued ? max_queued : 1024;
    s->max_bytes = max_bytes ? max_bytes : (size_t)1 << 20;
    s->tail = &s->head;
    s->notify = notify;
    s->ud = ud;
    s->filter = filter;
    s->filter_ud = filter_ud;
    pthread_mutex_init(&s->lock, NULL);
    const char *pat = patterns ? patterns : "*";
    if (since == LYRA_EVSUB_LIVE) {
        s->last_seq = lyra_bus_last_seq(bus);
        s->sub = lyra_bus_subscribe(bus, pat, on_event, s);
    } else {
        /* Older than the memory ring: from the database first. */
        struct lyra_bus_stats st;
        lyra_bus_stats(bus, &st);
        s->last_seq = since;
        s->delivered_seq = since;
        if (store && since + 1 < st.first_seq) {
            uint64_t pruned = 0;
            struct lyra_err rerr = {0};
            lyra_evlog_replay(store, since, st.first_seq, patterns, on_row, s, &pruned, &rerr);
            if (pruned > since) { /* retention deleted events this client has not seen */
                pthread_mutex_lock(&s->lock);
                struct item *rest = s->head;
                s->head = NULL;
                s->tail = &s->head;
                append(s, 0, NULL, false); /* the gap first, then what is left */
                s->head->next = rest;
                while (*s->tail)
                    s->tail = &(*s->tail)->next;
                pthread_mutex_unlock(&s->lock);
            }
        }
        s->replaying = true;
        uint64_t first = 0;
        s->sub = lyra_bus_replay_and_subscribe(bus, s->last_seq, pat, on_event, s, &first);
        pthread_mutex_lock(&s->lock);
        s->replaying = false;
        pthread_mutex_unlock(&s->lock);
    }
    if (!s->sub) {
        lyra_evsub_free(s);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    *out = s;
    if (notify && lyra_evsub_pending(s))
        notify(ud);
    return 0;
}

bool lyra_evsub_pending(struct lyra_evsub *s)
{
    pthread_mutex_lock(&s->lock);
    bool any = s->head != NULL;
    pthread_mutex_unlock(&s->lock);
    return any;
}

int lyra_evsub_next(struct lyra_evsub *s, char **json, uint64_t *seq)
{
    *json = NULL;
    pthread_mutex_lock(&s->lock);
    struct item *it = s->head;
    if (!it) {
        pthread_mutex_unlock(&s->lock);
        return LYRA_ENOTFOUND;
    }
    s->head = it->next;
    if (!s->head)
        s->tail = &s->head;
    if (!it->json) {
        /* The gap: where a reconnect resumes (the last event delivered). */
        uint64_t from = s->delivered_seq, dropped = s->dropped;
        s->dropped = 0;
        pthread_mutex_unlock(&s->lock);
        free(it);
        char ts[40];
        lyra_format_ts(lyra_wall_ms(), ts, sizeof ts);
        json_t *g = json_pack("{s:I, s:s, s:s, s:s, s:{s:I, s:I}}", "seq", (json_int_t)from, "ts", ts, "type",
                              "stream.gap", "source", "events", "data", "resume_from", (json_int_t)from, "dropped",
                              (json_int_t)dropped);
        *json = g ? json_dumps(g, JSON_COMPACT) : NULL;
        json_decref(g);
        *seq = from;
        return *json ? 0 : LYRA_ENOMEM;
    }
    if (it->live)
        s->n_live--;
    s->bytes -= strlen(it->json);
    s->delivered_seq = it->seq;
    pthread_mutex_unlock(&s->lock);
    *json = it->json;
    *seq = it->seq;
    free(it);
    return 0;
}

void lyra_evsub_free(struct lyra_evsub *s)
{
    if (!s)
        return;
    if (s->sub)
        lyra_bus_unsubscribe(s->bus, s->sub); /* after it returns, on_event runs no more */
    pthread_mutex_lock(&s->lock);
    s->closed = true;
    for (struct item *i = s->head, *next; i; i = next) {
        next = i->next;
        free(i->json);
        free(i);
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
