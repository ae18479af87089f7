/* gguf.c — GGUF metadata reader.
 *
 * Layout (ggml/include/gguf.h): magic "GGUF", u32 version, i64 tensor count,
 * i64 key/value count, the key/value pairs, the tensor infos, padding to
 * `general.alignment` (default 32), then the tensor data.  Strings are a u64
 * length and bytes without a NUL.  Versions 2 and 3 share this layout
 * (version 1 had 32-bit counts and is rejected, like ggml does).
 *
 * The file is read through a pread() window of READ_WINDOW bytes.  Before any
 * length or count is acted on it is compared with the bytes left in the file
 * (from fstat), so allocations are bounded by the file's size and by the
 * LYRA_GGUF_MAX_* limits.  Array values are skipped: a numeric array is one
 * seek, a string array one length read per element; arrays of arrays are
 * refused, as ggml refuses them.  mmap is avoided on
 * purpose: the registry reads files that users may be copying or truncating,
 * and a shrinking mapping would kill the daemon with SIGBUS.
 *
 * The per-tensor checks and the data-section arithmetic mirror ggml's
 * gguf_init_from_reader(); the type sizes come from ggml.c's type_traits and
 * the file-type names from llama.h's enum llama_ftype. */
#include "models/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define READ_WINDOW (256u * 1024u)
#define DEFAULT_ALIGNMENT 32u

/* ---- type tables ------------------------------------------------------ */

/* ggml type traits that matter for sizes: elements per block and bytes per
 * block (ggml/src/ggml.c type_traits).  Zero block size = removed/unknown. */
struct ggml_traits {
    const char *name;
    uint32_t blck_size;
    uint32_t type_size;
};

static const struct ggml_traits ggml_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},         [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},      [6] = {"Q5_0", 32, 22},      [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 36},      [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},   [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},   [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},  [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},  [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},        [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},   [30] = {"BF16", 1, 2},       [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},    [40] = {"NVFP4", 64, 36},
    [41] = {"Q1_0", 128, 18},    [42] = {"Q2_0", 64, 18},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

/* enum llama_ftype (include/llama.h), as quantisation names. */
static const char *const ftype_names[] = {
    [0] = "F32",     [1] = "F16",        [2] = "Q4_0",      [3] = "Q4_1",      [4] = "Q4_1_SOME_F16",
    [7] = "Q8_0",    [8] = "Q5_0",       [9] = "Q5_1",      [10] = "Q2_K",     [11] = "Q3_K_S",
    [12] = "Q3_K_M", [13] = "Q3_K_L",    [14] = "Q4_K_S",   [15] = "Q4_K_M",   [16] = "Q5_K_S",
    [17] = "Q5_K_M", [18] = "Q6_K",      [19] = "IQ2_XXS",  [20] = "IQ2_XS",   [21] = "Q2_K_S",
    [22] = "IQ3_XS", [23] = "IQ3_XXS",   [24] = "IQ1_S",    [25] = "IQ4_NL",   [26] = "IQ3_S",
    [27] = "IQ3_M",  [28] = "IQ2_S",     [29] = "IQ2_M",    [30] = "IQ4_XS",   [31] = "IQ1_M",
    [32] = "BF16",   [33] = "Q4_0_4_4",  [34] = "Q4_0_4_8", [35] = "Q4_0_8_8", [36] = "TQ1_0",
    [37] = "TQ2_0",  [38] = "MXFP4_MOE", [39] = "NVFP4",    [40] = "Q1_0",     [41] = "Q2_0",
};
#define N_FTYPES (sizeof ftype_names / sizeof ftype_names[0])
#define FTYPE_GUESSED 1024

static const char *const kv_type_names[LYRA_GGUF_TYPE_COUNT] = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

