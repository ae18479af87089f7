/* pull.c — the "pull" job type (see pull.h): a download or copy into
 * models.dir/.partial, resumable by Range, checked (space, sha256, GGUF),
 * then renamed into place.
 *
 * A transfer is one curl easy handle per attempt, driven by three
 * callbacks: the header callback keeps the last response's status,
 * Content-Length, Content-Range and validators (redirects reset them); the
 * write callback decides on the first body byte whether the partial is
 * continued (206 starting where it ends) or restarted (200), checks the
 * free space for what is still to come, then appends and hashes; the
 * progress callback reports progress and turns a cancellation into an
 * abort.  The partial's bytes are made durable (fdatasync) before each
 * checkpoint of the resume state, so a saved byte count never exceeds what
 * survives a crash. */
#include "jobs/pull.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

#include "core/log.h"
#include "core/util.h"
#include "models/gguf.h"
#include "models/registry.h"

#define CHECKPOINT_BYTES (8u << 20) /* resume state saved at least this often */
#define CHECKPOINT_MS 1000          /* ... and at least once a second while bytes come in */
#define LOW_SPEED_BYTES 1024        /* per second, below which a transfer stalls */
#define MAX_ATTEMPTS_TOTAL 100      /* retries in all, progress or not */
#define SPACE_STEP (4u << 20)       /* a body of unknown size: the space is checked this often */

/* ---- params and names -------------------------------------------------- */

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static bool is_url(const char *s)
{
    return has_prefix(s, "http://") || has_prefix(s, "https://");
}

/* NAME's rules (pull.h).  Returns NULL when fine, else why not. */
static const char *name_problem(const char *name, size_t len)
{
    if (len == 0)
        return "is empty";
    if (len > LYRA_PULL_NAME_MAX)
        return "is longer than 128 bytes";
    if (name[0] == '.')
        return "starts with '.'";
    if (!lyra_utf8_valid(name, len))
        return "is not valid UTF-8";
    for (size_t i = 0; i < len; i++) {
        if (name[i] == '/')
            return "contains '/'";
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return "contains a control character";
    }
    return NULL;
}

int lyra_pull_default_name(const char *source, char *out, size_t cap)
{
    size_t end = strlen(source), floor = 0;
    if (is_url(source)) {
        /* The file name is the path's last segment: never the host. */
        end = strcspn(source, "?#");
        const char *host = strstr(source, "://") + 3;
        const char *slash = memchr(host, '/', end - (size_t)(host - source));
        if (!slash)
            return LYRA_EINVAL;
        floor = (size_t)(slash - source) + 1;
    } else if (has_prefix(source, "hf://")) {
        floor = 5;
    } else {
        while (end > 0 && source[end - 1] == '/')
            end--; /* a local "dir/file/" names the file */
    }
    size_t start = end;
    while (start > floor && source[start - 1] != '/')
        start--;
    size_t len = end - start;
    if (len > 5 && strncasecmp(source + end - 5, ".gguf", 5) == 0)
        len -= 5;
    if (len == 0 || len >= cap || name_problem(source + start, len))
        return LYRA_EINVAL;
    memcpy(out, source + start, len);
    out[len] = '\0';
    return 0;
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (size_t i = 0; i < 64; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Validates params and fills name (cap LYRA_PULL_NAME_MAX + 1). */
static int check_params(const struct lyra_pull_options *o, const json_t *params, char *name,
                        struct lyra_err *err)
{
    if (!json_is_object(params))
        return lyra_err_set(err, LYRA_EINVAL, "pull params must be an object {source, name?, sha256?}");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)params, key, v)
    {
        if (strcmp(key, "source") != 0 && strcmp(key, "name") != 0 && strcmp(key, "sha256") != 0) {
            char k[64];
            memcpy(k, key, lyra_utf8_clip(key, sizeof k - 1));
            k[lyra_utf8_clip(key, sizeof k - 1)] = '\0';
            return lyra_err_set(err, LYRA_EINVAL, "unknown field '%s' (expected source, name, sha256)", k);
        }
    }
    json_t *src = json_object_get(params, "source");
    if (!json_is_string(src) || json_string_length(src) == 0 ||
        strlen(json_string_value(src)) != json_string_length(src))
        return lyra_err_set(err, LYRA_EINVAL,
                            "'source' must be a non-empty string (URL, hf://ORG/REPO/FILE.gguf "
                            "or a local path)");
    const char *source = json_string_value(src);
    json_t *jn = json_object_get(params, "name");
    if (jn && !json_is_null(jn)) {
        if (!json_is_string(jn))
            return lyra_err_set(err, LYRA_EINVAL, "'name' must be a string");
        const char *why = name_problem(json_string_value(jn), json_string_length(jn));
        if (!why && strlen(json_string_value(jn)) != json_string_length(jn))
            why = "contains a NUL byte";
        if (why)
            return lyra_err_set(err, LYRA_EINVAL, "'name' %s", why);
        strcpy(name, json_string_value(jn));
    } else if (lyra_pull_default_name(source, name, LYRA_PULL_NAME_MAX + 1) < 0) {
        return lyra_err_set(err, LYRA_EINVAL,
                            "cannot take a model name from the source's file name: give 'name' "
                            "(no '/', no leading '.', at most 128 bytes)");
    }
    json_t *sh = json_object_get(params, "sha256");
    if (sh && !json_is_null(sh) && (!json_is_string(sh) || !is_hex64(json_string_value(sh))))
        return lyra_err_set(err, LYRA_EINVAL, "'sha256' must be 64 hexadecimal digits");
    if (has_prefix(source, "hf://")) {
        char *url = NULL;
        int rc = lyra_pull_resolve(source, "http://x", &url, err);
        free(url);
        if (rc < 0)
            return rc;
    }
    if (o && o->models_dir) {
        char file[LYRA_PULL_NAME_MAX + 8];
        snprintf(file, sizeof file, "%s.gguf", name);
        char *target = lyra_path_join(o->models_dir, file);
        if (!target)
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        struct stat st;
        bool exists = lstat(target, &st) == 0;
        free(target);
        if (exists)
            return lyra_err_set(err, LYRA_EEXISTS, "a model file %s.gguf is already in the models directory",
                                name);
    }
    return 0;
}

