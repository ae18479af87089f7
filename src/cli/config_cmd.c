/* config_cmd.c — `lyra config validate|migrate|show [--json]`.  With --json,
 * show prints the effective configuration as a JSON object (the same keys
 * and values as the YAML, secrets left out, plus "home" and "file"), and
 * validate / migrate print what they found or did as an object.
 * Exit status: 0, 1 an invalid configuration or a failed migration, 2
 * usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/output.h"
#include "core/config_keys.h"
#include "core/yamldoc.h"

/* A scalar of the configuration's document as JSON: plain true/false,
 * null, integers and numbers as such, everything else a string. */
static json_t *scalar_json(const struct lyra_ynode *n)
{
    const char *t = n->text ? n->text : "";
    if (n->plain) {
        if (!*t || strcmp(t, "~") == 0 || strcmp(t, "null") == 0)
            return json_null();
        if (strcmp(t, "true") == 0 || strcmp(t, "false") == 0)
            return json_boolean(t[0] == 't');
        char *end = NULL;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (end != t && *end == '\0' && errno == 0)
            return json_integer((json_int_t)v);
        double d = strtod(t, &end);
        if (end != t && *end == '\0' && errno == 0)
            return json_real(d);
    }
    return json_string(t);
}

/* The document tree as JSON (NULL when out of memory); the tree is at most
 * LYRA_YAMLDOC_MAX_DEPTH deep. */
static json_t *node_json(const struct lyra_ynode *n)
{
    if (!n)
        return json_null();
    if (n->kind == LYRA_YNODE_SCALAR)
        return scalar_json(n);
    json_t *out = n->kind == LYRA_YNODE_MAP ? json_object() : json_array();
    for (size_t i = 0; out && i < n->n; i++) {
        if (n->kind == LYRA_YNODE_MAP) {
            const struct lyra_ynode *k = n->kids[i], *v = i + 1 < n->n ? n->kids[i + 1] : NULL;
            i++;
            if (json_object_set_new(out, k->text ? k->text : "", node_json(v)) < 0)
                json_decref(out), out = NULL;
        } else if (json_array_append_new(out, node_json(n->kids[i])) < 0) {
            json_decref(out), out = NULL;
        }
    }
    return out;
}

static int show_json(const struct lyra_config *cfg)
{
    struct lyra_ynode *root = lyra_config_keys_tree(cfg);
    json_t *j = root ? node_json(root) : NULL;
    lyra_yamldoc_free(root);
    if (j) {
        json_object_set_new(j, "home", cfg->home ? json_string(cfg->home) : json_null());
        json_object_set_new(j, "file", cfg->file ? json_string(cfg->file) : json_null());
    }
    int rc = j ? lyra_cli_print_json("config show", j, false) : 1;
    if (!j)
        fprintf(stderr, "lyra config show: out of memory\n");
    json_decref(j);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: lyra config <validate|migrate|show> [--json] [--home DIR] [--config FILE]\n\n"
                 "  validate  check the file and environment; exit 1 with file:line:col on an error\n"
                 "  migrate   rewrite an older file to schema %d, keeping <file>.v<N>.bak\n"
                 "  show      print the effective configuration (secrets hidden)\n"
                 "  --json    print a JSON object instead (show: the configuration)\n",
            LYRA_CONFIG_SCHEMA_VERSION);
}

int lyra_cmd_config(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    bool json = false;
    int n = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            argv[n++] = argv[i];
    }
    argc = n;
    const char *sub = argc > 1 ? argv[1] : NULL;
    if (argc > 2) {
        fprintf(stderr, "lyra config: unexpected argument '%s'\n", argv[2]);
        usage(stderr);
        return 2;
    }
    if (!sub || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        usage(sub ? stdout : stderr);
        return sub ? 0 : 2;
    }
    struct lyra_config cfg;
    if (strcmp(sub, "validate") == 0) {
        if (lyra_cli_load_config(&cfg, &flags, 0) != 0)
            return 1;
        if (json) {
            json_t *j = json_pack("{s:b, s:s?, s:i, s:i}", "ok", 1, "file", cfg.file, "schema_version",
                                  LYRA_CONFIG_SCHEMA_VERSION, "file_schema_version",
                                  cfg.file ? cfg.file_schema_version : LYRA_CONFIG_SCHEMA_VERSION);
            int st = j ? lyra_cli_print_json("config validate", j, false) : 1;
            json_decref(j);
            lyra_config_free(&cfg);
            return st;
        }
        printf("configuration OK (%s, schema %d)\n", cfg.file ? cfg.file : "no file, defaults and environment",
               LYRA_CONFIG_SCHEMA_VERSION);
        if (cfg.file && cfg.file_schema_version < cfg.schema_version)
            printf("note: %s has schema_version %d and is read migrated in memory; run `lyra config "
                   "migrate` to rewrite it\n", cfg.file, cfg.file_schema_version);
        lyra_config_free(&cfg);
        return 0;
    }
    if (strcmp(sub, "show") == 0) {
        if (lyra_cli_load_config(&cfg, &flags, 0) != 0)
            return 1;
        if (json) {
            int st = show_json(&cfg);
            lyra_config_free(&cfg);
            return st;
        }
        char *yaml = lyra_config_dump(&cfg);
        fputs(yaml ? yaml : "", stdout);
        free(yaml);
        lyra_config_free(&cfg);
        return yaml ? 0 : 1;
    }
    if (strcmp(sub, "migrate") == 0) {
        /* Find the file the daemon would read, then migrate it on disk. */
        if (lyra_cli_load_config(&cfg, &flags, 0) != 0)
            return 1;
        if (!cfg.file) {
            if (json)
                printf("{\"file\": null, \"migrated\": false}\n");
            else
                printf("no configuration file to migrate\n");
            lyra_config_free(&cfg);
            return 0;
        }
        struct lyra_err err = {0};
        int from = 0;
        int rc = lyra_config_migrate_file(cfg.file, &from, &err);
        if (rc < 0) {
            fprintf(stderr, "lyra config migrate: %s\n", err.msg);
        } else if (json) {
            json_t *j = json_pack("{s:s, s:b, s:i, s:i}", "file", cfg.file, "migrated",
                                  from != LYRA_CONFIG_SCHEMA_VERSION, "from", from, "to",
                                  LYRA_CONFIG_SCHEMA_VERSION);
            rc = j && lyra_cli_print_json("config migrate", j, false) == 0 ? 0 : -1;
            json_decref(j);
        } else if (from == LYRA_CONFIG_SCHEMA_VERSION)
            printf("%s is already at schema %d\n", cfg.file, from);
        else
            printf("migrated %s from schema %d to %d (original kept as %s.v%d.bak)\n", cfg.file, from,
                   LYRA_CONFIG_SCHEMA_VERSION, cfg.file, from);
        lyra_config_free(&cfg);
        return rc < 0 ? 1 : 0;
    }
    fprintf(stderr, "lyra config: unknown subcommand '%s'\n", sub);
    usage(stderr);
    return 2;
}
