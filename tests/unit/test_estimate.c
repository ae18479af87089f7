/* test_estimate.c — models/estimate: on the generated tiny and small models
 * (build/models, from scripts/models.sh: a missing model is a failure, not a
 * skip) and on tensor tables built here for the cases those models do not
 * cover (an untied output, head counts given only by the tensor shapes, an
 * encoder without a cache). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/estimate.h"
#include "models/gguf.h"

/* build/models next to the source tree (__FILE__ is absolute under CMake),
 * or $LYRA_TEST_MODELS. */
static struct lyra_gguf_info *load_model(const char *name)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    const char *env = getenv("LYRA_TEST_MODELS");
    if (env && *env) {
        snprintf(dir, sizeof dir, "%s", env);
    } else {
        snprintf(dir, sizeof dir, "%s", __FILE__);
        char *t = strstr(dir, "tests/unit/test_estimate.c");
        if (t)
            *t = '\0';
        strncat(dir, "build/models", sizeof dir - strlen(dir) - 1);
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct lyra_gguf_info *info = NULL;
    struct lyra_err err = {0};
    if (lyra_gguf_read(path, &info, &err) < 0)
        fail_msg("cannot read %s (run scripts/models.sh build): %s", path, err.msg);
    return info;
}

static uint64_t sum_layers(const struct lyra_estimate *e)
{
    uint64_t s = 0;
    for (int i = 0; i < e->n_layers; i++)
        s += e->layer_bytes[i];
    return s;
}

/* The per-block sums, the rest and the total agree with the tensor table. */
static void check_sums(const struct lyra_gguf_info *info, const struct lyra_estimate *e)
{
    uint64_t all = 0;
    for (size_t i = 0; i < info->n_tensors; i++)
        all += info->tensors[i].n_bytes;
    assert_int_equal(e->weights_bytes, all);
    assert_int_equal(sum_layers(e) + e->nonlayer_bytes, e->weights_bytes);
    uint64_t max = 0, kv = 0;
    for (int i = 0; i < e->n_layers; i++) {
        assert_true(e->layer_bytes[i] > 0);
        if (e->layer_bytes[i] > max)
            max = e->layer_bytes[i];
        kv += e->layer_kv_bytes[i];
    }
    assert_int_equal(e->layer_bytes_max, max);
    assert_int_equal(kv, e->kv_bytes);
}

static void test_tiny(void **state)
{
    struct lyra_gguf_info *info = load_model("tiny.gguf");
    struct lyra_estimate e;
    assert_int_equal(lyra_estimate_model(info, 4096, 4, &e, NULL), 0);
    assert_int_equal(e.n_layers, 2);
    check_sums(info, &e);
    /* what llama.cpp reports loading tiny: "CPU_Mapped model buffer size = 4.55 MiB" */
    assert_int_equal(e.weights_bytes, 4772352);
    /* The worker caps --ctx at the training context (2048): 4 slots of 2048
     * cells; 2 layers x (1 KV head x 64 K + 64 V) x f16.  llama.cpp says
     * "CPU KV buffer size = 4.00 MiB". */
    assert_int_equal(e.ctx_per_slot, 2048);
    assert_int_equal(e.kv_cells, 8192);
    assert_int_equal(e.kv_bytes, 8192ull * 2 * (64 + 64) * 2);
    assert_int_equal(e.kv_bytes, 4u << 20);
    /* tied output: the device gets token_embd (32000 x 128 q8_0) again */
    assert_int_equal(e.output_dup_bytes, 32000ull * 128 / 32 * 34);
    /* compute: 512 x 4 x (32000 + 4 x 128 + 2 x 384); llama.cpp: 63.00 MiB */
    assert_int_equal(e.compute_bytes, 512ull * 4 * (32000 + 512 + 768));
    lyra_estimate_clear(&e);

    /* Padding as llama_context does it: 3 slots of 100 tokens = pad256(300)
     * = 512 cells, 170 per stream, padded to 256 each = 768 cells. */
    assert_int_equal(lyra_estimate_model(info, 100, 3, &e, NULL), 0);
    assert_int_equal(e.kv_cells, 768);
    assert_int_equal(e.kv_bytes, 768ull * 2 * 128 * 2);
    lyra_estimate_clear(&e);
    lyra_gguf_info_free(info);
}

