/* test_registry.c — model discovery, naming, validity, lookup, refresh and
 * concurrent readers, in a temporary models directory of small synthetic
 * GGUF files (and the real tiny model through a symlink when it exists). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/error.h"
#include "core/limits.h"
#include "core/util.h"
#include "models/registry.h"

/* ---- fixture ----------------------------------------------------------- */

struct fx {
    char root[64];
    char models[96];
    char elsewhere[96];
    struct lyra_config cfg;
    struct lyra_model_entry entries[3];
    char *chat_aliases[1];
    char *override_aliases[2];
    char abs_path[160];
    struct lyra_registry *reg;
};

static void put_le(unsigned char **p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}

static void put_str(unsigned char **p, const char *s)
{
    put_le(p, strlen(s), 8);
    memcpy(*p, s, strlen(s));
    *p += strlen(s);
}

/* Builds a valid GGUF in buf (>= 1024 bytes): arch "llama", the given
 * context length, a chat template, one F32 tensor of 64 elements.  Returns
 * its size. */
static size_t make_gguf(unsigned char *buf, uint32_t ctx_len)
{
    unsigned char *p = buf;
    memcpy(p, "GGUF", 4);
    p += 4;
    put_le(&p, 3, 4);
    put_le(&p, 1, 8); /* tensors */
    put_le(&p, 4, 8); /* key/value pairs */
    put_str(&p, "general.architecture");
    put_le(&p, 8, 4);
    put_str(&p, "llama");
    put_str(&p, "llama.context_length");
    put_le(&p, 4, 4);
    put_le(&p, ctx_len, 4);
    put_str(&p, "general.file_type");
    put_le(&p, 4, 4);
    put_le(&p, 0, 4);
    put_str(&p, "tokenizer.chat_template");
    put_le(&p, 8, 4);
    put_str(&p, "<|im_start|>{{ m }}");
    put_str(&p, "w");
    put_le(&p, 1, 4);
    put_le(&p, 64, 8);
    put_le(&p, 0, 4); /* F32 */
    put_le(&p, 0, 8);
    size_t n = (size_t)(p - buf);
    while (n % 32)
        buf[n++] = 0;
    memset(buf + n, 0x3f, 256);
    return n + 256;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Writes a valid model (or its first `trunc` bytes when trunc > 0). */
static void write_model(const char *dir, const char *file, uint32_t ctx_len, size_t trunc)
{
    unsigned char buf[1024];
    size_t n = make_gguf(buf, ctx_len);
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_bytes(path, buf, trunc ? trunc : n);
}

static void path_in(char *out, size_t cap, const char *dir, const char *file)
{
    snprintf(out, cap, "%s/%s", dir, file);
}

/* Where the generated models are, or NULL. */
static const char *real_tiny(void)
{
    static char path[512];
    const char *env = getenv("LYRA_TEST_MODELS");
    const char *cands[] = {env, "models", "../build/models"};
    for (size_t i = 0; i < 3; i++) {
        if (!cands[i])
            continue;
        snprintf(path, sizeof path, "%s/tiny.gguf", cands[i]);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

/* Layout:
 *   models/alpha.gguf          valid (ctx 1000)
 *   models/broken.gguf         first 100 bytes of a valid file
 *   models/notgguf.gguf        text
 *   models/linked.gguf   ->    ../elsewhere/real.gguf (outside models/: not listed)
 *   models/inner.gguf    ->    sub.gguf/x.gguf (a link inside models/: listed, ctx 3000)
 *   models/dangling.gguf ->    ../elsewhere/none.gguf
 *   models/override.gguf       valid, but config entry "override" replaces it
 *   models/ov.gguf             valid, but "ov" is an alias of "override"
 *   models/sub.gguf/x.gguf     directory: not scanned
 *   models/.hidden.gguf, models/readme.txt: ignored
 * entries:
 *   chat     -> absolute elsewhere/real.gguf, alias "assistant", settings
 *   override -> "sub.gguf/x.gguf" (relative to models/), aliases ov, default
 *   ghost    -> "missing.gguf" */
static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    strcpy(f->root, "/tmp/lyra-test-registry-XXXXXX");
    if (!mkdtemp(f->root))
        return -1;
    path_in(f->models, sizeof f->models, f->root, "models");
    path_in(f->elsewhere, sizeof f->elsewhere, f->root, "elsewhere");
    mkdir(f->models, 0700);
    mkdir(f->elsewhere, 0700);
    char p[256], q[256];

    write_model(f->models, "alpha.gguf", 1000, 0);
    write_model(f->models, "broken.gguf", 1000, 100);
    path_in(p, sizeof p, f->models, "notgguf.gguf");
    write_bytes(p, "hello, world\n", 13);
    write_model(f->elsewhere, "real.gguf", 2000, 0);
    path_in(p, sizeof p, f->models, "linked.gguf");
    if (symlink("../elsewhere/real.gguf", p) != 0)
        return -1;
    path_in(p, sizeof p, f->models, "inner.gguf");
    if (symlink("sub.gguf/x.gguf", p) != 0)
        return -1;
    path_in(p, sizeof p, f->models, "dangling.gguf");
    if (symlink("../elsewhere/none.gguf", p) != 0)
        return -1;
    write_model(f->models, "override.gguf", 1000, 0);
    write_model(f->models, "ov.gguf", 1000, 0);
    path_in(p, sizeof p, f->models, "sub.gguf");
    mkdir(p, 0700);
    write_model(p, "x.gguf", 3000, 0);
    write_model(f->models, ".hidden.gguf", 1000, 0);
    path_in(q, sizeof q, f->models, "readme.txt");
    write_bytes(q, "hi", 2);

    struct lyra_config *c = &f->cfg;
    c->models.dir = f->models;
    c->models.parallel = 4;
    c->models.threads = 3;
    c->models.gpu_layers = 7;
    c->models.ctx_size = 4096;
    path_in(f->abs_path, sizeof f->abs_path, f->elsewhere, "real.gguf");
    f->chat_aliases[0] = "assistant";
    f->override_aliases[0] = "ov";
    f->override_aliases[1] = "default";
    f->entries[0] = (struct lyra_model_entry){.name = "chat",
                                              .path = f->abs_path,
                                              .aliases = f->chat_aliases,
                                              .n_aliases = 1,
                                              .ctx_size = 1024,
                                              .parallel = 2,
                                              .threads = 0,
                                              .gpu_layers = -1,
                                              .chat_template = "custom {{ x }}",
                                              .pinned = true,
                                              .temperature = 0.7,
                                              .top_p = -1,
                                              .top_k = 40};
    f->entries[1] = (struct lyra_model_entry){.name = "override",
                                              .path = "sub.gguf/x.gguf",
                                              .aliases = f->override_aliases,
                                              .n_aliases = 2,
                                              .gpu_layers = -1,
                                              .temperature = -1,
                                              .top_p = -1,
                                              .top_k = -1};
    f->entries[2] = (struct lyra_model_entry){.name = "ghost",
                                              .path = "missing.gguf",
                                              .gpu_layers = -1,
                                              .temperature = -1,
                                              .top_p = -1,
                                              .top_k = -1};
    c->models.entries = f->entries;
    c->models.n_entries = 3;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    lyra_registry_free(f->reg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static struct lyra_registry *open_reg(struct fx *f, struct lyra_registry_changes *ch)
{
    struct lyra_err err = {0};
    assert_int_equal(lyra_registry_new(&f->cfg, &f->reg, &err), 0);
    int rc = lyra_registry_refresh(f->reg, ch, &err);
    if (rc)
        fail_msg("refresh: %s", err.msg);
    return f->reg;
}

static bool has_name(char **v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], name) == 0)
            return true;
    return false;
}

/* ---- tests ------------------------------------------------------------- */

static void test_listing(void **state)
{
    struct fx *f = *state;
    struct lyra_registry_changes ch;
    struct lyra_registry *reg = open_reg(f, &ch);
    static const char *const want[] = {"alpha", "broken", "chat",    "dangling",
                                       "ghost", "inner", "notgguf", "override"};
    const size_t n_want = sizeof want / sizeof *want;
    assert_int_equal(ch.n_added, n_want);
    assert_int_equal(ch.n_removed, 0);
    assert_int_equal(ch.n_changed, 0);
    for (size_t i = 0; i < n_want; i++)
        assert_true(has_name(ch.added, ch.n_added, want[i]));
    lyra_registry_changes_free(&ch);
    lyra_registry_changes_free(NULL);

    const struct lyra_model **v;
    size_t n;
    assert_int_equal(lyra_registry_list(reg, &v, &n), 0);
    assert_int_equal(n, n_want);
    assert_int_equal(lyra_registry_count(reg), n_want);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i]->name, want[i]);

    /* Validity and reasons. */
    assert_true(v[0]->valid); /* alpha */
    assert_null(v[0]->error);
    assert_false(v[1]->valid); /* broken */
    assert_int_equal(v[1]->error_code, LYRA_EPARSE);
    assert_non_null(strstr(v[1]->error, "truncated"));
    assert_true(v[2]->valid);  /* chat */
    assert_false(v[3]->valid); /* dangling */
    assert_non_null(strstr(v[3]->error, "cannot stat"));
    assert_non_null(strstr(v[3]->error, "dangling.gguf"));
    assert_false(v[4]->valid); /* ghost */
    assert_int_equal(v[4]->error_code, LYRA_ENOTFOUND);
    assert_non_null(strstr(v[4]->error, "missing.gguf"));
    assert_true(v[5]->valid); /* inner: the symlink inside models/ was followed */
    assert_int_equal(v[5]->info->context_length, 3000);
    /* linked points out of models/: not listed (only a warning is logged). */
    assert_null(lyra_registry_lookup(reg, "linked"));
    assert_false(v[6]->valid); /* notgguf */
    assert_non_null(strstr(v[6]->error, "not a GGUF file"));
    assert_true(v[7]->valid); /* override: the entry, not the scanned file */
    assert_true(v[7]->from_config);
    assert_int_equal(v[7]->info->context_length, 3000);
    assert_non_null(strstr(v[7]->path, "/models/sub.gguf/x.gguf"));
    assert_false(v[0]->from_config);

    /* Settings: the entry's, with the models section's defaults. */
    const struct lyra_model_settings *s = &v[2]->settings;
    assert_int_equal(s->ctx_size, 1024);
    assert_int_equal(s->parallel, 2);
    assert_int_equal(s->threads, 3);
    assert_int_equal(s->gpu_layers, 7);
    assert_true(s->pinned);
    assert_true(s->temperature > 0.69 && s->temperature < 0.71);
    assert_true(s->top_p < 0);
    assert_int_equal(s->top_k, 40);
    assert_string_equal(s->chat_template, "custom {{ x }}");
    s = &v[0]->settings;
    assert_int_equal(s->ctx_size, 4096);
    assert_int_equal(s->parallel, 4);
    assert_false(s->pinned);
    assert_null(s->chat_template);
    assert_int_equal(s->top_k, -1);

    /* JSON. */
    json_t *j = lyra_registry_model_to_json(v[0], 0);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "alpha");
    assert_string_equal(json_string_value(json_object_get(j, "source")), "scan");
    assert_true(json_is_true(json_object_get(j, "valid")));
    assert_true(json_is_null(json_object_get(j, "error")));
    assert_string_equal(json_string_value(json_object_get(j, "architecture")), "llama");
    assert_int_equal(json_integer_value(json_object_get(j, "parameters")), 64);
    assert_string_equal(json_string_value(json_object_get(j, "quantization")), "F32");
    assert_int_equal(json_integer_value(json_object_get(j, "context_length")), 1000);
    assert_true(json_is_true(json_object_get(j, "has_chat_template")));
    assert_string_equal(json_string_value(json_object_get(j, "chat_template")), "<|im_start|>{{ m }}");
    assert_int_equal(json_integer_value(json_object_get(j, "size_bytes")), v[0]->size_bytes);
    assert_null(json_object_get(j, "gguf"));
    json_decref(j);

    j = lyra_registry_model_to_json(v[1], LYRA_REGISTRY_JSON_GGUF);
    assert_true(json_is_false(json_object_get(j, "valid")));
    assert_non_null(strstr(json_string_value(json_object_get(j, "error")), "truncated"));
    assert_true(json_is_null(json_object_get(j, "architecture")));
    assert_true(json_is_false(json_object_get(j, "has_chat_template")));
    assert_true(json_is_null(json_object_get(j, "gguf")));
    json_decref(j);

    j = lyra_registry_model_to_json(v[2], LYRA_REGISTRY_JSON_GGUF);
    assert_string_equal(json_string_value(json_object_get(j, "chat_template")), "custom {{ x }}");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "aliases"), 0)), "assistant");
    json_t *js = json_object_get(j, "settings");
    assert_int_equal(json_integer_value(json_object_get(js, "ctx_size")), 1024);
    assert_true(json_is_true(json_object_get(js, "pinned")));
    assert_true(json_is_null(json_object_get(js, "top_p")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "gguf"), "architecture")),
                        "llama");
    json_decref(j);
    lyra_registry_list_free(v, n);
    lyra_registry_list_free(NULL, 0);

    j = lyra_registry_to_json(reg, 0);
    assert_int_equal(json_array_size(j), n_want);
    char *dump = json_dumps(j, 0);
    assert_non_null(dump);
    free(dump);
    json_decref(j);
}

