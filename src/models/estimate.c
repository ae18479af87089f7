/* estimate.c — memory estimates from GGUF metadata.  The formulas and what
 * they mirror in llama.cpp are in estimate.h; here tensors are summed per
 * block and the cache geometry is worked out from the attention metadata,
 * falling back to the K/V projection shapes. */
#include "models/estimate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp pads the context and each sequence's share to this many cells. */
#define KV_PAD 256u
#define F16_BYTES 2u
#define F32_BYTES 4u

static uint64_t pad_up(uint64_t v, uint64_t to)
{
    return (v + to - 1) / to * to;
}

/* The unsigned integer `<architecture>.<suffix>`, or 0 when absent or not a
 * non-negative integer. */
static uint64_t arch_uint(const struct lyra_gguf_info *info, const char *suffix)
{
    if (!info->architecture)
        return 0;
    char key[256];
    snprintf(key, sizeof key, "%s.%s", info->architecture, suffix);
    const struct lyra_gguf_kv *kv = lyra_gguf_find(info, key);
    if (!kv)
        return 0;
    switch (kv->type) {
    case LYRA_GGUF_TYPE_UINT8:
    case LYRA_GGUF_TYPE_UINT16:
    case LYRA_GGUF_TYPE_UINT32:
    case LYRA_GGUF_TYPE_UINT64:
        return kv->v.u;
    case LYRA_GGUF_TYPE_INT8:
    case LYRA_GGUF_TYPE_INT16:
    case LYRA_GGUF_TYPE_INT32:
    case LYRA_GGUF_TYPE_INT64:
        return kv->v.i > 0 ? (uint64_t)kv->v.i : 0;
    default:
        return 0;
    }
}

/* The block number of a "blk.N.*" tensor name, or -1. */
static long block_of(const char *name)
{
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    char *end;
    long n = strtol(name + 4, &end, 10);
    return end != name + 4 && *end == '.' && n >= 0 ? n : -1;
}

static const struct lyra_gguf_tensor *find_tensor(const struct lyra_gguf_info *info, const char *name)
{
    for (size_t i = 0; i < info->n_tensors; i++)
        if (strcmp(info->tensors[i].name, name) == 0)
            return &info->tensors[i];
    return NULL;
}

/* Architectures whose llama.cpp context has no KV cache (create_memory()
 * returns none for them: encoders and diffusion models). */
static bool has_no_cache(const char *arch)
{
    static const char *const none[] = {
        "bert",     "jina-bert-v2", "jina-bert-v3",     "nomic-bert",  "nomic-bert-moe",
        "neo-bert", "eurobert",     "wavtokenizer-dec", "modern-bert", "gemma-embedding",
        "dream",    "llada",        "llada-moe",        "rnd1"};
    for (size_t i = 0; arch && i < sizeof none / sizeof *none; i++)
        if (strcmp(arch, none[i]) == 0)
            return true;
    return false;
}

/* K + V row width (elements) of block il: from the head counts when they are
 * plain numbers, else from the K and V projections' output dimension; 0 for
 * a block without attention. */
static uint64_t kv_width(const struct lyra_gguf_info *info, long il, uint64_t key_len, uint64_t val_len)
{
    if (info->head_count_kv > 0 && key_len > 0 && val_len > 0)
        return info->head_count_kv * (key_len + val_len);
    char name[LYRA_GGUF_MAX_NAME];
    snprintf(name, sizeof name, "blk.%ld.attn_k.weight", il);
    const struct lyra_gguf_tensor *k = find_tensor(info, name);
    snprintf(name, sizeof name, "blk.%ld.attn_v.weight", il);
    const struct lyra_gguf_tensor *v = find_tensor(info, name);
    if (!k || !v || k->n_dims < 2 || v->n_dims < 2)
        return 0;
    return (uint64_t)k->dims[1] + (uint64_t)v->dims[1];
}

