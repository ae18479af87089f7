/* llamalog.c — captures llama.cpp's log lines (see llamalog.h).
 *
 * llama.cpp calls the callback with fragments: a message may arrive in
 * several pieces, GGML_LOG_LEVEL_CONT continuing the previous one.  Error
 * text since the last mark is kept in one bounded buffer; everything else is
 * dropped unless verbose. */
#include "worker/llamalog.h"

#include "core/util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ggml.h"
#include "llama.h"

/* llama.cpp's logger is process-global, so its capture is too (it is a log
 * sink, which CONVENTIONS allows as global state). */
static struct {
    pthread_mutex_t lock;
    bool verbose;
    enum ggml_log_level last; /* level of the fragment before, for CONT */
    char errors[4096];
    size_t n;
} cap = {PTHREAD_MUTEX_INITIALIZER, false, GGML_LOG_LEVEL_NONE, {0}, 0};

static void log_cb(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&cap.lock);
    if (level == GGML_LOG_LEVEL_CONT)
        level = cap.last;
    else
        cap.last = level;
    if (level == GGML_LOG_LEVEL_ERROR) {
        size_t len = strlen(text), room = sizeof cap.errors - 1 - cap.n;
        if (len > room)
            len = room;
        memcpy(cap.errors + cap.n, text, len);
        cap.n += len;
        cap.errors[cap.n] = '\0';
    }
    if (cap.verbose)
        fputs(text, stderr);
    pthread_mutex_unlock(&cap.lock);
}

void lyra_llamalog_install(bool verbose)
{
    cap.verbose = verbose;
    llama_log_set(log_cb, NULL);
}

void lyra_llamalog_mark(void)
{
    pthread_mutex_lock(&cap.lock);
    cap.n = 0;
    cap.errors[0] = '\0';
    pthread_mutex_unlock(&cap.lock);
}

size_t lyra_llamalog_errors(char *buf, size_t len)
{
    if (len == 0)
        return 0;
    size_t out = 0;
    buf[0] = '\0';
    pthread_mutex_lock(&cap.lock);
    const char *p = cap.errors;
    int lines = 0;
    while (*p && lines < 3) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        const char *line = p;
        p = nl ? nl + 1 : p + n;
        /* drop "llama_model_load: " style prefixes: an identifier then ": " */
        size_t skip = strspn(line, "abcdefghijklmnopqrstuvwxyz_0123456789");
        if (skip > 0 && skip + 2 <= n && line[skip] == ':' && line[skip + 1] == ' ') {
            line += skip + 2;
            n -= skip + 2;
        }
        while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\r'))
            n--;
        /* our callers already say "failed to load model X" */
        if (n == 0 || (n == 20 && memcmp(line, "failed to load model", 20) == 0))
            continue;
        int w = snprintf(buf + out, len - out, "%s%.*s", lines ? "; " : "", (int)n, line);
        if (w < 0 || (size_t)w >= len - out) {
            out = strlen(buf);
            break;
        }
        out += (size_t)w;
        lines++;
    }
    pthread_mutex_unlock(&cap.lock);
    lyra_utf8_scrub(buf); /* llama.cpp's text (file names) may be anything; a cut must stay UTF-8 */
    return strlen(buf);
}