int lyra_pull_check_params(const struct lyra_pull_options *o, const json_t *params, struct lyra_err *err)
{
    char name[LYRA_PULL_NAME_MAX + 1];
    return check_params(o, params, name, err);
}

static const char *hf_endpoint(const char *given)
{
    if (given && *given)
        return given;
    const char *env = getenv("LYRA_HF_ENDPOINT");
    return env && *env ? env : LYRA_PULL_HF_ENDPOINT;
}

int lyra_pull_resolve(const char *source, const char *endpoint, char **url, struct lyra_err *err)
{
    *url = NULL;
    if (is_url(source)) {
        if (!(*url = strdup(source)))
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        return 0;
    }
    if (!has_prefix(source, "hf://"))
        return 0; /* a local path */
    const char *path = source + 5;
    /* ORG/REPO/FILE...: three non-empty segments at least, none "." or "..". */
    int segs = 0;
    size_t org_repo_end = 0;
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return lyra_err_set(err, LYRA_EINVAL, "'source' hf:// must be hf://ORG/REPO/FILE.gguf");
        if (++segs == 2)
            org_repo_end = (size_t)(p + n - path);
        p += n;
        if (*p == '/')
            p++;
        if (*p == '\0' && p[-1] == '/')
            return lyra_err_set(err, LYRA_EINVAL, "'source' hf:// must be hf://ORG/REPO/FILE.gguf");
    }
    if (segs < 3)
        return lyra_err_set(err, LYRA_EINVAL, "'source' hf:// must be hf://ORG/REPO/FILE.gguf");
    const char *ep = hf_endpoint(endpoint);
    size_t eplen = strlen(ep);
    while (eplen > 0 && ep[eplen - 1] == '/')
        eplen--;
    size_t cap = eplen + strlen(path) * 3 + 32;
    char *u = malloc(cap), *w = u;
    if (!u)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    w += sprintf(w, "%.*s/%.*s/resolve/main/", (int)eplen, ep, (int)org_repo_end, path);
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *s = (const unsigned char *)path + org_repo_end + 1; *s; s++) {
        if (isalnum(*s) || strchr("-._~/", *s)) {
            *w++ = (char)*s;
        } else {
            *w++ = '%';
            *w++ = hex[*s >> 4];
            *w++ = hex[*s & 15];
        }
    }
    *w = '\0';
    *url = u;
    return 0;
}

/* ---- the partial file ---------------------------------------------------- */

struct pull {
    const struct lyra_pull_options *o;
    struct lyra_job_ctx *ctx;
    const char *source, *url; /* url NULL for a local copy */
    char name[LYRA_PULL_NAME_MAX + 1];
    char *target, *partdir, *part, *side;
    int fd;
    crypto_hash_sha256_state sha;
    uint64_t written;      /* bytes in the partial, all hashed */
    uint64_t total;        /* the whole file's size; 0 unknown */
    uint64_t saved;        /* bytes at the last checkpoint */
    int64_t saved_ms;      /* when it was taken (monotonic) */
    uint64_t resumed_from; /* bytes of an earlier run that were kept */
    char etag[256], last_modified[128];

