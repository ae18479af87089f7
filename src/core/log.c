/* log.c — the process-wide log sink: JSON lines or text, one whole line per
 * call under a mutex, secrets redacted by field name. */
#include "core/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/util.h"

/* The sink: the only mutable global besides the signal flag (CONVENTIONS). */
static struct {
    pthread_mutex_t lock;
    FILE *out;       /* NULL = stderr */
    bool owns_out;
    bool json;
    enum lyra_log_level level;
} sink = {PTHREAD_MUTEX_INITIALIZER, NULL, false, false, LYRA_LOG_INFO};

static const char *level_names[] = {"debug", "info", "warn", "error"};

static int parse_level(const char *s, enum lyra_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum lyra_log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LYRA_LOG_WARN;
        return 0;
    }
    return -1;
}

int lyra_log_open(const char *level, const char *format, const char *file, struct lyra_err *err)
{
    enum lyra_log_level lvl = LYRA_LOG_INFO;
    if (level && parse_level(level, &lvl) < 0)
        return lyra_err_set(err, LYRA_EINVAL, "log level '%s' is not one of debug, info, warn, error",
                            level);
    FILE *out = NULL;
    if (file && *file) {
        /* Private (0600) when created: log lines name users' models, paths
         * and requests. */
        int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        out = fd >= 0 ? fdopen(fd, "a") : NULL;
        if (!out) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return lyra_err_set(err, LYRA_EIO, "cannot open log file %s: %s", file, strerror(e));
        }
        setvbuf(out, NULL, _IOLBF, 0);
    }
    bool json;
    if (!format || strcmp(format, "auto") == 0)
        json = !isatty(out ? fileno(out) : STDERR_FILENO);
    else if (strcmp(format, "json") == 0)
        json = true;
    else if (strcmp(format, "text") == 0)
        json = false;
    else {
        if (out)
            fclose(out);
        return lyra_err_set(err, LYRA_EINVAL, "log format '%s' is not one of json, text, auto", format);
    }
    pthread_mutex_lock(&sink.lock);
    if (sink.owns_out)
        fclose(sink.out);
    sink.out = out;
    sink.owns_out = out != NULL;
    sink.json = json;
    sink.level = lvl;
    pthread_mutex_unlock(&sink.lock);
    return 0;
}

void lyra_log_close(void)
{
    pthread_mutex_lock(&sink.lock);
    if (sink.owns_out)
        fclose(sink.out);
    sink.out = NULL;
    sink.owns_out = false;
    pthread_mutex_unlock(&sink.lock);
}

bool lyra_log_enabled(enum lyra_log_level level)
{
    return level >= sink.level;
}

/* Field names whose values are secrets, compared whole and ignoring case,
 * with '-' and '_' taken as equal (header names and JSON keys spell them
 * both ways).  Whole names, not substrings: max_tokens, prompt_tokens or
 * keep_alive are ordinary values. */
static const char *const secret_names[] = {
    "authorization", "proxy-authorization", "api_key", "apikey", "x-api-key", "admin_key", "key",
    "token", "access_token", "refresh_token", "id_token", "password", "passwd", "secret",
    "client_secret", "hf_token", "cookie", "set-cookie",
};

static bool name_equal(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a == '-' ? '_' : (char)tolower((unsigned char)*a);
        char y = *b == '-' ? '_' : (char)tolower((unsigned char)*b);
        if (x != y)
            return false;
        if (!x)
            return true;
    }
}

bool lyra_log_is_secret_key(const char *key)
{
    for (size_t i = 0; i < sizeof secret_names / sizeof *secret_names; i++)
        if (name_equal(key, secret_names[i]))
            return true;
    return false;
}

/* True when v holds a secret-named field with a value, at any depth. */
static bool has_secret(json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, x) {
            if ((lyra_log_is_secret_key(k) && !json_is_null(x)) || has_secret(x))
                return true;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) {
            if (has_secret(x))
                return true;
        }
    }
    return false;
}

/* Replaces the values of secret-named fields, in objects and arrays at any
 * depth. */
static void redact(json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, x) {
            if (lyra_log_is_secret_key(k) && !json_is_null(x))
                json_object_set_new(v, k, json_string("<redacted>"));
            else
                redact(x);
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) {
            redact(x);
        }
    }
}

/* Writes s for the text format so that it cannot forge a line or drive a
 * terminal: control characters (C0, DEL, and C1 such as CSI U+009B) and
 * bytes that are not UTF-8 are escaped (\n, \r, \t, \xNN, \u00NN), and
 * so is the backslash itself, so an escape in the output is always ours. */
