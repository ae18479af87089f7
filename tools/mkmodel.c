/*
 * lyra-mkmodel: write a llama-architecture GGUF test model with random weights and a real
 * tokenizer.
 *
 * Lyra's tests and benchmarks need models that llama.cpp loads and runs like real ones (same
 * shapes, same kernels, same tokenizer code paths) without downloading anything. The weights here
 * are drawn from a seeded PRNG, so the text they generate is nonsense, but the tokenizer is real:
 * every tokenizer.* key is copied from a vocab-only GGUF (llama.cpp ships them as
 * models/ggml-vocab-*.gguf). Same arguments give a byte-identical file.
 *
 * The file is written in one pass without holding the model in memory. Tensor offsets depend only
 * on shapes and types, so the header (KV pairs and tensor infos) is written first; then each
 * tensor is generated and converted in chunks of rows and appended, padded to the GGUF alignment
 * exactly as gguf_write_to_file would pad it. The output goes to "<out>.tmp", is fsync'ed and is
 * renamed into place, so a reader never sees a half-written model.
 *
 * Links only ggml-base (gguf, ggml_quantize_chunk) and libm.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf, M_PI */
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
#include <sys/stat.h>
#include <unistd.h>

#include "ggml.h"
#include "gguf.h"

#define PROG "lyra-mkmodel"

/* Values in the ChatML format, which llama_chat_apply_template detects by "<|im_start|>". */
static const char CHATML_TEMPLATE[] =
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Fixed hyper-parameters: those of Llama 2 / SmolLM. Nothing in Lyra needs them to vary. */
#define RMS_EPS   1e-5f
#define ROPE_BASE 10000.0f
#define W_STDDEV  0.02  /* matrices: N(0, 0.02), the usual initialiser scale */
#define N_STDDEV  0.02  /* norm weights: 1 + N(0, 0.02) */

/* Elements generated per chunk while streaming a tensor (4 MiB of F32). */
#define CHUNK_ELEMS (1 << 20)

struct preset {
    const char *name;
    long dim, layers, heads, kv_heads, ffn, ctx;
    enum ggml_type type;
    bool tied;
    const char *vocab; /* default vocab path, relative to the repository root */
};

/* Both presets tie the output to the token embeddings: tiny is then the
 * ~4.5M-parameter model the tests expect. */
static const struct preset PRESETS[] = {
    {"tiny", 128, 2, 2, 1, 384, 2048, GGML_TYPE_Q8_0, true,
     "deps/llama/share/vocab/ggml-vocab-llama-spm.gguf"},
    /* SmolLM-135M's shape, embeddings tied like the original. */
    {"small", 576, 30, 9, 3, 1536, 2048, GGML_TYPE_Q8_0, true,
     "deps/llama/share/vocab/ggml-vocab-starcoder.gguf"},
};

struct wtype {
    const char *name;
    enum ggml_type type;
    uint32_t ftype; /* llama_ftype written to general.file_type */
};

/* ftype values are llama.h's LLAMA_FTYPE_ALL_F32, _MOSTLY_F16, _MOSTLY_Q4_0, _MOSTLY_Q8_0;
 * mkmodel does not link libllama, so they are spelled out here. */
static const struct wtype WTYPES[] = {
    {"f32", GGML_TYPE_F32, 0},
    {"f16", GGML_TYPE_F16, 1},
    {"q4_0", GGML_TYPE_Q4_0, 2},
    {"q8_0", GGML_TYPE_Q8_0, 7},
};

/* Command line; -1 / NULL means "not given", so a preset can fill it in. */
struct opts {
    const char *vocab, *out, *name, *chat_template, *preset;
    long dim, layers, heads, kv_heads, ffn, ctx;
    int wtype; /* index into WTYPES */
    int tied;
    uint64_t seed;
};

enum tkind { T_NORM, T_MATRIX };

struct tspec {
    char name[GGML_MAX_NAME];
    int64_t ne0, ne1; /* ne1 == 1 for vectors */
    enum ggml_type type;
    enum tkind kind;
};