static void test_lookup(void **state)
{
    struct fx *f = *state;
    struct lyra_registry *reg = open_reg(f, NULL);
    const struct lyra_model *m;

    assert_non_null(m = lyra_registry_lookup(reg, "alpha"));
    assert_string_equal(m->name, "alpha");
    lyra_registry_unref(m);
    assert_non_null(m = lyra_registry_lookup(reg, "assistant"));
    assert_string_equal(m->name, "chat");
    lyra_registry_unref(m);
    /* "ov" is both an alias of override and ov.gguf: the configured alias
     * wins and the scanned file is not listed. */
    assert_non_null(m = lyra_registry_lookup(reg, "ov"));
    assert_string_equal(m->name, "override");
    lyra_registry_unref(m);
    assert_non_null(m = lyra_registry_lookup(reg, "default"));
    assert_string_equal(m->name, "override");
    lyra_registry_unref(m);
    /* Invalid models are found too. */
    assert_non_null(m = lyra_registry_lookup(reg, "broken"));
    assert_false(m->valid);
    lyra_registry_unref(m);

    assert_null(lyra_registry_lookup(reg, "Alpha")); /* case-sensitive */
    assert_null(lyra_registry_lookup(reg, "alpha.gguf"));
    assert_null(lyra_registry_lookup(reg, "x")); /* in a subdirectory */
    assert_null(lyra_registry_lookup(reg, "sub"));
    assert_null(lyra_registry_lookup(reg, ".hidden"));
    assert_null(lyra_registry_lookup(reg, "readme"));
    assert_null(lyra_registry_lookup(reg, ""));
    lyra_registry_unref(NULL);
}