static void put_escaped(FILE *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        if (c == '\\') {
            fputs("\\\\", out);
            p++;
        } else if (c == '\n') {
            fputs("\\n", out);
            p++;
        } else if (c == '\r') {
            fputs("\\r", out);
            p++;
        } else if (c == '\t') {
            fputs("\\t", out);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\x%02x", c);
            p++;
        } else if (c < 0x80) {
            fputc(c, out);
            p++;
        } else {
            size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
            size_t avail = strnlen((const char *)p, n);
            if (n > 1 && avail == n && lyra_utf8_valid((const char *)p, n)) {
                if (n == 2 && c == 0xc2 && p[1] < 0xa0) /* U+0080..U+009F */
                    fprintf(out, "\\u%04x", (unsigned)p[1]);
                else
                    fwrite(p, 1, n, out);
                p += n;
            } else {
                fprintf(out, "\\x%02x", c);
                p++;
            }
        }
    }
}

static void write_text(FILE *out, const char *ts, enum lyra_log_level level, const char *component,
                       const char *request_id, json_t *fields, const char *msg)
{
    fprintf(out, "%s %-5s ", ts, level_names[level]);
    put_escaped(out, component);
    fputs(": ", out);
    put_escaped(out, msg);
    if (request_id) {
        fputs(" request_id=", out);
        put_escaped(out, request_id);
    }
    const char *k;
    json_t *v;
    json_object_foreach(fields, k, v) {
        fputc(' ', out);
        put_escaped(out, k);
        fputc('=', out);
        if (json_is_string(v)) {
            put_escaped(out, json_string_value(v));
        } else {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            put_escaped(out, s ? s : "?");
            free(s);
        }
    }
    fputc('\n', out);
}

/* A JSON string of s that is never refused: invalid UTF-8 becomes '?'. */
static json_t *safe_string(const char *s)
{
    if (lyra_utf8_valid(s, strlen(s)))
        return json_string(s);
    char *copy = strdup(s);
    json_t *j = copy ? json_string(lyra_utf8_scrub(copy)) : NULL;
    free(copy);
    return j;
}

json_t *lyra_log_string(const char *s)
{
    return safe_string(s ? s : "");
}

void lyra_log(enum lyra_log_level level, const char *component, const char *request_id,
              json_t *fields, const char *fmt, ...)
{
    if (level < sink.level) {
        json_decref(fields);
        return;
    }
    /* lyra_vfmt: a message cut at the buffer's end, or carrying client
     * bytes that are not UTF-8, is still valid UTF-8, so JSON keeps it. */
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char ts[40];
    lyra_format_ts(lyra_wall_ms(), ts, sizeof ts);
    if (!fields)
        fields = json_object();
    if (has_secret(fields)) { /* redact a copy: the caller may share `fields` */
        json_t *copy = json_deep_copy(fields);
        json_decref(fields);
        fields = copy ? copy : json_object();
        redact(fields);
    }

    pthread_mutex_lock(&sink.lock);
    FILE *out = sink.out ? sink.out : stderr;
    if (sink.json) {
        json_t *line = json_object();
        json_object_set_new(line, "ts", json_string(ts));
        json_object_set_new(line, "level", json_string(level_names[level]));
        json_object_set_new(line, "component", safe_string(component));
        json_object_set_new(line, "msg", json_string(msg));
        if (request_id)
            json_object_set_new(line, "request_id", safe_string(request_id));
        size_t n_head = json_object_size(line);
        json_object_update_missing(line, fields);
        char *s = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(10));
        if (!s && json_object_size(line) > n_head) { /* write the line without the caller's fields */
            const char *k;
            json_t *v;
            json_object_foreach(fields, k, v) {
                if (json_object_get(line, k) == v)
                    json_object_del(line, k);
            }
            json_object_set_new(line, "log_error", json_string("fields could not be encoded"));
            s = json_dumps(line, JSON_COMPACT);
        }
        if (s) {
            fputs(s, out);
            fputc('\n', out);
            free(s);
        } else { /* out of memory: still one line, written without jansson */
            fprintf(out, "{\"ts\":\"%s\",\"level\":\"%s\",\"log_error\":\"line could not be encoded\"}\n",
                    ts, level_names[level]);
        }
        json_decref(line);
    } else {
        write_text(out, ts, level, component, request_id, fields, msg);
    }
    fflush(out);
    pthread_mutex_unlock(&sink.lock);
    json_decref(fields);
}
