/* model_jobs.c — warmup, verify and scheduled unload (model_jobs.h).
 *
 * A warmup is a manager job like any request ({"type":"generate"} with one
 * token), so it goes through the same queue, cache admission and deadlines
 * as real traffic.  Its frames arrive on the supervisor thread, which must
 * not block: the callback only records them under a small lock and signals
 * the runner, which waits on the condvar in short steps so that it also
 * notices a cancel. */
#include "jobs/model_jobs.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "models/manager.h"
#include "proto/messages.h"

#define WAIT_STEP_MS 100
#define TOKEN_MAX 256
#define UNLOAD_MAX_DELAY_S (366.0 * 24 * 3600)

static const struct lyra_model_jobs_options *opts_of(void *ud)
{
    return ud;
}

/* ---- warmup / verify -------------------------------------------------- */

struct wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool started, ended;
    json_t *terminal; /* the terminal frame (held) */
    char token[TOKEN_MAX];
    size_t token_len;
};

/* Supervisor thread: records, never blocks. */
static void on_frame(struct lyra_job *job, const json_t *frame, void *ud)
{
    (void)job;
    struct wait *w = ud;
    enum lyra_msg_kind kind = lyra_msg_kind_of(frame);
    pthread_mutex_lock(&w->lock);
    if (kind == LYRA_MSG_TOKEN) {
        const char *t = json_string_value(json_object_get(frame, "text"));
        size_t n = t ? strlen(t) : 0;
        if (n > sizeof w->token - 1 - w->token_len)
            n = lyra_utf8_clip(t, sizeof w->token - 1 - w->token_len);
        memcpy(w->token + w->token_len, t ? t : "", n);
        w->token_len += n;
        w->token[w->token_len] = '\0';
    }
    if (kind == LYRA_MSG_STARTED)
        w->started = true;
    if (lyra_msg_is_terminal(kind) && !w->ended) {
        w->ended = true;
        w->terminal = json_deep_copy(frame); /* a copy: the frame is the supervisor thread's */
    }
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static int check_model_param(const json_t *params, struct lyra_err *err)
{
    const char *model = json_string_value(json_object_get(params, "model"));
    if (!json_is_object(params) || !model || !*model)
        return lyra_err_set(err, LYRA_EINVAL, "params.model (a model name) is required");
    return 0;
}

static int validate_model(const json_t *params, struct lyra_err *err, void *ud)
{
    (void)ud;
    return check_model_param(params, err);
}

/* Loads the model and generates one token; fills *result. */
static int warm(struct lyra_job_ctx *c, const struct lyra_model_jobs_options *o, json_t **result,
                struct lyra_err *err)
{
    const char *model = json_string_value(json_object_get(c->params, "model"));
    int64_t t0 = lyra_now_ms();
    struct wait w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    struct lyra_job *job = NULL;
    json_t *msg =
        json_pack("{s:s, s:s, s:{s:i}}", "type", "generate", "prompt", "Hello", "params", "max_tokens", 1);
    if (!msg)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = lyra_manager_submit(o->manager, model, msg, on_frame, &w, &job, err);
    if (rc < 0)
        return rc;
    c->progress(c, 0, 2);
    int64_t deadline = t0 + (int64_t)(o->timeout_s > 0 ? o->timeout_s : 300) * 1000;
    bool cancelled = false, timed_out = false, reported_start = false;
    pthread_mutex_lock(&w.lock);
    while (!w.ended) {
        if (w.started && !reported_start) {
            reported_start = true; /* loaded, in a slot */
            pthread_mutex_unlock(&w.lock);
            c->progress(c, 1, 2);
            pthread_mutex_lock(&w.lock);
            continue;
        }
        pthread_mutex_unlock(&w.lock);
        cancelled = c->cancelled(c);
        timed_out = lyra_now_ms() >= deadline;
        pthread_mutex_lock(&w.lock);
        if (cancelled || timed_out || w.ended)
            break;
        struct timespec ts;
        lyra_deadline_in(&ts, WAIT_STEP_MS);
        pthread_cond_timedwait(&w.cond, &w.lock, &ts);
    }
    bool ended = w.ended;
    pthread_mutex_unlock(&w.lock);
    double load_ms = ended ? lyra_job_load_ms(job) : 0;
    char served[256];
    lyra_fmt(served, sizeof served, "%s", ended ? lyra_job_model(job) : model);
    /* Released before its terminal frame, the manager cancels it; after the
     * release no callback runs, so w may go. */
    lyra_job_release(job);
    json_t *term = w.terminal;
    if (!ended) {
        json_decref(term);
        if (cancelled)
            return LYRA_EUNAVAILABLE;
        return lyra_err_set(err, LYRA_ETIMEOUT, "model '%s' did not load and generate a token within %d s",
                            model, o->timeout_s > 0 ? o->timeout_s : 300);
    }
    const char *type = json_string_value(json_object_get(term, "type"));
    if (!type || strcmp(type, "done") != 0) {
        const char *code = json_string_value(json_object_get(term, "code"));
        const char *message = json_string_value(json_object_get(term, "message"));
        rc = lyra_err_set(err, LYRA_EIO, "%s: %s",
                          code   ? code
                          : type ? type
                                 : "error",
                          message ? message : "the model failed");
        json_decref(term);
        return rc;
    }
    json_decref(term);
    c->progress(c, 2, 2);
    *result = json_pack("{s:s, s:f, s:s, s:I}", "model", served, "load_ms", load_ms, "token", w.token, "ms",
                        (json_int_t)(lyra_now_ms() - t0));
    return *result ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}

static int run_warmup(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    return warm(c, opts_of(ud), result, err);
}

static bool resident(struct lyra_manager *m, const char *model)
{
    const char *s = lyra_manager_model_state(m, model);
    return s && (strcmp(s, "loaded") == 0 || strcmp(s, "loading") == 0);
}

static int run_verify(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    const struct lyra_model_jobs_options *o = opts_of(ud);
    const char *model = json_string_value(json_object_get(c->params, "model"));
    bool was_resident = resident(o->manager, model);
    int rc = warm(c, o, result, err);
    bool unloaded = false;
    /* Verify leaves residency as it found it (residency is looked up under
     * the name as given: through an alias, a resident model is unloaded). */
    const char *served = rc == 0 ? json_string_value(json_object_get(*result, "model")) : NULL;
    if (!was_resident && (rc == 0 || rc == LYRA_EIO)) {
        bool was_loaded = false;
        int timeout = o->unload_timeout_ms > 0 ? o->unload_timeout_ms : 30000;
        lyra_manager_unload(o->manager, served ? served : model, false, timeout, &was_loaded);
        unloaded = was_loaded;
    }
    if (rc == 0)
        json_object_set_new(*result, "unloaded", json_boolean(unloaded));
    return rc;
}

/* ---- unload ----------------------------------------------------------- */

static int validate_unload(const json_t *params, struct lyra_err *err, void *ud)
{
    (void)ud;
    int rc = check_model_param(params, err);
    if (rc < 0)
        return rc;
    const json_t *at = json_object_get(params, "at"), *after = json_object_get(params, "after_s");
    if ((at != NULL) == (after != NULL))
        return lyra_err_set(err, LYRA_EINVAL,
                            "give one of params.at (ms since the epoch) and params.after_s");
    if (at && (!json_is_integer(at) || json_integer_value(at) <= 0))
        return lyra_err_set(err, LYRA_EINVAL, "params.at must be a positive integer (ms since the epoch)");
    if (after && (!json_is_number(after) || json_number_value(after) < 0 ||
                  json_number_value(after) > UNLOAD_MAX_DELAY_S))
        return lyra_err_set(err, LYRA_EINVAL, "params.after_s must be a number of seconds from 0 to %.0f",
                            UNLOAD_MAX_DELAY_S);
    return 0;
}

static int run_unload(struct lyra_job_ctx *c, json_t **result, struct lyra_err *err, void *ud)
{
    const struct lyra_model_jobs_options *o = opts_of(ud);
    const char *model = json_string_value(json_object_get(c->params, "model"));
    int64_t now = lyra_wall_ms(), from = now, due;
    if (c->resume && json_is_integer(json_object_get(c->resume, "at_ms"))) {
        due = json_integer_value(json_object_get(c->resume, "at_ms"));
        from = json_integer_value(json_object_get(c->resume, "from_ms"));
    } else {
        const json_t *at = json_object_get(c->params, "at");
        due = at ? json_integer_value(at)
                 : now + (int64_t)(json_number_value(json_object_get(c->params, "after_s")) * 1000.0);
        /* Saved first: a restart keeps the time this run promised. */
        json_t *s = json_pack("{s:I, s:I}", "at_ms", (json_int_t)due, "from_ms", (json_int_t)from);
        c->save_resume(c, s);
        json_decref(s);
    }
    uint64_t total = due > from ? (uint64_t)(due - from) : 0;
    int64_t last_report = 0;
    while ((now = lyra_wall_ms()) < due) {
        if (c->cancelled(c))
            return LYRA_EUNAVAILABLE;
        if (now - last_report >= 1000) {
            last_report = now;
            c->progress(c, (uint64_t)(now > from ? now - from : 0), total);
        }
        int64_t step = due - now < WAIT_STEP_MS ? due - now : WAIT_STEP_MS;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (c->cancelled(c))
        return LYRA_EUNAVAILABLE;
    c->progress(c, total, total);
    bool was_loaded = false;
    int rc = lyra_manager_unload(o->manager, model, false,
                                 o->unload_timeout_ms > 0 ? o->unload_timeout_ms : 30000, &was_loaded);
    const char *state = rc == 0               ? "available"
                        : rc == LYRA_EBUSY    ? "draining"
                        : rc == LYRA_ETIMEOUT ? "stopping"
                                              : NULL;
    if (rc == LYRA_EPERM)
        return lyra_err_set(err, LYRA_EPERM, "model '%s' is pinned: unpin it first", model);
    if (rc == LYRA_EUNAVAILABLE)
        return LYRA_EUNAVAILABLE; /* the daemon is stopping: it runs again at the next start */
    if (!state)
        return lyra_err_set(err, rc, "unload of '%s': %s", model, lyra_strerror(rc));
    *result = json_pack("{s:s, s:b, s:s, s:I}", "model", model, "was_loaded", was_loaded || rc == LYRA_EBUSY,
                        "state", state, "at_ms", (json_int_t)due);
    return *result ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}

int lyra_model_jobs_register(struct lyra_jobs *j, const struct lyra_model_jobs_options *o)
{
    if (!o || !o->manager)
        return LYRA_EINVAL;
    int n = o->max_concurrent > 0 ? o->max_concurrent : 2;
    const struct lyra_job_type types[] = {
        {.name = "warmup",
         .max_concurrent = n,
         .run = run_warmup,
         .ud = (void *)o,
         .validate = validate_model},
        {.name = "verify",
         .max_concurrent = n,
         .run = run_verify,
         .ud = (void *)o,
         .validate = validate_model},
        {.name = "unload",
         .max_concurrent = n,
         .resumable = true,
         .run = run_unload,
         .ud = (void *)o,
         .validate = validate_unload},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        int rc = lyra_jobs_register(j, &types[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}
