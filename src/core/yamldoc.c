/* yamldoc.c — YAML text to a tree of positioned nodes and back.
 *
 * Reading walks libyaml's event stream (yaml_parser_parse) recursively, one
 * node per event, with the depth bounded so that a hostile file cannot
 * exhaust the stack.  Writing is a small block-style emitter of our own
 * rather than libyaml's: it puts help comments after values and chooses
 * quoting conservatively, so what it writes reads back as the same tree. */
#include "core/yamldoc.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#include "core/util.h"

/* ------------------------------------------------------------- nodes */

struct lyra_ynode *lyra_yamldoc_node(enum lyra_ynode_kind kind, const char *text, bool plain,
                                     int line, int col)
{
    struct lyra_ynode *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    *n = (struct lyra_ynode){.kind = kind, .plain = plain, .line = line, .col = col};
    if (text && !(n->text = strdup(text))) {
        free(n);
        return NULL;
    }
    return n;
}

void lyra_yamldoc_free(struct lyra_ynode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        lyra_yamldoc_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n);
}

int lyra_yamldoc_push(struct lyra_ynode *n, struct lyra_ynode *kid)
{
    if (!kid)
        return LYRA_ENOMEM;
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 8;
        struct lyra_ynode **k = realloc(n->kids, cap * sizeof *k);
        if (!k) {
            lyra_yamldoc_free(kid);
            return LYRA_ENOMEM;
        }
        n->kids = k;
        n->cap = cap;
    }
    n->kids[n->n++] = kid;
    return 0;
}

int lyra_yamldoc_map_insert(struct lyra_ynode *map, size_t i, struct lyra_ynode *key,
                            struct lyra_ynode *val)
{
    if (!key || !val) {
        lyra_yamldoc_free(key);
        lyra_yamldoc_free(val);
        return LYRA_ENOMEM;
    }
    if (lyra_yamldoc_push(map, key)) {
        lyra_yamldoc_free(val);
        return LYRA_ENOMEM;
    }
    if (lyra_yamldoc_push(map, val)) {
        lyra_yamldoc_free(map->kids[--map->n]);
        return LYRA_ENOMEM;
    }
    memmove(&map->kids[2 * i + 2], &map->kids[2 * i], (map->n - 2 * i - 2) * sizeof *map->kids);
    map->kids[2 * i] = key;
    map->kids[2 * i + 1] = val;
    return 0;
}

void lyra_yamldoc_map_remove(struct lyra_ynode *map, size_t i)
{
    lyra_yamldoc_free(map->kids[2 * i]);
    lyra_yamldoc_free(map->kids[2 * i + 1]);
    memmove(&map->kids[2 * i], &map->kids[2 * i + 2], (map->n - 2 * i - 2) * sizeof *map->kids);
    map->n -= 2;
}

size_t lyra_yamldoc_map_find(const struct lyra_ynode *map, const char *key)
{
    for (size_t i = 0; map && i < lyra_yamldoc_pairs(map); i++)
        if (!strcmp(map->kids[2 * i]->text, key))
            return i;
    return SIZE_MAX;
}

struct lyra_ynode *lyra_yamldoc_map_get(const struct lyra_ynode *map, const char *key)
{
    size_t i = lyra_yamldoc_map_find(map, key);
    return i == SIZE_MAX ? NULL : map->kids[2 * i + 1];
}

/* A plain scalar's text that YAML reads as null. */
static bool null_word(const char *s)
{
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

bool lyra_yamldoc_is_null(const struct lyra_ynode *n)
{
    return n->kind == LYRA_YNODE_SCALAR && n->plain && null_word(n->text);
}

const char *lyra_yamldoc_kind_name(const struct lyra_ynode *n)
{
    return n->kind == LYRA_YNODE_MAP ? "a mapping" : n->kind == LYRA_YNODE_SEQ ? "a list" : "a scalar";
}

bool lyra_yamldoc_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i]) || !strcasecmp(s, no[i])) {
            *out = !strcasecmp(s, yes[i]);
            return true;
        }
    }
    return false;
}