static void test_small(void **state)
{
    struct lyra_gguf_info *info = load_model("small.gguf");
    struct lyra_estimate e;
    assert_int_equal(lyra_estimate_model(info, 4096, 4, &e, NULL), 0);
    assert_int_equal(e.n_layers, 30);
    check_sums(info, &e);
    /* 30 layers x (3 KV heads x 64) x (K + V) x f16 x 8192 cells */
    assert_int_equal(e.kv_bytes, 8192ull * 30 * (192 + 192) * 2);
    /* every block of small has the same shape */
    for (int i = 0; i < e.n_layers; i++)
        assert_int_equal(e.layer_bytes[i], e.layer_bytes_max);
    lyra_estimate_clear(&e);
    lyra_gguf_info_free(info);
}

/* Placement: llama.cpp offloads the output layer first, then blocks from the
 * top; host and device move in opposite directions. */
static void test_split(void **state)
{
    struct lyra_gguf_info *info = load_model("small.gguf");
    struct lyra_estimate e;
    assert_int_equal(lyra_estimate_model(info, 4096, 4, &e, NULL), 0);
    int n = e.n_layers;
    assert_int_equal(lyra_estimate_device_bytes(&e, 0), 0);
    uint64_t out_only = lyra_estimate_device_bytes(&e, 1);
    assert_int_equal(out_only, e.output_bytes + e.compute_bytes + LYRA_ESTIMATE_DEVICE_RUNTIME);
    /* each further layer adds one block with its cache */
    for (int g = 2; g <= n + 1; g++)
        assert_int_equal(lyra_estimate_device_bytes(&e, g) - lyra_estimate_device_bytes(&e, g - 1),
                         e.layer_bytes[n + 1 - g] + e.layer_kv_bytes[n + 1 - g]);
    for (int g = 1; g <= n + 1; g++)
        assert_true(lyra_estimate_host_bytes(&e, g) <= lyra_estimate_host_bytes(&e, g - 1));
    /* -1 and anything above n + 1 mean everything */
    assert_int_equal(lyra_estimate_device_bytes(&e, -1), lyra_estimate_device_bytes(&e, n + 1));
    assert_int_equal(lyra_estimate_device_bytes(&e, 999), lyra_estimate_device_bytes(&e, n + 1));
    /* all on the device: the host keeps the (tied) embedding and the output
     * buffer only */
    assert_int_equal(lyra_estimate_host_bytes(&e, -1),
                     e.nonlayer_bytes - (e.output_bytes - e.output_dup_bytes) + e.host_output_bytes);
    /* all on the CPU: everything but the device runtime and the duplicate */
    assert_int_equal(lyra_estimate_host_bytes(&e, 0),
                     e.weights_bytes + e.kv_bytes + e.compute_bytes + e.host_output_bytes);
    lyra_estimate_clear(&e);
    lyra_gguf_info_free(info);
}

