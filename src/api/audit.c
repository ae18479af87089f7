/* audit.c — the audit log and model file deletion over HTTP:
 *   GET /audit               rows of the audit log, newest first (audit.read);
 *                            ?principal= ?action= (exact, or a prefix ending
 *                            in '*') ?result= ?client= ?since= ?until= (ms
 *                            since the epoch or RFC 3339) ?before_id= (paging)
 *                            ?limit= (1..1000, default 100)
 *   DELETE /models/{name}    deletes a model's file from models.dir
 *                            (models.delete).
 *
 * Deletion acts only inside models.dir: the file's directory, resolved with
 * realpath(), must be models.dir (resolved) or below it, and the file is
 * removed by name relative to that opened directory, never through a
 * symlink: a model file that is a symlink loses the link, its target is not
 * touched.  A loaded model is unloaded first when idle; one that is busy or
 * pinned answers 409 model_busy and nothing changes. */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/authz.h"
#include "api/server.h"
#include "core/log.h"
#include "core/util.h"

/* ---- GET /audit ---------------------------------------------------------- */

/* Parses "2026-11-27T14:00:00Z", with optional fractional seconds and a
 * "+HH:MM"/"-HH:MM" offset instead of Z ('t', 'z' and ' ' accepted as RFC
 * 3339 allows).  0 and *ms, or -1. */
static int parse_rfc3339(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
        return -1;
    s += n;
    if (*s != 'T' && *s != 't' && *s != ' ')
        return -1;
    s++;
    n = 0;
    if (sscanf(s, "%2d:%2d:%2d%n", &h, &mi, &sec, &n) != 3 || n != 8)
        return -1;
    s += n;
    int64_t frac_ms = 0;
    if (*s == '.') {
        s++;
        int digits = 0;
        int64_t scale = 100;
        while (*s >= '0' && *s <= '9') {
            if (digits < 3) {
                frac_ms += (*s - '0') * scale;
                scale /= 10;
            }
            digits++;
            s++;
        }
        if (digits == 0)
            return -1;
    }
    int64_t offset_s = 0;
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        int oh, om;
        n = 0;
        if (sscanf(s + 1, "%2d:%2d%n", &oh, &om, &n) != 2 || n != 5 || oh > 23 || om > 59)
            return -1;
        offset_s = (oh * 3600 + om * 60) * (*s == '-' ? -1 : 1);
        s += 6;
    } else {
        return -1;
    }
    if (*s || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || y < 1970)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) /* 2026-02-30 normalises to March */
        return -1;
    *ms = ((int64_t)t - offset_s) * 1000 + frac_ms;
    return *ms >= 0 ? 0 : -1;
}

/* A time parameter: digits (ms since the epoch) or RFC 3339. */
static int parse_time(const char *s, int64_t *ms)
{
    uint64_t v;
    if (lyra_parse_u64(s, &v) == 0) {
        if (v > (uint64_t)INT64_MAX)
            return -1;
        *ms = (int64_t)v;
        return 0;
    }
    return parse_rfc3339(s, ms);
}

static void bad_param(struct lyra_http_req *req, const char *name, const char *want, const char *got)
{
    lyra_http_send_error(req, 400, "invalid_parameter", "%s must be %s (got '%.*s')", name, want,
                         (int)lyra_utf8_clip(got, 64), got);
}

void lyra_api_audit_list(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    if (!srv->audit) {
        lyra_http_send_error(req, 503, "unavailable", "the audit log is not open");
        return;
    }
    struct lyra_audit_filter f = {
        .principal = lyra_http_query(req, "principal"),
        .action = lyra_http_query(req, "action"),
        .result = lyra_http_query(req, "result"),
        .client = lyra_http_query(req, "client"),
    };
    const char *v;
    if ((v = lyra_http_query(req, "since")) && parse_time(v, &f.since_ms) < 0)
        return bad_param(req, "since", "milliseconds since the epoch or an RFC 3339 time", v);
    if ((v = lyra_http_query(req, "until")) && parse_time(v, &f.until_ms) < 0)
        return bad_param(req, "until", "milliseconds since the epoch or an RFC 3339 time", v);
    uint64_t n;
    if ((v = lyra_http_query(req, "before_id"))) {
        if (lyra_parse_u64(v, &n) < 0 || n == 0 || n > (uint64_t)INT64_MAX)
            return bad_param(req, "before_id", "a positive row id", v);
        f.before_id = (int64_t)n;
    }
    if ((v = lyra_http_query(req, "limit"))) {
        if (lyra_parse_u64(v, &n) < 0 || n < 1 || n > 1000)
            return bad_param(req, "limit", "1..1000", v);
        f.limit = (int)n;
    }
    json_t *out = NULL;
    struct lyra_err err = {0};
    int rc = lyra_audit_query(srv->audit, &f, &out, &err);
    if (rc == LYRA_EINVAL)
        lyra_http_send_error(req, 400, "invalid_parameter", "%s", err.msg);
    else if (rc < 0)
        lyra_http_send_error(req, lyra_err_http_status(rc), "audit_unavailable", "%s", err.msg);
    else
        lyra_http_send_json(req, 200, out);
}

/* ---- DELETE /models/{name} ----------------------------------------------- */

/* True when `path` (resolved) is `dir` (resolved) or inside it. */
static bool inside(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    if (strncmp(dir, path, n) != 0)
        return false;
    return path[n] == '\0' || path[n] == '/' || (n == 1 && dir[0] == '/');
}