/* On-disk size of a fixed-size value type, 0 for string/array/unknown. */
static size_t scalar_size(uint32_t type)
{
    switch (type) {
    case LYRA_GGUF_TYPE_UINT8:
    case LYRA_GGUF_TYPE_INT8:
    case LYRA_GGUF_TYPE_BOOL:
        return 1;
    case LYRA_GGUF_TYPE_UINT16:
    case LYRA_GGUF_TYPE_INT16:
        return 2;
    case LYRA_GGUF_TYPE_UINT32:
    case LYRA_GGUF_TYPE_INT32:
    case LYRA_GGUF_TYPE_FLOAT32:
        return 4;
    case LYRA_GGUF_TYPE_UINT64:
    case LYRA_GGUF_TYPE_INT64:
    case LYRA_GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

const char *lyra_gguf_ggml_type_name(uint32_t ggml_type)
{
    if (ggml_type >= N_GGML_TYPES || ggml_types[ggml_type].blck_size == 0)
        return NULL;
    return ggml_types[ggml_type].name;
}

const char *lyra_gguf_ftype_name(int32_t ftype)
{
    if (ftype < 0)
        return NULL;
    ftype &= ~FTYPE_GUESSED;
    if ((size_t)ftype >= N_FTYPES)
        return NULL;
    return ftype_names[ftype];
}

const char *lyra_gguf_type_name(uint32_t type)
{
    return type < LYRA_GGUF_TYPE_COUNT ? kv_type_names[type] : "unknown";
}

/* ---- buffered reader -------------------------------------------------- */

struct reader {
    int fd;
    uint64_t size;      /* file size from fstat */
    uint64_t pos;       /* logical read position */
    unsigned char *buf; /* READ_WINDOW bytes */
    uint64_t win_off;   /* file offset of buf[0] */
    size_t win_len;     /* valid bytes in buf */
    char what[200];     /* what is being read, for messages */
    struct lyra_err *err;
};

static uint64_t remaining(const struct reader *r)
{
    return r->size - r->pos;
}

/* Records a truncation: `n` bytes were needed at the current position. */
static int truncated(struct reader *r, uint64_t n)
{
    return lyra_err_set(r->err, LYRA_EPARSE,
                        "truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64 ", file has %" PRIu64
                        " bytes",
                        r->what, n, r->pos, r->size);
}

/* Reads exactly n bytes at off into dst with pread; returns bytes read
 * (short only at end of file) or -errno. */
static ssize_t pread_full(int fd, void *dst, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)dst + got, n - got, (off_t)(off + got));
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

static int read_failed(struct reader *r, ssize_t got, uint64_t n)
{
    if (got < 0)
        return lyra_err_set(r->err, LYRA_EIO, "read error in %s at offset %" PRIu64 ": %s", r->what, r->pos,
                            strerror((int)-got));
    /* fstat said the bytes were there: the file shrank while being read. */
    return lyra_err_set(r->err, LYRA_EPARSE,
                        "truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64
                        ", the file ended at %" PRIu64 " while being read",
                        r->what, n, r->pos, r->pos + (uint64_t)got);
}

/* Makes n (<= READ_WINDOW) bytes at the position available in *p and
 * advances past them. */
static int rd_get(struct reader *r, size_t n, const unsigned char **p)
{
    if (n > remaining(r))
        return truncated(r, n);
    if (r->pos < r->win_off || r->pos + n > r->win_off + r->win_len) {
        uint64_t want = remaining(r) < READ_WINDOW ? remaining(r) : READ_WINDOW;
        ssize_t got = pread_full(r->fd, r->buf, (size_t)want, r->pos);
        r->win_off = r->pos;
        r->win_len = got > 0 ? (size_t)got : 0;
        if (got < (ssize_t)n)
            return read_failed(r, got, n);
    }
    *p = r->buf + (r->pos - r->win_off);
    r->pos += n;
    return 0;
}

static int rd_skip(struct reader *r, uint64_t n)
{
    if (n > remaining(r))
        return truncated(r, n);
    r->pos += n;
    return 0;
}

/* Copies n bytes at the position into dst (any size). */
static int rd_copy(struct reader *r, void *dst, size_t n)
{
    if (n <= READ_WINDOW) {
        const unsigned char *p = NULL;
        int rc = rd_get(r, n, &p);
        if (rc == 0 && n > 0)
            memcpy(dst, p, n);
        return rc;
    }
    if (n > remaining(r))
        return truncated(r, n);
    ssize_t got = pread_full(r->fd, dst, n, r->pos);
    if (got < (ssize_t)n)
        return read_failed(r, got, n);
    r->pos += n;
    return 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int rd_u32(struct reader *r, uint32_t *v)
{
    const unsigned char *p = NULL;
    int rc = rd_get(r, 4, &p);
    if (rc == 0)
        *v = le32(p);
    return rc;
}

static int rd_u64(struct reader *r, uint64_t *v)
{
    const unsigned char *p = NULL;
    int rc = rd_get(r, 8, &p);
    if (rc == 0)
        *v = le64(p);
    return rc;
}

/* Reads a string length and checks that the string fits in the file. */
static int rd_strlen(struct reader *r, uint64_t *len)
{
    int rc = rd_u64(r, len);
    if (rc == 0 && *len > remaining(r))
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "truncated: %s has a string of %" PRIu64 " bytes at offset %" PRIu64
                            " but only %" PRIu64 " bytes follow",
                            r->what, *len, r->pos - 8, remaining(r));
    return rc;
}

/* Reads a string of len bytes (already checked) into a new NUL-terminated
 * buffer. */
static int rd_strdup(struct reader *r, uint64_t len, char **out)
{
    char *s = malloc((size_t)len + 1);
    if (!s)
        return lyra_err_set(r->err, LYRA_ENOMEM, "out of memory reading %s", r->what);
    int rc = rd_copy(r, s, (size_t)len);
    if (rc) {
        free(s);
        return rc;
    }
    s[len] = '\0';
    *out = s;
    return 0;
}

/* Copies up to 64 bytes of s into buf for an error message, replacing
 * anything unprintable by '?'. */
static const char *printable(char *buf, size_t cap, const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 4 < cap && i < 64; i++)
        buf[n++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (len > 64 && n + 4 < cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* ---- key/value pairs -------------------------------------------------- */

/* Skips the elements of an array of `count` values of type `type` (a
 * scalar type or STRING: ggml reads no arrays of arrays). */
static int skip_array(struct reader *r, uint32_t type, uint64_t count)
{
    size_t es = scalar_size(type);
    if (es) {
        if (count > remaining(r) / es)
            return lyra_err_set(r->err, LYRA_EPARSE,
                                "truncated: %s is an array of %" PRIu64 " %s values at offset %" PRIu64
                                " but only %" PRIu64 " bytes follow",
                                r->what, count, lyra_gguf_type_name(type), r->pos, remaining(r));
        return rd_skip(r, count * es);
    }
    if (type == LYRA_GGUF_TYPE_STRING) {
        if (count > remaining(r) / 8)
            return lyra_err_set(r->err, LYRA_EPARSE,
                                "truncated: %s is an array of %" PRIu64 " strings at offset %" PRIu64
                                " but only %" PRIu64 " bytes follow",
                                r->what, count, r->pos, remaining(r));
        for (uint64_t i = 0; i < count; i++) {
            uint64_t len;
            int rc = rd_strlen(r, &len);
            if (rc)
                return rc;
            r->pos += len;
        }
        return 0;
    }
    return lyra_err_set(r->err, LYRA_EPARSE, "%s has unknown array element type %" PRIu32, r->what, type);
}

static int read_kv(struct reader *r, size_t idx, struct lyra_gguf_kv *kv)
{
    char pbuf[80];
    uint64_t len;
    snprintf(r->what, sizeof r->what, "key #%zu", idx);
    int rc = rd_strlen(r, &len);
    if (rc)
        return rc;
    if (len == 0)
        return lyra_err_set(r->err, LYRA_EPARSE, "key #%zu at offset %" PRIu64 " is empty", idx, r->pos - 8);
    if (len > LYRA_GGUF_MAX_KEY_LEN)
        return lyra_err_set(r->err, LYRA_ETOOBIG, "key #%zu is %" PRIu64 " bytes (limit %u)", idx, len,
                            LYRA_GGUF_MAX_KEY_LEN);
    rc = rd_strdup(r, len, &kv->key);
    if (rc)
        return rc;
    snprintf(r->what, sizeof r->what, "key #%zu '%s'", idx,
             printable(pbuf, sizeof pbuf, kv->key, (size_t)len));

    uint64_t at = r->pos;
    rc = rd_u32(r, &kv->type);
    if (rc)
        return rc;
    if (kv->type >= LYRA_GGUF_TYPE_COUNT)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s has unknown value type %" PRIu32 " at offset %" PRIu64,
                            r->what, kv->type, at);

    size_t es = scalar_size(kv->type);
    if (es) {
        const unsigned char *p = NULL;
        rc = rd_get(r, es, &p);
        if (rc)
            return rc;
        uint64_t raw = es == 1 ? p[0] : es == 2 ? (uint64_t)(p[0] | p[1] << 8) : es == 4 ? le32(p) : le64(p);
        switch (kv->type) {
        case LYRA_GGUF_TYPE_UINT8:
        case LYRA_GGUF_TYPE_UINT16:
        case LYRA_GGUF_TYPE_UINT32:
        case LYRA_GGUF_TYPE_UINT64:
            kv->v.u = raw;
            break;
        case LYRA_GGUF_TYPE_INT8:
            kv->v.i = (int8_t)raw;
            break;
        case LYRA_GGUF_TYPE_INT16:
            kv->v.i = (int16_t)raw;
            break;
        case LYRA_GGUF_TYPE_INT32:
            kv->v.i = (int32_t)raw;
            break;
        case LYRA_GGUF_TYPE_INT64:
            kv->v.i = (int64_t)raw;
            break;
        case LYRA_GGUF_TYPE_BOOL:
            kv->v.b = raw != 0;
            break;
        case LYRA_GGUF_TYPE_FLOAT32: {
            uint32_t bits = (uint32_t)raw;
            float f;
            memcpy(&f, &bits, sizeof f);
            kv->v.f = f;
            break;
        }
        case LYRA_GGUF_TYPE_FLOAT64: {
            double d;
            memcpy(&d, &raw, sizeof d);
            kv->v.f = d;
            break;
        }
        }
        return 0;
    }
    if (kv->type == LYRA_GGUF_TYPE_STRING) {
        rc = rd_strlen(r, &len);
        if (rc)
            return rc;
        if (len > LYRA_GGUF_MAX_STRING_LEN)
            return lyra_err_set(r->err, LYRA_ETOOBIG, "%s has a %" PRIu64 "-byte string (limit %u)", r->what,
                                len, LYRA_GGUF_MAX_STRING_LEN);
        kv->v.str.len = (size_t)len;
        return rd_strdup(r, len, &kv->v.str.ptr);
    }
    /* LYRA_GGUF_TYPE_ARRAY */
    at = r->pos;
    rc = rd_u32(r, &kv->array_type);
    if (rc == 0)
        rc = rd_u64(r, &kv->array_len);
    if (rc)
        return rc;
    if (kv->array_type >= LYRA_GGUF_TYPE_COUNT)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "%s has unknown array element type %" PRIu32 " at offset %" PRIu64, r->what,
                            kv->array_type, at);
    /* ggml's reader (gguf_init_from_reader) refuses both, so a file that has
     * them would be listed as valid and then fail to load. */
    if (kv->array_type == LYRA_GGUF_TYPE_ARRAY)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s is an array of arrays at offset %" PRIu64
                            " (ggml does not read nested arrays)", r->what, at);
    rc = skip_array(r, kv->array_type, kv->array_len);
    if (rc == 0 && kv->array_len > LYRA_GGUF_MAX_ARRAY_LEN)
        return lyra_err_set(r->err, LYRA_ETOOBIG, "%s is an array of %" PRIu64 " elements (limit %u)", r->what,
                            kv->array_len, LYRA_GGUF_MAX_ARRAY_LEN);
    return rc;
}