static void test_fit_layers(void **state)
{
    struct lyra_gguf_info *info = load_model("small.gguf");
    struct lyra_estimate e;
    assert_int_equal(lyra_estimate_model(info, 4096, 4, &e, NULL), 0);
    int n = e.n_layers;
    uint64_t all = lyra_estimate_device_bytes(&e, n + 1);
    assert_int_equal(lyra_estimate_fit_layers(&e, 0, 0), 0);
    assert_int_equal(lyra_estimate_fit_layers(&e, lyra_estimate_device_bytes(&e, 1) - 1, 0), 0);
    assert_int_equal(lyra_estimate_fit_layers(&e, all, 0), n + 1);
    assert_int_equal(lyra_estimate_fit_layers(&e, all - 1, 0), n);
    assert_int_equal(lyra_estimate_fit_layers(&e, UINT64_MAX, 0), n + 1);
    /* a reserve as large as the free memory leaves nothing */
    assert_int_equal(lyra_estimate_fit_layers(&e, all, all), 0);
    assert_int_equal(lyra_estimate_fit_layers(&e, all + (1u << 30), 1u << 30), n + 1);
    /* exactly each split's need fits that split, and the answer never falls
     * as free memory grows */
    for (int g = 0; g <= n + 1; g++)
        assert_int_equal(lyra_estimate_fit_layers(&e, lyra_estimate_device_bytes(&e, g), 0), g);
    int prev = 0;
    for (uint64_t f = 0; f <= all + (64u << 20); f += 1u << 20) {
        int g = lyra_estimate_fit_layers(&e, f, 0);
        assert_true(g >= prev);
        assert_true(lyra_estimate_device_bytes(&e, g) <= f);
        prev = g;
    }
    assert_int_equal(prev, n + 1);
    lyra_estimate_clear(&e);
    lyra_gguf_info_free(info);
}

static void test_json(void **state)
{
    struct lyra_gguf_info *info = load_model("tiny.gguf");
    struct lyra_estimate e;
    assert_int_equal(lyra_estimate_model(info, 4096, 4, &e, NULL), 0);
    json_t *j = lyra_estimate_to_json(&e, -1);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "gpu_layers")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "kv_bytes")), 4u << 20);
    assert_int_equal(json_integer_value(json_object_get(j, "device_bytes")),
                     lyra_estimate_device_bytes(&e, 3));
    assert_int_equal(json_integer_value(json_object_get(j, "host_bytes")), lyra_estimate_host_bytes(&e, 3));
    json_decref(j);
    lyra_estimate_clear(&e);
    lyra_estimate_clear(&e); /* cleared twice, and NULL: no-ops */
    lyra_estimate_clear(NULL);
    lyra_gguf_info_free(info);
}

/* ---- tensor tables built here ------------------------------------------------ */

struct fake {
    struct lyra_gguf_info info;
    struct lyra_gguf_tensor t[32];
    struct lyra_gguf_kv kv[4];
};

