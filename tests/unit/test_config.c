/* test_config.c — the configuration as a user meets it: files, env, flags,
 * migrations, secrets and the messages they get when something is wrong.
 * Every test works in its own mkdtemp directory with its own environ. */
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
#include <unistd.h>

#include "core/config.h"

#define MAX_ENV 16

struct fx {
    char dir[64];
    char *env[MAX_ENV + 1];
    char envbuf[MAX_ENV][PATH_MAX + 64];
    size_t n_env;
    struct lyra_config cfg;
    struct lyra_err err;
};

__attribute__((format(printf, 2, 3))) static void env_add(struct fx *f, const char *fmt, ...)
{
    assert_true(f->n_env < MAX_ENV);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->envbuf[f->n_env], sizeof f->envbuf[0], fmt, ap);
    va_end(ap);
    f->env[f->n_env] = f->envbuf[f->n_env];
    f->n_env++;
    f->env[f->n_env] = NULL;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    strcpy(f->dir, "/tmp/lyra-test-config-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    env_add(f, "HOME=%s", f->dir);
    *state = f;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    lyra_config_free(&f->cfg);
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Path of name inside the test directory (static buffer per slot). */
static const char *in_dir(struct fx *f, const char *name)
{
    static char bufs[4][PATH_MAX];
    static int slot;
    char *b = bufs[slot++ % 4];
    snprintf(b, PATH_MAX, "%s/%s", f->dir, name);
    return b;
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* The file's bytes (caller frees), or NULL when it does not exist. */
static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Writes lyra.yaml in the test directory and returns its path. */
static const char *write_config(struct fx *f, const char *text)
{
    const char *p = in_dir(f, "lyra.yaml");
    write_text(p, text);
    return p;
}

/* Loads with the test directory as home. */
static int load(struct fx *f, const char *file, unsigned flags)
{
    lyra_config_free(&f->cfg);
    return lyra_config_load(&f->cfg, f->dir, file, f->env, flags, &f->err);
}

static void assert_msg(struct fx *f, const char *fmt, ...)
{
    char want[LYRA_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    assert_string_equal(f->err.msg, want);
}

/* ------------------------------------------------------------ sources */

static void test_defaults_without_file(void **state)
{
    struct fx *f = *state;
    char want[PATH_MAX];
    assert_int_equal(lyra_config_load(&f->cfg, NULL, NULL, f->env, 0, &f->err), 0);
    snprintf(want, sizeof want, "%s/.local/share/lyra", f->dir);
    assert_string_equal(f->cfg.home, want);
    strcat(want, "/models");
    assert_string_equal(f->cfg.models.dir, want);
    assert_null(f->cfg.file);
    assert_int_equal(f->cfg.schema_version, LYRA_CONFIG_SCHEMA_VERSION);
    assert_string_equal(f->cfg.server.host, "127.0.0.1");
    assert_int_equal(f->cfg.server.port, 8000);
    assert_int_equal(f->cfg.server.n_cors_origins, 0);
    assert_int_equal(f->cfg.server.max_body_bytes, 8u << 20);
    assert_int_equal(f->cfg.server.max_header_bytes, 16u << 10);
    assert_int_equal(f->cfg.server.idle_timeout_s, 30);
    assert_int_equal(f->cfg.server.drain_timeout_s, 10);
    assert_int_equal(f->cfg.server.max_connections, 1024);
    assert_null(f->cfg.models.default_model);
    assert_int_equal(f->cfg.models.max_loaded, 4);
    assert_int_equal(f->cfg.models.keep_alive_s, 300);
    assert_int_equal(f->cfg.models.parallel, 4);
    assert_int_equal(f->cfg.models.gpu_layers, -1);
    assert_int_equal(f->cfg.models.ctx_size, 4096);
    assert_int_equal(f->cfg.models.n_entries, 0);
    assert_true(f->cfg.watchdog.enabled);
    assert_int_equal(f->cfg.watchdog.warn_percent, 85);
    assert_int_equal(f->cfg.watchdog.critical_percent, 95);
    assert_false(f->cfg.auth.enabled);
    assert_null(f->cfg.auth.admin_key);
    assert_int_equal(f->cfg.events.ring_size, 10000);
    assert_int_equal(f->cfg.jobs.max_concurrent, 4);
    assert_string_equal(f->cfg.log.level, "info");
    assert_string_equal(f->cfg.log.format, "auto");
    assert_null(f->cfg.log.file);
}

static void test_lyra_home_env_sets_home(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_HOME=%s/h", f->dir);
    assert_int_equal(lyra_config_load(&f->cfg, NULL, NULL, f->env, 0, &f->err), 0);
    assert_string_equal(f->cfg.home, in_dir(f, "h"));
    assert_string_equal(f->cfg.models.dir, in_dir(f, "h/models"));
}

static void test_home_argument_beats_lyra_home(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_HOME=/nonexistent/elsewhere");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_string_equal(f->cfg.home, f->dir);
}

static void test_file_in_home_is_read(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nserver:\n  port: 9001\n");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_string_equal(f->cfg.file, p);
    assert_int_equal(f->cfg.server.port, 9001);
}

static void test_explicit_missing_file_is_error(void **state)
{
    struct fx *f = *state;
    assert_int_equal(load(f, in_dir(f, "nope.yaml"), 0), LYRA_ENOTFOUND);
    assert_non_null(strstr(f->err.msg, "nope.yaml"));
    assert_null(f->cfg.home); /* freed and zeroed on failure */
}

static void test_file_values(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f,
        "schema_version: 3\n"
        "server:\n"
        "  host: 0.0.0.0\n"
        "  port: 8443\n"
        "  cors_origins: [\"*\", \"http://localhost:3000\"]\n"
        "  threads: 8\n"
        "  idle_timeout_s: 5\n"
        "models:\n"
        "  dir: /srv/models\n"
        "  default_model: llama\n"
        "  max_loaded: 2\n"
        "  gpu_layers: 0\n"
        "watchdog:\n"
        "  enabled: false\n"
        "  warn_percent: 70\n"
        "auth:\n"
        "  enabled: true\n"
        "events:\n"
        "  ring_size: 64\n"
        "jobs:\n"
        "  max_concurrent: 1\n"
        "log:\n"
        "  level: debug\n"
        "  format: json\n"
        "  file: /var/log/lyra.log\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_string_equal(f->cfg.server.host, "0.0.0.0");
    assert_int_equal(f->cfg.server.port, 8443);
    assert_int_equal(f->cfg.server.n_cors_origins, 2);
    assert_string_equal(f->cfg.server.cors_origins[0], "*");
    assert_string_equal(f->cfg.server.cors_origins[1], "http://localhost:3000");
    assert_int_equal(f->cfg.server.threads, 8);
    assert_int_equal(f->cfg.server.idle_timeout_s, 5);
    assert_string_equal(f->cfg.models.dir, "/srv/models");
    assert_string_equal(f->cfg.models.default_model, "llama");
    assert_int_equal(f->cfg.models.max_loaded, 2);
    assert_int_equal(f->cfg.models.gpu_layers, 0);
    assert_false(f->cfg.watchdog.enabled);
    assert_int_equal(f->cfg.watchdog.warn_percent, 70);
    assert_true(f->cfg.auth.enabled);
    assert_int_equal(f->cfg.events.ring_size, 64);
    assert_int_equal(f->cfg.jobs.max_concurrent, 1);
    assert_string_equal(f->cfg.log.level, "debug");
    assert_string_equal(f->cfg.log.format, "json");
    assert_string_equal(f->cfg.log.file, "/var/log/lyra.log");
}

static void test_sizes_parse(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\n"
                                    "server:\n  max_body_bytes: 12MB\n  max_header_bytes: 1024\n"
                                    "models:\n  memory_budget: 4GiB\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.server.max_body_bytes, 12000000u);
    assert_int_equal(f->cfg.server.max_header_bytes, 1024u);
    assert_true(f->cfg.models.memory_budget == 4ull << 30);
    assert_int_equal(lyra_config_set(&f->cfg, "server.max_header_bytes", "16KiB", NULL, &f->err), 0);
    assert_int_equal(f->cfg.server.max_header_bytes, 16u << 10);
}

static void test_empty_and_comment_only_files_give_defaults(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.server.port, 8000);
    write_config(f, "# nothing configured yet\n\n# server:\n#   port: 1\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.server.port, 8000);
    assert_int_equal(f->cfg.file_schema_version, LYRA_CONFIG_SCHEMA_VERSION);
    int from = 0;
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), 0);
    assert_int_equal(from, LYRA_CONFIG_SCHEMA_VERSION);
    assert_false(exists(in_dir(f, "lyra.yaml.v1.bak"))); /* nothing to migrate */
}

static void test_env_overrides_file(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nserver:\n  host: ::1\n  port: 9001\n");
    env_add(f, "LYRA_SERVER_PORT=9002");
    env_add(f, "LYRA_MODELS_MAX_LOADED=9");
    env_add(f, "LYRA_LOG_LEVEL=warn");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.server.port, 9002);
    assert_string_equal(f->cfg.server.host, "::1");
    assert_int_equal(f->cfg.models.max_loaded, 9);
    assert_string_equal(f->cfg.log.level, "warn");
}

