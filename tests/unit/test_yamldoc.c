/* test_yamldoc.c — the YAML document module: positions of every node, the
 * features it refuses (each with its position), the tree operations, and an
 * emitter whose output always reads back as the same tree. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/yamldoc.h"

static struct lyra_ynode *parse_ok(const char *text)
{
    struct lyra_ynode *root = NULL;
    struct lyra_err err = {0};
    int rc = lyra_yamldoc_parse(text, strlen(text), "t.yaml", &root, &err);
    if (rc)
        print_error("parse failed: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return root;
}

static void assert_parse_error(const char *text, int code, const char *msg)
{
    struct lyra_ynode *root = (struct lyra_ynode *)1;
    struct lyra_err err = {0};
    assert_int_equal(lyra_yamldoc_parse(text, strlen(text), "t.yaml", &root, &err), code);
    assert_null(root);
    assert_string_equal(err.msg, msg);
}

static void assert_pos(const struct lyra_ynode *n, int line, int col)
{
    assert_non_null(n);
    assert_int_equal(n->line, line);
    assert_int_equal(n->col, col);
}

static void test_every_node_has_its_position(void **state)
{
    struct lyra_ynode *root = parse_ok("# comment\n"
                                       "server:\n"
                                       "  port: 8000\n"
                                       "  hosts: [a, 'b']\n"
                                       "list:\n"
                                       "  - {x: 1}\n");
    assert_int_equal(root->kind, LYRA_YNODE_MAP);
    assert_int_equal(lyra_yamldoc_pairs(root), 2);
    assert_pos(root->kids[0], 2, 1); /* "server" */
    struct lyra_ynode *server = lyra_yamldoc_map_get(root, "server");
    assert_int_equal(server->kind, LYRA_YNODE_MAP);
    assert_pos(server->kids[0], 3, 3);                        /* "port" */
    assert_pos(lyra_yamldoc_map_get(server, "port"), 3, 9);   /* 8000 */
    struct lyra_ynode *hosts = lyra_yamldoc_map_get(server, "hosts");
    assert_int_equal(hosts->kind, LYRA_YNODE_SEQ);
    assert_pos(hosts, 4, 10);
    assert_pos(hosts->kids[1], 4, 14);
    assert_string_equal(hosts->kids[1]->text, "b");
    assert_true(hosts->kids[0]->plain);
    assert_false(hosts->kids[1]->plain); /* quoted */
    struct lyra_ynode *list = lyra_yamldoc_map_get(root, "list");
    assert_pos(list->kids[0], 6, 5);
    assert_pos(lyra_yamldoc_map_get(list->kids[0], "x"), 6, 9);
    lyra_yamldoc_free(root);
}

