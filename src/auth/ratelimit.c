/* ratelimit.c — back-off for failed authentication per client address
 * (ratelimit.h).
 *
 * The table is a chained hash of entries plus a list of the same entries in
 * the order they last failed (oldest first).  Because an entry only moves
 * to the tail when it fails, the list head is always the longest idle
 * entry: expiry pops from the head while it is idle too long, and a full
 * table evicts the head.  Both are O(1) per entry, so a flood of addresses
 * costs bounded memory and bounded time per call.
 *
 * A block escalates: the first one lasts base_block_ms; once an address
 * has been blocked, every failure after the block ended blocks it again for
 * twice as long (capped).  A failure reported while a block is in force
 * changes nothing (the caller answers 429 without trying the key).  A
 * success clears the count and the escalation, not a block in force. */
#include "auth/ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define ADDR_MAX 63 /* longer text is cut: an IPv6 literal with a zone fits */

struct entry {
    char addr[ADDR_MAX + 1];
    int failures;           /* in the current window */
    int64_t window_start;   /* first failure of the window */
    int64_t block_ms;       /* length of the last block; 0 = never blocked */
    int64_t blocked_until;  /* 0 = not blocked */
    int64_t last_fail;      /* for expiry: the list is ordered by it */
    struct entry *hnext;            /* hash chain */
    struct entry *prev, *next;      /* idle order */
};

struct lyra_ratelimit {
    struct lyra_ratelimit_options o;
    pthread_mutex_t lock;
    struct entry **buckets;
    size_t n_buckets; /* a power of two */
    size_t count;
    struct entry *oldest, *newest;
};

static int64_t real_now(void)
{
    return lyra_now_ms();
}

struct lyra_ratelimit *lyra_ratelimit_new(const struct lyra_ratelimit_options *o)
{
    struct lyra_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    if (o)
        rl->o = *o;
    if (rl->o.threshold <= 0)
        rl->o.threshold = 10;
    if (rl->o.window_ms <= 0)
        rl->o.window_ms = 60000;
    if (rl->o.base_block_ms <= 0)
        rl->o.base_block_ms = 1000;
    if (rl->o.max_block_ms <= 0)
        rl->o.max_block_ms = 300000;
    if (rl->o.max_block_ms < rl->o.base_block_ms)
        rl->o.max_block_ms = rl->o.base_block_ms;
    if (rl->o.max_entries == 0)
        rl->o.max_entries = 10000;
    if (!rl->o.now_ms)
        rl->o.now_ms = real_now;
    rl->n_buckets = 16;
    while (rl->n_buckets < rl->o.max_entries && rl->n_buckets < ((size_t)1 << 20))
        rl->n_buckets <<= 1;
    rl->buckets = calloc(rl->n_buckets, sizeof *rl->buckets);
    if (!rl->buckets) {
        free(rl);
        return NULL;
    }
    pthread_mutex_init(&rl->lock, NULL);
    return rl;
}

void lyra_ratelimit_free(struct lyra_ratelimit *rl)
{
    if (!rl)
        return;
    for (struct entry *e = rl->oldest, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    free(rl->buckets);
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

/* The address as kept (cut to ADDR_MAX bytes). */
static void key_of(const char *addr, char out[ADDR_MAX + 1])
{
    size_t n = strnlen(addr ? addr : "", ADDR_MAX);
    memcpy(out, addr ? addr : "", n);
    out[n] = '\0';
}

static size_t bucket_of(const struct lyra_ratelimit *rl, const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (size_t)h & (rl->n_buckets - 1);
}

static struct entry *find(struct lyra_ratelimit *rl, const char *key)
{
    for (struct entry *e = rl->buckets[bucket_of(rl, key)]; e; e = e->hnext)
        if (strcmp(e->addr, key) == 0)
            return e;
    return NULL;
}

static void list_unlink(struct lyra_ratelimit *rl, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        rl->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        rl->newest = e->prev;
    e->prev = e->next = NULL;
}

static void list_append(struct lyra_ratelimit *rl, struct entry *e)
{
    e->prev = rl->newest;
    e->next = NULL;
    if (rl->newest)
        rl->newest->next = e;
    else
        rl->oldest = e;
    rl->newest = e;
}

static void remove_entry(struct lyra_ratelimit *rl, struct entry *e)
{
    struct entry **pp = &rl->buckets[bucket_of(rl, e->addr)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    list_unlink(rl, e);
    rl->count--;
    free(e);
}

/* Forgets the entries idle past any block they could hold plus a window. */
static void expire(struct lyra_ratelimit *rl, int64_t now)
{
    int64_t idle = rl->o.max_block_ms + rl->o.window_ms;
    while (rl->oldest && now - rl->oldest->last_fail > idle)
        remove_entry(rl, rl->oldest);
}

static int64_t remaining(const struct entry *e, int64_t now)
{
    return e && e->blocked_until > now ? e->blocked_until - now : 0;
}

int64_t lyra_ratelimit_blocked(struct lyra_ratelimit *rl, const char *addr)
{
    char key[ADDR_MAX + 1];
    key_of(addr, key);
    pthread_mutex_lock(&rl->lock);
    int64_t now = rl->o.now_ms();
    expire(rl, now);
    int64_t left = remaining(find(rl, key), now);
    pthread_mutex_unlock(&rl->lock);
    return left;
}

int64_t lyra_ratelimit_fail(struct lyra_ratelimit *rl, const char *addr)
{
    char key[ADDR_MAX + 1];
    key_of(addr, key);
    pthread_mutex_lock(&rl->lock);
    int64_t now = rl->o.now_ms();
    expire(rl, now);
    struct entry *e = find(rl, key);
    if (e && remaining(e, now) > 0) {
        int64_t left = remaining(e, now);
        pthread_mutex_unlock(&rl->lock);
        return left;
    }
    if (!e) {
        if (rl->count >= rl->o.max_entries && rl->oldest)
            remove_entry(rl, rl->oldest);
        e = calloc(1, sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&rl->lock);
            return 0; /* out of memory: this failure goes uncounted */
        }
        memcpy(e->addr, key, sizeof key);
        size_t b = bucket_of(rl, key);
        e->hnext = rl->buckets[b];
        rl->buckets[b] = e;
        rl->count++;
    } else {
        list_unlink(rl, e);
    }
    e->last_fail = now;
    list_append(rl, e);
    if (e->failures == 0 || now - e->window_start >= rl->o.window_ms) {
        e->failures = 0;
        e->window_start = now;
    }
    e->failures++;
    if (e->block_ms > 0) {
        /* Blocked before: every failure after that block re-blocks, longer. */
        e->block_ms = e->block_ms > rl->o.max_block_ms / 2 ? rl->o.max_block_ms : e->block_ms * 2;
        e->blocked_until = now + e->block_ms;
    } else if (e->failures >= rl->o.threshold) {
        e->block_ms = rl->o.base_block_ms;
        e->blocked_until = now + e->block_ms;
    }
    int64_t left = remaining(e, now);
    pthread_mutex_unlock(&rl->lock);
    return left;
}

void lyra_ratelimit_ok(struct lyra_ratelimit *rl, const char *addr)
{
    char key[ADDR_MAX + 1];
    key_of(addr, key);
    pthread_mutex_lock(&rl->lock);
    int64_t now = rl->o.now_ms();
    expire(rl, now);
    struct entry *e = find(rl, key);
    if (e) {
        if (remaining(e, now) > 0) {
            e->failures = 0;
            e->block_ms = 0; /* the block in force runs out; the next one starts at base again */
        } else {
            remove_entry(rl, e);
        }
    }
    pthread_mutex_unlock(&rl->lock);
}
