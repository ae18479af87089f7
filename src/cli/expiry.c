/* expiry.c — see expiry.h.  Dates are converted with the civil-from-days
 * arithmetic (Howard Hinnant's days_from_civil), not mktime/timegm, so the
 * result depends neither on TZ nor on the C library's range. */
#include "cli/expiry.h"

#include <stdbool.h>
#include <string.h>

#define MAX_SECONDS (100LL * 366 * 86400)

/* Days since 1970-01-01 of the proleptic Gregorian date y-m-d. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* n digits at s as a number; false when one is not a digit. */
static bool digits(const char *s, int n, int64_t *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        *v = *v * 10 + (s[i] - '0');
    }
    return true;
}

static int parse_date(const char *text, int64_t now_ms, struct lyra_expiry *out, struct lyra_err *err)
{
    int64_t y, m, d;
    if (!digits(text, 4, &y) || text[4] != '-' || !digits(text + 5, 2, &m) || text[7] != '-' ||
        !digits(text + 8, 2, &d))
        return lyra_err_set(err, LYRA_EINVAL, "--expires: a date is YYYY-MM-DD");
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && is_leap(y)))
        return lyra_err_set(err, LYRA_EINVAL, "--expires: %s is not a date", text);
    int64_t ms = days_from_civil(y, m, d) * 86400 * 1000;
    if (ms <= now_ms)
        return lyra_err_set(err, LYRA_EINVAL,
                            "--expires: %s is not in the future (the key expires at 00:00 UTC that day)",
                            text);
    out->at_ms = ms;
    return 0;
}

int lyra_expiry_parse(const char *text, int64_t now_ms, struct lyra_expiry *out, struct lyra_err *err)
{
    memset(out, 0, sizeof *out);
    size_t n = text ? strlen(text) : 0;
    if (n == 10 && text[4] == '-')
        return parse_date(text, now_ms, out, err);
    size_t nd = 0;
    int64_t v = 0;
    while (nd < n && text[nd] >= '0' && text[nd] <= '9') {
        if (v > MAX_SECONDS)
            return lyra_err_set(err, LYRA_EINVAL, "--expires: %s is longer than 100 years", text);
        v = v * 10 + (text[nd++] - '0');
    }
    if (nd == 0 || nd + 1 != n) {
        if (nd == n && n > 0)
            return lyra_err_set(err, LYRA_EINVAL, "--expires: %s needs a unit: s, m, h, d or w (\"30d\")",
                                text);
        return lyra_err_set(err, LYRA_EINVAL,
                            "--expires: a duration (\"90m\", \"12h\", \"30d\") or a date (YYYY-MM-DD)");
    }
    int64_t unit;
    switch (text[nd]) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    case 'd':
        unit = 86400;
        break;
    case 'w':
        unit = 7 * 86400;
        break;
    default:
        return lyra_err_set(err, LYRA_EINVAL, "--expires: unknown unit '%c' (s, m, h, d or w)", text[nd]);
    }
    if (v == 0)
        return lyra_err_set(err, LYRA_EINVAL, "--expires: a key cannot expire now (%s)", text);
    if (v > MAX_SECONDS / unit)
        return lyra_err_set(err, LYRA_EINVAL, "--expires: %s is longer than 100 years", text);
    out->in_s = v * unit;
    return 0;
}