/* ---- tensor infos ----------------------------------------------------- */

static int read_tensor(struct reader *r, size_t idx, struct lyra_gguf_tensor *t)
{
    char pbuf[80];
    uint64_t len;
    snprintf(r->what, sizeof r->what, "tensor info #%zu", idx);
    int rc = rd_strlen(r, &len);
    if (rc)
        return rc;
    if (len >= LYRA_GGUF_MAX_NAME)
        return lyra_err_set(r->err, LYRA_EPARSE, "tensor info #%zu has a %" PRIu64 "-byte name (limit %d)",
                            idx, len, LYRA_GGUF_MAX_NAME - 1);
    rc = rd_copy(r, t->name, (size_t)len);
    if (rc)
        return rc;
    t->name[len] = '\0';
    snprintf(r->what, sizeof r->what, "tensor '%s'", printable(pbuf, sizeof pbuf, t->name, (size_t)len));

    rc = rd_u32(r, &t->n_dims);
    if (rc)
        return rc;
    if (t->n_dims > LYRA_GGUF_MAX_DIMS)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s has %" PRIu32 " dimensions (at most %d)", r->what,
                            t->n_dims, LYRA_GGUF_MAX_DIMS);
    bool empty = false;
    for (uint32_t j = 0; j < LYRA_GGUF_MAX_DIMS; j++) {
        t->dims[j] = 1;
        if (j < t->n_dims) {
            uint64_t d;
            rc = rd_u64(r, &d);
            if (rc)
                return rc;
            if (d > INT64_MAX)
                return lyra_err_set(r->err, LYRA_EPARSE, "%s has a negative dimension %" PRId64, r->what,
                                    (int64_t)d);
            t->dims[j] = (int64_t)d;
            empty = empty || d == 0;
        }
    }
    /* ggml's own test, so that both accept the same shapes: a tensor with a
     * zero dimension has no elements whatever the others are; otherwise the
     * element count must stay below INT64_MAX (each product is formed only
     * once the previous test has shown it fits). */
    const int64_t *ne = t->dims;
    if (!empty && (INT64_MAX / ne[1] <= ne[0] || INT64_MAX / ne[2] <= ne[0] * ne[1] ||
                   INT64_MAX / ne[3] <= ne[0] * ne[1] * ne[2]))
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "%s has too many elements (%" PRId64 " x %" PRId64 " x %" PRId64 " x %" PRId64
                            ")",
                            r->what, t->dims[0], t->dims[1], t->dims[2], t->dims[3]);
    t->n_elements = empty ? 0 : (uint64_t)(ne[0] * ne[1] * ne[2] * ne[3]);

    uint64_t at = r->pos;
    rc = rd_u32(r, &t->type);
    if (rc)
        return rc;
    const char *tname = lyra_gguf_ggml_type_name(t->type);
    if (!tname)
        return lyra_err_set(r->err, LYRA_EPARSE, "%s has unknown ggml type %" PRIu32 " at offset %" PRIu64,
                            r->what, t->type, at);
    const struct ggml_traits *tt = &ggml_types[t->type];
    if (t->dims[0] % tt->blck_size != 0)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "%s of type %s has %" PRId64 " elements per row, not a multiple of "
                            "the block size %" PRIu32,
                            r->what, tname, t->dims[0], tt->blck_size);
    if (__builtin_mul_overflow(t->n_elements / tt->blck_size, (uint64_t)tt->type_size, &t->n_bytes))
        return lyra_err_set(r->err, LYRA_EPARSE, "%s is too large", r->what);
    return rd_u64(r, &t->offset);
}

