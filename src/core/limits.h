/* limits.h — the one table of ranges that the configuration and the worker
 * share, so that a value `lyra config validate` accepts is one `lyra worker`
 * starts with (a worker refusing its arguments used to surface only as
 * "exited with status 2").
 *
 * X(ID, NAME, LO, HI): NAME is the worker flag without its "--"; LO and HI
 * are inclusive.  The configuration keys models.ctx_size, models.parallel,
 * models.threads, models.gpu_layers (and the same fields of models.entries)
 * take their ranges from here, adding only their own "0 = default" or
 * "-1 = inherit" values where the table's range does not already hold them.
 *
 * Each limit is also an integer constant, LYRA_LIMIT_<ID>_MIN / _MAX, for
 * static tables.  Thread-safety: constant data only. */
#ifndef LYRA_LIMITS_H
#define LYRA_LIMITS_H

#include <stdbool.h>
#include <stddef.h>

#define LYRA_LIMITS(X)                                                                   \
    X(CTX, "ctx", 16, 1 << 24)           /* tokens of context per slot */                \
    X(PARALLEL, "parallel", 1, 256)      /* slots, i.e. concurrent requests per model */ \
    X(THREADS, "threads", 1, 1024)       /* CPU threads of one worker */                 \
    X(GPU_LAYERS, "gpu-layers", -1, 100000) /* -1 = all that fit, 0 = CPU only */        \
    X(BATCH, "batch", 1, 1 << 20)        /* tokens per decode step */                    \
    X(UBATCH, "ubatch", 1, 1 << 20)      /* tokens per micro-batch */

enum lyra_limit_id {
#define LYRA_X(id, name, lo, hi) LYRA_LIMIT_##id,
    LYRA_LIMITS(LYRA_X)
#undef LYRA_X
    LYRA_LIMIT_COUNT
};

enum {
#define LYRA_X(id, name, lo, hi) LYRA_LIMIT_##id##_MIN = (lo), LYRA_LIMIT_##id##_MAX = (hi),
    LYRA_LIMITS(LYRA_X)
#undef LYRA_X
};

/* The largest request body server.max_body_bytes may allow: half the worker
 * frame limit (proto/frame.h, LYRA_FRAME_MAX), so that the message built from
 * any accepted body fits one frame (escaping and defaults add a little; the
 * daemon still checks each frame before sending, answering 413). */
#define LYRA_LIMIT_BODY_MAX ((size_t)32 << 20)

struct lyra_limit {
    const char *name; /* the worker flag without "--" */
    long lo, hi;      /* inclusive */
};

/* The row of a limit; NULL for an id out of range. */
const struct lyra_limit *lyra_limit_get(enum lyra_limit_id id);

/* v moved into the limit's range (the nearest bound when outside). */
long lyra_limit_clamp(enum lyra_limit_id id, long v);

#endif
