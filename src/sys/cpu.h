/* cpu.h — how many CPUs this process may really use: what every
 * "threads: 0" (models.threads, server.threads, the worker's --threads)
 * resolves to.
 *
 * The count is the smaller of
 *  - the CPUs in this thread's scheduler affinity mask (taskset, cpusets,
 *    docker --cpuset-cpus), and
 *  - the cgroup CPU quota rounded up (docker --cpus, systemd CPUQuota=,
 *    Kubernetes CPU limits): ceil(quota / period) from cgroup v2 `cpu.max`,
 *    or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the tightest of this
 *    process's cgroup and its ancestors ("max" or -1 = no limit),
 * and is never below 1.  Fewer threads than cores is what a quota calls
 * for: more would only be throttled.
 *
 * The parts take their inputs as arguments so that tests can feed them.
 * Thread-safety: all functions are thread-safe; each call reads the files
 * again (cheap, and done once at start by the callers). */
#ifndef LYRA_CPU_H
#define LYRA_CPU_H

/* min(lyra_cpu_affinity(), the cgroup limit of this process), >= 1. */
int lyra_cpu_usable(void);

/* The same, with the cgroup file of the process (normally
 * "/proc/self/cgroup") and the cgroup file system's mount point (normally
 * "/sys/fs/cgroup") given.  Missing or unreadable files mean no limit. */
int lyra_cpu_usable_at(const char *proc_cgroup_path, const char *cgroup_root);

/* CPUs in the calling thread's affinity mask (the online CPU count if the
 * mask cannot be read), >= 1. */
int lyra_cpu_affinity(void);

/* ceil(quota / period) from the text of a cgroup v2 cpu.max ("150000
 * 100000" -> 2); 0 for "max" (no limit); -1 when the text is not a cpu.max. */
int lyra_cpu_parse_max(const char *text);

/* The tightest CPU limit, as a CPU count, of the cgroups named by
 * proc_cgroup (the text of /proc/<pid>/cgroup) and their ancestors, read
 * under cgroup_root: v2 `<root>/<path>/cpu.max`, v1 `<root>/cpu/<path>/
 * cpu.cfs_quota_us` and `cpu.cfs_period_us`.  0 when nothing limits. */
int lyra_cpu_cgroup_limit(const char *proc_cgroup, const char *cgroup_root);

#endif