static int errorf(const char *fmt, ...)
{
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " --out FILE [--preset tiny|small] [--vocab VOCAB.gguf]\n"
            "       [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N] [--ctx N]\n"
            "       [--type q8_0|q4_0|f16|f32] [--seed N] [--name NAME]\n"
            "       [--chat-template chatml|none|FILE] [--tied|--untied]\n"
            "\n"
            "Writes a llama-architecture GGUF with seeded random weights and the tokenizer of\n"
            "VOCAB.gguf. Without --preset the tiny preset is used; explicit options override\n"
            "the preset. Preset vocab paths are relative to the current directory.\n"
            "  tiny:  dim 128, 2 layers, 2 heads, 1 KV head, ffn 384, q8_0, untied, llama-spm\n"
            "  small: dim 576, 30 layers, 9 heads, 3 KV heads, ffn 1536, q8_0, tied, starcoder\n");
}

/* ---- deterministic random numbers: splitmix64 + Box-Muller, no libc rand ---- */

struct rng {
    uint64_t s;
    double spare;
    bool has_spare;
};

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Each tensor gets its own stream, derived from the seed and its index, so a tensor's values do
 * not depend on how much was drawn before it. */
static void rng_init(struct rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t s = seed ^ (stream * 0xD1B54A32D192ED03ull);
    r->s = splitmix64(&s);
    r->has_spare = false;
}

static double rng_normal(struct rng *r)
{
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    /* u1 in (0, 1] keeps log() finite; u2 in [0, 1). */
    double u1 = (double)((splitmix64(&r->s) >> 11) + 1) * 0x1p-53;
    double u2 = (double)(splitmix64(&r->s) >> 11) * 0x1p-53;
    double m = sqrt(-2.0 * log(u1));
    double a = 2.0 * M_PI * u2;
    r->spare = m * sin(a);
    r->has_spare = true;
    return m * cos(a);
}

/* ---- option parsing ---- */

