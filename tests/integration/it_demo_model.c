/* it_demo_model.c — the committed demo model (models/demo.gguf) served by the
 * real daemon writes English: the greedy continuation of "And God said"
 * through /v1/completions, /v1/chat/completions (its chat template only
 * joins the contents, so a chat continues the text too) and `lyra run` is
 * made mostly of words of the training text (models/demo.words.txt, every
 * distinct word of it, lower-cased).  The same check on the random-weight
 * tiny model fails, which shows that the check can fail. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "harness.h"

static struct it_server srv;
static char home[64], repo[PATH_MAX];
static char **words;
static size_t nwords;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_words(void)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%smodels/demo.words.txt", repo);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!*line)
            continue;
        if (nwords == cap) {
            cap = cap ? 2 * cap : 16384;
            words = realloc(words, cap * sizeof *words);
        }
        words[nwords++] = strdup(line);
    }
    fclose(f);
    qsort(words, nwords, sizeof *words, cmp_str);
    return nwords > 1000 ? 0 : -1;
}

static int setup(void **state)
{
    const char *self = __FILE__, *suffix = "tests/integration/it_demo_model.c";
    size_t n = strlen(self), m = strlen(suffix);
    if (n < m || strcmp(self + n - m, suffix) != 0)
        return -1;
    memcpy(repo, self, n - m);
    repo[n - m] = '\0';
    if (load_words() < 0)
        return -1;
    it_mkdtemp(home, sizeof home);
    char models[128], demo[PATH_MAX + 32], link[192], yaml[256];
    snprintf(models, sizeof models, "%s/models", home);
    snprintf(demo, sizeof demo, "%smodels/demo.gguf", repo);
    snprintf(link, sizeof link, "%s/demo.gguf", models);
    /* A copy, not a symlink: the registry does not follow a link out of
     * models.dir. */
    if (lyra_mkdirs(models) < 0)
        return -1;
    size_t demo_len = 0;
    char *demo_bytes = lyra_read_file(demo, &demo_len);
    int copied = demo_bytes ? lyra_write_file_atomic(link, demo_bytes, demo_len, 0644) : -1;
    free(demo_bytes);
    if (copied < 0 ||
        it_install_model(models, "tiny.gguf", "tiny.gguf", SIZE_MAX) < 0)
        return -1;
    snprintf(yaml, sizeof yaml, "%s/lyra.yaml", home);
    it_write_file(yaml, "schema_version: 2\nmodels:\n  ctx_size: 256\n  parallel: 1\n");
    static const char *const env[] = {"LYRA_LOG_LEVEL=warn", NULL};
    return it_server_start(&srv, home, NULL, env);
}

static int teardown(void **state)
{
    int rc = it_server_stop(&srv, SIGTERM);
    it_server_cleanup(&srv);
    it_rmrf(home);
    for (size_t i = 0; i < nwords; i++)
        free(words[i]);
    free(words);
    return rc == 0 ? 0 : -1;
}

/* Share of the text's words (runs of letters, lower-cased) that are words of
 * the training text; *count gets how many words there were. */
static double known_share(const char *text, int *count)
{
    int total = 0, known = 0;
    const char *p = text;
    while (*p) {
        while (*p && !isalpha((unsigned char)*p))
            p++;
        if (!*p)
            break;
        char w[64];
        size_t n = 0;
        while (isalpha((unsigned char)*p)) {
            if (n + 1 < sizeof w)
                w[n++] = (char)tolower((unsigned char)*p);
            p++;
        }
        w[n] = '\0';
        total++;
        const char *key = w;
        if (bsearch(&key, words, nwords, sizeof *words, cmp_str))
            known++;
    }
    *count = total;
    return total ? (double)known / total : 0.0;
}

static char *complete(const char *model, const char *path, const char *body_fmt)
{
    char body[512];
    snprintf(body, sizeof body, body_fmt, model);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "POST", path, "Content-Type: application/json\r\n", body, &r), 0);
    if (r.status != 200)
        fail_msg("POST %s: %d %s", path, r.status, r.body);
    json_t *j = it_json(&r);
    assert_non_null(j);
    const json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    const json_t *text = json_object_get(choice, "text");
    if (!text)
        text = json_object_get(json_object_get(choice, "message"), "content");
    assert_true(json_is_string(text));
    char *out = strdup(json_string_value(text));
    json_decref(j);
    it_response_free(&r);
    return out;
}

#define COMPLETION "{\"model\":\"%s\",\"prompt\":\"And God said\",\"max_tokens\":40,\"temperature\":0}"
#define CHAT                                                                                       \
    "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"And God said\"}],"           \
    "\"max_tokens\":40,\"temperature\":0}"

static void expect_english(const char *what, const char *text)
{
    int n;
    double share = known_share(text, &n);
    printf("# %s: %d words, %.0f%% known: \"%s\"\n", what, n, 100 * share, text);
    assert_true(n >= 8);
    assert_true(share >= 0.9);
}

static void test_completion_is_english(void **state)
{
    char *t = complete("demo", "/v1/completions", COMPLETION);
    expect_english("demo /v1/completions", t);
    free(t);
}

static void test_chat_continues_the_text(void **state)
{
    char *t = complete("demo", "/v1/chat/completions", CHAT);
    expect_english("demo /v1/chat/completions", t);
    free(t);
}

static void test_lyra_run_is_english(void **state)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    const char *args[] = {"run", "--url", url, "demo", "And God said", "--temperature", "0", "--max-tokens", "40", NULL};
    char *out = NULL;
    assert_int_equal(it_run_lyra(args, NULL, &out), 0);
    expect_english("lyra run demo", out);
    free(out);
}

/* The check fails on random weights. */
static void test_random_weights_fail_the_check(void **state)
{
    char *t = complete("tiny", "/v1/completions", COMPLETION);
    int n;
    double share = known_share(t, &n);
    printf("# tiny (random weights): %d words, %.0f%% known: \"%s\"\n", n, 100 * share, t);
    assert_false(n >= 8 && share >= 0.9);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_is_english),
        cmocka_unit_test(test_chat_continues_the_text),
        cmocka_unit_test(test_lyra_run_is_english),
        cmocka_unit_test(test_random_weights_fail_the_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