static void add_tensor(struct fake *f, const char *name, int64_t d0, int64_t d1, uint64_t bytes)
{
    struct lyra_gguf_tensor *t = &f->t[f->info.n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = 2;
    t->dims[0] = d0;
    t->dims[1] = d1;
    t->dims[2] = t->dims[3] = 1;
    t->n_bytes = bytes;
}

/* 2 blocks, n_embd 256, 4 heads; K and V projections of `kv_dim` outputs;
 * an untied output of 1000 tokens. */
static void make(struct fake *f, char *arch, uint64_t head_count, uint64_t head_count_kv, int64_t kv_dim)
{
    memset(f, 0, sizeof *f);
    f->info.architecture = arch;
    f->info.block_count = 2;
    f->info.embedding_length = 256;
    f->info.head_count = head_count;
    f->info.head_count_kv = head_count_kv;
    f->info.feed_forward_length = 512;
    f->info.context_length = 4096;
    f->info.vocab_size = 1000;
    f->info.tensors = f->t;
    f->info.kvs = f->kv;
    add_tensor(f, "token_embd.weight", 256, 1000, 1000);
    for (int l = 0; l < 2; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_k.weight", l);
        add_tensor(f, name, 256, kv_dim, 10);
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", l);
        add_tensor(f, name, 256, kv_dim, 10);
        snprintf(name, sizeof name, "blk.%d.ffn_up.weight", l);
        add_tensor(f, name, 256, 512, 100 * (uint64_t)(l + 1));
    }
    add_tensor(f, "output_norm.weight", 256, 1, 4);
    add_tensor(f, "output.weight", 256, 1000, 2000);
    /* a block past block_count (a draft head) counts with the rest */
    add_tensor(f, "blk.2.nextn.weight", 256, 256, 7);
}

static void test_untied_and_shapes(void **state)
{
    struct fake f;
    struct lyra_estimate e;
    /* head counts from the metadata: 2 KV heads x 64 (256 / 4) */
    make(&f, "llama", 4, 2, 128);
    assert_int_equal(lyra_estimate_model(&f.info, 1024, 1, &e, NULL), 0);
    assert_int_equal(e.output_dup_bytes, 0);
    assert_int_equal(e.output_bytes, 2004);
    assert_int_equal(e.nonlayer_bytes, 1000 + 4 + 2000 + 7);
    assert_int_equal(e.layer_bytes[0], 120);
    assert_int_equal(e.layer_bytes[1], 220);
    assert_int_equal(e.layer_bytes_max, 220);
    assert_int_equal(e.kv_bytes, 2ull * 1024 * (128 + 128) * 2);
    /* all on the CPU, an untied output is held once */
    assert_int_equal(lyra_estimate_host_bytes(&e, 0),
                     e.weights_bytes + e.kv_bytes + e.compute_bytes + 1000 * 4);
    /* the output layer alone on the device: no duplicate */
    assert_int_equal(lyra_estimate_device_bytes(&e, 1),
                     2004 + e.compute_bytes + LYRA_ESTIMATE_DEVICE_RUNTIME);
    lyra_estimate_clear(&e);

    /* key_length / value_length override the head size */
    f.kv[0] =
        (struct lyra_gguf_kv){.key = "llama.attention.key_length", .type = LYRA_GGUF_TYPE_UINT32, .v.u = 96};
    f.kv[1] = (struct lyra_gguf_kv){
        .key = "llama.attention.value_length", .type = LYRA_GGUF_TYPE_UINT32, .v.u = 32};
    f.info.n_kvs = 2;
    assert_int_equal(lyra_estimate_model(&f.info, 1024, 1, &e, NULL), 0);
    assert_int_equal(e.kv_bytes, 2ull * 1024 * 2 * (96 + 32) * 2);
    lyra_estimate_clear(&e);

    /* head counts stored per layer (0 here): the projections' shapes */
    make(&f, "llama", 0, 0, 192);
    assert_int_equal(lyra_estimate_model(&f.info, 1024, 1, &e, NULL), 0);
    assert_int_equal(e.kv_bytes, 2ull * 1024 * (192 + 192) * 2);
    lyra_estimate_clear(&e);

    /* an encoder has no KV cache at all */
    make(&f, "bert", 4, 4, 256);
    assert_int_equal(lyra_estimate_model(&f.info, 512, 1, &e, NULL), 0);
    assert_int_equal(e.kv_bytes, 0);
    assert_true(e.weights_bytes > 0);
    lyra_estimate_clear(&e);
}

static void test_invalid(void **state)
{
    struct fake f;
    struct lyra_estimate e;
    struct lyra_err err = {0};
    make(&f, "llama", 4, 2, 128);
    assert_int_equal(lyra_estimate_model(&f.info, 0, 1, &e, &err), LYRA_EINVAL);
    assert_int_equal(lyra_estimate_model(&f.info, 512, 0, &e, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "slots"));
    f.info.block_count = 0;
    assert_int_equal(lyra_estimate_model(&f.info, 512, 1, &e, &err), LYRA_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "block_count"));
    f.info.block_count = 2;
    f.info.embedding_length = 0;
    assert_int_equal(lyra_estimate_model(&f.info, 512, 1, &e, &err), LYRA_EUNSUPPORTED);
    lyra_estimate_clear(&e); /* nothing to free after a failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny),    cmocka_unit_test(test_small),
        cmocka_unit_test(test_split),   cmocka_unit_test(test_fit_layers),
        cmocka_unit_test(test_json),    cmocka_unit_test(test_untied_and_shapes),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
