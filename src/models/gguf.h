/* gguf.h — reads a GGUF model file's metadata without loading its weights.
 *
 * The daemon never links llama.cpp or ggml, so this module parses the GGUF
 * container itself (versions 2 and 3, little-endian): the header, every
 * key/value pair, and every tensor info.  Tensor data is not read; the file
 * size is checked against what the tensor infos require instead.
 *
 * Every count and length read from the file is checked against the bytes the
 * file can still hold before anything is allocated, so a corrupt or hostile
 * file yields an error with a reason ("truncated: ...", "not a GGUF file
 * (it does not start with "GGUF")", "unsupported GGUF version 1", ...) and never a huge
 * allocation or a crash.  The layout checks follow ggml's own reader
 * (ggml/src/gguf.cpp), so a file accepted here is one that llama.cpp's loader
 * will accept as well, as far as the container goes.
 *
 * The result is plain data: read its fields directly; everything in it is
 * owned by the info and freed by lyra_gguf_info_free().
 *
 * Thread-safety: all functions are thread-safe; a returned info is
 * immutable and may be read from any thread. */
#ifndef LYRA_GGUF_H
#define LYRA_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/error.h"

/* Value types of GGUF key/value pairs (the on-disk numbers). */
enum lyra_gguf_type {
    LYRA_GGUF_TYPE_UINT8 = 0,
    LYRA_GGUF_TYPE_INT8 = 1,
    LYRA_GGUF_TYPE_UINT16 = 2,
    LYRA_GGUF_TYPE_INT16 = 3,
    LYRA_GGUF_TYPE_UINT32 = 4,
    LYRA_GGUF_TYPE_INT32 = 5,
    LYRA_GGUF_TYPE_FLOAT32 = 6,
    LYRA_GGUF_TYPE_BOOL = 7,
    LYRA_GGUF_TYPE_STRING = 8,
    LYRA_GGUF_TYPE_ARRAY = 9,
    LYRA_GGUF_TYPE_UINT64 = 10,
    LYRA_GGUF_TYPE_INT64 = 11,
    LYRA_GGUF_TYPE_FLOAT64 = 12,
    LYRA_GGUF_TYPE_COUNT
};

/* Limits beyond which a file is rejected (no real model comes close). */
#define LYRA_GGUF_MAX_DIMS 4
#define LYRA_GGUF_MAX_NAME 64                /* tensor names, NUL included (GGML_MAX_NAME) */
#define LYRA_GGUF_MAX_KEY_LEN 65536u         /* bytes in one key */
#define LYRA_GGUF_MAX_STRING_LEN (16u << 20) /* bytes in one string value that is kept */
#define LYRA_GGUF_MAX_KV (1u << 20)          /* key/value pairs */
#define LYRA_GGUF_MAX_TENSORS (1u << 22)     /* tensor infos */
#define LYRA_GGUF_MAX_ARRAY_LEN (1u << 30)   /* elements in one array (ggml's GGUF_MAX_ARRAY_ELEMENTS) */

/* One key/value pair.  Scalars and strings keep their value; arrays keep
 * only their element type and length (values are skipped, not stored).
 * Arrays hold scalars or strings: arrays of arrays are refused (ggml does
 * not read them). */
struct lyra_gguf_kv {
    char *key;           /* NUL-terminated */
    uint32_t type;       /* enum lyra_gguf_type */
    uint32_t array_type; /* element type when type is ARRAY (never ARRAY) */
    uint64_t array_len;  /* element count when type is ARRAY */
    union {
        uint64_t u; /* UINT8..UINT64 */
        int64_t i;  /* INT8..INT64 */
        double f;   /* FLOAT32, FLOAT64 */
        bool b;     /* BOOL */
        struct {
            char *ptr; /* NUL-terminated; may contain NULs before len */
            size_t len;
        } str; /* STRING */
    } v;
};

/* One tensor info.  n_bytes is derived from the shape and type. */
struct lyra_gguf_tensor {
    char name[LYRA_GGUF_MAX_NAME];
    uint32_t n_dims;
    int64_t dims[LYRA_GGUF_MAX_DIMS]; /* unused dimensions are 1 */
    uint32_t type;                    /* ggml type number */
    uint64_t offset;                  /* relative to the data section */
    uint64_t n_elements;
    uint64_t n_bytes;
};

struct lyra_gguf_info {
    uint32_t version;     /* 2 or 3 */
    uint64_t file_size;   /* bytes, as seen while reading */
    uint32_t alignment;   /* general.alignment, default 32 */
    uint64_t data_offset; /* where the tensor data section starts */
    uint64_t data_end;    /* the smallest file size the tensor infos allow */

