/* sampling_params.c — parsing and validation of a generate request's
 * sampling parameters (see sampling_params.h).  One table of rules for the
 * daemon and the worker: moved here from worker/sampling.c so the two can
 * no longer disagree. */
#include "core/sampling_params.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Each failure names its key: *field for lyra_sampling_params_check(), and
 * the message's "key: " prefix for everyone else. */
struct ctx {
    const json_t *o;
    const char *field;
    struct lyra_err *err;
};

static const json_t *get(const struct ctx *c, const char *key)
{
    const json_t *v = c->o ? json_object_get(c->o, key) : NULL;
    return v && !json_is_null(v) ? v : NULL;
}

#define FAIL(c, key, ...) ((c)->field = (key), lyra_err_set((c)->err, LYRA_EINVAL, __VA_ARGS__))

/* An optional number; LYRA_EINVAL when present but not a finite number
 * that a float can hold (the fields are floats: converting 1e300 would be
 * undefined behaviour, not infinity). */
static int opt_number(struct ctx *c, const char *key, double *out)
{
    const json_t *v = get(c, key);
    if (!v)
        return 0;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return FAIL(c, key, "%s: must be a number", key);
    double d = json_number_value(v);
    if (fabs(d) > FLT_MAX)
        return FAIL(c, key, "%s: out of range, got %g", key, d);
    *out = d;
    return 0;
}

/* An optional integer (a real with an integral value is accepted, as
 * JavaScript clients send 1.0 for 1).  Values beyond what fits a long long
 * are not integers here. */
static int opt_int(struct ctx *c, const char *key, long long *out)
{
    const json_t *v = get(c, key);
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isfinite(d) && d == floor(d) && fabs(d) < 9e15) {
            *out = (long long)d;
            return 0;
        }
    }
    return FAIL(c, key, "%s: must be an integer", key);
}

