/* test_config_migrate.c — the schema steps on a document, without disk or
 * key schema: versions read from the document, each v1 -> v2 change, the
 * conflicts an old file can hold, and positions kept for later messages. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/config_migrate.h"
#include "core/yamldoc.h"

static struct lyra_ynode *doc(const char *text)
{
    struct lyra_ynode *root = NULL;
    struct lyra_err err = {0};
    assert_int_equal(lyra_yamldoc_parse(text, strlen(text), "c.yaml", &root, &err), 0);
    return root;
}

static int version_of(const char *text, struct lyra_err *err)
{
    struct lyra_ynode *root = doc(text);
    int v = -1;
    int rc = lyra_config_migrate_version(root, "c.yaml", &v, err);
    lyra_yamldoc_free(root);
    return rc ? rc : v;
}

static const char *value(const struct lyra_ynode *root, const char *sec, const char *key)
{
    const struct lyra_ynode *s = lyra_yamldoc_map_get(root, sec);
    const struct lyra_ynode *v = s ? lyra_yamldoc_map_get(s, key) : NULL;
    return v && v->kind == LYRA_YNODE_SCALAR ? v->text : NULL;
}

static void test_versions(void **state)
{
    struct lyra_err err = {0};
    assert_int_equal(version_of("", &err), LYRA_CONFIG_SCHEMA_VERSION);       /* nothing to migrate */
    assert_int_equal(version_of("{}\n", &err), LYRA_CONFIG_SCHEMA_VERSION);
    assert_int_equal(version_of("server: {}\n", &err), 1);                   /* absent = 1 */
    assert_int_equal(version_of("schema_version: 2\n", &err), 2);
    assert_int_equal(version_of("schema_version: x\n", &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "c.yaml:1:17: schema_version: expected a positive integer, got 'x'");
    assert_int_equal(version_of("schema_version: [1]\n", &err), LYRA_ECONFIG);
    assert_string_equal(err.msg, "c.yaml:1:17: schema_version: expected a positive integer, got a list");
    assert_int_equal(version_of("schema_version: 0\n", &err), LYRA_ECONFIG);
    char text[64], want[160];
    snprintf(text, sizeof text, "schema_version: %d\n", LYRA_CONFIG_SCHEMA_VERSION + 1);
    snprintf(want, sizeof want, "c.yaml:1:17: schema_version %d was written by a newer Lyra; this one "
             "reads up to %d", LYRA_CONFIG_SCHEMA_VERSION + 1, LYRA_CONFIG_SCHEMA_VERSION);
    assert_int_equal(version_of(text, &err), LYRA_EUNSUPPORTED);
    assert_string_equal(err.msg, want);
}

static void test_v1_to_v2(void **state)
{
    struct lyra_err err = {0};
    struct lyra_ynode *root = doc("server:\n"
                                  "  threads: 2\n"
                                  "  listen: \"[::1]:9090\"\n"
                                  "models:\n"
                                  "  path: /srv\n"
                                  "  max_models: 3\n"
                                  "log:\n"
                                  "  json: yes\n");
    assert_int_equal(lyra_config_migrate_doc(root, 1, "c.yaml", &err), 0);
    /* schema_version is the first key, at the current version */
    assert_string_equal(root->kids[0]->text, "schema_version");
    char ver[16];
    snprintf(ver, sizeof ver, "%d", LYRA_CONFIG_SCHEMA_VERSION);
    assert_string_equal(root->kids[1]->text, ver);
    /* listen became host + port where listen was, in that order */
    const struct lyra_ynode *server = lyra_yamldoc_map_get(root, "server");
    assert_int_equal(lyra_yamldoc_map_find(server, "listen"), SIZE_MAX);
    assert_int_equal(lyra_yamldoc_map_find(server, "host"), 1);
    assert_int_equal(lyra_yamldoc_map_find(server, "port"), 2);
    assert_string_equal(value(root, "server", "host"), "::1");
    assert_false(lyra_yamldoc_map_get(server, "host")->plain); /* stays a string */
    assert_string_equal(value(root, "server", "port"), "9090");
    /* ... at the position of the old value, for messages about it */
    assert_int_equal(lyra_yamldoc_map_get(server, "port")->line, 3);
    assert_int_equal(lyra_yamldoc_map_get(server, "port")->col, 11);
    assert_string_equal(value(root, "models", "dir"), "/srv");
    assert_string_equal(value(root, "models", "max_loaded"), "3");
    assert_string_equal(value(root, "log", "format"), "json");
    assert_null(value(root, "log", "json"));
    lyra_yamldoc_free(root);

    root = doc("server:\n  listen: \":8001\"\nlog:\n  json: off\n");
    assert_int_equal(lyra_config_migrate_doc(root, 1, "c.yaml", &err), 0);
    assert_null(value(root, "server", "host")); /* ":PORT" sets only the port */
    assert_string_equal(value(root, "server", "port"), "8001");
    assert_string_equal(value(root, "log", "format"), "text");
    lyra_yamldoc_free(root);
}

