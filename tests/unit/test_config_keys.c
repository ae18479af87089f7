/* test_config_keys.c — the key schema as a table: well formed, defaults
 * that pass their own checks, every key documented in docs/configuration.md
 * (keys are added by several people; the docs must follow), the dump tree,
 * and the setters used by flags. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_keys.h"
#include "core/util.h"

static void test_table_is_well_formed(void **state)
{
    size_t n, ne;
    const struct lyra_config_key *k = lyra_config_keys_all(&n);
    const struct lyra_config_key *e = lyra_config_keys_entry_fields(&ne);
    assert_true(n > 30 && ne > 10);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(k[i].section);
        assert_true(k[i].help && *k[i].help);
        if (k[i].type == LYRA_KT_INT || k[i].type == LYRA_KT_DOUBLE)
            assert_true(k[i].min <= k[i].max);
        if (k[i].flags & LYRA_KF_SECRET)
            assert_null(k[i].def);
        for (size_t j = 0; j < i; j++) {
            assert_false(!strcmp(k[i].section, k[j].section) && !strcmp(k[i].name, k[j].name));
            /* a section's keys are contiguous: the dump writes each section once */
            if (!strcmp(k[i].section, k[j].section))
                assert_string_equal(k[i - 1].section, k[i].section);
        }
        assert_ptr_equal(lyra_config_keys_find(k[i].section, k[i].name), &k[i]);
    }
    for (size_t i = 0; i < ne; i++) {
        assert_null(e[i].section);
        assert_true(e[i].help && *e[i].help);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(e[i].name, e[j].name);
    }
    assert_null(lyra_config_keys_find("server", "nope"));
    assert_null(lyra_config_keys_find(NULL, "port"));
}

static void test_defaults_pass_their_own_checks(void **state)
{
    struct lyra_config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct lyra_err err = {0};
    assert_int_equal(lyra_config_keys_defaults(&cfg, "/h", &err), 0);
    assert_int_equal(lyra_config_keys_check(&cfg, &err), 0);
    assert_string_equal(cfg.models.dir, "/h/models");
    assert_int_equal(cfg.models.load_timeout_s, 120);
    assert_int_equal(cfg.events.ring_bytes, 16u << 20);
    assert_int_equal(cfg.events.max_payload_bytes, 64u << 10);
    assert_false(cfg.server.allow_remote_without_auth);
    lyra_config_keys_free(&cfg);
    assert_null(cfg.models.dir);
}

/* The repository's docs/configuration.md (found from this file's path). */
static char *read_docs(void)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", __FILE__);
    char *t = strstr(path, "tests/unit/test_config_keys.c");
    assert_non_null(t);
    strcpy(t, "docs/configuration.md");
    char *text = lyra_read_file(path, NULL);
    if (!text)
        print_error("cannot read %s\n", path);
    assert_non_null(text);
    return text;
}

/* The text of the docs between "### `section`" and the next "### ". */
static char *doc_section(const char *docs, const char *heading)
{
    const char *s = strstr(docs, heading);
    if (!s)
        print_error("docs/configuration.md has no heading %s\n", heading);
    assert_non_null(s);
    s += strlen(heading);
    const char *end = strstr(s, "\n### ");
    return strndup(s, end ? (size_t)(end - s) : strlen(s));
}