/* ---- lookups and derived fields -------------------------------------- */

const struct lyra_gguf_kv *lyra_gguf_find(const struct lyra_gguf_info *info, const char *key)
{
    if (!info || !key)
        return NULL;
    for (size_t i = 0; i < info->n_kvs; i++)
        if (strcmp(info->kvs[i].key, key) == 0)
            return &info->kvs[i];
    return NULL;
}

/* `<arch>.<suffix>` without building the key. */
static const struct lyra_gguf_kv *find_arch(const struct lyra_gguf_info *info, const char *suffix)
{
    if (!info->architecture)
        return NULL;
    size_t al = strlen(info->architecture), sl = strlen(suffix);
    for (size_t i = 0; i < info->n_kvs; i++) {
        const char *k = info->kvs[i].key;
        if (strncmp(k, info->architecture, al) == 0 && k[al] == '.' && strcmp(k + al + 1, suffix) == 0 &&
            strlen(k) == al + 1 + sl)
            return &info->kvs[i];
    }
    return NULL;
}

/* A non-negative integer value, else false. */
static bool kv_uint(const struct lyra_gguf_kv *kv, uint64_t *out)
{
    if (!kv)
        return false;
    switch (kv->type) {
    case LYRA_GGUF_TYPE_UINT8:
    case LYRA_GGUF_TYPE_UINT16:
    case LYRA_GGUF_TYPE_UINT32:
    case LYRA_GGUF_TYPE_UINT64:
        *out = kv->v.u;
        return true;
    case LYRA_GGUF_TYPE_INT8:
    case LYRA_GGUF_TYPE_INT16:
    case LYRA_GGUF_TYPE_INT32:
    case LYRA_GGUF_TYPE_INT64:
        if (kv->v.i < 0)
            return false;
        *out = (uint64_t)kv->v.i;
        return true;
    default:
        return false;
    }
}