static int parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return errorf("%s: expected an integer in [%ld, %ld], got '%s'", opt, min, max, s);
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    enum { O_VOCAB = 256, O_OUT, O_PRESET, O_DIM, O_LAYERS, O_HEADS, O_KV_HEADS, O_FFN, O_CTX,
           O_TYPE, O_SEED, O_NAME, O_TEMPLATE, O_TIED, O_UNTIED, O_HELP };
    static const struct option longopts[] = {
        {"vocab", required_argument, NULL, O_VOCAB},
        {"out", required_argument, NULL, O_OUT},
        {"preset", required_argument, NULL, O_PRESET},
        {"dim", required_argument, NULL, O_DIM},
        {"layers", required_argument, NULL, O_LAYERS},
        {"heads", required_argument, NULL, O_HEADS},
        {"kv-heads", required_argument, NULL, O_KV_HEADS},
        {"ffn", required_argument, NULL, O_FFN},
        {"ctx", required_argument, NULL, O_CTX},
        {"type", required_argument, NULL, O_TYPE},
        {"seed", required_argument, NULL, O_SEED},
        {"name", required_argument, NULL, O_NAME},
        {"chat-template", required_argument, NULL, O_TEMPLATE},
        {"tied", no_argument, NULL, O_TIED},
        {"untied", no_argument, NULL, O_UNTIED},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const long big = 1L << 20;

    *o = (struct opts){.dim = -1, .layers = -1, .heads = -1, .kv_heads = -1, .ffn = -1,
                       .ctx = -1, .wtype = -1, .tied = -1, .seed = 42};
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":h", longopts, NULL);
        if (c == -1)
            break;
        int rc = 0;
        switch (c) {
        case O_VOCAB: o->vocab = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_PRESET: o->preset = optarg; break;
        case O_DIM: rc = parse_long("--dim", optarg, 1, big, &o->dim); break;
        case O_LAYERS: rc = parse_long("--layers", optarg, 1, 4096, &o->layers); break;
        case O_HEADS: rc = parse_long("--heads", optarg, 1, 4096, &o->heads); break;
        case O_KV_HEADS: rc = parse_long("--kv-heads", optarg, 1, 4096, &o->kv_heads); break;
        case O_FFN: rc = parse_long("--ffn", optarg, 1, big, &o->ffn); break;
        case O_CTX: rc = parse_long("--ctx", optarg, 1, INT32_MAX, &o->ctx); break;
        case O_TYPE:
            o->wtype = -1;
            for (size_t i = 0; i < sizeof WTYPES / sizeof WTYPES[0]; i++)
                if (strcmp(optarg, WTYPES[i].name) == 0)
                    o->wtype = (int)i;
            if (o->wtype < 0)
                rc = errorf("--type: unknown type '%s' (expected q8_0, q4_0, f16 or f32)", optarg);
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end || optarg[0] == '-')
                rc = errorf("--seed: expected an unsigned integer, got '%s'", optarg);
            o->seed = v;
            break;
        }
        case O_NAME: o->name = optarg; break;
        case O_TEMPLATE: o->chat_template = optarg; break;
        case O_TIED: o->tied = 1; break;
        case O_UNTIED: o->tied = 0; break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        case ':': rc = errorf("option %s needs an argument", argv[optind - 1]); break;
        default: rc = errorf("unknown option '%s' (see --help)", argv[optind - 1]); break;
        }
        if (rc)
            return rc;
    }
    if (optind < argc)
        return errorf("unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->out)
        return errorf("--out is required (see --help)");

    const struct preset *p = NULL;
    const char *pname = o->preset ? o->preset : "tiny";
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (strcmp(pname, PRESETS[i].name) == 0)
            p = &PRESETS[i];
    if (!p)
        return errorf("--preset: unknown preset '%s' (expected tiny or small)", pname);

    if (o->dim < 0) o->dim = p->dim;
    if (o->layers < 0) o->layers = p->layers;
    if (o->heads < 0) o->heads = p->heads;
    if (o->kv_heads < 0) o->kv_heads = p->kv_heads;
    if (o->ffn < 0) o->ffn = p->ffn;
    if (o->ctx < 0) o->ctx = p->ctx;
    if (o->tied < 0) o->tied = p->tied;
    if (o->wtype < 0)
        for (size_t i = 0; i < sizeof WTYPES / sizeof WTYPES[0]; i++)
            if (WTYPES[i].type == p->type)
                o->wtype = (int)i;
    if (!o->vocab) o->vocab = p->vocab;
    if (!o->name) o->name = p->name;
    if (!o->chat_template) o->chat_template = "chatml";
    return 0;
}

static int check_shapes(const struct opts *o)
{
    if (o->dim % o->heads)
        return errorf("--dim %ld is not divisible by --heads %ld", o->dim, o->heads);
    if (o->heads % o->kv_heads)
        return errorf("--heads %ld is not divisible by --kv-heads %ld", o->heads, o->kv_heads);
    if ((o->dim / o->heads) % 2)
        return errorf("head size %ld (dim / heads) must be even for RoPE", o->dim / o->heads);
    enum ggml_type t = WTYPES[o->wtype].type;
    long blk = (long)ggml_blck_size(t);
    /* Quantized rows are whole blocks; rows are dim long except ffn_down's, which are ffn long. */
    if (o->dim % blk)
        return errorf("--dim %ld is not a multiple of %s's block size %ld", o->dim,
                      WTYPES[o->wtype].name, blk);
    if (o->ffn % blk)
        return errorf("--ffn %ld is not a multiple of %s's block size %ld", o->ffn,
                      WTYPES[o->wtype].name, blk);
    return 0;
}

/* ---- metadata ---- */

