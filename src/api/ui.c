/* ui.c — serves the embedded dashboard (api/ui.h). */
#include "api/ui.h"

#include <stdlib.h>
#include <string.h>

/* No inline script or style, nothing from another origin; the page talks
 * only to this daemon (fetch, and the event WebSocket on ws:/wss:) and may
 * not be framed. */
#define UI_CSP                                                                                          \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "                   \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "             \
    "frame-ancestors 'none'"

const struct lyra_ui_asset *lyra_ui_find(const char *path)
{
    if (!path)
        return NULL;
    for (size_t i = 0; i < lyra_ui_n_assets; i++)
        if (strcmp(lyra_ui_assets[i].path, path) == 0)
            return &lyra_ui_assets[i];
    return NULL;
}

bool lyra_ui_etag_matches(const char *inm, const char *etag)
{
    if (!inm || !etag)
        return false;
    size_t elen = strlen(etag);
    const char *p = inm;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0) /* weak comparison, as for GET (RFC 9110 13.1.2) */
            p += 2;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - p) == elen && memcmp(p, etag, elen) == 0)
            return true;
        p = end;
    }
    return false;
}

static void serve(struct lyra_http_req *req, const struct lyra_ui_asset *a)
{
    if (!a) {
        lyra_http_send_error(req, 404, "not_found", "no such file in the dashboard");
        return;
    }
    /* Revalidated on every load (the names carry no hash), so a new
     * daemon's dashboard is never mixed with an old cached one; the ETag
     * makes the revalidation a bodiless 304. */
    lyra_http_add_header(req, "Cache-Control", "no-cache");
    lyra_http_add_header(req, "ETag", a->etag);
    lyra_http_add_header(req, "Content-Security-Policy", UI_CSP);
    if (lyra_ui_etag_matches(lyra_http_header(req, "If-None-Match"), a->etag)) {
        lyra_http_send(req, 304, NULL, NULL, 0);
        return;
    }
    char *body = malloc(a->len ? a->len : 1);
    if (!body) {
        lyra_http_send_error(req, 500, "internal", "out of memory");
        return;
    }
    memcpy(body, a->data, a->len);
    lyra_http_send(req, 200, a->content_type, body, a->len);
}

void lyra_api_ui_index(struct lyra_http_req *req, void *ctx)
{
    (void)ctx;
    serve(req, lyra_ui_find("index.html"));
}

void lyra_api_ui_file(struct lyra_http_req *req, void *ctx)
{
    (void)ctx;
    serve(req, lyra_ui_find(lyra_http_param(req, "file")));
}