static uint64_t arch_uint(const struct lyra_gguf_info *info, const char *suffix)
{
    uint64_t v = 0;
    return kv_uint(find_arch(info, suffix), &v) ? v : 0;
}

static char *kv_str(const struct lyra_gguf_info *info, const char *key)
{
    const struct lyra_gguf_kv *kv = lyra_gguf_find(info, key);
    return kv && kv->type == LYRA_GGUF_TYPE_STRING ? kv->v.str.ptr : NULL;
}

static void derive_fields(struct lyra_gguf_info *info)
{
    uint64_t v;
    info->architecture = kv_str(info, "general.architecture");
    info->name = kv_str(info, "general.name");
    info->tokenizer_model = kv_str(info, "tokenizer.ggml.model");
    info->chat_template = kv_str(info, "tokenizer.chat_template");

    info->file_type = -1;
    if (kv_uint(lyra_gguf_find(info, "general.file_type"), &v) && v <= INT32_MAX) {
        info->file_type = (int32_t)v;
        info->file_type_name = lyra_gguf_ftype_name(info->file_type);
    }

    /* The type holding most elements among matrices; 1-D tensors (norms,
     * biases) are F32 whatever the quantisation, so only count them when
     * there is nothing else. */
    uint64_t by_type[N_GGML_TYPES] = {0}, by_type_1d[N_GGML_TYPES] = {0};
    for (size_t i = 0; i < info->n_tensors; i++) {
        const struct lyra_gguf_tensor *t = &info->tensors[i];
        uint64_t *acc = t->n_dims >= 2 ? by_type : by_type_1d;
        acc[t->type] += t->n_elements;
    }
    info->dominant_type = -1;
    for (int pass = 0; pass < 2 && info->dominant_type < 0; pass++) {
        const uint64_t *acc = pass == 0 ? by_type : by_type_1d;
        uint64_t best = 0;
        for (size_t t = 0; t < N_GGML_TYPES; t++)
            if (acc[t] > best) {
                best = acc[t];
                info->dominant_type = (int32_t)t;
            }
    }
    if (info->dominant_type >= 0)
        info->dominant_type_name = lyra_gguf_ggml_type_name((uint32_t)info->dominant_type);

    info->context_length = arch_uint(info, "context_length");
    info->embedding_length = arch_uint(info, "embedding_length");
    info->block_count = arch_uint(info, "block_count");
    info->feed_forward_length = arch_uint(info, "feed_forward_length");
    info->head_count = arch_uint(info, "attention.head_count");
    info->head_count_kv = arch_uint(info, "attention.head_count_kv");
    info->pooling_type = -1;
    if (kv_uint(find_arch(info, "pooling_type"), &v) && v <= INT32_MAX)
        info->pooling_type = (int32_t)v;
    info->causal_attention = -1;
    const struct lyra_gguf_kv *ca = find_arch(info, "causal_attention");
    if (ca && ca->type == LYRA_GGUF_TYPE_BOOL)
        info->causal_attention = ca->v.b ? 1 : 0;

    const struct lyra_gguf_kv *tokens = lyra_gguf_find(info, "tokenizer.ggml.tokens");
    if (tokens && tokens->type == LYRA_GGUF_TYPE_ARRAY)
        info->vocab_size = tokens->array_len;
    else
        info->vocab_size = arch_uint(info, "vocab_size");
}

const char *lyra_gguf_quantization(const struct lyra_gguf_info *info)
{
    if (!info)
        return NULL;
    return info->file_type_name ? info->file_type_name : info->dominant_type_name;
}

/* ---- the reader proper ------------------------------------------------ */

