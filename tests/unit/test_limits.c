/* test_limits.c — the one table of ranges, checked against both of its
 * users: the configuration (keys, flags, the file's model entries) accepts
 * exactly up to each bound, and the real `lyra worker` binary accepts the
 * same bound and refuses one past it.  A config that validates must never
 * start a worker that exits with status 2. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/config.h"
#include "core/config_keys.h"
#include "core/limits.h"

/* The configuration keys that feed a worker flag. */
static const struct {
    const char *key; /* models.<key> and models.entries[].<key> */
    enum lyra_limit_id id;
    long key_lo;     /* the lowest value models.<key> takes: the table's, or 0 = "all CPUs" */
    bool zero;       /* 0 = "the model's own" is accepted besides the range */
} shared[] = {
    {"ctx_size", LYRA_LIMIT_CTX, LYRA_LIMIT_CTX_MIN, true},
    {"parallel", LYRA_LIMIT_PARALLEL, LYRA_LIMIT_PARALLEL_MIN, false},
    {"threads", LYRA_LIMIT_THREADS, 0, false},
    {"gpu_layers", LYRA_LIMIT_GPU_LAYERS, LYRA_LIMIT_GPU_LAYERS_MIN, false},
};

static void test_table(void **state)
{
    for (int i = 0; i < LYRA_LIMIT_COUNT; i++) {
        const struct lyra_limit *l = lyra_limit_get((enum lyra_limit_id)i);
        assert_non_null(l);
        assert_true(l->lo <= l->hi);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(l->name, lyra_limit_get((enum lyra_limit_id)j)->name);
        assert_int_equal(lyra_limit_clamp((enum lyra_limit_id)i, l->hi + 1), l->hi);
        assert_int_equal(lyra_limit_clamp((enum lyra_limit_id)i, l->lo - 1), l->lo);
        assert_int_equal(lyra_limit_clamp((enum lyra_limit_id)i, l->lo), l->lo);
    }
    assert_null(lyra_limit_get(LYRA_LIMIT_COUNT));
    assert_int_equal(LYRA_LIMIT_PARALLEL_MAX, lyra_limit_get(LYRA_LIMIT_PARALLEL)->hi);
}

static void test_config_keys_use_the_table(void **state)
{
    size_t ne;
    const struct lyra_config_key *entry = lyra_config_keys_entry_fields(&ne);
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        const struct lyra_limit *l = lyra_limit_get(shared[i].id);
        const struct lyra_config_key *k = lyra_config_keys_find("models", shared[i].key);
        assert_non_null(k);
        assert_true(k->max == l->hi);
        const struct lyra_config_key *e = NULL;
        for (size_t j = 0; j < ne; j++)
            if (!strcmp(entry[j].name, shared[i].key))
                e = &entry[j];
        assert_non_null(e);
        assert_true(e->max == l->hi);
    }
}

/* Sets models.<key> = v on a loaded default config; returns the code and
 * copies the message. */
static int set_models(const char *key, long v, char *msg, size_t len)
{
    char *env[] = {"HOME=/nonexistent", NULL};
    struct lyra_config cfg;
    struct lyra_err err = {0};
    assert_int_equal(lyra_config_load(&cfg, "/nonexistent/home", NULL, env, 0, &err), 0);
    char dotted[64], text[32];
    snprintf(dotted, sizeof dotted, "models.%s", key);
    snprintf(text, sizeof text, "%ld", v);
    int rc = lyra_config_set(&cfg, dotted, text, "--x", &err);
    snprintf(msg, len, "%s", err.msg);
    lyra_config_free(&cfg);
    return rc;
}

