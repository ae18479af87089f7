/* it_correctness.c — numerical checks that only a trained model makes
 * meaningful, on the demo model (models/demo.gguf; LYRA_DEMO_MODEL names
 * another file, for runs before it is committed):
 *
 *   - the perplexity of a held-out passage (tests/fixtures/heldout.txt, the
 *     first verses of the trainer's validation text, see
 *     models/demo.manifest.json "prep") scored through the API (echo +
 *     logprobs, max_tokens 0) matches llama.cpp's own evaluation of the same
 *     file (lyra-check-model --perplexity) within 0.5 %;
 *   - per-token logprobs of one text are the same (1e-3) alone, beside 7
 *     other streams in the same batch (models.parallel 8), and when half of
 *     its prompt comes from the prefix cache;
 *   - greedy output for a fixed prompt is the same through /v1/completions,
 *     /v1/chat/completions, /chat and `lyra run` (the demo model's chat
 *     template is a text-continuation one: the message is the prompt);
 *   - JSON mode and a GBNF grammar give output in their language.
 *
 * The numbers seen are printed (the report quotes them). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64];
static char model_path[1024];
static char fixture[1024];

#define TOL 1e-3

static const char *source_dir(void)
{
    const char *s = getenv("LYRA_SOURCE_DIR");
    return s && *s ? s : ".";
}

static int setup(void **state)
{
    const char *env = getenv("LYRA_DEMO_MODEL");
    if (env && *env)
        snprintf(model_path, sizeof model_path, "%s", env);
    else
        snprintf(model_path, sizeof model_path, "%s/models/demo.gguf", source_dir());
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/heldout.txt", source_dir());
    struct stat st;
    if (stat(model_path, &st) != 0) {
        if (it_in_ci())
            fail_msg("no demo model at %s", model_path);
        fprintf(stderr, "it_correctness: no demo model at %s: skipped\n", model_path);
        return 0;
    }
    it_mkdtemp(home, sizeof home);
    char p[256], models[128];
    snprintf(models, sizeof models, "%s/models", home);
    if (lyra_mkdirs(models) < 0)
        return -1;
    snprintf(p, sizeof p, "%s/lyra.yaml", home);
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "schema_version: 2\nmodels:\n  ctx_size: 4096\n  parallel: 8\n  entries:\n"
             "    - name: demo\n      path: %s\n",
             model_path);
    it_write_file(p, yaml);
    static const char *const envs[] = {"LYRA_LOG_LEVEL=warn", NULL};
    return it_server_start(&srv, home, NULL, envs);
}

static int teardown(void **state)
{
    if (!srv.pid)
        return 0;
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    return rc == 0 ? 0 : -1;
}

#define NEED_MODEL()                                                                                           \
    do {                                                                                                       \
        if (!srv.pid)                                                                                          \
            skip();                                                                                            \
    } while (0)

static json_t *post(const char *path, json_t *body /* taken */)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", path, "Content-Type: application/json\r\n", text, &r), 0);
    free(text);
    if (r.status != 200)
        fail_msg("POST %s: status %d: %s", path, r.status, r.body);
    json_t *j = it_json(&r);
    assert_non_null(j);
    it_response_free(&r);
    return j;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot read %s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

static json_t *choice0(json_t *j)
{
    return json_array_get(json_object_get(j, "choices"), 0);
}

/* --- perplexity ------------------------------------------------------- */

/* lyra-check-model, next to $LYRA_BIN. */
static double llama_cpp_nll(int *n_tokens)
{
    char cmd[4096], bin[1024];
    const char *lyra = getenv("LYRA_BIN");
    snprintf(bin, sizeof bin, "%s", lyra ? lyra : "./lyra");
    char *slash = strrchr(bin, '/');
    if (slash)
        snprintf(slash + 1, sizeof bin - (size_t)(slash + 1 - bin), "lyra-check-model");
    else
        snprintf(bin, sizeof bin, "./lyra-check-model");
    snprintf(cmd, sizeof cmd, "'%s' '%s' --perplexity '%s' -b '%s/deps/llama/lib' 2>&1", bin, model_path, fixture,
             source_dir());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[512];
    double nll = NAN;
    while (fgets(line, sizeof line, p)) {
        sscanf(line, "mean_nll %lf", &nll);
        sscanf(line, "tokens %d", n_tokens);
    }
    int rc = pclose(p);
    if (rc != 0 || isnan(nll))
        fail_msg("%s failed (%d)", cmd, rc);
    return nll;
}

