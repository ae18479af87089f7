/* wshandshake.c — see wshandshake.h. */
#include "http/wshandshake.h"

#include "core/util.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define ROL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)
            f = (b & c) | (~b & d), k = 0x5A827999;
        else if (i < 40)
            f = b ^ c ^ d, k = 0x6ED9EBA1;
        else if (i < 60)
            f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
        else
            f = b ^ c ^ d, k = 0xCA62C1D6;
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d, d = c, c = ROL(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

void lyra_ws_sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const uint8_t *p = data;
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64)
        sha1_block(h, p);
    uint8_t tail[128] = {0};
    memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tl = left + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tl == 128)
        sha1_block(h, tail + 64);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void lyra_ws_accept_key(const char *key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char buf[128];
    /* The key was checked (24 base64 characters); the bound only keeps a
     * caller that did not check inside buf, cut at a character boundary. */
    int n = snprintf(buf, sizeof buf, "%.*s%s", (int)lyra_utf8_clip(key, 60), key, guid);
    uint8_t d[21] = {0};
    lyra_ws_sha1(buf, (size_t)n, d);
    char *o = out;
    for (int i = 0; i < 21; i += 3) { /* 20 bytes: 6 full groups and one of 2 */
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | (i + 2 < 20 ? d[i + 2] : 0);
        *o++ = B64[v >> 18 & 63];
        *o++ = B64[v >> 12 & 63];
        *o++ = B64[v >> 6 & 63];
        *o++ = i + 2 < 20 ? B64[v & 63] : '=';
    }
    out[28] = '\0';
}

/* True when the comma-separated header value has `token` as one element. */
static bool has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *end = e;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = e;
    }
    return false;
}

static bool is_key(const char *k)
{
    /* 16 bytes in base64: 22 characters and "==". */
    if (strlen(k) != 24 || k[22] != '=' || k[23] != '=')
        return false;
    for (int i = 0; i < 22; i++)
        if (!strchr(B64, k[i]) || !k[i])
            return false;
    return true;
}

int lyra_ws_check_request(const char *upgrade, const char *connection, const char *key, const char *version,
                          struct lyra_err *err)
{
    if (!upgrade || !has_token(upgrade, "websocket"))
        return lyra_err_set(err, LYRA_EINVAL, "not a WebSocket handshake: the Upgrade header must be 'websocket'");
    if (!connection || !has_token(connection, "upgrade"))
        return lyra_err_set(err, LYRA_EINVAL,
                            "not a WebSocket handshake: the Connection header must include 'Upgrade'");
    if (!version || strcmp(version, "13") != 0)
        return lyra_err_set(err, LYRA_EUNSUPPORTED, "Sec-WebSocket-Version must be 13");
    if (!key || !is_key(key))
        return lyra_err_set(err, LYRA_EINVAL,
                            "Sec-WebSocket-Key must be 16 random bytes in base64 (24 characters)");
    return 0;
}
