/* error.c — text, names and HTTP statuses for the LYRA_E* table. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/util.h"

const char *lyra_strerror(int code)
{
    switch (code) {
#define LYRA_X(name, value, status, text) \
    case value:                           \
        return text;
        LYRA_ERRNO_MAP(LYRA_X)
#undef LYRA_X
    }
    return "unknown error";
}

const char *lyra_errname(int code)
{
    switch (code) {
#define LYRA_X(name, value, status, text) \
    case value:                           \
        return #name;
        LYRA_ERRNO_MAP(LYRA_X)
#undef LYRA_X
    }
    return "UNKNOWN";
}

int lyra_err_http_status(int code)
{
    switch (code) {
#define LYRA_X(name, value, status, text) \
    case value:                           \
        return status;
        LYRA_ERRNO_MAP(LYRA_X)
#undef LYRA_X
    }
    return 500;
}

int lyra_err_set(struct lyra_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        lyra_vfmt(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}
