/* test_demo_model.c — the committed demo model (models/demo.gguf) against
 * its manifest (models/demo.manifest.json, written by scripts/demo-model.sh):
 * the file's sha256 and size, and the GGUF metadata that the recipe fixes
 * (architecture, shapes, vocabulary, tokenizer, special ids, chat template).
 * A copy with one byte flipped must fail the sha256 check, so the check is
 * shown to be able to fail. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"

static char repo[PATH_MAX], model[PATH_MAX], manifest_path[PATH_MAX];
static json_t *manifest;

/* The repository root: this file is tests/unit/test_demo_model.c (CMake
 * compiles it by absolute path). */
static int setup(void **state)
{
    const char *self = __FILE__, *suffix = "tests/unit/test_demo_model.c";
    size_t n = strlen(self), m = strlen(suffix);
    if (n < m || strcmp(self + n - m, suffix) != 0 || n - m >= sizeof repo)
        return -1;
    memcpy(repo, self, n - m);
    repo[n - m] = '\0';
    snprintf(model, sizeof model, "%smodels/demo.gguf", repo);
    snprintf(manifest_path, sizeof manifest_path, "%smodels/demo.manifest.json", repo);
    json_error_t jerr;
    manifest = json_load_file(manifest_path, 0, &jerr);
    if (!manifest) {
        fprintf(stderr, "%s: %s\n", manifest_path, jerr.text);
        return -1;
    }
    return sodium_init() < 0 ? -1 : 0;
}

static int teardown(void **state)
{
    json_decref(manifest);
    return 0;
}

/* sha256 of the file as 64 lower-case hex digits into hex[65]; -1 if unreadable. */
static int file_sha256(const char *path, char hex[65], long *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    unsigned char buf[65536], out[crypto_hash_sha256_BYTES];
    size_t r;
    *size = 0;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        crypto_hash_sha256_update(&st, buf, r);
        *size += (long)r;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return -1;
    crypto_hash_sha256_final(&st, out);
    sodium_bin2hex(hex, 65, out, sizeof out);
    return 0;
}

/* The checker: 0 when the file's sha256 and size are the manifest's. */
static int check_file(const char *path)
{
    char hex[65];
    long size;
    if (file_sha256(path, hex, &size) < 0)
        return -1;
    const char *want = json_string_value(json_object_get(manifest, "sha256"));
    json_int_t want_size = json_integer_value(json_object_get(manifest, "size"));
    if (!want || strcmp(hex, want) != 0 || size != (long)want_size)
        return -1;
    return 0;
}

