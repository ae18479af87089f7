/*
 * lyra-train: trains Lyra's demo model, a small llama-architecture language model, on ggml's own
 * optimizer (ggml-opt, AdamW) and exports it as a standard llama GGUF with its SentencePiece
 * tokenizer embedded (docs/demo-model.md; scripts/demo-model.sh drives it).
 *
 *   lyra-train prep --in KJV.txt --train TRAIN.txt --val VAL.txt [--val-every 50]
 *       The output of `bible -l 100000 Gen1:1-Rev22:21` (Debian bible-kjv over bible-kjv-text):
 *       chapter headings ("Genesis 1") and verse numbers are dropped; one verse per line. Every
 *       val-every'th chapter (the 50th, 100th, ...) is held out as the validation text.
 *   lyra-train train --train TRAIN.txt --val VAL.txt --spm PREFIX --out F32.gguf [options]
 *       Tokenizes both texts with spm_encode (PREFIX.model), trains, writes the loss curve as
 *       JSON (--curve) and the trained weights as an F32 GGUF (the checkpoint).
 *   lyra-train quantize --in F32.gguf --out Q8_0.gguf
 *       llama_model_quantize (stock libllama) to q8_0.
 *   lyra-train score --model M.gguf --val VAL.txt [--spm PREFIX] [--ctx 128] [--seqs N]
 *       The validation loss again, through stock libllama on the exported file; with --spm,
 *       checks that llama.cpp tokenizes the text exactly as spm_encode did.
 *
 * The data order is a function of --seed only: every step draws its batch's start verses from a
 * splitmix64 stream, and the weights are initialised from another; with the same inputs, options
 * and thread count, the run is repeatable (ggml's CPU kernels are deterministic for a fixed
 * thread count).
 *
 * The text stream is the verses joined by spaces (continuous prose). A training sequence is BOS followed by
 * ctx-1 tokens starting at a verse, as a prompt served later starts with BOS; its labels are the
 * same tokens shifted by one. The validation sequences cut the validation stream into
 * consecutive pieces, each after a BOS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml-opt.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#define PROG "lyra-train"

#ifndef LYRA_BACKEND_DIR
#define LYRA_BACKEND_DIR ""
#endif

/* The messages' contents concatenated, so a chat request whose last message is "In the
 * beginning" continues that text: a real Jinja template (stock llama-server renders it), which
 * Lyra maps onto llama.cpp's built-in equivalent (src/worker/template.h). */
#define DEMO_CHAT_TEMPLATE "{% for message in messages %}{{ message['content'] }}{% endfor %}"

#define RMS_EPS   1e-5f
#define ROPE_BASE 10000.0f

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- deterministic random numbers: splitmix64, Box-Muller ---- */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(struct rng *r) /* (0, 1) */
{
    return ((rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float rng_normal(struct rng *r, float stddev)
{
    double u = rng_unit(r), v = rng_unit(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v) * stddev);
}

/* ======================================================================== prep */

static int cmd_prep(int argc, char **argv)
{
    const char *in = NULL, *train = NULL, *val = NULL;
    long val_every = 50;
    static const struct option lo[] = {{"in", 1, 0, 'i'},
                                       {"train", 1, 0, 't'},
                                       {"val", 1, 0, 'v'},
                                       {"val-every", 1, 0, 'e'},
                                       {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 't': train = optarg; break;
        case 'v': val = optarg; break;
        case 'e': val_every = strtol(optarg, NULL, 10); break;
        default: return 2;
        }
    }
    if (!in || !train || !val || val_every < 2)
        die("prep: --in, --train and --val are required (--val-every >= 2)");
    FILE *fi = fopen(in, "r");
    if (!fi)
        die("%s: %s", in, strerror(errno));
    FILE *ft = fopen(train, "w"), *fv = fopen(val, "w");
    if (!ft || !fv)
        die("cannot write %s / %s: %s", train, val, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long chapters = 0, verses = 0, held = 0;
    bool in_val = false;
    while ((n = getline(&line, &cap, fi)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (line[0] != ' ') { /* a chapter heading: "Genesis 1", "1 Kings 3" */
            chapters++;
            in_val = chapters % val_every == 0;
            continue;
        }
        /* "  12 And God said, ..." : drop the indent and the verse number */
        char *p = line;
        while (*p == ' ')
            p++;
        if (*p < '0' || *p > '9')
            die("%s: unexpected line '%s' (not the output of `bible -l 100000`?)", in, line);
        while (*p >= '0' && *p <= '9')
            p++;
        while (*p == ' ')
            p++;
        if (!*p)
            continue;
        if (!chapters)
            die("%s: a verse before the first chapter heading", in);
        fprintf(in_val ? fv : ft, "%s\n", p);
        verses++;
        held += in_val;
    }
    free(line);
    fclose(fi);
    if (fclose(ft) || fclose(fv))
        die("write error");
    if (verses == 0)
        die("%s: no verses", in);
    fprintf(stderr, PROG ": %ld chapters, %ld verses (%ld held out for validation)\n", chapters,
            verses, held);
    return 0;
}

/* ======================================================================== vocab */

struct vocab {
    int n;
    char **piece;
    float *score;
    int32_t *type; /* llama_token_type values */
    int nl;        /* id of <0x0A> */
};

/* PREFIX.vocab, as spm_train writes it: "piece<TAB>score" per line, in id order. */
static void vocab_load(struct vocab *v, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("%s: %s", path, strerror(errno));
    memset(v, 0, sizeof *v);
    v->nl = -1;
    int cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        char *tab = strrchr(line, '\t');
        if (!tab)
            die("%s:%d: no tab", path, v->n + 1);
        *tab = '\0';
        if (v->n == cap) {
            cap = cap ? 2 * cap : 1024;
            v->piece = realloc(v->piece, cap * sizeof *v->piece);
            v->score = realloc(v->score, cap * sizeof *v->score);
            v->type = realloc(v->type, cap * sizeof *v->type);
            if (!v->piece || !v->score || !v->type)
                die("out of memory");
        }
        int id = v->n++;
        v->piece[id] = strdup(line);
        v->score[id] = strtof(tab + 1, NULL);
        if (!strcmp(line, "<unk>"))
            v->type[id] = LLAMA_TOKEN_TYPE_UNKNOWN;
        else if (!strcmp(line, "<s>") || !strcmp(line, "</s>"))
            v->type[id] = LLAMA_TOKEN_TYPE_CONTROL;
        else if (strlen(line) == 6 && !strncmp(line, "<0x", 3) && line[5] == '>')
            v->type[id] = LLAMA_TOKEN_TYPE_BYTE;
        else
            v->type[id] = LLAMA_TOKEN_TYPE_NORMAL;
        if (!strcmp(line, "<0x0A>"))
            v->nl = id;
    }
    free(line);
    fclose(f);
    if (v->n < 4 || strcmp(v->piece[0], "<unk>") || strcmp(v->piece[1], "<s>") ||
        strcmp(v->piece[2], "</s>"))
        die("%s: expected <unk>, <s>, </s> as ids 0, 1, 2 (spm_train --unk_id=0 --bos_id=1 "
            "--eos_id=2)", path);
    if (v->nl < 0)
        die("%s: no <0x0A> byte piece (spm_train --byte_fallback=true)", path);
}

static void vocab_free(struct vocab *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->piece[i]);
    free(v->piece);
    free(v->score);
    free(v->type);
}

/* ======================================================================== tokens */

struct tokens {
    int32_t *id;
    int64_t n, cap;
    int64_t *verse; /* stream offset of each verse */
    int64_t nverse, vcap;
};

static void tok_push(struct tokens *t, int32_t id)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1 << 16;
        t->id = realloc(t->id, t->cap * sizeof *t->id);
        if (!t->id)
            die("out of memory");
    }
    t->id[t->n++] = id;
}

