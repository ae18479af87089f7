/* fuzz_config.c — the YAML configuration loader through its public API
 * (core/config.h): the input is written as a config file and loaded with
 * lyra_config_load(), an empty environment and a fixed home.
 *
 * Beyond "no crash, no leak":
 *   - a refusal has a non-empty, valid UTF-8 message and leaves the config
 *     zeroed;
 *   - an accepted config dumps to valid UTF-8 YAML that loads again to the
 *     same dump (lyra_config_dump() is what `lyra config show` prints, and
 *     the writer is the one that rewrites migrated files);
 *   - migrating the file on disk (lyra_config_migrate_file, what `lyra
 *     config migrate` does) gives a file that loads to the same config as
 *     the in-memory migration of lyra_config_load(), and refuses exactly
 *     the files that do not load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/util.h"
#include "fuzz.h"

static char dir[64];          /* private scratch directory on tmpfs */
static char home[128], file[128], dump_file[128], mig_file[128];
static char *const empty_env[] = {NULL};

/* The scratch directory goes when the process ends normally. */
static void cleanup(void)
{
    const char *const files[] = {file, dump_file, mig_file};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        unlink(files[i]);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/lyra-fuzz-config-XXXXXX", base);
    CHECK(mkdtemp(dir));
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(file, sizeof file, "%s/lyra.yaml", dir);
    snprintf(dump_file, sizeof dump_file, "%s/dump.yaml", dir);
    snprintf(mig_file, sizeof mig_file, "%s/migrate.yaml", dir);
    atexit(cleanup);
    return 0;
}

static void put(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    CHECK(f);
    CHECK(fwrite(data, 1, size, f) == size);
    CHECK(fclose(f) == 0);
}

/* The dump without its comment lines (they name the file that was read). */
static const char *body_of(const char *dump)
{
    while (*dump == '#') {
        const char *nl = strchr(dump, '\n');
        CHECK(nl);
        dump = nl + 1;
    }
    return dump;
}

static bool zeroed(const struct lyra_config *cfg)
{
    static const struct lyra_config zero;
    return memcmp(cfg, &zero, sizeof zero) == 0;
}

/* Loads path; returns its dump (caller frees) or NULL when refused. */
static char *load_dump(const char *path, int *rc_out, char *why, size_t why_len)
{
    struct lyra_config cfg;
    struct lyra_err err = {0};
    int rc = lyra_config_load(&cfg, home, path, empty_env, 0, &err);
    *rc_out = rc;
    if (rc < 0) {
        CHECK(err.code == rc && err.msg[0]);
        CHECK(lyra_utf8_valid(err.msg, strlen(err.msg)));
        CHECK(zeroed(&cfg));
        snprintf(why, why_len, "%s", err.msg);
        return NULL;
    }
    CHECK(lyra_config_validate(&cfg, &err) == 0);
    char *dump = lyra_config_dump(&cfg);
    CHECK(dump && lyra_utf8_valid(dump, strlen(dump)));
    lyra_config_free(&cfg);
    CHECK(zeroed(&cfg));
    return dump;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        LLVMFuzzerInitialize(NULL, NULL);
    char why[LYRA_ERR_MSG_MAX];
    int rc;
    put(file, data, size);
    char *first = load_dump(file, &rc, why, sizeof why);
    if (first) {
        put(dump_file, first, strlen(first));
        char *second = load_dump(dump_file, &rc, why, sizeof why);
        CHECKF(second, "the dump does not load: %s\n--- dump ---\n%s", why, first);
        CHECKF(strcmp(body_of(first), body_of(second)) == 0, "dump changed on reload:\n%s\n--- vs ---\n%s",
               first, second);
        free(second);
    }

    /* Migration on disk vs. in memory. */
    put(mig_file, data, size);
    int from = 0;
    struct lyra_err err = {0};
    int mrc = lyra_config_migrate_file(mig_file, &from, &err);
    if (mrc < 0) {
        CHECK(lyra_utf8_valid(err.msg, strlen(err.msg)));
        CHECKF(!first, "migration refuses a file that loads: %s", err.msg);
    } else if (from < LYRA_CONFIG_SCHEMA_VERSION) {
        char *migrated = load_dump(mig_file, &rc, why, sizeof why);
        CHECKF(!first == !migrated, "%s", first ? why : "the migrated file loads, the original does not");
        if (first && migrated)
            CHECKF(strcmp(body_of(first), body_of(migrated)) == 0,
                   "migrated on disk differs from migrated in memory:\n%s\n--- vs ---\n%s", first, migrated);
        free(migrated);
    }
    free(first);
    /* Backups of migrated files accumulate names; keep the directory small. */
    char bak[160];
    for (int v = 1; v < LYRA_CONFIG_SCHEMA_VERSION; v++) {
        snprintf(bak, sizeof bak, "%s.v%d.bak", mig_file, v);
        unlink(bak);
    }
    return 0;
}
