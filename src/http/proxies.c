/* proxies.c — trusted proxies and X-Forwarded-For (see proxies.h).
 *
 * Addresses are compared in one form: 16 bytes and a family, IPv4 (and
 * IPv4-mapped IPv6) in the first 4 bytes.  A set is a small array scanned
 * linearly: deployments name one or a few proxies. */
#include "http/proxies.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct addr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t b[16];
};

struct block {
    struct addr a;
    int bits; /* prefix length */
};

struct lyra_proxies {
    size_t n;
    struct block blocks[];
};

/* Parses a bare address (no brackets, no port); IPv4-mapped IPv6 becomes
 * IPv4. */
static bool parse_addr(const char *s, struct addr *out)
{
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, s, out->b) == 1) {
        out->family = AF_INET;
        return true;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET6, s, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        out->family = AF_INET;
        memcpy(out->b, &a6.s6_addr[12], 4);
    } else {
        out->family = AF_INET6;
        memcpy(out->b, a6.s6_addr, 16);
    }
    return true;
}

/* Parses one X-Forwarded-For hop or a peer: "v4", "v6", "[v6]",
 * "[v6]:port", "v4:port", with spaces around. */
static bool parse_hop(const char *s, size_t len, struct addr *out)
{
    while (len && (*s == ' ' || *s == '\t'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    char buf[INET6_ADDRSTRLEN + 8];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *p = buf;
    if (*p == '[') {
        char *close = strchr(p, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return false;
        *close = '\0';
        p++;
    } else {
        char *colon = strchr(p, ':');
        if (colon && !strchr(colon + 1, ':')) /* one colon: v4:port */
            *colon = '\0';
    }
    return parse_addr(p, out);
}

static bool in_block(const struct block *blk, const struct addr *a)
{
    if (blk->a.family != a->family)
        return false;
    int full = blk->bits / 8, rest = blk->bits % 8;
    if (memcmp(blk->a.b, a->b, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (blk->a.b[full] & mask) == (a->b[full] & mask);
}

static bool trusted(const struct lyra_proxies *p, const struct addr *a)
{
    for (size_t i = 0; p && i < p->n; i++)
        if (in_block(&p->blocks[i], a))
            return true;
    return false;
}

static int parse_entry(const char *entry, size_t i, struct block *out, struct lyra_err *err)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (!entry || strlen(entry) >= sizeof buf)
        return lyra_err_set(err, LYRA_EINVAL, "server.trusted_proxies[%zu]: not an address or CIDR block", i);
    strcpy(buf, entry);
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        char *end = NULL;
        bits = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || bits < 0)
            return lyra_err_set(err, LYRA_EINVAL, "server.trusted_proxies[%zu]: bad prefix length in '%s'", i,
                                entry);
    }
    if (!parse_addr(buf, &out->a))
        return lyra_err_set(err, LYRA_EINVAL,
                            "server.trusted_proxies[%zu]: '%s' is not an IPv4/IPv6 address or CIDR block", i,
                            entry);
    /* A mapped entry ("::ffff:10.0.0.0/104") counts its prefix over the
     * IPv6 form; keep it meaningful for the IPv4 form it became. */
    bool mapped = out->a.family == AF_INET && strchr(buf, ':');
    int max = out->a.family == AF_INET ? 32 : 128;
    if (mapped && bits >= 0) {
        if (bits < 96)
            return lyra_err_set(err, LYRA_EINVAL, "server.trusted_proxies[%zu]: bad prefix length in '%s'", i,
                                entry);
        bits -= 96;
    }
    if (bits > max)
        return lyra_err_set(err, LYRA_EINVAL, "server.trusted_proxies[%zu]: prefix length over %d in '%s'", i,
                            max, entry);
    out->bits = bits < 0 ? max : (int)bits;
    return 0;
}

int lyra_proxies_new(struct lyra_proxies **out, char *const *entries, size_t n, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_proxies *p = calloc(1, sizeof *p + n * sizeof p->blocks[0]);
    if (!p)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = parse_entry(entries[i], i, &p->blocks[i], err);
        if (rc < 0) {
            free(p);
            return rc;
        }
    }
    p->n = n;
    *out = p;
    return 0;
}

void lyra_proxies_free(struct lyra_proxies *p) { free(p); }

size_t lyra_proxies_count(const struct lyra_proxies *p) { return p ? p->n : 0; }

bool lyra_proxies_trusts(const struct lyra_proxies *p, const char *addr)
{
    struct addr a;
    return p && addr && parse_hop(addr, strlen(addr), &a) && trusted(p, &a);
}

static void format_addr(const struct addr *a, char *out, size_t out_size)
{
    if (!inet_ntop(a->family, a->b, out, (socklen_t)out_size))
        out[0] = '\0';
}

bool lyra_proxies_client(const struct lyra_proxies *p, const char *peer, const char *xff, char *out,
                         size_t out_size)
{
    if (out_size == 0)
        return false;
    snprintf(out, out_size, "%s", peer ? peer : "");
    if (!lyra_proxies_trusts(p, peer) || !xff)
        return false;
    /* Right to left: skip trusted hops; the first untrusted one is the
     * client.  `last` is the last good hop seen (all trusted so far). */
    struct addr last, hop;
    bool have = false;
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t len = end - start;
        end = start > 0 ? start - 1 : 0;
        const char *s = xff + start;
        bool blank = true;
        for (size_t i = 0; i < len; i++)
            if (s[i] != ' ' && s[i] != '\t')
                blank = false;
        if (blank) {
            if (start == 0)
                break;
            continue; /* "a, , b": an empty hop says nothing */
        }
        if (!parse_hop(s, len, &hop))
            break;
        last = hop;
        have = true;
        if (!trusted(p, &hop))
            break;
        if (start == 0)
            break;
    }
    if (!have)
        return false;
    format_addr(&last, out, out_size);
    return true;
}
