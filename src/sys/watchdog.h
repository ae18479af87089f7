/* watchdog.h — the memory watchdog: samples a memory source every interval
 * on its own thread, classifies the reading as ok / warning / critical, and
 * reports level changes (bus events, a log line) so that load is shed
 * before the kernel's OOM killer picks a victim.
 *
 * A reading is
 *  - critical when used >= critical_percent of lyra_mem_limit(), or PSI
 *    "some avg10" >= psi_critical, or headroom < min_available_bytes;
 *  - warning when used >= warn_percent, or PSI >= psi_warn;
 *  - ok otherwise.
 * Hysteresis: a level once entered is left only when its value is 5 points
 * below its threshold (used percent, PSI percent; for min_available_bytes,
 * headroom must be back above it by 5 % of the limit), so a reading that
 * hovers at a threshold does not flap.  Critical may drop to warning, which
 * is then announced as such.
 *
 * Nothing here depends on the machine's size: a 1 GiB edge box is watched
 * like a large server (min_available_bytes is what protects a small one,
 * where 5 % of RAM is little).
 *
 * Events (source "memory"), published on entering a level: memory.warning,
 * memory.critical, memory.ok (back to ok); data {level, used_bytes,
 * limit_bytes, available_bytes (= headroom), used_percent, psi_some_avg10
 * (null when unknown), cgroup (true when a cgroup memory.max applies)}.
 * No event for the first sample when it is ok; one when it is not.
 *
 * A failed read (the fake file missing, /proc unreadable) is skipped: the
 * level and the last reading stay, on_sample is not called, and one line
 * is logged per run of failures.
 *
 * Thread-safety: lyra_watchdog_level/last may be called from any thread.
 * classify and level_name are pure.  new/free are not thread-safe with the
 * other calls on the same watchdog. */
#ifndef LYRA_WATCHDOG_H
#define LYRA_WATCHDOG_H

#include <stdint.h>

#include "core/error.h"
#include "core/events.h"
#include "sys/memory.h"

enum lyra_mem_level { LYRA_MEM_OK = 0, LYRA_MEM_WARNING = 1, LYRA_MEM_CRITICAL = 2 };

/* The points below a threshold that leave its level. */
#define LYRA_WATCHDOG_HYSTERESIS 5

struct lyra_watchdog_options {
    struct lyra_memsource *source; /* borrowed; must outlive the watchdog */
    struct lyra_bus *bus;          /* borrowed, may be NULL: no events */
    int interval_ms;               /* > 0; default 1000 */
    int warn_percent;              /* of lyra_mem_limit(); 0 < warn <= critical <= 100; default 85 */
    int critical_percent;          /* default 95 */
    /* PSI some avg10 percent, defaults 20 / 50; <= 0 = ignore; warn <= critical */
    double psi_warn, psi_critical;
    /* Critical also when headroom < this; default 64 MiB.  0 = no floor. */
    uint64_t min_available_bytes;
    /* Called after every sample, on the watchdog thread, with the level
     * just decided; must not block and must not call lyra_watchdog_free.
     * May be NULL. */
    void (*on_sample)(const struct lyra_mem_reading *r, enum lyra_mem_level level, void *ud);
    void *ud;
};

struct lyra_watchdog; /* opaque */

/* Fills *o with the defaults above and `source`; NULL bus and callback. */
void lyra_watchdog_options_init(struct lyra_watchdog_options *o, struct lyra_memsource *source);

/* The level of reading r given the level before it (pure).  o must hold
 * valid thresholds (as lyra_watchdog_new checks them). */
enum lyra_mem_level lyra_watchdog_classify(const struct lyra_watchdog_options *o,
                                           const struct lyra_mem_reading *r, enum lyra_mem_level previous);

/* Checks and copies *o, takes the first sample, then starts the thread
 * "lyra-watchdog", which samples every interval_ms.  On return the level
 * and the last reading are those of the first sample (unless it failed),
 * and that sample has been reported (on_sample called, event published).
 * *out: caller frees with lyra_watchdog_free.  LYRA_EINVAL for bad
 * options, LYRA_ENOMEM / LYRA_EINTERNAL when the thread cannot start. */
int lyra_watchdog_new(const struct lyra_watchdog_options *o, struct lyra_watchdog **out,
                      struct lyra_err *err);

/* Stops the thread (at once: it waits on a condition variable, not in a
 * sleep) and joins it.  NULL is a no-op. */
void lyra_watchdog_free(struct lyra_watchdog *w);

/* The current level (LYRA_MEM_OK before any good sample). */
enum lyra_mem_level lyra_watchdog_level(struct lyra_watchdog *w);

/* Copies the latest good reading into *out.  0, or LYRA_EUNAVAILABLE when
 * no read has succeeded yet. */
int lyra_watchdog_last(struct lyra_watchdog *w, struct lyra_mem_reading *out);

/* "ok", "warning", "critical" ("unknown" for other values). */
const char *lyra_mem_level_name(enum lyra_mem_level l);

#endif