static void test_env_list_is_comma_separated(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_SERVER_CORS_ORIGINS=http://a.test, http://b.test:8080");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_int_equal(f->cfg.server.n_cors_origins, 2);
    assert_string_equal(f->cfg.server.cors_origins[0], "http://a.test");
    assert_string_equal(f->cfg.server.cors_origins[1], "http://b.test:8080");
}

static void test_flags_override_env(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_SERVER_PORT=9002");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_int_equal(lyra_config_set(&f->cfg, "server.port", "9100", "--port", &f->err), 0);
    assert_int_equal(f->cfg.server.port, 9100);
    assert_int_equal(lyra_config_set(&f->cfg, "log.format", "TEXT", "--log-format", &f->err), 0);
    assert_string_equal(f->cfg.log.format, "text");
}

static void test_flag_with_bad_value_names_origin(void **state)
{
    struct fx *f = *state;
    assert_int_equal(load(f, NULL, 0), 0);
    assert_int_equal(lyra_config_set(&f->cfg, "server.port", "abc", "--port", &f->err),
                     LYRA_ECONFIG);
    assert_msg(f, "--port: expected an integer, got 'abc'");
    assert_int_equal(f->cfg.server.port, 8000);
    assert_int_equal(lyra_config_set(&f->cfg, "server.prot", "1", "--prot", &f->err),
                     LYRA_ECONFIG);
    assert_msg(f, "--prot: unknown key 'server.prot'");
    assert_int_equal(lyra_config_set(&f->cfg, "auth.admin_key", "x", "--admin-key", &f->err),
                     LYRA_ECONFIG);
    assert_null(f->cfg.auth.admin_key);
}