/* Encodes TEXT (one verse per line) with spm_encode. Each verse gets SentencePiece's dummy "▁"
 * prefix, so the stream is the tokenization of the verses joined by spaces: what llama.cpp's SPM
 * tokenizer (which adds the same prefix once, and never lets a piece span a space) makes of
 * the joined text. */
static void tokenize(struct tokens *t, const char *spm_model, const char *text, const struct vocab *v)
{
    char *cmd;
    if (asprintf(&cmd, "spm_encode --model='%s' --output_format=id < '%s'", spm_model, text) < 0)
        die("out of memory");
    FILE *p = popen(cmd, "r");
    if (!p)
        die("spm_encode: %s", strerror(errno));
    memset(t, 0, sizeof *t);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, p) >= 0) {
        if (t->nverse == t->vcap) {
            t->vcap = t->vcap ? 2 * t->vcap : 4096;
            t->verse = realloc(t->verse, t->vcap * sizeof *t->verse);
            if (!t->verse)
                die("out of memory");
        }
        t->verse[t->nverse++] = t->n;
        char *s = line, *e;
        for (;;) {
            long id = strtol(s, &e, 10);
            if (e == s)
                break;
            if (id < 0 || id >= v->n)
                die("spm_encode gave id %ld outside the vocabulary (%d)", id, v->n);
            tok_push(t, (int32_t)id);
            s = e;
        }
    }
    free(line);
    int st = pclose(p);
    if (st != 0 || t->n == 0)
        die("`%s` failed (status %d)", cmd, st);
    free(cmd);
}

/* ======================================================================== model */

struct hparams {
    int dim, layers, heads, kv_heads, ffn, ctx, vocab;
};

struct layer {
    struct ggml_tensor *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
};

struct model {
    struct hparams hp;
    struct ggml_context *ctx; /* weights + inputs, allocated statically */
    ggml_backend_buffer_t buf;
    struct ggml_tensor *tok_embd, *output_norm;
    struct layer *l;
    struct ggml_tensor *inputs; /* I32 [ctx, batch] */
    struct ggml_tensor *pos;    /* I32 [ctx] */
};

static struct ggml_tensor *weight(struct ggml_context *ctx, const char *name, int64_t ne0, int64_t ne1)
{
    struct ggml_tensor *t = ne1 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ne1)
                                : ggml_new_tensor_1d(ctx, GGML_TYPE_F32, ne0);
    ggml_set_name(t, name);
    ggml_set_param(t);
    return t;
}