/* Scores text through the API: the logprobs of every prompt token. */
static json_t *score(const char *text)
{
    json_t *j = post("/v1/completions", json_pack("{s:s, s:s, s:b, s:i, s:i}", "model", "demo", "prompt", text, "echo",
                                                  1, "logprobs", 0, "max_tokens", 0));
    json_t *lp = json_incref(json_object_get(json_object_get(choice0(j), "logprobs"), "token_logprobs"));
    json_decref(j);
    assert_true(json_is_array(lp));
    return lp;
}

static void test_perplexity(void **state)
{
    NEED_MODEL();
    int n_ref = 0;
    double ref = llama_cpp_nll(&n_ref);
    char *text = read_file(fixture);
    json_t *lp = score(text);
    free(text);
    assert_int_equal((int)json_array_size(lp), n_ref);
    assert_true(json_is_null(json_array_get(lp, 0)));
    double nll = 0;
    for (size_t i = 1; i < json_array_size(lp); i++)
        nll -= json_number_value(json_array_get(lp, i));
    nll /= (double)(json_array_size(lp) - 1);
    json_decref(lp);
    double rel = fabs(nll - ref) / ref;
    printf("perplexity: %d tokens; Lyra mean NLL %.6f (ppl %.3f), llama.cpp %.6f (ppl %.3f), rel. diff %.2e\n",
           n_ref, nll, exp(nll), ref, exp(ref), rel);
    /* The issue asks for 0.5 %; the two agree to about 1e-7 (the same
     * kernels on the same rows), so a much tighter bound also catches a
     * small systematic error (a wrong row, a softmax over the wrong span). */
    assert_true(rel < 0.005);
    assert_true(rel < 1e-4);
}

/* --- logprobs under batching and the prefix cache ---------------------- */

static const char *const TEXT = "And it came to pass, when Joseph was come unto his brethren, that they stript Joseph "
                                "out of his coat, his coat of many colours that was on him;";

/* A greedy completion of prompt with its generated tokens' logprobs: the
 * response (caller decrefs). */
static json_t *greedy(const char *prompt, int n)
{
    return post("/v1/completions", json_pack("{s:s, s:s, s:i, s:f, s:i, s:b}", "model", "demo", "prompt", prompt,
                                             "max_tokens", n, "temperature", 0.0, "logprobs", 5, "ignore_eos", 1));
}

/* Max |Δ| between two completions' logprobs (token_logprobs and every
 * top_logprobs value); the tokens must be the same. */
static double max_delta(json_t *a, json_t *b)
{
    json_t *la = json_object_get(choice0(a), "logprobs"), *lb = json_object_get(choice0(b), "logprobs");
    json_t *ta = json_object_get(la, "tokens"), *tb = json_object_get(lb, "tokens");
    assert_true(json_array_size(ta) > 0);
    if (!json_equal(ta, tb))
        fail_msg("the tokens differ: %s vs %s", json_dumps(ta, 0), json_dumps(tb, 0));
    double d = 0;
    for (size_t i = 0; i < json_array_size(ta); i++) {
        json_t *va = json_array_get(json_object_get(la, "token_logprobs"), i),
               *vb = json_array_get(json_object_get(lb, "token_logprobs"), i);
        if (json_is_null(va) || json_is_null(vb)) {
            assert_true(json_is_null(va) && json_is_null(vb));
            continue;
        }
        d = fmax(d, fabs(json_number_value(va) - json_number_value(vb)));
        json_t *oa = json_array_get(json_object_get(la, "top_logprobs"), i),
               *ob = json_array_get(json_object_get(lb, "top_logprobs"), i);
        const char *k;
        json_t *v;
        json_object_foreach(oa, k, v) {
            json_t *w = json_object_get(ob, k);
            if (!w)
                fail_msg("top token '%s' of position %zu is missing", k, i);
            d = fmax(d, fabs(json_number_value(v) - json_number_value(w)));
        }
    }
    return d;
}

struct par {
    const char *prompt;
    bool echo;
    json_t *out;
};