/* Copies one KV pair, of any type gguf supports, from src to dst under the same key. */
static int copy_kv(struct gguf_context *dst, const struct gguf_context *src, int64_t id)
{
    const char *key = gguf_get_key(src, id);
    switch (gguf_get_kv_type(src, id)) {
    case GGUF_TYPE_UINT8: gguf_set_val_u8(dst, key, gguf_get_val_u8(src, id)); break;
    case GGUF_TYPE_INT8: gguf_set_val_i8(dst, key, gguf_get_val_i8(src, id)); break;
    case GGUF_TYPE_UINT16: gguf_set_val_u16(dst, key, gguf_get_val_u16(src, id)); break;
    case GGUF_TYPE_INT16: gguf_set_val_i16(dst, key, gguf_get_val_i16(src, id)); break;
    case GGUF_TYPE_UINT32: gguf_set_val_u32(dst, key, gguf_get_val_u32(src, id)); break;
    case GGUF_TYPE_INT32: gguf_set_val_i32(dst, key, gguf_get_val_i32(src, id)); break;
    case GGUF_TYPE_FLOAT32: gguf_set_val_f32(dst, key, gguf_get_val_f32(src, id)); break;
    case GGUF_TYPE_UINT64: gguf_set_val_u64(dst, key, gguf_get_val_u64(src, id)); break;
    case GGUF_TYPE_INT64: gguf_set_val_i64(dst, key, gguf_get_val_i64(src, id)); break;
    case GGUF_TYPE_FLOAT64: gguf_set_val_f64(dst, key, gguf_get_val_f64(src, id)); break;
    case GGUF_TYPE_BOOL: gguf_set_val_bool(dst, key, gguf_get_val_bool(src, id)); break;
    case GGUF_TYPE_STRING: gguf_set_val_str(dst, key, gguf_get_val_str(src, id)); break;
    case GGUF_TYPE_ARRAY: {
        size_t n = gguf_get_arr_n(src, id);
        enum gguf_type at = gguf_get_arr_type(src, id);
        if (at == GGUF_TYPE_STRING) {
            const char **v = malloc((n ? n : 1) * sizeof *v);
            if (!v)
                return errorf("out of memory copying '%s'", key);
            for (size_t i = 0; i < n; i++)
                v[i] = gguf_get_arr_str(src, id, i);
            gguf_set_arr_str(dst, key, v, n);
            free(v);
        } else if (at == GGUF_TYPE_ARRAY) {
            return errorf("vocab key '%s' is a nested array, which gguf cannot copy", key);
        } else {
            gguf_set_arr_data(dst, key, at, gguf_get_arr_data(src, id), n);
        }
        break;
    }
    default: return errorf("vocab key '%s' has unknown type %d", key, gguf_get_kv_type(src, id));
    }
    return 0;
}