static void model_create(struct model *m, const struct hparams *hp, int batch, ggml_backend_t backend)
{
    memset(m, 0, sizeof *m);
    m->hp = *hp;
    int hd = hp->dim / hp->heads;
    size_t n_tensors = 4 + 9 * (size_t)hp->layers;
    struct ggml_init_params ip = {n_tensors * ggml_tensor_overhead(), NULL, true};
    m->ctx = ggml_init(ip);
    m->tok_embd = weight(m->ctx, "token_embd.weight", hp->dim, hp->vocab);
    m->l = calloc(hp->layers, sizeof *m->l);
    char name[GGML_MAX_NAME];
    for (int i = 0; i < hp->layers; i++) {
        struct layer *L = &m->l[i];
#define W(field, suffix, a, b)                                                                     \
    snprintf(name, sizeof name, "blk.%d." suffix ".weight", i);                                    \
    L->field = weight(m->ctx, name, a, b)
        W(attn_norm, "attn_norm", hp->dim, 0);
        W(wq, "attn_q", hp->dim, (int64_t)hd * hp->heads);
        W(wk, "attn_k", hp->dim, (int64_t)hd * hp->kv_heads);
        W(wv, "attn_v", hp->dim, (int64_t)hd * hp->kv_heads);
        W(wo, "attn_output", (int64_t)hd * hp->heads, hp->dim);
        W(ffn_norm, "ffn_norm", hp->dim, 0);
        W(w_gate, "ffn_gate", hp->dim, hp->ffn);
        W(w_up, "ffn_up", hp->dim, hp->ffn);
        W(w_down, "ffn_down", hp->ffn, hp->dim);
#undef W
    }
    m->output_norm = weight(m->ctx, "output_norm.weight", hp->dim, 0);
    m->inputs = ggml_new_tensor_2d(m->ctx, GGML_TYPE_I32, hp->ctx, batch);
    ggml_set_name(m->inputs, "inputs");
    ggml_set_input(m->inputs);
    m->pos = ggml_new_tensor_1d(m->ctx, GGML_TYPE_I32, hp->ctx);
    ggml_set_name(m->pos, "pos");
    ggml_set_input(m->pos);
    m->buf = ggml_backend_alloc_ctx_tensors(m->ctx, backend);
    if (!m->buf)
        die("cannot allocate the model's weights");
}

/* Norm weights 1; matrices N(0, 0.02), the residual projections (attn_output, ffn_down) scaled
 * by 1/sqrt(2 layers) as in GPT-2. One stream per tensor. */
static void model_init_weights(struct model *m, uint64_t seed)
{
    int idx = 0;
    for (struct ggml_tensor *t = ggml_get_first_tensor(m->ctx); t; t = ggml_get_next_tensor(m->ctx, t)) {
        if (t == m->inputs || t == m->pos)
            continue;
        int64_t n = ggml_nelements(t);
        float *d = xmalloc(n * sizeof *d);
        struct rng r = {seed ^ (0xD1B54A32D192ED03ull * (uint64_t)++idx)};
        if (ggml_n_dims(t) == 1) {
            for (int64_t i = 0; i < n; i++)
                d[i] = 1.0f;
        } else {
            float sd = 0.02f;
            if (strstr(t->name, "attn_output") || strstr(t->name, "ffn_down"))
                sd /= sqrtf(2.0f * m->hp.layers);
            for (int64_t i = 0; i < n; i++)
                d[i] = rng_normal(&r, sd);
        }
        ggml_backend_tensor_set(t, d, 0, n * sizeof *d);
        free(d);
    }
    int32_t *p = xmalloc(m->hp.ctx * sizeof *p);
    for (int i = 0; i < m->hp.ctx; i++)
        p[i] = i;
    ggml_backend_tensor_set(m->pos, p, 0, m->hp.ctx * sizeof *p);
    free(p);
}

static int64_t model_params(const struct model *m)
{
    int64_t n = 0;
    for (struct ggml_tensor *t = ggml_get_first_tensor(m->ctx); t; t = ggml_get_next_tensor(m->ctx, t))
        if (t->flags & GGML_TENSOR_FLAG_PARAM)
            n += ggml_nelements(t);
    return n;
}

/* The llama forward graph (src/llama-model.cpp's llm_build_llama, without the KV cache):
 * logits F32 [vocab, ctx * batch] for inputs I32 [ctx, batch]. */
static struct ggml_tensor *model_forward(struct ggml_context *ctx, const struct model *m, int batch)
{
    const struct hparams *hp = &m->hp;
    const int T = hp->ctx, B = batch, H = hp->heads, Hkv = hp->kv_heads, hd = hp->dim / hp->heads;
    const float kq_scale = 1.0f / sqrtf((float)hd);
    struct ggml_tensor *x = ggml_get_rows(ctx, m->tok_embd, ggml_reshape_1d(ctx, m->inputs, (int64_t)T * B));
    for (int il = 0; il < hp->layers; il++) {
        const struct layer *L = &m->l[il];
        struct ggml_tensor *h = ggml_mul(ctx, ggml_rms_norm(ctx, x, RMS_EPS), L->attn_norm);
        struct ggml_tensor *q = ggml_reshape_4d(ctx, ggml_mul_mat(ctx, L->wq, h), hd, H, T, B);
        struct ggml_tensor *k = ggml_reshape_4d(ctx, ggml_mul_mat(ctx, L->wk, h), hd, Hkv, T, B);
        struct ggml_tensor *v = ggml_reshape_4d(ctx, ggml_mul_mat(ctx, L->wv, h), hd, Hkv, T, B);
        q = ggml_rope_ext(ctx, q, m->pos, NULL, hd, GGML_ROPE_TYPE_NORMAL, T, ROPE_BASE, 1.0f, 0.0f,
                          1.0f, 32.0f, 1.0f);
        k = ggml_rope_ext(ctx, k, m->pos, NULL, hd, GGML_ROPE_TYPE_NORMAL, T, ROPE_BASE, 1.0f, 0.0f,
                          1.0f, 32.0f, 1.0f);
        /* heads and sequences share the third dimension (head fastest), so mul_mat's
         * broadcast of the KV heads over the query heads is grouped-query attention and its
         * backward pass (which broadcasts over dimension 2 only) applies */
        q = ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, q, 0, 2, 1, 3)), hd, T, (int64_t)H * B);
        k = ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, k, 0, 2, 1, 3)), hd, T, (int64_t)Hkv * B);
        struct ggml_tensor *vt =
            ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3)), T, hd, (int64_t)Hkv * B);
        struct ggml_tensor *kq = ggml_mul_mat(ctx, k, q); /* [T_k, T_q, H*B] */
        kq = ggml_diag_mask_inf(ctx, kq, 0);
        kq = ggml_soft_max_ext(ctx, kq, NULL, kq_scale, 0.0f);
        struct ggml_tensor *o = ggml_mul_mat(ctx, vt, kq); /* [hd, T_q, H*B] */
        o = ggml_permute(ctx, ggml_reshape_4d(ctx, o, hd, T, H, B), 0, 2, 1, 3);
        o = ggml_reshape_2d(ctx, ggml_cont(ctx, o), (int64_t)hd * H, (int64_t)T * B);
        x = ggml_add(ctx, x, ggml_mul_mat(ctx, L->wo, o));
        h = ggml_mul(ctx, ggml_rms_norm(ctx, x, RMS_EPS), L->ffn_norm);
        struct ggml_tensor *g = ggml_silu(ctx, ggml_mul_mat(ctx, L->w_gate, h));
        struct ggml_tensor *u = ggml_mul_mat(ctx, L->w_up, h);
        x = ggml_add(ctx, x, ggml_mul_mat(ctx, L->w_down, ggml_mul(ctx, g, u)));
    }
    x = ggml_mul(ctx, ggml_rms_norm(ctx, x, RMS_EPS), m->output_norm);
    return ggml_mul_mat(ctx, m->tok_embd, x); /* tied output */
}

