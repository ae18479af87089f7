/* config_keys.h — the configuration's key schema: one table of keys with
 * their type, default, range and help, and everything that follows from a
 * key's type: defaults, storing a value read from the file, the environment
 * or a flag, range checks, freeing, and the tree that the dump writes.
 *
 * Each row names its field by offset in struct lyra_config (or struct
 * lyra_model_entry for models.entries), so adding a key means one field in
 * config.h and one row in config_keys.c.  Ranges that the worker also
 * enforces come from core/limits.h.
 *
 * Messages name the value's origin: "file:line:col: server.port: ...",
 * "env LYRA_SERVER_PORT: ...", "--port: ...".
 *
 * Thread-safety: the table is constant; the functions below touch only the
 * config they are given. */
#ifndef LYRA_CONFIG_KEYS_H
#define LYRA_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "core/yamldoc.h"

enum lyra_config_ktype {
    LYRA_KT_STR,     /* char *; NULL when the default is NULL and the value is null/empty */
    LYRA_KT_ENUM,    /* char *, one of `choices` */
    LYRA_KT_INT,     /* int within [min, max] */
    LYRA_KT_BOOL,    /* bool */
    LYRA_KT_SIZE,    /* size_t: "1024", "512MB", "4GiB"; >= min */
    LYRA_KT_U64,     /* uint64_t, same syntax as a size */
    LYRA_KT_DOUBLE,  /* double within [min, max] */
    LYRA_KT_LIST,    /* char ** with a size_t count at off_n */
    LYRA_KT_ENTRIES, /* struct lyra_model_entry * with a size_t count at off_n */
};

enum lyra_config_kflags {
    LYRA_KF_SECRET = 1 << 0,   /* never read from the file or flags, never written */
    LYRA_KF_HOME_DEF = 1 << 1, /* the default is a path relative to LYRA_HOME */
    LYRA_KF_REQUIRED = 1 << 2, /* a model entry must set it */
    LYRA_KF_UNSET = 1 << 3,    /* null means "unset" (-1); unset values are not dumped */
    LYRA_KF_ZERO = 1 << 4,     /* 0 ("use the default") is accepted besides [min, max] */
};

/* One key.  Rows are constant; fields are read directly. */
struct lyra_config_key {
    const char *section; /* NULL for the fields of a models.entries item */
    const char *name;
    enum lyra_config_ktype type;
    size_t off;          /* offset of the field */
    size_t off_n;        /* LIST, ENTRIES: offset of the count */
    const char *def;     /* default as text, parsed like a file value; NULL = none */
    double min, max;     /* INT, DOUBLE range; SIZE, U64: the minimum in min */
    const char *choices; /* ENUM: "a|b|c" */
    unsigned flags;      /* lyra_config_kflags */
    const char *help;    /* one line, written as a comment by the dump */
};

/* The keys of the file in dump order (*n receives the count), and the
 * fields of one models.entries item.  Borrowed, static. */
const struct lyra_config_key *lyra_config_keys_all(size_t *n);
const struct lyra_config_key *lyra_config_keys_entry_fields(size_t *n);

/* The row of section.name, or NULL. */
const struct lyra_config_key *lyra_config_keys_find(const char *section, const char *name);

/* Fills every field of cfg (zeroed) with its default; defaults marked
 * HOME_DEF are joined to `home`.  On error the fields set so far are still
 * owned by cfg (free with lyra_config_keys_free). */
int lyra_config_keys_defaults(struct lyra_config *cfg, const char *home, struct lyra_err *err);

/* Applies a current-version document (a mapping; NULL = nothing) to cfg:
 * each section's keys are checked for type and range and stored.
 * schema_version is skipped.  Unknown sections and keys, duplicates, wrong
 * types and secrets in the file are errors with file:line:col. */
int lyra_config_keys_apply(struct lyra_config *cfg, const struct lyra_ynode *root,
                           const char *file, struct lyra_err *err);

/* Applies every LYRA_<SECTION>_<KEY>=value of env (NULL-terminated).
 * Variables that do not start with a known section (LYRA_HOME, ...) are
 * left alone; an unknown key in a known section is an error. */
int lyra_config_keys_apply_env(struct lyra_config *cfg, char *const *env, struct lyra_err *err);

/* Stores text (NULL = null) into the key with dotted name `key`, parsed as
 * the file would be; `where` prefixes messages.  Secrets and models.entries
 * are refused.  The field is unchanged on error. */
int lyra_config_keys_set(struct lyra_config *cfg, const char *key, const char *text,
                         const char *where, struct lyra_err *err);

/* Checks every field of cfg and of its model entries against its row (for
 * values written into the struct directly) and that entry names and
 * aliases are unique.  Messages name the key ("server.port: ..."). */
int lyra_config_keys_check(const struct lyra_config *cfg, struct lyra_err *err);

/* The configuration as a document: schema_version, then every section in
 * table order, each value carrying its help as comment.  Secrets are left
 * out.  Caller frees with lyra_yamldoc_free; NULL when out of memory. */
struct lyra_ynode *lyra_config_keys_tree(const struct lyra_config *cfg);

/* Frees every field the table owns in cfg (secrets are wiped first) and
 * leaves them NULL/empty. */
void lyra_config_keys_free(struct lyra_config *cfg);

#endif