static int opt_bool(struct ctx *c, const char *key, bool *out)
{
    const json_t *v = get(c, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return FAIL(c, key, "%s: must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static bool has_nul(const json_t *s)
{
    return strlen(json_string_value(s)) != json_string_length(s);
}

static int add_stop(struct ctx *c, struct lyra_sampling_params *p, const json_t *s)
{
    if (!json_is_string(s))
        return FAIL(c, "stop", "stop: must be a string or an array of strings");
    size_t len = json_string_length(s);
    if (len == 0 || len > LYRA_MAX_STOP_LEN || has_nul(s))
        return FAIL(c, "stop", "stop: each stop string must have 1 to %d bytes and no NUL",
                    LYRA_MAX_STOP_LEN);
    if (p->n_stop >= LYRA_MAX_STOP)
        return FAIL(c, "stop", "stop: at most %d stop strings", LYRA_MAX_STOP);
    if (!(p->stop[p->n_stop] = strdup(json_string_value(s)))) {
        c->field = "stop";
        return lyra_err_set(c->err, LYRA_ENOMEM, "out of memory");
    }
    p->n_stop++;
    return 0;
}

static int parse(struct ctx *c, struct lyra_sampling_params *p)
{
    int rc;
    long long i;
    double d;

    i = p->max_tokens;
    if ((rc = opt_int(c, "max_tokens", &i)) < 0)
        return rc;
    if (i == 0 || i < -1)
        return FAIL(c, "max_tokens", "max_tokens: must be >= 1 (or -1 for no limit), got %lld", i);
    /* Clients send a large max_tokens to mean "as much as fits": the worker
     * clamps it to what the slot's context leaves. */
    p->max_tokens = i > INT32_MAX ? INT32_MAX : (int)i;

    d = p->temperature;
    if ((rc = opt_number(c, "temperature", &d)) < 0)
        return rc;
    if (d < 0)
        return FAIL(c, "temperature", "temperature: must be >= 0, got %g", d);
    p->temperature = (float)d;

    i = p->top_k;
    if ((rc = opt_int(c, "top_k", &i)) < 0)
        return rc;
    if (i < 0 || i > INT32_MAX)
        return FAIL(c, "top_k", "top_k: must be between 0 and %d (0 = off), got %lld", INT32_MAX, i);
    p->top_k = (int)i;

    d = p->top_p;
    if ((rc = opt_number(c, "top_p", &d)) < 0)
        return rc;
    if (d < 0 || d > 1)
        return FAIL(c, "top_p", "top_p: must be between 0 and 1, got %g", d);
    p->top_p = (float)d;

    d = p->min_p;
    if ((rc = opt_number(c, "min_p", &d)) < 0)
        return rc;
    if (d < 0 || d > 1)
        return FAIL(c, "min_p", "min_p: must be between 0 and 1, got %g", d);
    p->min_p = (float)d;

    d = p->repeat_penalty;
    if ((rc = opt_number(c, "repeat_penalty", &d)) < 0)
        return rc;
    if (d <= 0)
        return FAIL(c, "repeat_penalty", "repeat_penalty: must be > 0 (1 = off), got %g", d);
    p->repeat_penalty = (float)d;

    i = p->repeat_last_n;
    if ((rc = opt_int(c, "repeat_last_n", &i)) < 0)
        return rc;
    if (i < -1 || i > INT32_MAX)
        return FAIL(c, "repeat_last_n", "repeat_last_n: must be >= 0 (or -1 for the whole context)");
    p->repeat_last_n = (int)i;

    d = p->presence_penalty;
    if ((rc = opt_number(c, "presence_penalty", &d)) < 0)
        return rc;
    p->presence_penalty = (float)d;
    d = p->frequency_penalty;
    if ((rc = opt_number(c, "frequency_penalty", &d)) < 0)
        return rc;
    p->frequency_penalty = (float)d;

    i = -1;
    if ((rc = opt_int(c, "seed", &i)) < 0)
        return rc;
    if (i < -1 || i > (long long)UINT32_MAX)
        return FAIL(c, "seed", "seed: must be between 0 and 4294967295 (or -1 for random)");
    p->seed = i == -1 ? LYRA_SEED_RANDOM : (uint32_t)i;

    if ((rc = opt_bool(c, "ignore_eos", &p->ignore_eos)) < 0 ||
        (rc = opt_bool(c, "json_mode", &p->json_mode)) < 0 ||
        (rc = opt_bool(c, "add_special", &p->add_special)) < 0)
        return rc;

    const json_t *stop = get(c, "stop");
    if (stop) {
        if (json_is_array(stop)) {
            size_t k;
            const json_t *s;
            json_array_foreach(stop, k, s)
            {
                if ((rc = add_stop(c, p, s)) < 0)
                    return rc;
            }
        } else if ((rc = add_stop(c, p, stop)) < 0) {
            return rc;
        }
    }

    const json_t *g = get(c, "grammar");
    if (g) {
        if (!json_is_string(g) || has_nul(g))
            return FAIL(c, "grammar", "grammar: must be a string of GBNF");
        if (json_string_length(g) > LYRA_MAX_GRAMMAR)
            return FAIL(c, "grammar", "grammar: longer than %d bytes", LYRA_MAX_GRAMMAR);
        if (json_string_length(g) > 0 && !(p->grammar = strdup(json_string_value(g)))) {
            c->field = "grammar";
            return lyra_err_set(c->err, LYRA_ENOMEM, "out of memory");
        }
    }
    if (p->grammar && p->json_mode)
        return FAIL(c, "json_mode", "json_mode: cannot be combined with grammar");
    return 0;
}

static int parse_with(const json_t *params, struct lyra_sampling_params *p, const char **field,
                      struct lyra_err *err)
{
    *p = (struct lyra_sampling_params){
        .max_tokens = 256,
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = LYRA_SEED_RANDOM,
        .add_special = true,
    };
    /* The caller checks the type of params itself; null means defaults. */
    struct ctx c = {.o = json_is_object(params) ? params : NULL, .err = err};
    int rc = parse(&c, p);
    if (rc < 0)
        lyra_sampling_params_clear(p);
    if (field)
        *field = rc < 0 ? c.field : NULL;
    return rc;
}

int lyra_sampling_params_parse(const json_t *params, struct lyra_sampling_params *p, struct lyra_err *err)
{
    return parse_with(params, p, NULL, err);
}

int lyra_sampling_params_check(const json_t *params, const char **field, struct lyra_err *err)
{
    struct lyra_sampling_params p;
    int rc = parse_with(params, &p, field, err);
    if (rc == 0)
        lyra_sampling_params_clear(&p);
    return rc;
}

void lyra_sampling_params_clear(struct lyra_sampling_params *p)
{
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    p->n_stop = 0;
    free(p->grammar);
    p->grammar = NULL;
}
