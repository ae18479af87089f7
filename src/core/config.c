/* config.c — the loader: defaults, then the YAML file, then the
 * environment, then flags, then validation; and the two writers, the
 * migration of a file on disk and the dump.
 *
 * The work is done by three modules: core/yamldoc (the file as a tree with
 * positions, and YAML out), core/config_migrate (schema steps on that tree)
 * and core/config_keys (the table of keys and typed values).  This file only
 * finds the inputs and orders the steps.  Loading never writes: an old file
 * is migrated in memory and cfg->file_schema_version tells the caller so;
 * only lyra_config_migrate_file() rewrites a file. */
#include "core/config.h"

#include "core/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config_keys.h"
#include "core/config_migrate.h"
#include "core/util.h"
#include "core/yamldoc.h"

extern char **environ;

#define MAX_FILE_BYTES (4u << 20)  /* a config file bigger than this is a mistake */
#define MAX_SECRET_BYTES (64u << 10)

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory reading the configuration");
}

/* Frees a secret after wiping it, so that it does not linger in freed memory. */
static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Value of NAME in an environment array, or NULL. */
static const char *env_get(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (; env && *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

/* Reads a whole regular file of at most `limit` bytes (caller frees *out);
 * *mode (may be NULL) receives its permissions. */
static int read_file(const char *path, size_t limit, char **out, size_t *len, mode_t *mode,
                     struct lyra_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lyra_err_set(err, errno == ENOENT ? LYRA_ENOTFOUND : LYRA_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    int rc = 0;
    char *p = NULL;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        rc = lyra_err_set(err, LYRA_EIO, "%s: not a regular file", path);
    else if ((size_t)st.st_size > limit)
        rc = lyra_err_set(err, LYRA_ETOOBIG, "%s: larger than %zu bytes", path, limit);
    else if (!(p = malloc((size_t)st.st_size + 1)))
        rc = nomem(err);
    size_t got = 0;
    while (!rc && got < (size_t)st.st_size) {
        ssize_t n = read(fd, p + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, n ? strerror(errno) : "short read");
        else
            got += (size_t)n;
    }
    close(fd);
    if (rc) {
        free(p);
        return rc;
    }
    p[got] = '\0';
    *out = p;
    *len = got;
    if (mode)
        *mode = st.st_mode & 07777;
    return 0;
}

/* A config document read from disk: its bytes, its tree (a mapping, or
 * NULL when empty) and the schema version it was written in. */
struct doc {
    char *text;
    size_t len;
    mode_t mode;
    struct lyra_ynode *root;
    int version;
};

static void doc_free(struct doc *d)
{
    free(d->text);
    lyra_yamldoc_free(d->root);
    memset(d, 0, sizeof *d);
}

/* Reads and parses the file at path and finds its version. */
static int doc_read(struct doc *d, const char *path, struct lyra_err *err)
{
    memset(d, 0, sizeof *d);
    int rc = read_file(path, MAX_FILE_BYTES, &d->text, &d->len, &d->mode, err);
    if (!rc)
        rc = lyra_yamldoc_parse(d->text, d->len, path, &d->root, err);
    if (!rc && d->root && d->root->kind != LYRA_YNODE_MAP)
        rc = lyra_err_set(err, LYRA_ECONFIG, "%s:%d:%d: expected a mapping of sections", path,
                          d->root->line, d->root->col);
    if (!rc)
        rc = lyra_config_migrate_version(d->root, path, &d->version, err);
    if (rc)
        doc_free(d);
    return rc;
}

/* ------------------------------------------------------------- secrets */

/* Reads the admin key from path, without its trailing newline (caller frees
 * with free_secret).  Errors name the path, never the content. */
static int read_secret(const char *path, char **out, struct lyra_err *err)
{
    struct lyra_err e;
    char *text;
    size_t len;
    int rc = read_file(path, MAX_SECRET_BYTES, &text, &len, NULL, &e);
    if (rc)
        return lyra_err_set(err, rc, "auth.admin_key_file: %s", e.msg);
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    if (!len || strlen(text) != len) {
        explicit_bzero(text, len);
        free(text);
        return lyra_err_set(err, LYRA_ECONFIG, "auth.admin_key_file: %s: %s", path,
                            len ? "the key contains a NUL byte" : "the file is empty");
    }
    *out = text;
    return 0;
}

/* Sets auth.admin_key from LYRA_ADMIN_KEY, else from auth.admin_key_file. */
static int resolve_secret(struct lyra_config *cfg, char *const *env, struct lyra_err *err)
{
    const char *key = env_get(env, "LYRA_ADMIN_KEY");
    char *s = NULL;
    if (key && *key) {
        if (!(s = strdup(key)))
            return nomem(err);
    } else if (cfg->auth.admin_key_file) {
        int rc = read_secret(cfg->auth.admin_key_file, &s, err);
        if (rc)
            return rc;
    } else {
        return 0;
    }
    free_secret(cfg->auth.admin_key);
    cfg->auth.admin_key = s;
    return 0;
}

/* ------------------------------------------------------------- loading */

/* LYRA_HOME: the argument, else env LYRA_HOME, else $HOME/.local/share/lyra. */
static int resolve_home(const char *home, char *const *env, char **out, struct lyra_err *err)
{
    const char *h = env_get(env, "HOME");
    if (!home || !*home)
        home = env_get(env, "LYRA_HOME");
    if (home && *home)
        *out = strdup(home);
    else if (h && *h)
        *out = lyra_path_join(h, ".local/share/lyra");
    else
        return lyra_err_set(err, LYRA_ECONFIG, "cannot find Lyra's home: set LYRA_HOME or HOME");
    return *out ? 0 : nomem(err);
}

/* The file to read: `file` (must exist), else <home>/lyra.yaml when it
 * exists, else none (*out NULL). */
static int find_file(const char *home, const char *file, char **out, struct lyra_err *err)
{
    struct stat st;
    *out = NULL;
    if (file) {
        if (stat(file, &st))
            return lyra_err_set(err, errno == ENOENT ? LYRA_ENOTFOUND : LYRA_EIO,
                                "config file %s: %s", file, strerror(errno));
        *out = strdup(file);
        return *out ? 0 : nomem(err);
    }
    char *p = lyra_path_join(home, "lyra.yaml");
    if (!p)
        return nomem(err);
    /* ENOTDIR: home is not a directory; no file here, and the daemon's own
     * check of LYRA_HOME reports that clearly. */
    if (stat(p, &st) && (errno == ENOENT || errno == ENOTDIR))
        free(p);
    else
        *out = p;
    return 0;
}

/* Reads cfg->file into cfg, migrating an old schema in memory. */
static int load_file(struct lyra_config *cfg, struct lyra_err *err)
{
    struct doc d;
    int rc = doc_read(&d, cfg->file, err);
    if (rc)
        return rc;
    cfg->file_schema_version = d.version;
    if (d.version < LYRA_CONFIG_SCHEMA_VERSION)
        rc = lyra_config_migrate_doc(d.root, d.version, cfg->file, err);
    if (!rc)
        rc = lyra_config_keys_apply(cfg, d.root, cfg->file, err);
    doc_free(&d);
    return rc;
}

int lyra_config_load(struct lyra_config *cfg, const char *home, const char *file,
                     char *const *environ_, unsigned flags, struct lyra_err *err)
{
    char *const *env = environ_ ? environ_ : environ;
    if (!cfg)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_load: no config");
    memset(cfg, 0, sizeof *cfg);
    if (flags)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_load: unknown flags 0x%x", flags);
    cfg->schema_version = LYRA_CONFIG_SCHEMA_VERSION;
    int rc = resolve_home(home, env, &cfg->home, err);
    if (!rc)
        rc = lyra_config_keys_defaults(cfg, cfg->home, err);
    if (!rc)
        rc = find_file(cfg->home, file, &cfg->file, err);
    if (!rc && cfg->file)
        rc = load_file(cfg, err);
    if (!rc)
        rc = lyra_config_keys_apply_env(cfg, env, err);
    if (!rc)
        rc = resolve_secret(cfg, env, err);
    if (!rc)
        rc = lyra_config_validate(cfg, err);
    if (rc)
        lyra_config_free(cfg);
    return rc;
}

/* ------------------------------------------------------- set, validate */

/* A flag naming the key file reads it now: flags beat LYRA_ADMIN_KEY.
 * cfg is unchanged on error. */
static int set_key_file(struct lyra_config *cfg, const char *key, const char *value,
                        const char *where, struct lyra_err *err)
{
    char *secret = NULL;
    int rc = value && *value ? read_secret(value, &secret, err) : 0;
    if (!rc)
        rc = lyra_config_keys_set(cfg, key, value, where, err);
    if (rc) {
        free_secret(secret);
        return rc;
    }
    if (secret) {
        free_secret(cfg->auth.admin_key);
        cfg->auth.admin_key = secret;
    }
    return 0;
}

int lyra_config_set(struct lyra_config *cfg, const char *key, const char *value,
                    const char *origin, struct lyra_err *err)
{
    if (cfg && key && !strcmp(key, "auth.admin_key_file"))
        return set_key_file(cfg, key, value, origin ? origin : key, err);
    return lyra_config_keys_set(cfg, key, value, origin, err);
}

int lyra_config_validate(const struct lyra_config *cfg, struct lyra_err *err)
{
    if (!cfg)
        return lyra_err_set(err, LYRA_EINVAL, "lyra_config_validate: no config");
    int rc = lyra_config_keys_check(cfg, err);
    if (!rc && cfg->server.max_body_bytes > LYRA_LIMIT_BODY_MAX)
        rc = lyra_err_set(err, LYRA_ECONFIG,
                          "server.max_body_bytes: %zu is more than %zu (32MiB): a request must fit the frame "
                          "a worker accepts",
                          cfg->server.max_body_bytes, LYRA_LIMIT_BODY_MAX);
    if (!rc && cfg->watchdog.warn_percent > cfg->watchdog.critical_percent)
        rc = lyra_err_set(err, LYRA_ECONFIG, "watchdog.warn_percent (%d) must not exceed "
                          "watchdog.critical_percent (%d)", cfg->watchdog.warn_percent,
                          cfg->watchdog.critical_percent);
    return rc;
}

/* ------------------------------------------------- migrating the file */

/* Applies a migrated tree to a scratch config, so that a file which would
 * not load is never written. */
static int check_loads(const struct lyra_ynode *root, const char *file, struct lyra_err *err)
{
    struct lyra_config scratch;
    memset(&scratch, 0, sizeof scratch);
    int rc = lyra_config_keys_defaults(&scratch, "/", err);
    if (!rc)
        rc = lyra_config_keys_apply(&scratch, root, file, err);
    lyra_config_free(&scratch);
    return rc;
}

/* Migrates d (read from path), copies the original bytes to
 * <path>.v<N>.bak and replaces the file.  Nothing is written unless the
 * migrated document loads. */
static int rewrite_file(const char *path, struct doc *d, struct lyra_err *err)
{
    int from = d->version;
    int rc = lyra_config_migrate_doc(d->root, from, path, err);
    if (!rc)
        rc = check_loads(d->root, path, err);
    if (rc)
        return rc;
    size_t blen = strlen(path) + 32;
    char *bak = malloc(blen), *header = malloc(blen + 128), *out = NULL;
    if (bak && header) {
        snprintf(bak, blen, "%s.v%d.bak", path, from);
        const char *base = strrchr(bak, '/');
        snprintf(header, blen + 128, "Migrated by Lyra from schema_version %d to %d; the original "
                 "is in %s", from, LYRA_CONFIG_SCHEMA_VERSION, base ? base + 1 : bak);
        const char *comments[] = {header};
        out = lyra_yamldoc_emit(d->root, comments, 1);
    }
    if (!out)
        rc = nomem(err);
    int e = rc ? 0 : lyra_write_file_atomic(bak, d->text, d->len, (int)d->mode);
    if (e)
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s", bak, strerror(-e));
    else if (!rc && (e = lyra_write_file_atomic(path, out, strlen(out), (int)d->mode)))
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s", path, strerror(-e));
    free(bak);
    free(header);
    free(out);
    return rc;
}

int lyra_config_migrate_file(const char *path, int *from_version, struct lyra_err *err)
{
    struct doc d;
    int rc = doc_read(&d, path, err);
    if (rc)
        return rc;
    int from = d.version;
    if (from < LYRA_CONFIG_SCHEMA_VERSION)
        rc = rewrite_file(path, &d, err);
    if (!rc && from_version)
        *from_version = from;
    doc_free(&d);
    return rc;
}

/* ---------------------------------------------------------- dump, free */

char *lyra_config_dump(const struct lyra_config *cfg)
{
    if (!cfg)
        return NULL;
    struct lyra_ynode *root = lyra_config_keys_tree(cfg);
    if (!root)
        return NULL;
    size_t hn = (cfg->home ? strlen(cfg->home) : 0) + 16;
    size_t fn = (cfg->file ? strlen(cfg->file) : 0) + 16;
    char *home = malloc(hn), *file = malloc(fn), *out = NULL;
    if (home && file) {
        snprintf(home, hn, "home: %s", cfg->home ? cfg->home : "(none)");
        snprintf(file, fn, "file: %s", cfg->file ? cfg->file : "(none)");
        const char *comments[] = {
            "Effective Lyra configuration.", home, file,
            cfg->auth.admin_key ? "auth.admin_key: <set> (secrets are never written)"
                                : "auth.admin_key: <not set> (secrets are never written)",
        };
        out = lyra_yamldoc_emit(root, comments, sizeof comments / sizeof comments[0]);
    }
    free(home);
    free(file);
    lyra_yamldoc_free(root);
    return out;
}

void lyra_config_free(struct lyra_config *cfg)
{
    if (!cfg)
        return;
    lyra_config_keys_free(cfg);
    free(cfg->home);
    free(cfg->file);
    memset(cfg, 0, sizeof *cfg);
}
