/* test_pull.c — the pull runner, driven directly through a struct
 * lyra_job_ctx of our own (no scheduler), against a real HTTP server
 * (tests/tools/pull_server.py, started here) serving the generated tiny
 * model and a file that is not GGUF: plain download, a connection dropped
 * halfway, a server that ignores Range, a restart that resumes from saved
 * state, cancellation, a stall, wrong checksum, non-GGUF, HTTP errors, a
 * write that hits the file-size limit (disk full), the space check, hf://
 * with its token, a local copy, and the parameter checks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

#include "core/config.h"
#include "core/events.h"
#include "core/util.h"
#include "jobs/pull.h"
#include "models/registry.h"

#define TOKEN "hf_test_token_42"

/* ---- the scheduler's part, faked only where jobs.c is not linked ------ */

/* jobs.c is written in parallel; until it is linked this stands in, and
 * records what lyra_pull_register registered.  A real definition wins. */
static struct lyra_job_type registered;
__attribute__((weak)) int lyra_jobs_register(struct lyra_jobs *j, const struct lyra_job_type *t)
{
    (void)j;
    registered = *t;
    return 0;
}

struct tctx {
    struct lyra_job_ctx c;
    uint64_t cancel_at; /* cancelled() turns true once done >= this (0 = never) */
    uint64_t done, total;
    int progress_calls;
    bool went_backwards; /* done decreased without a restart from zero */
    json_t *saved;       /* the last save_resume state */
};

static void t_progress(struct lyra_job_ctx *c, uint64_t done, uint64_t total)
{
    struct tctx *t = (struct tctx *)c;
    if (done < t->done && done != 0)
        t->went_backwards = true;
    t->done = done;
    t->total = total;
    t->progress_calls++;
}

static bool t_cancelled(struct lyra_job_ctx *c)
{
    struct tctx *t = (struct tctx *)c;
    return t->cancel_at && t->done >= t->cancel_at;
}

static void t_save(struct lyra_job_ctx *c, const json_t *st)
{
    struct tctx *t = (struct tctx *)c;
    json_decref(t->saved);
    t->saved = json_deep_copy(st);
}

static void ctx_init(struct tctx *t, json_t *params, const json_t *resume)
{
    memset(t, 0, sizeof *t);
    t->c.id = "job-test";
    t->c.params = params;
    t->c.resume = resume;
    t->c.progress = t_progress;
    t->c.cancelled = t_cancelled;
    t->c.save_resume = t_save;
}

static void ctx_done(struct tctx *t)
{
    json_decref(t->saved);
    json_decref((json_t *)t->c.params);
    t->saved = NULL;
    t->c.params = NULL;
}

/* ---- fixture ---------------------------------------------------------- */

struct fx {
    char root[64], serve[96], models[96], partdir[128];
    pid_t server;
    int port;
    char tiny_sha[65];
    uint64_t tiny_size;
    struct lyra_config cfg;
    struct lyra_registry *reg;
    struct lyra_bus *bus;
    json_t *events; /* model.* events seen: [{type, data}] */
    struct lyra_pull_options o;
};

static void on_event(const struct lyra_event *ev, void *ud)
{
    struct fx *f = ud;
    json_array_append_new(f->events, json_pack("{s:s, s:O}", "type", ev->type, "data", ev->data));
}

static void sha_file(const char *path, char out[65], uint64_t *size)
{
    size_t len;
    char *data = lyra_read_file(path, &len);
    assert_non_null(data);
    unsigned char d[32];
    crypto_hash_sha256(d, (unsigned char *)data, len);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
    if (size)
        *size = len;
    free(data);
}

