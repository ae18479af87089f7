/* test_memory.c — memory readings: /proc/meminfo and cgroup v2 files from
 * fixture trees written here ("max", numbers, a tighter ancestor, PSI, odd
 * files), the derived formulas, the JSON fake and LYRA_FAKE_MEMINFO, the
 * real system source, and per-process RSS/PSS of a child that touches
 * memory. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "sys/memory.h"
#include "sys/proc.h"

#define MIB (1024ull * 1024)
#define GIB (1024 * MIB)

static char root[64];
static char proc_root[PATH_MAX], cg_root[PATH_MAX];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    strcpy(root, "/tmp/lyra-test-memory-XXXXXX");
    if (!mkdtemp(root))
        return -1;
    snprintf(proc_root, sizeof proc_root, "%s/proc", root);
    snprintf(cg_root, sizeof cg_root, "%s/cg", root);
    return 0;
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

/* An 8 GiB machine with 6 GiB available, in cgroup /svc/app of a v2 tree. */
static void put_machine(void)
{
    put("proc/meminfo", "MemTotal:        8388608 kB\n"
                        "MemFree:         1048576 kB\n"
                        "MemAvailable:    6291456 kB\n"
                        "Buffers:          102400 kB\n");
    put("proc/self/cgroup", "0::/svc/app\n");
    put("cg/cgroup.controllers", "cpu memory pids\n");
}

static int read_fixture(struct lyra_mem_reading *r)
{
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_system_at(proc_root, cg_root, &src, NULL), 0);
    int rc = lyra_memsource_read(src, r);
    lyra_memsource_free(src);
    return rc;
}

