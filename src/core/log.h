/* log.h — structured logging: one JSON object per line, or text for people.
 *
 * A line carries ts, level, component, msg, request_id (when known) and the
 * caller's fields.  Field values whose key is a secret's name (the whole
 * name, any case, '-' = '_': authorization, api_key, admin_key, key, token,
 * access_token, refresh_token, password, secret, hf_token, cookie,
 * set-cookie, and a few more in log.c), at any depth, are written as
 * "<redacted>", so a secret that reaches a log call by mistake still never
 * reaches the sink; max_tokens or prompt_tokens are not secrets.
 *
 * No line is lost to its content: the message is formatted with lyra_vfmt
 * (cut on a character boundary, invalid UTF-8 replaced by '?'), and a line
 * whose fields cannot be encoded is written without them, marked
 * "log_error".  The text format escapes control characters, the backslash
 * and invalid bytes (\n, \x1b, \u009b, \xff), so client text can neither
 * forge a line nor drive a terminal; JSON escapes them by itself.
 *
 * The sink is process-wide (the one global besides the signal flag): set it
 * once with lyra_log_open() at start.  Before that, lines go to stderr as
 * text at level info.
 *
 * Thread-safety: lyra_log*() may be called from any thread; each line is
 * written whole.  lyra_log_open/close are not thread-safe. */
#ifndef LYRA_LOG_H
#define LYRA_LOG_H

#include <jansson.h>
#include <stdbool.h>

#include "core/error.h"

enum lyra_log_level {
    LYRA_LOG_DEBUG,
    LYRA_LOG_INFO,
    LYRA_LOG_WARN,
    LYRA_LOG_ERROR,
};

/* level: debug|info|warn|error; format: json|text|auto (auto = text when the
 * sink is a terminal); file: NULL for stderr, else appended to. */
int lyra_log_open(const char *level, const char *format, const char *file, struct lyra_err *err);
void lyra_log_close(void);

/* True when lines at `level` are written (to skip building costly fields). */
bool lyra_log_enabled(enum lyra_log_level level);

/* Writes one line.  `fields` (may be NULL) is a JSON object whose reference
 * is taken.  `request_id` may be NULL. */
void lyra_log(enum lyra_log_level level, const char *component, const char *request_id,
              json_t *fields, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define lyra_debug(comp, ...) lyra_log(LYRA_LOG_DEBUG, comp, NULL, NULL, __VA_ARGS__)
#define lyra_info(comp, ...) lyra_log(LYRA_LOG_INFO, comp, NULL, NULL, __VA_ARGS__)
#define lyra_warn(comp, ...) lyra_log(LYRA_LOG_WARN, comp, NULL, NULL, __VA_ARGS__)
#define lyra_error(comp, ...) lyra_log(LYRA_LOG_ERROR, comp, NULL, NULL, __VA_ARGS__)

/* True when a field named `key` would be redacted. */
bool lyra_log_is_secret_key(const char *key);

/* A JSON string of s (NULL = "") for a field, with invalid UTF-8 replaced
 * by '?', so that client text never makes json_pack fail and a line lose
 * its fields: json_pack("{s:o}", "path", lyra_log_string(path)).  New
 * reference; NULL only when out of memory. */
json_t *lyra_log_string(const char *s);

#endif
