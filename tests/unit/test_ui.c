/* test_ui.c — the embedded dashboard's table and the If-None-Match rule
 * (api/ui.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "api/ui.h"

static void test_assets_embedded(void **state)
{
    const struct lyra_ui_asset *index = lyra_ui_find("index.html");
    assert_non_null(index);
    assert_string_equal(index->content_type, "text/html; charset=utf-8");
    assert_true(index->len > 100);
    assert_int_equal(index->data[index->len], 0); /* NUL after the bytes */
    assert_non_null(strstr((const char *)index->data, "/ui/app.js"));
    const struct lyra_ui_asset *js = lyra_ui_find("app.js");
    assert_non_null(js);
    assert_string_equal(js->content_type, "text/javascript; charset=utf-8");
    assert_string_equal(lyra_ui_find("app.css")->content_type, "text/css; charset=utf-8");
    /* Tags are quoted, 16 hex digits, and differ between files. */
    assert_int_equal(strlen(js->etag), 18);
    assert_true(js->etag[0] == '"' && js->etag[17] == '"');
    assert_string_not_equal(js->etag, index->etag);
    assert_null(lyra_ui_find(""));
    assert_null(lyra_ui_find("../index.html"));
    assert_null(lyra_ui_find("INDEX.HTML"));
    assert_null(lyra_ui_find(NULL));
    /* Every file a module imports is embedded. */
    for (size_t i = 0; i < lyra_ui_n_assets; i++) {
        const char *p = (const char *)lyra_ui_assets[i].data;
        while ((p = strstr(p, "from './")) != NULL) {
            p += 8;
            const char *end = strchr(p, '\'');
            assert_non_null(end);
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(end - p), p);
            if (!lyra_ui_find(name))
                fail_msg("%s imports %s, which is not embedded", lyra_ui_assets[i].path, name);
        }
    }
}

static void test_etag_match(void **state)
{
    const char *tag = "\"0123456789abcdef\"";
    assert_true(lyra_ui_etag_matches("\"0123456789abcdef\"", tag));
    assert_true(lyra_ui_etag_matches("W/\"0123456789abcdef\"", tag));
    assert_true(lyra_ui_etag_matches("\"x\", \"0123456789abcdef\"", tag));
    assert_true(lyra_ui_etag_matches("\"x\",\"0123456789abcdef\" ", tag));
    assert_true(lyra_ui_etag_matches("*", tag));
    assert_false(lyra_ui_etag_matches("\"0123456789abcde\"", tag));
    assert_false(lyra_ui_etag_matches("\"0123456789abcdef0\"", tag));
    assert_false(lyra_ui_etag_matches("0123456789abcdef", tag));
    assert_false(lyra_ui_etag_matches("", tag));
    assert_false(lyra_ui_etag_matches(NULL, tag));
    assert_false(lyra_ui_etag_matches(",,, ", tag));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_assets_embedded),
        cmocka_unit_test(test_etag_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