static const char *src_dir(void)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    return dirname(dir); /* tests/unit */
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    snprintf(f->root, sizeof f->root, "/tmp/lyra-pull-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->serve, sizeof f->serve, "%s/serve", f->root);
    snprintf(f->models, sizeof f->models, "%s/models", f->root);
    snprintf(f->partdir, sizeof f->partdir, "%s/.partial", f->models);
    assert_int_equal(mkdir(f->serve, 0700), 0);
    assert_int_equal(mkdir(f->models, 0700), 0);

    /* The generated tiny model (scripts/models.sh): its absence is a failure. */
    char tiny[600], link_path[160];
    const char *env = getenv("LYRA_TEST_MODELS");
    if (env)
        snprintf(tiny, sizeof tiny, "%s/tiny.gguf", env);
    else
        snprintf(tiny, sizeof tiny, "%s/../../build/models/tiny.gguf", src_dir());
    snprintf(link_path, sizeof link_path, "%s/tiny.gguf", f->serve);
    assert_int_equal(symlink(tiny, link_path), 0);
    sha_file(link_path, f->tiny_sha, &f->tiny_size);
    assert_true(f->tiny_size > (2u << 20)); /* big enough to drop, cancel and stall halfway */

    /* 1 MiB that is not GGUF. */
    char junk[160];
    snprintf(junk, sizeof junk, "%s/junk.gguf", f->serve);
    unsigned char *buf = malloc(1 << 20);
    randombytes_buf(buf, 1 << 20);
    assert_int_equal(lyra_write_file_atomic(junk, buf, 1 << 20, 0644), 0);
    free(buf);

    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char script[600];
    snprintf(script, sizeof script, "%s/../tools/pull_server.py", src_dir());
    f->server = fork();
    assert_true(f->server >= 0);
    if (f->server == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execlp("python3", "python3", script, f->serve, TOKEN, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    assert_true(fscanf(in, "%d", &f->port) == 1); /* no port: python3 or the script is missing */
    fclose(in);

    f->cfg.models.dir = f->models;
    assert_int_equal(lyra_registry_new(&f->cfg, &f->reg, NULL), 0);
    f->bus = lyra_bus_new(&(struct lyra_bus_options){.ring_size = 64, .block = 1000});
    assert_non_null(f->bus);
    f->events = json_array();
    assert_true(lyra_bus_subscribe(f->bus, "model.*", on_event, f) > 0);

    f->o = (struct lyra_pull_options){
        .models_dir = f->models,
        .registry = f->reg,
        .bus = f->bus,
        .min_free_bytes = 1,
        .low_speed_time_s = 2,
        .retry_delay_ms = 10,
    };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    kill(f->server, SIGTERM);
    waitpid(f->server, NULL, 0);
    lyra_registry_free(f->reg);
    lyra_bus_free(f->bus);
    json_decref(f->events);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* ---- helpers ---------------------------------------------------------- */

static char *url_of(struct fx *f, const char *path)
{
    char *u;
    assert_true(asprintf(&u, "http://127.0.0.1:%d%s", f->port, path) > 0);
    return u;
}

/* The server's request log (GET /__log). */
static json_t *server_log(struct fx *f)
{
    char *u = url_of(f, "/__log");
    CURL *h = curl_easy_init();
    char *body = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&body, &len);
    curl_easy_setopt(h, CURLOPT_URL, u);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, mem);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_cleanup(h);
    fclose(mem);
    free(u);
    json_t *log = json_loadb(body, len, 0, NULL);
    free(body);
    assert_true(json_is_array(log));
    return log;
}

/* Runs the pull of {source, name?, sha256?}; returns the code. */
static int pull(struct fx *f, struct tctx *t, const char *source, const char *name, const char *sha,
                json_t **result, struct lyra_err *err)
{
    json_t *params = json_pack("{s:s}", "source", source);
    if (name)
        json_object_set_new(params, "name", json_string(name));
    if (sha)
        json_object_set_new(params, "sha256", json_string(sha));
    const json_t *resume = t->c.resume;
    uint64_t cancel_at = t->cancel_at;
    ctx_done(t);
    ctx_init(t, params, resume);
    t->cancel_at = cancel_at;
    memset(err, 0, sizeof *err);
    return lyra_pull_run(&t->c, result, err, &f->o);
}

static bool exists(const char *dir, const char *name)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

static off_t size_of(const char *dir, const char *name)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

/* Entries of dir other than "." "..", and ".partial" when skip_partial. */
static int count_entries(const char *dir, bool skip_partial)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            !(skip_partial && !strcmp(e->d_name, ".partial")))
            n++;
    closedir(d);
    return n;
}

