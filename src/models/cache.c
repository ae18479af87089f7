/* cache.c — the cache policy (see cache.h): admission against the count
 * and the memory budget, victims least recently used first. */
#include "models/cache.h"

#include <stdlib.h>

const char *lyra_evict_reason_name(enum lyra_evict_reason r)
{
    static const char *const names[LYRA_EVICT_N] = {"lru", "budget", "idle", "watchdog", "admin"};
    return r >= 0 && r < LYRA_EVICT_N ? names[r] : "unknown";
}

static bool evictable(const struct lyra_cache_entry *x)
{
    return !x->pinned && !x->busy && !x->loading && !x->stopping;
}

long lyra_cache_lru_idle(const struct lyra_cache_entry *e, size_t n)
{
    long best = -1;
    for (size_t i = 0; i < n; i++)
        if (evictable(&e[i]) && (best < 0 || e[i].last_used_us < e[best].last_used_us))
            best = (long)i;
    return best;
}

long lyra_cache_largest_busy(const struct lyra_cache_entry *e, size_t n)
{
    long best = -1;
    for (size_t i = 0; i < n; i++)
        if (!e[i].pinned && !e[i].stopping && e[i].busy && (best < 0 || e[i].bytes > e[best].bytes))
            best = (long)i;
    return best;
}

/* Does the new model fit with `gone` resident models and `freed` bytes
 * fewer?  Memory that a victim frees only counts once it exited. */
static bool count_ok(const struct lyra_cache_limits *lim, int resident, size_t gone)
{
    return resident - (int)gone + 1 <= lim->max_loaded;
}

static bool memory_ok(const struct lyra_cache_limits *lim, uint64_t held, uint64_t freed, uint64_t need)
{
    return !lim->budget_bytes || held - freed + need <= lim->budget_bytes;
}

void lyra_cache_plan(const struct lyra_cache_limits *lim, const struct lyra_cache_entry *e, size_t n, uint64_t need,
                     size_t *victims, struct lyra_cache_plan *out)
{
    *out = (struct lyra_cache_plan){.verdict = LYRA_CACHE_WAIT};
    for (size_t i = 0; i < n; i++) {
        out->held_bytes += e[i].bytes;
        if (!e[i].stopping) {
            out->resident++;
            if (e[i].pinned)
                out->pinned_bytes += e[i].bytes;
        }
    }
    if (lim->budget_bytes && (need > lim->budget_bytes || out->pinned_bytes + need > lim->budget_bytes)) {
        out->verdict = LYRA_CACHE_NEVER;
        return;
    }
    if (count_ok(lim, out->resident, 0) && memory_ok(lim, out->held_bytes, 0, need)) {
        out->verdict = LYRA_CACHE_FITS;
        return;
    }
    /* Memory of workers already stopping comes back without stopping more;
     * then idle models, least recently used first (a selection over a
     * handful of workers, no sort needed). */
    uint64_t freed = 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].stopping)
            freed += e[i].bytes;
    size_t k = 0;
    bool *taken = n ? calloc(n, sizeof *taken) : NULL;
    if (n && !taken)
        return; /* WAIT: the next pass tries again */
    while (!(count_ok(lim, out->resident, k) && memory_ok(lim, out->held_bytes, freed, need))) {
        long best = -1;
        for (size_t i = 0; i < n; i++)
            if (!taken[i] && evictable(&e[i]) && (best < 0 || e[i].last_used_us < e[best].last_used_us))
                best = (long)i;
        if (best < 0)
            break;
        taken[best] = true;
        victims[k++] = (size_t)best;
        freed += e[best].bytes;
    }
    free(taken);
    if (k == 0 || !(count_ok(lim, out->resident, k) && memory_ok(lim, out->held_bytes, freed, need)))
        return; /* WAIT: room is coming from stopping workers, or not enough is idle (stop nothing for
                   nothing) */
    out->verdict = LYRA_CACHE_EVICT;
    out->n_victims = k;
    out->reason = count_ok(lim, out->resident, 0) ? LYRA_EVICT_BUDGET : LYRA_EVICT_LRU;
    out->start_now = memory_ok(lim, out->held_bytes, 0, need);
}
