/* test_watchdog.c — the memory watchdog: classification (thresholds,
 * hysteresis, PSI, the min_available floor on a small machine, a cgroup
 * limit tighter than MemTotal), option checks, and the thread driven by the
 * JSON fake: warning, critical and ok reached by rewriting the file, seen by
 * on_sample and as events on a real bus; a failed read keeps the level; the
 * thread stops at once on free even with a long interval. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/events.h"
#include "core/util.h"
#include "sys/watchdog.h"

#define MIB (1024ull * 1024)
#define GIB (1024 * MIB)
#define WAIT_MS 20000 /* generous: a deadline for a state, never a timing assertion */

static char root[64];
static char fake[PATH_MAX];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    strcpy(root, "/tmp/lyra-test-watchdog-XXXXXX");
    if (!mkdtemp(root))
        return -1;
    snprintf(fake, sizeof fake, "%s/meminfo.json", root);
    return 0;
}

static int teardown(void **state)
{
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static struct lyra_watchdog_options defaults(void)
{
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, NULL);
    return o;
}

/* A machine of `total` bytes with `used_pct` percent in use. */
static struct lyra_mem_reading at(uint64_t total, double used_pct, double psi)
{
    return (struct lyra_mem_reading){.total_bytes = total,
                                     .available_bytes =
                                         (uint64_t)((double)total * (100.0 - used_pct) / 100.0),
                                     .psi_some_avg10 = psi,
                                     .psi_full_avg10 = -1};
}

static enum lyra_mem_level cls(const struct lyra_watchdog_options *o, struct lyra_mem_reading r,
                               enum lyra_mem_level prev)
{
    return lyra_watchdog_classify(o, &r, prev);
}

static void test_level_names(void **state)
{
    assert_string_equal(lyra_mem_level_name(LYRA_MEM_OK), "ok");
    assert_string_equal(lyra_mem_level_name(LYRA_MEM_WARNING), "warning");
    assert_string_equal(lyra_mem_level_name(LYRA_MEM_CRITICAL), "critical");
    assert_string_equal(lyra_mem_level_name((enum lyra_mem_level)7), "unknown");
}

static void test_thresholds_and_hysteresis(void **state)
{
    struct lyra_watchdog_options o = defaults();
    assert_int_equal(o.interval_ms, 1000);
    assert_int_equal(o.warn_percent, 85);
    assert_int_equal(o.critical_percent, 95);
    assert_int_equal(o.min_available_bytes, 64 * MIB);
    const uint64_t T = 100 * GIB;
    assert_int_equal(cls(&o, at(T, 50, -1), LYRA_MEM_OK), LYRA_MEM_OK);
    assert_int_equal(cls(&o, at(T, 84.9, -1), LYRA_MEM_OK), LYRA_MEM_OK);
    assert_int_equal(cls(&o, at(T, 85, -1), LYRA_MEM_OK), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 94.9, -1), LYRA_MEM_OK), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 95, -1), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 100, -1), LYRA_MEM_WARNING), LYRA_MEM_CRITICAL);
    /* warning is left only at 5 points below its threshold */
    assert_int_equal(cls(&o, at(T, 84, -1), LYRA_MEM_WARNING), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 80.5, -1), LYRA_MEM_WARNING), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 80, -1), LYRA_MEM_WARNING), LYRA_MEM_OK);
    /* critical likewise, to warning; and straight to ok when far enough */
    assert_int_equal(cls(&o, at(T, 91, -1), LYRA_MEM_CRITICAL), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 90, -1), LYRA_MEM_CRITICAL), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 82, -1), LYRA_MEM_CRITICAL), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 80, -1), LYRA_MEM_CRITICAL), LYRA_MEM_OK);
    /* other thresholds */
    o.warn_percent = 60;
    o.critical_percent = 70;
    assert_int_equal(cls(&o, at(T, 65, -1), LYRA_MEM_OK), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 70, -1), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 66, -1), LYRA_MEM_CRITICAL), LYRA_MEM_CRITICAL);
    /* no reading worth the name: the level stays */
    struct lyra_mem_reading none = {.psi_some_avg10 = -1, .psi_full_avg10 = -1};
    assert_int_equal(lyra_watchdog_classify(&o, &none, LYRA_MEM_WARNING), LYRA_MEM_WARNING);
    assert_int_equal(lyra_watchdog_classify(&o, &none, LYRA_MEM_OK), LYRA_MEM_OK);
}