/* The checks every successful pull of tiny must pass. */
static void assert_pulled(struct fx *f, json_t *result, const char *name)
{
    assert_non_null(result);
    assert_string_equal(json_string_value(json_object_get(result, "name")), name);
    assert_string_equal(json_string_value(json_object_get(result, "sha256")), f->tiny_sha);
    assert_int_equal(json_integer_value(json_object_get(result, "bytes")), f->tiny_size);
    char file[160];
    snprintf(file, sizeof file, "%s.gguf", name);
    assert_int_equal(size_of(f->models, file), (off_t)f->tiny_size);
    char sha[65], path[300];
    snprintf(path, sizeof path, "%s/%s", f->models, file);
    sha_file(path, sha, NULL);
    assert_string_equal(sha, f->tiny_sha);
    assert_int_equal(count_entries(f->partdir, false), 0); /* partial and sidecar gone */
    const struct lyra_model *m = lyra_registry_lookup(f->reg, name);
    assert_non_null(m); /* refreshed: GET /models lists it */
    assert_true(m->valid);
    lyra_registry_unref(m);
}

/* ---- tests -------------------------------------------------------------- */

static void test_download(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    int rc = pull(f, &t, u, NULL, f->tiny_sha, &res, &err);
    assert_int_equal(rc, 0);
    assert_pulled(f, res, "tiny");
    assert_int_equal(json_integer_value(json_object_get(res, "resumed_from")), 0);
    assert_int_equal(t.done, f->tiny_size);
    assert_int_equal(t.total, f->tiny_size);
    assert_false(t.went_backwards);
    /* model.added with what a client needs. */
    assert_int_equal(json_array_size(f->events), 1);
    json_t *ev = json_array_get(f->events, 0);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), "model.added");
    json_t *d = json_object_get(ev, "data");
    assert_string_equal(json_string_value(json_object_get(d, "name")), "tiny");
    assert_string_equal(json_string_value(json_object_get(d, "sha256")), f->tiny_sha);
    assert_string_equal(json_string_value(json_object_get(d, "source")), u);
    assert_int_equal(json_integer_value(json_object_get(d, "bytes")), f->tiny_size);
    assert_non_null(strstr(json_string_value(json_object_get(d, "path")), "/models/tiny.gguf"));
    /* Pulling it again is refused: the file is there. */
    json_t *res2 = NULL;
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res2, &err), LYRA_EEXISTS);
    assert_null(res2);
    json_decref(res);
    ctx_done(&t);
    free(u);
}

/* The connection drops halfway: the runner resumes with a Range request
 * and ends with the right bytes. */
static void test_drop_resumes(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/drop/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, "dropped", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "dropped");
    json_t *log = server_log(f);
    assert_int_equal(json_array_size(log), 2); /* two transfers */
    json_t *second = json_array_get(log, 1);
    const char *range = json_string_value(json_object_get(second, "range"));
    assert_non_null(range);
    unsigned long long from = strtoull(range + 6, NULL, 10);
    assert_true(from > 0 && from < f->tiny_size);
    assert_int_equal(json_integer_value(json_object_get(second, "status")), 206);
    assert_non_null(json_string_value(json_object_get(second, "if_range"))); /* the ETag */
    json_decref(log);
    json_decref(res);
    ctx_done(&t);
    free(u);
}

/* A server that answers a Range request with 200: start again from zero,
 * and the file is still right. */
static void test_ignored_range_restarts(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/norange/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, "norange", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "norange");
    json_t *log = server_log(f);
    json_t *second = json_array_get(log, 1);
    assert_non_null(json_string_value(json_object_get(second, "range")));
    assert_int_equal(json_integer_value(json_object_get(second, "status")), 200);
    json_decref(log);
    json_decref(res);
    ctx_done(&t);
    free(u);
}

/* Cancelled midway: stops, keeps the partial and its state; a second run
 * given that state (the job after a restart) continues from it. */
