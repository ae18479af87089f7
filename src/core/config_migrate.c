/* config_migrate.c — the schema steps, oldest first, as edits of the YAML
 * tree.  Nodes a step creates take the position of the node they replace,
 * so a complaint about a migrated value still points into the user's file. */
#include "core/config_migrate.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory migrating the configuration");
}

/* The mapping of a section, or NULL when absent or not a mapping (loading
 * the migrated document reports the latter). */
static struct lyra_ynode *section_map(const struct lyra_ynode *root, const char *name)
{
    struct lyra_ynode *s = lyra_yamldoc_map_get(root, name);
    return s && s->kind == LYRA_YNODE_MAP ? s : NULL;
}

/* Renames key `from` to `to` in a section map; both present is an error. */
static int rename_key(struct lyra_ynode *map, const char *sec, const char *from, const char *to,
                      const char *file, struct lyra_err *err)
{
    size_t i = lyra_yamldoc_map_find(map, from);
    if (i == SIZE_MAX)
        return 0;
    struct lyra_ynode *key = map->kids[2 * i];
    if (lyra_yamldoc_map_find(map, to) != SIZE_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: %s.%s (schema 1) and %s.%s are both "
                            "set; keep only %s", file, key->line, key->col, sec, from, sec, to, to);
    char *t = strdup(to);
    if (!t)
        return nomem(err);
    free(key->text);
    key->text = t;
    return 0;
}

/* Splits "HOST:PORT", "[V6]:PORT" or ":PORT" into host (NULL when empty)
 * and port, both malloc'd.  Returns 0, LYRA_EINVAL (bad syntax) or LYRA_ENOMEM. */
static int split_listen(const char *s, char **host, char **port)
{
    const char *h = s, *colon;
    size_t hlen;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return LYRA_EINVAL;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':'))
            return LYRA_EINVAL; /* no port, or an IPv6 address without brackets */
        hlen = (size_t)(colon - s);
    }
    const char *p = colon + 1;
    if (!*p || strspn(p, "0123456789") != strlen(p))
        return LYRA_EINVAL;
    *host = hlen ? strndup(h, hlen) : NULL;
    *port = strdup(p);
    if (!*port || (hlen && !*host)) {
        free(*host);
        free(*port);
        return LYRA_ENOMEM;
    }
    return 0;
}

/* v1 server.listen "HOST:PORT" -> v2 server.host + server.port. */
static int migrate_listen(struct lyra_ynode *server, const char *file, struct lyra_err *err)
{
    size_t i = lyra_yamldoc_map_find(server, "listen");
    if (i == SIZE_MAX)
        return 0;
    struct lyra_ynode *key = server->kids[2 * i], *val = server->kids[2 * i + 1];
    char *host = NULL, *port = NULL;
    if (lyra_yamldoc_map_get(server, "host") || lyra_yamldoc_map_get(server, "port"))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: server.listen (schema 1) cannot be "
                            "combined with server.host or server.port", file, key->line, key->col);
    int rc = val->kind == LYRA_YNODE_SCALAR ? split_listen(val->text, &host, &port) : LYRA_EINVAL;
    if (rc == LYRA_ENOMEM)
        return nomem(err);
    if (rc)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: server.listen: expected \"HOST:PORT\" "
                            "or \"[IPV6]:PORT\", got %s", file, val->line, val->col,
                            val->kind == LYRA_YNODE_SCALAR ? val->text : lyra_yamldoc_kind_name(val));
    int l = val->line, c = val->col;
    lyra_yamldoc_map_remove(server, i);
    rc = lyra_yamldoc_map_insert(server, i, lyra_yamldoc_node(LYRA_YNODE_SCALAR, "port", true, l, c),
                                 lyra_yamldoc_node(LYRA_YNODE_SCALAR, port, true, l, c));
    if (!rc && host) /* quoted: "::1" must stay a string */
        rc = lyra_yamldoc_map_insert(server, i,
                                     lyra_yamldoc_node(LYRA_YNODE_SCALAR, "host", true, l, c),
                                     lyra_yamldoc_node(LYRA_YNODE_SCALAR, host, false, l, c));
    free(host);
    free(port);
    return rc ? nomem(err) : 0;
}

/* v1 log.json true|false -> v2 log.format json|text. */
static int migrate_log_json(struct lyra_ynode *log, const char *file, struct lyra_err *err)
{
    size_t i = lyra_yamldoc_map_find(log, "json");
    if (i == SIZE_MAX)
        return 0;
    struct lyra_ynode *key = log->kids[2 * i], *val = log->kids[2 * i + 1];
    bool json;
    if (lyra_yamldoc_map_find(log, "format") != SIZE_MAX)
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: log.json (schema 1) and log.format are "
                            "both set; keep only log.format", file, key->line, key->col);
    if (val->kind != LYRA_YNODE_SCALAR || !lyra_yamldoc_bool(val->text, &json))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: log.json: expected true or false",
                            file, val->line, val->col);
    char *k = strdup("format"), *v = strdup(json ? "json" : "text");
    if (!k || !v) {
        free(k);
        free(v);
        return nomem(err);
    }
    free(key->text);
    key->text = k;
    free(val->text);
    val->text = v;
    val->plain = true;
    return 0;
}

