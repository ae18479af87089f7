/* hostcheck.c — parses Host values (RFC 9110 §7.2: uri-host [":" port])
 * into a normal form (lower-case name without the trailing dot, or address
 * bytes) and compares that form, so that spelling variants of one host
 * neither slip past the guard nor get refused.  See hostcheck.h for the
 * rules. */
#include "http/hostcheck.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 253 /* DNS: a name without its trailing dot */
#define LABEL_MAX_LEN 63
#define HOST_MAX_LEN 300 /* longer than any valid name + port: refused unparsed */
#define QUOTE_MAX 80     /* bytes of a refused Host quoted in the message */

enum kind { K_NAME, K_V4, K_V6 };

struct host {
    enum kind kind;
    char name[NAME_MAX_LEN + 1]; /* K_NAME: lower case, no trailing dot */
    unsigned char addr[16];      /* K_V4: 4 bytes; K_V6: 16 (v4-mapped become K_V4) */
};

struct lyra_hostcheck {
    bool any; /* an entry "*" */
    struct host *allowed;
    size_t n_allowed;
};

/* Parses an IPv6 address (no brackets, no zone). */
static bool parse_v6(const char *s, size_t len, struct host *out)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof buf || memchr(s, '%', len))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    unsigned char a[16];
    if (inet_pton(AF_INET6, buf, a) != 1)
        return false;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, sizeof mapped) == 0) {
        out->kind = K_V4;
        memcpy(out->addr, a + 12, 4);
    } else {
        out->kind = K_V6;
        memcpy(out->addr, a, 16);
    }
    return true;
}

/* Parses a name or a dotted-quad IPv4 address: s[0..len), one trailing dot
 * allowed. */
static bool parse_name(const char *s, size_t len, struct host *out)
{
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    bool numeric = true;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_') {
            numeric = false;
            if (++label > LABEL_MAX_LEN)
                return false;
        } else if (c >= '0' && c <= '9') {
            if (++label > LABEL_MAX_LEN)
                return false;
        } else {
            return false; /* space, control, '%', '@', non-ASCII, ... */
        }
        out->name[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    if (label == 0)
        return false; /* "a..": the one trailing dot was already taken */
    out->name[len] = '\0';
    if (!numeric) {
        out->kind = K_NAME;
        return true;
    }
    /* All digits and dots: only the dotted quad (inet_pton refuses 127.1,
     * 2130706433 and leading zeros), which is what browsers send. */
    out->kind = K_V4;
    return inet_pton(AF_INET, out->name, out->addr) == 1;
}

static bool parse_port(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535;
}

/* Parses a Host value: name[:port], IPv4[:port] or [IPv6][:port]. */
static bool parse_host(const char *s, struct host *out)
{
    size_t len = strlen(s);
    if (len == 0 || len > HOST_MAX_LEN)
        return false;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || !parse_v6(s + 1, (size_t)(close - s - 1), out))
            return false;
        return close[1] == '\0' || (close[1] == ':' && parse_port(close + 2));
    }
    const char *colon = strchr(s, ':');
    if (!colon)
        return parse_name(s, len, out);
    if (strchr(colon + 1, ':'))
        return false; /* an IPv6 address must be bracketed in Host */
    return parse_name(s, (size_t)(colon - s), out) && parse_port(colon + 1);
}

/* Parses an allow-list entry or a listen address: a name, a dotted quad, or
 * an IPv6 address with or without brackets; no port. */
static bool parse_entry(const char *s, struct host *out)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']')
        return parse_v6(s + 1, n - 2, out);
    if (strchr(s, ':'))
        return parse_v6(s, n, out);
    return parse_name(s, n, out);
}

static bool host_is_loopback(const struct host *h)
{
    static const unsigned char v6_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    switch (h->kind) {
    case K_NAME: {
        size_t n = strlen(h->name);
        return strcmp(h->name, "localhost") == 0 || (n > 10 && strcmp(h->name + n - 10, ".localhost") == 0);
    }
    case K_V4:
        return h->addr[0] == 127;
    case K_V6:
        return memcmp(h->addr, v6_loopback, 16) == 0;
    }
    return false;
}

static bool host_equal(const struct host *a, const struct host *b)
{
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case K_NAME:
        return strcmp(a->name, b->name) == 0;
    case K_V4:
        return memcmp(a->addr, b->addr, 4) == 0;
    case K_V6:
        return memcmp(a->addr, b->addr, 16) == 0;
    }
    return false;
}

/* The Host as printable ASCII for a message: other bytes become '?', and a
 * long value is clipped with "...". */
static void quote(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (; s[n] && n < QUOTE_MAX && n + 4 < cap; n++)
        buf[n] = (s[n] >= 0x20 && s[n] < 0x7f) ? s[n] : '?';
    if (s[n])
        memcpy(buf + n, "...", 3), n += 3;
    buf[n] = '\0';
}

int lyra_hostcheck_new(char *const *allowed, size_t n_allowed, struct lyra_hostcheck **out,
                       struct lyra_err *err)
{
    *out = NULL;
    struct lyra_hostcheck *hc = calloc(1, sizeof *hc);
    if (!hc || (n_allowed > 0 && !(hc->allowed = calloc(n_allowed, sizeof *hc->allowed)))) {
        free(hc);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n_allowed; i++) {
        const char *e = allowed[i];
        if (strcmp(e, "*") == 0) {
            hc->any = true;
            continue;
        }
        struct host h;
        if (!parse_entry(e, &h)) {
            char q[QUOTE_MAX + 8];
            quote(e, q, sizeof q);
            lyra_hostcheck_free(hc);
            return lyra_err_set(
                err, LYRA_EINVAL,
                "server.allowed_hosts[%zu]: '%s' is not a host name or address (give a DNS "
                "name, an IPv4 or IPv6 address, or \"*\"; without a port: every port matches)",
                i, q);
        }
        hc->allowed[hc->n_allowed++] = h;
    }
    *out = hc;
    return 0;
}

void lyra_hostcheck_free(struct lyra_hostcheck *hc)
{
    if (!hc)
        return;
    free(hc->allowed);
    free(hc);
}

int lyra_hostcheck_check(const struct lyra_hostcheck *hc, const char *host, struct lyra_err *err)
{
    if (!host || !*host || hc->any)
        return 0;
    struct host h;
    char q[QUOTE_MAX + 8];
    if (!parse_host(host, &h)) {
        quote(host, q, sizeof q);
        return lyra_err_set(
            err, LYRA_EPERM,
            "Host header '%s' is malformed (expected name[:port], IPv4[:port] or [IPv6][:port])", q);
    }
    if (host_is_loopback(&h))
        return 0;
    for (size_t i = 0; i < hc->n_allowed; i++)
        if (host_equal(&h, &hc->allowed[i]))
            return 0;
    quote(host, q, sizeof q);
    return lyra_err_set(err, LYRA_EPERM,
                        "Host '%s' is not served: with authentication off this daemon answers only requests "
                        "addressed to a loopback name (localhost, 127.0.0.1, [::1]) or to a name listed in "
                        "server.allowed_hosts (a guard against DNS rebinding)",
                        q);
}

bool lyra_hostcheck_is_loopback(const char *host)
{
    struct host h;
    return host && parse_host(host, &h) && host_is_loopback(&h);
}

bool lyra_hostcheck_addr_is_loopback(const char *addr)
{
    struct host h;
    return addr && parse_entry(addr, &h) && host_is_loopback(&h);
}