static void test_psi(void **state)
{
    struct lyra_watchdog_options o = defaults();
    const uint64_t T = 100 * GIB;
    assert_int_equal(cls(&o, at(T, 10, 19.9), LYRA_MEM_OK), LYRA_MEM_OK);
    assert_int_equal(cls(&o, at(T, 10, 20), LYRA_MEM_OK), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 10, 50), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 10, 46), LYRA_MEM_CRITICAL), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 10, 45), LYRA_MEM_CRITICAL), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 10, 16), LYRA_MEM_WARNING), LYRA_MEM_WARNING);
    assert_int_equal(cls(&o, at(T, 10, 15), LYRA_MEM_WARNING), LYRA_MEM_OK);
    assert_int_equal(cls(&o, at(T, 10, -1), LYRA_MEM_OK), LYRA_MEM_OK); /* unknown */
    /* the higher of the two signals decides */
    assert_int_equal(cls(&o, at(T, 96, 5), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    assert_int_equal(cls(&o, at(T, 86, 60), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    /* <= 0 ignores PSI */
    o.psi_warn = 0;
    o.psi_critical = -1;
    assert_int_equal(cls(&o, at(T, 10, 99), LYRA_MEM_OK), LYRA_MEM_OK);
    o.psi_critical = 50; /* each threshold on its own */
    assert_int_equal(cls(&o, at(T, 10, 30), LYRA_MEM_OK), LYRA_MEM_OK);
    assert_int_equal(cls(&o, at(T, 10, 55), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
}

static void test_min_available_protects_a_small_machine(void **state)
{
    struct lyra_watchdog_options o = defaults();
    const uint64_t T = 1 * GIB; /* an edge box */
    struct lyra_mem_reading r = {.total_bytes = T, .available_bytes = 300 * MIB, .psi_some_avg10 = -1};
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_OK);
    r.available_bytes = 140 * MIB; /* 86 % */
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_WARNING);
    r.available_bytes = 60 * MIB; /* 94.1 %, under the percentage, but 60 MiB < 64 MiB */
    assert_true(lyra_mem_used_percent(&r) < 95);
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    /* leaving needs 64 MiB + 5 % of the limit (51.2 MiB) */
    r.available_bytes = 110 * MIB;
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_CRITICAL), LYRA_MEM_CRITICAL);
    r.available_bytes = 120 * MIB;
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_CRITICAL), LYRA_MEM_WARNING);
    r.available_bytes = 110 * MIB; /* entering from below uses the plain floor */
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_WARNING), LYRA_MEM_WARNING);
    /* 0 = no floor */
    o.min_available_bytes = 0;
    r.available_bytes = 60 * MIB;
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_WARNING);
    /* a tiny box: 256 MiB with 50 MiB free is critical on the floor alone */
    o.min_available_bytes = 64 * MIB;
    r = (struct lyra_mem_reading){
        .total_bytes = 256 * MIB, .available_bytes = 50 * MIB, .psi_some_avg10 = -1};
    assert_true(lyra_mem_used_percent(&r) < 85);
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_CRITICAL);
}

static void test_cgroup_limit_tighter_than_memtotal(void **state)
{
    struct lyra_watchdog_options o = defaults();
    /* a 64 GiB host with plenty free, a 4 GiB container that is nearly full */
    struct lyra_mem_reading r = {.total_bytes = 64 * GIB,
                                 .available_bytes = 60 * GIB,
                                 .cgroup_max = 4 * GIB,
                                 .cgroup_current = 3900 * MIB,
                                 .psi_some_avg10 = -1};
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    r.cgroup_current = 3584 * MIB; /* 87.5 % of the cgroup */
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_WARNING);
    r.cgroup_current = 1 * GIB;
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_OK);
    /* ...while the same use without the limit is nothing */
    r.cgroup_current = 3900 * MIB;
    r.cgroup_max = 0;
    assert_int_equal(lyra_watchdog_classify(&o, &r, LYRA_MEM_OK), LYRA_MEM_OK);
}