static void test_every_key_is_documented(void **state)
{
    char *docs = read_docs();
    size_t n, ne;
    const struct lyra_config_key *k = lyra_config_keys_all(&n);
    const struct lyra_config_key *e = lyra_config_keys_entry_fields(&ne);
    for (size_t i = 0; i < n; i++) {
        if (k[i].flags & LYRA_KF_SECRET)
            continue;
        char heading[64], row[96], env[96];
        snprintf(heading, sizeof heading, "### `%s`", k[i].section);
        snprintf(row, sizeof row, "| `%s` |", k[i].name);
        snprintf(env, sizeof env, "`LYRA_%s_%s`", k[i].section, k[i].name);
        for (char *p = env; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        char *sec = doc_section(docs, heading);
        if (!strstr(sec, row) || (k[i].type != LYRA_KT_ENTRIES && !strstr(sec, env)))
            print_error("docs/configuration.md lacks a row for %s.%s with %s\n", k[i].section,
                        k[i].name, env);
        assert_non_null(strstr(sec, row));
        if (k[i].type != LYRA_KT_ENTRIES)
            assert_non_null(strstr(sec, env));
        free(sec);
    }
    char *entries = doc_section(docs, "#### `models.entries`");
    for (size_t i = 0; i < ne; i++) {
        char row[96];
        snprintf(row, sizeof row, "| `%s` |", e[i].name);
        if (!strstr(entries, row))
            print_error("docs/configuration.md lacks models.entries field %s\n", e[i].name);
        assert_non_null(strstr(entries, row));
    }
    free(entries);
    free(docs);
}

static void test_tree_holds_every_key_but_secrets(void **state)
{
    struct lyra_config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct lyra_err err = {0};
    assert_int_equal(lyra_config_keys_defaults(&cfg, "/h", &err), 0);
    cfg.auth.admin_key = strdup("hunter2");
    struct lyra_ynode *root = lyra_config_keys_tree(&cfg);
    assert_non_null(root);
    assert_string_equal(root->kids[0]->text, "schema_version");
    size_t n;
    const struct lyra_config_key *k = lyra_config_keys_all(&n);
    for (size_t i = 0; i < n; i++) {
        const struct lyra_ynode *sec = lyra_yamldoc_map_get(root, k[i].section);
        assert_non_null(sec);
        const struct lyra_ynode *v = lyra_yamldoc_map_get(sec, k[i].name);
        if (k[i].flags & LYRA_KF_SECRET) {
            assert_null(v);
            continue;
        }
        assert_non_null(v);
        assert_ptr_equal(v->comment, k[i].help);
    }
    char *out = lyra_yamldoc_emit(root, NULL, 0);
    assert_non_null(out);
    assert_null(strstr(out, "hunter2"));
    free(out);
    lyra_yamldoc_free(root);
    lyra_config_keys_free(&cfg);
}

static void test_set_parses_like_the_file(void **state)
{
    struct lyra_config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct lyra_err err = {0};
    assert_int_equal(lyra_config_keys_defaults(&cfg, "/h", &err), 0);
    assert_int_equal(lyra_config_keys_set(&cfg, "server.port", "9000", "--port", &err), 0);
    assert_int_equal(cfg.server.port, 9000);
    assert_int_equal(lyra_config_keys_set(&cfg, "server.port", "x", "--port", &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "--port: expected an integer, got 'x'");
    assert_int_equal(lyra_config_keys_set(&cfg, "server.port", NULL, NULL, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "server.port: expected an integer, got null");
    assert_int_equal(cfg.server.port, 9000);
    assert_int_equal(lyra_config_keys_set(&cfg, "log.file", NULL, NULL, &err), 0);
    assert_int_equal(lyra_config_keys_set(&cfg, "server.allowed_hosts", "a.test, b.test", NULL, &err), 0);
    assert_int_equal(cfg.server.n_allowed_hosts, 2);
    assert_string_equal(cfg.server.allowed_hosts[1], "b.test");
    assert_int_equal(lyra_config_keys_set(&cfg, "models.entries", "x", NULL, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "models.entries: models.entries can only be set in the file");
    assert_int_equal(lyra_config_keys_set(&cfg, "auth.admin_key", "k", "--key", &err), LYRA_ECONFIG);
    assert_null(cfg.auth.admin_key);
    assert_int_equal(lyra_config_keys_set(&cfg, "nodot", "1", NULL, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "nodot: unknown key 'nodot'");
    lyra_config_keys_free(&cfg);
}

static void test_check_catches_values_written_directly(void **state)
{
    struct lyra_config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct lyra_err err = {0};
    assert_int_equal(lyra_config_keys_defaults(&cfg, "/h", &err), 0);
    struct lyra_model_entry es[2] = {
        {.name = "a", .path = "a.gguf", .gpu_layers = -1, .temperature = -1, .top_p = -1, .top_k = -1},
        {.name = "b", .path = "b.gguf", .gpu_layers = -1, .temperature = -1, .top_p = -1, .top_k = -1},
    };
    char *alias[] = {"a"};
    cfg.models.entries = es;
    cfg.models.n_entries = 2;
    assert_int_equal(lyra_config_keys_check(&cfg, &err), 0);
    es[1].aliases = alias;
    es[1].n_aliases = 1;
    assert_int_equal(lyra_config_keys_check(&cfg, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "models.entries[1]: duplicate model name 'a'");
    es[1].n_aliases = 0;
    es[0].top_p = 2;
    assert_int_equal(lyra_config_keys_check(&cfg, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "models.entries[0].top_p: 2 is out of range (0..1)");
    cfg.models.entries = NULL;
    cfg.models.n_entries = 0;
    cfg.log.level[0] = 'X';
    assert_int_equal(lyra_config_keys_check(&cfg, &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "log.level: expected one of debug|info|warn|error");
    lyra_config_keys_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_is_well_formed),
        cmocka_unit_test(test_defaults_pass_their_own_checks),
        cmocka_unit_test(test_every_key_is_documented),
        cmocka_unit_test(test_tree_holds_every_key_but_secrets),
        cmocka_unit_test(test_set_parses_like_the_file),
        cmocka_unit_test(test_check_catches_values_written_directly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