    /* Per attempt (reset by attempt()). */
    uint64_t base; /* bytes in the partial when the request went out */
    bool started;  /* the first body byte of the final response came */
    long status;
    bool have_cl, have_range;
    uint64_t cl, range_start, range_total;
    char r_etag[256], r_last_modified[128];
    int write_errno;
    int refuse_code;
    char refuse_msg[LYRA_ERR_MSG_MAX];
    bool cancelled;
    bool restart; /* the answer does not continue the partial: start again from zero */
    uint64_t space_next; /* unknown size: check the space again when written reaches it */
};

static int restart_from_zero(struct pull *p)
{
    if (ftruncate(p->fd, 0) < 0 || lseek(p->fd, 0, SEEK_SET) < 0)
        return -errno;
    crypto_hash_sha256_init(&p->sha);
    p->written = p->saved = p->resumed_from = 0;
    p->etag[0] = p->last_modified[0] = '\0';
    return 0;
}

/* Persists where the partial stands: data made durable first, then the
 * state handed to the scheduler and written beside the partial (for a new
 * pull of the same source). */
static void checkpoint(struct pull *p)
{
    if (!p->url || p->fd < 0)
        return;
    p->saved_ms = lyra_now_ms();
    if (fdatasync(p->fd) < 0)
        return; /* not durable: keep the older, smaller checkpoint */
    json_t *st =
        json_pack("{s:s, s:I, s:s, s:s, s:s, s:s}", "path", p->part, "bytes", (json_int_t)p->written, "url",
                  p->url, "source", p->source, "etag", p->etag, "last_modified", p->last_modified);
    if (!st)
        return;
    p->ctx->save_resume(p->ctx, st);
    char *text = json_dumps(st, JSON_COMPACT);
    if (text) {
        int rc = lyra_write_file_atomic(p->side, text, strlen(text), 0600);
        if (rc < 0)
            lyra_log(LYRA_LOG_WARN, "pull", p->ctx->id, NULL, "cannot write %s: %s", p->side, strerror(-rc));
        free(text);
    }
    json_decref(st);
    p->saved = p->written;
}

/* Resume state from the scheduler, else from the sidecar, when it is for
 * the same URL; the partial is cut to the saved size and that prefix is
 * hashed.  Anything else starts from zero. */
static int load_resume(struct pull *p)
{
    json_t *st = p->ctx->resume ? json_incref((json_t *)p->ctx->resume) : NULL;
    if (!st) {
        size_t len;
        char *text = lyra_read_file(p->side, &len);
        if (text)
            st = json_loadb(text, len, 0, NULL);
        free(text);
    }
    struct stat fst;
    json_t *bytes = json_object_get(st, "bytes");
    const char *surl = json_string_value(json_object_get(st, "url"));
    bool usable = st && surl && strcmp(surl, p->url) == 0 && json_is_integer(bytes) &&
                  json_integer_value(bytes) > 0 && fstat(p->fd, &fst) == 0 &&
                  (uint64_t)json_integer_value(bytes) <= (uint64_t)fst.st_size;
    if (!usable) {
        json_decref(st);
        return restart_from_zero(p);
    }
    uint64_t n = (uint64_t)json_integer_value(bytes);
    snprintf(p->etag, sizeof p->etag, "%s", json_string_value(json_object_get(st, "etag")) ?: "");
    snprintf(p->last_modified, sizeof p->last_modified, "%s",
             json_string_value(json_object_get(st, "last_modified")) ?: "");
    json_decref(st);
    if (ftruncate(p->fd, (off_t)n) < 0)
        return -errno;
    crypto_hash_sha256_init(&p->sha);
    unsigned char *chunk = malloc(1 << 20);
    if (!chunk)
        return -ENOMEM;
    uint64_t done = 0;
    while (done < n) {
        size_t want = n - done < (1u << 20) ? (size_t)(n - done) : (1u << 20);
        ssize_t r = pread(p->fd, chunk, want, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(chunk);
            return -e;
        }
        crypto_hash_sha256_update(&p->sha, chunk, (size_t)r);
        done += (uint64_t)r;
    }
    free(chunk);
    if (lseek(p->fd, (off_t)n, SEEK_SET) < 0)
        return -errno;
    p->written = p->saved = p->resumed_from = n;
    return 0;
}

