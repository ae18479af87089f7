/* test_cpu.c — usable CPUs: cpu.max parsing, cgroup limits read from a
 * fake cgroup tree (v2 and v1, nested, missing files), and the real path
 * under a narrowed affinity mask in a child process. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "sys/cpu.h"

static char root[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    strcpy(root, "/tmp/lyra-test-cpu-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Writes text to root/rel, creating directories. */
static void put(const char *rel, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    assert_int_equal(lyra_mkdirs(path), 0);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_parse_cpu_max(void **state)
{
    assert_int_equal(lyra_cpu_parse_max("max 100000\n"), 0);
    assert_int_equal(lyra_cpu_parse_max("200000 100000\n"), 2);
    assert_int_equal(lyra_cpu_parse_max("150000 100000\n"), 2); /* 1.5 rounds up */
    assert_int_equal(lyra_cpu_parse_max("100000 100000"), 1);
    assert_int_equal(lyra_cpu_parse_max("1000 100000\n"), 1);   /* a sliver is still one */
    assert_int_equal(lyra_cpu_parse_max("350000 50000\n"), 7);
    assert_int_equal(lyra_cpu_parse_max(""), -1);
    assert_int_equal(lyra_cpu_parse_max("max"), -1);
    assert_int_equal(lyra_cpu_parse_max("abc 100000"), -1);
    assert_int_equal(lyra_cpu_parse_max("0 100000"), -1);
    assert_int_equal(lyra_cpu_parse_max("100000 0"), -1);
    assert_int_equal(lyra_cpu_parse_max("100000 100000 x"), -1);
    assert_int_equal(lyra_cpu_parse_max(NULL), -1);
}

static void test_v2_limit_is_the_tightest_on_the_path(void **state)
{
    assert_int_equal(lyra_cpu_cgroup_limit("0::/a/b\n", root), 0); /* no files: no limit */
    put("a/b/cpu.max", "max 100000\n");
    assert_int_equal(lyra_cpu_cgroup_limit("0::/a/b\n", root), 0);
    put("a/cpu.max", "300000 100000\n"); /* the parent's quota binds the child */
    assert_int_equal(lyra_cpu_cgroup_limit("0::/a/b\n", root), 3);
    put("a/b/cpu.max", "150000 100000\n");
    assert_int_equal(lyra_cpu_cgroup_limit("0::/a/b\n", root), 2);
    put("cpu.max", "100000 100000\n"); /* a container's own limit at the mount */
    assert_int_equal(lyra_cpu_cgroup_limit("0::/a/b\n", root), 1);
    /* a path that is not below the mount (no cgroup namespace) still finds
     * the mount's own file, and ".." never leaves the mount */
    assert_int_equal(lyra_cpu_cgroup_limit("0::/elsewhere/x\n", root), 1);
    assert_int_equal(lyra_cpu_cgroup_limit("0::/../../etc\n", root), 1);
    assert_int_equal(lyra_cpu_cgroup_limit("", root), 0);
    assert_int_equal(lyra_cpu_cgroup_limit("garbage without colons", root), 0);
}

static void test_v1_quota(void **state)
{
    const char *text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
    assert_int_equal(lyra_cpu_cgroup_limit(text, root), 0);
    put("cpu/docker/abc/cpu.cfs_quota_us", "-1\n");
    put("cpu/docker/abc/cpu.cfs_period_us", "100000\n");
    assert_int_equal(lyra_cpu_cgroup_limit(text, root), 0);
    put("cpu/docker/abc/cpu.cfs_quota_us", "250000\n");
    assert_int_equal(lyra_cpu_cgroup_limit(text, root), 3);
    /* "cpuacct" alone is not the cpu controller */
    assert_int_equal(lyra_cpu_cgroup_limit("4:cpuacct:/docker/abc\n", root), 0);
    /* v1 and v2 together: the tighter wins */
    put("cpu.max", "200000 100000\n");
    assert_int_equal(lyra_cpu_cgroup_limit(text, root), 2);
}

static void test_usable_combines_affinity_and_quota(void **state)
{
    int aff = lyra_cpu_affinity();
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    assert_int_equal(aff, CPU_COUNT(&set));

    char proc[PATH_MAX];
    snprintf(proc, sizeof proc, "%s/proc-cgroup", root);
    put("proc-cgroup", "0::/svc\n");
    assert_int_equal(lyra_cpu_usable_at(proc, root), aff); /* no limit */
    put("svc/cpu.max", "50000 100000\n");
    assert_int_equal(lyra_cpu_usable_at(proc, root), 1);
    char big[64];
    snprintf(big, sizeof big, "%d 100000\n", (aff + 8) * 100000);
    put("svc/cpu.max", big); /* a quota above the mask does not add CPUs */
    assert_int_equal(lyra_cpu_usable_at(proc, root), aff);
    char missing[PATH_MAX + 16];
    snprintf(missing, sizeof missing, "%s/none", root);
    assert_int_equal(lyra_cpu_usable_at(missing, root), aff);
}

static void test_real_path_follows_the_affinity_mask(void **state)
{
    int n = lyra_cpu_usable();
    assert_true(n >= 1 && n <= lyra_cpu_affinity());
    /* In a child pinned to one CPU (as taskset would), threads 0 means 1. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        sched_getaffinity(0, sizeof set, &set);
        int first = 0;
        while (!CPU_ISSET(first, &set))
            first++;
        CPU_ZERO(&set);
        CPU_SET(first, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            _exit(3);
        _exit(lyra_cpu_usable() == 1 && lyra_cpu_affinity() == 1 ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_parse_cpu_max),
        T(test_v2_limit_is_the_tightest_on_the_path),
        T(test_v1_quota),
        T(test_usable_combines_affinity_and_quota),
        T(test_real_path_follows_the_affinity_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
