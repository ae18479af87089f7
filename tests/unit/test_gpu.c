/* test_gpu.c — sys/gpu: the fake source, the probe's output parser, and the
 * probe subprocess against the real `lyra worker --probe-devices` and
 * against small scripts that crash, hang, print garbage or fail.
 *
 * The lyra binary: $LYRA_BIN, else the build directory next to this test
 * (a missing binary is a failure). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "sys/gpu.h"

static char lyra_bin[PATH_MAX];
static char tmpdir[64];

static void resolve_bin(void)
{
    const char *env = getenv("LYRA_BIN");
    if (env && *env) {
        snprintf(lyra_bin, sizeof lyra_bin, "%s", env);
        return;
    }
    char exe[PATH_MAX] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
    }
    snprintf(lyra_bin, sizeof lyra_bin, "%s/lyra", exe);
}

/* Writes an executable shell script into tmpdir; returns its path (static). */
static const char *script(const char *name, const char *body)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
    return path;
}

/* Counts the lines of the log file holding `needle`. */
static int log_count(const char *path, const char *needle)
{
    size_t len;
    char *text = lyra_read_file(path, &len);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)); p++)
        n++;
    free(text);
    return n;
}

static void test_fake(void **state)
{
    struct lyra_gpu_source *s = NULL;
    struct lyra_err err = {0};
    assert_int_equal(
        lyra_gpu_fake("[{\"name\":\"FakeGPU0\",\"total\":8589934592,\"free\":6442450944},"
                      "{\"name\":\"FakeGPU1\",\"total\":1024,\"type\":\"igpu\",\"utilization\":50,"
                      "\"temperature\":61,\"pci_bus_id\":\"0000:c1:00.0\",\"description\":\"Fake\"}]",
                      &s, &err),
        0);
    struct lyra_gpu_device *d;
    size_t n;
    assert_int_equal(lyra_gpu_list(s, &d, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(d[0].index, 0);
    assert_string_equal(d[0].name, "FakeGPU0");
    assert_string_equal(d[0].type, "gpu");
    assert_string_equal(d[0].pci_bus_id, "");
    assert_int_equal(d[0].memory_total, 8589934592ull);
    assert_int_equal(d[0].memory_free, 6442450944ull);
    assert_int_equal(d[0].utilization_percent, -1);
    assert_int_equal(d[0].temperature_c, -1);
    assert_int_equal(d[1].index, 1);
    assert_string_equal(d[1].type, "igpu");
    assert_int_equal(d[1].memory_free, 1024); /* free defaults to total */
    assert_int_equal(d[1].utilization_percent, 50);
    assert_int_equal(d[1].temperature_c, 61);

    json_t *j = lyra_gpu_to_json(d, n);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), 2);
    json_t *g0 = json_array_get(j, 0), *g1 = json_array_get(j, 1);
    assert_string_equal(json_string_value(json_object_get(g0, "name")), "FakeGPU0");
    assert_int_equal(json_integer_value(json_object_get(g0, "memory_free")), 6442450944ll);
    assert_true(json_is_null(json_object_get(g0, "utilization_percent")));
    assert_true(json_is_null(json_object_get(g0, "temperature_c")));
    assert_true(json_is_null(json_object_get(g0, "pci_bus_id")));
    assert_int_equal(json_integer_value(json_object_get(g1, "temperature_c")), 61);
    assert_string_equal(json_string_value(json_object_get(g1, "pci_bus_id")), "0000:c1:00.0");
    assert_string_equal(json_string_value(json_object_get(g1, "description")), "Fake");
    json_decref(j);
    free(d);
    lyra_gpu_free(s);
    lyra_gpu_free(NULL);

    /* none is a valid answer */
    assert_int_equal(lyra_gpu_fake("[]", &s, NULL), 0);
    assert_int_equal(lyra_gpu_list(s, &d, &n), 0);
    assert_int_equal(n, 0);
    assert_null(d);
    lyra_gpu_free(s);
}

static void test_fake_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "{",
        "{\"name\":\"x\",\"total\":1}",
        "[{\"total\":1}]",
        "[{\"name\":\"x\"}]",
        "[{\"name\":\"x\",\"total\":-5}]",
        "[{\"name\":\"x\",\"total\":1,\"type\":\"cpu\"}]",
        "[42]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct lyra_gpu_source *s = (struct lyra_gpu_source *)&s;
        struct lyra_err err = {0};
        if (lyra_gpu_fake(bad[i], &s, &err) != LYRA_EPARSE)
            fail_msg("'%s' was accepted", bad[i]);
        assert_null(s);
        assert_true(err.msg[0] != '\0');
    }
}

