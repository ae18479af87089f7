/* test_gguf.c — the GGUF metadata reader against files written byte by byte
 * here (valid, truncated at every length, corrupt in each way the reader
 * checks), and against the real generated models when they exist. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "models/gguf.h"

/* ---- a tiny GGUF writer ----------------------------------------------- */

struct buf {
    unsigned char *p;
    size_t n, cap;
    uint64_t n_kv, n_tensors;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void u8(struct buf *b, uint8_t v)
{
    put(b, &v, 1);
}
static void u16(struct buf *b, uint16_t v)
{
    u8(b, v & 0xff);
    u8(b, v >> 8);
}
static void u32(struct buf *b, uint32_t v)
{
    u16(b, v & 0xffff);
    u16(b, v >> 16);
}
static void u64(struct buf *b, uint64_t v)
{
    u32(b, (uint32_t)v);
    u32(b, (uint32_t)(v >> 32));
}
static void f32(struct buf *b, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    u32(b, v);
}
static void f64(struct buf *b, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    u64(b, v);
}

static void str(struct buf *b, const char *s)
{
    u64(b, strlen(s));
    put(b, s, strlen(s));
}

/* Header with placeholder counts; finish() patches them. */
static void header(struct buf *b, uint32_t version)
{
    memset(b, 0, sizeof *b);
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, 0);
    u64(b, 0);
}

static void patch_counts(struct buf *b)
{
    for (int i = 0; i < 8; i++) {
        b->p[8 + i] = (unsigned char)(b->n_tensors >> (8 * i));
        b->p[16 + i] = (unsigned char)(b->n_kv >> (8 * i));
    }
}

static void key(struct buf *b, const char *k, uint32_t type)
{
    str(b, k);
    u32(b, type);
    b->n_kv++;
}

static void kv_str(struct buf *b, const char *k, const char *v)
{
    key(b, k, LYRA_GGUF_TYPE_STRING);
    str(b, v);
}
static void kv_u32(struct buf *b, const char *k, uint32_t v)
{
    key(b, k, LYRA_GGUF_TYPE_UINT32);
    u32(b, v);
}

static void tensor(struct buf *b, const char *name, uint32_t n_dims, const int64_t *dims, uint32_t type,
                   uint64_t offset)
{
    str(b, name);
    u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        u64(b, (uint64_t)dims[i]);
    u32(b, type);
    u64(b, offset);
    b->n_tensors++;
}

/* Pads to `align` and appends `n` data bytes. */
static void data(struct buf *b, size_t align, size_t n)
{
    while (b->n % align)
        u8(b, 0);
    for (size_t i = 0; i < n; i++)
        u8(b, (uint8_t)(i * 7));
}

/* ---- files -------------------------------------------------------------- */

static char tmpdir[64];
static int file_seq;