static void *run_one(void *ud)
{
    struct par *p = ud;
    json_t *body = p->echo ? json_pack("{s:s, s:s, s:b, s:i, s:i}", "model", "demo", "prompt", p->prompt, "echo", 1,
                                       "logprobs", 5, "max_tokens", 0)
                           : json_pack("{s:s, s:s, s:i, s:f, s:i, s:b}", "model", "demo", "prompt", p->prompt,
                                       "max_tokens", 48, "temperature", 0.0, "logprobs", 5, "ignore_eos", 1);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct it_response r;
    if (it_http(srv.port, "POST", "/v1/completions", "Content-Type: application/json\r\n", text, &r) == 0) {
        if (r.status == 200)
            p->out = it_json(&r);
        it_response_free(&r);
    }
    free(text);
    return NULL;
}

/* TEXT beside 7 other prompts, all at once (8 slots: one batch). */
static json_t *beside_seven(bool echo)
{
    static const char *const others[] = {
        "In the beginning God created the heaven and the earth.",
        "And the LORD spake unto Moses, saying,",
        "Blessed are the meek: for they shall inherit the earth.",
        "The LORD is my shepherd; I shall not want.",
        "And Noah begat three sons,",
        "Thus saith the LORD of hosts,",
        "For God so loved the world,",
    };
    struct par ps[8] = {{TEXT, echo, NULL}};
    for (int i = 0; i < 7; i++)
        ps[i + 1] = (struct par){others[i], echo, NULL};
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, run_one, &ps[i]), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    for (int i = 1; i < 8; i++) {
        assert_non_null(ps[i].out);
        json_decref(ps[i].out);
    }
    assert_non_null(ps[0].out);
    return ps[0].out;
}

static void test_logprobs_invariant(void **state)
{
    NEED_MODEL();
    /* generated tokens */
    json_t *alone = greedy(TEXT, 48);
    json_t *batched = beside_seven(false);
    double d_batch = max_delta(alone, batched);

    /* the first half of the prompt first, then the whole: the second
     * request takes that half from the slot's cache */
    size_t half = strlen(TEXT) / 2;
    char first[256];
    snprintf(first, sizeof first, "%.*s", (int)half, TEXT);
    while (half > 0 && first[half - 1] != ' ') /* a word boundary keeps the tokens the same */
        first[--half] = '\0';
    json_decref(post("/v1/completions",
                     json_pack("{s:s, s:s, s:i, s:f}", "model", "demo", "prompt", first, "max_tokens", 1,
                               "temperature", 0.0)));
    json_t *cached = greedy(TEXT, 48);
    json_int_t n_cached = json_integer_value(
        json_object_get(json_object_get(json_object_get(cached, "usage"), "prompt_tokens_details"), "cached_tokens"));
    json_int_t n_prompt = json_integer_value(json_object_get(json_object_get(cached, "usage"), "prompt_tokens"));
    double d_cache = max_delta(alone, cached);

    /* the prompt's own logprobs (echo), alone and batched */
    struct par one = {TEXT, true, NULL};
    run_one(&one);
    assert_non_null(one.out);
    json_t *echo_batched = beside_seven(true);
    double d_echo = max_delta(one.out, echo_batched);

    printf("max |delta logprob|: beside 7 streams %.2e; prefix cache (%lld of %lld prompt tokens cached) %.2e; "
           "prompt logprobs beside 7 streams %.2e\n",
           d_batch, (long long)n_cached, (long long)n_prompt, d_cache, d_echo);
    assert_true(n_cached * 4 >= n_prompt); /* about half came from the cache */
    assert_true(d_batch < TOL);
    assert_true(d_cache < TOL);
    assert_true(d_echo < TOL);
    json_decref(alone);
    json_decref(batched);
    json_decref(cached);
    json_decref(one.out);
    json_decref(echo_batched);
}

/* --- one greedy answer through every door ------------------------------- */