int lyra_estimate_model(const struct lyra_gguf_info *info, int ctx_per_slot, int n_slots,
                        struct lyra_estimate *out, struct lyra_err *err)
{
    memset(out, 0, sizeof *out);
    if (ctx_per_slot < 1 || n_slots < 1)
        return lyra_err_set(err, LYRA_EINVAL, "estimate: context %d and slots %d must be at least 1",
                            ctx_per_slot, n_slots);
    if (info->block_count == 0 || info->block_count > 1u << 16)
        return lyra_err_set(err, LYRA_EUNSUPPORTED, "estimate: the model has no usable block_count");
    if (info->embedding_length == 0)
        return lyra_err_set(err, LYRA_EUNSUPPORTED, "estimate: the model has no embedding_length");

    struct lyra_estimate e = {.n_layers = (int)info->block_count, .n_slots = n_slots};
    e.layer_bytes = calloc((size_t)e.n_layers, sizeof *e.layer_bytes);
    e.layer_kv_bytes = calloc((size_t)e.n_layers, sizeof *e.layer_kv_bytes);
    if (!e.layer_bytes || !e.layer_kv_bytes) {
        lyra_estimate_clear(&e);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }

    /* Weights. */
    bool has_output = false;
    uint64_t embd_bytes = 0;
    for (size_t i = 0; i < info->n_tensors; i++) {
        const struct lyra_gguf_tensor *t = &info->tensors[i];
        e.weights_bytes += t->n_bytes;
        long il = block_of(t->name);
        if (il >= 0 && il < e.n_layers) {
            e.layer_bytes[il] += t->n_bytes;
            continue;
        }
        /* blocks past block_count (draft heads) stay with the rest */
        e.nonlayer_bytes += t->n_bytes;
        if (strcmp(t->name, "token_embd.weight") == 0)
            embd_bytes = t->n_bytes;
        if (strncmp(t->name, "output.", 7) == 0 || strncmp(t->name, "output_norm.", 12) == 0)
            e.output_bytes += t->n_bytes;
        if (strcmp(t->name, "output.weight") == 0)
            has_output = true;
    }
    if (!has_output)
        e.output_dup_bytes = embd_bytes;
    e.output_bytes += e.output_dup_bytes;
    for (int il = 0; il < e.n_layers; il++)
        if (e.layer_bytes[il] > e.layer_bytes_max)
            e.layer_bytes_max = e.layer_bytes[il];

    /* KV cache, sized as llama_context does for one stream per slot. */
    uint64_t ctx = (uint64_t)ctx_per_slot;
    if (info->context_length > 0 && ctx > info->context_length)
        ctx = info->context_length;
    e.ctx_per_slot = (int)ctx;
    uint64_t n_ctx = pad_up(ctx * (uint64_t)n_slots, KV_PAD);
    uint64_t cells = pad_up(n_ctx / (uint64_t)n_slots, KV_PAD) * (uint64_t)n_slots;
    e.kv_cells = cells > UINT32_MAX ? UINT32_MAX : (uint32_t)cells;
    if (!has_no_cache(info->architecture)) {
        uint64_t head_dim = info->head_count > 0 ? info->embedding_length / info->head_count : 0;
        uint64_t key_len = arch_uint(info, "attention.key_length");
        uint64_t val_len = arch_uint(info, "attention.value_length");
        if (!key_len)
            key_len = head_dim;
        if (!val_len)
            val_len = head_dim;
        for (int il = 0; il < e.n_layers; il++) {
            e.layer_kv_bytes[il] = cells * kv_width(info, il, key_len, val_len) * F16_BYTES;
            e.kv_bytes += e.layer_kv_bytes[il];
        }
    }