static void test_cancel_then_resume(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/slow/tiny.gguf");
    struct tctx t = {0};
    t.cancel_at = 1u << 20;
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, "resumed", NULL, &res, &err), LYRA_EUNAVAILABLE);
    assert_null(res);
    assert_non_null(strstr(err.msg, "kept"));
    assert_false(exists(f->models, "resumed.gguf"));
    assert_non_null(t.saved);
    uint64_t kept = (uint64_t)json_integer_value(json_object_get(t.saved, "bytes"));
    assert_true(kept >= (1u << 20) && kept < f->tiny_size);
    assert_int_equal(size_of(f->partdir, "resumed.gguf.part"), (off_t)kept);
    assert_true(exists(f->partdir, "resumed.gguf.part.json"));

    json_t *saved = json_incref(t.saved);
    struct tctx t2 = {0};
    t2.c.resume = saved;
    assert_int_equal(pull(f, &t2, u, "resumed", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "resumed");
    assert_int_equal(json_integer_value(json_object_get(res, "resumed_from")), kept);
    json_t *log = server_log(f);
    json_t *last = json_array_get(log, json_array_size(log) - 1);
    char want[48];
    snprintf(want, sizeof want, "bytes=%llu-", (unsigned long long)kept);
    assert_string_equal(json_string_value(json_object_get(last, "range")), want);
    assert_int_equal(json_integer_value(json_object_get(last, "status")), 206);
    json_decref(log);
    json_decref(saved);
    json_decref(res);
    ctx_done(&t);
    ctx_done(&t2);
    free(u);
}

static void test_wrong_sha_leaves_nothing(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    const char *bad = "0000000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(pull(f, &t, u, NULL, bad, &res, &err), LYRA_EINVAL);
    assert_non_null(strstr(err.msg, "sha256 mismatch"));
    assert_non_null(strstr(err.msg, f->tiny_sha));
    assert_int_equal(count_entries(f->models, true), 0);
    assert_int_equal(count_entries(f->partdir, false), 0);
    assert_int_equal(json_array_size(f->events), 0);
    ctx_done(&t);
    free(u);
}

static void test_not_gguf_leaves_nothing(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/normal/junk.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res, &err), LYRA_EPARSE);
    assert_non_null(strstr(err.msg, "not a GGUF model"));
    assert_int_equal(count_entries(f->models, true), 0);
    assert_int_equal(count_entries(f->partdir, false), 0);
    assert_null(lyra_registry_lookup(f->reg, "junk"));
    ctx_done(&t);
    free(u);
}

static void test_http_errors(void **state)
{
    struct fx *f = *state;
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    char *u = url_of(f, "/status/404/gone.gguf");
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "HTTP 404"));
    free(u);
    ctx_done(&t);
    u = url_of(f, "/status/503/busy.gguf");
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "HTTP 503"));
    assert_int_equal(count_entries(f->models, true), 0);
    free(u);
    ctx_done(&t);
    /* Nothing listening. */
    assert_int_equal(pull(f, &t, "http://127.0.0.1:1/x.gguf", NULL, NULL, &res, &err), LYRA_EIO);
    ctx_done(&t);
}

/* A server that stops sending: the low-speed limit ends it; partial kept. */
static void test_stall_times_out(void **state)
{
    struct fx *f = *state;
    f->o.low_speed_time_s = 1;
    char *u = url_of(f, "/stall/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, "stalled", NULL, &res, &err), LYRA_ETIMEOUT);
    assert_non_null(strstr(err.msg, "stalled"));
    assert_int_equal(size_of(f->partdir, "stalled.gguf.part"), 65536);
    ctx_done(&t);
    free(u);
}

/* Writes fail with EFBIG past RLIMIT_FSIZE, as they fail with ENOSPC on a
 * full disk: the job fails saying so, the partial stays, and a new pull of
 * the same source resumes from it (the sidecar). */
static void test_disk_full_keeps_partial(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1u << 20;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = pull(f, &t, u, "full", NULL, &res, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, LYRA_EIO);
    assert_non_null(strstr(err.msg, "disk full"));
    assert_non_null(strstr(err.msg, "kept"));
    off_t kept = size_of(f->partdir, "full.gguf.part");
    assert_true(kept > 0 && kept <= (1 << 20));
    assert_false(exists(f->models, "full.gguf"));
    ctx_done(&t);

    struct tctx t2 = {0};
    assert_int_equal(pull(f, &t2, u, "full", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "full");
    assert_int_equal(json_integer_value(json_object_get(res, "resumed_from")), kept);
    json_decref(res);
    ctx_done(&t2);
    free(u);
}

static void test_space_check_refuses(void **state)
{
    struct fx *f = *state;
    f->o.min_free_bytes = 1ull << 62;
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res, &err), LYRA_ETOOBIG);
    assert_non_null(strstr(err.msg, "not enough disk space"));
    assert_true(size_of(f->partdir, "tiny.gguf.part") <= 0);
    ctx_done(&t);
    char local[200];
    snprintf(local, sizeof local, "%s/tiny.gguf", f->serve);
    assert_int_equal(pull(f, &t, local, NULL, NULL, &res, &err), LYRA_ETOOBIG);
    assert_false(exists(f->models, "tiny.gguf"));
    ctx_done(&t);
    free(u);
}

