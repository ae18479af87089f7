/* cache.h — the policy of the model cache: may a model be loaded now, and
 * which resident models must go first.
 *
 * The cache is the set of live worker processes.  Two hard limits hold at
 * every moment:
 *   - at most `max_loaded` models are resident (loading or loaded; a worker
 *     that is stopping no longer counts, it serves nothing);
 *   - the memory of every live worker, stopping ones included (they hold
 *     their memory until the process has exited), plus the need of the new
 *     load stays within `budget_bytes`.
 * A worker's bytes are what the manager knows best: the larger of the
 * estimate from the GGUF file and the last measurement from /proc.
 *
 * Victims are chosen least recently used first among idle models only: a
 * pinned model, a busy one (requests running or queued), a loading one and
 * a stopping one are never chosen.  When the count alone forced the
 * eviction and the memory fits with the victims still alive, the new load
 * may start at once (start_now) while the victims drain; otherwise it waits
 * until their processes exited.
 *
 * This module is pure (no clock, no I/O, no state) so that the policy can
 * be tested exhaustively; the manager (models/manager.c) applies it.
 * Thread-safety: every function is thread-safe. */
#ifndef LYRA_CACHE_H
#define LYRA_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a model left the cache (the `reason` of cache.evicted and of
 * model.unloaded, and the label of lyra_cache_evictions_total). */
enum lyra_evict_reason {
    LYRA_EVICT_LRU,      /* models.max_loaded was reached */
    LYRA_EVICT_BUDGET,   /* the memory budget was reached */
    LYRA_EVICT_IDLE,     /* keep_alive expired (or 0: after its request) */
    LYRA_EVICT_WATCHDOG, /* the memory watchdog shed it */
    LYRA_EVICT_ADMIN,    /* POST /models/{name}/unload */
    LYRA_EVICT_N
};

/* "lru", "budget", "idle", "watchdog", "admin". */
const char *lyra_evict_reason_name(enum lyra_evict_reason r);

/* One live worker as the policy sees it. */
struct lyra_cache_entry {
    uint64_t bytes;       /* max(estimate, measured) */
    int64_t last_used_us; /* any clock; only the order matters */
    bool pinned;
    bool busy;            /* requests running or waiting for it */
    bool loading;
    bool stopping;        /* asked to exit: holds memory, not resident */
};

struct lyra_cache_limits {
    int max_loaded;        /* >= 1 */
    uint64_t budget_bytes; /* 0 = no memory limit */
};

enum lyra_cache_verdict {
    LYRA_CACHE_FITS,  /* load now */
    LYRA_CACHE_EVICT, /* stop the victims; load when start_now, else once they exited */
    LYRA_CACHE_WAIT,  /* nothing can go now (busy, pinned, loading, stopping): wait */
    LYRA_CACHE_NEVER, /* does not fit even with every unpinned model gone */
};

struct lyra_cache_plan {
    enum lyra_cache_verdict verdict;
    enum lyra_evict_reason reason; /* EVICT: LRU when the count forced it, else BUDGET */
    bool start_now;                /* EVICT: the memory fits while the victims drain */
    size_t n_victims;              /* EVICT: indexes into the entries, in `victims` */
    uint64_t held_bytes;           /* what every live worker holds now */
    uint64_t pinned_bytes;         /* of that, pinned resident models */
    int resident;                  /* entries not stopping */
};

/* Plans the admission of a model needing `need` bytes among the n live
 * workers `e`.  `victims` (capacity n, may be NULL when n is 0) receives the
 * indexes of the models to stop, least recently used first. */
void lyra_cache_plan(const struct lyra_cache_limits *lim, const struct lyra_cache_entry *e, size_t n, uint64_t need,
                     size_t *victims, struct lyra_cache_plan *out);

/* The idle unpinned resident entry used least recently, or -1: what the
 * watchdog sheds first. */
long lyra_cache_lru_idle(const struct lyra_cache_entry *e, size_t n);

/* The busy unpinned resident entry holding most memory, or -1: the
 * watchdog's last resort. */
long lyra_cache_largest_busy(const struct lyra_cache_entry *e, size_t n);

#endif