static int group_setup(void **state)
{
    strcpy(tmpdir, "/tmp/lyra-test-gguf-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes n bytes to a fresh file and returns its path (static buffer). */
static const char *write_file(const void *p, size_t n)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/f%d.gguf", tmpdir, file_seq++);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Reads bytes as a GGUF file; returns the code, *info set on success. */
static int read_bytes(const void *p, size_t n, struct lyra_gguf_info **info, struct lyra_err *err)
{
    const char *path = write_file(p, n);
    int rc = lyra_gguf_read(path, info, err);
    unlink(path);
    if (rc)
        assert_null(*info);
    return rc;
}

/* Expects the bytes to be rejected with `code` and a message containing
 * `needle`. */
static void expect_error(const struct buf *b, int code, const char *needle)
{
    struct lyra_gguf_info *info = (void *)1;
    struct lyra_err err = {0};
    int rc = read_bytes(b->p, b->n, &info, &err);
    if (rc != code || !strstr(err.msg, needle))
        fail_msg("expected %s '%s', got %d '%s'", lyra_errname(code), needle, rc, err.msg);
}

/* ---- the reference file --------------------------------------------- */

/* Sizes of the three tensors below: Q8_0 [64,3] = 2 blocks/row * 34 * 3,
 * F32 [64], F16 [32,2,2]. */
#define T0_BYTES 204u
#define T1_BYTES 256u
#define T2_BYTES 256u
#define T1_OFF 224u /* 204 padded to 32 */
#define T2_OFF 480u
#define DATA_BYTES (T2_OFF + T2_BYTES)

/* A file using every value type, arrays and three tensors.  With
 * `file_type` false, general.file_type is left out. */
static void build_reference(struct buf *b, uint32_t version, bool file_type)
{
    header(b, version);
    kv_str(b, "general.architecture", "llama");
    kv_str(b, "general.name", "unit");
    if (file_type)
        kv_u32(b, "general.file_type", 15);
    key(b, "t.u8", LYRA_GGUF_TYPE_UINT8);
    u8(b, 200);
    key(b, "t.i8", LYRA_GGUF_TYPE_INT8);
    u8(b, (uint8_t)-5);
    key(b, "t.u16", LYRA_GGUF_TYPE_UINT16);
    u16(b, 60000);
    key(b, "t.i16", LYRA_GGUF_TYPE_INT16);
    u16(b, (uint16_t)-30000);
    key(b, "t.i32", LYRA_GGUF_TYPE_INT32);
    u32(b, (uint32_t)-7);
    key(b, "t.f32", LYRA_GGUF_TYPE_FLOAT32);
    f32(b, 1.5f);
    key(b, "t.bool", LYRA_GGUF_TYPE_BOOL);
    u8(b, 1);
    key(b, "t.u64", LYRA_GGUF_TYPE_UINT64);
    u64(b, 1ull << 40);
    key(b, "t.i64", LYRA_GGUF_TYPE_INT64);
    u64(b, (uint64_t)(-(1ll << 40)));
    key(b, "t.f64", LYRA_GGUF_TYPE_FLOAT64);
    f64(b, 2.25);
    kv_u32(b, "llama.context_length", 4096);
    key(b, "llama.embedding_length", LYRA_GGUF_TYPE_UINT64);
    u64(b, 64);
    key(b, "llama.block_count", LYRA_GGUF_TYPE_INT32);
    u32(b, 2);
    kv_u32(b, "llama.attention.head_count", 4);
    key(b, "llama.attention.head_count_kv", LYRA_GGUF_TYPE_UINT16);
    u16(b, 2);
    kv_str(b, "tokenizer.ggml.model", "gpt2");
    key(b, "tokenizer.ggml.tokens", LYRA_GGUF_TYPE_ARRAY);
    u32(b, LYRA_GGUF_TYPE_STRING);
    u64(b, 3);
    str(b, "a");
    str(b, "bc");
    str(b, "<s>");
    key(b, "tokenizer.ggml.scores", LYRA_GGUF_TYPE_ARRAY);
    u32(b, LYRA_GGUF_TYPE_FLOAT32);
    u64(b, 3);
    f32(b, 0);
    f32(b, -1);
    f32(b, -2);
    key(b, "t.empty", LYRA_GGUF_TYPE_ARRAY); /* [] of int16 */
    u32(b, LYRA_GGUF_TYPE_INT16);
    u64(b, 0);
    kv_str(b, "tokenizer.chat_template", "{{ messages }}");

    tensor(b, "token_embd.weight", 2, (const int64_t[]){64, 3}, 8 /* Q8_0 */, 0);
    tensor(b, "norm.weight", 1, (const int64_t[]){64}, 0 /* F32 */, T1_OFF);
    tensor(b, "w3", 3, (const int64_t[]){32, 2, 2}, 1 /* F16 */, T2_OFF);
    patch_counts(b);
    data(b, 32, DATA_BYTES);
}

static void test_valid_v3(void **state)
{
    struct buf b;
    build_reference(&b, 3, true);
    struct lyra_gguf_info *info = NULL;
    struct lyra_err err = {0};
    assert_int_equal(read_bytes(b.p, b.n, &info, &err), 0);

    assert_int_equal(info->version, 3);
    assert_int_equal(info->file_size, b.n);
    assert_int_equal(info->alignment, 32);
    assert_int_equal(info->data_offset % 32, 0);
    assert_int_equal(info->data_end, b.n);
    assert_string_equal(info->architecture, "llama");
    assert_string_equal(info->name, "unit");
    assert_int_equal(info->file_type, 15);
    assert_string_equal(info->file_type_name, "Q4_K_M");
    assert_string_equal(lyra_gguf_quantization(info), "Q4_K_M");
    assert_string_equal(info->dominant_type_name, "Q8_0");
    assert_int_equal(info->n_params, 64 * 3 + 64 + 32 * 2 * 2);
    assert_int_equal(info->context_length, 4096);
    assert_int_equal(info->embedding_length, 64);
    assert_int_equal(info->block_count, 2);
    assert_int_equal(info->head_count, 4);
    assert_int_equal(info->head_count_kv, 2);
    assert_int_equal(info->vocab_size, 3);
    assert_string_equal(info->tokenizer_model, "gpt2");
    assert_string_equal(info->chat_template, "{{ messages }}");
    assert_int_equal(info->pooling_type, -1);
    assert_int_equal(info->causal_attention, -1);

    assert_int_equal(info->n_kvs, b.n_kv);
    const struct lyra_gguf_kv *kv;
    assert_non_null(kv = lyra_gguf_find(info, "t.u8"));
    assert_int_equal(kv->v.u, 200);
    assert_int_equal(lyra_gguf_find(info, "t.i8")->v.i, -5);
    assert_int_equal(lyra_gguf_find(info, "t.u16")->v.u, 60000);
    assert_int_equal(lyra_gguf_find(info, "t.i16")->v.i, -30000);
    assert_int_equal(lyra_gguf_find(info, "t.i32")->v.i, -7);
    assert_true(lyra_gguf_find(info, "t.f32")->v.f == 1.5);
    assert_true(lyra_gguf_find(info, "t.bool")->v.b);
    assert_int_equal(lyra_gguf_find(info, "t.u64")->v.u, 1ull << 40);
    assert_int_equal(lyra_gguf_find(info, "t.i64")->v.i, -(1ll << 40));
    assert_true(lyra_gguf_find(info, "t.f64")->v.f == 2.25);
    assert_non_null(kv = lyra_gguf_find(info, "t.empty"));
    assert_int_equal(kv->type, LYRA_GGUF_TYPE_ARRAY);
    assert_int_equal(kv->array_type, LYRA_GGUF_TYPE_INT16);
    assert_int_equal(kv->array_len, 0);
    assert_int_equal(lyra_gguf_find(info, "tokenizer.ggml.scores")->array_type, LYRA_GGUF_TYPE_FLOAT32);
    assert_null(lyra_gguf_find(info, "t.missing"));

    assert_int_equal(info->n_tensors, 3);
    const struct lyra_gguf_tensor *t = info->tensors;
    assert_string_equal(t[0].name, "token_embd.weight");
    assert_int_equal(t[0].n_dims, 2);
    assert_int_equal(t[0].dims[0], 64);
    assert_int_equal(t[0].dims[1], 3);
    assert_int_equal(t[0].dims[2], 1);
    assert_int_equal(t[0].type, 8);
    assert_int_equal(t[0].n_bytes, T0_BYTES);
    assert_int_equal(t[1].offset, T1_OFF);
    assert_int_equal(t[1].n_bytes, T1_BYTES);
    assert_string_equal(t[2].name, "w3");
    assert_int_equal(t[2].n_dims, 3);
    assert_int_equal(t[2].n_elements, 128);
    assert_int_equal(t[2].offset, T2_OFF);

    json_t *j = lyra_gguf_info_to_json(info);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "architecture")), "llama");
    assert_string_equal(json_string_value(json_object_get(j, "quantization")), "Q4_K_M");
    assert_int_equal(json_integer_value(json_object_get(j, "parameters")), 384);
    assert_int_equal(json_integer_value(json_object_get(j, "vocab_size")), 3);
    assert_true(json_is_null(json_object_get(j, "pooling_type")));
    json_t *meta = json_object_get(j, "metadata");
    assert_int_equal(json_object_size(meta), b.n_kv);
    assert_int_equal(json_integer_value(json_object_get(meta, "t.i64")), -(1ll << 40));
    json_t *arr = json_object_get(meta, "tokenizer.ggml.tokens");
    assert_string_equal(json_string_value(json_object_get(arr, "element_type")), "string");
    assert_int_equal(json_integer_value(json_object_get(arr, "count")), 3);
    char *dump = json_dumps(j, 0);
    assert_non_null(dump);
    free(dump);
    json_decref(j);

    lyra_gguf_info_free(info);
    lyra_gguf_info_free(NULL);
    free(b.p);
}