/* Schema 1 -> 2: server.listen split into host and port, models.path ->
 * models.dir, models.max_models -> models.max_loaded, log.json -> log.format. */
static int v1_to_v2(struct lyra_ynode *root, const char *file, struct lyra_err *err)
{
    struct lyra_ynode *server = section_map(root, "server");
    struct lyra_ynode *models = section_map(root, "models");
    struct lyra_ynode *log = section_map(root, "log");
    int rc = 0;
    if (server)
        rc = migrate_listen(server, file, err);
    if (!rc && models)
        rc = rename_key(models, "models", "path", "dir", file, err);
    if (!rc && models)
        rc = rename_key(models, "models", "max_models", "max_loaded", file, err);
    if (!rc && log)
        rc = migrate_log_json(log, file, err);
    return rc;
}

/* Schema 2 -> 3: models.keep_alive_s 0 meant "never unload"; from schema 3
 * on, 0 means "unload after each request" (Ollama's keep_alive: 0) and -1
 * means never, so a 0 becomes -1.  Entries had no keep_alive_s before 3. */
static int v2_to_v3(struct lyra_ynode *root, const char *file, struct lyra_err *err)
{
    (void)file;
    (void)err;
    struct lyra_ynode *models = section_map(root, "models");
    struct lyra_ynode *ka = models ? lyra_yamldoc_map_get(models, "keep_alive_s") : NULL;
    long long v;
    if (!ka || ka->kind != LYRA_YNODE_SCALAR || !lyra_yamldoc_int(ka->text, &v) || v != 0)
        return 0; /* anything else means the same in both schemas (or is reported by the loader) */
    char *t = strdup("-1");
    if (!t)
        return nomem(err);
    free(ka->text);
    ka->text = t;
    ka->plain = true;
    return 0;
}

/* The steps, append-only: steps[i] turns version i + 1 into i + 2. */
static const struct step {
    int from;
    int (*run)(struct lyra_ynode *root, const char *file, struct lyra_err *err);
} steps[] = {
    {1, v1_to_v2},
    {2, v2_to_v3},
};
_Static_assert(sizeof steps / sizeof steps[0] == LYRA_CONFIG_SCHEMA_VERSION - 1,
               "one migration step per schema version");

int lyra_config_migrate_version(const struct lyra_ynode *root, const char *file, int *version,
                                struct lyra_err *err)
{
    if (!root || !root->n) {
        *version = LYRA_CONFIG_SCHEMA_VERSION;
        return 0;
    }
    const struct lyra_ynode *v = lyra_yamldoc_map_get(root, "schema_version");
    long long ll = 1;
    if (v && (v->kind != LYRA_YNODE_SCALAR || !lyra_yamldoc_int(v->text, &ll) || ll < 1))
        return lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: schema_version: expected a positive "
                            "integer, got %s%s%s", file, v->line, v->col,
                            v->kind == LYRA_YNODE_SCALAR ? "'" : "",
                            v->kind == LYRA_YNODE_SCALAR ? v->text : lyra_yamldoc_kind_name(v),
                            v->kind == LYRA_YNODE_SCALAR ? "'" : "");
    if (ll > LYRA_CONFIG_SCHEMA_VERSION)
        return lyra_err_set(err, LYRA_EUNSUPPORTED, "%s:%d:%d: schema_version %lld was written by "
                            "a newer Lyra; this one reads up to %d", file, v->line, v->col, ll,
                            LYRA_CONFIG_SCHEMA_VERSION);
    *version = (int)ll;
    return 0;
}

int lyra_config_migrate_doc(struct lyra_ynode *root, int from, const char *file,
                            struct lyra_err *err)
{
    if (!root || root->kind != LYRA_YNODE_MAP || from < 1 || from > LYRA_CONFIG_SCHEMA_VERSION)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_migrate_doc: no document or bad version");
    for (int v = from; v < LYRA_CONFIG_SCHEMA_VERSION; v++) {
        const struct step *s = &steps[v - 1];
        int rc = s->from == v ? s->run(root, file, err)
                              : lyra_err_set(err, LYRA_EINTERNAL, "migration table out of order");
        if (rc)
            return rc;
    }
    size_t i = lyra_yamldoc_map_find(root, "schema_version");
    if (i != SIZE_MAX)
        lyra_yamldoc_map_remove(root, i);
    char ver[16];
    snprintf(ver, sizeof ver, "%d", LYRA_CONFIG_SCHEMA_VERSION);
    if (lyra_yamldoc_map_insert(root, 0,
                                lyra_yamldoc_node(LYRA_YNODE_SCALAR, "schema_version", true, 1, 1),
                                lyra_yamldoc_node(LYRA_YNODE_SCALAR, ver, true, 1, 1)))
        return nomem(err);
    return 0;
}