static void test_empty_and_null_documents_have_no_root(void **state)
{
    const char *texts[] = {"", "# only a comment\n", "~\n", "null\n", "---\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        assert_null(parse_ok(texts[i]));
    /* a quoted "~" is a string, not null */
    struct lyra_ynode *s = parse_ok("'~'\n");
    assert_non_null(s);
    assert_false(lyra_yamldoc_is_null(s));
    lyra_yamldoc_free(s);
}

static void test_refused_features_have_positions(void **state)
{
    assert_parse_error("a: &x 1\nb: *x\n", LYRA_EPARSE, "t.yaml:2:4: aliases (*name) are not supported");
    assert_parse_error("a: 1\n---\nb: 2\n", LYRA_EPARSE, "t.yaml:2:1: only one YAML document is allowed");
    assert_parse_error("? [a]\n: b\n", LYRA_EPARSE, "t.yaml:1:3: keys must be plain strings");
    assert_parse_error("a: \"x\\0y\"\n", LYRA_EPARSE,
                       "t.yaml:1:4: strings must not contain NUL characters");
    assert_parse_error("a: \xff\n", LYRA_EPARSE, "t.yaml: invalid leading UTF-8 octet at byte 3");
    assert_parse_error("a: [1, 2\n", LYRA_EPARSE,
                       "t.yaml:2:1: did not find expected ',' or ']' (while parsing a flow "
                       "sequence at line 1, column 4)");
}

static void test_nesting_is_bounded(void **state)
{
    char deep[256] = "";
    for (int i = 0; i < LYRA_YAMLDOC_MAX_DEPTH; i++)
        strcat(deep, "[");
    strcat(deep, "1");
    for (int i = 0; i < LYRA_YAMLDOC_MAX_DEPTH; i++)
        strcat(deep, "]");
    struct lyra_ynode *ok = parse_ok(deep); /* depth 32 is allowed */
    lyra_yamldoc_free(ok);
    char deeper[256];
    snprintf(deeper, sizeof deeper, "[%s]", deep);
    char want[64];
    snprintf(want, sizeof want, "t.yaml:1:%d: nesting is too deep", LYRA_YAMLDOC_MAX_DEPTH + 2);
    assert_parse_error(deeper, LYRA_EPARSE, want);
}

static void test_map_operations(void **state)
{
    struct lyra_ynode *m = lyra_yamldoc_node(LYRA_YNODE_MAP, NULL, false, 0, 0);
    assert_non_null(m);
    const char *keys[] = {"b", "c"};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(lyra_yamldoc_map_insert(m, i,
                                                 lyra_yamldoc_node(LYRA_YNODE_SCALAR, keys[i], true, 0, 0),
                                                 lyra_yamldoc_node(LYRA_YNODE_SCALAR, "v", true, 0, 0)),
                         0);
    assert_int_equal(lyra_yamldoc_map_insert(m, 0, lyra_yamldoc_node(LYRA_YNODE_SCALAR, "a", true, 0, 0),
                                             lyra_yamldoc_node(LYRA_YNODE_SCALAR, "1", true, 0, 0)),
                     0);
    assert_int_equal(lyra_yamldoc_pairs(m), 3);
    assert_int_equal(lyra_yamldoc_map_find(m, "a"), 0);
    assert_int_equal(lyra_yamldoc_map_find(m, "c"), 2);
    assert_int_equal(lyra_yamldoc_map_find(m, "z"), SIZE_MAX);
    assert_int_equal(lyra_yamldoc_map_find(NULL, "a"), SIZE_MAX);
    lyra_yamldoc_map_remove(m, 1);
    assert_int_equal(lyra_yamldoc_pairs(m), 2);
    assert_int_equal(lyra_yamldoc_map_find(m, "c"), 1);
    assert_null(lyra_yamldoc_map_get(m, "b"));
    /* a failed allocation handed in is reported, not stored */
    assert_int_equal(lyra_yamldoc_map_insert(m, 0, NULL,
                                             lyra_yamldoc_node(LYRA_YNODE_SCALAR, "x", true, 0, 0)),
                     LYRA_ENOMEM);
    assert_int_equal(lyra_yamldoc_push(m, NULL), LYRA_ENOMEM);
    assert_int_equal(lyra_yamldoc_pairs(m), 2);
    lyra_yamldoc_free(m);
    lyra_yamldoc_free(NULL);
}

static void test_scalar_helpers(void **state)
{
    bool b = false;
    assert_true(lyra_yamldoc_bool("YES", &b) && b);
    assert_true(lyra_yamldoc_bool("off", &b) && !b);
    assert_false(lyra_yamldoc_bool("maybe", &b));
    long long v = 0;
    assert_true(lyra_yamldoc_int("-42", &v) && v == -42);
    assert_false(lyra_yamldoc_int(" 1", &v));
    assert_false(lyra_yamldoc_int("1x", &v));
    assert_false(lyra_yamldoc_int("", &v));
    assert_false(lyra_yamldoc_int("99999999999999999999", &v));
}

/* Parses `text`, emits it, parses the output and checks that every scalar
 * came back identical. */
static void assert_same_tree(const struct lyra_ynode *a, const struct lyra_ynode *b)
{
    assert_int_equal(a->kind, b->kind);
    assert_int_equal(a->n, b->n);
    if (a->kind == LYRA_YNODE_SCALAR) {
        assert_string_equal(a->text, b->text);
        assert_int_equal(lyra_yamldoc_is_null(a), lyra_yamldoc_is_null(b));
    }
    for (size_t i = 0; i < a->n; i++) {
        if (a->kind == LYRA_YNODE_MAP && i % 2 == 0) /* keys: the text is what counts */
            assert_string_equal(a->kids[i]->text, b->kids[i]->text);
        else
            assert_same_tree(a->kids[i], b->kids[i]);
    }
}

static void test_emit_reads_back_the_same(void **state)
{
    const char *text = "plain: abc/def-1.2\n"
                       "empty: \"\"\n"
                       "nullish: 'null'\n"
                       "null: ~\n"
                       "colon: \"a: b\"\n"
                       "hash: \"x # y\"\n"
                       "quote: 'say \"hi\"\\'\n"
                       "ctl: \"tab\\there\\nline\\x01\"\n"
                       "utf8: \"ünï ✓\"\n"
                       "neg: -1\n"
                       "dash: \"-x\"\n"
                       "list: [a, \"b c\", '']\n"
                       "emptylist: []\n"
                       "emptymap: {}\n"
                       "entries:\n"
                       "  - {name: m, path: 'a b.gguf'}\n"
                       "  - plain\n"
                       "nested:\n"
                       "  deeper: {k: v}\n";
    struct lyra_ynode *a = parse_ok(text);
    char *out = lyra_yamldoc_emit(a, NULL, 0);
    assert_non_null(out);
    struct lyra_ynode *b = parse_ok(out);
    assert_same_tree(a, b);
    free(out);
    lyra_yamldoc_free(a);
    lyra_yamldoc_free(b);
}

static void test_emit_comments_and_bad_bytes_stay_yaml(void **state)
{
    /* A comment with a newline must not end early; bytes that are not UTF-8
     * (a path, an environment value) are replaced, since YAML cannot hold
     * them and the output must read back. */
    struct lyra_ynode *m = lyra_yamldoc_node(LYRA_YNODE_MAP, NULL, false, 0, 0);
    struct lyra_ynode *v = lyra_yamldoc_node(LYRA_YNODE_SCALAR, "caf\xe9!", false, 0, 0);
    v->comment = "help\nnot: yaml";
    struct lyra_ynode *k = lyra_yamldoc_node(LYRA_YNODE_SCALAR, "k", true, 0, 0);
    assert_int_equal(lyra_yamldoc_map_insert(m, 0, k, v), 0);
    const char *comments[] = {"file: /tmp/odd\nname: \xff.yaml"};
    char *out = lyra_yamldoc_emit(m, comments, 1);
    assert_non_null(out);
    assert_string_equal(out, "# file: /tmp/odd?name: ?.yaml\n"
                             "k: \"caf?!\"  # help?not: yaml\n");
    struct lyra_ynode *back = parse_ok(out);
    assert_int_equal(lyra_yamldoc_pairs(back), 1);
    assert_string_equal(lyra_yamldoc_map_get(back, "k")->text, "caf?!");
    free(out);
    lyra_yamldoc_free(back);
    lyra_yamldoc_free(m);

    char *only = lyra_yamldoc_emit(NULL, NULL, 0);
    assert_string_equal(only, "");
    free(only);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_node_has_its_position),
        cmocka_unit_test(test_empty_and_null_documents_have_no_root),
        cmocka_unit_test(test_refused_features_have_positions),
        cmocka_unit_test(test_nesting_is_bounded),
        cmocka_unit_test(test_map_operations),
        cmocka_unit_test(test_scalar_helpers),
        cmocka_unit_test(test_emit_reads_back_the_same),
        cmocka_unit_test(test_emit_comments_and_bad_bytes_stay_yaml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