/* ---------------------------------------------------------- file errors */

static void test_unknown_key_has_position(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nserver:\n  host: 127.0.0.1\n  prot: 8000\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:4:3: unknown key 'prot' in section 'server'", p);
}

static void test_unknown_section_has_position(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nsevrer:\n  port: 1\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:2:1: unknown section 'sevrer'", p);
}

static void test_wrong_type_has_position(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nserver:\n  port: abc\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:3:9: server.port: expected an integer, got 'abc'", p);
}

static void test_type_and_range_errors(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *yaml, *msg;
    } cases[] = {
        {"watchdog:\n  enabled: maybe\n", "2:12: watchdog.enabled: expected true or false, got 'maybe'"},
        {"server:\n  cors_origins: {a: 1}\n", "2:17: server.cors_origins: expected a list of strings, got a mapping"},
        {"server:\n  cors_origins: [a, [b]]\n", "2:21: server.cors_origins[1]: expected a string, got a list"},
        {"server:\n  host: [a]\n", "2:9: server.host: expected a string, got a list"},
        {"server:\n  max_body_bytes: 4XB\n", "2:19: server.max_body_bytes: expected a size (like 1024, 512MB or 4GiB), got '4XB'"},
        {"server:\n  max_body_bytes: -1\n", "2:19: server.max_body_bytes: expected a size (like 1024, 512MB or 4GiB), got '-1'"},
        {"server:\n  port: 70000\n", "2:9: server.port: 70000 is out of range (0..65535)"},
        {"server:\n  port: -1\n", "2:9: server.port: -1 is out of range (0..65535)"},
        {"watchdog:\n  warn_percent: 101\n", "2:17: watchdog.warn_percent: 101 is out of range (1..100)"},
        {"jobs:\n  max_concurrent: -2\n", "2:19: jobs.max_concurrent: -2 is out of range (must be at least 1)"},
        {"models:\n  keep_alive_s: -2\n", "2:17: models.keep_alive_s: -2 is out of range (must be at least -1)"},
        {"log:\n  level: loud\n", "2:10: log.level: expected one of debug|info|warn|error, got 'loud'"},
        {"log:\n  level: ~\n", "2:10: log.level: expected a string, got null"},
        {"server: 8000\n", "1:9: section 'server' must be a mapping, got a scalar"},
        {"server:\n  port: 1\n  port: 2\n", "3:3: duplicate key 'port' in section 'server'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "schema_version: 3\n%s", cases[i].yaml);
        const char *p = write_config(f, text);
        assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
        /* the case's line numbers count from after the schema_version line */
        int line;
        const char *rest = strchr(cases[i].msg, ':');
        assert_int_equal(sscanf(cases[i].msg, "%d", &line), 1);
        assert_msg(f, "%s:%d%s", p, line + 1, rest);
    }
}

