/* logprobs.c — see logprobs.h. */
#include "worker/logprobs.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void lyra_logprob_none(int32_t tok, struct lyra_logprob *out)
{
    out->tok = tok;
    out->lp = 0.0f;
    out->has_lp = false;
    out->n_top = 0;
}

/* Is (la, ta) ranked before (lb, tb)?  Higher logit first, then lower id. */
static bool before(float la, int32_t ta, float lb, int32_t tb)
{
    return la > lb || (la == lb && ta < tb);
}

void lyra_logprob_compute(const float *logits, int n_vocab, int32_t tok, int n_top, struct lyra_logprob *out)
{
    if (n_top > LYRA_MAX_TOP_LOGPROBS)
        n_top = LYRA_MAX_TOP_LOGPROBS;
    if (n_top > n_vocab)
        n_top = n_vocab;
    if (n_top < 0)
        n_top = 0;
    float max = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > max)
            max = logits[i];
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - (double)max);
    double lse = (double)max + log(sum);
    /* the n_top best by insertion into a small sorted array: O(n_vocab *
     * n_top) at worst, O(n_vocab) in practice (most logits are below the
     * current n_top-th and cost one comparison). */
    int n = 0;
    float best[LYRA_MAX_TOP_LOGPROBS];
    for (int i = 0; i < n_vocab && n_top > 0; i++) {
        float l = logits[i];
        if (n == n_top && !before(l, i, best[n - 1], out->top[n - 1]))
            continue;
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && before(l, i, best[j - 1], out->top[j - 1])) {
            best[j] = best[j - 1];
            out->top[j] = out->top[j - 1];
            j--;
        }
        best[j] = l;
        out->top[j] = i;
    }
    for (int k = 0; k < n; k++)
        out->top_lp[k] = (float)((double)best[k] - lse);
    out->n_top = n;
    out->tok = tok;
    out->has_lp = true;
    out->lp = tok >= 0 && tok < n_vocab ? (float)((double)logits[tok] - lse) : -INFINITY;
}

size_t lyra_logprob_fmt(char *buf, size_t cap, float lp)
{
    if (!(lp >= LYRA_LOGPROB_FLOOR)) /* also nan */
        lp = LYRA_LOGPROB_FLOOR;
    if (lp > 0.0f) /* rounding of a certain token */
        lp = 0.0f;
    int n = snprintf(buf, cap, "%.7g", (double)lp);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

size_t lyra_logprob_max_json(int n_top, int max_piece)
{
    /* one token: ["<2 per byte>",<24>], plus punctuation */
    size_t one = 2 * (size_t)max_piece + 32;
    return 40 + one + (size_t)(n_top > 0 ? n_top : 0) * one;
}

static size_t put_hex(char *buf, const char *p, int n)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        buf[2 * i] = hex[(unsigned char)p[i] >> 4];
        buf[2 * i + 1] = hex[(unsigned char)p[i] & 15];
    }
    return 2 * (size_t)(n > 0 ? n : 0);
}

size_t lyra_logprob_write(char *buf, size_t cap, const struct lyra_logprob *e, lyra_logprob_piece_fn piece,
                          void *ud, char *scratch, int scratch_cap)
{
    size_t w = 0;
    memcpy(buf + w, "{\"h\":\"", 6);
    w += 6;
    int n = piece(e->tok, true, scratch, scratch_cap, ud);
    w += put_hex(buf + w, scratch, n);
    memcpy(buf + w, "\",\"lp\":", 7);
    w += 7;
    if (e->has_lp) {
        w += lyra_logprob_fmt(buf + w, cap - w, e->lp);
    } else {
        memcpy(buf + w, "null", 4);
        w += 4;
    }
    memcpy(buf + w, ",\"top\":[", 8);
    w += 8;
    for (int k = 0; k < e->n_top; k++) {
        if (k)
            buf[w++] = ',';
        buf[w++] = '[';
        buf[w++] = '"';
        n = piece(e->top[k], false, scratch, scratch_cap, ud);
        w += put_hex(buf + w, scratch, n);
        buf[w++] = '"';
        buf[w++] = ',';
        w += lyra_logprob_fmt(buf + w, cap - w, e->top_lp[k]);
        buf[w++] = ']';
    }
    buf[w++] = ']';
    buf[w++] = '}';
    buf[w] = '\0';
    return w;
}
