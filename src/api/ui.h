/* ui.h — the web dashboard (src/web/, served at /ui).  Its files are
 * embedded into the binary at build time (tools/webembed.c writes
 * lyra_ui_assets[] into build/generated/ui_assets.c), so the daemon needs
 * no files on disk and no network to serve it.
 *
 * Routes are public (permission ""): the page holds no data; every API call
 * it makes carries the user's key.
 *
 * Thread-safety: the table is constant; the handlers keep no state. */
#ifndef LYRA_UI_H
#define LYRA_UI_H

#include <stdbool.h>
#include <stddef.h>

#include "http/http.h"

struct lyra_ui_asset {
    const char *path;          /* "index.html", "app.js": served as /ui/PATH */
    const unsigned char *data; /* len bytes (plus a NUL not counted) */
    size_t len;
    const char *content_type;
    const char *etag;          /* quoted strong tag: "\"0123456789abcdef\"" */
};

extern const struct lyra_ui_asset lyra_ui_assets[];
extern const size_t lyra_ui_n_assets;

/* The asset named `path` (no leading slash), or NULL. */
const struct lyra_ui_asset *lyra_ui_find(const char *path);

/* True when an If-None-Match header value (a list of tags, W/ prefixes
 * allowed, or "*") matches `etag`. */
bool lyra_ui_etag_matches(const char *if_none_match, const char *etag);

/* GET /ui and GET /ui/: index.html.  GET /ui/{file}: that file, 404
 * not_found otherwise.  Each answer has Content-Type, ETag,
 * Cache-Control: no-cache (revalidated, answered 304 with no body when
 * If-None-Match matches), and the dashboard's Content-Security-Policy. */
void lyra_api_ui_index(struct lyra_http_req *req, void *ctx);
void lyra_api_ui_file(struct lyra_http_req *req, void *ctx);

#endif