/* An answer without a Content-Length is checked against the reserve as it
 * comes (an endless one would otherwise fill the disk); one that fits
 * downloads. */
static void test_space_check_without_length(void **state)
{
    struct fx *f = *state;
    char *u = url_of(f, "/nolength/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    uint64_t keep = f->o.min_free_bytes;
    f->o.min_free_bytes = 1ull << 62;
    int rc = pull(f, &t, u, "nolen", NULL, &res, &err);
    f->o.min_free_bytes = keep;
    assert_int_equal(rc, LYRA_ETOOBIG);
    assert_non_null(strstr(err.msg, "not enough disk space"));
    assert_true(size_of(f->partdir, "nolen.gguf.part") <= 0);
    assert_false(exists(f->models, "nolen.gguf"));
    ctx_done(&t);
    struct tctx t2 = {0};
    assert_int_equal(pull(f, &t2, u, "nolen", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "nolen");
    json_decref(res);
    ctx_done(&t2);
    free(u);
}

static void test_local_copy(void **state)
{
    struct fx *f = *state;
    char local[200];
    snprintf(local, sizeof local, "%s/tiny.gguf", f->serve);
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, local, "copied", f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "copied");
    json_decref(res);
    ctx_done(&t);
    snprintf(local, sizeof local, "%s/missing.gguf", f->serve);
    assert_int_equal(pull(f, &t, local, NULL, NULL, &res, &err), LYRA_ENOTFOUND);
    ctx_done(&t);
}

/* hf:// on LYRA_HF_ENDPOINT, with the token the server checks. */
static void test_hf_token(void **state)
{
    struct fx *f = *state;
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/hf/", f->port);
    setenv("LYRA_HF_ENDPOINT", ep, 1);
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    /* Without the token the server says 401. */
    assert_int_equal(pull(f, &t, "hf://org/repo/tiny.gguf", NULL, NULL, &res, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "HTTP 401"));
    ctx_done(&t);
    f->o.hf_token = TOKEN;
    assert_int_equal(pull(f, &t, "hf://org/repo/tiny.gguf", NULL, f->tiny_sha, &res, &err), 0);
    assert_pulled(f, res, "tiny");
    json_t *log = server_log(f);
    json_t *ok = json_array_get(log, 1);
    assert_string_equal(json_string_value(json_object_get(ok, "path")),
                        "/hf/org/repo/resolve/main/tiny.gguf");
    assert_string_equal(json_string_value(json_object_get(ok, "authorization")), "Bearer " TOKEN);
    /* The token is in no result nor event. */
    char *dump = json_dumps(res, 0), *evs = json_dumps(f->events, 0);
    assert_null(strstr(dump, TOKEN));
    assert_null(strstr(evs, TOKEN));
    free(dump);
    free(evs);
    json_decref(log);
    json_decref(res);
    ctx_done(&t);
    unsetenv("LYRA_HF_ENDPOINT");
}

/* A second pull of the same name while one runs is refused. */
static void test_same_name_busy(void **state)
{
    struct fx *f = *state;
    assert_int_equal(mkdir(f->partdir, 0700), 0);
    char part[200];
    snprintf(part, sizeof part, "%s/tiny.gguf.part", f->partdir);
    int fd = open(part, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, NULL, NULL, &res, &err), LYRA_EBUSY);
    close(fd);
    ctx_done(&t);
    free(u);
}

