/* run.c — `lyra run MODEL [PROMPT...]`: one answer streamed to stdout, or,
 * without a prompt, a chat read line by line from stdin.  The conversation
 * is kept in memory as an OpenAI messages list and sent whole with each
 * turn to POST /v1/chat/completions (stream: true).
 *
 * Ctrl-C: SIGINT sets the one flag below (installed without SA_RESTART, so
 * a read at the prompt returns at once); the transfer's progress callback
 * sees it and aborts the answer.  During an answer that returns to the
 * prompt, at the prompt it ends the chat.
 *
 * --json: each answer is requested whole (stream: false) and the daemon's
 * chat completion (choices, usage, timings) is printed as JSON instead of
 * the text: indented for a one-shot prompt, one line per turn in a chat.
 *
 * Exit status (cli/output.h): 0, 1 the daemon refused or failed, 2 usage,
 * 3 no daemon at the URL, 130 a one-shot answer stopped by Ctrl-C. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    interrupted = 1;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: lyra run MODEL [PROMPT...] [options]\n\n"
                 "Streams MODEL's answer to PROMPT (the words joined by spaces; \"-\" reads the\n"
                 "prompt from stdin).  Without a prompt, chats: each line read from stdin is sent\n"
                 "with the conversation so far; /bye or end of input ends it.  Ctrl-C stops an\n"
                 "answer; at the prompt it ends the chat.\n\n"
                 "options:\n"
                 "  --temperature T   sampling temperature (0 = greedy)\n"
                 "  --max-tokens N    at most N tokens per answer\n"
                 "  --seed N          sampling seed\n"
                 "  --system TEXT     a system message that opens the conversation\n"
                 "  --json            print the daemon's whole answer (text, finish_reason,\n"
                 "                    usage) as JSON instead of streaming the text\n"
                 "  --url URL         the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "                    then the configured host and port, 127.0.0.1:8000)\n"
                 "  --home DIR, --config FILE, --host ADDR, --port N   as for `lyra serve`\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

struct run_opts {
    const char *url, *system;
    bool json;
    json_t *params; /* sampling fields added to each request */
};

struct answer {
    char *text;
    size_t len, cap;
    bool ends_with_newline;
    bool oom;
};

/* Prints each piece of the answer as it arrives and keeps the whole. */
static int on_chunk(json_t *chunk, void *ud)
{
    struct answer *a = ud;
    json_t *choice = json_array_get(json_object_get(chunk, "choices"), 0);
    json_t *delta = json_object_get(choice, "delta");
    if (!delta)
        delta = json_object_get(choice, "message"); /* a daemon that did not stream */
    const char *piece = json_string_value(json_object_get(delta, "content"));
    size_t n = piece ? strlen(piece) : 0;
    if (n == 0)
        return 0;
    fwrite(piece, 1, n, stdout);
    fflush(stdout);
    a->ends_with_newline = piece[n - 1] == '\n';
    if (a->len + n + 1 > a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        while (cap < a->len + n + 1)
            cap *= 2;
        char *t = realloc(a->text, cap);
        if (!t) {
            a->oom = true;
            return 0; /* the answer is still shown; only the history loses it */
        }
        a->text = t;
        a->cap = cap;
    }
    memcpy(a->text + a->len, piece, n + 1);
    a->len += n;
    return 0;
}

/* Streams one answer to `messages`.  Returns 0 (also when Ctrl-C stopped
 * it: `interrupted` says so) or a negative code after printing the error;
 * *text gets the answer shown (caller frees; may be NULL). */
static int answer_json(struct lyra_client *c, const char *model, json_t *messages, const struct run_opts *o,
                       bool compact, char **text)
{
    *text = NULL;
    json_t *body = json_pack("{s:s, s:O, s:b}", "model", model, "messages", messages, "stream", 0);
    if (!body || json_object_update(body, o->params) < 0) {
        json_decref(body);
        fprintf(stderr, "lyra run: out of memory\n");
        return LYRA_ENOMEM;
    }
    json_t *reply = NULL;
    int rc = lyra_client_post_json(c, "/v1/chat/completions", body, 3600, &reply);
    json_decref(body);
    if (rc < 0) {
        fprintf(stderr, "lyra run: %s\n", lyra_client_errmsg(c));
        return rc;
    }
    if (lyra_cli_print_json("run", reply, compact) != 0)
        rc = LYRA_ENOMEM;
    json_t *choice = json_array_get(json_object_get(reply, "choices"), 0);
    const char *content = json_string_value(json_object_get(json_object_get(choice, "message"), "content"));
    if (rc == 0 && content)
        *text = strdup(content);
    json_decref(reply);
    return rc;
}

