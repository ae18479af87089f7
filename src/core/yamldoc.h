/* yamldoc.h — a YAML document as a small tree of nodes that remember where
 * they came from, read with libyaml and written back as YAML.
 *
 * Reading accepts one document of mappings, sequences and scalars whose
 * mapping keys are scalars; aliases, several documents, nesting deeper than
 * LYRA_YAMLDOC_MAX_DEPTH and scalars holding NUL are refused.  Every error
 * reads "file:line:col: ..." (1-based), as does every complaint a caller
 * makes about a node, since each node keeps its position.
 *
 * Writing emits block style with two-space indents.  A scalar is written
 * plain only when it is in a conservative character set and reads back as
 * the same string; otherwise it is double-quoted with escapes.  Comments
 * (the caller's header lines and each node's `comment`) have control
 * characters replaced, so a strange path cannot end a comment early.  YAML
 * cannot hold bytes that are not UTF-8: the writer replaces them with '?'.
 *
 * The tree is plain data (read its fields); change it only through the
 * functions below, which keep `n`/`cap` right and own every node they are
 * given.  Thread-safety: no shared state; one tree is used by one thread. */
#ifndef LYRA_YAMLDOC_H
#define LYRA_YAMLDOC_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

#define LYRA_YAMLDOC_MAX_DEPTH 32 /* deeper nesting is refused, not recursed */

enum lyra_ynode_kind { LYRA_YNODE_SCALAR, LYRA_YNODE_MAP, LYRA_YNODE_SEQ };

/* One node.  A mapping keeps key, value, key, value, ... in kids (keys are
 * scalars); a sequence keeps its items.  Kids and text are owned. */
struct lyra_ynode {
    enum lyra_ynode_kind kind;
    char *text;               /* scalar value, NUL-terminated; NULL for MAP and SEQ */
    bool plain;               /* written without quotes: then "", "~" and "null" mean null */
    int line, col;            /* 1-based position in the source; 0 for nodes built in code */
    const char *comment;      /* borrowed, static: written after the value by the emitter */
    struct lyra_ynode **kids;
    size_t n, cap;
};

/* Parses text[0..len) into a tree (caller frees with lyra_yamldoc_free).
 * *root is NULL for an empty document or one that is only a null.  `file`
 * names the source in errors.  Returns 0, LYRA_EPARSE (syntax or an
 * unsupported feature, with its position) or LYRA_ENOMEM. */
int lyra_yamldoc_parse(const char *text, size_t len, const char *file, struct lyra_ynode **root,
                       struct lyra_err *err);

/* The document as YAML (malloc'd, caller frees; NULL when out of memory):
 * each of the n_comments lines as "# line", then the pairs of root, a
 * mapping (NULL writes only the comments). */
char *lyra_yamldoc_emit(const struct lyra_ynode *root, const char *const *comments,
                        size_t n_comments);

/* A new node with a copy of text (NULL for MAP and SEQ); NULL when out of
 * memory.  Caller frees with lyra_yamldoc_free, or hands it to a function
 * below that takes it. */
struct lyra_ynode *lyra_yamldoc_node(enum lyra_ynode_kind kind, const char *text, bool plain,
                                     int line, int col);

/* Frees a node and everything below it.  NULL is a no-op. */
void lyra_yamldoc_free(struct lyra_ynode *n);

/* Appends kid (taken, may be NULL from a failed allocation) to a sequence
 * or mapping.  Returns 0 or LYRA_ENOMEM, having freed kid. */
int lyra_yamldoc_push(struct lyra_ynode *n, struct lyra_ynode *kid);

/* Inserts key: val as pair i of a mapping (i = pair count appends), taking
 * both (either may be NULL from a failed allocation: both are then freed).
 * Returns 0 or LYRA_ENOMEM. */
int lyra_yamldoc_map_insert(struct lyra_ynode *map, size_t i, struct lyra_ynode *key,
                            struct lyra_ynode *val);

/* Removes and frees pair i of a mapping. */
void lyra_yamldoc_map_remove(struct lyra_ynode *map, size_t i);

/* Index of the pair whose key is `key`, or SIZE_MAX (also for map NULL). */
size_t lyra_yamldoc_map_find(const struct lyra_ynode *map, const char *key);

/* The value of `key` in a mapping, or NULL. */
struct lyra_ynode *lyra_yamldoc_map_get(const struct lyra_ynode *map, const char *key);

/* Number of key: value pairs of a mapping. */
static inline size_t lyra_yamldoc_pairs(const struct lyra_ynode *map)
{
    return map->n / 2;
}

/* True for a plain scalar that YAML reads as null ("", "~", "null", ...). */
bool lyra_yamldoc_is_null(const struct lyra_ynode *n);

/* "a mapping", "a list" or "a scalar", for messages. */
const char *lyra_yamldoc_kind_name(const struct lyra_ynode *n);

/* Reads a YAML boolean as Lyra accepts it: true/false, yes/no, on/off, 1/0
 * in any case.  Returns false (and leaves *out) for anything else. */
bool lyra_yamldoc_bool(const char *s, bool *out);

/* Reads a whole decimal integer (no spaces, no junk, fits long long). */
bool lyra_yamldoc_int(const char *s, long long *out);

#endif