static int check(const char *json, const struct lyra_pull_options *o)
{
    json_t *p = json_loads(json, JSON_ALLOW_NUL, NULL);
    assert_non_null(p);
    struct lyra_err err = {0};
    int rc = lyra_pull_check_params(o, p, &err);
    if (rc < 0)
        assert_true(err.msg[0] != '\0');
    json_decref(p);
    return rc;
}

static void test_check_params(void **state)
{
    struct fx *f = *state;
    assert_int_equal(check("{\"source\":\"http://h/a/model.Q4.gguf?x=1\"}", NULL), 0);
    assert_int_equal(check("{\"source\":\"hf://o/r/sub/m.gguf\", \"name\":\"m\"}", NULL), 0);
    assert_int_equal(check("{\"source\":\"/srv/m.gguf\", \"sha256\":\""
                           "ABCDEF0123456789abcdef0123456789"
                           "ABCDEF0123456789abcdef0123456789"
                           "\"}",
                           NULL),
                     0);
    assert_int_equal(check("{}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":3}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"nmae\":\"x\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"a/b\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\".hidden\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"a\\u0000b\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"sha256\":\"abc\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/\"}", NULL), LYRA_EINVAL);      /* no file name */
    assert_int_equal(check("{\"source\":\"http://h/.gguf\"}", NULL), LYRA_EINVAL); /* name would be empty */
    assert_int_equal(check("{\"source\":\"hf://org/repo\"}", NULL), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"hf://org/../x.gguf\"}", NULL), LYRA_EINVAL);
    char long_name[200];
    snprintf(long_name, sizeof long_name, "{\"source\":\"x\", \"name\":\"%0129d\"}", 0);
    assert_int_equal(check(long_name, NULL), LYRA_EINVAL);
    snprintf(long_name, sizeof long_name, "{\"source\":\"x\", \"name\":\"%0128d\"}", 0);
    assert_int_equal(check(long_name, NULL), 0);
    /* Invalid UTF-8 cannot come through jansson's parser; build it. */
    json_t *p = json_pack("{s:s}", "source", "http://h/m.gguf");
    json_object_set_new(p, "name", json_stringn_nocheck("bad\xff", 4));
    assert_int_equal(lyra_pull_check_params(NULL, p, NULL), LYRA_EINVAL);
    json_decref(p);
    /* A model already there: 409. */
    char path[200];
    snprintf(path, sizeof path, "%s/have.gguf", f->models);
    assert_int_equal(lyra_write_file_atomic(path, "x", 1, 0644), 0);
    assert_int_equal(check("{\"source\":\"http://h/have.gguf\"}", &f->o), LYRA_EEXISTS);
    assert_int_equal(check("{\"source\":\"http://h/x.gguf\", \"name\":\"have\"}", &f->o), LYRA_EEXISTS);
    assert_int_equal(check("{\"source\":\"http://h/x.gguf\", \"name\":\"other\"}", &f->o), 0);
}

/* Destinations that would leave models.dir are refused, and a symlink at
 * the destination, at the partial file or at the partial directory is
 * never followed: the file it points to is untouched. */