/* A refusal of lyra_server_delete_model: status, code and message. */
static int refuse(struct lyra_model_delete *d, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(struct lyra_model_delete *d, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(d->msg, sizeof d->msg, fmt, ap);
    va_end(ap);
    d->status = status;
    d->code = code;
    return -1;
}

/* Unlinks the model file m->path if it lies in models.dir.  0, or -1 with
 * d filled. */
static int remove_file(struct lyra_server *srv, const struct lyra_model *m, struct lyra_model_delete *d)
{
    char dir_real[PATH_MAX], parent_real[PATH_MAX];
    const char *models_dir = lyra_registry_dir(srv->registry);
    if (!realpath(models_dir, dir_real))
        return refuse(d, 500, "internal", "models dir %s: %s", models_dir, strerror(errno));
    /* The file's own name, and the directory it is in. */
    char *copy = strdup(m->path);
    if (!copy)
        return refuse(d, 500, "internal", "out of memory");
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    const char *parent = slash ? (slash == copy ? "/" : copy) : ".";
    if (slash)
        *slash = '\0';
    int rc = -1;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        refuse(d, 409, "model_outside_dir", "model '%s' has no file to delete", m->name);
        goto out;
    }
    if (!realpath(parent, parent_real) || !inside(dir_real, parent_real)) {
        refuse(d, 409, "model_outside_dir", "model '%s': its file is not inside the models directory %s; delete it there",
               m->name, models_dir);
        goto out;
    }
    int dfd = open(parent_real, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        refuse(d, 500, "internal", "models dir: %s", strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        refuse(d, errno == ENOENT ? 404 : 500, errno == ENOENT ? "model_not_found" : "internal", "model '%s': %s",
               m->name, strerror(errno));
    else if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        refuse(d, 409, "model_outside_dir", "model '%s': not a regular file", m->name);
    else if (unlinkat(dfd, base, 0) < 0)
        refuse(d, 500, "delete_failed", "cannot delete model '%s': %s", m->name, strerror(errno));
    else
        rc = 0;
    close(dfd);
out:
    free(copy);
    return rc;
}

int lyra_server_delete_model(struct lyra_server *srv, const struct lyra_model *m, struct lyra_model_delete *d)
{
    d->was_loaded = false;
    if (m->from_config)
        return refuse(d, 409, "model_in_config",
                      "model '%s' is an entry of models.entries in the configuration: remove it there", m->name);
    json_t *info = lyra_manager_model_info(srv->manager, m->name);
    bool pinned = json_is_true(json_object_get(info, "pinned"));
    json_int_t in_flight = json_integer_value(json_object_get(info, "in_flight"));
    json_decref(info);
    if (pinned)
        return refuse(d, 409, "model_busy", "model '%s' is pinned: unpin it first", m->name);
    if (in_flight > 0)
        return refuse(d, 409, "model_busy", "model '%s' is serving %lld requests", m->name, (long long)in_flight);
    if (lyra_manager_model_state(srv->manager, m->name)) {
        int rc = lyra_manager_unload(srv->manager, m->name, false, srv->cfg->models.stop_timeout_s * 3000 + 1000,
                                     &d->was_loaded);
        if (rc == LYRA_EBUSY || rc == LYRA_EPERM || rc == LYRA_ETIMEOUT)
            return refuse(d, 409, "model_busy", "model '%s' is %s", m->name,
                          rc == LYRA_EPERM   ? "pinned: unpin it first"
                          : rc == LYRA_EBUSY ? "busy: it unloads when its requests end"
                                             : "still stopping");
        if (rc < 0)
            return refuse(d, 503, "shutting_down", "the server is shutting down");
    }
    if (remove_file(srv, m, d) < 0)
        return -1;
    lyra_log(LYRA_LOG_INFO, "models", NULL, NULL, "deleted model %s (%s)", m->name, m->path);
    struct lyra_err err = {0};
    if (lyra_registry_refresh(srv->registry, NULL, &err) < 0)
        lyra_log(LYRA_LOG_WARN, "models", NULL, NULL, "models dir: %s", err.msg);
    lyra_bus_publish(srv->bus, "model.deleted", "models", json_pack("{s:s}", "model", m->name));
    return 0;
}

void lyra_api_models_delete(struct lyra_http_req *req, void *ctx)
{
    struct lyra_server *srv = ctx;
    struct lyra_err err = {0};
    if (lyra_registry_refresh(srv->registry, NULL, &err) < 0)
        lyra_log(LYRA_LOG_WARN, "models", NULL, NULL, "models dir: %s", err.msg);
    const char *name = lyra_http_param(req, "name");
    const struct lyra_model *m = lyra_registry_lookup(srv->registry, name);
    if (!m) {
        lyra_http_send_error(req, 404, "model_not_found", "model '%.*s' not found",
                             (int)lyra_utf8_clip(name, 128), name);
        return;
    }
    struct lyra_model_delete d;
    if (lyra_authz_require(req, srv, "models.delete", m->name)) {
        if (lyra_server_delete_model(srv, m, &d) < 0)
            lyra_http_send_error(req, d.status, d.code, "%s", d.msg);
        else
            lyra_http_send_json(req, 200, json_pack("{s:s,s:b,s:b}", "model", m->name, "deleted", 1, "was_loaded",
                                                    d.was_loaded));
    }
    lyra_registry_unref(m);
}