/* 0 when `more` bytes fit in models.dir with the reserve left, else
 * LYRA_ETOOBIG with the numbers. */
static int check_space(const struct pull *p, uint64_t more, struct lyra_err *err)
{
    struct statvfs vfs;
    if (statvfs(p->partdir, &vfs) < 0)
        return 0; /* cannot tell: the write will say */
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    uint64_t size = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    uint64_t reserve = p->o->min_free_bytes;
    if (reserve == 0) {
        reserve = size / 20;
        if (reserve < (1ull << 30))
            reserve = 1ull << 30;
    }
    if (more + reserve <= avail)
        return 0;
    return lyra_err_set(err, LYRA_ETOOBIG,
                        "not enough disk space in %s: %llu MiB more to write, %llu MiB free, %llu MiB must "
                        "stay free",
                        p->o->models_dir, (unsigned long long)(more >> 20), (unsigned long long)(avail >> 20),
                        (unsigned long long)(reserve >> 20));
}

/* Appends and hashes; false with write_errno set on failure. */
static bool append(struct pull *p, const void *data, size_t n)
{
    const char *c = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(p->fd, c, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            p->write_errno = w < 0 ? errno : EIO;
            /* What went out partly is not in the count: cut it off so the
             * partial is exactly `written` bytes. */
            if (ftruncate(p->fd, (off_t)p->written) == 0)
                (void)lseek(p->fd, (off_t)p->written, SEEK_SET);
            return false;
        }
        c += w;
        left -= (size_t)w;
    }
    crypto_hash_sha256_update(&p->sha, data, n);
    p->written += n;
    /* A crash loses at most a second of a slow download, or 8 MiB of a
     * fast one. */
    if (p->written - p->saved >= CHECKPOINT_BYTES || lyra_now_ms() - p->saved_ms >= CHECKPOINT_MS)
        checkpoint(p);
    return true;
}

/* ---- curl callbacks ------------------------------------------------------ */

static void header_value(const char *line, size_t len, size_t name_len, char *out, size_t cap)
{
    const char *v = line + name_len;
    size_t n = len - name_len;
    while (n > 0 && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
        n--;
    if (n >= cap)
        n = 0; /* an oversized validator is as good as none */
    memcpy(out, v, n);
    out[n] = '\0';
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    struct pull *p = ud;
    size_t len = size * nitems;
    char v[256];
    if (len > 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a redirect or a 100): forget the last one's. */
        const char *sp = memchr(line, ' ', len);
        p->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        p->have_cl = p->have_range = false;
        p->r_etag[0] = p->r_last_modified[0] = '\0';
    } else if (len > 15 && strncasecmp(line, "content-length:", 15) == 0) {
        header_value(line, len, 15, v, sizeof v);
        char *end;
        unsigned long long n = strtoull(v, &end, 10);
        p->have_cl = end != v && *end == '\0';
        p->cl = n;
    } else if (len > 14 && strncasecmp(line, "content-range:", 14) == 0) {
        header_value(line, len, 14, v, sizeof v);
        unsigned long long a, b, t;
        if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &t) == 3 && b >= a && t > b) {
            p->have_range = true;
            p->range_start = a;
            p->range_total = t;
        }
    } else if (len > 5 && strncasecmp(line, "etag:", 5) == 0) {
        header_value(line, len, 5, p->r_etag, sizeof p->r_etag);
    } else if (len > 14 && strncasecmp(line, "last-modified:", 14) == 0) {
        header_value(line, len, 14, p->r_last_modified, sizeof p->r_last_modified);
    }
    return len;
}

/* The first body byte of the final response: continue or restart, and
 * check the space.  False refuses the transfer. */
