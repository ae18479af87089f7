/* proc.h — process and system resource readings from /proc and getrusage.
 * Thread-safety: all functions are thread-safe (no shared state). */
#ifndef LYRA_PROC_H
#define LYRA_PROC_H

#include <stdint.h>

struct lyra_proc_sample {
    int64_t at_us;       /* monotonic time of the reading */
    int64_t cpu_us;      /* user + system CPU time used so far */
    uint64_t rss_bytes;  /* resident set size */
    int threads;
};

/* Reads this process's CPU time, RSS and thread count. */
int lyra_proc_self_sample(struct lyra_proc_sample *out);

/* CPU use between two samples in percent of one core (200 = two cores
 * busy).  0 when no time passed. */
double lyra_proc_cpu_percent(const struct lyra_proc_sample *before, const struct lyra_proc_sample *after);

/* System memory from /proc/meminfo: MemTotal and MemAvailable in bytes. */
int lyra_sys_memory(uint64_t *total, uint64_t *available);

#endif
