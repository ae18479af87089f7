/* cpu.c — the affinity mask and cgroup CPU quotas, read from the kernel's
 * files.  Paths from /proc/self/cgroup are walked up to the root of the
 * cgroup mount, because a parent's quota limits its children too (and in a
 * container the path may name a cgroup above what is mounted). */
#include "sys/cpu.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROC_CGROUP_MAX 16384 /* /proc/self/cgroup is a few lines */

/* Reads the first line of a small file into buf; false if unreadable. */
static bool read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    return ok;
}

/* Parses a whole decimal number, trailing whitespace allowed. */
static bool parse_num(const char *s, char **end, long long *out)
{
    errno = 0;
    long long v = strtoll(s, end, 10);
    if (errno || *end == s)
        return false;
    *out = v;
    return true;
}

/* ceil(quota / period) as a CPU count, at least 1. */
static int quota_cpus(long long quota, long long period)
{
    long long n = (quota + period - 1) / period;
    return n < 1 ? 1 : n > INT_MAX ? INT_MAX : (int)n;
}

int lyra_cpu_parse_max(const char *text)
{
    if (!text)
        return -1;
    char *end;
    long long quota, period;
    const char *p = text;
    bool unlimited = strncmp(p, "max", 3) == 0 && (p[3] == ' ' || p[3] == '\t');
    if (unlimited) {
        p += 3;
    } else {
        if (!parse_num(p, &end, &quota) || quota <= 0 || (*end != ' ' && *end != '\t'))
            return -1;
        p = end;
    }
    if (!parse_num(p, &end, &period) || period <= 0)
        return -1;
    while (*end == ' ' || *end == '\t' || *end == '\n')
        end++;
    if (*end)
        return -1;
    return unlimited ? 0 : quota_cpus(quota, period);
}

/* v1: cpu.cfs_quota_us (-1 = none) over cpu.cfs_period_us in dir. */
static int v1_limit(const char *dir)
{
    char path[PATH_MAX + 32], q[64], p[64];
    long long quota, period;
    char *end;
    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
    if (!read_line(path, q, sizeof q) || !parse_num(q, &end, &quota) || quota <= 0)
        return 0;
    snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
    if (!read_line(path, p, sizeof p) || !parse_num(p, &end, &period) || period <= 0)
        return 0;
    return quota_cpus(quota, period);
}

/* v2: cpu.max in dir. */
static int v2_limit(const char *dir)
{
    char path[PATH_MAX + 32], line[128];
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    if (!read_line(path, line, sizeof line))
        return 0;
    int n = lyra_cpu_parse_max(line);
    return n > 0 ? n : 0;
}

/* The tightest limit of the cgroup at `path` under `mount` and of every
 * ancestor up to the mount itself; 0 = none. */
static int walk_up(const char *mount, const char *path, bool v2)
{
    char dir[PATH_MAX];
    if (strstr(path, "/..") || path[0] != '/') /* never look outside the mount */
        path = "/";
    if (snprintf(dir, sizeof dir, "%s%s", mount, strcmp(path, "/") ? path : "") >= (int)sizeof dir)
        return 0;
    size_t base = strlen(mount);
    int best = 0;
    for (;;) {
        int n = v2 ? v2_limit(dir) : v1_limit(dir);
        if (n > 0 && (best == 0 || n < best))
            best = n;
        char *slash = strrchr(dir + base, '/');
        if (!slash)
            break;
        *slash = '\0';
    }
    return best;
}

/* True when the comma-separated list holds `name`. */
static bool has_controller(const char *list, size_t len, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list, *end = list + len; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t l = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (l == n && !strncmp(p, name, n))
            return true;
        p += l + 1;
    }
    return false;
}

int lyra_cpu_cgroup_limit(const char *proc_cgroup, const char *cgroup_root)
{
    int best = 0;
    for (const char *line = proc_cgroup; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        /* hierarchy-id:controllers:path */
        const char *c1 = memchr(line, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - line)) : NULL;
        if (c2 && (size_t)(line + len - (c2 + 1)) < PATH_MAX) {
            char path[PATH_MAX], mount[PATH_MAX];
            size_t plen = (size_t)(line + len - (c2 + 1)), clen = (size_t)(c2 - (c1 + 1));
            memcpy(path, c2 + 1, plen);
            path[plen] = '\0';
            int n = 0;
            if (!strncmp(line, "0::", 3)) {
                n = walk_up(cgroup_root, path, true);
            } else if (has_controller(c1 + 1, clen, "cpu")) {
                /* mounted as cpu/ (often a link to cpu,cpuacct/) or by its list */
                char list[256] = "cpu";
                snprintf(mount, sizeof mount, "%s/cpu", cgroup_root);
                if (access(mount, F_OK) != 0 && clen < sizeof list) {
                    memcpy(list, c1 + 1, clen);
                    list[clen] = '\0';
                    snprintf(mount, sizeof mount, "%s/%s", cgroup_root, list);
                }
                n = walk_up(mount, path, false);
            }
            if (n > 0 && (best == 0 || n < best))
                best = n;
        }
        line = eol ? eol + 1 : NULL;
    }
    return best;
}

int lyra_cpu_affinity(void)
{
    /* A fixed cpu_set_t holds 1024 CPUs; larger machines need a bigger
     * mask, and sched_getaffinity says EINVAL until it is big enough. */
    for (int cpus = 1024; cpus <= (1 << 20); cpus *= 4) {
        cpu_set_t *set = CPU_ALLOC(cpus);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE(cpus);
        int rc = sched_getaffinity(0, size, set);
        int n = rc == 0 ? CPU_COUNT_S(size, set) : 0;
        int e = errno;
        CPU_FREE(set);
        if (n > 0)
            return n;
        if (rc == 0 || e != EINVAL)
            break;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < INT_MAX ? (int)n : 1;
}

int lyra_cpu_usable_at(const char *proc_cgroup_path, const char *cgroup_root)
{
    int n = lyra_cpu_affinity();
    FILE *f = fopen(proc_cgroup_path, "re");
    if (f) {
        char text[PROC_CGROUP_MAX];
        size_t got = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[got] = '\0';
        int limit = lyra_cpu_cgroup_limit(text, cgroup_root);
        if (limit > 0 && limit < n)
            n = limit;
    }
    return n;
}

int lyra_cpu_usable(void)
{
    return lyra_cpu_usable_at("/proc/self/cgroup", "/sys/fs/cgroup");
}
