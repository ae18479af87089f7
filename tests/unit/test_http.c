/* test_http.c — the HTTP layer in-process with its own route table. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "http/http.h"

static void h_item(struct lyra_http_req *req, void *ctx)
{
    lyra_http_send_json(req, 200, json_pack("{s:s, s:s}", "kind", lyra_http_param(req, "kind"), "id",
                                            lyra_http_param(req, "id")));
}

static const struct lyra_route routes[] = {
    {"GET", "/items/{kind}/{id}", h_item, ""},
};

static struct lyra_http *http;

static int setup(void **state)
{
    struct lyra_http_options opts = {.host = "127.0.0.1", .port = 0, .threads = 2, .max_body_bytes = 1024,
                                     .max_header_bytes = 8192, .idle_timeout_s = 10, .max_connections = 64};
    struct lyra_err err = {0};
    http = lyra_http_new(&opts, routes, sizeof routes / sizeof *routes, NULL, &err);
    if (!http || lyra_http_start(http, &err) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    lyra_http_free(http);
    return 0;
}

static void test_route_params(void **state)
{
    struct it_response r;
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model/tiny", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"kind\":\"model\""));
    assert_non_null(strstr(r.body, "\"id\":\"tiny\""));
    it_response_free(&r);
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
    assert_int_equal(it_http(lyra_http_port(http), "GET", "/items/model/tiny/extra", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    it_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_params),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