static void test_valid_v2_and_alignment(void **state)
{
    struct buf b;
    build_reference(&b, 2, true);
    struct lyra_gguf_info *info = NULL;
    assert_int_equal(read_bytes(b.p, b.n, &info, NULL), 0);
    assert_int_equal(info->version, 2);
    assert_int_equal(info->n_params, 384);
    lyra_gguf_info_free(info);
    free(b.p);

    /* general.alignment 64 moves both the data section and the offsets. */
    header(&b, 3);
    key(&b, "general.alignment", LYRA_GGUF_TYPE_UINT32);
    u32(&b, 64);
    tensor(&b, "a", 1, (const int64_t[]){8}, 0, 0); /* 32 bytes, padded to 64 */
    tensor(&b, "b", 1, (const int64_t[]){8}, 0, 64);
    patch_counts(&b);
    data(&b, 64, 96);
    assert_int_equal(read_bytes(b.p, b.n, &info, NULL), 0);
    assert_int_equal(info->alignment, 64);
    assert_int_equal(info->data_offset % 64, 0);
    assert_int_equal(info->data_end, b.n);
    assert_string_equal(lyra_gguf_quantization(info), "F32");
    assert_null(info->architecture);
    assert_int_equal(info->context_length, 0);
    lyra_gguf_info_free(info);

    /* The same tensors at offset 32 violate the alignment. */
    free(b.p);
    header(&b, 3);
    key(&b, "general.alignment", LYRA_GGUF_TYPE_UINT32);
    u32(&b, 64);
    tensor(&b, "a", 1, (const int64_t[]){8}, 0, 0);
    tensor(&b, "b", 1, (const int64_t[]){8}, 0, 32);
    patch_counts(&b);
    data(&b, 64, 96);
    expect_error(&b, LYRA_EPARSE, "tensor 'b' has data offset 32, expected 64");
    free(b.p);
}