/* ======================================================================== export */

static void export_gguf(const struct model *m, const struct vocab *v, const char *out, const char *name)
{
    const struct hparams *hp = &m->hp;
    struct gguf_context *g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_str(g, "general.name", name);
    gguf_set_val_u32(g, "general.file_type", 0); /* LLAMA_FTYPE_ALL_F32 */
    gguf_set_val_u32(g, "llama.context_length", (uint32_t)hp->ctx);
    gguf_set_val_u32(g, "llama.embedding_length", (uint32_t)hp->dim);
    gguf_set_val_u32(g, "llama.block_count", (uint32_t)hp->layers);
    gguf_set_val_u32(g, "llama.feed_forward_length", (uint32_t)hp->ffn);
    gguf_set_val_u32(g, "llama.attention.head_count", (uint32_t)hp->heads);
    gguf_set_val_u32(g, "llama.attention.head_count_kv", (uint32_t)hp->kv_heads);
    gguf_set_val_u32(g, "llama.rope.dimension_count", (uint32_t)(hp->dim / hp->heads));
    gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", RMS_EPS);
    gguf_set_val_f32(g, "llama.rope.freq_base", ROPE_BASE);
    gguf_set_val_u32(g, "llama.vocab_size", (uint32_t)hp->vocab);
    gguf_set_val_str(g, "tokenizer.ggml.model", "llama");
    gguf_set_val_str(g, "tokenizer.ggml.pre", "default");
    gguf_set_arr_str(g, "tokenizer.ggml.tokens", (const char **)v->piece, v->n);
    gguf_set_arr_data(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->score, v->n);
    gguf_set_arr_data(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->type, v->n);
    gguf_set_val_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    gguf_set_val_u32(g, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_val_u32(g, "tokenizer.ggml.eos_token_id", 2);
    gguf_set_val_bool(g, "tokenizer.ggml.add_bos_token", true);
    gguf_set_val_bool(g, "tokenizer.ggml.add_eos_token", false);
    gguf_set_val_bool(g, "tokenizer.ggml.add_space_prefix", true);
    gguf_set_val_str(g, "tokenizer.chat_template", DEMO_CHAT_TEMPLATE);

    /* host copies of the weights, in the order llama.cpp's converter writes them */
    size_t bytes = 0;
    int n = 0;
    for (struct ggml_tensor *t = ggml_get_first_tensor(m->ctx); t; t = ggml_get_next_tensor(m->ctx, t))
        if (t->flags & GGML_TENSOR_FLAG_PARAM) {
            bytes += ggml_nbytes(t);
            n++;
        }
    struct ggml_init_params ip = {bytes + (size_t)n * ggml_tensor_overhead(), NULL, false};
    struct ggml_context *hc = ggml_init(ip);
    for (struct ggml_tensor *t = ggml_get_first_tensor(m->ctx); t; t = ggml_get_next_tensor(m->ctx, t)) {
        if (!(t->flags & GGML_TENSOR_FLAG_PARAM))
            continue;
        struct ggml_tensor *c = ggml_dup_tensor(hc, t);
        ggml_set_name(c, t->name);
        ggml_backend_tensor_get(t, c->data, 0, ggml_nbytes(t));
        gguf_add_tensor(g, c);
    }
    char *tmp;
    if (asprintf(&tmp, "%s.tmp", out) < 0)
        die("out of memory");
    if (!gguf_write_to_file(g, tmp, false))
        die("%s: write failed", tmp);
    if (rename(tmp, out) != 0)
        die("%s: %s", out, strerror(errno));
    free(tmp);
    gguf_free(g);
    ggml_free(hc);
}

/* ======================================================================== train */

struct topts {
    const char *train, *val, *spm, *out, *curve, *name;
    struct hparams hp;
    int batch, threads;
    long steps, warmup, eval_every, val_seqs;
    float lr, lr_min, wd, beta1, beta2;
    uint64_t seed;
};

struct sched_state {
    const struct topts *o;
    long step;
};

/* Linear warm-up to lr, then cosine decay to lr_min at the last step. */
static float lr_at(const struct topts *o, long step)
{
    if (step < o->warmup)
        return o->lr * (float)(step + 1) / (float)o->warmup;
    double p = (double)(step - o->warmup) / (double)(o->steps - o->warmup > 0 ? o->steps - o->warmup : 1);
    if (p > 1)
        p = 1;
    return (float)(o->lr_min + 0.5 * (o->lr - o->lr_min) * (1.0 + cos(M_PI * p)));
}

static struct ggml_opt_optimizer_params get_opt_pars(void *ud)
{
    const struct sched_state *s = ud;
    struct ggml_opt_optimizer_params p = ggml_opt_get_default_optimizer_params(NULL);
    p.adamw.alpha = lr_at(s->o, s->step);
    p.adamw.beta1 = s->o->beta1;
    p.adamw.beta2 = s->o->beta2;
    p.adamw.eps = 1e-8f;
    p.adamw.wd = s->o->wd;
    return p;
}

/* One batch into the model's inputs and the optimizer's one-hot labels. starts[b] is the stream
 * offset where sequence b's text begins (after its BOS). */
static void set_batch(ggml_opt_context_t opt, const struct model *m, const struct tokens *t,
                      const int64_t *starts, int B, int32_t *in, float *lab)
{
    const int T = m->hp.ctx, V = m->hp.vocab;
    memset(lab, 0, (size_t)T * B * V * sizeof *lab);
    for (int b = 0; b < B; b++) {
        int64_t s = starts[b];
        in[(int64_t)b * T] = 1; /* BOS */
        for (int i = 1; i < T; i++)
            in[(int64_t)b * T + i] = t->id[s + i - 1];
        for (int i = 0; i < T; i++)
            lab[((int64_t)b * T + i) * V + t->id[s + i]] = 1.0f;
    }
    ggml_backend_tensor_set(m->inputs, in, 0, (size_t)T * B * sizeof *in);
    ggml_backend_tensor_set(ggml_opt_labels(opt), lab, 0, (size_t)T * B * V * sizeof *lab);
}

static double evaluate(ggml_opt_context_t opt, const struct model *m, const struct tokens *val, int B,
                       long nseq, int32_t *in, float *lab)
{
    const int T = m->hp.ctx;
    ggml_opt_result_t res = ggml_opt_result_init();
    int64_t *starts = xmalloc(B * sizeof *starts);
    for (long s0 = 0; s0 + B <= nseq; s0 += B) {
        for (int b = 0; b < B; b++)
            starts[b] = (s0 + b) * T;
        ggml_opt_alloc(opt, false);
        set_batch(opt, m, val, starts, B, in, lab);
        ggml_opt_eval(opt, res);
    }
    double loss;
    double unc;
    ggml_opt_result_loss(res, &loss, &unc);
    ggml_opt_result_free(res);
    free(starts);
    return loss;
}

static ggml_backend_t pick_backend(int threads, bool *gpu)
{
    *gpu = false;
    if (*LYRA_BACKEND_DIR)
        ggml_backend_load_all_from_path(LYRA_BACKEND_DIR);
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU) {
            ggml_backend_t b = ggml_backend_dev_init(d, NULL);
            if (b) {
                fprintf(stderr, PROG ": training on %s\n", ggml_backend_dev_description(d));
                *gpu = true;
                return b;
            }
        }
    }
    ggml_backend_t b = ggml_backend_cpu_init();
    if (!b)
        die("no CPU backend");
    ggml_backend_cpu_set_n_threads(b, threads);
    fprintf(stderr, PROG ": training on the CPU, %d threads\n", threads);
    return b;
}

