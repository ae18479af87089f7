/* config_migrate.h — schema migrations of the configuration document.
 *
 * The file's layout is versioned by its top-level `schema_version`
 * (LYRA_CONFIG_SCHEMA_VERSION in config.h is the current one).  Each step
 * turns version N into N + 1 by editing the YAML tree (core/yamldoc.h):
 * renaming keys, splitting values.  Steps never touch the disk and never
 * look at the key schema; the loader decides whether the migrated document
 * is only used (lyra serve) or also written back (lyra config migrate).
 *
 * The list of steps is append-only: a released step is never changed, a
 * new layout adds one step and bumps LYRA_CONFIG_SCHEMA_VERSION (a static
 * assertion keeps the two in step).
 *
 * Thread-safety: no shared state. */
#ifndef LYRA_CONFIG_MIGRATE_H
#define LYRA_CONFIG_MIGRATE_H

#include "core/error.h"
#include "core/yamldoc.h"

/* Reads the version of a document whose root is a mapping (or NULL for an
 * empty file).  A missing schema_version means 1, except in a document
 * with no keys at all, which is current (there is nothing to migrate).
 * Returns 0, LYRA_ECONFIG (not a positive integer) or LYRA_EUNSUPPORTED
 * (newer than this Lyra), with file:line:col. */
int lyra_config_migrate_version(const struct lyra_ynode *root, const char *file, int *version,
                                struct lyra_err *err);

/* Migrates root (a mapping) from version `from` to the current one in place
 * and sets schema_version, as the first key, to the current version.  On
 * error (a value the old schema could not hold, or an old key next to the
 * new one that replaces it) the tree may be half migrated: discard it.
 * Errors read "file:line:col: ...". */
int lyra_config_migrate_doc(struct lyra_ynode *root, int from, const char *file,
                            struct lyra_err *err);

#endif