static void test_dominant_type_without_file_type(void **state)
{
    struct buf b;
    build_reference(&b, 3, false);
    struct lyra_gguf_info *info = NULL;
    assert_int_equal(read_bytes(b.p, b.n, &info, NULL), 0);
    assert_int_equal(info->file_type, -1);
    assert_null(info->file_type_name);
    assert_int_equal(info->dominant_type, 8);
    assert_string_equal(lyra_gguf_quantization(info), "Q8_0");
    lyra_gguf_info_free(info);
    free(b.p);
}

static void test_every_truncation(void **state)
{
    struct buf b;
    build_reference(&b, 3, true);
    for (size_t len = 0; len < b.n; len++) {
        struct lyra_gguf_info *info = (void *)1;
        struct lyra_err err = {0};
        int rc = read_bytes(b.p, len, &info, &err);
        if (rc != LYRA_EPARSE || strncmp(err.msg, "truncated", 9) != 0)
            fail_msg("prefix of %zu/%zu bytes: got %d '%s'", len, b.n, rc, err.msg);
    }
    free(b.p);
}

static void test_data_section_short(void **state)
{
    struct buf b;
    build_reference(&b, 3, true);
    size_t full = b.n;
    b.n -= 10;
    char want[128];
    snprintf(want, sizeof want, "truncated: tensor data needs %zu bytes, file has %zu", full, full - 10);
    expect_error(&b, LYRA_EPARSE, want);
    free(b.p);
}