static void test_options_are_checked(void **state)
{
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file(fake, &src, NULL), 0);
    struct lyra_watchdog *w = (void *)1;
    struct lyra_err err = {0};
    struct lyra_watchdog_options o = defaults();
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL); /* no source */
    assert_null(w);
    o.source = src;
    o.interval_ms = 0;
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL);
    o.interval_ms = 1000;
    o.warn_percent = 96;
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "warn_percent"));
    o.warn_percent = 0;
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL);
    o.warn_percent = 85;
    o.critical_percent = 101;
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL);
    o.critical_percent = 95;
    o.psi_warn = 60;
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), LYRA_EINVAL);
    o.psi_warn = 20;
    /* equal thresholds are allowed (the config allows them): no warning
     * level, straight to critical */
    o.warn_percent = o.critical_percent = 90;
    assert_int_equal(cls(&o, at(100 * GIB, 92, -1), LYRA_MEM_OK), LYRA_MEM_CRITICAL);
    assert_int_equal(lyra_watchdog_new(&o, &w, &err), 0);
    lyra_watchdog_free(w);
    lyra_memsource_free(src);
    lyra_watchdog_free(NULL);
}

/* ---- the thread ---- */

struct record {
    pthread_mutex_t lock;
    int samples;
    enum lyra_mem_level levels[32]; /* on_sample's levels, consecutive repeats dropped */
    int nlevels;
    char types[16][64];
    json_t *data[16];
    int nevents;
};

static void on_sample(const struct lyra_mem_reading *r, enum lyra_mem_level level, void *ud)
{
    struct record *rec = ud;
    pthread_mutex_lock(&rec->lock);
    rec->samples++;
    if ((rec->nlevels == 0 || rec->levels[rec->nlevels - 1] != level) && rec->nlevels < 32)
        rec->levels[rec->nlevels++] = level;
    pthread_mutex_unlock(&rec->lock);
}

