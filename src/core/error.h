/* error.h — Lyra's one table of error codes.
 *
 * Every fallible function returns 0 or a negative LYRA_E* code.  Human
 * readable detail travels separately in an optional struct lyra_err that the
 * caller owns (usually on its stack), so the message is never lost on its way
 * to a log line or an HTTP response.  The X-macro below generates the enum,
 * lyra_strerror() and lyra_errname() from one list.
 *
 * Thread-safety: everything here is thread-safe (no shared state). */
#ifndef LYRA_ERROR_H
#define LYRA_ERROR_H

#include <stddef.h>

/* X(name, value, http_status, text) */
#define LYRA_ERRNO_MAP(X)                                              \
    X(OK, 0, 200, "ok")                                                \
    X(NOMEM, -1, 500, "out of memory")                                 \
    X(INVAL, -2, 400, "invalid argument")                              \
    X(IO, -3, 500, "input/output error")                               \
    X(NOTFOUND, -4, 404, "not found")                                  \
    X(EXISTS, -5, 409, "already exists")                               \
    X(PARSE, -6, 400, "parse error")                                   \
    X(CONFIG, -7, 500, "configuration error")                          \
    X(DB, -8, 500, "database error")                                   \
    X(BUSY, -9, 503, "busy")                                           \
    X(TOOBIG, -10, 413, "too large")                                   \
    X(UNSUPPORTED, -11, 415, "unsupported")                            \
    X(PERM, -12, 403, "permission denied")                             \
    X(TIMEOUT, -13, 504, "timed out")                                  \
    X(INTERNAL, -14, 500, "internal error")                            \
    X(ADDRINUSE, -15, 500, "address in use")                           \
    X(UNAVAILABLE, -16, 503, "unavailable")                            \
    X(AUTH, -17, 401, "authentication required")                       \
    X(CONFLICT, -18, 409, "conflict")

enum lyra_errno {
#define LYRA_X(name, value, status, text) LYRA_E##name = value,
    LYRA_ERRNO_MAP(LYRA_X)
#undef LYRA_X
};
#define LYRA_OK LYRA_EOK

#define LYRA_ERR_MSG_MAX 512

/* Detail for a failure: the code plus a message written by the function that
 * failed.  Callers that do not care pass NULL. */
struct lyra_err {
    int code;
    char msg[LYRA_ERR_MSG_MAX];
};

/* Text for a code ("out of memory"); unknown codes give "unknown error". */
const char *lyra_strerror(int code);
/* Symbolic name of a code ("NOMEM"). */
const char *lyra_errname(int code);
/* The HTTP status that matches a code (404 for LYRA_ENOTFOUND, ...). */
int lyra_err_http_status(int code);

/* Records code and a printf-style message in err (if not NULL; the message
 * is always valid UTF-8, cut on a character boundary) and returns
 * code, so that `return lyra_err_set(err, LYRA_EINVAL, "...")` reads well. */
int lyra_err_set(struct lyra_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