static void test_bad_magic_and_versions(void **state)
{
    struct buf b;
    build_reference(&b, 3, true);
    memcpy(b.p, "GGML", 4);
    expect_error(&b, LYRA_EPARSE, "not a GGUF file (it does not start with \"GGUF\")");
    memcpy(b.p,
           "\x7f"
           "ELF",
           4);
    expect_error(&b, LYRA_EPARSE, "not a GGUF file (it does not start with \"GGUF\")");
    b.n = 2;
    memcpy(b.p, "MZ", 2);
    expect_error(&b, LYRA_EPARSE, "not a GGUF file");
    free(b.p);

    build_reference(&b, 1, true);
    expect_error(&b, LYRA_EUNSUPPORTED, "unsupported GGUF version 1");
    free(b.p);
    build_reference(&b, 4, true);
    expect_error(&b, LYRA_EUNSUPPORTED, "unsupported GGUF version 4");
    free(b.p);
    build_reference(&b, 0, true);
    expect_error(&b, LYRA_EUNSUPPORTED, "unsupported GGUF version 0");
    free(b.p);
    build_reference(&b, 0x03000000, true); /* a big-endian v3 file read as little-endian */
    expect_error(&b, LYRA_EUNSUPPORTED, "big-endian");
    free(b.p);
}

static void test_unknown_kv_type(void **state)
{
    struct buf b;
    header(&b, 3);
    kv_str(&b, "general.architecture", "llama");
    key(&b, "bad.type", 13);
    u32(&b, 0);
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "key #1 'bad.type' has unknown value type 13");
    free(b.p);

    header(&b, 3);
    key(&b, "bad.array", LYRA_GGUF_TYPE_ARRAY);
    u32(&b, 99);
    u64(&b, 1);
    u32(&b, 0);
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "unknown array element type 99");
    free(b.p);

    /* Arrays of arrays: ggml refuses them, so the model would not load.
     * Found by fuzz_gguf comparing with ggml's reader. */
    header(&b, 3);
    key(&b, "bad.nested", LYRA_GGUF_TYPE_ARRAY);
    u32(&b, LYRA_GGUF_TYPE_ARRAY);
    u64(&b, 1);
    u32(&b, LYRA_GGUF_TYPE_UINT8);
    u64(&b, 0);
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "key #0 'bad.nested' is an array of arrays at offset");
    free(b.p);

}

