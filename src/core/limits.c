/* limits.c — the shared ranges as a table, for lookups at run time. */
#include "core/limits.h"

static const struct lyra_limit limits[LYRA_LIMIT_COUNT] = {
#define LYRA_X(id, name, lo, hi) [LYRA_LIMIT_##id] = {name, lo, hi},
    LYRA_LIMITS(LYRA_X)
#undef LYRA_X
};

const struct lyra_limit *lyra_limit_get(enum lyra_limit_id id)
{
    return (unsigned)id < LYRA_LIMIT_COUNT ? &limits[id] : NULL;
}

long lyra_limit_clamp(enum lyra_limit_id id, long v)
{
    const struct lyra_limit *l = lyra_limit_get(id);
    if (!l)
        return v;
    return v < l->lo ? l->lo : v > l->hi ? l->hi : v;
}