    /* Compute buffers (estimate.h). */
    uint64_t n_embd = info->embedding_length;
    uint64_t n_ff = info->feed_forward_length ? info->feed_forward_length : 4 * n_embd;
    uint64_t n_vocab = info->vocab_size;
    if (!n_vocab) {
        const struct lyra_gguf_tensor *t =
            find_tensor(info, has_output ? "output.weight" : "token_embd.weight");
        n_vocab = t && t->n_dims >= 2 ? (uint64_t)t->dims[1] : 0;
    }
    e.logits_bytes = (uint64_t)LYRA_ESTIMATE_UBATCH * n_vocab * F32_BYTES;
    e.compute_bytes = e.logits_bytes + (uint64_t)LYRA_ESTIMATE_UBATCH * (4 * n_embd + 2 * n_ff) * F32_BYTES;
    e.host_output_bytes = (uint64_t)n_slots * n_vocab * F32_BYTES;
    *out = e;
    return 0;
}

void lyra_estimate_clear(struct lyra_estimate *e)
{
    if (!e)
        return;
    free(e->layer_bytes);
    free(e->layer_kv_bytes);
    memset(e, 0, sizeof *e);
}

/* gpu_layers as llama.cpp reads it: negative = all, at most n_layers + 1. */
static int normalise(const struct lyra_estimate *e, int gpu_layers)
{
    return gpu_layers < 0 || gpu_layers > e->n_layers + 1 ? e->n_layers + 1 : gpu_layers;
}

/* Blocks [first, n_layers) are on the device: llama.cpp offloads from the
 * top (i_gpu_start = n_layer + 1 - n_gpu_layers). */
static int first_device_block(const struct lyra_estimate *e, int g)
{
    return g == 0 ? e->n_layers : e->n_layers + 1 - g;
}

uint64_t lyra_estimate_host_bytes(const struct lyra_estimate *e, int gpu_layers)
{
    int g = normalise(e, gpu_layers);
    int first = first_device_block(e, g);
    /* the output's own tensors leave the host with it; a tied output's
     * embedding stays (it is the input too) */
    uint64_t b = e->nonlayer_bytes - (g > 0 ? e->output_bytes - e->output_dup_bytes : 0);
    for (int il = 0; il < first; il++)
        b += e->layer_bytes[il] + e->layer_kv_bytes[il];
    uint64_t activations = e->compute_bytes - e->logits_bytes;
    if (first > 0)
        b += activations; /* some block runs on the CPU */
    if (g == 0)
        b += e->logits_bytes;
    return b + e->host_output_bytes;
}

uint64_t lyra_estimate_device_bytes(const struct lyra_estimate *e, int gpu_layers)
{
    int g = normalise(e, gpu_layers);
    if (g == 0)
        return 0;
    uint64_t b = e->output_bytes + e->compute_bytes + LYRA_ESTIMATE_DEVICE_RUNTIME;
    for (int il = first_device_block(e, g); il < e->n_layers; il++)
        b += e->layer_bytes[il] + e->layer_kv_bytes[il];
    return b;
}

int lyra_estimate_fit_layers(const struct lyra_estimate *e, uint64_t device_free, uint64_t reserve)
{
    if (reserve >= device_free)
        return 0;
    uint64_t room = device_free - reserve;
    /* device bytes grow with every layer: the first that fits from the top */
    for (int g = e->n_layers + 1; g > 0; g--)
        if (lyra_estimate_device_bytes(e, g) <= room)
            return g;
    return 0;
}

json_t *lyra_estimate_to_json(const struct lyra_estimate *e, int gpu_layers)
{
    int g = normalise(e, gpu_layers);
    return json_pack("{s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "gpu_layers", g,
                     "n_layers", e->n_layers, "ctx_per_slot", e->ctx_per_slot, "n_slots", e->n_slots,
                     "kv_cells", (json_int_t)e->kv_cells, "weights_bytes", (json_int_t)e->weights_bytes,
                     "kv_bytes", (json_int_t)e->kv_bytes, "compute_bytes", (json_int_t)e->compute_bytes,
                     "layer_bytes_max", (json_int_t)e->layer_bytes_max, "nonlayer_bytes",
                     (json_int_t)e->nonlayer_bytes, "output_bytes", (json_int_t)e->output_bytes, "host_bytes",
                     (json_int_t)lyra_estimate_host_bytes(e, g), "device_bytes",
                     (json_int_t)lyra_estimate_device_bytes(e, g));
}
