/* fuzz_gguf.c — the GGUF metadata reader (models/gguf.h) on arbitrary files.
 *
 * The input is the whole file, written to a memfd that the reader opens by
 * its /proc path (a regular file, no disk).  Beyond "no crash, no leak":
 *   - a refusal is one of the documented codes with a non-empty message
 *     that is valid UTF-8, and leaves *out NULL;
 *   - an accepted file is self-consistent: version 2/3, a power-of-two
 *     alignment, data_offset <= data_end <= file size, tensors within the
 *     limits, every string NUL-terminated at its length;
 *   - lyra_gguf_find() finds every key; the JSON view exists and serialises
 *     to valid UTF-8 (what GET /models shows);
 *   - with LYRA_FUZZ_GGML (ggml linked): a file Lyra accepts is one ggml's own
 *     reader accepts, with the same keys, tensors, alignment and data offset
 *     (gguf.h promises that a model listed as valid is one llama.cpp loads,
 *     as far as the container goes), and a file ggml reads is refused only
 *     for what ggml does not check (see check_refusal_against_ggml). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/util.h"
#include "fuzz.h"
#include "models/gguf.h"

#ifdef LYRA_FUZZ_GGML
#include "ggml.h"
#include "gguf.h"

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ggml_log_set(quiet, NULL);
    return 0;
}

static void check_against_ggml(const uint8_t *data, size_t size, const struct lyra_gguf_info *info)
{
    struct gguf_init_params params = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_buffer(data, size, params);
    CHECKF(g, "Lyra accepts a GGUF that ggml refuses");
    CHECK(gguf_get_version(g) == info->version);
    CHECK(gguf_get_alignment(g) == info->alignment);
    CHECK(gguf_get_n_kv(g) == (int64_t)info->n_kvs);
    CHECK(gguf_get_n_tensors(g) == (int64_t)info->n_tensors);
    if (info->n_tensors)
        CHECK(gguf_get_data_offset(g) == info->data_offset);
    for (size_t i = 0; i < info->n_kvs; i++) {
        CHECK(strcmp(gguf_get_key(g, (int64_t)i), info->kvs[i].key) == 0);
        CHECK((uint32_t)gguf_get_kv_type(g, (int64_t)i) == info->kvs[i].type);
    }
    for (size_t i = 0; i < info->n_tensors; i++) {
        CHECK(strcmp(gguf_get_tensor_name(g, (int64_t)i), info->tensors[i].name) == 0);
        CHECK(gguf_get_tensor_offset(g, (int64_t)i) == info->tensors[i].offset);
    }
    gguf_free(g);
}

/* A file ggml reads is refused only for what ggml's reader does not check
 * (the tensor data being in the file), for Lyra's tighter limits, for a
 * duplicate key as a C string (keys holding NUL bytes), or for an element
 * count that overflows int64 (ggml's own test multiplies first, so a product
 * that wraps to zero or below slips past it). */
static void check_refusal_against_ggml(const uint8_t *data, size_t size, int rc, const char *msg)
{
    struct gguf_init_params params = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_buffer(data, size, params);
    if (!g)
        return;
    gguf_free(g);
    CHECKF(rc == LYRA_ETOOBIG || strstr(msg, "truncated: tensor data needs") || strstr(msg, "duplicate key") ||
               strstr(msg, "has too many elements"),
           "ggml reads a GGUF that Lyra refuses: %s", msg);
}
#endif

static int mem_fd = -1;
static char mem_path[64];

static void put_file(const uint8_t *data, size_t size)
{
    if (mem_fd < 0) {
        mem_fd = memfd_create("fuzz-gguf", MFD_CLOEXEC);
        CHECK(mem_fd >= 0);
        snprintf(mem_path, sizeof mem_path, "/proc/self/fd/%d", mem_fd);
    }
    CHECK(ftruncate(mem_fd, 0) == 0);
    size_t off = 0;
    while (off < size) {
        ssize_t n = pwrite(mem_fd, data + off, size - off, (off_t)off);
        CHECK(n > 0);
        off += (size_t)n;
    }
}

static void check_info(const struct lyra_gguf_info *info, size_t size)
{
    CHECK(info->version == 2 || info->version == 3);
    CHECK(info->file_size == size);
    CHECK(info->alignment != 0 && (info->alignment & (info->alignment - 1)) == 0);
    CHECK(info->data_offset <= info->data_end || info->n_tensors == 0);
    CHECK(info->data_end <= info->file_size);
    CHECK(info->n_kvs <= LYRA_GGUF_MAX_KV && info->n_tensors <= LYRA_GGUF_MAX_TENSORS);
    for (size_t i = 0; i < info->n_kvs; i++) {
        const struct lyra_gguf_kv *kv = &info->kvs[i];
        CHECK(kv->key); /* may be "" as a C string: a key of NUL bytes */
        CHECK(kv->type < LYRA_GGUF_TYPE_COUNT);
        if (kv->type == LYRA_GGUF_TYPE_STRING)
            CHECK(kv->v.str.ptr && kv->v.str.ptr[kv->v.str.len] == '\0');
        if (kv->type == LYRA_GGUF_TYPE_ARRAY)
            CHECK(kv->array_type < LYRA_GGUF_TYPE_COUNT);
        /* The first pair of that name (a key may hold a NUL, so a later one
         * can compare equal as a C string). */
        const struct lyra_gguf_kv *found = lyra_gguf_find(info, kv->key);
        CHECK(found && strcmp(found->key, kv->key) == 0 && found <= kv);
    }
    uint64_t params = 0;
    for (size_t i = 0; i < info->n_tensors; i++) {
        const struct lyra_gguf_tensor *t = &info->tensors[i];
        CHECK(memchr(t->name, '\0', sizeof t->name));
        CHECK(t->n_dims <= LYRA_GGUF_MAX_DIMS);
        CHECK(lyra_gguf_ggml_type_name(t->type));
        CHECK(info->data_offset + t->offset + t->n_bytes <= info->data_end);
        params += t->n_elements;
    }
    CHECK(params == info->n_params);
    if (info->file_type_name)
        CHECK(info->file_type >= 0);
    (void)lyra_gguf_quantization(info);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    put_file(data, size);
    struct lyra_gguf_info *info = (struct lyra_gguf_info *)1;
    struct lyra_err err = {0};
    int rc = lyra_gguf_read(mem_path, &info, &err);
    if (rc < 0) {
        CHECKF(rc == LYRA_EPARSE || rc == LYRA_EUNSUPPORTED || rc == LYRA_ETOOBIG || rc == LYRA_ENOMEM,
               "rc %d: %s", rc, err.msg);
        CHECK(info == NULL);
        CHECK(err.code == rc && err.msg[0]);
        CHECK(lyra_utf8_valid(err.msg, strlen(err.msg)));
#ifdef LYRA_FUZZ_GGML
        check_refusal_against_ggml(data, size, rc, err.msg);
#endif
        return 0;
    }
    CHECK(rc == 0 && info);
    check_info(info, size);
#ifdef LYRA_FUZZ_GGML
    check_against_ggml(data, size, info);
#endif
    json_t *j = lyra_gguf_info_to_json(info);
    CHECK(j);
    char *text = json_dumps(j, JSON_COMPACT);
    CHECK(text && lyra_utf8_valid(text, strlen(text)));
    json_t *back = json_loads(text, JSON_ALLOW_NUL, NULL);
    CHECK(back && json_equal(back, j));
    json_decref(back);
    free(text);
    json_decref(j);
    lyra_gguf_info_free(info);
    return 0;
}