    char *architecture;             /* general.architecture, NULL if absent */
    char *name;                     /* general.name, NULL if absent */
    int32_t file_type;              /* general.file_type (llama_ftype), -1 if absent */
    const char *file_type_name;     /* "Q8_0", "Q4_K_M", ...; static; NULL if absent or unknown */
    int32_t dominant_type;          /* ggml type holding most weights (2-D+ tensors), -1 if none */
    const char *dominant_type_name; /* "Q8_0", "F16", ...; static; NULL if none */
    uint64_t n_params;              /* sum of tensor element counts */

    /* From `<architecture>.*`; 0 when absent. */
    uint64_t context_length;
    uint64_t embedding_length;
    uint64_t block_count;
    uint64_t feed_forward_length;
    uint64_t head_count; /* 0 also when stored per layer (an array) */
    uint64_t head_count_kv;
    int32_t pooling_type;    /* <arch>.pooling_type: 0 none, 1 mean, 2 cls, 3 last, 4 rank; -1 absent */
    int8_t causal_attention; /* <arch>.causal_attention: 0/1, -1 absent */

    uint64_t vocab_size;   /* length of tokenizer.ggml.tokens, else <arch>.vocab_size, else 0 */
    char *tokenizer_model; /* tokenizer.ggml.model ("llama", "gpt2", ...), NULL if absent */
    char *chat_template;   /* tokenizer.chat_template, NULL if absent */

    struct lyra_gguf_kv *kvs; /* every key/value pair, in file order */
    size_t n_kvs;
    struct lyra_gguf_tensor *tensors; /* every tensor info, in file order */
    size_t n_tensors;
};

/* Reads the metadata of the GGUF file at `path` (borrowed).  On success
 * returns 0 and *out receives an info the caller frees with
 * lyra_gguf_info_free().  On failure *out is NULL and the result is:
 *   LYRA_EPARSE        not GGUF, not a regular file, truncated, corrupt (err
 *                      says where and why; truncation anywhere starts "truncated")
 *   LYRA_EUNSUPPORTED  GGUF version other than 2/3, big-endian file
 *   LYRA_ETOOBIG       a count or length over the LYRA_GGUF_MAX_* limits
 *   LYRA_ENOTFOUND, LYRA_EPERM, LYRA_EIO   the file cannot be read
 *   LYRA_ENOMEM
 * Reads only the metadata (buffered) plus one fstat, so it is fast even for
 * very large files.  Never maps the file, so a file truncated concurrently
 * gives an error, not SIGBUS. */
int lyra_gguf_read(const char *path, struct lyra_gguf_info **out, struct lyra_err *err);

/* Frees an info and everything it owns.  NULL is a no-op. */
void lyra_gguf_info_free(struct lyra_gguf_info *info);

/* The key/value pair named `key`, or NULL.  The result is borrowed from info. */
const struct lyra_gguf_kv *lyra_gguf_find(const struct lyra_gguf_info *info, const char *key);

/* The quantisation to show for a model: file_type_name if known, else
 * dominant_type_name, else NULL.  Static string. */
const char *lyra_gguf_quantization(const struct lyra_gguf_info *info);

/* Upper-case name of a ggml tensor type ("Q4_K", "F16"); NULL if unknown. */
const char *lyra_gguf_ggml_type_name(uint32_t ggml_type);

/* Name of a llama_ftype value ("Q4_K_M"); the "guessed" bit (1024) is
 * ignored.  NULL if unknown. */
const char *lyra_gguf_ftype_name(int32_t ftype);

/* Name of a key/value type ("uint32", "string", ...); "unknown" if invalid. */
const char *lyra_gguf_type_name(uint32_t type);

/* The info as a JSON object: version, file_size, architecture, name,
 * file_type, quantization, parameters, tensor_count, context_length,
 * embedding_length, block_count, feed_forward_length, head_count,
 * head_count_kv, vocab_size, tokenizer, chat_template, pooling_type,
 * causal_attention, and "metadata" (every key: scalars as values, arrays as
 * {"type":"array","element_type":...,"count":N}).  Absent values are null.
 * Strings that are not valid UTF-8 have their bad bytes replaced by U+FFFD.
 * Returns a new reference (caller json_decref()s it), NULL on NOMEM. */
json_t *lyra_gguf_info_to_json(const struct lyra_gguf_info *info);

#endif
