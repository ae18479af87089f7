/* memory.h — memory readings: how much the machine (or this process's
 * cgroup) has, how much is used, and how hard the kernel is pressed.
 *
 * A reading comes from a source behind one interface, so that what decides
 * by memory (the model cache, the watchdog) can be tested with injected
 * numbers:
 *  - the system source reads /proc/meminfo (MemTotal, MemAvailable),
 *    /proc/self/cgroup and the cgroup v2 tree under /sys/fs/cgroup
 *    (memory.current, memory.stat, memory.max of the cgroup and each
 *    ancestor, memory.pressure of the cgroup, else /proc/pressure/memory);
 *  - the file source is a FAKE for tests: a small JSON file re-read on every
 *    read, which a test rewrites (atomically) to inject pressure.
 *
 * Cgroup v1 is not read: on a v1 (or hybrid) host the memory controller's
 * limit is not seen, cgroup_current and cgroup_max stay 0 and the machine's
 * MemTotal/MemAvailable decide.  A hybrid host's v2 tree at
 * <cgroup_root>/unified is used for PSI when it has the process's cgroup.
 *
 * Parsing is defensive: a missing, unreadable or odd file means "no limit"
 * or "unknown" (PSI -1), never a failure of the whole reading, except
 * /proc/meminfo itself (without MemTotal there is no reading).
 *
 * Thread-safety: a source holds no mutable state; lyra_memsource_read may be
 * called from any number of threads at once.  _new/_free are not
 * thread-safe with reads of the same source.  The derived values and
 * lyra_proc_memory are pure / thread-safe. */
#ifndef LYRA_MEMORY_H
#define LYRA_MEMORY_H

#include <stdint.h>

#include "core/error.h"

struct lyra_mem_reading {
    int64_t at_us;            /* monotonic (lyra_now_us) */
    uint64_t total_bytes;     /* MemTotal */
    uint64_t available_bytes; /* MemAvailable */
    /* The cgroup pair that binds: of this process's cgroup and its
     * ancestors that set a memory.max, the one with the least room left
     * (max - current); this process's own cgroup when none sets one.
     * current is the working set: memory.current less the inactive_file of
     * memory.stat (page cache the kernel reclaims before an OOM kill), as
     * the kubelet and `docker stats` count it.  0 when unknown / no v2. */
    uint64_t cgroup_current;
    uint64_t cgroup_max;   /* that cgroup's memory.max; 0 = no limit */
    double psi_some_avg10; /* memory pressure "some avg10" in percent; -1 when unknown */
    double psi_full_avg10; /* "full avg10"; -1 when unknown */
};

struct lyra_memsource; /* opaque */

/* The real source: /proc and /sys/fs/cgroup.  *out: caller frees with
 * lyra_memsource_free.  Fails only without memory (nothing is read yet). */
int lyra_memsource_system(struct lyra_memsource **out, struct lyra_err *err);

/* The same with the roots given (for tests with fixture trees): reads
 * <proc_root>/meminfo, <proc_root>/self/cgroup, <proc_root>/pressure/memory
 * and <cgroup_root>/<path>/memory.*.  Both strings are copied. */
int lyra_memsource_system_at(const char *proc_root, const char *cgroup_root, struct lyra_memsource **out,
                             struct lyra_err *err);

/* FAKE for tests: a JSON object re-read from `path` (copied) on every read,
 *   {"total":8589934592,"available":1073741824,"cgroup_current":0,
 *    "cgroup_max":0,"psi_some":12.5,"psi_full":1.0}
 * Missing keys are 0 (bytes) / -1 (PSI); negative byte counts are 0.  The
 * file need not exist yet.  Rewrite it with write-temp + rename, so that a
 * read never sees half a file. */
int lyra_memsource_file(const char *path, struct lyra_memsource **out, struct lyra_err *err);

/* LYRA_FAKE_MEMINFO=/path set (and not empty) → the file source on that
 * path, else the system source.  A test-only knob: the daemon's integration
 * tests use it to drive the watchdog and the model cache. */
int lyra_memsource_from_env(struct lyra_memsource **out, struct lyra_err *err);

/* Fills *out (always: fields that could not be read are 0 / -1, at_us is
 * set).  Returns 0, or LYRA_EIO when /proc/meminfo has no MemTotal or the
 * fake file is missing, LYRA_EPARSE when the fake file is not a JSON
 * object. */
int lyra_memsource_read(struct lyra_memsource *src, struct lyra_mem_reading *out);

/* NULL is a no-op. */
void lyra_memsource_free(struct lyra_memsource *src);

/* Derived values (pure).  With no cgroup limit, limit = total and headroom
 * = available.  With one, headroom is the smaller of the machine's
 * MemAvailable and the cgroup's room (max - current): either can run out
 * first.  Values are clamped so that used + headroom == limit. */
/* min(total, cgroup_max when set) */
uint64_t lyra_mem_limit(const struct lyra_mem_reading *r);
/* min(available, cgroup_max - cgroup_current when set), <= limit */
uint64_t lyra_mem_headroom(const struct lyra_mem_reading *r);
/* limit - headroom */
uint64_t lyra_mem_used(const struct lyra_mem_reading *r);
/* 100 * used / limit; 0 when the limit is 0 */
double lyra_mem_used_percent(const struct lyra_mem_reading *r);

/* Memory of process `pid` (0 = this process) from /proc/<pid>/smaps_rollup
 * (Rss, Pss); without it (old kernels, no permission) from
 * /proc/<pid>/status VmRSS, and then pss = rss.  Either pointer may be
 * NULL.  Returns 0, LYRA_ENOTFOUND when there is no such process, LYRA_EIO
 * when neither file gives a number. */
int lyra_proc_memory(int pid, uint64_t *rss_bytes, uint64_t *pss_bytes);
/* The same under another proc root (tests). */
int lyra_proc_memory_at(const char *proc_root, int pid, uint64_t *rss_bytes, uint64_t *pss_bytes);

#endif