static void test_absurd_lengths(void **state)
{
    struct buf b;
    /* A key of 2^60 bytes. */
    header(&b, 3);
    u64(&b, 1ull << 60);
    put(&b, "general.name", 12);
    for (int i = 0; i < 100; i++)
        u8(&b, 'x');
    b.n_kv = 1;
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "string of 1152921504606846976 bytes");
    free(b.p);

    /* A string value of 2^60 bytes and of UINT64_MAX bytes. */
    for (int i = 0; i < 2; i++) {
        header(&b, 3);
        key(&b, "general.name", LYRA_GGUF_TYPE_STRING);
        u64(&b, i ? UINT64_MAX : 1ull << 60);
        put(&b, "abc", 3);
        patch_counts(&b);
        expect_error(&b, LYRA_EPARSE, "truncated");
        free(b.p);
    }

    /* Arrays of 2^40 uint32 and 2^40 strings. */
    const uint32_t types[] = {LYRA_GGUF_TYPE_UINT32, LYRA_GGUF_TYPE_STRING};
    for (size_t i = 0; i < 2; i++) {
        header(&b, 3);
        key(&b, "tokenizer.ggml.tokens", LYRA_GGUF_TYPE_ARRAY);
        u32(&b, types[i]);
        u64(&b, 1ull << 40);
        for (int k = 0; k < 64; k++)
            u8(&b, 1);
        patch_counts(&b);
        expect_error(&b, LYRA_EPARSE, "array of 1099511627776");
        free(b.p);
    }

    /* Header counts of 2^40 key/value pairs and of 2^40 tensors. */
    header(&b, 3);
    b.n_kv = 1ull << 40;
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "header declares 1099511627776 key/value pairs");
    b.n_kv = 0;
    b.n_tensors = 1ull << 40;
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "header declares 1099511627776 tensors");
    free(b.p);

    /* A dimension of 2^62 in each of two dimensions overflows. */
    header(&b, 3);
    tensor(&b, "huge", 2, (const int64_t[]){1ll << 62, 1ll << 62}, 0, 0);
    patch_counts(&b);
    data(&b, 32, 32);
    expect_error(&b, LYRA_EPARSE, "tensor 'huge' has too many elements");
    free(b.p);

    /* ...but not when another dimension is 0: the tensor is empty, and ggml
     * reads it (found by fuzz_gguf comparing with ggml's reader). */
    header(&b, 3);
    tensor(&b, "empty", 3, (const int64_t[]){1ll << 62, 1ll << 62, 0}, 0, 0);
    patch_counts(&b);
    data(&b, 32, 0);
    struct lyra_gguf_info *empty = NULL;
    struct lyra_err eerr = {0};
    assert_int_equal(read_bytes(b.p, b.n, &empty, &eerr), 0);
    assert_int_equal(empty->tensors[0].n_elements, 0);
    assert_int_equal(empty->tensors[0].n_bytes, 0);
    lyra_gguf_info_free(empty);
    free(b.p);

    /* 2^40 F32 elements: representable, but the data is not in the file. */
    header(&b, 3);
    tensor(&b, "big", 1, (const int64_t[]){1ll << 40}, 0, 0);
    patch_counts(&b);
    data(&b, 32, 32);
    expect_error(&b, LYRA_EPARSE, "truncated: tensor data needs");
    free(b.p);

    /* An array of 2^30 + 1 bytes that the (sparse) file does hold: more
     * elements than ggml reads in one array. */
    header(&b, 3);
    key(&b, "huge", LYRA_GGUF_TYPE_ARRAY);
    u32(&b, LYRA_GGUF_TYPE_UINT8);
    u64(&b, (1ull << 30) + 1);
    patch_counts(&b);
    const char *path = write_file(b.p, b.n);
    assert_int_equal(truncate(path, (off_t)(b.n + (1ull << 30) + 1)), 0);
    struct lyra_gguf_info *info = (void *)1;
    struct lyra_err err = {0};
    assert_int_equal(lyra_gguf_read(path, &info, &err), LYRA_ETOOBIG);
    assert_non_null(strstr(err.msg, "'huge' is an array of 1073741825 elements (limit 1073741824)"));
    assert_null(info);
    unlink(path);
    free(b.p);
}

static void test_bad_tensor_infos(void **state)
{
    struct buf b;
    const uint32_t bad_types[] = {4, 31, 43, 1000};
    for (size_t i = 0; i < sizeof bad_types / sizeof *bad_types; i++) {
        header(&b, 3);
        tensor(&b, "w", 1, (const int64_t[]){32}, bad_types[i], 0);
        patch_counts(&b);
        data(&b, 32, 128);
        char want[64];
        snprintf(want, sizeof want, "tensor 'w' has unknown ggml type %" PRIu32, bad_types[i]);
        expect_error(&b, LYRA_EPARSE, want);
        free(b.p);
    }

    header(&b, 3);
    tensor(&b, "w", 5, (const int64_t[]){1, 1, 1, 1, 1}, 0, 0);
    patch_counts(&b);
    data(&b, 32, 32);
    expect_error(&b, LYRA_EPARSE, "tensor 'w' has 5 dimensions");
    free(b.p);

    header(&b, 3);
    tensor(&b, "w", 1, (const int64_t[]){-4}, 0, 0);
    patch_counts(&b);
    data(&b, 32, 32);
    expect_error(&b, LYRA_EPARSE, "negative dimension -4");
    free(b.p);

    header(&b, 3);
    tensor(&b, "q", 1, (const int64_t[]){48}, 8 /* Q8_0, blocks of 32 */, 0);
    patch_counts(&b);
    data(&b, 32, 64);
    expect_error(&b, LYRA_EPARSE, "not a multiple of the block size 32");
    free(b.p);

    header(&b, 3);
    tensor(&b, "w", 1, (const int64_t[]){8}, 0, 0);
    tensor(&b, "w", 1, (const int64_t[]){8}, 0, 32);
    patch_counts(&b);
    data(&b, 32, 64);
    expect_error(&b, LYRA_EPARSE, "duplicate tensor name 'w'");
    free(b.p);

    header(&b, 3);
    tensor(&b, "0123456789012345678901234567890123456789012345678901234567890123", 1, (const int64_t[]){8}, 0,
           0);
    patch_counts(&b);
    data(&b, 32, 32);
    expect_error(&b, LYRA_EPARSE, "64-byte name");
    free(b.p);

    header(&b, 3);
    kv_u32(&b, "a", 1);
    kv_u32(&b, "a", 2);
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "duplicate key 'a'");
    free(b.p);

    header(&b, 3);
    kv_u32(&b, "general.alignment", 48);
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "general.alignment 48 is not a power of 2");
    free(b.p);

    header(&b, 3);
    kv_str(&b, "general.alignment", "32");
    patch_counts(&b);
    expect_error(&b, LYRA_EPARSE, "general.alignment must be uint32");
    free(b.p);
}