bool lyra_yamldoc_int(const char *s, long long *out)
{
    if (!*s || isspace((unsigned char)*s))
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* ----------------------------------------------------------- reading */

struct reader {
    yaml_parser_t parser;
    const char *file;
    struct lyra_err *err;
};

static int nomem(struct lyra_err *err)
{
    return lyra_err_set(err, LYRA_ENOMEM, "out of memory reading YAML");
}

/* Reports the parser's own error with its position. */
static int parser_error(struct reader *r)
{
    const yaml_parser_t *p = &r->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return nomem(r->err);
    if (p->error == YAML_READER_ERROR)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s: %s at byte %zu", r->file,
                            p->problem ? p->problem : "unreadable input", p->problem_offset);
    if (p->context)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s (%s at line %zu, column %zu)",
                            r->file, p->problem_mark.line + 1, p->problem_mark.column + 1,
                            p->problem ? p->problem : "syntax error", p->context,
                            p->context_mark.line + 1, p->context_mark.column + 1);
    return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s", r->file, p->problem_mark.line + 1,
                        p->problem_mark.column + 1, p->problem ? p->problem : "syntax error");
}

static int next_event(struct reader *r, yaml_event_t *ev)
{
    return yaml_parser_parse(&r->parser, ev) ? 0 : parser_error(r);
}

static int fail_at(struct reader *r, const yaml_event_t *ev, const char *what)
{
    return lyra_err_set(r->err, LYRA_EPARSE, "%s:%zu:%zu: %s", r->file, ev->start_mark.line + 1,
                        ev->start_mark.column + 1, what);
}

static int build_node(struct reader *r, yaml_event_t *ev, int depth, struct lyra_ynode **out);

/* Reads the items of a sequence or mapping into n up to its end event. */
static int build_children(struct reader *r, struct lyra_ynode *n, int depth)
{
    yaml_event_t ev;
    for (size_t i = 0;; i++) {
        int rc = next_event(r, &ev);
        if (rc)
            return rc;
        if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        if (n->kind == LYRA_YNODE_MAP && i % 2 == 0 && ev.type != YAML_SCALAR_EVENT) {
            rc = fail_at(r, &ev, "keys must be plain strings");
            yaml_event_delete(&ev);
            return rc;
        }
        struct lyra_ynode *kid;
        if ((rc = build_node(r, &ev, depth + 1, &kid)))
            return rc;
        if (lyra_yamldoc_push(n, kid))
            return nomem(r->err);
    }
}