static int cmp_cstr_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a duplicate among n strings in O(n log n); returns it or NULL. */
static const char *find_duplicate(const char **names, size_t n)
{
    if (n < 2)
        return NULL;
    qsort(names, n, sizeof *names, cmp_cstr_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

static int check_duplicates(struct reader *r, struct lyra_gguf_info *info)
{
    char pbuf[80];
    size_t n = info->n_kvs > info->n_tensors ? info->n_kvs : info->n_tensors;
    if (n < 2)
        return 0;
    const char **names = malloc(n * sizeof *names);
    if (!names)
        return lyra_err_set(r->err, LYRA_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < info->n_kvs; i++)
        names[i] = info->kvs[i].key;
    const char *dup = find_duplicate(names, info->n_kvs);
    if (dup) {
        rc = lyra_err_set(r->err, LYRA_EPARSE, "duplicate key '%s'",
                          printable(pbuf, sizeof pbuf, dup, strlen(dup)));
    } else {
        for (size_t i = 0; i < info->n_tensors; i++)
            names[i] = info->tensors[i].name;
        dup = find_duplicate(names, info->n_tensors);
        if (dup)
            rc = lyra_err_set(r->err, LYRA_EPARSE, "duplicate tensor name '%s'",
                              printable(pbuf, sizeof pbuf, dup, strlen(dup)));
    }
    free(names);
    return rc;
}

static int parse(struct reader *r, struct lyra_gguf_info *info)
{
    const unsigned char *p = NULL;
    int rc;

    snprintf(r->what, sizeof r->what, "GGUF header");
    if (r->size >= 4) {
        rc = rd_get(r, 4, &p);
        if (rc)
            return rc;
        if (memcmp(p, "GGUF", 4) != 0)
            /* The bytes themselves are not shown: the message can reach an
             * API caller (a pull of a local path), and the first bytes of
             * an arbitrary file are its content. */
            return lyra_err_set(r->err, LYRA_EPARSE, "not a GGUF file (it does not start with \"GGUF\")");
    } else {
        /* Say "not GGUF" rather than "truncated" when the bytes that are
         * there already disagree with the magic. */
        unsigned char m[4] = {0};
        ssize_t got = pread_full(r->fd, m, (size_t)r->size, 0);
        if (got == (ssize_t)r->size && memcmp(m, "GGUF", (size_t)r->size) != 0)
            return lyra_err_set(r->err, LYRA_EPARSE, "not a GGUF file (%" PRIu64 " bytes)", r->size);
        return truncated(r, 4);
    }
    rc = rd_u32(r, &info->version);
    if (rc)
        return rc;
    if ((info->version & 0xffffu) == 0 && info->version != 0)
        return lyra_err_set(r->err, LYRA_EUNSUPPORTED,
                            "unsupported GGUF version 0x%08" PRIx32 " (big-endian files are not supported)",
                            info->version);
    if (info->version == 1)
        return lyra_err_set(r->err, LYRA_EUNSUPPORTED,
                            "unsupported GGUF version 1 (only versions 2 and 3 are read; "
                            "convert the file with a current llama.cpp)");
    if (info->version < 2 || info->version > 3)
        return lyra_err_set(r->err, LYRA_EUNSUPPORTED,
                            "unsupported GGUF version %" PRIu32 " (only versions 2 and 3 are read)",
                            info->version);
    uint64_t n_tensors, n_kv;
    rc = rd_u64(r, &n_tensors);
    if (rc == 0)
        rc = rd_u64(r, &n_kv);
    if (rc)
        return rc;
    /* Smallest encodings: a key/value pair is 8+1+4+1 bytes, a tensor info
     * 8+4+4+8. */
    if (n_kv > remaining(r) / 14)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "truncated: header declares %" PRIu64 " key/value pairs but only %" PRIu64
                            " bytes follow the header",
                            n_kv, remaining(r));
    if (n_tensors > remaining(r) / 24)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "truncated: header declares %" PRIu64 " tensors but only %" PRIu64
                            " bytes follow the header",
                            n_tensors, remaining(r));
    if (n_kv > LYRA_GGUF_MAX_KV)
        return lyra_err_set(r->err, LYRA_ETOOBIG, "%" PRIu64 " key/value pairs (limit %u)", n_kv,
                            LYRA_GGUF_MAX_KV);
    if (n_tensors > LYRA_GGUF_MAX_TENSORS)
        return lyra_err_set(r->err, LYRA_ETOOBIG, "%" PRIu64 " tensors (limit %u)", n_tensors,
                            LYRA_GGUF_MAX_TENSORS);

    if (n_kv > 0) {
        info->kvs = calloc((size_t)n_kv, sizeof *info->kvs);
        if (!info->kvs)
            return lyra_err_set(r->err, LYRA_ENOMEM, "out of memory for %" PRIu64 " keys", n_kv);
    }
    for (size_t i = 0; i < n_kv; i++) {
        info->n_kvs = i + 1; /* so that a partial pair is freed too */
        rc = read_kv(r, i, &info->kvs[i]);
        if (rc)
            return rc;
    }

    info->alignment = DEFAULT_ALIGNMENT;
    const struct lyra_gguf_kv *al = lyra_gguf_find(info, "general.alignment");
    if (al) {
        if (al->type != LYRA_GGUF_TYPE_UINT32)
            return lyra_err_set(r->err, LYRA_EPARSE, "general.alignment must be uint32, is %s",
                                lyra_gguf_type_name(al->type));
        if (al->v.u == 0 || (al->v.u & (al->v.u - 1)) != 0)
            return lyra_err_set(r->err, LYRA_EPARSE, "general.alignment %" PRIu64 " is not a power of 2",
                                al->v.u);
        info->alignment = (uint32_t)al->v.u;
    }

    if (n_tensors > remaining(r) / 24)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "truncated: %" PRIu64 " tensor infos need at least %" PRIu64
                            " bytes at offset %" PRIu64 ", file has %" PRIu64 " bytes",
                            n_tensors, n_tensors * 24, r->pos, r->size);
    if (n_tensors > 0) {
        info->tensors = calloc((size_t)n_tensors, sizeof *info->tensors);
        if (!info->tensors)
            return lyra_err_set(r->err, LYRA_ENOMEM, "out of memory for %" PRIu64 " tensors", n_tensors);
    }
    for (size_t i = 0; i < n_tensors; i++) {
        rc = read_tensor(r, i, &info->tensors[i]);
        if (rc)
            return rc;
        info->n_tensors = i + 1;
    }
    rc = check_duplicates(r, info);
    if (rc)
        return rc;

    /* Tensors must sit back to back, each padded to the alignment, in the
     * order of their infos (what ggml requires). */
    uint64_t align = info->alignment;
    info->data_offset = r->pos;
    info->data_end = r->pos;
    if (n_tensors > 0) {
        info->data_offset = (r->pos + align - 1) / align * align;
        uint64_t expect = 0;
        char pbuf[80];
        for (size_t i = 0; i < info->n_tensors; i++) {
            const struct lyra_gguf_tensor *t = &info->tensors[i];
            if (t->offset != expect)
                return lyra_err_set(
                    r->err, LYRA_EPARSE, "tensor '%s' has data offset %" PRIu64 ", expected %" PRIu64,
                    printable(pbuf, sizeof pbuf, t->name, strlen(t->name)), t->offset, expect);
            uint64_t padded, end;
            if (__builtin_add_overflow(t->n_bytes, align - 1, &padded) ||
                __builtin_add_overflow(expect, padded / align * align, &expect) ||
                __builtin_add_overflow(info->data_offset, t->offset + t->n_bytes, &end))
                return lyra_err_set(r->err, LYRA_EPARSE,
                                    "truncated: tensor data needs more than 2^64 bytes, file has %" PRIu64,
                                    r->size);
            info->data_end = end;
            if (__builtin_add_overflow(info->n_params, t->n_elements, &info->n_params))
                return lyra_err_set(r->err, LYRA_EPARSE, "parameter count overflows");
        }
    }
    if (info->data_end > r->size)
        return lyra_err_set(r->err, LYRA_EPARSE,
                            "truncated: tensor data needs %" PRIu64 " bytes, file has %" PRIu64,
                            info->data_end, r->size);
    return 0;
}