static void test_not_a_file(void **state)
{
    struct lyra_gguf_info *info = (void *)1;
    struct lyra_err err = {0};
    char path[128];
    snprintf(path, sizeof path, "%s/missing.gguf", tmpdir);
    assert_int_equal(lyra_gguf_read(path, &info, &err), LYRA_ENOTFOUND);
    assert_null(info);
    assert_non_null(strstr(err.msg, "missing.gguf"));
    assert_int_equal(lyra_gguf_read(tmpdir, &info, &err), LYRA_EPARSE);
    assert_non_null(strstr(err.msg, "not a regular file"));
    /* A fifo must be refused without blocking in open(). */
    snprintf(path, sizeof path, "%s/fifo.gguf", tmpdir);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(lyra_gguf_read(path, &info, &err), LYRA_EPARSE);
    unlink(path);
}

static void test_names(void **state)
{
    assert_string_equal(lyra_gguf_ftype_name(7), "Q8_0");
    assert_string_equal(lyra_gguf_ftype_name(7 | 1024), "Q8_0");
    assert_string_equal(lyra_gguf_ftype_name(0), "F32");
    assert_string_equal(lyra_gguf_ftype_name(32), "BF16");
    assert_null(lyra_gguf_ftype_name(5));
    assert_null(lyra_gguf_ftype_name(-1));
    assert_null(lyra_gguf_ftype_name(500));
    assert_string_equal(lyra_gguf_ggml_type_name(12), "Q4_K");
    assert_string_equal(lyra_gguf_ggml_type_name(30), "BF16");
    assert_null(lyra_gguf_ggml_type_name(4));
    assert_string_equal(lyra_gguf_type_name(LYRA_GGUF_TYPE_STRING), "string");
    assert_string_equal(lyra_gguf_type_name(99), "unknown");
}

/* Invalid UTF-8 in metadata must still give valid JSON. */
static void test_json_bad_utf8(void **state)
{
    struct buf b;
    header(&b, 3);
    kv_str(&b, "general.name", "bad \xff\xfe name");
    kv_str(&b, "k\xc3", "v");
    key(&b, "nan", LYRA_GGUF_TYPE_FLOAT32);
    f32(&b, NAN);
    patch_counts(&b);
    struct lyra_gguf_info *info = NULL;
    assert_int_equal(read_bytes(b.p, b.n, &info, NULL), 0);
    json_t *j = lyra_gguf_info_to_json(info);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "bad \xef\xbf\xbd\xef\xbf\xbd name");
    assert_true(json_is_null(json_object_get(json_object_get(j, "metadata"), "nan")));
    assert_non_null(json_object_get(json_object_get(j, "metadata"), "k\xef\xbf\xbd"));
    json_decref(j);
    lyra_gguf_info_free(info);
    free(b.p);
}

/* ---- the generated models ------------------------------------------- */