static void test_config_accepts_exactly_the_range(void **state)
{
    char msg[LYRA_ERR_MSG_MAX], want[LYRA_ERR_MSG_MAX];
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        const struct lyra_limit *l = lyra_limit_get(shared[i].id);
        long lo = shared[i].key_lo;
        assert_true(lo == l->lo || lo == l->lo - 1); /* at most a "0 = default" below */
        assert_int_equal(set_models(shared[i].key, l->hi, msg, sizeof msg), 0);
        assert_int_equal(set_models(shared[i].key, l->lo, msg, sizeof msg), 0);
        assert_int_equal(set_models(shared[i].key, lo, msg, sizeof msg), 0);
        if (shared[i].zero)
            assert_int_equal(set_models(shared[i].key, 0, msg, sizeof msg), 0);
        assert_int_equal(set_models(shared[i].key, l->hi + 1, msg, sizeof msg), LYRA_ECONFIG);
        snprintf(want, sizeof want, "--x: %ld is out of range (%s%ld..%ld)", l->hi + 1,
                 shared[i].zero ? "0 or " : "", lo, l->hi);
        assert_string_equal(msg, want);
        assert_int_equal(set_models(shared[i].key, lo - 1, msg, sizeof msg), LYRA_ECONFIG);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void test_model_entries_use_the_range(void **state)
{
    char dir[] = "/tmp/lyra-test-limits-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[PATH_MAX], text[256], home[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/lyra.yaml", dir);
    snprintf(home, sizeof home, "HOME=%s", dir);
    char *env[] = {home, NULL};
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        const struct lyra_limit *l = lyra_limit_get(shared[i].id);
        for (int past = 0; past <= 1; past++) {
            snprintf(text, sizeof text, "schema_version: 2\nmodels:\n  entries:\n"
                     "    - {name: m, path: m.gguf, %s: %ld}\n", shared[i].key, l->hi + past);
            FILE *f = fopen(path, "w");
            assert_non_null(f);
            fputs(text, f);
            fclose(f);
            struct lyra_config cfg;
            struct lyra_err err = {0};
            int rc = lyra_config_load(&cfg, dir, path, env, 0, &err);
            if (!past) {
                assert_int_equal(rc, 0);
                lyra_config_free(&cfg);
                continue;
            }
            assert_int_equal(rc, LYRA_ECONFIG);
            char want[64];
            snprintf(want, sizeof want, ".%s: %ld is out of range (", shared[i].key, l->hi + 1);
            assert_non_null(strstr(err.msg, want));
            assert_int_equal(strncmp(err.msg, path, strlen(path)), 0);
            assert_non_null(strstr(err.msg, ":4:")); /* file:line:col */
        }
    }
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- the worker binary ---------------------------------------------------- */

static char lyra_bin[PATH_MAX + 8];

/* env LYRA_BIN, else the lyra binary beside this test (the build dir). */
static void find_lyra(void)
{
    const char *env = getenv("LYRA_BIN");
    if (env && *env) {
        snprintf(lyra_bin, sizeof lyra_bin, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    snprintf(lyra_bin, sizeof lyra_bin, "%s/lyra", exe);
}

/* Runs `lyra worker --fd 0 --FLAG VALUE` (no --model, so a worker that
 * accepts the value stops at the missing model) and returns its exit status
 * with stdout+stderr in out. */
static int run_worker(const char *flag, long value, char *out, size_t len)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char opt[64], val[32];
        snprintf(opt, sizeof opt, "--%s", flag);
        snprintf(val, sizeof val, "%ld", value);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        execl(lyra_bin, lyra_bin, "worker", "--fd", "0", opt, val, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(p[0], out + got, len - 1 - got)) > 0 && got + (size_t)r < len - 1)
        got += (size_t)r;
    if (r > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_worker_accepts_exactly_the_range(void **state)
{
    find_lyra();
    assert_int_equal(access(lyra_bin, X_OK), 0);
    char out[4096], want[128];
    for (int i = 0; i < LYRA_LIMIT_COUNT; i++) {
        const struct lyra_limit *l = lyra_limit_get((enum lyra_limit_id)i);
        snprintf(want, sizeof want, "--%s needs an integer between %ld and %ld", l->name, l->lo, l->hi);
        const long ok[] = {l->lo, l->hi}, bad[] = {l->lo - 1, l->hi + 1};
        for (int j = 0; j < 2; j++) {
            assert_int_equal(run_worker(l->name, ok[j], out, sizeof out), 2);
            if (!strstr(out, "--fd and --model are required"))
                print_error("--%s %ld was refused:\n%s\n", l->name, ok[j], out);
            assert_non_null(strstr(out, "--fd and --model are required"));
            assert_int_equal(run_worker(l->name, bad[j], out, sizeof out), 2);
            if (!strstr(out, want))
                print_error("--%s %ld: expected '%s' in:\n%s\n", l->name, bad[j], want, out);
            assert_non_null(strstr(out, want));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_config_keys_use_the_table),
        cmocka_unit_test(test_config_accepts_exactly_the_range),
        cmocka_unit_test(test_model_entries_use_the_range),
        cmocka_unit_test(test_worker_accepts_exactly_the_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