static void test_meminfo_without_cgroup(void **state)
{
    struct lyra_mem_reading r;
    assert_int_equal(read_fixture(&r), LYRA_EIO); /* no meminfo: no reading */
    assert_int_equal(r.total_bytes, 0);
    assert_true(r.at_us > 0);

    put_machine();
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.total_bytes, 8 * GIB);
    assert_int_equal(r.available_bytes, 6 * GIB);
    assert_int_equal(r.cgroup_current, 0); /* the cgroup has no memory files */
    assert_int_equal(r.cgroup_max, 0);
    assert_true(r.psi_some_avg10 == -1 && r.psi_full_avg10 == -1);
    assert_int_equal(lyra_mem_limit(&r), 8 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 6 * GIB);
    assert_int_equal(lyra_mem_used(&r), 2 * GIB);
    assert_true(lyra_mem_used_percent(&r) == 25.0);

    put("proc/pressure/memory", "some avg10=12.50 avg60=3.00 avg300=1.00 total=12345\n"
                                "full avg10=2.25 avg60=0.50 avg300=0.10 total=678\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_true(r.psi_some_avg10 == 12.5);
    assert_true(r.psi_full_avg10 == 2.25);

    /* a kernel without MemAvailable: free + cached + buffers */
    put("proc/meminfo", "MemTotal: 1048576 kB\nMemFree: 102400 kB\nCached: 204800 kB\nBuffers: 1024 kB\n"
                        "SwapCached: 999999 kB\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.total_bytes, 1 * GIB);
    assert_int_equal(r.available_bytes, (100 + 200 + 1) * MIB);

    /* odd files are unknowns, not crashes */
    put("proc/meminfo", "MemTotal: lots\nMemAvailable: 5 kB\n");
    assert_int_equal(read_fixture(&r), LYRA_EIO);
    put("proc/meminfo", "");
    assert_int_equal(read_fixture(&r), LYRA_EIO);
    put("proc/meminfo", "MemTotal: 1024 kB\nMemAvailable: 4096 kB\n"); /* available above total */
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.available_bytes, r.total_bytes);
    put("proc/pressure/memory", "some avg10=abc\nfull avg10=250.0 avg60=1\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_true(r.psi_some_avg10 == -1 && r.psi_full_avg10 == -1);
}

static void test_cgroup_max_and_numbers(void **state)
{
    put_machine();
    struct lyra_mem_reading r;
    put("cg/svc/app/memory.current", "1073741824\n");
    put("cg/svc/app/memory.max", "max\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_current, 1 * GIB);
    assert_int_equal(r.cgroup_max, 0); /* "max" = no limit */
    assert_int_equal(lyra_mem_limit(&r), 8 * GIB);
    assert_int_equal(lyra_mem_used(&r), 2 * GIB); /* no limit: the machine decides */

    /* a 2 GiB limit, tighter than MemTotal; page cache the kernel can drop
     * (inactive_file) is not counted */
    put("cg/svc/app/memory.max", "2147483648\n");
    put("cg/svc/app/memory.stat", "anon 900000000\nfile 500000000\nactive_file 100000000\n"
                                  "inactive_file 268435456\nshmem 0\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 2 * GIB);
    assert_int_equal(r.cgroup_current, 768 * MIB);
    assert_int_equal(lyra_mem_limit(&r), 2 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 2 * GIB - 768 * MIB);
    assert_int_equal(lyra_mem_used(&r), 768 * MIB);
    assert_true(lyra_mem_used_percent(&r) == 37.5);

    /* odd files: no limit, no number */
    put("cg/svc/app/memory.max", "12x\n");
    put("cg/svc/app/memory.current", "-5\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 0);
    assert_int_equal(r.cgroup_current, 0);
    put("cg/svc/app/memory.max", "");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 0);
}

static void test_tighter_ancestor_binds(void **state)
{
    put_machine();
    struct lyra_mem_reading r;
    /* the child may have 4 GiB and uses 1; the parent may have 3 and holds
     * 2.75 with the child's siblings: the parent's 256 MiB of room bind */
    put("cg/svc/app/memory.current", "1073741824\n");
    put("cg/svc/app/memory.max", "4294967296\n");
    put("cg/svc/memory.current", "2952790016\n");
    put("cg/svc/memory.max", "3221225472\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 3 * GIB);
    assert_int_equal(r.cgroup_current, 2816 * MIB);
    assert_int_equal(lyra_mem_headroom(&r), 256 * MIB);

    /* the child's own limit binds when it has less room */
    put("cg/svc/app/memory.max", "1207959552\n"); /* 1.125 GiB: 128 MiB room */
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 1152 * MIB);
    assert_int_equal(r.cgroup_current, 1 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 128 * MIB);

    /* a limit only on the parent: its pair is reported */
    put("cg/svc/app/memory.max", "max\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 3 * GIB);
    assert_int_equal(r.cgroup_current, 2816 * MIB);

    /* a limit at the mount (a container's own cgroup under a namespace) */
    put("cg/memory.max", "2147483648\n");
    put("cg/memory.current", "2080374784\n"); /* 64 MiB room */
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 2 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 64 * MIB);

    /* a path not below the mount, and "..", still find the mount's files */
    put("proc/self/cgroup", "0::/elsewhere/x\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 2 * GIB);
    put("proc/self/cgroup", "0::/../../etc\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 2 * GIB);
    /* cgroup v1 only: not read, the machine decides */
    put("proc/self/cgroup", "4:memory:/svc/app\n1:cpu:/\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_int_equal(r.cgroup_max, 0);
    assert_int_equal(r.cgroup_current, 0);
}

static void test_cgroup_pressure(void **state)
{
    put_machine();
    struct lyra_mem_reading r;
    put("proc/pressure/memory",
        "some avg10=1.00 avg60=0 avg300=0 total=1\nfull avg10=0.50 avg60=0 avg300=0 total=1\n");
    put("cg/svc/memory.pressure",
        "some avg10=30.00 avg60=0 avg300=0 total=1\nfull avg10=10.00 avg60=0 avg300=0 total=1\n");
    assert_int_equal(read_fixture(&r), 0); /* the nearest cgroup's file wins over the machine's */
    assert_true(r.psi_some_avg10 == 30.0 && r.psi_full_avg10 == 10.0);
    put("cg/svc/app/memory.pressure", "some avg10=45.50 avg60=0 avg300=0 total=1\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_true(r.psi_some_avg10 == 45.5 && r.psi_full_avg10 == -1);

    /* a hybrid host: the v2 tree is at <root>/unified */
    char rel[64];
    assert_int_equal(remove(strcat(strcpy(rel, cg_root), "/cgroup.controllers")), 0);
    put("cg/unified/cgroup.controllers", "\n");
    put("cg/unified/svc/app/memory.pressure", "some avg10=7.00 avg60=0 avg300=0 total=1\n");
    assert_int_equal(read_fixture(&r), 0);
    assert_true(r.psi_some_avg10 == 7.0);
}

static void test_derived_values(void **state)
{
    struct lyra_mem_reading r = {.total_bytes = 8 * GIB, .available_bytes = 1 * GIB};
    assert_int_equal(lyra_mem_used(&r), 7 * GIB);
    assert_true(lyra_mem_used_percent(&r) == 87.5);
    /* a cgroup limit tighter than the machine */
    r = (struct lyra_mem_reading){.total_bytes = 64 * GIB,
                                  .available_bytes = 40 * GIB,
                                  .cgroup_max = 4 * GIB,
                                  .cgroup_current = 3 * GIB};
    assert_int_equal(lyra_mem_limit(&r), 4 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 1 * GIB);
    assert_true(lyra_mem_used_percent(&r) == 75.0);
    /* the machine runs out before the cgroup does: its MemAvailable binds */
    r.available_bytes = 512 * MIB;
    assert_int_equal(lyra_mem_headroom(&r), 512 * MIB);
    assert_int_equal(lyra_mem_used(&r), 3584 * MIB);
    /* over the limit (the kernel lets current pass max briefly): clamped */
    r.available_bytes = 40 * GIB;
    r.cgroup_current = 5 * GIB;
    assert_int_equal(lyra_mem_headroom(&r), 0);
    assert_int_equal(lyra_mem_used(&r), 4 * GIB);
    assert_true(lyra_mem_used_percent(&r) == 100.0);
    /* a cgroup limit above the machine's memory: the machine is the limit */
    r = (struct lyra_mem_reading){.total_bytes = 2 * GIB,
                                  .available_bytes = 1 * GIB,
                                  .cgroup_max = 16 * GIB,
                                  .cgroup_current = 512 * MIB};
    assert_int_equal(lyra_mem_limit(&r), 2 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 1 * GIB);
    /* nothing known */
    r = (struct lyra_mem_reading){0};
    assert_int_equal(lyra_mem_limit(&r), 0);
    assert_int_equal(lyra_mem_used(&r), 0);
    assert_true(lyra_mem_used_percent(&r) == 0.0);
}

/* Replaces the fake file as a test must: write a temp file, rename it. */
static void write_fake(const char *path, const char *json)
{
    assert_int_equal(lyra_write_file_atomic(path, json, strlen(json), 0600), 0);
}

static void test_file_fake(void **state)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/meminfo.json", root);
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file("", &src, NULL), LYRA_EINVAL);
    assert_int_equal(lyra_memsource_file(path, &src, NULL), 0);
    struct lyra_mem_reading r;
    assert_int_equal(lyra_memsource_read(src, &r), LYRA_EIO); /* not there yet */

    write_fake(path, "{\"total\":8589934592,\"available\":1073741824,\"cgroup_current\":0,\"cgroup_max\":0,"
                     "\"psi_some\":12.5}");
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_int_equal(r.total_bytes, 8 * GIB);
    assert_int_equal(r.available_bytes, 1 * GIB);
    assert_true(r.psi_some_avg10 == 12.5);
    assert_true(r.psi_full_avg10 == -1); /* missing: unknown */
    assert_true(r.at_us > 0);

    /* re-read on every read */
    write_fake(path, "{\"total\":2147483648,\"available\":1e9,\"cgroup_max\":1073741824,"
                     "\"cgroup_current\":805306368,\"psi_full\":3}");
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_int_equal(r.total_bytes, 2 * GIB);
    assert_int_equal(r.available_bytes, 1000000000);
    assert_int_equal(lyra_mem_limit(&r), 1 * GIB);
    assert_int_equal(lyra_mem_headroom(&r), 256 * MIB);
    assert_true(r.psi_some_avg10 == -1 && r.psi_full_avg10 == 3.0);

    write_fake(path, "{\"total\":-5,\"available\":\"lots\",\"psi_some\":400}");
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_int_equal(r.total_bytes, 0);
    assert_int_equal(r.available_bytes, 0);
    assert_true(r.psi_some_avg10 == -1);
    write_fake(path, "[1,2]");
    assert_int_equal(lyra_memsource_read(src, &r), LYRA_EPARSE);
    write_fake(path, "{\"total\":");
    assert_int_equal(lyra_memsource_read(src, &r), LYRA_EPARSE);
    lyra_memsource_free(src);
    lyra_memsource_free(NULL);
}

static void test_from_env(void **state)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/fake.json", root);
    write_fake(path, "{\"total\":12345,\"available\":345}");
    struct lyra_memsource *src;
    struct lyra_mem_reading r;
    assert_int_equal(setenv("LYRA_FAKE_MEMINFO", path, 1), 0);
    assert_int_equal(lyra_memsource_from_env(&src, NULL), 0);
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_int_equal(r.total_bytes, 12345);
    lyra_memsource_free(src);
    assert_int_equal(unsetenv("LYRA_FAKE_MEMINFO"), 0);
    assert_int_equal(lyra_memsource_from_env(&src, NULL), 0);
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_true(r.total_bytes != 12345 && r.total_bytes > 64 * MIB); /* the machine's */
    lyra_memsource_free(src);
}

static void test_system_source_on_this_machine(void **state)
{
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_system(&src, NULL), 0);
    struct lyra_mem_reading r;
    assert_int_equal(lyra_memsource_read(src, &r), 0);
    assert_true(r.total_bytes > 0);
    assert_true(r.available_bytes <= r.total_bytes);
    assert_true(lyra_mem_limit(&r) > 0 && lyra_mem_limit(&r) <= r.total_bytes);
    assert_true(lyra_mem_used(&r) + lyra_mem_headroom(&r) == lyra_mem_limit(&r));
    assert_true(r.psi_some_avg10 == -1 || (r.psi_some_avg10 >= 0 && r.psi_some_avg10 <= 100));
    if (r.cgroup_max)
        assert_true(r.cgroup_current <= r.cgroup_max + 64 * MIB);
    /* what the older reader says agrees on MemTotal */
    uint64_t total, avail;
    if (lyra_sys_memory(&total, &avail) == 0)
        assert_int_equal(total, r.total_bytes);
    lyra_memsource_free(src);
}

static void test_proc_memory_of_a_child(void **state)
{
    uint64_t rss = 0, pss = 0;
    assert_int_equal(lyra_proc_memory(0, &rss, &pss), 0);
    assert_true(rss > 0 && pss > 0 && pss <= rss);
    assert_int_equal(lyra_proc_memory(getpid(), &rss, NULL), 0);
    assert_int_equal(lyra_proc_memory(-3, &rss, &pss), LYRA_EINVAL);

    /* a child that touches 64 MiB shows at least that much */
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        size_t n = 64 * MIB;
        volatile unsigned char *p = malloc(n);
        if (!p)
            _exit(1);
        for (size_t i = 0; i < n; i += 4096)
            p[i] = 1;
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(ready[1]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    assert_int_equal(lyra_proc_memory(pid, &rss, &pss), 0);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(rss >= 64 * MIB);
    assert_true(pss >= 60 * MIB && pss <= rss); /* the touched pages are its own */
    /* reaped: gone */
    assert_int_equal(lyra_proc_memory(pid, &rss, &pss), LYRA_ENOTFOUND);
}

static void test_proc_memory_fallback_to_status(void **state)
{
    uint64_t rss = 1, pss = 1;
    put("proc/42/status", "Name: x\nVmPeak: 9999 kB\nVmRSS:     2048 kB\nThreads: 1\n");
    assert_int_equal(lyra_proc_memory_at(proc_root, 42, &rss, &pss), 0);
    assert_int_equal(rss, 2 * MIB);
    assert_int_equal(pss, 2 * MIB);
    put("proc/42/smaps_rollup", "00400000-7fff [rollup]\nRss: 4096 kB\nPss: 1024 kB\nPss_Anon: 512 kB\n");
    assert_int_equal(lyra_proc_memory_at(proc_root, 42, &rss, &pss), 0);
    assert_int_equal(rss, 4 * MIB);
    assert_int_equal(pss, 1 * MIB);
    put("proc/43/status", "Name: kthread\n"); /* no VmRSS (a kernel thread) */
    assert_int_equal(lyra_proc_memory_at(proc_root, 43, &rss, &pss), LYRA_EIO);
    assert_int_equal(lyra_proc_memory_at(proc_root, 44, &rss, &pss), LYRA_ENOTFOUND);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_meminfo_without_cgroup),
        T(test_cgroup_max_and_numbers),
        T(test_tighter_ancestor_binds),
        T(test_cgroup_pressure),
        T(test_derived_values),
        T(test_file_fake),
        T(test_from_env),
        T(test_system_source_on_this_machine),
        T(test_proc_memory_of_a_child),
        T(test_proc_memory_fallback_to_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