static void on_event(const struct lyra_event *ev, void *ud)
{
    struct record *rec = ud;
    pthread_mutex_lock(&rec->lock);
    if (rec->nevents < 16) {
        snprintf(rec->types[rec->nevents], sizeof rec->types[0], "%s", ev->type);
        rec->data[rec->nevents] = json_incref(ev->data);
        rec->nevents++;
    }
    pthread_mutex_unlock(&rec->lock);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (with a generous deadline) for the watchdog to reach `level`. */
static bool wait_level(struct lyra_watchdog *w, enum lyra_mem_level level)
{
    for (int64_t end = lyra_now_ms() + WAIT_MS; lyra_now_ms() < end; sleep_ms(5))
        if (lyra_watchdog_level(w) == level)
            return true;
    return false;
}

static bool wait_events(struct record *rec, int n)
{
    for (int64_t end = lyra_now_ms() + WAIT_MS; lyra_now_ms() < end; sleep_ms(5)) {
        pthread_mutex_lock(&rec->lock);
        int have = rec->nevents;
        pthread_mutex_unlock(&rec->lock);
        if (have >= n)
            return true;
    }
    return false;
}

/* A 1 GiB machine (no low-RAM exemption) with `used_mib` in use. */
static void write_used(uint64_t used_mib, double psi)
{
    char json[256];
    int n = snprintf(json, sizeof json, "{\"total\":%llu,\"available\":%llu,\"psi_some\":%g}",
                     (unsigned long long)GIB, (unsigned long long)(GIB - used_mib * MIB), psi);
    assert_int_equal(lyra_write_file_atomic(fake, json, (size_t)n, 0600), 0);
}

static void test_thread_reports_levels_and_events(void **state)
{
    struct lyra_bus_options bo = {.ring_size = 64};
    struct lyra_bus *bus = lyra_bus_new(&bo);
    assert_non_null(bus);
    struct record rec = {.lock = PTHREAD_MUTEX_INITIALIZER};
    assert_true(lyra_bus_subscribe(bus, "memory.*", on_event, &rec) > 0);

    write_used(100, 1.5);
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file(fake, &src, NULL), 0);
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, src);
    o.bus = bus;
    o.interval_ms = 10;
    o.on_sample = on_sample;
    o.ud = &rec;
    struct lyra_watchdog *w;
    assert_int_equal(lyra_watchdog_new(&o, &w, NULL), 0);
    /* the first sample is there when new returns */
    struct lyra_mem_reading last;
    assert_int_equal(lyra_watchdog_last(w, &last), 0);
    assert_int_equal(last.total_bytes, GIB);
    assert_true(last.psi_some_avg10 == 1.5);
    assert_int_equal(lyra_watchdog_level(w), LYRA_MEM_OK);
    pthread_mutex_lock(&rec.lock);
    assert_true(rec.samples >= 1);
    pthread_mutex_unlock(&rec.lock);

    write_used(900, 1.5); /* 87.9 % */
    assert_true(wait_level(w, LYRA_MEM_WARNING));
    write_used(1000, 1.5); /* 97.7 % (and 24 MiB left) */
    assert_true(wait_level(w, LYRA_MEM_CRITICAL));
    write_used(100, -1);
    assert_true(wait_level(w, LYRA_MEM_OK));
    assert_true(wait_events(&rec, 3));

    lyra_watchdog_free(w);
    pthread_mutex_lock(&rec.lock);
    assert_int_equal(rec.nlevels, 4);
    assert_int_equal(rec.levels[0], LYRA_MEM_OK);
    assert_int_equal(rec.levels[1], LYRA_MEM_WARNING);
    assert_int_equal(rec.levels[2], LYRA_MEM_CRITICAL);
    assert_int_equal(rec.levels[3], LYRA_MEM_OK);
    assert_int_equal(rec.nevents, 3); /* none for the first, ok sample */
    assert_string_equal(rec.types[0], "memory.warning");
    assert_string_equal(rec.types[1], "memory.critical");
    assert_string_equal(rec.types[2], "memory.ok");
    json_t *d = rec.data[1];
    assert_string_equal(json_string_value(json_object_get(d, "level")), "critical");
    assert_int_equal(json_integer_value(json_object_get(d, "limit_bytes")), GIB);
    assert_int_equal(json_integer_value(json_object_get(d, "used_bytes")), 1000 * MIB);
    assert_int_equal(json_integer_value(json_object_get(d, "available_bytes")), 24 * MIB);
    assert_true(json_real_value(json_object_get(d, "used_percent")) > 97.6);
    assert_true(json_real_value(json_object_get(d, "psi_some_avg10")) == 1.5);
    assert_true(json_is_false(json_object_get(d, "cgroup")));
    assert_true(json_is_null(json_object_get(rec.data[2], "psi_some_avg10")));
    assert_string_equal(json_string_value(json_object_get(rec.data[0], "level")), "warning");
    for (int i = 0; i < rec.nevents; i++)
        json_decref(rec.data[i]);
    pthread_mutex_unlock(&rec.lock);
    lyra_memsource_free(src);
    lyra_bus_free(bus);
}

static void test_first_sample_not_ok_is_announced(void **state)
{
    struct lyra_bus_options bo = {.ring_size = 8};
    struct lyra_bus *bus = lyra_bus_new(&bo);
    struct record rec = {.lock = PTHREAD_MUTEX_INITIALIZER};
    assert_true(lyra_bus_subscribe(bus, "memory.*", on_event, &rec) > 0);
    /* a cgroup of 512 MiB on a big host, nearly full */
    const char *json = "{\"total\":68719476736,\"available\":60000000000,\"cgroup_max\":536870912,"
                       "\"cgroup_current\":520093696}";
    assert_int_equal(lyra_write_file_atomic(fake, json, strlen(json), 0600), 0);
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file(fake, &src, NULL), 0);
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, src);
    o.bus = bus;
    struct lyra_watchdog *w;
    assert_int_equal(lyra_watchdog_new(&o, &w, NULL), 0);
    assert_int_equal(lyra_watchdog_level(w), LYRA_MEM_CRITICAL); /* decided by the first sample */
    assert_true(wait_events(&rec, 1));
    lyra_watchdog_free(w);
    assert_string_equal(rec.types[0], "memory.critical");
    assert_true(json_is_true(json_object_get(rec.data[0], "cgroup")));
    assert_int_equal(json_integer_value(json_object_get(rec.data[0], "limit_bytes")), 512 * MIB);
    json_decref(rec.data[0]);
    lyra_memsource_free(src);
    lyra_bus_free(bus);
}