static bool on_first_byte(struct pull *p)
{
    p->started = true;
    struct lyra_err e = {0};
    if (p->status == 206) {
        if (!p->have_range || p->range_start != p->base) {
            /* A range we did not ask for: do not splice it in. */
            p->restart = true;
            return false;
        }
        p->total = p->range_total;
    } else {
        if (p->written > 0) {
            lyra_log(LYRA_LOG_INFO, "pull", p->ctx->id, NULL,
                     "%s answered %ld to a Range request: downloading again from zero", p->url, p->status);
            int rc = restart_from_zero(p);
            if (rc < 0) {
                p->write_errno = -rc;
                return false;
            }
        }
        p->total = p->have_cl ? p->cl : 0;
        snprintf(p->etag, sizeof p->etag, "%s", p->r_etag[0] == 'W' ? "" : p->r_etag); /* weak: no If-Range */
        snprintf(p->last_modified, sizeof p->last_modified, "%s", p->r_last_modified);
    }
    if (p->total > 0 && p->total >= p->written) {
        int rc = check_space(p, p->total - p->written, &e);
        if (rc < 0) {
            p->refuse_code = rc;
            snprintf(p->refuse_msg, sizeof p->refuse_msg, "%s", e.msg);
            return false;
        }
    }
    p->ctx->progress(p->ctx, p->written, p->total);
    return true;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    struct pull *p = ud;
    size_t n = size * nmemb;
    if (!p->started && !on_first_byte(p))
        return 0;
    if (p->ctx->cancelled(p->ctx)) {
        p->cancelled = true;
        return 0;
    }
    /* Without a size (no Content-Length, or more than it said) nothing was
     * checked up front: check as the bytes come, so that an endless answer
     * stops at the reserve instead of filling the disk. */
    if ((p->total == 0 || p->written + n > p->total) && p->written + n > p->space_next) {
        struct lyra_err e = {0};
        int rc = check_space(p, SPACE_STEP, &e);
        if (rc < 0) {
            p->refuse_code = rc;
            snprintf(p->refuse_msg, sizeof p->refuse_msg, "%s", e.msg);
            return 0;
        }
        p->space_next = p->written + n + SPACE_STEP;
    }
    return append(p, data, n) ? n : 0;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    struct pull *p = ud;
    if (p->ctx->cancelled(p->ctx)) {
        p->cancelled = true;
        return 1;
    }
    if (p->started)
        p->ctx->progress(p->ctx, p->written, p->total);
    return 0;
}

/* ---- one transfer -------------------------------------------------------- */

enum outcome { DONE, RETRY, FAILED, CANCELLED };

static enum outcome attempt(struct pull *p, struct lyra_err *err)
{
    p->base = p->written;
    p->started = p->have_cl = p->have_range = p->cancelled = p->restart = false;
    p->status = 0;
    p->space_next = 0;
    p->write_errno = p->refuse_code = 0;
    CURL *h = curl_easy_init();
    if (!h) {
        lyra_err_set(err, LYRA_ENOMEM, "cannot start a transfer (curl_easy_init)");
        return FAILED;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    char line[512];
    const char *token = p->o->hf_token;
    if (has_prefix(p->source, "hf://") && token && *token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", token);
        hdrs = curl_slist_append(hdrs, line);
        explicit_bzero(line, sizeof line);
    }
    char range[32];
    if (p->written > 0) {
        snprintf(range, sizeof range, "%llu-", (unsigned long long)p->written);
        curl_easy_setopt(h, CURLOPT_RANGE, range);
        const char *validator = p->etag[0] ? p->etag : p->last_modified[0] ? p->last_modified : NULL;
        if (validator) {
            snprintf(line, sizeof line, "If-Range: %s", validator);
            hdrs = curl_slist_append(hdrs, line);
        }
    }
    long low_speed_time = p->o->low_speed_time_s > 0 ? p->o->low_speed_time_s : 60;
    curl_easy_setopt(h, CURLOPT_URL, p->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "lyra/" LYRA_VERSION);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT,
                     p->o->connect_timeout_s > 0 ? (long)p->o->connect_timeout_s : 30L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, (long)LOW_SPEED_BYTES);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, low_speed_time);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, p);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, p);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs); /* the token's line is freed with it */

    if (p->cancelled)
        return CANCELLED;
    switch (rc) {
    case CURLE_OK:
        if (!p->started && p->written > 0 && status != 206 && restart_from_zero(p) < 0) {
            lyra_err_set(err, LYRA_EIO, "cannot truncate %s: %s", p->part, strerror(errno));
            return FAILED;
        }
        if (!p->started)
            p->total = p->written; /* an empty answer */
        return DONE;
    case CURLE_WRITE_ERROR:
        if (p->refuse_code) {
            lyra_err_set(err, p->refuse_code, "%s", p->refuse_msg);
            return FAILED;
        }
        if (p->restart) {
            if (restart_from_zero(p) < 0) {
                lyra_err_set(err, LYRA_EIO, "cannot truncate %s: %s", p->part, strerror(errno));
                return FAILED;
            }
            return RETRY;
        }
        if (p->write_errno == ENOSPC || p->write_errno == EDQUOT || p->write_errno == EFBIG)
            lyra_err_set(err, LYRA_EIO,
                         "disk full writing %s (%s); the %llu bytes downloaded are kept: free some space and "
                         "pull again to resume",
                         p->part, strerror(p->write_errno), (unsigned long long)p->written);
        else
            lyra_err_set(err, LYRA_EIO, "cannot write %s: %s (the %llu bytes downloaded are kept)", p->part,
                         strerror(p->write_errno ? p->write_errno : EIO), (unsigned long long)p->written);
        return FAILED;
    case CURLE_HTTP_RETURNED_ERROR:
        if (status == 416 && p->base > 0) {
            /* The partial is not a prefix the server knows (or is all of it):
             * fetch the whole file again. */
            if (restart_from_zero(p) < 0) {
                lyra_err_set(err, LYRA_EIO, "cannot truncate %s: %s", p->part, strerror(errno));
                return FAILED;
            }
            return RETRY;
        }
        lyra_err_set(err, LYRA_EIO, "HTTP %ld from %s", status, p->url);
        return FAILED;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        lyra_err_set(err, LYRA_EIO, "download of %s interrupted: %s (%llu bytes kept)", p->url,
                     errbuf[0] ? errbuf : curl_easy_strerror(rc), (unsigned long long)p->written);
        return RETRY;
    case CURLE_OPERATION_TIMEDOUT:
        lyra_err_set(err, LYRA_ETIMEOUT, "download of %s stalled: %s (%llu bytes kept; pull again to resume)",
                     p->url, errbuf[0] ? errbuf : curl_easy_strerror(rc), (unsigned long long)p->written);
        return FAILED;
    default:
        lyra_err_set(err, LYRA_EIO, "download of %s failed: %s", p->url,
                     errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return FAILED;
    }
}

