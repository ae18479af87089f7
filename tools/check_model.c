/*
 * check_model: load a GGUF with libllama and generate greedily from it, to verify that a model
 * (typically one from lyra-mkmodel) loads, has a usable tokenizer and chat template, and to
 * measure decode speed.
 *
 *   check_model MODEL.gguf [-n TOKENS] [-p PROMPT] [-t THREADS] [-b BACKEND_DIR] [-v]
 *   check_model MODEL.gguf --perplexity FILE [-t THREADS] [-b BACKEND_DIR]
 *
 * Prints n_params, n_vocab, the chat template check, the generated text and tokens/s of the
 * generation phase (prompt evaluation excluded). Exits non-zero on any failure.
 *
 * --perplexity FILE: llama.cpp's own evaluation of a text, the reference Lyra's API is checked
 * against (tests/integration/it_correctness.c): the file is tokenized as Lyra tokenizes a
 * prompt (BOS added, special tokens parsed), decoded as one sequence in one batch with logits
 * for every position, and the mean negative log-likelihood of tokens 1..n-1 (each given the
 * ones before it; log-softmax of the raw logits, in double) is printed as
 * "mean_nll X" with the token count and the perplexity exp(X). The text must fit the model's
 * training context.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "llama.h"
#include "worker/template.h"

static bool verbose;

static void log_cb(enum ggml_log_level level, const char *text, void *ud)
{
    if (verbose || level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static llama_token argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* Checks that the model carries a template and that llama_chat_apply_template recognises it. */
static int check_template(const struct llama_model *model)
{
    const char *tmpl = llama_model_chat_template(model, NULL);
    if (!tmpl) {
        printf("chat_template: none\n");
        return 0;
    }
    const struct llama_chat_message chat[] = {
        {"system", "You are terse."},
        {"user", "Hello!"},
    };
    /* The join-the-contents Jinja template (the demo model's) is llama.cpp's
     * built-in "deepseek-ocr", as Lyra applies it (src/worker/template.h). */
    const char *apply = strcmp(tmpl, LYRA_TEMPLATE_JOIN_JINJA) == 0 ? LYRA_TEMPLATE_JOIN_BUILTIN : tmpl;
    char buf[1024];
    int32_t n = llama_chat_apply_template(apply, chat, 2, true, buf, sizeof buf);
    if (n < 0 || n >= (int32_t)sizeof buf) {
        fprintf(stderr, "check_model: llama_chat_apply_template failed (%d)\n", n);
        return -1;
    }
    printf("chat_template: %zu bytes, formatted two messages as:\n%.*s\n", strlen(tmpl), n, buf);
    return 0;
}

/* The --perplexity mode (see the top). */
static int perplexity(struct llama_model *model, const char *path, int n_threads)
{
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    char *text = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[65536];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *p = realloc(text, cap);
            if (!p) {
                fclose(f);
                free(text);
                return 1;
            }
            text = p;
        }
        memcpy(text + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (!text) {
        fprintf(stderr, "check_model: %s is empty\n", path);
        return 1;
    }
    text[len] = '\0';
    int n_tok = -llama_tokenize(vocab, text, (int32_t)len, NULL, 0, true, true);
    llama_token *toks = malloc(sizeof *toks * (size_t)(n_tok > 0 ? n_tok : 1));
    int rc = 1;
    struct llama_context *ctx = NULL;
    struct llama_batch batch = {0};
    if (!toks || n_tok < 2 || llama_tokenize(vocab, text, (int32_t)len, toks, n_tok, true, true) != n_tok) {
        fprintf(stderr, "check_model: cannot tokenize %s (%d tokens)\n", path, n_tok);
        goto out;
    }
    if (n_tok > llama_model_n_ctx_train(model)) {
        fprintf(stderr, "check_model: %s has %d tokens, more than the model's context (%d)\n", path, n_tok,
                llama_model_n_ctx_train(model));
        goto out;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_tok;
    cp.n_batch = cp.n_ubatch = (uint32_t)n_tok;
    cp.n_threads = cp.n_threads_batch = n_threads;
    ctx = llama_init_from_model(model, cp);
    batch = llama_batch_init(n_tok, 0, 1);
    if (!ctx || !batch.token) {
        fprintf(stderr, "check_model: cannot create a context of %d tokens\n", n_tok);
        goto out;
    }
    for (int i = 0; i < n_tok; i++) {
        batch.token[i] = toks[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = true;
    }
    batch.n_tokens = n_tok;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "check_model: decode failed\n");
        goto out;
    }
    double nll = 0;
    for (int i = 0; i + 1 < n_tok; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        double max = l[0], sum = 0;
        for (int v = 1; v < n_vocab; v++)
            max = l[v] > max ? l[v] : max;
        for (int v = 0; v < n_vocab; v++)
            sum += exp((double)l[v] - max);
        nll -= (double)l[toks[i + 1]] - max - log(sum);
    }
    nll /= (double)(n_tok - 1);
    printf("tokens %d\nscored %d\nmean_nll %.6f\nperplexity %.4f\n", n_tok, n_tok - 1, nll, exp(nll));
    rc = 0;
out:
    if (batch.token)
        llama_batch_free(batch);
    llama_free(ctx);
    free(toks);
    free(text);
    return rc;
}