/* Reads a whole file into a NUL-terminated buffer; caller frees. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* Fills `out` with the model's KV pairs; returns the vocabulary size, or -1. */
static long set_metadata(struct gguf_context *out, const struct gguf_context *vocab,
                         const struct opts *o)
{
    int64_t tok = gguf_find_key(vocab, "tokenizer.ggml.tokens");
    if (tok < 0 || gguf_get_kv_type(vocab, tok) != GGUF_TYPE_ARRAY ||
        gguf_get_arr_type(vocab, tok) != GGUF_TYPE_STRING || gguf_get_arr_n(vocab, tok) == 0)
        return errorf("%s: no tokenizer.ggml.tokens string array; not a vocab GGUF?", o->vocab);
    size_t n_vocab = gguf_get_arr_n(vocab, tok);
    if (n_vocab > INT32_MAX)
        return errorf("%s: vocabulary of %zu tokens is too large", o->vocab, n_vocab);

    const long head_dim = o->dim / o->heads;
    gguf_set_val_str(out, "general.architecture", "llama");
    gguf_set_val_str(out, "general.name", o->name);
    gguf_set_val_u32(out, "general.file_type", WTYPES[o->wtype].ftype);
    gguf_set_val_u32(out, "general.quantization_version", GGML_QNT_VERSION);
    gguf_set_val_u32(out, "llama.context_length", (uint32_t)o->ctx);
    gguf_set_val_u32(out, "llama.embedding_length", (uint32_t)o->dim);
    gguf_set_val_u32(out, "llama.block_count", (uint32_t)o->layers);
    gguf_set_val_u32(out, "llama.feed_forward_length", (uint32_t)o->ffn);
    gguf_set_val_u32(out, "llama.attention.head_count", (uint32_t)o->heads);
    gguf_set_val_u32(out, "llama.attention.head_count_kv", (uint32_t)o->kv_heads);
    gguf_set_val_u32(out, "llama.rope.dimension_count", (uint32_t)head_dim);
    gguf_set_val_f32(out, "llama.attention.layer_norm_rms_epsilon", RMS_EPS);
    gguf_set_val_f32(out, "llama.rope.freq_base", ROPE_BASE);
    gguf_set_val_u32(out, "llama.vocab_size", (uint32_t)n_vocab);

    for (int64_t i = 0; i < gguf_get_n_kv(vocab); i++)
        if (strncmp(gguf_get_key(vocab, i), "tokenizer.", 10) == 0 && copy_kv(out, vocab, i))
            return -1;

    /* The vocab's own template, if any, is replaced: tests depend on knowing which one is set. */
    const char *ct = o->chat_template;
    if (strcmp(ct, "none") == 0) {
        gguf_remove_key(out, "tokenizer.chat_template");
    } else if (strcmp(ct, "chatml") == 0) {
        gguf_set_val_str(out, "tokenizer.chat_template", CHATML_TEMPLATE);
    } else {
        char *text = read_file(ct);
        if (!text)
            return errorf("--chat-template: cannot read '%s': %s", ct, strerror(errno));
        gguf_set_val_str(out, "tokenizer.chat_template", text);
        free(text);
    }
    return (long)n_vocab;
}

/* ---- tensors ---- */

static void add_spec(struct tspec *t, size_t *n, enum tkind kind, enum ggml_type type,
                     int64_t ne0, int64_t ne1, const char *fmt, int layer)
{
    struct tspec *s = &t[(*n)++];
    snprintf(s->name, sizeof s->name, fmt, layer);
    s->kind = kind;
    s->type = kind == T_NORM ? GGML_TYPE_F32 : type;
    s->ne0 = ne0;
    s->ne1 = ne1;
}

/* Lists the tensors llama.cpp's LLM_ARCH_LLAMA loader expects, with ggml's shapes (ne0 is the
 * row length, i.e. the input dimension of a matrix). Returns the count; `t` holds 3 + 9*layers. */
static size_t list_tensors(struct tspec *t, const struct opts *o, long n_vocab)
{
    const enum ggml_type wt = WTYPES[o->wtype].type;
    const int64_t dim = o->dim, ffn = o->ffn;
    const int64_t kv_dim = dim / o->heads * o->kv_heads;
    size_t n = 0;

    add_spec(t, &n, T_MATRIX, wt, dim, n_vocab, "token_embd.weight", 0);
    for (int l = 0; l < o->layers; l++) {
        add_spec(t, &n, T_NORM, wt, dim, 1, "blk.%d.attn_norm.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, dim, "blk.%d.attn_q.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, kv_dim, "blk.%d.attn_k.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, kv_dim, "blk.%d.attn_v.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, dim, "blk.%d.attn_output.weight", l);
        add_spec(t, &n, T_NORM, wt, dim, 1, "blk.%d.ffn_norm.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, ffn, "blk.%d.ffn_gate.weight", l);
        add_spec(t, &n, T_MATRIX, wt, dim, ffn, "blk.%d.ffn_up.weight", l);
        add_spec(t, &n, T_MATRIX, wt, ffn, dim, "blk.%d.ffn_down.weight", l);
    }
    add_spec(t, &n, T_NORM, wt, dim, 1, "output_norm.weight", 0);
    if (!o->tied)
        add_spec(t, &n, T_MATRIX, wt, dim, n_vocab, "output.weight", 0);
    return n;
}

static int write_zeros(FILE *f, size_t n)
{
    static const char zeros[64];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        if (fwrite(zeros, 1, k, f) != k)
            return -1;
        n -= k;
    }
    return 0;
}

