/* expiry.h — the --expires of `lyra keys create`: when a new key stops
 * working, as a duration from now or a calendar date.
 *
 *   "90m", "12h", "30d", "2w", "3600s"  a positive whole number and one unit
 *                                        (s, m, h, d, w); at most 100 years
 *   "2027-01-31"                         00:00 UTC at the start of that day;
 *                                        it must be in the future
 *
 * A duration is sent to the daemon as "expires_in" (seconds: the daemon's
 * clock decides when), a date as "expires_at" (ms since the epoch).  A bare
 * number is refused: minutes or seconds cannot be guessed.
 *
 * Thread-safety: pure functions. */
#ifndef LYRA_CLI_EXPIRY_H
#define LYRA_CLI_EXPIRY_H

#include <stdint.h>

#include "core/error.h"

struct lyra_expiry {
    int64_t in_s;  /* a duration: seconds from now (> 0), else 0 */
    int64_t at_ms; /* a date: wall-clock ms since the epoch (> now), else 0 */
};

/* Parses `text` (above); now_ms is the wall clock that a date must lie
 * after.  0 with *out filled (exactly one field non-zero), or LYRA_EINVAL
 * with err (may be NULL) saying what is wrong. */
int lyra_expiry_parse(const char *text, int64_t now_ms, struct lyra_expiry *out, struct lyra_err *err);

#endif