static void test_malformed_yaml_has_position(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nserver:\n  port: 8000\n host: x\n");
    assert_int_equal(load(f, p, 0), LYRA_EPARSE);
    assert_msg(f, "%s:4:2: did not find expected key (while parsing a block mapping at line 1, "
                  "column 1)", p);
    p = write_config(f, "server:\n  cors_origins: [a, b\n");
    assert_int_equal(load(f, p, 0), LYRA_EPARSE);
    assert_msg(f, "%s:3:1: did not find expected ',' or ']' (while parsing a flow sequence at "
                  "line 2, column 17)", p);
}

static void test_top_level_must_be_a_mapping(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "- server\n- models\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:1:1: expected a mapping of sections", p);
}

/* ------------------------------------------------------------ env errors */

static void test_unknown_env_key_is_error(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_SERVER_PROT=8000");
    assert_int_equal(load(f, NULL, 0), LYRA_ECONFIG);
    assert_msg(f, "env LYRA_SERVER_PROT: unknown key server.prot");
}

static void test_other_lyra_variables_are_ignored(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_BIN=/usr/bin/lyra");
    env_add(f, "LYRA_TEST_MODELS=/tmp/models");
    env_add(f, "LYRA_SERVERLESS=1");
    env_add(f, "LYRA_LOG=1");
    env_add(f, "LYRA_ADMIN_KEY=k");
    assert_int_equal(load(f, NULL, 0), 0);
}

static void test_env_bad_value_names_variable(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_SERVER_PORT=abc");
    assert_int_equal(load(f, NULL, 0), LYRA_ECONFIG);
    assert_msg(f, "env LYRA_SERVER_PORT: expected an integer, got 'abc'");
}

/* -------------------------------------------------------------- secrets */

static void test_secret_in_file_is_rejected(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nauth:\n  admin_key: hunter2\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:3:3: auth.admin_key: secrets must not be written in the config file; set "
                  "env LYRA_ADMIN_KEY or auth.admin_key_file", p);
}

static void test_admin_key_from_env(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_ADMIN_KEY=from-env");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_string_equal(f->cfg.auth.admin_key, "from-env");
}

static void test_admin_key_from_file(void **state)
{
    struct fx *f = *state;
    char yaml[PATH_MAX + 64];
    write_text(in_dir(f, "key"), "s3cret\n");
    snprintf(yaml, sizeof yaml, "schema_version: 3\nauth:\n  admin_key_file: %s\n",
             in_dir(f, "key"));
    assert_int_equal(load(f, write_config(f, yaml), 0), 0);
    assert_string_equal(f->cfg.auth.admin_key, "s3cret");
}

