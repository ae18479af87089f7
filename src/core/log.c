/* log.c — the process-wide log sink: JSON lines or text, one whole line per
 * call under a mutex, secrets redacted by field name. */
#include "core/log.h"

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

bool lyra_log_is_secret_key(const char *key)
{
    static const char *secret_words[] = {"key", "token", "secret", "password", "authorization"};
    for (size_t i = 0; i < sizeof secret_words / sizeof *secret_words; i++)
        if (strcasestr(key, secret_words[i]))
            return true;
    return false;
}

/* Replaces the values of secret-named fields, recursively. */
static void redact(json_t *obj)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (lyra_log_is_secret_key(k) && !json_is_null(v))
            json_object_set_new(obj, k, json_string("<redacted>"));
        else if (json_is_object(v))
            redact(v);
    }
}

static void write_text(FILE *out, const char *ts, enum lyra_log_level level, const char *component,
                       const char *request_id, json_t *fields, const char *msg)
{
    fprintf(out, "%s %-5s %s: %s", ts, level_names[level], component, msg);
    if (request_id)
        fprintf(out, " request_id=%s", request_id);
    const char *k;
    json_t *v;
    json_object_foreach(fields, k, v) {
        if (json_is_string(v)) {
            fprintf(out, " %s=%s", k, json_string_value(v));
        } else {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            fprintf(out, " %s=%s", k, s ? s : "?");
            free(s);
        }
    }
    fputc('\n', out);
}

void lyra_log(enum lyra_log_level level, const char *component, const char *request_id,
              json_t *fields, const char *fmt, ...)
{
    if (level < sink.level) {
        json_decref(fields);
        return;
    }
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char ts[40];
    lyra_format_ts(lyra_wall_ms(), ts, sizeof ts);
    if (!fields)
        fields = json_object();
    redact(fields);

    pthread_mutex_lock(&sink.lock);
    FILE *out = sink.out ? sink.out : stderr;
    if (sink.json) {
        json_t *line = json_object();
        json_object_set_new(line, "ts", json_string(ts));
        json_object_set_new(line, "level", json_string(level_names[level]));
        json_object_set_new(line, "component", json_string(component));
        json_object_set_new(line, "msg", json_string(msg));
        if (request_id)
            json_object_set_new(line, "request_id", json_string(request_id));
        json_object_update_missing(line, fields);
        char *s = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(10));
        if (s) {
            fputs(s, out);
            fputc('\n', out);
            free(s);
        }
        json_decref(line);
    } else {
        write_text(out, ts, level, component, request_id, fields, msg);
    }
    fflush(out);
    pthread_mutex_unlock(&sink.lock);
    json_decref(fields);
}