int main(int argc, char **argv)
{
    const char *ppl_file = NULL;
    static const struct option longopts[] = {{"perplexity", required_argument, NULL, 'P'}, {NULL, 0, NULL, 0}};
    const char *prompt = "Once upon a time", *backends = "deps/llama/lib";
    int n_gen = 64, n_threads = 2, n_gpu_layers = -2, c; /* -2: llama.cpp's default */
    while ((c = getopt_long(argc, argv, "n:p:t:b:g:vP:", longopts, NULL)) != -1) {
        switch (c) {
        case 'P': ppl_file = optarg; break;
        case 'n': n_gen = atoi(optarg); break;
        case 'p': prompt = optarg; break;
        case 't': n_threads = atoi(optarg); break;
        case 'b': backends = optarg; break;
        case 'g': n_gpu_layers = atoi(optarg); break;
        case 'v': verbose = true; break;
        default: goto usage;
        }
    }
    if (optind != argc - 1 || n_gen < 1 || n_threads < 1)
        goto usage;

    llama_log_set(log_cb, NULL);
    ggml_backend_load_all_from_path(backends);
    llama_backend_init();

    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(dev, &free_b, &total_b);
        printf("device %zu: %s (%s), %zu MiB\n", i, ggml_backend_dev_name(dev), ggml_backend_dev_description(dev),
               total_b >> 20);
    }
    struct llama_model_params mp = llama_model_default_params();
    if (n_gpu_layers != -2)
        mp.n_gpu_layers = n_gpu_layers;
    struct llama_model *model = llama_model_load_from_file(argv[optind], mp);
    if (!model) {
        fprintf(stderr, "check_model: cannot load %s\n", argv[optind]);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    char desc[128];
    llama_model_desc(model, desc, sizeof desc);
    printf("model: %s (%s), n_params %llu, n_vocab %d, size %llu bytes\n", argv[optind], desc,
           (unsigned long long)llama_model_n_params(model), n_vocab,
           (unsigned long long)llama_model_size(model));

    int rc = 1;
    struct llama_context *ctx = NULL;
    llama_token *toks = NULL;
    if (ppl_file) {
        rc = perplexity(model, ppl_file, n_threads);
        goto out;
    }
    if (check_template(model))
        goto out;

    int n_prompt = -llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), NULL, 0, true, false);
    toks = malloc(sizeof *toks * (size_t)(n_prompt + n_gen));
    if (!toks || llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), toks, n_prompt, true,
                                false) != n_prompt) {
        fprintf(stderr, "check_model: tokenization failed\n");
        goto out;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_gen + 16);
    cp.n_batch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = n_threads;
    ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "check_model: cannot create a context\n");
        goto out;
    }

    if (llama_decode(ctx, llama_batch_get_one(toks, n_prompt)) != 0) {
        fprintf(stderr, "check_model: prompt decode failed\n");
        goto out;
    }
    printf("prompt: %d tokens: %s", n_prompt, prompt);
    fflush(stdout);
    /* Generate exactly n_gen tokens, EOG or not: this measures speed, not text. */
    double t0 = now_s();
    for (int i = 0; i < n_gen; i++) {
        llama_token *t = &toks[n_prompt + i];
        *t = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
        char piece[128];
        int np = llama_token_to_piece(vocab, *t, piece, sizeof piece, 0, true);
        if (np > 0)
            fwrite(piece, 1, (size_t)np, stdout);
        if (llama_decode(ctx, llama_batch_get_one(t, 1)) != 0) {
            fprintf(stderr, "\ncheck_model: decode failed at token %d\n", i);
            goto out;
        }
    }
    double dt = now_s() - t0;
    printf("\ngenerated %d tokens in %.3f s: %.1f tokens/s (%d threads)\n", n_gen, dt,
           n_gen / dt, n_threads);
    rc = 0;
out:
    free(toks);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;

usage:
    fprintf(stderr, "usage: %s MODEL.gguf [-n TOKENS] [-p PROMPT] [-t THREADS] [-b BACKEND_DIR] [-g GPU_LAYERS] "
                    "[-v] [--perplexity FILE]\n", argv[0]);
    return 2;
}