static void test_admin_key_env_beats_key_file(void **state)
{
    struct fx *f = *state;
    write_text(in_dir(f, "key"), "from-file\n");
    env_add(f, "LYRA_AUTH_ADMIN_KEY_FILE=%s", in_dir(f, "key"));
    env_add(f, "LYRA_ADMIN_KEY=from-env");
    assert_int_equal(load(f, NULL, 0), 0);
    assert_string_equal(f->cfg.auth.admin_key, "from-env");
}

static void test_unreadable_key_file_names_path(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_AUTH_ADMIN_KEY_FILE=%s", in_dir(f, "missing-key"));
    assert_int_equal(load(f, NULL, 0), LYRA_ENOTFOUND);
    assert_msg(f, "auth.admin_key_file: %s: No such file or directory", in_dir(f, "missing-key"));
}

static void test_dump_never_prints_secret(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_ADMIN_KEY=topsecret-value");
    assert_int_equal(load(f, NULL, 0), 0);
    char *out = lyra_config_dump(&f->cfg);
    assert_non_null(out);
    assert_null(strstr(out, "topsecret-value"));
    assert_non_null(strstr(out, "# auth.admin_key: <set>"));
    free(out);
}

/* ------------------------------------------------------------ migration */

static const char V1_FILE[] = "# my old config\n"
                              "server:\n"
                              "  listen: \"0.0.0.0:9090\"\n"
                              "  threads: 3\n"
                              "models:\n"
                              "  path: /srv/models\n"
                              "  max_models: 7\n"
                              "log:\n"
                              "  json: true\n";

static void assert_v1_values(const struct lyra_config *cfg)
{
    assert_string_equal(cfg->server.host, "0.0.0.0");
    assert_int_equal(cfg->server.port, 9090);
    assert_int_equal(cfg->server.threads, 3);
    assert_string_equal(cfg->models.dir, "/srv/models");
    assert_int_equal(cfg->models.max_loaded, 7);
    assert_string_equal(cfg->log.format, "json");
}

static void test_v1_file_is_migrated_on_disk(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, V1_FILE);
    int from = 0;
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), 0);
    assert_int_equal(from, 1);
    assert_int_equal(load(f, p, 0), 0);
    assert_v1_values(&f->cfg);
    assert_int_equal(f->cfg.file_schema_version, LYRA_CONFIG_SCHEMA_VERSION);

    char *bak = read_text(in_dir(f, "lyra.yaml.v1.bak"));
    char *now = read_text(p);
    assert_non_null(bak);
    assert_string_equal(bak, V1_FILE);
    assert_non_null(strstr(now, "\nschema_version: 3\n"));
    assert_null(strstr(now, "listen"));
    assert_null(strstr(now, "max_models"));
    assert_null(strstr(now, "json:"));
    assert_null(strstr(now, "path:"));

    assert_non_null(strstr(now, "# Migrated by Lyra from schema_version 1 to 3; the original is in "
                                "lyra.yaml.v1.bak\n"));

    /* the rewritten file loads as v2 on its own and is not touched again */
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), 0);
    assert_int_equal(from, LYRA_CONFIG_SCHEMA_VERSION);
    assert_int_equal(load(f, p, 0), 0);
    assert_v1_values(&f->cfg);
    char *again = read_text(p);
    assert_string_equal(again, now);
    free(bak);
    free(now);
    free(again);
}

static void test_migrate_file_reports_versions(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, V1_FILE);
    int from = 0;
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), 0);
    assert_int_equal(from, 1);
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), 0);
    assert_int_equal(from, LYRA_CONFIG_SCHEMA_VERSION);
}

static void test_load_migrates_in_memory_only(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, V1_FILE);
    struct stat before, after;
    assert_int_equal(stat(p, &before), 0);
    assert_int_equal(load(f, p, 0), 0);
    assert_v1_values(&f->cfg);
    assert_int_equal(f->cfg.file_schema_version, 1);
    assert_int_equal(f->cfg.schema_version, LYRA_CONFIG_SCHEMA_VERSION);
    assert_int_equal(stat(p, &after), 0);
    assert_true(before.st_ino == after.st_ino);
    assert_true(before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
                before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
    char *now = read_text(p);
    assert_string_equal(now, V1_FILE);
    assert_false(exists(in_dir(f, "lyra.yaml.v1.bak")));
    free(now);
}