/* Generates tensor `idx` chunk by chunk, converts it to its type and appends it to `f` (named
 * `path` in messages), padded to `align`. The scratch buffers hold one chunk each. */
static int write_tensor(FILE *f, const char *path, const struct tspec *s, uint64_t seed,
                        uint64_t idx, size_t align, float *src, void *dst)
{
    struct rng r;
    rng_init(&r, seed, idx + 1);
    const int64_t rows_per_chunk = s->ne0 >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / s->ne0;
    const size_t row_size = ggml_row_size(s->type, s->ne0);
    size_t written = 0;

    for (int64_t row = 0; row < s->ne1; row += rows_per_chunk) {
        int64_t nrows = s->ne1 - row < rows_per_chunk ? s->ne1 - row : rows_per_chunk;
        int64_t n = nrows * s->ne0;
        for (int64_t i = 0; i < n; i++)
            src[i] = s->kind == T_NORM ? (float)(1.0 + N_STDDEV * rng_normal(&r))
                                       : (float)(W_STDDEV * rng_normal(&r));
        const void *out = src;
        size_t nbytes = (size_t)n * sizeof(float);
        if (s->type != GGML_TYPE_F32) {
            nbytes = ggml_quantize_chunk(s->type, src, dst, 0, nrows, s->ne0, NULL);
            if (nbytes != (size_t)nrows * row_size)
                return errorf("internal error: %s: converted %zu bytes, expected %zu", s->name,
                              nbytes, (size_t)nrows * row_size);
            out = dst;
        }
        if (fwrite(out, 1, nbytes, f) != nbytes)
            return errorf("writing '%s' failed: %s", path, strerror(errno));
        written += nbytes;
    }
    if (write_zeros(f, (align - written % align) % align))
        return errorf("writing '%s' failed: %s", path, strerror(errno));
    return 0;
}

/* Creates the missing directories above `path` (like mkdir -p of its dirname). */
static int make_parent_dirs(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -1;
    for (char *c = p + 1; *c; c++) {
        if (*c != '/')
            continue;
        *c = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            free(p);
            errno = e;
            return -1;
        }
        *c = '/';
    }
    free(p);
    return 0;
}