static json_int_t recipe_int(const char *key)
{
    const json_t *v = json_object_get(json_object_get(manifest, "recipe"), key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static void test_sha256_matches_manifest(void **state)
{
    const char *want = json_string_value(json_object_get(manifest, "sha256"));
    assert_non_null(want);
    assert_int_equal(strlen(want), 64);
    assert_int_equal(check_file(model), 0);
}

static void test_corrupt_copy_fails(void **state)
{
    char tmp[] = "/tmp/lyra-test-demo-XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    FILE *in = fopen(model, "rb"), *out = fdopen(fd, "wb");
    assert_non_null(in);
    assert_non_null(out);
    unsigned char buf[65536];
    size_t r, total = 0;
    while ((r = fread(buf, 1, sizeof buf, in)) > 0) {
        assert_int_equal(fwrite(buf, 1, r, out), r);
        total += r;
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
    /* the intact copy passes: what fails below is the flipped byte */
    assert_int_equal(check_file(tmp), 0);
    FILE *f = fopen(tmp, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, (long)(total / 2), SEEK_SET), 0);
    int c = fgetc(f);
    assert_true(c != EOF);
    assert_int_equal(fseek(f, (long)(total / 2), SEEK_SET), 0);
    fputc(c ^ 0x01, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(check_file(tmp), -1);
    unlink(tmp);
}

static uint32_t kv_u32(const struct gguf_context *g, const char *key)
{
    int64_t id = gguf_find_key(g, key);
    assert_true(id >= 0);
    assert_int_equal(gguf_get_kv_type(g, id), GGUF_TYPE_UINT32);
    return gguf_get_val_u32(g, id);
}

static const char *kv_str(const struct gguf_context *g, const char *key)
{
    int64_t id = gguf_find_key(g, key);
    assert_true(id >= 0);
    assert_int_equal(gguf_get_kv_type(g, id), GGUF_TYPE_STRING);
    return gguf_get_val_str(g, id);
}

static void test_metadata_matches_recipe(void **state)
{
    struct gguf_init_params ip = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(model, ip);
    assert_non_null(g);
    const json_t *tok = json_object_get(manifest, "tokenizer");
    assert_string_equal(kv_str(g, "general.architecture"), "llama");
    assert_string_equal(kv_str(g, "general.architecture"),
                        json_string_value(json_object_get(manifest, "architecture")));
    assert_int_equal(kv_u32(g, "llama.embedding_length"), recipe_int("dim"));
    assert_int_equal(kv_u32(g, "llama.block_count"), recipe_int("layers"));
    assert_int_equal(kv_u32(g, "llama.attention.head_count"), recipe_int("heads"));
    assert_int_equal(kv_u32(g, "llama.attention.head_count_kv"), recipe_int("kv_heads"));
    assert_int_equal(kv_u32(g, "llama.feed_forward_length"), recipe_int("ffn"));
    assert_int_equal(kv_u32(g, "llama.context_length"), recipe_int("ctx"));
    assert_int_equal(kv_u32(g, "llama.rope.dimension_count"), recipe_int("head_dim"));
    assert_int_equal(kv_u32(g, "llama.vocab_size"), recipe_int("vocab_size"));
    assert_int_equal(kv_u32(g, "general.file_type"), 7); /* LLAMA_FTYPE_MOSTLY_Q8_0 */

    assert_string_equal(kv_str(g, "tokenizer.ggml.model"), json_string_value(json_object_get(tok, "model")));
    int64_t id = gguf_find_key(g, "tokenizer.ggml.tokens");
    assert_true(id >= 0);
    assert_int_equal(gguf_get_arr_n(g, id), recipe_int("vocab_size"));
    assert_int_equal(gguf_get_arr_n(g, id), json_integer_value(json_object_get(tok, "vocab_size")));
    assert_string_equal(gguf_get_arr_str(g, id, 0), "<unk>");
    assert_string_equal(gguf_get_arr_str(g, id, 1), "<s>");
    assert_string_equal(gguf_get_arr_str(g, id, 2), "</s>");
    assert_string_equal(gguf_get_arr_str(g, id, 3), "<0x00>");
    assert_int_equal(kv_u32(g, "tokenizer.ggml.bos_token_id"), json_integer_value(json_object_get(tok, "bos_id")));
    assert_int_equal(kv_u32(g, "tokenizer.ggml.eos_token_id"), json_integer_value(json_object_get(tok, "eos_id")));
    assert_int_equal(kv_u32(g, "tokenizer.ggml.unknown_token_id"), json_integer_value(json_object_get(tok, "unk_id")));
    id = gguf_find_key(g, "tokenizer.ggml.add_bos_token");
    assert_true(id >= 0);
    assert_true(gguf_get_val_bool(g, id));
    /* byte fallback: the 256 <0xNN> pieces are BYTE (6) tokens, the specials CONTROL (3) */
    id = gguf_find_key(g, "tokenizer.ggml.token_type");
    assert_true(id >= 0);
    assert_int_equal(gguf_get_arr_type(g, id), GGUF_TYPE_INT32);
    const int32_t *types = gguf_get_arr_data(g, id);
    assert_int_equal(types[0], 2);
    assert_int_equal(types[1], 3);
    assert_int_equal(types[2], 3);
    for (int i = 3; i < 3 + 256; i++)
        assert_int_equal(types[i], 6);
    assert_string_equal(kv_str(g, "tokenizer.chat_template"),
                        json_string_value(json_object_get(tok, "chat_template")));
    /* tied output: no output.weight */
    assert_true(gguf_find_tensor(g, "token_embd.weight") >= 0);
    assert_true(gguf_find_tensor(g, "output.weight") < 0);
    assert_int_equal(gguf_get_n_tensors(g), 2 + 9 * recipe_int("layers"));
    gguf_free(g);
}

/* The manifest's own consistency: a loss curve that ends at the final value. */
static void test_manifest_curve(void **state)
{
    const json_t *curve = json_object_get(manifest, "loss_curve");
    assert_true(json_is_array(curve));
    assert_true(json_array_size(curve) >= 2);
    const json_t *last = json_array_get(curve, json_array_size(curve) - 1);
    assert_int_equal(json_integer_value(json_object_get(last, "step")), recipe_int("steps"));
    assert_float_equal(json_real_value(json_object_get(last, "val_loss")),
                       json_number_value(json_object_get(manifest, "final_val_loss")), 1e-9);
    assert_string_equal(json_string_value(json_object_get(json_object_get(manifest, "data"), "package")),
                        "bible-kjv-text");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_matches_manifest),
        cmocka_unit_test(test_corrupt_copy_fails),
        cmocka_unit_test(test_metadata_matches_recipe),
        cmocka_unit_test(test_manifest_curve),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