static void test_no_escape(void **state)
{
    struct fx *f = *state;
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"../x\"}", &f->o), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"..\"}", &f->o), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"/abs\"}", &f->o), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"a/b\"}", &f->o), LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/m.gguf\", \"name\":\"x\\u0000/../y\"}", &f->o),
                     LYRA_EINVAL);
    assert_int_equal(check("{\"source\":\"http://h/../../.x.gguf\"}", &f->o), LYRA_EINVAL);

    /* A file outside models.dir that the symlinks point at. */
    char outside[200], link[200];
    snprintf(outside, sizeof outside, "%s/outside.bin", f->root);
    assert_int_equal(lyra_write_file_atomic(outside, "precious", 8, 0644), 0);

    /* The destination is a symlink (even a dangling one): 409, untouched. */
    snprintf(link, sizeof link, "%s/evil.gguf", f->models);
    assert_int_equal(symlink(outside, link), 0);
    char *u = url_of(f, "/normal/tiny.gguf");
    struct tctx t = {0};
    json_t *res = NULL;
    struct lyra_err err;
    assert_int_equal(pull(f, &t, u, "evil", NULL, &res, &err), LYRA_EEXISTS);
    ctx_done(&t);
    snprintf(link, sizeof link, "%s/dangling.gguf", f->models);
    assert_int_equal(symlink("/nonexistent/lyra-x", link), 0);
    assert_int_equal(pull(f, &t, u, "dangling", NULL, &res, &err), LYRA_EEXISTS);
    ctx_done(&t);

    /* The partial file is a symlink: refused, not written through. */
    assert_int_equal(mkdir(f->partdir, 0700), 0);
    snprintf(link, sizeof link, "%s/viapart.gguf.part", f->partdir);
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(pull(f, &t, u, "viapart", NULL, &res, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, "symlink"));
    assert_false(exists(f->models, "viapart.gguf"));
    ctx_done(&t);

    /* The partial directory is a symlink out of models.dir: refused. */
    char elsewhere[200];
    snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", f->root);
    assert_int_equal(mkdir(elsewhere, 0700), 0);
    snprintf(link, sizeof link, "%s.moved", f->partdir);
    assert_int_equal(rename(f->partdir, link), 0);
    assert_int_equal(symlink(elsewhere, f->partdir), 0);
    assert_int_equal(pull(f, &t, u, "viadir", NULL, &res, &err), LYRA_EIO);
    assert_int_equal(count_entries(elsewhere, false), 0);
    assert_false(exists(f->models, "viadir.gguf"));
    ctx_done(&t);
    free(u);

    size_t len = 0;
    char *text = lyra_read_file(outside, &len);
    assert_non_null(text);
    assert_int_equal(len, 8);
    assert_memory_equal(text, "precious", 8);
    free(text);
    assert_null(res);
}

static void test_names_and_urls(void **state)
{
    char n[LYRA_PULL_NAME_MAX + 1];
    assert_int_equal(lyra_pull_default_name("hf://TheOrg/repo/sub/Model-7B.Q4_K_M.gguf", n, sizeof n), 0);
    assert_string_equal(n, "Model-7B.Q4_K_M");
    assert_int_equal(lyra_pull_default_name("https://h/x/m.GGUF?download=true#frag", n, sizeof n), 0);
    assert_string_equal(n, "m");
    assert_int_equal(lyra_pull_default_name("./dir/local.bin", n, sizeof n), 0);
    assert_string_equal(n, "local.bin");
    char *u = NULL;
    assert_int_equal(lyra_pull_resolve("hf://o/r/sub/a b.gguf", "https://hf.example/", &u, NULL), 0);
    assert_string_equal(u, "https://hf.example/o/r/resolve/main/sub/a%20b.gguf");
    free(u);
    unsetenv("LYRA_HF_ENDPOINT");
    assert_int_equal(lyra_pull_resolve("hf://o/r/f.gguf", NULL, &u, NULL), 0);
    assert_string_equal(u, "https://huggingface.co/o/r/resolve/main/f.gguf");
    free(u);
    assert_int_equal(lyra_pull_resolve("/local/f.gguf", NULL, &u, NULL), 0);
    assert_null(u);
    assert_int_equal(lyra_pull_resolve("hf://o//f.gguf", NULL, &u, NULL), LYRA_EINVAL);
}

static void test_register(void **state)
{
    struct fx *f = *state;
    memset(&registered, 0, sizeof registered);
    assert_int_equal(lyra_pull_register(NULL, &f->o, NULL), 0);
    assert_string_equal(registered.name, "pull");
    assert_true(registered.resumable);
    assert_true(registered.max_concurrent >= 1);
    assert_ptr_equal(registered.run, lyra_pull_run);
    assert_ptr_equal(registered.ud, &f->o);
    struct lyra_pull_options none = {0};
    assert_int_equal(lyra_pull_register(NULL, &none, NULL), LYRA_EINVAL);
}

int main(void)
{
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_resumes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ignored_range_restarts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_then_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_sha_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_gguf_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stall_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_keeps_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_space_check_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_space_check_without_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hf_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_name_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_escape, setup, teardown),
        cmocka_unit_test(test_names_and_urls),
        cmocka_unit_test_setup_teardown(test_register, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
