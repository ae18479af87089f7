/* proc.c — readings of /proc/self/status, getrusage and /proc/meminfo. */
#include "sys/proc.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "core/error.h"
#include "core/util.h"

int lyra_proc_self_sample(struct lyra_proc_sample *out)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return LYRA_EIO;
    out->at_us = lyra_now_us();
    out->cpu_us = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                  (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    out->rss_bytes = 0;
    out->threads = 0;
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return LYRA_EIO;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        int n;
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            out->rss_bytes = kb * 1024;
        else if (sscanf(line, "Threads: %d", &n) == 1)
            out->threads = n;
    }
    fclose(f);
    return 0;
}

double lyra_proc_cpu_percent(const struct lyra_proc_sample *before, const struct lyra_proc_sample *after)
{
    int64_t wall = after->at_us - before->at_us;
    if (wall <= 0)
        return 0.0;
    return 100.0 * (double)(after->cpu_us - before->cpu_us) / (double)wall;
}

int lyra_sys_memory(uint64_t *total, uint64_t *available)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return LYRA_EIO;
    char line[256];
    int found = 0;
    *total = *available = 0;
    while (fgets(line, sizeof line, f) && found < 2) {
        unsigned long long kb;
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            *total = kb * 1024, found++;
        else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            *available = kb * 1024, found++;
    }
    fclose(f);
    return found == 2 ? 0 : LYRA_EIO;
}
