/* estimate.h — how much memory a model will take, host RAM and GPU memory,
 * before it is loaded, from its GGUF metadata alone (models/gguf.h).
 *
 * The numbers mirror what the pinned llama.cpp allocates for a worker
 * started with the daemon's arguments (src/worker/engine.c), as read from
 * llama-model.cpp, llama-kv-cache.cpp and llama-context.cpp:
 *
 *  - weights: every tensor's bytes, split per block (`blk.N.*`) and the rest
 *    (token_embd, output, output_norm, ...).
 *  - KV cache: f16 K and V (2 bytes), per attention layer
 *        cells x (n_embd_k_gqa + n_embd_v_gqa) x 2
 *    where n_embd_k_gqa = head_count_kv x key_length (key_length defaults to
 *    embedding_length / head_count; value_length likewise), or the shape of
 *    blk.N.attn_k / attn_v when the head counts are not plain numbers.  The
 *    worker's context is per slot (--ctx, capped at the model's
 *    context_length) and one llama sequence per slot, not unified:
 *        n_ctx     = pad256(ctx_per_slot x n_slots)
 *        n_ctx_seq = pad256(n_ctx / n_slots),  cells = n_ctx_seq x n_slots
 *    (with --kv-unified llama.cpp uses pad256(n_ctx) cells, never more, so
 *    the estimate holds for both).  Sliding-window layers are counted as
 *    full ones (an over-estimate).  Encoder-only models (bert & co.) have no
 *    cache; layers without attention tensors count none.
 *  - compute buffers, an approximation (flash attention on, as llama.cpp's
 *    "auto" picks on CPU and CUDA): the worst-case graph is reserved for one
 *    micro-batch of LYRA_ESTIMATE_UBATCH tokens with all of them as outputs,
 *        logits      = ubatch x n_vocab x 4
 *        activations = ubatch x (4 x n_embd + 2 x n_ff) x 4
 *    plus the host's output buffer, n_slots x n_vocab x 4.  On tiny this is
 *    65 MiB against the 63 MiB llama.cpp reports (docs/gpu.md has the
 *    measurements).
 *
 * Placement follows llama.cpp's n_gpu_layers exactly: the input embedding
 * always stays on the CPU; gpu_layers = g offloads the OUTPUT layer first and
 * then the last g - 1 blocks, so g = n_layers + 1 is everything and g = 1 is
 * the output layer alone.  A device holding anything also holds the compute
 * buffers and the backend's own runtime (LYRA_ESTIMATE_DEVICE_RUNTIME: the
 * CUDA context, cuBLAS workspace, memory pool), and each offloaded block
 * takes its KV cache along (offload_kqv).  When the output is tied to the
 * token embedding llama.cpp loads a second copy of it for the device.
 *
 * Thread-safety: all functions are thread-safe; an estimate is plain data
 * that may be read from any thread. */
#ifndef LYRA_ESTIMATE_H
#define LYRA_ESTIMATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "models/gguf.h"

/* The worker's default micro-batch (--ubatch), which sizes the compute
 * buffers. */
#define LYRA_ESTIMATE_UBATCH 512
/* What a GPU backend takes on a device beyond ggml's buffers once it is used
 * at all (CUDA context, cuBLAS, ggml's pool): an approximation to calibrate
 * with bench/gpu-check.sh. */
#define LYRA_ESTIMATE_DEVICE_RUNTIME (256ull << 20)

struct lyra_estimate {
    int n_layers;               /* block_count */
    uint64_t layer_bytes_max;   /* largest blk.N.* weight sum */
    uint64_t *layer_bytes;      /* n_layers entries: blk.N.* weights (owned; lyra_estimate_clear frees) */
    uint64_t *layer_kv_bytes;   /* n_layers entries: that layer's share of kv_bytes (owned) */
    uint64_t nonlayer_bytes;    /* every tensor not in a block: token_embd, output, output_norm, ... */
    uint64_t output_bytes;      /* what moves to the device with the output layer (output*, output_norm*,
                                 * plus output_dup_bytes) */
    uint64_t output_dup_bytes;  /* token_embd again when the output is tied to it; else 0 */
    uint64_t weights_bytes;     /* all tensors */
    uint64_t kv_bytes;          /* whole KV cache for kv_cells */
    uint64_t compute_bytes;     /* compute buffers, approx: logits_bytes + activation bytes */
    uint64_t logits_bytes;      /* the part of compute_bytes that goes with the output layer */
    uint64_t host_output_bytes; /* llama's output buffer, always in host memory */
    uint32_t kv_cells;          /* cells in all the KV streams together */
    int ctx_per_slot;           /* after the cap at the model's context_length */
    int n_slots;
};

/* Estimates a model for `n_slots` slots of `ctx_per_slot` tokens (the
 * worker's --ctx and --parallel).  info is borrowed.  Returns 0 with *out
 * filled (release it with lyra_estimate_clear), LYRA_EINVAL for a context or
 * slot count below 1, LYRA_EUNSUPPORTED when the metadata lacks what the
 * estimate needs (block_count, embedding_length), LYRA_ENOMEM; err says
 * why.  On failure *out holds nothing to clear. */
int lyra_estimate_model(const struct lyra_gguf_info *info, int ctx_per_slot, int n_slots,
                        struct lyra_estimate *out, struct lyra_err *err);

/* Frees the arrays of an estimate and zeroes it; a zeroed estimate or NULL
 * is a no-op. */
void lyra_estimate_clear(struct lyra_estimate *e);

/* Host RAM the worker needs with gpu_layers offloaded (llama.cpp's
 * n_gpu_layers; -1 or anything above n_layers + 1 means all): the input
 * embedding, the blocks and KV left on the CPU, the output layer when it is
 * not offloaded (unless tied: the embedding's pages serve both), the CPU
 * compute buffer and the output buffer.  Weights are mmap'ed, so this is
 * what the worker's RSS grows to once every weight has been read. */
uint64_t lyra_estimate_host_bytes(const struct lyra_estimate *e, int gpu_layers);

/* GPU memory the worker needs with gpu_layers offloaded (same meaning as
 * above): 0 for 0, else the output layer, the last gpu_layers - 1 blocks
 * with their KV cache, the compute buffers and LYRA_ESTIMATE_DEVICE_RUNTIME.
 * Non-decreasing in gpu_layers.  Layers split over several devices are not
 * modelled: this is one device's need. */
uint64_t lyra_estimate_device_bytes(const struct lyra_estimate *e, int gpu_layers);

/* The largest gpu_layers in 0..n_layers + 1 whose device bytes fit in
 * device_free - reserve; 0 when nothing fits (or reserve >= device_free),
 * n_layers + 1 when everything does. */
int lyra_estimate_fit_layers(const struct lyra_estimate *e, uint64_t device_free, uint64_t reserve);

/* {"gpu_layers", "n_layers", "ctx_per_slot", "n_slots", "kv_cells", "weights_bytes", "kv_bytes",
 *  "compute_bytes", "layer_bytes_max", "nonlayer_bytes", "output_bytes", "host_bytes",
 *  "device_bytes"} for the given split (gpu_layers normalised to 0..n_layers + 1).  New reference
 * (caller decrefs), NULL when out of memory. */
json_t *lyra_estimate_to_json(const struct lyra_estimate *e, int gpu_layers);

#endif