static void test_load_refuses_unknown_flags(void **state)
{
    struct fx *f = *state;
    assert_int_equal(load(f, NULL, 1), LYRA_EINVAL);
    assert_null(f->cfg.home);
    assert_int_equal(load(f, NULL, 0), 0);
    assert_int_equal(f->cfg.file_schema_version, 0); /* no file */
}

static void test_v1_listen_ipv6_and_json_false(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 1\nserver:\n  listen: \"[::1]:8001\"\n"
                                    "log:\n  json: false\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_string_equal(f->cfg.server.host, "::1");
    assert_int_equal(f->cfg.server.port, 8001);
    assert_string_equal(f->cfg.log.format, "text");
}

static void test_failed_migration_leaves_original(void **state)
{
    struct fx *f = *state;
    static const char bad[] = "server:\n  listen: \"::1:8000\"\n";
    const char *p = write_config(f, bad);
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:2:11: server.listen: expected \"HOST:PORT\" or \"[IPV6]:PORT\", got ::1:8000",
               p);
    int from = 0;
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), LYRA_ECONFIG);
    assert_msg(f, "%s:2:11: server.listen: expected \"HOST:PORT\" or \"[IPV6]:PORT\", got ::1:8000",
               p);
    char *now = read_text(p);
    assert_string_equal(now, bad);
    assert_false(exists(in_dir(f, "lyra.yaml.v1.bak")));
    free(now);
}

static void test_migration_never_writes_secret(void **state)
{
    struct fx *f = *state;
    static const char old[] = "server:\n  listen: \"127.0.0.1:1\"\nauth:\n  admin_key: hunter2\n";
    const char *p = write_config(f, old);
    int from = 0;
    assert_int_equal(lyra_config_migrate_file(p, &from, &f->err), LYRA_ECONFIG);
    assert_null(strstr(f->err.msg, "hunter2"));
    char *now = read_text(p);
    assert_string_equal(now, old);
    assert_false(exists(in_dir(f, "lyra.yaml.v1.bak")));
    free(now);
}

/* Schema 2's keep_alive_s 0 meant "never"; schema 3 says -1 for that (0 is
 * "after each request"), so the migration must turn it into -1. */
static void test_v2_keep_alive_zero_becomes_never(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 2\nmodels:\n  keep_alive_s: 0\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.file_schema_version, 2);
    assert_int_equal(f->cfg.models.keep_alive_s, -1);
    lyra_config_free(&f->cfg);
    p = write_config(f, "schema_version: 2\nmodels:\n  keep_alive_s: 60\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.models.keep_alive_s, 60);
    lyra_config_free(&f->cfg);
    p = write_config(f, "schema_version: 3\nmodels:\n  keep_alive_s: 0\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.models.keep_alive_s, 0);
}

static void test_newer_schema_is_rejected(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 4\nserver:\n  port: 1\n");
    assert_int_equal(load(f, p, 0), LYRA_EUNSUPPORTED);
    assert_msg(f, "%s:1:17: schema_version 4 was written by a newer Lyra; this one reads up to 3",
               p);
}

/* -------------------------------------------------------- models.entries */

static void test_model_entries_are_parsed(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f,
        "schema_version: 3\n"
        "models:\n"
        "  entries:\n"
        "    - name: llama\n"
        "      path: llama.gguf\n"
        "      aliases: [l, ll]\n"
        "      ctx_size: 8192\n"
        "      parallel: 2\n"
        "      threads: 8\n"
        "      gpu_layers: 20\n"
        "      chat_template: chatml\n"
        "      embeddings: true\n"
        "      pinned: true\n"
        "      temperature: 0.7\n"
        "      top_p: 0.9\n"
        "      top_k: 40\n"
        "    - name: tiny\n"
        "      path: /abs/tiny.gguf\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(f->cfg.models.n_entries, 2);
    const struct lyra_model_entry *a = &f->cfg.models.entries[0], *b = &f->cfg.models.entries[1];
    assert_string_equal(a->name, "llama");
    assert_string_equal(a->path, "llama.gguf");
    assert_int_equal(a->n_aliases, 2);
    assert_string_equal(a->aliases[1], "ll");
    assert_int_equal(a->ctx_size, 8192);
    assert_int_equal(a->parallel, 2);
    assert_int_equal(a->threads, 8);
    assert_int_equal(a->gpu_layers, 20);
    assert_string_equal(a->chat_template, "chatml");
    assert_true(a->embeddings && a->pinned);
    assert_true(a->temperature == 0.7 && a->top_p == 0.9);
    assert_int_equal(a->top_k, 40);
    assert_string_equal(b->name, "tiny");
    assert_int_equal(b->n_aliases, 0);
    assert_int_equal(b->ctx_size, 0);
    assert_int_equal(b->gpu_layers, -1);
    assert_null(b->chat_template);
    assert_false(b->embeddings || b->pinned);
    assert_true(b->temperature < 0 && b->top_p < 0);
    assert_int_equal(b->top_k, -1);
}

static void test_model_entry_missing_path(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nmodels:\n  entries:\n"
                                    "    - name: a\n      path: a.gguf\n    - name: b\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:6:7: models.entries[1]: missing required key 'path'", p);
}