static void test_greedy_everywhere(void **state)
{
    NEED_MODEL();
    const char *prompt = "And God said, Let there be";
    json_t *c = post("/v1/completions", json_pack("{s:s, s:s, s:i, s:f}", "model", "demo", "prompt", prompt,
                                                  "max_tokens", 20, "temperature", 0.0));
    const char *want = json_string_value(json_object_get(choice0(c), "text"));
    assert_non_null(want);
    json_t *chat = post("/v1/chat/completions",
                        json_pack("{s:s, s:[{s:s, s:s}], s:i, s:f}", "model", "demo", "messages", "role", "user",
                                  "content", prompt, "max_tokens", 20, "temperature", 0.0));
    json_t *lchat = post("/chat", json_pack("{s:s, s:s, s:{s:i, s:f}}", "model", "demo", "message", prompt, "options",
                                            "max_tokens", 20, "temperature", 0.0));
    char url[64], *out = NULL;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    int rc = it_run_lyra((const char *[]){"run", "demo", prompt, "--max-tokens", "20", "--temperature", "0", "--url",
                                          url, NULL},
                         (const char *[]){"LYRA_URL=", NULL}, &out);
    assert_int_equal(rc, 0);
    printf("greedy: '%s' + '%s'\n", prompt, want);
    assert_string_equal(json_string_value(json_object_get(json_object_get(choice0(chat), "message"), "content")), want);
    assert_string_equal(json_string_value(json_object_get(json_object_get(lchat, "message"), "content")), want);
    /* lyra run prints the answer and a newline */
    size_t n = strlen(out);
    while (n > 0 && out[n - 1] == '\n')
        out[--n] = '\0';
    size_t wn = strlen(want);
    while (wn > 0 && want[wn - 1] == '\n')
        wn--;
    if (strlen(out) != wn || strncmp(out, want, wn) != 0)
        fail_msg("lyra run printed '%s', the API answered '%s'", out, want);
    free(out);
    json_decref(c);
    json_decref(chat);
    json_decref(lchat);
}

/* --- constrained output ---------------------------------------------------- */

/* A model this small may wander inside a string to max_tokens: answers are
 * sampled with 8 seeds; every one that ends ("stop") must parse as a JSON
 * object, and at least one must end. */
static void test_json_mode(void **state)
{
    NEED_MODEL();
    int n_stop = 0;
    for (int seed = 1; seed <= 8; seed++) {
        json_t *j = post("/v1/chat/completions",
                         json_pack("{s:s, s:[{s:s, s:s}], s:i, s:f, s:i, s:{s:s}}", "model", "demo", "messages", "role",
                                   "user", "content", "And Moses said", "max_tokens", 160, "temperature", 1.0, "seed",
                                   seed, "response_format", "type", "json_object"));
        const char *text = json_string_value(json_object_get(json_object_get(choice0(j), "message"), "content"));
        const char *fin = json_string_value(json_object_get(choice0(j), "finish_reason"));
        assert_non_null(text);
        if (strcmp(fin, "stop") == 0) {
            json_error_t err;
            json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
            if (!json_is_object(v))
                fail_msg("seed %d: not a JSON object: %s (%s)", seed, text, err.text);
            json_decref(v);
            if (n_stop++ == 0)
                printf("json mode (seed %d): %s\n", seed, text);
        }
        json_decref(j);
    }
    printf("json mode: %d of 8 answers ended, all valid JSON objects\n", n_stop);
    assert_true(n_stop > 0);
}

/* The grammar's language: three of yea/nay/verily joined by ", ", then ".". */
static bool in_language(const char *s)
{
    static const char *const words[] = {"yea", "nay", "verily"};
    for (int k = 0; k < 3; k++) {
        bool found = false;
        for (int w = 0; w < 3 && !found; w++) {
            size_t n = strlen(words[w]);
            if (strncmp(s, words[w], n) == 0) {
                s += n;
                found = true;
            }
        }
        if (!found)
            return false;
        const char *sep = k < 2 ? ", " : ".";
        if (strncmp(s, sep, strlen(sep)) != 0)
            return false;
        s += strlen(sep);
    }
    return *s == '\0';
}

static void test_grammar(void **state)
{
    NEED_MODEL();
    assert_true(in_language("yea, nay, verily."));
    assert_false(in_language("yea, nay."));
    const char *g = "root ::= w \", \" w \", \" w \".\"\nw ::= \"yea\" | \"nay\" | \"verily\"\n";
    json_t *j = post("/v1/completions", json_pack("{s:s, s:s, s:i, s:f, s:s}", "model", "demo", "prompt",
                                                  "And they answered,", "max_tokens", 40, "temperature", 0.8,
                                                  "grammar", g));
    const char *text = json_string_value(json_object_get(choice0(j), "text"));
    printf("grammar: '%s'\n", text);
    if (!in_language(text))
        fail_msg("not in the grammar's language: '%s'", text);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_perplexity),
        cmocka_unit_test(test_logprobs_invariant),
        cmocka_unit_test(test_greedy_everywhere),
        cmocka_unit_test(test_json_mode),
        cmocka_unit_test(test_grammar),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