static void test_v1_conflicts_and_bad_values(void **state)
{
    static const struct {
        const char *yaml, *msg;
    } cases[] = {
        {"models:\n  path: a\n  dir: b\n",
         "c.yaml:2:3: models.path (schema 1) and models.dir are both set; keep only dir"},
        {"models:\n  max_models: 1\n  max_loaded: 2\n",
         "c.yaml:2:3: models.max_models (schema 1) and models.max_loaded are both set; keep only max_loaded"},
        {"server:\n  port: 1\n  listen: \"a:2\"\n",
         "c.yaml:3:3: server.listen (schema 1) cannot be combined with server.host or server.port"},
        {"server:\n  listen: \"::1:8000\"\n",
         "c.yaml:2:11: server.listen: expected \"HOST:PORT\" or \"[IPV6]:PORT\", got ::1:8000"},
        {"server:\n  listen: \"host:\"\n",
         "c.yaml:2:11: server.listen: expected \"HOST:PORT\" or \"[IPV6]:PORT\", got host:"},
        {"server:\n  listen: [a]\n",
         "c.yaml:2:11: server.listen: expected \"HOST:PORT\" or \"[IPV6]:PORT\", got a list"},
        {"log:\n  json: maybe\n", "c.yaml:2:9: log.json: expected true or false"},
        {"log:\n  json: true\n  format: text\n",
         "c.yaml:2:3: log.json (schema 1) and log.format are both set; keep only log.format"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lyra_err err = {0};
        struct lyra_ynode *root = doc(cases[i].yaml);
        assert_int_equal(lyra_config_migrate_doc(root, 1, "c.yaml", &err), LYRA_ECONFIG);
        assert_string_equal(err.msg, cases[i].msg);
        lyra_yamldoc_free(root);
    }
}

static void test_current_document_only_gets_its_version(void **state)
{
    struct lyra_err err = {0};
    struct lyra_ynode *root = doc("server:\n  listen: kept\nschema_version: 2\n");
    assert_int_equal(lyra_config_migrate_doc(root, LYRA_CONFIG_SCHEMA_VERSION, "c.yaml", &err), 0);
    assert_int_equal(lyra_yamldoc_pairs(root), 2);
    assert_int_equal(lyra_yamldoc_map_find(root, "schema_version"), 0); /* moved first */
    assert_string_equal(value(root, "server", "listen"), "kept");       /* no step ran */
    lyra_yamldoc_free(root);

    assert_int_equal(lyra_config_migrate_doc(NULL, 1, "c.yaml", &err), LYRA_EINVAL);
    root = doc("a: 1\n");
    assert_int_equal(lyra_config_migrate_doc(root, 0, "c.yaml", &err), LYRA_EINVAL);
    assert_int_equal(lyra_config_migrate_doc(root, LYRA_CONFIG_SCHEMA_VERSION + 1, "c.yaml", &err),
                     LYRA_EINVAL);
    lyra_yamldoc_free(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_v1_to_v2),
        cmocka_unit_test(test_v1_conflicts_and_bad_values),
        cmocka_unit_test(test_current_document_only_gets_its_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