static void test_model_entry_duplicate_name(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nmodels:\n  entries:\n"
                                    "    - {name: a, path: a.gguf}\n"
                                    "    - {name: b, path: b.gguf, aliases: [a]}\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:5:7: models.entries[1]: duplicate model name 'a'", p);
}

static void test_model_entry_bad_field_has_position(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f, "schema_version: 3\nmodels:\n  entries:\n"
                                    "    - name: a\n      path: a.gguf\n      top_p: 1.5\n"
                                    "      contxt: 1\n");
    assert_int_equal(load(f, p, 0), LYRA_ECONFIG);
    assert_msg(f, "%s:6:14: models.entries[0].top_p: 1.5 is out of range (0..1)", p);
}

/* ------------------------------------------------- dump, validate, free */

/* The dump without its header comments (which name the file). */
static const char *dump_body(const char *dump)
{
    const char *s = strstr(dump, "schema_version:");
    assert_non_null(s);
    return s;
}

static void test_dump_load_round_trip(void **state)
{
    struct fx *f = *state;
    const char *p = write_config(f,
        "schema_version: 3\n"
        "server:\n"
        "  host: \"::1\"\n"
        "  cors_origins: [\"*\", \"http://a:1\", 'say \"hi\"', \"null\", \"tab\\there\", \"ünï\"]\n"
        "models:\n"
        "  default_model: \"true\"\n"
        "  memory_budget: 1500000000\n"
        "  entries:\n"
        "    - {name: m, path: 'my model.gguf', aliases: [x], temperature: 0.7,\n"
        "       chat_template: \"{{ a }}: b\\n\"}\n"
        "log:\n"
        "  file: \"~\"\n");
    assert_int_equal(load(f, p, 0), 0);
    assert_int_equal(lyra_config_set(&f->cfg, "server.max_body_bytes", "3MiB", NULL, &f->err), 0);
    char *first = lyra_config_dump(&f->cfg);
    assert_non_null(first);
    assert_int_equal(strncmp(dump_body(first), "schema_version: 3\n", 18), 0);

    const char *q = in_dir(f, "dumped.yaml");
    write_text(q, first);
    assert_int_equal(load(f, q, 0), 0);
    assert_string_equal(f->cfg.server.host, "::1");
    assert_int_equal(f->cfg.server.n_cors_origins, 6);
    assert_string_equal(f->cfg.server.cors_origins[2], "say \"hi\"");
    assert_string_equal(f->cfg.server.cors_origins[3], "null");
    assert_string_equal(f->cfg.server.cors_origins[4], "tab\there");
    assert_string_equal(f->cfg.models.default_model, "true");
    assert_true(f->cfg.models.memory_budget == 1500000000ull);
    assert_int_equal(f->cfg.server.max_body_bytes, 3u << 20);
    assert_string_equal(f->cfg.models.entries[0].chat_template, "{{ a }}: b\n");
    assert_true(f->cfg.models.entries[0].temperature == 0.7);
    assert_true(f->cfg.models.entries[0].top_p < 0);
    assert_string_equal(f->cfg.log.file, "~");
    assert_null(f->cfg.auth.admin_key_file);

    char *second = lyra_config_dump(&f->cfg);
    assert_non_null(second);
    assert_string_equal(dump_body(second), dump_body(first));
    free(first);
    free(second);
}