static void test_refresh(void **state)
{
    struct fx *f = *state;
    struct lyra_registry *reg = open_reg(f, NULL);
    struct lyra_registry_changes ch;
    struct lyra_err err = {0};
    char p[256];

    /* Nothing changed: same snapshots, no changes. */
    const struct lyra_model *alpha = lyra_registry_lookup(reg, "alpha");
    assert_int_equal(lyra_registry_refresh(reg, &ch, &err), 0);
    assert_int_equal(ch.n_added + ch.n_removed + ch.n_changed, 0);
    const struct lyra_model *again = lyra_registry_lookup(reg, "alpha");
    assert_ptr_equal(alpha, again);
    lyra_registry_unref(again);

    /* An added, a removed and a truncated file. */
    write_model(f->models, "beta.gguf", 500, 0);
    path_in(p, sizeof p, f->models, "notgguf.gguf");
    assert_int_equal(unlink(p), 0);
    write_model(f->models, "alpha.gguf", 1000, 60);
    assert_int_equal(lyra_registry_refresh(reg, &ch, &err), 0);
    assert_int_equal(ch.n_added, 1);
    assert_string_equal(ch.added[0], "beta");
    assert_int_equal(ch.n_removed, 1);
    assert_string_equal(ch.removed[0], "notgguf");
    assert_int_equal(ch.n_changed, 1);
    assert_string_equal(ch.changed[0], "alpha");
    lyra_registry_changes_free(&ch);
    assert_int_equal(ch.n_added, 0);

    const struct lyra_model *m = lyra_registry_lookup(reg, "alpha");
    assert_false(m->valid);
    assert_non_null(strstr(m->error, "truncated"));
    assert_int_equal(m->size_bytes, 60);
    lyra_registry_unref(m);
    assert_null(lyra_registry_lookup(reg, "notgguf"));
    assert_non_null(m = lyra_registry_lookup(reg, "beta"));
    assert_true(m->valid);
    assert_int_equal(m->info->context_length, 500);
    lyra_registry_unref(m);
    /* The reference taken before the refresh still sees the old snapshot. */
    assert_true(alpha->valid);
    assert_int_equal(alpha->info->context_length, 1000);
    lyra_registry_unref(alpha);

    /* Same size, new content and mtime: re-read. */
    write_model(f->models, "beta.gguf", 600, 0);
    path_in(p, sizeof p, f->models, "beta.gguf");
    struct timespec ts[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
    assert_int_equal(lyra_registry_refresh(reg, &ch, &err), 0);
    assert_int_equal(ch.n_changed, 1);
    assert_string_equal(ch.changed[0], "beta");
    assert_int_equal(ch.n_added + ch.n_removed, 0);
    lyra_registry_changes_free(&ch);
    assert_non_null(m = lyra_registry_lookup(reg, "beta"));
    assert_int_equal(m->info->context_length, 600);
    lyra_registry_unref(m);

    /* A repaired file becomes valid again; NULL changes is accepted. */
    write_model(f->models, "alpha.gguf", 1200, 0);
    assert_int_equal(lyra_registry_refresh(reg, NULL, &err), 0);
    assert_non_null(m = lyra_registry_lookup(reg, "alpha"));
    assert_true(m->valid);
    assert_int_equal(m->info->context_length, 1200);
    lyra_registry_unref(m);
}

static void test_missing_and_unreadable_dir(void **state)
{
    struct fx *f = *state;
    struct lyra_err err = {0};
    char p[256];

    /* A missing directory contributes nothing; entries remain. */
    path_in(p, sizeof p, f->root, "nope");
    f->cfg.models.dir = p;
    struct lyra_registry *reg = open_reg(f, NULL);
    assert_int_equal(lyra_registry_count(reg), 3);
    const struct lyra_model *m = lyra_registry_lookup(reg, "chat");
    assert_true(m->valid);
    lyra_registry_unref(m);
    lyra_registry_free(reg);
    f->reg = NULL;

    /* A "directory" that is a file is an error naming it. */
    path_in(p, sizeof p, f->models, "alpha.gguf");
    assert_int_equal(lyra_registry_new(&f->cfg, &f->reg, &err), 0);
    int rc = lyra_registry_refresh(f->reg, NULL, &err);
    assert_int_equal(rc, LYRA_EIO);
    assert_non_null(strstr(err.msg, "cannot read models directory"));
    assert_non_null(strstr(err.msg, p));
    assert_int_equal(lyra_registry_count(f->reg), 3); /* the entries are still there */
    lyra_registry_free(f->reg);
    f->reg = NULL;

    /* A directory that becomes unreadable keeps the models already found.
     * (root reads anything, so only check this as another user.) */
    f->cfg.models.dir = f->models;
    reg = open_reg(f, NULL);
    size_t before = lyra_registry_count(reg);
    if (geteuid() != 0) {
        assert_int_equal(chmod(f->models, 0), 0);
        rc = lyra_registry_refresh(reg, NULL, &err);
        chmod(f->models, 0700);
        assert_int_equal(rc, LYRA_EPERM);
        assert_non_null(strstr(err.msg, f->models));
        assert_int_equal(lyra_registry_count(reg), before);
    }
    /* A registry with no directory at all lists the entries only. */
    f->cfg.models.dir = NULL;
    struct lyra_registry *r2;
    assert_int_equal(lyra_registry_new(&f->cfg, &r2, &err), 0);
    assert_int_equal(lyra_registry_refresh(r2, NULL, &err), 0);
    assert_int_equal(lyra_registry_count(r2), 3);
    lyra_registry_free(r2);
    lyra_registry_free(NULL);
}

/* The scanned name is the file name without .gguf; a real model (the
 * generated tiny one, through a symlink) reads like a synthetic one. */
static void test_real_model_symlink(void **state)
{
    struct fx *f = *state;
    const char *tiny = real_tiny();
    if (!tiny) {
        print_message("no generated models found; skipping\n");
        skip();
    }
    /* A copy in a folder of models/, linked from the top: a link that stays
     * inside the directory is followed (one out of it is not listed). */
    char blobs[256], p[256], q[300];
    path_in(blobs, sizeof blobs, f->models, "blobs");
    assert_int_equal(mkdir(blobs, 0700), 0);
    size_t len = 0;
    char *data = lyra_read_file(tiny, &len);
    assert_non_null(data);
    snprintf(q, sizeof q, "%s/tiny.gguf", blobs);
    assert_int_equal(lyra_write_file_atomic(q, data, len, 0644), 0);
    free(data);
    path_in(p, sizeof p, f->models, "tiny.gguf");
    assert_int_equal(symlink("blobs/tiny.gguf", p), 0);
    char *abs = realpath(tiny, NULL);
    path_in(p, sizeof p, f->models, "outside.gguf");
    assert_int_equal(symlink(abs, p), 0);
    free(abs);
    struct lyra_registry *reg = open_reg(f, NULL);
    const struct lyra_model *m = lyra_registry_lookup(reg, "tiny");
    assert_non_null(m);
    assert_true(m->valid);
    assert_string_equal(m->info->architecture, "llama");
    assert_string_equal(lyra_gguf_quantization(m->info), "Q8_0");
    assert_int_equal(m->size_bytes, m->info->file_size);
    lyra_registry_unref(m);
    assert_null(lyra_registry_lookup(reg, "outside"));
}

/* ---- concurrency (run under TSan) --------------------------------------- */

struct race {
    struct lyra_registry *reg;
    atomic_bool stop;
    atomic_long lookups;
};

static void *reader(void *arg)
{
    struct race *r = arg;
    static const char *const names[] = {"alpha", "assistant", "ov", "beta", "gamma", "broken", "nope"};
    unsigned i = 0;
    while (!atomic_load(&r->stop) || i < 50) {
        const struct lyra_model *m = lyra_registry_lookup(r->reg, names[i++ % 7]);
        if (m) {
            /* Read through the snapshot while a refresh may replace it. */
            if (m->valid && (!m->info || !m->info->architecture))
                fail_msg("valid model without metadata");
            json_t *j = lyra_registry_model_to_json(m, LYRA_REGISTRY_JSON_GGUF);
            json_decref(j);
            lyra_registry_unref(m);
        }
        if (i % 5 == 0) {
            const struct lyra_model **v;
            size_t n;
            if (lyra_registry_list(r->reg, &v, &n) == 0) {
                for (size_t k = 1; k < n; k++)
                    if (strcmp(v[k - 1]->name, v[k]->name) >= 0)
                        fail_msg("list out of order");
                lyra_registry_list_free(v, n);
            }
        }
        atomic_fetch_add(&r->lookups, 1);
    }
    return NULL;
}

static void test_concurrent_lookups(void **state)
{
    struct fx *f = *state;
    struct race r = {.reg = open_reg(f, NULL)};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &r), 0);
    char p[256];
    struct lyra_err err = {0};
    for (int round = 0; round < 30; round++) {
        switch (round % 3) {
        case 0:
            write_model(f->models, "gamma.gguf", 100 + round, 0);
            break;
        case 1:
            write_model(f->models, "alpha.gguf", 1000, 70 + round);
            break;
        case 2:
            path_in(p, sizeof p, f->models, "gamma.gguf");
            unlink(p);
            write_model(f->models, "alpha.gguf", 1000 + round, 0);
            break;
        }
        struct lyra_registry_changes ch;
        assert_int_equal(lyra_registry_refresh(r.reg, &ch, &err), 0);
        assert_true(ch.n_added + ch.n_removed + ch.n_changed > 0);
        lyra_registry_changes_free(&ch);
    }
    atomic_store(&r.stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_true(atomic_load(&r.lookups) >= 200);
}