/* Writes the whole model to `tmp`: header from `gctx`, then every tensor in `specs`. */
static int write_model(const char *tmp, const struct gguf_context *gctx, const struct tspec *specs,
                       size_t n_specs, uint64_t seed)
{
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return errorf("cannot create '%s': %s", tmp, strerror(errno));

    /* A chunk is CHUNK_ELEMS elements, or one row where a row is longer. */
    size_t src_elems = 0, dst_size = 0;
    for (size_t i = 0; i < n_specs; i++) {
        int64_t rows = specs[i].ne0 >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / specs[i].ne0;
        size_t elems = (size_t)rows * (size_t)specs[i].ne0;
        size_t bytes = (size_t)rows * ggml_row_size(specs[i].type, specs[i].ne0);
        src_elems = elems > src_elems ? elems : src_elems;
        dst_size = bytes > dst_size ? bytes : dst_size;
    }
    float *src = malloc(src_elems * sizeof *src);
    void *dst = malloc(dst_size);
    int rc = 0;
    if (!src || !dst) {
        rc = errorf("out of memory");
        goto out;
    }

    if (!gguf_write_to_file_ptr(gctx, f, /*only_meta=*/true)) {
        rc = errorf("writing the header of '%s' failed", tmp);
        goto out;
    }
    const off_t data_start = ftello(f);
    const size_t align = gguf_get_alignment(gctx);
    for (size_t i = 0; i < n_specs; i++) {
        /* Offsets in the header were computed by gguf from the shapes; the data must land there. */
        off_t at = ftello(f) - data_start;
        if (at != (off_t)gguf_get_tensor_offset(gctx, (int64_t)i)) {
            rc = errorf("internal error: %s at offset %jd, header says %zu", specs[i].name,
                        (intmax_t)at, gguf_get_tensor_offset(gctx, (int64_t)i));
            goto out;
        }
        if ((rc = write_tensor(f, tmp, &specs[i], seed, i, align, src, dst)))
            goto out;
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = errorf("writing '%s' failed: %s", tmp, strerror(errno));
out:
    free(src);
    free(dst);
    if (fclose(f) != 0 && rc == 0)
        rc = errorf("closing '%s' failed: %s", tmp, strerror(errno));
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o) || check_shapes(&o))
        return 2;

    if (access(o.vocab, R_OK) != 0) {
        errorf("cannot read vocab file '%s': %s", o.vocab, strerror(errno));
        return 1;
    }
    struct gguf_init_params vp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *vocab = gguf_init_from_file(o.vocab, vp);
    if (!vocab) {
        errorf("'%s' is not a valid GGUF file", o.vocab);
        return 1;
    }

    int rc = 1;
    struct gguf_context *gctx = gguf_init_empty();
    struct ggml_context *tctx = NULL;
    struct tspec *specs = NULL;
    char *tmp = NULL;

    long n_vocab = set_metadata(gctx, vocab, &o);
    if (n_vocab < 0)
        goto out;

    size_t max_specs = 3 + 9 * (size_t)o.layers;
    specs = calloc(max_specs, sizeof *specs);
    if (!specs) {
        errorf("out of memory");
        goto out;
    }
    size_t n_specs = list_tensors(specs, &o, n_vocab);

    /* gguf_add_tensor takes shapes from ggml tensors; these carry no data. */
    struct ggml_init_params ip = {
        .mem_size = ggml_tensor_overhead() * n_specs + 1024, .mem_buffer = NULL, .no_alloc = true};
    tctx = ggml_init(ip);
    if (!tctx) {
        errorf("ggml_init failed");
        goto out;
    }
    uint64_t n_params = 0;
    for (size_t i = 0; i < n_specs; i++) {
        const struct tspec *s = &specs[i];
        struct ggml_tensor *t = s->ne1 == 1 ? ggml_new_tensor_1d(tctx, s->type, s->ne0)
                                            : ggml_new_tensor_2d(tctx, s->type, s->ne0, s->ne1);
        ggml_set_name(t, s->name);
        gguf_add_tensor(gctx, t);
        n_params += (uint64_t)s->ne0 * (uint64_t)s->ne1;
    }

    if (make_parent_dirs(o.out) != 0) {
        errorf("cannot create the directory for '%s': %s", o.out, strerror(errno));
        goto out;
    }
    if (asprintf(&tmp, "%s.tmp", o.out) < 0) {
        tmp = NULL;
        errorf("out of memory");
        goto out;
    }
    if (write_model(tmp, gctx, specs, n_specs, o.seed)) {
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, o.out) != 0) {
        errorf("cannot rename '%s' to '%s': %s", tmp, o.out, strerror(errno));
        unlink(tmp);
        goto out;
    }

    struct stat st;
    if (stat(o.out, &st) != 0) {
        errorf("cannot stat '%s': %s", o.out, strerror(errno));
        goto out;
    }
    printf("%s: %" PRIu64 " params (%.2fM), %jd bytes (%.1f MiB), %s, dim %ld, %ld layers, "
           "%ld/%ld heads, ffn %ld, vocab %ld%s\n",
           o.out, n_params, (double)n_params / 1e6, (intmax_t)st.st_size,
           (double)st.st_size / (1024.0 * 1024.0), WTYPES[o.wtype].name, o.dim, o.layers, o.heads,
           o.kv_heads, o.ffn, n_vocab, o.tied ? ", tied" : "");
    rc = 0;
out:
    free(tmp);
    free(specs);
    if (tctx)
        ggml_free(tctx);
    gguf_free(gctx);
    gguf_free(vocab);
    ggml_quantize_free();
    return rc;
}