static void test_validate_rejects_warn_above_critical(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_WATCHDOG_WARN_PERCENT=90");
    env_add(f, "LYRA_WATCHDOG_CRITICAL_PERCENT=80");
    assert_int_equal(load(f, NULL, 0), LYRA_ECONFIG);
    assert_msg(f, "watchdog.warn_percent (90) must not exceed watchdog.critical_percent (80)");

    char *home_only[] = {f->envbuf[0], NULL};
    assert_int_equal(lyra_config_load(&f->cfg, f->dir, NULL, home_only, 0, &f->err), 0);
    assert_int_equal(lyra_config_validate(&f->cfg, &f->err), 0);
    f->cfg.server.port = 70000; /* a value written straight into the struct */
    assert_int_equal(lyra_config_validate(&f->cfg, &f->err), LYRA_ECONFIG);
    assert_msg(f, "server.port: 70000 is out of range (0..65535)");
}

/* A body the daemon accepts must fit the frame a worker takes. */
static void test_validate_caps_max_body_bytes(void **state)
{
    struct fx *f = *state;
    env_add(f, "LYRA_SERVER_MAX_BODY_BYTES=64MiB");
    assert_int_equal(load(f, NULL, 0), LYRA_ECONFIG);
    assert_msg(f, "server.max_body_bytes: 67108864 is more than 33554432 (32MiB): a request must fit the frame a worker accepts");
}

static void test_free_null_and_zeroes(void **state)
{
    struct fx *f = *state;
    lyra_config_free(NULL);
    assert_int_equal(load(f, NULL, 0), 0);
    lyra_config_free(&f->cfg);
    assert_null(f->cfg.home);
    assert_null(f->cfg.server.host);
    assert_int_equal(f->cfg.server.port, 0);
    lyra_config_free(&f->cfg); /* twice is harmless once zeroed */
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults_without_file),
        T(test_lyra_home_env_sets_home),
        T(test_home_argument_beats_lyra_home),
        T(test_file_in_home_is_read),
        T(test_explicit_missing_file_is_error),
        T(test_file_values),
        T(test_sizes_parse),
        T(test_empty_and_comment_only_files_give_defaults),
        T(test_env_overrides_file),
        T(test_env_list_is_comma_separated),
        T(test_flags_override_env),
        T(test_flag_with_bad_value_names_origin),
        T(test_unknown_key_has_position),
        T(test_unknown_section_has_position),
        T(test_wrong_type_has_position),
        T(test_type_and_range_errors),
        T(test_malformed_yaml_has_position),
        T(test_top_level_must_be_a_mapping),
        T(test_unknown_env_key_is_error),
        T(test_other_lyra_variables_are_ignored),
        T(test_env_bad_value_names_variable),
        T(test_secret_in_file_is_rejected),
        T(test_admin_key_from_env),
        T(test_admin_key_from_file),
        T(test_admin_key_env_beats_key_file),
        T(test_unreadable_key_file_names_path),
        T(test_dump_never_prints_secret),
        T(test_v1_file_is_migrated_on_disk),
        T(test_migrate_file_reports_versions),
        T(test_load_migrates_in_memory_only),
        T(test_load_refuses_unknown_flags),
        T(test_v1_listen_ipv6_and_json_false),
        T(test_failed_migration_leaves_original),
        T(test_migration_never_writes_secret),
        T(test_v2_keep_alive_zero_becomes_never),
        T(test_newer_schema_is_rejected),
        T(test_model_entries_are_parsed),
        T(test_model_entry_missing_path),
        T(test_model_entry_duplicate_name),
        T(test_model_entry_bad_field_has_position),
        T(test_dump_load_round_trip),
        T(test_validate_rejects_warn_above_critical),
        T(test_validate_caps_max_body_bytes),
        T(test_free_null_and_zeroes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