/* Two refreshes at once are serialised and leave a consistent registry. */
static void *refresher(void *arg)
{
    struct lyra_registry *reg = arg;
    for (int i = 0; i < 20; i++)
        lyra_registry_refresh(reg, NULL, NULL);
    return NULL;
}

static void test_concurrent_refreshes(void **state)
{
    struct fx *f = *state;
    struct lyra_registry *reg = open_reg(f, NULL);
    size_t n = lyra_registry_count(reg);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, refresher, reg), 0);
    assert_int_equal(pthread_create(&b, NULL, refresher, reg), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(lyra_registry_count(reg), n);
}

/* threads 0 and a model's own context resolve to what a worker accepts:
 * threads to the CPUs this process may use (pinned to one CPU here, as
 * taskset would pin it), a context length beyond the shared range to its
 * bound.  Runs in a child, whose affinity the test may narrow. */
static void test_defaults_fit_the_worker(void **state)
{
    struct fx *f = *state;
    write_model(f->models, "huge.gguf", UINT32_MAX, 0);
    f->cfg.models.threads = 0;
    f->cfg.models.ctx_size = 0;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        sched_getaffinity(0, sizeof set, &set);
        int first = 0;
        while (!CPU_ISSET(first, &set))
            first++;
        CPU_ZERO(&set);
        CPU_SET(first, &set);
        struct lyra_err err = {0};
        struct lyra_registry *reg = NULL;
        if (sched_setaffinity(0, sizeof set, &set) || lyra_registry_new(&f->cfg, &reg, &err) ||
            lyra_registry_refresh(reg, NULL, &err))
            _exit(3);
        const struct lyra_model *m = lyra_registry_lookup(reg, "huge");
        int rc = !m ? 4 : m->settings.threads != 1 ? 5 : m->settings.ctx_size != LYRA_LIMIT_CTX_MAX ? 6 : 0;
        lyra_registry_unref(m);
        lyra_registry_free(reg);
        _exit(rc);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_listing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_unreadable_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_model_symlink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_lookups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_refreshes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults_fit_the_worker, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