/* Builds the node that starts with *ev (deleted here) and its children. */
static int build_node(struct reader *r, yaml_event_t *ev, int depth, struct lyra_ynode **out)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    int rc = 0;
    *out = NULL;
    if (depth > LYRA_YAMLDOC_MAX_DEPTH) {
        rc = fail_at(r, ev, "nesting is too deep");
    } else if (ev->type == YAML_SCALAR_EVENT) {
        const char *v = (const char *)ev->data.scalar.value;
        bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (strlen(v) != ev->data.scalar.length)
            rc = fail_at(r, ev, "strings must not contain NUL characters");
        else if (!(*out = lyra_yamldoc_node(LYRA_YNODE_SCALAR, v, plain, line, col)))
            rc = nomem(r->err);
    } else if (ev->type == YAML_SEQUENCE_START_EVENT || ev->type == YAML_MAPPING_START_EVENT) {
        enum lyra_ynode_kind kind =
            ev->type == YAML_SEQUENCE_START_EVENT ? LYRA_YNODE_SEQ : LYRA_YNODE_MAP;
        if (!(*out = lyra_yamldoc_node(kind, NULL, false, line, col)))
            rc = nomem(r->err);
    } else if (ev->type == YAML_ALIAS_EVENT) {
        rc = fail_at(r, ev, "aliases (*name) are not supported");
    } else {
        rc = fail_at(r, ev, "unexpected YAML event");
    }
    yaml_event_delete(ev);
    if (!rc && (*out)->kind != LYRA_YNODE_SCALAR)
        rc = build_children(r, *out, depth);
    if (rc) {
        lyra_yamldoc_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Reads events from after STREAM-START: an empty stream, or one document. */
static int build_stream(struct reader *r, struct lyra_ynode **root)
{
    yaml_event_t ev;
    int rc = next_event(r, &ev);
    if (rc || ev.type == YAML_STREAM_END_EVENT) {
        if (!rc)
            yaml_event_delete(&ev);
        return rc;
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if ((rc = next_event(r, &ev)) || (rc = build_node(r, &ev, 0, root)))
        return rc;
    if ((rc = next_event(r, &ev)))
        return rc;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if ((rc = next_event(r, &ev)))
        return rc;
    if (ev.type != YAML_STREAM_END_EVENT)
        rc = fail_at(r, &ev, "only one YAML document is allowed");
    yaml_event_delete(&ev);
    return rc;
}

int lyra_yamldoc_parse(const char *text, size_t len, const char *file, struct lyra_ynode **root,
                       struct lyra_err *err)
{
    struct reader r = {.file = file, .err = err};
    yaml_event_t ev;
    *root = NULL;
    if (!yaml_parser_initialize(&r.parser))
        return nomem(err);
    yaml_parser_set_input_string(&r.parser, (const unsigned char *)text, len);
    int rc = next_event(&r, &ev);
    if (!rc) {
        yaml_event_delete(&ev); /* STREAM-START */
        rc = build_stream(&r, root);
    }
    yaml_parser_delete(&r.parser);
    if (rc || (*root && lyra_yamldoc_is_null(*root))) {
        lyra_yamldoc_free(*root);
        *root = NULL;
    }
    return rc;
}

/* ----------------------------------------------------------- writing */

/* Growable string; an allocation failure is sticky and checked at the end. */
struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_indent(struct buf *b, int n)
{
    for (int i = 0; i < n; i++)
        buf_add(b, " ", 1);
}

/* Appends s as the text of a comment: valid UTF-8, control characters
 * replaced by '?', so that nothing can end the comment line. */
static void buf_comment(struct buf *b, const char *s)
{
    char *t = strdup(s);
    if (!t) {
        b->oom = true;
        return;
    }
    lyra_utf8_scrub(t);
    for (char *p = t; *p; p++)
        buf_add(b, (unsigned char)*p < 0x20 || *p == 0x7f ? "?" : p, 1);
    free(t);
}

/* True when s can be written without quotes and reads back as the same
 * string: a conservative character set, never a null word. */
static bool plain_safe(const char *s)
{
    if (!*s || null_word(s) ||
        !(isalnum((unsigned char)*s) || *s == '/' || *s == '.' ||
          (*s == '-' && isdigit((unsigned char)s[1]))))
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._/+-", *s))
            return false;
    return true;
}

/* The code point of the well-formed UTF-8 sequence of n (2..4) bytes at p,
 * or -1. */
static long utf8_cp(const unsigned char *p, int n)
{
    static const long min[] = {0, 0, 0x80, 0x800, 0x10000};
    long cp = p[0] & (0x7f >> n);
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    return cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? -1 : cp;
}

/* Code points YAML only carries escaped: the C1 controls (libyaml refuses
 * them raw), the line breaks a double-quoted scalar would fold into a
 * space (NEL, LS, PS), the BOM and the non-characters U+FFFE/U+FFFF (found
 * by fuzz_config: such a dump did not load back). */
static bool yaml_escaped(long cp)
{
    return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe ||
           cp == 0xffff;
}

/* Writes a scalar: "~" for a null value, plain when safe, else
 * double-quoted, so that it reads back as exactly the same string.  A key
 * is never written as null: a key "null" is quoted. */
static void write_scalar(struct buf *b, const struct lyra_ynode *n, bool key)
{
    if (!key && lyra_yamldoc_is_null(n)) {
        buf_puts(b, "~");
        return;
    }
    if (plain_safe(n->text)) {
        buf_puts(b, n->text);
        return;
    }
    char *t = strdup(n->text);
    if (!t) {
        b->oom = true;
        return;
    }
    lyra_utf8_scrub(t); /* YAML cannot carry bytes that are not UTF-8 */
    buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)t; *p; p++) {
        char esc[16];
        int len = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : *p >= 0xc0 ? 2 : 1;
        long cp = len > 1 && strnlen((const char *)p, (size_t)len) == (size_t)len ? utf8_cp(p, len) : -1;
        if (cp >= 0 && yaml_escaped(cp)) {
            snprintf(esc, sizeof esc, "\\u%04lx", cp);
            buf_puts(b, esc);
            p += len - 1;
        } else if (*p == '"' || *p == '\\') {
            snprintf(esc, sizeof esc, "\\%c", *p);
            buf_puts(b, esc);
        } else if (*p == '\n') {
            buf_puts(b, "\\n");
        } else if (*p == '\t') {
            buf_puts(b, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", *p);
            buf_puts(b, esc);
        } else {
            buf_add(b, (const char *)p, 1);
        }
    }
    buf_puts(b, "\"");
    free(t);
}

/* Ends a value's line, with its help comment if it has one. */
static void write_eol(struct buf *b, const struct lyra_ynode *n)
{
    if (n->comment) {
        buf_puts(b, "  # ");
        buf_comment(b, n->comment);
    }
    buf_puts(b, "\n");
}

static void write_map(struct buf *b, const struct lyra_ynode *map, int indent, bool inline_first);

/* Writes the value of a "key:" already written, then the line end. */
static void write_value(struct buf *b, const struct lyra_ynode *v, int indent)
{
    if (v->kind == LYRA_YNODE_SCALAR || v->n == 0) {
        buf_puts(b, " ");
        if (v->kind == LYRA_YNODE_SCALAR)
            write_scalar(b, v, false);
        else
            buf_puts(b, v->kind == LYRA_YNODE_SEQ ? "[]" : "{}");
        write_eol(b, v);
        return;
    }
    write_eol(b, v);
    if (v->kind == LYRA_YNODE_MAP) {
        write_map(b, v, indent + 2, false);
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct lyra_ynode *it = v->kids[i];
        buf_indent(b, indent + 2);
        buf_puts(b, "- ");
        if (it->kind == LYRA_YNODE_MAP && it->n) {
            write_map(b, it, indent + 4, true);
        } else if (it->kind == LYRA_YNODE_SCALAR) {
            write_scalar(b, it, false);
            buf_puts(b, "\n");
        } else {
            /* Nested lists are not written in full (no Lyra key has one). */
            buf_puts(b, it->kind == LYRA_YNODE_SEQ ? "[]\n" : "{}\n");
        }
    }
}

/* Writes the pairs of a map at `indent`; with inline_first the first key
 * follows a "- " the caller wrote. */
static void write_map(struct buf *b, const struct lyra_ynode *map, int indent, bool inline_first)
{
    for (size_t i = 0; i < lyra_yamldoc_pairs(map); i++) {
        if (i > 0 || !inline_first)
            buf_indent(b, indent);
        write_scalar(b, map->kids[2 * i], true);
        buf_puts(b, ":");
        write_value(b, map->kids[2 * i + 1], indent);
    }
}

char *lyra_yamldoc_emit(const struct lyra_ynode *root, const char *const *comments,
                        size_t n_comments)
{
    struct buf b = {0};
    for (size_t i = 0; i < n_comments; i++) {
        buf_puts(&b, "# ");
        buf_comment(&b, comments[i]);
        buf_puts(&b, "\n");
    }
    if (root)
        write_map(&b, root, 0, false);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p ? b.p : strdup("");
}