/* Directory holding tiny.gguf / small.gguf, or NULL. */
static const char *models_dir(void)
{
    static char dir[512];
    const char *env = getenv("LYRA_TEST_MODELS");
    const char *cands[] = {env, "models", "../build/models"};
    for (size_t i = 0; i < 3; i++) {
        if (!cands[i])
            continue;
        snprintf(dir, sizeof dir, "%s/tiny.gguf", cands[i]);
        if (access(dir, R_OK) == 0) {
            snprintf(dir, sizeof dir, "%s", cands[i]);
            return dir;
        }
    }
    return NULL;
}

static void test_real_tiny(void **state)
{
    const char *dir = models_dir();
    if (!dir) {
        print_message("no generated models found; skipping\n");
        skip();
    }
    char path[600];
    snprintf(path, sizeof path, "%s/tiny.gguf", dir);
    struct lyra_gguf_info *info = NULL;
    struct lyra_err err = {0};
    assert_int_equal(lyra_gguf_read(path, &info, &err), 0);
    assert_string_equal(info->architecture, "llama");
    assert_int_equal(info->vocab_size, 32000);
    assert_string_equal(info->tokenizer_model, "llama");
    assert_string_equal(lyra_gguf_quantization(info), "Q8_0");
    assert_int_equal(info->file_type, 7);
    assert_non_null(info->chat_template);
    assert_non_null(strstr(info->chat_template, "<|im_start|>"));
    assert_int_equal(info->embedding_length, 128);
    assert_int_equal(info->context_length, 2048);
    /* 4,489,856 with the output tied to the embeddings (the preset); an
     * untied build adds output.weight's 32000 x 128. */
    bool untied = false;
    for (size_t i = 0; i < info->n_tensors; i++)
        untied |= strcmp(info->tensors[i].name, "output.weight") == 0;
    assert_int_equal(info->n_params, 4489856ull + (untied ? 32000ull * 128 : 0));
    assert_int_equal(info->data_end, info->file_size);

    /* Its first megabyte: metadata intact, tensor data missing. */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *head = malloc(1000000);
    assert_int_equal(fread(head, 1, 1000000, f), 1000000);
    fclose(f);
    uint64_t full = info->data_end;
    lyra_gguf_info_free(info);
    char want[128];
    snprintf(want, sizeof want, "truncated: tensor data needs %" PRIu64 " bytes, file has 1000000", full);
    assert_int_equal(read_bytes(head, 1000000, &info, &err), LYRA_EPARSE);
    assert_string_equal(err.msg, want);
    free(head);
}

static void test_real_small(void **state)
{
    const char *dir = models_dir();
    char path[600];
    if (dir)
        snprintf(path, sizeof path, "%s/small.gguf", dir);
    if (!dir || access(path, R_OK) != 0) {
        print_message("no generated small.gguf found; skipping\n");
        skip();
    }
    struct lyra_gguf_info *info = NULL;
    struct lyra_err err = {0};
    assert_int_equal(lyra_gguf_read(path, &info, &err), 0);
    assert_string_equal(info->architecture, "llama");
    assert_int_equal(info->vocab_size, 49152);
    assert_string_equal(info->tokenizer_model, "gpt2");
    assert_int_equal(info->n_params, 134515008ull);
    assert_string_equal(lyra_gguf_quantization(info), "Q8_0");
    assert_int_equal(info->block_count, 30);
    assert_int_equal(info->head_count, 9);
    assert_int_equal(info->head_count_kv, 3);
    lyra_gguf_info_free(info);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_v3),
        cmocka_unit_test(test_valid_v2_and_alignment),
        cmocka_unit_test(test_dominant_type_without_file_type),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_data_section_short),
        cmocka_unit_test(test_bad_magic_and_versions),
        cmocka_unit_test(test_unknown_kv_type),
        cmocka_unit_test(test_absurd_lengths),
        cmocka_unit_test(test_bad_tensor_infos),
        cmocka_unit_test(test_not_a_file),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_json_bad_utf8),
        cmocka_unit_test(test_real_tiny),
        cmocka_unit_test(test_real_small),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