static void test_failed_reads_keep_the_level(void **state)
{
    struct record rec = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file(fake, &src, NULL), 0);
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, src);
    o.interval_ms = 10;
    o.on_sample = on_sample;
    o.ud = &rec;
    struct lyra_watchdog *w;
    /* no file yet: the watchdog starts, knows nothing */
    assert_int_equal(lyra_watchdog_new(&o, &w, NULL), 0);
    struct lyra_mem_reading last;
    assert_int_equal(lyra_watchdog_last(w, &last), LYRA_EUNAVAILABLE);
    assert_int_equal(lyra_watchdog_level(w), LYRA_MEM_OK);
    write_used(900, -1);
    assert_true(wait_level(w, LYRA_MEM_WARNING));
    /* the file goes bad: the level and the last reading stay */
    assert_int_equal(lyra_write_file_atomic(fake, "{oops", 5, 0600), 0);
    pthread_mutex_lock(&rec.lock);
    int before = rec.samples;
    pthread_mutex_unlock(&rec.lock);
    /* some ten failed reads at 10 ms (no assertion on time: the checks
     * below must hold however many there were) */
    sleep_ms(100);
    assert_int_equal(lyra_watchdog_level(w), LYRA_MEM_WARNING);
    assert_int_equal(lyra_watchdog_last(w, &last), 0);
    assert_int_equal(last.available_bytes, GIB - 900 * MIB);
    write_used(100, -1);
    assert_true(wait_level(w, LYRA_MEM_OK));
    lyra_watchdog_free(w);
    assert_true(rec.samples > before);
    lyra_memsource_free(src);
}

static void test_free_stops_a_long_interval_at_once(void **state)
{
    /* With an hour between samples, a sleeping thread would hold free()
     * until ctest's timeout kills the test. */
    write_used(100, -1);
    struct lyra_memsource *src;
    assert_int_equal(lyra_memsource_file(fake, &src, NULL), 0);
    struct lyra_watchdog_options o;
    lyra_watchdog_options_init(&o, src);
    o.interval_ms = 3600 * 1000;
    struct lyra_watchdog *w;
    assert_int_equal(lyra_watchdog_new(&o, &w, NULL), 0);
    assert_int_equal(lyra_watchdog_level(w), LYRA_MEM_OK);
    lyra_watchdog_free(w);
    /* and the real source, the way the daemon runs it */
    struct lyra_memsource *sys;
    assert_int_equal(lyra_memsource_system(&sys, NULL), 0);
    lyra_watchdog_options_init(&o, sys);
    o.interval_ms = 3600 * 1000;
    assert_int_equal(lyra_watchdog_new(&o, &w, NULL), 0);
    struct lyra_mem_reading last;
    assert_int_equal(lyra_watchdog_last(w, &last), 0);
    assert_true(last.total_bytes > 0);
    lyra_watchdog_free(w);
    lyra_memsource_free(sys);
    lyra_memsource_free(src);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_level_names),
        T(test_thresholds_and_hysteresis),
        T(test_psi),
        T(test_min_available_protects_a_small_machine),
        T(test_cgroup_limit_tighter_than_memtotal),
        T(test_options_are_checked),
        T(test_thread_reports_levels_and_events),
        T(test_first_sample_not_ok_is_announced),
        T(test_failed_reads_keep_the_level),
        T(test_free_stops_a_long_interval_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