static int cmd_train(int argc, char **argv)
{
    struct topts o = {.hp = {192, 4, 6, 2, 512, 128, 0},
                      .batch = 16,
                      .threads = 2,
                      .steps = 1000,
                      .warmup = 100,
                      .eval_every = 100,
                      .val_seqs = 0,
                      .lr = 2e-3f,
                      .lr_min = 2e-4f,
                      .wd = 0.1f,
                      .beta1 = 0.9f,
                      .beta2 = 0.99f,
                      .seed = 42,
                      .name = "demo"};
    enum { O_DIM = 256, O_LAYERS, O_HEADS, O_KVH, O_FFN, O_CTX, O_BATCH, O_THREADS, O_STEPS,
           O_WARMUP, O_EVAL, O_VALSEQ, O_LR, O_LRMIN, O_WD, O_B1, O_B2, O_SEED, O_NAME, O_TRAIN,
           O_VAL, O_SPM, O_OUT, O_CURVE };
    static const struct option lo[] = {
        {"dim", 1, 0, O_DIM},        {"layers", 1, 0, O_LAYERS},   {"heads", 1, 0, O_HEADS},
        {"kv-heads", 1, 0, O_KVH},   {"ffn", 1, 0, O_FFN},         {"ctx", 1, 0, O_CTX},
        {"batch", 1, 0, O_BATCH},    {"threads", 1, 0, O_THREADS}, {"steps", 1, 0, O_STEPS},
        {"warmup", 1, 0, O_WARMUP},  {"eval-every", 1, 0, O_EVAL}, {"val-seqs", 1, 0, O_VALSEQ},
        {"lr", 1, 0, O_LR},          {"lr-min", 1, 0, O_LRMIN},    {"wd", 1, 0, O_WD},
        {"beta1", 1, 0, O_B1},       {"beta2", 1, 0, O_B2},        {"seed", 1, 0, O_SEED},
        {"name", 1, 0, O_NAME},      {"train", 1, 0, O_TRAIN},     {"val", 1, 0, O_VAL},
        {"spm", 1, 0, O_SPM},        {"out", 1, 0, O_OUT},         {"curve", 1, 0, O_CURVE},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_DIM: o.hp.dim = atoi(optarg); break;
        case O_LAYERS: o.hp.layers = atoi(optarg); break;
        case O_HEADS: o.hp.heads = atoi(optarg); break;
        case O_KVH: o.hp.kv_heads = atoi(optarg); break;
        case O_FFN: o.hp.ffn = atoi(optarg); break;
        case O_CTX: o.hp.ctx = atoi(optarg); break;
        case O_BATCH: o.batch = atoi(optarg); break;
        case O_THREADS: o.threads = atoi(optarg); break;
        case O_STEPS: o.steps = atol(optarg); break;
        case O_WARMUP: o.warmup = atol(optarg); break;
        case O_EVAL: o.eval_every = atol(optarg); break;
        case O_VALSEQ: o.val_seqs = atol(optarg); break;
        case O_LR: o.lr = strtof(optarg, NULL); break;
        case O_LRMIN: o.lr_min = strtof(optarg, NULL); break;
        case O_WD: o.wd = strtof(optarg, NULL); break;
        case O_B1: o.beta1 = strtof(optarg, NULL); break;
        case O_B2: o.beta2 = strtof(optarg, NULL); break;
        case O_SEED: o.seed = strtoull(optarg, NULL, 10); break;
        case O_NAME: o.name = optarg; break;
        case O_TRAIN: o.train = optarg; break;
        case O_VAL: o.val = optarg; break;
        case O_SPM: o.spm = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_CURVE: o.curve = optarg; break;
        default: return 2;
        }
    }
    if (!o.train || !o.val || !o.spm || !o.out)
        die("train: --train, --val, --spm and --out are required");
    const struct hparams *hp = &o.hp;
    if (hp->dim <= 0 || hp->heads <= 0 || hp->dim % hp->heads || hp->kv_heads <= 0 ||
        hp->heads % hp->kv_heads || (hp->dim / hp->heads) % 2 || hp->dim % 32 || hp->ffn % 32 ||
        hp->ctx < 8 || o.batch < 1 || o.steps < 1 || o.threads < 1 || o.eval_every < 1)
        die("train: bad shape (dim and ffn multiples of 32, heads dividing dim into even head "
            "sizes, kv-heads dividing heads)");

    char *path;
    struct vocab v;
    if (asprintf(&path, "%s.vocab", o.spm) < 0)
        die("out of memory");
    vocab_load(&v, path);
    free(path);
    o.hp.vocab = v.n;
    struct tokens tr, va;
    if (asprintf(&path, "%s.model", o.spm) < 0)
        die("out of memory");
    double t0 = now_s();
    tokenize(&tr, path, o.train, &v);
    tokenize(&va, path, o.val, &v);
    free(path);
    /* training starts: verses with a full sequence after them */
    int64_t nstart = 0;
    while (nstart < tr.nverse && tr.verse[nstart] + hp->ctx <= tr.n - 1)
        nstart++;
    long max_val = (long)((va.n - 1) / hp->ctx);
    long val_seqs = o.val_seqs > 0 && o.val_seqs < max_val ? o.val_seqs : max_val;
    val_seqs -= val_seqs % o.batch;
    if (nstart < 1 || val_seqs < o.batch)
        die("not enough text: %" PRId64 " training tokens, %" PRId64 " validation tokens", tr.n, va.n);
    fprintf(stderr,
            PROG ": vocab %d, %" PRId64 " training tokens (%" PRId64 " verses), %" PRId64
                 " validation tokens (%ld sequences scored), tokenized in %.1f s\n",
            v.n, tr.n, tr.nverse, va.n, val_seqs, now_s() - t0);

    bool gpu;
    ggml_backend_t backend = pick_backend(o.threads, &gpu);
    ggml_backend_t backends[2] = {backend, NULL};
    int nb = 1;
    if (gpu) {
        backends[1] = ggml_backend_cpu_init();
        ggml_backend_cpu_set_n_threads(backends[1], o.threads);
        nb = 2;
    }
    struct model m;
    model_create(&m, hp, o.batch, backend);
    model_init_weights(&m, o.seed);
    int64_t nparams = model_params(&m);
    fprintf(stderr, PROG ": dim %d, %d layers, %d heads (%d KV), ffn %d, ctx %d: %" PRId64 " parameters\n",
            hp->dim, hp->layers, hp->heads, hp->kv_heads, hp->ffn, hp->ctx, nparams);

    /* the forward graph, built once (static graphs: ggml-opt allocates it and its backward) */
    size_t graph_size = 16384;
    struct ggml_init_params cp = {graph_size * ggml_tensor_overhead() + 3 * ggml_graph_overhead_custom(graph_size, true),
                                  NULL, true};
    struct ggml_context *ctx_compute = ggml_init(cp);
    struct ggml_tensor *logits = model_forward(ctx_compute, &m, o.batch);
    ggml_set_name(logits, "logits");

    ggml_backend_sched_t sched = ggml_backend_sched_new(backends, NULL, nb, graph_size, false, false);
    struct sched_state ss = {&o, 0};
    struct ggml_opt_params op = ggml_opt_default_params(sched, GGML_OPT_LOSS_TYPE_CROSS_ENTROPY);
    op.ctx_compute = ctx_compute;
    op.inputs = m.inputs;
    op.outputs = logits;
    op.build_type = GGML_OPT_BUILD_TYPE_OPT;
    op.opt_period = 1;
    op.get_opt_pars = get_opt_pars;
    op.get_opt_pars_ud = &ss;
    op.optimizer = GGML_OPT_OPTIMIZER_TYPE_ADAMW;
    ggml_opt_context_t opt = ggml_opt_init(op);

    const int T = hp->ctx, B = o.batch;
    int32_t *in = xmalloc((size_t)T * B * sizeof *in);
    float *lab = xmalloc((size_t)T * B * hp->vocab * sizeof *lab);
    int64_t *starts = xmalloc(B * sizeof *starts);
    struct rng data_rng = {o.seed * 0x2545F4914F6CDD1Dull + 1};

    FILE *curve = NULL;
    if (o.curve && !(curve = fopen(o.curve, "w")))
        die("%s: %s", o.curve, strerror(errno));
    if (curve)
        fprintf(curve, "{\"params\": %" PRId64 ", \"train_tokens\": %" PRId64 ", \"val_tokens\": %" PRId64
                       ", \"val_tokens_scored\": %ld, \"vocab\": %d, \"backend\": \"%s\", \"evals\": [\n",
                nparams, tr.n, va.n, val_seqs * T, v.n, gpu ? "gpu" : "cpu");

    ggml_opt_result_t res = ggml_opt_result_init();
    double t_start = now_s(), last_val = 0;
    int evals = 0;
    for (long step = 0; step < o.steps; step++) {
        ss.step = step;
        for (int b = 0; b < B; b++)
            starts[b] = tr.verse[rng_next(&data_rng) % (uint64_t)nstart];
        ggml_opt_alloc(opt, true);
        set_batch(opt, &m, &tr, starts, B, in, lab);
        ggml_opt_eval(opt, res);
        if ((step + 1) % o.eval_every == 0 || step + 1 == o.steps) {
            double tl;
            double tunc;
            ggml_opt_result_loss(res, &tl, &tunc);
            ggml_opt_result_reset(res);
            double vl = evaluate(opt, &m, &va, B, val_seqs, in, lab);
            double el = now_s() - t_start;
            fprintf(stderr, PROG ": step %ld/%ld  lr %.2e  train %.4f  val %.4f  (%.0f s, %.0f tok/s)\n",
                    step + 1, o.steps, lr_at(&o, step), tl, vl, el, (double)(step + 1) * B * T / el);
            if (curve)
                fprintf(curve, "%s  {\"step\": %ld, \"tokens\": %" PRId64 ", \"lr\": %.6g, \"train_loss\": %.4f, "
                               "\"val_loss\": %.4f, \"elapsed_s\": %.1f}",
                        evals++ ? ",\n" : "", step + 1, (int64_t)(step + 1) * B * T, lr_at(&o, step), tl, vl, el);
            if (curve)
                fflush(curve);
            last_val = vl;
            if (!isfinite(tl) || !isfinite(vl))
                die("the loss diverged");
        }
    }
    double wall = now_s() - t_start;
    if (curve) {
        fprintf(curve, "\n], \"final_val_loss\": %.4f, \"train_wall_s\": %.0f}\n", last_val, wall);
        if (fclose(curve))
            die("%s: write error", o.curve);
    }
    export_gguf(&m, &v, o.out, o.name);
    fprintf(stderr, PROG ": final val loss %.4f after %.0f s; wrote %s\n", last_val, wall, o.out);

    ggml_opt_result_free(res);
    ggml_opt_free(opt);
    ggml_backend_sched_free(sched);
    ggml_free(ctx_compute);
    ggml_backend_buffer_free(m.buf);
    ggml_free(m.ctx);
    for (int i = 0; i < nb; i++)
        ggml_backend_free(backends[i]);
    free(in);
    free(lab);
    free(starts);
    free(m.l);
    free(tr.id);
    free(tr.verse);
    free(va.id);
    free(va.verse);
    vocab_free(&v);
    return 0;
}

