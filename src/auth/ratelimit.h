/* ratelimit.h — back-off for failed authentication, per client address.
 *
 * Each address has a count of recent failures.  After `threshold` failures
 * within `window_ms`, the address is blocked for `base_block_ms`, doubling
 * with each further failure after a block (capped at `max_block_ms`); while
 * blocked, every request from it that needs authentication is answered 429
 * with Retry-After, without looking at the key (so guessing gains nothing).
 * A success does not reset a block in progress; it clears the count.
 * Entries idle for longer than max_block_ms + window_ms are forgotten; the
 * table is bounded (`max_entries`; when full the oldest entry is evicted),
 * so a flood of addresses cannot exhaust memory.
 *
 * Thread-safety: every function but new/free is thread-safe (one mutex). */
#ifndef LYRA_RATELIMIT_H
#define LYRA_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lyra_ratelimit;

struct lyra_ratelimit_options {
    int threshold;          /* failures before a block; 0 = 10 */
    int64_t window_ms;      /* 0 = 60000 */
    int64_t base_block_ms;  /* 0 = 1000 */
    int64_t max_block_ms;   /* 0 = 300000 */
    size_t max_entries;     /* 0 = 10000 */
    int64_t (*now_ms)(void);/* monotonic clock; NULL = real (tests inject a fake) */
};

struct lyra_ratelimit *lyra_ratelimit_new(const struct lyra_ratelimit_options *o);
void lyra_ratelimit_free(struct lyra_ratelimit *rl);

/* 0 when `addr` may try; otherwise the milliseconds until it may (> 0). */
int64_t lyra_ratelimit_blocked(struct lyra_ratelimit *rl, const char *addr);
/* Records a failed attempt; returns the block now in force (ms, 0 = none). */
int64_t lyra_ratelimit_fail(struct lyra_ratelimit *rl, const char *addr);
/* Records a success (clears the failure count, not a block). */
void lyra_ratelimit_ok(struct lyra_ratelimit *rl, const char *addr);

#endif
