/* sampling.c — the per-request sampler chain and the text stream with stop
 * strings and UTF-8 hold-back (see sampling.h).  The parameters themselves
 * are parsed by core/sampling_params.c, shared with the daemon.
 *
 * The chain follows llama-server's order: [ban EOG] penalties, top_k, top_p,
 * min_p, temperature, dist — or greedy when temperature is 0.  Samplers that
 * would do nothing (top_p 1, min_p 0, penalties off) are left out, since each
 * one is a pass over the candidates on every token.  A grammar is not part of
 * the chain: applying it to the whole vocabulary every token is costly, so,
 * like llama-server, we sample first and consult the grammar for that one
 * token, resampling under the grammar only when it is rejected. */
#include "worker/sampling.h"

#include "core/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

_Static_assert(LYRA_SEED_RANDOM == LLAMA_DEFAULT_SEED, "LYRA_SEED_RANDOM must be llama.cpp's random seed");

/* llama.cpp's grammars/json.gbnf (v0.5.0), for json_mode. */
static const char json_gbnf[] =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "\n"
    "object ::=\n"
    "  \"{\" ws (\n"
    "            string \":\" ws value\n"
    "    (\",\" ws string \":\" ws value)*\n"
    "  )? \"}\" ws\n"
    "\n"
    "array  ::=\n"
    "  \"[\" ws (\n"
    "            value\n"
    "    (\",\" ws value)*\n"
    "  )? \"]\" ws\n"
    "\n"
    "string ::=\n"
    "  \"\\\"\" (\n"
    "    [^\"\\\\\\x7F\\x00-\\x1F] |\n"
    "    \"\\\\\" ([\"\\\\bfnrt] | \"u\" [0-9a-fA-F]{4}) # escapes\n"
    "  )* \"\\\"\" ws\n"
    "\n"
    "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? "
    "ws\n"
    "\n"
    "# Optional space: by convention, applied in this grammar after literal chars when allowed\n"
    "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

/* ---- sampler --------------------------------------------------------------- */

struct lyra_sampler {
    struct llama_sampler *chain;
    struct llama_sampler *grammar; /* NULL without grammar / json_mode */
    const struct llama_vocab *vocab;
    bool ignore_eos;
};

/* llama.cpp's grammar parser prints its detailed error with fprintf(stderr)
 * rather than through the log callback.  Catch it in a memory file for the
 * duration of the call so the client gets the reason and our stderr stays
 * clean.  The engine is single-threaded, so nothing else writes meanwhile. */
static struct llama_sampler *init_grammar(const struct llama_vocab *vocab, const char *gbnf,
                                          char *why, size_t why_len)
{
    why[0] = '\0';
    fflush(stderr);
    int mem = memfd_create("lyra-grammar", MFD_CLOEXEC);
    int saved = mem >= 0 ? dup(STDERR_FILENO) : -1;
    if (saved >= 0)
        dup2(mem, STDERR_FILENO);
    struct llama_sampler *g = llama_sampler_init_grammar(vocab, gbnf, "root");
    if (saved >= 0) {
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);
        char text[1024];
        ssize_t n = pread(mem, text, sizeof text - 1, 0);
        if (n > 0) {
            text[n] = '\0';
            const char *p = strstr(text, "error parsing grammar: ");
            if (p) {
                p += strlen("error parsing grammar: ");
                size_t l = strcspn(p, "\n");
                lyra_fmt(why, why_len, "%.*s", (int)l, p);
            }
        }
    }
    if (mem >= 0)
        close(mem);
    return g;
}

/* ---- grammar guard ------------------------------------------------------- */

/* llama.cpp's grammar engine keeps one stack per way the text so far can be
 * matched, without merging equal ones: an ambiguous grammar (the same text
 * matched by several alternatives, under a repetition) multiplies its stacks
 * with every character, and constraining one token can then take seconds or
 * minutes on the worker's only thread, stalling every request of the model.
 * Two guards: alternations with duplicate branches (pure ambiguity, never
 * needed) or more than GRAMMAR_MAX_BRANCHES branches are refused up front;
 * and a request whose grammar takes the per-token budget (500 ms) or more to
 * constrain one token is ended (lyra_sampler_sample returns -2). */
#define GRAMMAR_MAX_BRANCHES 256