int lyra_gguf_read(const char *path, struct lyra_gguf_info **out, struct lyra_err *err)
{
    *out = NULL;
    /* O_NONBLOCK: a fifo named *.gguf must not hang the caller in open(). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        int code = e == ENOENT || e == ENOTDIR ? LYRA_ENOTFOUND
                   : e == EACCES || e == EPERM ? LYRA_EPERM
                                               : LYRA_EIO;
        return lyra_err_set(err, code, "cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lyra_err_set(err, LYRA_EIO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lyra_err_set(err, LYRA_EPARSE, "%s is not a regular file", path);
    }
    struct reader r = {.fd = fd, .size = (uint64_t)st.st_size, .err = err};
    struct lyra_gguf_info *info = calloc(1, sizeof *info);
    r.buf = malloc(READ_WINDOW);
    int rc;
    if (!info || !r.buf) {
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    } else {
        info->file_size = r.size;
        rc = parse(&r, info);
    }
    free(r.buf);
    close(fd);
    if (rc) {
        lyra_gguf_info_free(info);
        return rc;
    }
    derive_fields(info);
    *out = info;
    return 0;
}

void lyra_gguf_info_free(struct lyra_gguf_info *info)
{
    if (!info)
        return;
    for (size_t i = 0; i < info->n_kvs; i++) {
        free(info->kvs[i].key);
        if (info->kvs[i].type == LYRA_GGUF_TYPE_STRING)
            free(info->kvs[i].v.str.ptr);
    }
    free(info->kvs);
    free(info->tensors);
    free(info);
}

/* ---- JSON ------------------------------------------------------------- */

/* Expected length of a UTF-8 sequence from its lead byte, 0 if invalid. */
static size_t utf8_seq_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef)
        return 3;
    if (c >= 0xf0 && c <= 0xf4)
        return 4;
    return 0;
}

/* A copy of s[0..len) with invalid UTF-8 replaced by U+FFFD; *out_len gets
 * its length.  Caller frees. */
static char *utf8_repair(const char *s, size_t len, size_t *out_len)
{
    if (len > (SIZE_MAX - 1) / 3)
        return NULL;
    char *o = malloc(len * 3 + 1);
    if (!o)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq_len((unsigned char)s[i]);
        if (k && k <= len - i && lyra_utf8_valid(s + i, k)) {
            memcpy(o + n, s + i, k);
            n += k;
            i += k;
        } else {
            memcpy(o + n, "\xef\xbf\xbd", 3);
            n += 3;
            i++;
        }
    }
    o[n] = '\0';
    *out_len = n;
    return o;
}