static void test_from_env(void **state)
{
    setenv("LYRA_FAKE_GPUS", "[{\"name\":\"EnvGPU\",\"total\":100}]", 1);
    struct lyra_gpu_source *s = NULL;
    /* a worker that does not exist: the fake must not run it */
    assert_int_equal(lyra_gpu_from_env("/nonexistent/lyra", 1000, &s, NULL), 0);
    unsetenv("LYRA_FAKE_GPUS");
    struct lyra_gpu_device *d;
    size_t n;
    assert_int_equal(lyra_gpu_list(s, &d, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(d[0].name, "EnvGPU");
    free(d);
    lyra_gpu_free(s);

    /* unset: the probe runs (and fails here for want of a worker) */
    struct lyra_err err = {0};
    assert_int_equal(lyra_gpu_from_env("/nonexistent/lyra", 1000, &s, &err), LYRA_EIO);
    assert_non_null(s);
    assert_non_null(strstr(err.msg, "cannot start"));
    lyra_gpu_free(s);
}

static void test_parse_probe(void **state)
{
    struct lyra_gpu_device *d = NULL;
    size_t n = 99;
    struct lyra_err err = {0};
    const char *cpu =
        "{\"type\":\"devices\",\"devices\":[{\"name\":\"CPU\",\"description\":\"Xeon\",\"type\":\"cpu\","
        "\"memory_total\":1,\"memory_free\":1,\"device_id\":null}]}\n";
    assert_int_equal(lyra_gpu_parse_probe(cpu, strlen(cpu), &d, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(d);

    /* noise before the line, CPU and unknown kinds skipped, bus id kept */
    const char *mixed =
        "ggml_cuda_init: found 2 CUDA devices\n{\"type\":\"other\"}\n"
        "{\"type\":\"devices\",\"devices\":[{\"name\":\"CPU\",\"type\":\"cpu\",\"memory_total\":1,"
        "\"memory_free\":1},{\"name\":\"CUDA0\",\"description\":\"NVIDIA H200\",\"type\":\"gpu\","
        "\"memory_total\":150000000000,\"memory_free\":149000000000,\"device_id\":\"0000:c1:00.0\"},"
        "{\"name\":\"META\",\"type\":\"other\",\"memory_total\":1,\"memory_free\":1},"
        "{\"name\":\"CUDA1\",\"type\":\"gpu\",\"memory_total\":2,\"memory_free\":1}]}";
    assert_int_equal(lyra_gpu_parse_probe(mixed, strlen(mixed), &d, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].name, "CUDA0");
    assert_string_equal(d[0].description, "NVIDIA H200");
    assert_string_equal(d[0].pci_bus_id, "0000:c1:00.0");
    assert_int_equal(d[0].memory_total, 150000000000ull);
    assert_int_equal(d[0].memory_free, 149000000000ull);
    assert_int_equal(d[0].utilization_percent, -1);
    assert_int_equal(d[1].index, 1);
    assert_string_equal(d[1].name, "CUDA1");
    assert_string_equal(d[1].pci_bus_id, "");
    free(d);

    /* a name longer than the field is cut on a character boundary */
    char longname[512];
    snprintf(
        longname, sizeof longname,
        "{\"type\":\"devices\",\"devices\":[{\"name\":\"%s\",\"type\":\"gpu\",\"memory_total\":1,"
        "\"memory_free\":1}]}",
        "GPU-\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
    assert_int_equal(lyra_gpu_parse_probe(longname, strlen(longname), &d, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_true(strlen(d[0].name) < sizeof d[0].name);
    json_t *j = lyra_gpu_to_json(d, n); /* fails on invalid UTF-8 */
    assert_non_null(j);
    json_decref(j);
    free(d);

    const char *no_mem = "{\"type\":\"devices\",\"devices\":[{\"name\":\"CUDA0\",\"type\":\"gpu\"}]}";
    assert_int_equal(lyra_gpu_parse_probe(no_mem, strlen(no_mem), &d, &n, &err), LYRA_EPARSE);
    assert_non_null(strstr(err.msg, "memory_total"));
    assert_int_equal(lyra_gpu_parse_probe("garbage\n{}\n", 11, &d, &n, &err), LYRA_EPARSE);
    assert_int_equal(lyra_gpu_parse_probe("", 0, &d, &n, &err), LYRA_EPARSE);
}

/* The real probe: whatever this machine has, it answers, lists no CPU, and
 * (with no GPU, as in CI) says so in exactly one info line and no warning. */
static void test_probe_real(void **state)
{
    struct stat st;
    if (stat(lyra_bin, &st) != 0)
        fail_msg("no lyra binary at %s", lyra_bin);
    char logp[128];
    snprintf(logp, sizeof logp, "%s/log", tmpdir);
    assert_int_equal(lyra_log_open("info", "json", logp, NULL), 0);
    struct lyra_gpu_source *s = NULL;
    struct lyra_err err = {0};
    int rc = lyra_gpu_probe(lyra_bin, 30000, &s, &err);
    lyra_log_close();
    if (rc != 0)
        fail_msg("probe failed: %s", err.msg);
    struct lyra_gpu_device *d;
    size_t n;
    assert_int_equal(lyra_gpu_list(s, &d, &n), 0);
    for (size_t i = 0; i < n; i++) {
        assert_string_not_equal(d[i].type, "cpu");
        assert_true(d[i].memory_total > 0);
        assert_int_equal(d[i].index, (int)i);
    }
    if (n == 0) {
        assert_int_equal(log_count(logp, "no GPU found: models run on the CPU"), 1);
        assert_int_equal(log_count(logp, "\"level\":\"info\""), 1);
    }
    assert_int_equal(log_count(logp, "\"level\":\"warn\""), 0);
    free(d);
    lyra_gpu_free(s);
}

/* A probe that crashes, hangs, fails or talks nonsense: an error saying
 * why, a source with no devices, a warning, and the child gone. */
static void test_probe_failures(void **state)
{
    static const struct {
        const char *name, *body;
        int timeout_ms, rc;
        const char *needle;
    } cases[] = {
        {"crash", "echo 'cuInit: driver exploded' >&2; kill -SEGV $$", 10000, LYRA_EIO, "signal 11"},
        {"crash2", "echo 'cuInit: driver exploded' >&2; kill -SEGV $$", 10000, LYRA_EIO, "driver exploded"},
        {"fails", "echo 'no backends' >&2; exit 3", 10000, LYRA_EIO, "status 3: no backends"},
        {"garbage", "echo 'this is not json'", 10000, LYRA_EPARSE, "no {\"type\":\"devices\"}"},
        {"silent", "exit 0", 10000, LYRA_EPARSE, "no {\"type\":\"devices\"}"},
        {"hangs", "echo '{\"type\":\"devices\",\"devices\":[]}'; exec sleep 60", 300, LYRA_ETIMEOUT,
         "300 ms"},
        /* closes stdout then hangs: the exit has the same deadline */
        {"lingers", "exec >&-; exec sleep 60", 300, LYRA_ETIMEOUT, "killed"},
        /* a helper it forked keeps the pipe open: the group is killed */
        {"forks", "sleep 60 & echo started", 300, LYRA_ETIMEOUT, "killed"},
    };
    char logp[128];
    snprintf(logp, sizeof logp, "%s/faillog", tmpdir);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unlink(logp);
        assert_int_equal(lyra_log_open("info", "json", logp, NULL), 0);
        const char *exe = script(cases[i].name, cases[i].body);
        struct lyra_gpu_source *s = NULL;
        struct lyra_err err = {0};
        int rc = lyra_gpu_probe(exe, cases[i].timeout_ms, &s, &err);
        lyra_log_close();
        if (rc != cases[i].rc || !strstr(err.msg, cases[i].needle))
            fail_msg("%s: rc %d (want %d), '%s' lacks '%s'", cases[i].name, rc, cases[i].rc, err.msg,
                     cases[i].needle);
        assert_non_null(s);
        struct lyra_gpu_device *d;
        size_t n;
        assert_int_equal(lyra_gpu_list(s, &d, &n), 0);
        assert_int_equal(n, 0);
        lyra_gpu_free(s);
        assert_int_equal(log_count(logp, "GPU probe failed, models run on the CPU"), 1);
        assert_int_equal(log_count(logp, "\"level\":\"warn\""), 1);
    }
    struct lyra_gpu_source *s = (struct lyra_gpu_source *)&s;
    assert_int_equal(lyra_gpu_probe("", 1000, &s, NULL), LYRA_EINVAL);
    assert_null(s);
    assert_int_equal(lyra_gpu_probe(lyra_bin, 0, &s, NULL), LYRA_EINVAL);
}

static int setup(void **state)
{
    resolve_bin();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lyra-test-gpu-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake),       cmocka_unit_test(test_fake_invalid),
        cmocka_unit_test(test_from_env),   cmocka_unit_test(test_parse_probe),
        cmocka_unit_test(test_probe_real), cmocka_unit_test(test_probe_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