struct span {
    const char *p;
    size_t n;
};

/* Skips a quoted literal or a character class starting at s[i] (s[i] is
 * '"' or '['); returns the index after it. */
static size_t skip_literal(const char *s, size_t i, size_t end)
{
    char close = s[i] == '"' ? '"' : ']';
    for (i++; i < end && s[i] != close; i++)
        if (s[i] == '\\' && i + 1 < end)
            i++;
    return i < end ? i + 1 : end;
}

/* A branch without surrounding white space. */
static struct span trim(const char *p, size_t n)
{
    while (n && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    return (struct span){p, n};
}

/* Checks the alternation s[begin..end) (a rule body or a group's inside) and
 * the groups within it. */
static int check_alternation(const char *s, size_t begin, size_t end, int depth, char *why, size_t why_len)
{
    if (depth > 64)
        return lyra_fmt(why, why_len, "groups nested more than 64 deep"), -1;
    struct span br[GRAMMAR_MAX_BRANCHES];
    size_t nb = 0, start = begin;
    for (size_t i = begin; i <= end; i++) {
        if (i < end && (s[i] == '"' || s[i] == '[')) {
            i = skip_literal(s, i, end) - 1;
        } else if (i < end && s[i] == '#') {
            while (i < end && s[i] != '\n')
                i++;
        } else if (i < end && s[i] == '(') {
            size_t j = i + 1;
            int d = 1;
            while (j < end && d > 0) {
                if (s[j] == '"' || s[j] == '[') {
                    j = skip_literal(s, j, end);
                    continue;
                }
                d += s[j] == '(' ? 1 : s[j] == ')' ? -1 : 0;
                j++;
            }
            if (check_alternation(s, i + 1, j > i + 1 ? j - 1 : j, depth + 1, why, why_len) < 0)
                return -1;
            i = j - 1;
        } else if (i == end || s[i] == '|') {
            if (nb == GRAMMAR_MAX_BRANCHES)
                return lyra_fmt(why, why_len, "an alternation has more than %d branches", GRAMMAR_MAX_BRANCHES), -1;
            br[nb++] = trim(s + start, i - start);
            start = i + 1;
        }
    }
    for (size_t a = 0; a < nb; a++)
        for (size_t b = a + 1; b < nb; b++)
            if (br[a].n == br[b].n && memcmp(br[a].p, br[b].p, br[a].n) == 0)
                return lyra_fmt(why, why_len,
                                "the alternative '%.*s' appears twice in one alternation (an ambiguous grammar "
                                "makes every token slow)",
                                (int)lyra_utf8_clip(br[a].p, br[a].n < 40 ? br[a].n : 40), br[a].p), -1;
    return 0;
}

/* Checks every rule body of a GBNF text (rules are "name ::= body"). */
static int check_grammar(const char *g, char *why, size_t why_len)
{
    size_t len = strlen(g);
    const char *body = strstr(g, "::=");
    while (body) {
        size_t b = (size_t)(body - g) + 3, e = len;
        /* The body runs to the next line that starts a rule. */
        const char *next = NULL;
        for (size_t i = b; i < len && !next; i++) {
            if (g[i] == '"' || g[i] == '[') {
                i = skip_literal(g, i, len) - 1;
            } else if (g[i] == '\n') {
                const char *nl = g + i + 1;
                const char *assign = strstr(nl, "::=");
                const char *eol = strchr(nl, '\n');
                if (assign && (!eol || assign < eol) && strspn(nl, " \t") == 0) {
                    next = assign;
                    e = i;
                }
            }
        }
        if (check_alternation(g, b, e, 0, why, why_len) < 0)
            return -1;
        body = next;
    }
    return 0;
}

int lyra_sampler_new(const struct llama_vocab *vocab, const struct lyra_sampling_params *p,
                     const llama_token *eog, int n_eog, int n_ctx_slot, struct lyra_sampler **out,
                     struct lyra_err *err)
{
    *out = NULL;
    struct lyra_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    s->vocab = vocab;
    s->ignore_eos = p->ignore_eos;
    const char *gbnf = p->grammar ? p->grammar : p->json_mode ? json_gbnf : NULL;
    if (gbnf) {
        char why[256];
        if (check_grammar(gbnf, why, sizeof why) < 0) {
            free(s);
            return lyra_err_set(err, LYRA_EPARSE, "grammar: %s", why);
        }
        s->grammar = init_grammar(vocab, gbnf, why, sizeof why);
        if (!s->grammar) {
            free(s);
            return lyra_err_set(err, LYRA_EPARSE, "grammar: %s", why[0] ? why : "cannot be parsed");
        }
    }

    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    s->chain = llama_sampler_chain_init(cp);
    if (!s->chain) {
        lyra_sampler_free(s);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    if (p->ignore_eos && n_eog > 0) {
        llama_logit_bias *bias = malloc(sizeof *bias * (size_t)n_eog);
        if (!bias) {
            lyra_sampler_free(s);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        for (int i = 0; i < n_eog; i++)
            bias[i] = (llama_logit_bias){eog[i], -INFINITY};
        llama_sampler_chain_add(s->chain, llama_sampler_init_logit_bias(n_vocab, n_eog, bias));
        free(bias);
    }
    if (p->repeat_last_n != 0 &&
        (p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f)) {
        int last_n = p->repeat_last_n < 0 ? n_ctx_slot : p->repeat_last_n;
        llama_sampler_chain_add(s->chain,
                                llama_sampler_init_penalties(n_vocab, last_n, p->repeat_penalty,
                                                             p->frequency_penalty, p->presence_penalty));
    }
    if (p->temperature <= 0.0f) {
        llama_sampler_chain_add(s->chain, llama_sampler_init_greedy());
    } else {
        if (p->top_k > 0)
            llama_sampler_chain_add(s->chain, llama_sampler_init_top_k(p->top_k));
        if (p->top_p < 1.0f)
            llama_sampler_chain_add(s->chain, llama_sampler_init_top_p(p->top_p, 1));
        if (p->min_p > 0.0f)
            llama_sampler_chain_add(s->chain, llama_sampler_init_min_p(p->min_p, 1));
        llama_sampler_chain_add(s->chain, llama_sampler_init_temp(p->temperature));
        llama_sampler_chain_add(s->chain, llama_sampler_init_dist(p->seed));
    }
    *out = s;
    return 0;
}

void lyra_sampler_free(struct lyra_sampler *s)
{
    if (!s)
        return;
    if (s->chain)
        llama_sampler_free(s->chain);
    if (s->grammar)
        llama_sampler_free(s->grammar);
    free(s);
}

static void fill(llama_token_data_array *arr, llama_token_data *cand, const float *logits, int n_vocab)
{
    for (int i = 0; i < n_vocab; i++)
        cand[i] = (llama_token_data){i, logits[i], 0.0f};
    *arr = (llama_token_data_array){cand, (size_t)n_vocab, -1, false};
}

llama_token lyra_sampler_sample(struct lyra_sampler *s, struct llama_context *ctx, int32_t idx,
                                llama_token_data *cand, int n_vocab, int budget_ms)
{
    const float *logits = llama_get_logits_ith(ctx, idx);
    if (!logits)
        return -1;
    llama_token_data_array arr;
    fill(&arr, cand, logits, n_vocab);
    llama_sampler_apply(s->chain, &arr);
    llama_token tok = arr.data[arr.selected].id;

    if (s->grammar) {
        int64_t t0 = lyra_now_ms();
        llama_token_data one = {tok, 1.0f, 0.0f};
        llama_token_data_array one_arr = {&one, 1, -1, false};
        llama_sampler_apply(s->grammar, &one_arr);
        if (one.logit == -INFINITY) {
            /* Rejected: constrain the whole vocabulary, then sample again. */
            fill(&arr, cand, logits, n_vocab);
            llama_sampler_apply(s->grammar, &arr);
            /* The grammar may allow nothing (complete, and EOG banned or not
             * in the vocab): the output is finished.  Checking here also keeps
             * an all -inf array away from dist, which cannot handle it. */
            bool any = false;
            for (size_t i = 0; i < arr.size && !any; i++)
                any = arr.data[i].logit != -INFINITY &&
                      !(s->ignore_eos && llama_vocab_is_eog(s->vocab, arr.data[i].id));
            if (!any)
                return -1;
            llama_sampler_apply(s->chain, &arr);
            tok = arr.data[arr.selected].id;
        }
        llama_sampler_accept(s->grammar, tok);
        if (lyra_now_ms() - t0 >= budget_ms)
            return -2; /* see the grammar guard above */
    }
    llama_sampler_accept(s->chain, tok);
    return tok;
}

/* ---- text stream ----------------------------------------------------------- */

struct lyra_stream {
    char *raw;   /* bytes not yet checked as UTF-8 (an incomplete tail) */
    size_t raw_len, raw_cap;
    char *text;  /* valid UTF-8, not yet sent */
    size_t text_len, text_cap;
    bool stopped;
};

struct lyra_stream *lyra_stream_new(void)
{
    return calloc(1, sizeof(struct lyra_stream));
}

void lyra_stream_free(struct lyra_stream *s)
{
    if (!s)
        return;
    free(s->raw);
    free(s->text);
    free(s);
}

void lyra_stream_reset(struct lyra_stream *s)
{
    s->raw_len = s->text_len = 0;
    s->stopped = false;
}

static int grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    char *n = realloc(*p, c);
    if (!n)
        return LYRA_ENOMEM;
    *p = n;
    *cap = c;
    return 0;
}

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Length of the UTF-8 sequence starting at s[0..n): > 0 when complete and
 * valid, 0 when it is a valid but incomplete prefix, -1 when invalid. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return -1;
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n)
            return 0;
        unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
        if (s[k] < lo_k || s[k] > hi_k)
            return -1;
    }
    return len;
}