static int answer(struct lyra_client *c, const char *model, json_t *messages, const struct run_opts *o,
                  char **text)
{
    if (o->json)
        return answer_json(c, model, messages, o, false, text);
    json_t *body = json_pack("{s:s, s:O, s:b}", "model", model, "messages", messages, "stream", 1);
    if (!body || json_object_update(body, o->params) < 0) {
        json_decref(body);
        fprintf(stderr, "lyra run: out of memory\n");
        return LYRA_ENOMEM;
    }
    struct answer a = {0};
    int rc = lyra_client_post_stream(c, "/v1/chat/completions", body, on_chunk, &a, &interrupted);
    json_decref(body);
    if (a.len > 0 && !a.ends_with_newline)
        putchar('\n');
    else if (a.len == 0 && rc == 0 && !interrupted)
        putchar('\n');
    fflush(stdout);
    if (rc < 0)
        fprintf(stderr, "lyra run: %s\n", lyra_client_errmsg(c));
    *text = a.text;
    return rc;
}

/* The whole of stdin, trailing white space removed; NULL on failure. */
static char *read_stdin(void)
{
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    while (s) {
        if (len + 1 == cap) {
            char *t = cap < LYRA_CLIENT_MAX_BODY ? realloc(s, cap * 2) : NULL;
            if (!t) {
                free(s);
                return NULL;
            }
            s = t;
            cap *= 2;
        }
        size_t r = fread(s + len, 1, cap - len - 1, stdin);
        len += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(s);
                return NULL;
            }
            break;
        }
    }
    if (!s)
        return NULL;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    s[len] = '\0';
    return s;
}

static json_t *message(const char *role, const char *content)
{
    return json_pack("{s:s, s:s}", "role", role, "content", content ? content : "");
}

static int one_shot(struct lyra_client *c, const char *model, json_t *messages, const char *prompt,
                    const struct run_opts *o)
{
    json_array_append_new(messages, message("user", prompt));
    char *text = NULL;
    int rc = answer(c, model, messages, o, &text);
    free(text);
    if (rc < 0)
        return lyra_cli_exit_code(rc);
    return interrupted ? 130 : 0;
}

/* The chat loop.  A failed turn is dropped from the conversation (the
 * error was shown) and makes the exit status 1; an answer stopped by
 * Ctrl-C stays in it as far as it was shown (with nothing shown, the turn
 * is dropped). */
static int chat(struct lyra_client *c, const char *model, json_t *messages, const struct run_opts *o)
{
    bool tty = isatty(STDIN_FILENO) && !o->json;
    if (tty)
        printf("Chatting with %s at %s.  /bye or Ctrl-D ends, Ctrl-C stops an answer.\n", model,
               lyra_client_url(c));
    int status = 0;
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        if (tty) {
            fputs(">>> ", stdout);
            fflush(stdout);
        }
        interrupted = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0 || interrupted) {
            if (tty)
                putchar('\n');
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            continue;
        if (strcmp(p, "/bye") == 0)
            break;
        json_array_append_new(messages, message("user", line));
        char *text = NULL;
        int rc = o->json ? answer_json(c, model, messages, o, true, &text) : answer(c, model, messages, o, &text);
        if (rc < 0 || (interrupted && !text)) {
            status = rc < 0 ? lyra_cli_exit_code(rc) : status;
            json_array_remove(messages, json_array_size(messages) - 1);
        } else {
            json_array_append_new(messages, message("assistant", text));
        }
        free(text);
    }
    free(line);
    fflush(stdout);
    return status;
}

static bool parse_number(const char *flag, const char *value, bool integer, double lo, double hi,
                         json_t **out)
{
    char *end = NULL;
    errno = 0;
    double d = integer ? (double)strtoll(value, &end, 10) : strtod(value, &end);
    if (!*value || *end || errno || !isfinite(d) || d < lo || d > hi) {
        fprintf(stderr, "lyra run: %s needs %s from %.15g to %.15g, not '%s'\n", flag,
                integer ? "an integer" : "a number", lo, hi, value);
        return false;
    }
    *out = integer ? json_integer((json_int_t)strtoll(value, NULL, 10)) : json_real(d);
    return *out != NULL;
}

/* Joins the prompt words with spaces ("-" alone: stdin).  NULL when there
 * are none, or after printing why it failed (*failed set). */