static json_t *jstrn(const char *s, size_t len)
{
    if (!s)
        return json_null();
    if (lyra_utf8_valid(s, len))
        return json_stringn(s, len);
    size_t n;
    char *fixed = utf8_repair(s, len, &n);
    if (!fixed)
        return NULL;
    json_t *j = json_stringn(fixed, n);
    free(fixed);
    return j;
}

static json_t *jstr(const char *s)
{
    return s ? jstrn(s, strlen(s)) : json_null();
}

static json_t *juint(uint64_t v)
{
    return v <= INT64_MAX ? json_integer((json_int_t)v) : json_real((double)v);
}

/* Zero means "absent" for the architecture fields. */
static json_t *juint_or_null(uint64_t v)
{
    return v ? juint(v) : json_null();
}

static json_t *jreal(double d)
{
    return isfinite(d) ? json_real(d) : json_null();
}

static json_t *kv_value_json(const struct lyra_gguf_kv *kv)
{
    switch (kv->type) {
    case LYRA_GGUF_TYPE_UINT8:
    case LYRA_GGUF_TYPE_UINT16:
    case LYRA_GGUF_TYPE_UINT32:
    case LYRA_GGUF_TYPE_UINT64:
        return juint(kv->v.u);
    case LYRA_GGUF_TYPE_INT8:
    case LYRA_GGUF_TYPE_INT16:
    case LYRA_GGUF_TYPE_INT32:
    case LYRA_GGUF_TYPE_INT64:
        return json_integer((json_int_t)kv->v.i);
    case LYRA_GGUF_TYPE_FLOAT32:
    case LYRA_GGUF_TYPE_FLOAT64:
        return jreal(kv->v.f);
    case LYRA_GGUF_TYPE_BOOL:
        return json_boolean(kv->v.b);
    case LYRA_GGUF_TYPE_STRING:
        return jstrn(kv->v.str.ptr, kv->v.str.len);
    default:
        return json_pack("{s:s, s:s, s:o}", "type", "array", "element_type",
                         lyra_gguf_type_name(kv->array_type), "count", juint(kv->array_len));
    }
}

/* Sets obj[key] = val, taking val; returns false on NOMEM (val consumed). */
static bool put(json_t *obj, const char *key, json_t *val)
{
    return val && json_object_set_new(obj, key, val) == 0;
}

json_t *lyra_gguf_info_to_json(const struct lyra_gguf_info *info)
{
    if (!info)
        return json_null();
    json_t *o = json_object();
    json_t *meta = json_object();
    if (!o || !meta)
        goto fail;
    bool ok =
        put(o, "version", json_integer(info->version)) && put(o, "file_size", juint(info->file_size)) &&
        put(o, "architecture", jstr(info->architecture)) && put(o, "name", jstr(info->name)) &&
        put(o, "file_type", info->file_type >= 0 ? json_integer(info->file_type) : json_null()) &&
        put(o, "quantization", jstr(lyra_gguf_quantization(info))) &&
        put(o, "parameters", juint(info->n_params)) && put(o, "tensor_count", juint(info->n_tensors)) &&
        put(o, "context_length", juint_or_null(info->context_length)) &&
        put(o, "embedding_length", juint_or_null(info->embedding_length)) &&
        put(o, "block_count", juint_or_null(info->block_count)) &&
        put(o, "feed_forward_length", juint_or_null(info->feed_forward_length)) &&
        put(o, "head_count", juint_or_null(info->head_count)) &&
        put(o, "head_count_kv", juint_or_null(info->head_count_kv)) &&
        put(o, "vocab_size", juint_or_null(info->vocab_size)) &&
        put(o, "tokenizer", jstr(info->tokenizer_model)) &&
        put(o, "chat_template", jstr(info->chat_template)) &&
        put(o, "pooling_type", info->pooling_type >= 0 ? json_integer(info->pooling_type) : json_null()) &&
        put(o, "causal_attention",
            info->causal_attention >= 0 ? json_boolean(info->causal_attention) : json_null());
    for (size_t i = 0; ok && i < info->n_kvs; i++) {
        const struct lyra_gguf_kv *kv = &info->kvs[i];
        json_t *v = kv_value_json(kv);
        size_t klen = strlen(kv->key), n;
        if (lyra_utf8_valid(kv->key, klen)) {
            ok = v && json_object_set_new(meta, kv->key, v) == 0;
        } else {
            char *k = utf8_repair(kv->key, klen, &n);
            ok = k && v && json_object_set_new(meta, k, v) == 0;
            if (!k)
                json_decref(v);
            free(k);
        }
    }
    if (!ok)
        goto fail;
    if (json_object_set_new(o, "metadata", meta) == 0)
        return o;
    meta = NULL; /* consumed by json_object_set_new even on failure */
fail:
    json_decref(meta);
    json_decref(o);
    return NULL;
}