int lyra_stream_push(struct lyra_stream *s, const char *piece, size_t len)
{
    if (s->stopped || len == 0)
        return 0;
    if (grow(&s->raw, &s->raw_cap, s->raw_len + len) < 0)
        return LYRA_ENOMEM;
    memcpy(s->raw + s->raw_len, piece, len);
    s->raw_len += len;
    /* Move every complete sequence to text; invalid bytes become U+FFFD
     * (at most 3 output bytes per input byte). */
    if (grow(&s->text, &s->text_cap, s->text_len + 3 * s->raw_len) < 0)
        return LYRA_ENOMEM;
    const unsigned char *r = (const unsigned char *)s->raw;
    size_t i = 0;
    while (i < s->raw_len) {
        int n = utf8_seq(r + i, s->raw_len - i);
        if (n == 0)
            break;
        if (n < 0) {
            memcpy(s->text + s->text_len, replacement, 3);
            s->text_len += 3;
            i++;
            continue;
        }
        memcpy(s->text + s->text_len, r + i, (size_t)n);
        s->text_len += (size_t)n;
        i += (size_t)n;
    }
    memmove(s->raw, s->raw + i, s->raw_len - i);
    s->raw_len -= i;
    return 0;
}

size_t lyra_stream_ready(struct lyra_stream *s, char *const *stop, int n_stop, bool *stopped)
{
    *stopped = s->stopped;
    if (s->stopped)
        return s->text_len;
    size_t best = SIZE_MAX;
    for (int i = 0; i < n_stop; i++) {
        const char *m = memmem(s->text, s->text_len, stop[i], strlen(stop[i]));
        if (m && (size_t)(m - s->text) < best)
            best = (size_t)(m - s->text);
    }
    if (best != SIZE_MAX) {
        s->text_len = best;
        s->raw_len = 0;
        s->stopped = *stopped = true;
        return best;
    }
    /* Hold back the longest tail that a stop string could continue. */
    size_t hold = 0;
    for (int i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        size_t k = sl - 1 < s->text_len ? sl - 1 : s->text_len;
        for (; k > hold; k--) {
            if (memcmp(s->text + s->text_len - k, stop[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return s->text_len - hold;
}

size_t lyra_stream_finish(struct lyra_stream *s)
{
    if (s->raw_len > 0 && grow(&s->text, &s->text_cap, s->text_len + 3) == 0) {
        memcpy(s->text + s->text_len, replacement, 3);
        s->text_len += 3;
    }
    s->raw_len = 0;
    s->stopped = true;
    return s->text_len;
}

const char *lyra_stream_text(const struct lyra_stream *s)
{
    return s->text;
}

void lyra_stream_consume(struct lyra_stream *s, size_t n)
{
    if (n >= s->text_len) {
        s->text_len = 0;
        return;
    }
    memmove(s->text, s->text + n, s->text_len - n);
    s->text_len -= n;
}