static char *prompt_of(char **words, int n_words, bool *failed)
{
    *failed = false;
    if (n_words == 0)
        return NULL;
    char *prompt = NULL;
    if (n_words == 1 && strcmp(words[0], "-") == 0) {
        prompt = read_stdin();
        if (!prompt)
            fprintf(stderr, "lyra run: cannot read the prompt from stdin\n");
    } else {
        size_t len = 0;
        for (int i = 0; i < n_words; i++)
            len += strlen(words[i]) + 1;
        prompt = malloc(len);
        if (prompt) {
            char *p = prompt;
            for (int i = 0; i < n_words; i++)
                p += sprintf(p, "%s%s", i > 0 ? " " : "", words[i]);
        } else {
            fprintf(stderr, "lyra run: out of memory\n");
        }
    }
    *failed = prompt == NULL;
    return prompt;
}

/* Parses the options into *o, the model and the prompt words (borrowed from
 * argv).  Returns -1 to go on, else the exit status (--help, a bad option). */
static int parse_args(int argc, char **argv, struct run_opts *o, const char **model, char **words,
                      int *n_words)
{
    static const struct {
        const char *flag, *key;
        char kind; /* n number, i integer, s string */
        double lo, hi;
    } options[] = {
        {"--temperature", "temperature", 'n', 0, 100},
        {"--max-tokens", "max_tokens", 'i', 1, 1000000},
        {"--seed", "seed", 'i', -1, 4294967295.0},
        {"--system", NULL, 's', 0, 0},
        {"--url", NULL, 's', 0, 0},
    };
    bool only_words = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (only_words || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (!*model)
                *model = arg;
            else
                words[(*n_words)++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_words = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(arg, "--json") == 0) {
            o->json = true;
            continue;
        }
        size_t k = 0, n_options = sizeof options / sizeof *options;
        const char *value = NULL;
        for (; k < n_options; k++) {
            size_t len = strlen(options[k].flag);
            if (strncmp(arg, options[k].flag, len) == 0 && (arg[len] == '\0' || arg[len] == '=')) {
                value = arg[len] == '=' ? arg + len + 1 : i + 1 < argc ? argv[++i] : NULL;
                break;
            }
        }
        if (k == n_options) {
            fprintf(stderr, "lyra run: unknown option '%s'\n", arg);
            usage(stderr);
            return 2;
        }
        if (!value) {
            fprintf(stderr, "lyra run: %s needs a value\n", options[k].flag);
            return 2;
        }
        if (options[k].kind == 's') {
            *(strcmp(options[k].flag, "--system") == 0 ? &o->system : &o->url) = value;
            continue;
        }
        json_t *v = NULL;
        if (!parse_number(options[k].flag, value, options[k].kind == 'i', options[k].lo, options[k].hi, &v))
            return 2;
        json_object_set_new(o->params, options[k].key, v);
    }
    if (!*model) {
        fprintf(stderr, "lyra run: which model? (`lyra ls` lists them)\n");
        usage(stderr);
        return 2;
    }
    return -1;
}

int lyra_cmd_run(int argc, char **argv)
{
    /* The common flags are looked for before a "--" only: after it every
     * word is the prompt's.  They are parsed in a copy of argv. */
    int dd = 1;
    while (dd < argc && strcmp(argv[dd], "--") != 0)
        dd++;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    char **words = calloc((size_t)argc + 1, sizeof *words);
    struct run_opts o = {.params = json_object()};
    json_t *messages = json_array();
    char *prompt = NULL;
    struct lyra_client *c = NULL;
    struct lyra_common_flags flags = {0};
    const char *model = NULL;
    int n_words = 0, status = 1;
    if (!args || !words || !o.params || !messages) {
        fprintf(stderr, "lyra run: out of memory\n");
        goto out;
    }
    memcpy(args, argv, (size_t)dd * sizeof *args);
    int n = lyra_cli_common_flags(dd, args, &flags);
    if (n < 0) {
        status = 2;
        goto out;
    }
    for (int i = dd; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    status = parse_args(n, args, &o, &model, words, &n_words);
    if (status >= 0)
        goto out;
    status = 1;
    bool failed;
    prompt = prompt_of(words, n_words, &failed);
    if (failed)
        goto out;
    if (o.system && json_array_append_new(messages, message("system", o.system)) < 0) {
        fprintf(stderr, "lyra run: out of memory\n");
        goto out;
    }
    if (lyra_client_connect(o.url, &flags, "run", &c) < 0)
        goto out;
    /* --json answers are not streamed: Ctrl-C keeps its default (it ends the
     * command), as the request cannot be stopped half-way and printed. */
    struct sigaction sa = {.sa_handler = o.json ? SIG_DFL : on_sigint}; /* no SA_RESTART: a read returns */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    status = prompt ? one_shot(c, model, messages, prompt, &o) : chat(c, model, messages, &o);
    signal(SIGINT, SIG_DFL);
out:
    lyra_client_free(c);
    json_decref(messages);
    json_decref(o.params);
    free(prompt);
    free(words);
    free(args);
    return status;
}