/* Sleeps ms in short steps; false when cancelled meanwhile. */
static bool pause_ms(struct pull *p, int ms)
{
    for (int slept = 0; slept < ms; slept += 50) {
        if (p->ctx->cancelled(p->ctx))
            return false;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return !p->ctx->cancelled(p->ctx);
}

static int download(struct pull *p, struct lyra_err *err)
{
    int rc = load_resume(p);
    if (rc < 0)
        return lyra_err_set(err, LYRA_EIO, "cannot read %s: %s", p->part, strerror(-rc));
    int max_retries = p->o->max_retries > 0 ? p->o->max_retries : p->o->max_retries < 0 ? 0 : 5;
    int delay_ms = p->o->retry_delay_ms > 0 ? p->o->retry_delay_ms : 1000;
    int stuck = 0;
    for (int n = 0;; n++) {
        uint64_t before = p->written;
        enum outcome out = attempt(p, err);
        if (out == DONE)
            return 0;
        if (out == CANCELLED)
            return lyra_err_set(err, LYRA_EUNAVAILABLE, "cancelled; %llu bytes kept in %s for a resume",
                                (unsigned long long)p->written, p->part);
        if (out == FAILED)
            return err ? err->code : LYRA_EIO;
        stuck = p->written > before ? 0 : stuck + 1;
        if (stuck > max_retries || n + 1 >= MAX_ATTEMPTS_TOTAL)
            return err ? err->code : LYRA_EIO;
        checkpoint(p);
        lyra_log(LYRA_LOG_INFO, "pull", p->ctx->id, NULL, "retrying at byte %llu: %s",
                 (unsigned long long)p->written, err ? err->msg : "interrupted");
        if (!pause_ms(p, delay_ms * (stuck + 1)))
            return lyra_err_set(err, LYRA_EUNAVAILABLE, "cancelled; %llu bytes kept in %s for a resume",
                                (unsigned long long)p->written, p->part);
    }
}

/* A local file copied into the partial (from zero: it is fast and the
 * source may have changed). */
static int copy_local(struct pull *p, struct lyra_err *err)
{
    /* O_NONBLOCK: a FIFO must not hang the job (it is refused below as not
     * a regular file). */
    int in = open(p->source, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (in < 0)
        return lyra_err_set(err,
                            errno == ENOENT   ? LYRA_ENOTFOUND
                            : errno == EACCES ? LYRA_EPERM
                                              : LYRA_EIO,
                            "cannot open %s: %s", p->source, strerror(errno));
    struct stat st;
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return lyra_err_set(err, LYRA_EINVAL, "%s is not a regular file", p->source);
    }
    int rc = restart_from_zero(p);
    if (rc < 0) {
        close(in);
        return lyra_err_set(err, LYRA_EIO, "cannot truncate %s: %s", p->part, strerror(-rc));
    }
    p->total = (uint64_t)st.st_size;
    if ((rc = check_space(p, p->total, err)) < 0) {
        close(in);
        return rc;
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    if (!buf) {
        close(in);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    rc = 0;
    for (;;) {
        if (p->ctx->cancelled(p->ctx)) {
            rc = lyra_err_set(err, LYRA_EUNAVAILABLE, "cancelled");
            break;
        }
        ssize_t r = read(in, buf, cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = lyra_err_set(err, LYRA_EIO, "cannot read %s: %s", p->source, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        if (!append(p, buf, (size_t)r)) {
            rc = lyra_err_set(err, LYRA_EIO, "cannot write %s: %s", p->part, strerror(p->write_errno));
            break;
        }
        p->ctx->progress(p->ctx, p->written, p->total);
    }
    free(buf);
    close(in);
    return rc;
}

/* ---- the runner ------------------------------------------------------------ */

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static void remove_partial(struct pull *p)
{
    unlink(p->part);
    unlink(p->side);
}

/* The rename into models.dir, never over an existing file. */
static int place(struct pull *p, struct lyra_err *err)
{
    /* check_params allowed no '/' and no leading '.' in the name, so the
     * target is a plain file directly in models.dir; RENAME_NOREPLACE (or
     * link) refuses anything already there, a symlink included. */
    if (strchr(p->name, '/') || p->name[0] == '.')
        return lyra_err_set(err, LYRA_EINVAL, "model name '%s' is not a plain file name", p->name);
    if (renameat2(AT_FDCWD, p->part, AT_FDCWD, p->target, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EINVAL || errno == ENOSYS) {
        /* No RENAME_NOREPLACE here: a hard link refuses an existing target too. */
        if (link(p->part, p->target) == 0) {
            unlink(p->part);
            return 0;
        }
    }
    if (errno == EEXIST)
        return lyra_err_set(err, LYRA_EEXISTS, "%s appeared meanwhile; the download stays in %s", p->target,
                            p->part);
    return lyra_err_set(err, LYRA_EIO, "cannot move %s to %s: %s", p->part, p->target, strerror(errno));
}

static void sha_hex(crypto_hash_sha256_state *st, char out[65])
{
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(st, d);
    for (size_t i = 0; i < sizeof d; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static int finish(struct pull *p, const char *want_sha, json_t **result, struct lyra_err *err)
{
    if (p->total > 0 && p->written != p->total)
        return lyra_err_set(err, LYRA_EIO, "download of %s ended at %llu of %llu bytes", p->url ?: p->source,
                            (unsigned long long)p->written, (unsigned long long)p->total);
    if (fsync(p->fd) < 0)
        return lyra_err_set(err, LYRA_EIO, "cannot sync %s: %s", p->part, strerror(errno));
    char hex[65];
    sha_hex(&p->sha, hex);
    if (want_sha && strcasecmp(want_sha, hex) != 0) {
        remove_partial(p);
        return lyra_err_set(err, LYRA_EINVAL,
                            "sha256 mismatch: expected %s, got %s; the download was removed", want_sha, hex);
    }
    struct lyra_gguf_info *info = NULL;
    struct lyra_err gerr = {0};
    if (lyra_gguf_read(p->part, &info, &gerr) < 0) {
        remove_partial(p);
        return lyra_err_set(err, LYRA_EPARSE, "not a GGUF model: %s; the download was removed", gerr.msg);
    }
    lyra_gguf_info_free(info);
    int rc = place(p, err);
    if (rc < 0)
        return rc;
    unlink(p->side);
    if (fsync_dir(p->o->models_dir) < 0)
        lyra_log(LYRA_LOG_WARN, "pull", p->ctx->id, NULL, "cannot sync %s", p->o->models_dir);
    (void)fsync_dir(p->partdir);
    if (p->o->registry) {
        struct lyra_err rerr = {0};
        if (lyra_registry_refresh(p->o->registry, NULL, &rerr) < 0)
            lyra_log(LYRA_LOG_WARN, "pull", p->ctx->id, NULL, "models dir: %s", rerr.msg);
    }
    if (p->o->bus)
        lyra_bus_publish(p->o->bus, "model.added", "pull",
                         json_pack("{s:s, s:s, s:I, s:s, s:s}", "name", p->name, "path", p->target, "bytes",
                                   (json_int_t)p->written, "sha256", hex, "source", p->source));
    *result = json_pack("{s:s, s:s, s:I, s:s, s:s, s:I}", "name", p->name, "path", p->target, "bytes",
                        (json_int_t)p->written, "sha256", hex, "source", p->source, "resumed_from",
                        (json_int_t)p->resumed_from);
    return 0;
}

static char *path_fmt(const char *dir, const char *name, const char *suffix)
{
    char file[LYRA_PULL_NAME_MAX + 32];
    snprintf(file, sizeof file, "%s%s", name, suffix);
    return lyra_path_join(dir, file);
}

int lyra_pull_run(struct lyra_job_ctx *ctx, json_t **result, struct lyra_err *err, void *ud)
{
    const struct lyra_pull_options *o = ud;
    *result = NULL;
    struct pull p = {.o = o, .ctx = ctx, .fd = -1};
    int rc = check_params(o, ctx->params, p.name, err);
    if (rc < 0)
        return rc;
    p.source = json_string_value(json_object_get(ctx->params, "source"));
    const char *want_sha = json_string_value(json_object_get(ctx->params, "sha256"));
    char *url = NULL;
    if ((rc = lyra_pull_resolve(p.source, o->hf_endpoint, &url, err)) < 0)
        return rc;
    p.url = url;
    p.target = path_fmt(o->models_dir, p.name, ".gguf");
    p.partdir = lyra_path_join(o->models_dir, ".partial");
    p.part = p.partdir ? path_fmt(p.partdir, p.name, ".gguf.part") : NULL;
    p.side = p.partdir ? path_fmt(p.partdir, p.name, ".gguf.part.json") : NULL;
    if (!p.target || !p.part || !p.side) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        goto out;
    }
    int mk = lyra_mkdirs(p.partdir);
    if (mk < 0) {
        rc = lyra_err_set(err, mk == -EACCES ? LYRA_EPERM : LYRA_EIO, "cannot create %s: %s", p.partdir,
                          strerror(-mk));
        goto out;
    }
    /* The partial directory and file are ours alone: a symlink at either
     * (planted to aim the download at a file outside models.dir) is
     * refused, never followed.  A fresh partial is created exclusively; an
     * existing one (a resume, or a pull running now) is reopened without
     * following a link and must be a regular file. */
    struct stat pst;
    if (lstat(p.partdir, &pst) < 0 || !S_ISDIR(pst.st_mode)) {
        rc = lyra_err_set(err, LYRA_EIO, "%s is not a directory (a symlink is refused)", p.partdir);
        goto out;
    }
    p.fd = open(p.part, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (p.fd < 0 && errno == EEXIST)
        p.fd = open(p.part, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (p.fd < 0) {
        rc = lyra_err_set(err, LYRA_EIO, "cannot open %s: %s", p.part,
                          errno == ELOOP ? "it is a symlink (refused)" : strerror(errno));
        goto out;
    }
    if (fstat(p.fd, &pst) < 0 || !S_ISREG(pst.st_mode)) {
        rc = lyra_err_set(err, LYRA_EIO, "%s is not a regular file", p.part);
        goto out;
    }
    if (flock(p.fd, LOCK_EX | LOCK_NB) < 0) {
        rc = lyra_err_set(err, LYRA_EBUSY, "a pull of %s is already running", p.name);
        close(p.fd);
        p.fd = -1;
        goto out;
    }
    lyra_log(LYRA_LOG_INFO, "pull", ctx->id, NULL, "pulling %s from %s", p.name, p.source);
    rc = url ? download(&p, err) : copy_local(&p, err);
    if (rc == 0)
        rc = finish(&p, want_sha, result, err);
    else if (url)
        checkpoint(&p);
    if (rc < 0 && (!url || p.written == 0))
        remove_partial(&p); /* nothing to resume (a copy starts from zero anyway) */
out:
    if (p.fd >= 0)
        close(p.fd);
    if (rc < 0)
        lyra_log(LYRA_LOG_WARN, "pull", ctx->id, NULL, "pull of %s failed: %s", p.name, err ? err->msg : "");
    free(url);
    free(p.target);
    free(p.partdir);
    free(p.part);
    free(p.side);
    return rc;
}

int lyra_pull_register(struct lyra_jobs *jobs, const struct lyra_pull_options *o, struct lyra_err *err)
{
    if (!o || !o->models_dir)
        return lyra_err_set(err, LYRA_EINVAL, "pull: models_dir is required");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return lyra_err_set(err, LYRA_EINTERNAL, "pull: curl_global_init failed");
    if (sodium_init() < 0)
        return lyra_err_set(err, LYRA_EINTERNAL, "pull: sodium_init failed");
    struct lyra_job_type t = {
        .name = "pull",
        .max_concurrent = 2,
        .resumable = true,
        .run = lyra_pull_run,
        .ud = (void *)o,
    };
    int rc = lyra_jobs_register(jobs, &t);
    if (rc < 0)
        return lyra_err_set(err, rc, "pull: cannot register the job type: %s", lyra_strerror(rc));
    return 0;
}