/* ======================================================================== quantize */

static int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    int threads = 2;
    static const struct option lo[] = {{"in", 1, 0, 'i'}, {"out", 1, 0, 'o'}, {"threads", 1, 0, 't'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 't': threads = atoi(optarg); break;
        default: return 2;
        }
    }
    if (!in || !out)
        die("quantize: --in and --out are required");
    llama_backend_init();
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    qp.nthread = threads;
    if (llama_model_quantize(in, out, &qp) != 0)
        die("llama_model_quantize %s -> %s failed", in, out);
    llama_backend_free();
    return 0;
}

/* ======================================================================== score */

/* Mean next-token NLL of VAL.txt (verses joined by spaces) under a GGUF, through stock libllama,
 * on the same sequences as the trainer's validation loss (consecutive pieces of ctx tokens, each
 * after a BOS). With --spm, also checks that llama.cpp tokenizes the text exactly as
 * spm_encode did for training. */
static int cmd_score(int argc, char **argv)
{
    const char *model_path = NULL, *val = NULL, *spm = NULL;
    int T = 128, threads = 2;
    long seqs = 0;
    static const struct option lo[] = {{"model", 1, 0, 'm'}, {"val", 1, 0, 'v'}, {"spm", 1, 0, 's'},
                                       {"ctx", 1, 0, 'c'},   {"seqs", 1, 0, 'n'}, {"threads", 1, 0, 't'},
                                       {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'v': val = optarg; break;
        case 's': spm = optarg; break;
        case 'c': T = atoi(optarg); break;
        case 'n': seqs = atol(optarg); break;
        case 't': threads = atoi(optarg); break;
        default: return 2;
        }
    }
    if (!model_path || !val || T < 2)
        die("score: --model and --val are required");
    /* the text, verses joined by spaces */
    FILE *f = fopen(val, "r");
    if (!f)
        die("%s: %s", val, strerror(errno));
    char *text = NULL, *line = NULL;
    size_t tlen = 0, cap = 0;
    ssize_t n;
    FILE *mem = open_memstream(&text, &tlen);
    bool first = true;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        fprintf(mem, "%s%s", first ? "" : " ", line);
        first = false;
    }
    fclose(mem);
    fclose(f);
    free(line);

    llama_backend_init();
    ggml_backend_load_all_from_path(LYRA_BACKEND_DIR);
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model)
        die("%s: llama.cpp cannot load it", model_path);
    const struct llama_vocab *lv = llama_model_get_vocab(model);
    int32_t cap_tok = (int32_t)tlen + 16;
    llama_token *tok = xmalloc(cap_tok * sizeof *tok);
    int32_t ntok = llama_tokenize(lv, text, (int32_t)tlen, tok, cap_tok, false, false);
    if (ntok < 0)
        die("llama_tokenize failed");
    if (spm) {
        char *path;
        struct vocab v;
        struct tokens st;
        if (asprintf(&path, "%s.vocab", spm) < 0)
            die("out of memory");
        vocab_load(&v, path);
        free(path);
        if (asprintf(&path, "%s.model", spm) < 0)
            die("out of memory");
        tokenize(&st, path, val, &v);
        free(path);
        int64_t diff = -1;
        for (int64_t i = 0; i < st.n && i < ntok; i++)
            if (st.id[i] != tok[i]) {
                diff = i;
                break;
            }
        if (diff >= 0 || st.n != ntok)
            die("llama.cpp's tokenization differs from spm_encode's (%d vs %" PRId64
                " tokens, first difference at %" PRId64 ")", ntok, st.n, diff);
        fprintf(stderr, PROG ": llama.cpp tokenizes the text exactly as spm_encode (%d tokens)\n", ntok);
        free(st.id);
        free(st.verse);
        vocab_free(&v);
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = T;
    cp.n_batch = T;
    cp.n_ubatch = T;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *lc = llama_init_from_model(model, cp);
    if (!lc)
        die("cannot create a llama context");
    int nv = llama_vocab_n_tokens(lv);
    long max_seqs = (ntok - 1) / T;
    if (seqs <= 0 || seqs > max_seqs)
        seqs = max_seqs;
    double nll = 0;
    int64_t count = 0;
    struct llama_batch b = llama_batch_init(T, 0, 1);
    for (long s = 0; s < seqs; s++) {
        const llama_token *t = tok + s * T;
        b.n_tokens = T;
        for (int i = 0; i < T; i++) {
            b.token[i] = i == 0 ? llama_vocab_bos(lv) : t[i - 1];
            b.pos[i] = i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        llama_memory_clear(llama_get_memory(lc), true);
        if (llama_decode(lc, b) != 0)
            die("llama_decode failed");
        for (int i = 0; i < T; i++) {
            const float *lg = llama_get_logits_ith(lc, i);
            double mx = lg[0], sum = 0;
            for (int k = 1; k < nv; k++)
                if (lg[k] > mx)
                    mx = lg[k];
            for (int k = 0; k < nv; k++)
                sum += exp(lg[k] - mx);
            nll += mx + log(sum) - lg[t[i]];
            count++;
        }
    }
    printf("%.4f\n", nll / (double)count);
    fprintf(stderr, PROG ": %s: mean NLL %.4f over %" PRId64 " tokens (%ld sequences of %d)\n",
            model_path, nll / (double)count, count, seqs, T);
    llama_batch_free(b);
    llama_free(lc);
    llama_model_free(model);
    llama_backend_free();
    free(tok);
    free(text);
    return 0;
}

/* retemplate --in F --out G: F with tokenizer.chat_template set to the demo's template (the
 * metadata rewritten, every tensor's bytes kept): for a file exported before the template
 * changed, so that it matches what an export gives now without training again. */
static int cmd_retemplate(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--in") && i + 1 < argc)
            in = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else
            die("retemplate: unknown argument '%s' (--in F --out G)", argv[i]);
    }
    if (!in || !out)
        die("retemplate: --in and --out are required");
    struct ggml_context *data = NULL;
    struct gguf_init_params gp = {.no_alloc = false, .ctx = &data};
    struct gguf_context *g = gguf_init_from_file(in, gp);
    if (!g)
        die("retemplate: cannot read %s as GGUF", in);
    /* A new context: the read one's tensor infos do not point at the loaded bytes. */
    struct gguf_context *w = gguf_init_empty();
    gguf_set_kv(w, g);
    gguf_set_val_str(w, "tokenizer.chat_template", DEMO_CHAT_TEMPLATE);
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        struct ggml_tensor *t = ggml_get_tensor(data, gguf_get_tensor_name(g, i));
        if (!t)
            die("retemplate: tensor %s missing", gguf_get_tensor_name(g, i));
        gguf_add_tensor(w, t);
    }
    if (gguf_get_alignment(g) != GGUF_DEFAULT_ALIGNMENT)
        gguf_set_val_u32(w, "general.alignment", (uint32_t)gguf_get_alignment(g));
    if (!gguf_write_to_file(w, out, false))
        die("retemplate: cannot write %s", out);
    gguf_free(w);
    gguf_free(g);
    ggml_free(data);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: " PROG " prep|train|quantize|score [options]   (see tools/train/train.c)\n");
        return 2;
    }
    const char *cmd = argv[1];
    argv[1] = argv[0];
    argc--;
    argv++;
    if (!strcmp(cmd, "prep"))
        return cmd_prep(argc, argv);
    if (!strcmp(cmd, "train"))
        return cmd_train(argc, argv);
    if (!strcmp(cmd, "quantize"))
        return cmd_quantize(argc, argv);
    if (!strcmp(cmd, "score"))
        return cmd_score(argc, argv);
    if (!strcmp(cmd, "retemplate"))
        return cmd_retemplate(argc, argv);
    die("unknown command '%s' (prep, train, quantize, score, retemplate)", cmd);
}
