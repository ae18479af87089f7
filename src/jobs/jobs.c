/* jobs.c — the job scheduler: a FIFO queue of jobs, a pool of
 * max_concurrent threads that each take the oldest queued job whose type
 * is below its own limit, and the jobs table (store migration 3).
 *
 * Memory holds the jobs that are queued or running; the database holds
 * every job.  Each change of a job is written as one upsert of the whole
 * row, queued on the store (never waited for by the pool) before the event
 * that announces it is published; reads go through the same store queue,
 * so they see every write queued before them.
 *
 * Who publishes what: job.queued (the submitter, before any worker may take
 * the job), job.started, job.progress and the terminal event
 * of a job that ran (its worker thread), job.cancelled of a queued job (the
 * canceller, once the job left the queue).  So a job's events are in order.
 *
 * Stop (lyra_jobs_free): every runner sees cancelled(); a resumable job
 * that stops so stays queued/running in the database with its resume state
 * and runs again at the next start; a non-resumable one fails "interrupted:
 * the daemon stopped".  After a crash the next start finds them as the crash
 * left them and fails the non-resumable ones "interrupted by a restart". */
#include "jobs/jobs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/store.h"
#include "core/util.h"

/* job.progress at most this often per job (4 per second). */
#define PROGRESS_MIN_INTERVAL_US 250000
/* Rate smoothing: an exponential average with this time constant, sampled
 * at most every RATE_SAMPLE_US. */
#define RATE_TAU_S 2.0
#define RATE_SAMPLE_US 200000
#define LIST_DEFAULT 100
#define LIST_MAX 10000

enum jstate { ST_QUEUED, ST_RUNNING, ST_SUCCEEDED, ST_FAILED, ST_CANCELLED };
static const char *const state_names[] = {"queued", "running", "succeeded", "failed", "cancelled"};

struct jtype {
    struct lyra_job_type t; /* t.name points to name */
    char *name;
    int running;
};

struct job {
    struct job *next;
    char id[40];
    struct jtype *type;
    json_t *params, *resume, *result; /* owned */
    char *error;                      /* owned, NULL unless failed */
    enum jstate state;
    int64_t created_ms, started_ms, finished_ms; /* wall clock; 0 = not yet */
    uint64_t done, total;
    double rate;
    int64_t rate_t_us; /* last rate sample (monotonic), 0 = none */
    uint64_t rate_done;
    int64_t last_pub_us; /* last job.progress (monotonic), 0 = none */
    bool cancel_req;     /* lyra_jobs_cancel asked */
    bool announced;      /* job.queued is out: workers may take it */
    int runs;            /* how many times it started */
};

struct lyra_jobs {
    struct lyra_store *store;
    struct lyra_bus *bus;
    int max_concurrent;
    struct jtype *types;
    size_t n_types;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* workers wait for a job they may run */
    struct job *queue_head, *queue_tail;
    struct job *running;
    pthread_t *threads;
    int n_threads;
    bool started, stopping;
};

/* ---- rows ------------------------------------------------------------ */

/* A job's row as it is written: a self-contained copy, so that the write
 * runs on the database thread without the scheduler's lock. */
struct row {
    char id[40];
    char *type;
    const char *state;
    char *params, *error, *result, *resume;
    uint64_t done, total;
    double rate;
    int64_t created_ms, started_ms, finished_ms;
    int runs;
};

static void row_free(struct row *r)
{
    if (!r)
        return;
    free(r->type);
    free(r->params);
    free(r->error);
    free(r->result);
    free(r->resume);
    free(r);
}

static char *dump(const json_t *v)
{
    return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

/* Under the lock.  NULL when out of memory (the write is then lost: logged). */
static struct row *snapshot(const struct job *jb)
{
    struct row *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    memcpy(r->id, jb->id, sizeof r->id);
    r->type = strdup(jb->type ? jb->type->name : "");
    r->state = state_names[jb->state];
    r->params = dump(jb->params);
    r->error = jb->error ? strdup(jb->error) : NULL;
    r->result = dump(jb->result);
    r->resume = dump(jb->resume);
    r->done = jb->done;
    r->total = jb->total;
    r->rate = jb->rate;
    r->created_ms = jb->created_ms;
    r->started_ms = jb->started_ms;
    r->finished_ms = jb->finished_ms;
    r->runs = jb->runs;
    if (!r->type || !r->params || (jb->error && !r->error) || (jb->result && !r->result) ||
        (jb->resume && !r->resume)) {
        row_free(r);
        return NULL;
    }
    return r;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

static void bind_ms(sqlite3_stmt *s, int i, int64_t v)
{
    if (v > 0)
        sqlite3_bind_int64(s, i, v);
    else
        sqlite3_bind_null(s, i);
}

/* Database thread: the whole row, inserted or replacing what was there. */
static int write_row(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct row *r = arg;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(
            db,
            "INSERT INTO jobs (id, type, state, params, done, total, rate, created_ms, started_ms,"
            " finished_ms, error, result, resume, runs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
            " ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT(id) DO UPDATE SET state = ?3,"
            " done = ?5, total = ?6, rate = ?7, started_ms = ?9, finished_ms = ?10,"
            " error = ?11, result = ?12, resume = ?13, runs = ?14",
            -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "jobs: prepare write");
    sqlite3_bind_text(s, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, r->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, r->state, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, r->params, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)r->done);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)r->total);
    sqlite3_bind_double(s, 7, r->rate);
    sqlite3_bind_int64(s, 8, r->created_ms);
    bind_ms(s, 9, r->started_ms);
    bind_ms(s, 10, r->finished_ms);
    bind_text_or_null(s, 11, r->error);
    bind_text_or_null(s, 12, r->result);
    bind_text_or_null(s, 13, r->resume);
    sqlite3_bind_int(s, 14, r->runs);
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : lyra_store_error(err, db, "jobs: write");
    sqlite3_finalize(s);
    return rc;
}

static void write_done(int rc, const struct lyra_err *err, void *arg)
{
    struct row *r = arg;
    if (rc < 0)
        lyra_warn("jobs", "job %s (%s): cannot be saved: %s", r->id, r->state, err ? err->msg : "");
    row_free(r);
}

/* Queues the write of r (taken).  Never blocks. */
static void write_async(struct lyra_jobs *j, struct row *r, const char *id)
{
    if (!r) {
        lyra_warn("jobs", "job %s: out of memory: a change was not saved", id);
        return;
    }
    if (lyra_store_submit(j->store, write_row, write_done, r) < 0) {
        lyra_warn("jobs", "job %s (%s): the database is closing: a change was not saved", r->id, r->state);
        row_free(r);
    }
}

/* ---- JSON ------------------------------------------------------------- */

static json_t *progress_json(uint64_t done, uint64_t total, double rate)
{
    json_t *eta = total > done && rate > 0     ? json_real((double)(total - done) / rate)
                  : total > 0 && done >= total ? json_real(0)
                                               : json_null();
    return json_pack("{s:I, s:I, s:f, s:o}", "done", (json_int_t)done, "total", (json_int_t)total, "rate",
                     rate, "eta_s", eta);
}

/* The event data of a job (under the lock): {id, type, state, progress,
 * error?, result?}. */
static json_t *event_data(const struct job *jb)
{
    json_t *d = json_pack("{s:s, s:s, s:s, s:o}", "id", jb->id, "type", jb->type->name, "state",
                          state_names[jb->state], "progress", progress_json(jb->done, jb->total, jb->rate));
    if (d && jb->error)
        json_object_set_new(d, "error", json_string(jb->error));
    if (d && jb->state == ST_SUCCEEDED)
        json_object_set(d, "result", jb->result ? jb->result : json_null());
    return d;
}

static void publish(struct lyra_jobs *j, enum jstate st, json_t *data)
{
    char type[32];
    snprintf(type, sizeof type, "job.%s", st == ST_RUNNING ? "started" : state_names[st]);
    lyra_bus_publish(j->bus, type, "jobs", data);
}

static void publish_progress(struct lyra_jobs *j, json_t *data)
{
    lyra_bus_publish(j->bus, "job.progress", "jobs", data);
}

static json_t *text_json(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t ? json_string((const char *)t) : json_null();
}

static json_t *parsed_json(sqlite3_stmt *s, int col)
{
    const char *t = (const char *)sqlite3_column_text(s, col);
    json_t *v = t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
    return v ? v : json_null();
}

static json_t *ms_json(sqlite3_stmt *s, int col)
{
    return sqlite3_column_type(s, col) == SQLITE_NULL ? json_null()
                                                      : json_integer(sqlite3_column_int64(s, col));
}

#define ROW_COLUMNS                                                                                          \
    "id, type, state, params, done, total, rate, created_ms, started_ms, finished_ms, error, result, runs, " \
    "resume"

/* A row as the API shows it; with `internal`, also its resume state. */
static json_t *row_json(sqlite3_stmt *s, bool internal)
{
    uint64_t done = (uint64_t)sqlite3_column_int64(s, 4), total = (uint64_t)sqlite3_column_int64(s, 5);
    double rate = sqlite3_column_double(s, 6);
    json_t *o = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:i}", "id", text_json(s, 0),
                          "type", text_json(s, 1), "state", text_json(s, 2), "params", parsed_json(s, 3),
                          "progress", progress_json(done, total, rate), "created_ms", ms_json(s, 7),
                          "started_ms", ms_json(s, 8), "finished_ms", ms_json(s, 9), "error",
                          text_json(s, 10), "result", parsed_json(s, 11), "runs", sqlite3_column_int(s, 12));
    if (o && internal)
        json_object_set_new(o, "resume", parsed_json(s, 13));
    return o;
}

struct query {
    const char *id, *state, *type;
    int limit;
    bool unfinished; /* queued or running, oldest first, with resume */
    json_t *out;     /* array */
};

static int read_rows(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct query *q = arg;
    sqlite3_stmt *s = NULL;
    const char *sql = q->unfinished ? "SELECT " ROW_COLUMNS " FROM jobs WHERE state IN ('queued', 'running')"
                                      " ORDER BY created_ms, rowid"
                      : q->id
                          ? "SELECT " ROW_COLUMNS " FROM jobs WHERE id = ?1"
                          : "SELECT " ROW_COLUMNS " FROM jobs WHERE (?2 IS NULL OR state = ?2)"
                            " AND (?3 IS NULL OR type = ?3) ORDER BY created_ms DESC, rowid DESC LIMIT ?4";
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "jobs: prepare read");
    if (q->id)
        sqlite3_bind_text(s, 1, q->id, -1, SQLITE_STATIC);
    if (!q->unfinished && !q->id) {
        bind_text_or_null(s, 2, q->state);
        bind_text_or_null(s, 3, q->type);
        sqlite3_bind_int(s, 4, q->limit);
    }
    int rc = 0, step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        json_t *o = row_json(s, q->unfinished);
        if (!o || json_array_append_new(q->out, o) < 0) {
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = lyra_store_error(err, db, "jobs: read");
    sqlite3_finalize(s);
    return rc;
}

/* ---- the scheduler ---------------------------------------------------- */

static struct jtype *find_type(struct lyra_jobs *j, const char *name)
{
    for (size_t i = 0; name && i < j->n_types; i++)
        if (strcmp(j->types[i].name, name) == 0)
            return &j->types[i];
    return NULL;
}

static void job_free(struct job *jb)
{
    if (!jb)
        return;
    json_decref(jb->params);
    json_decref(jb->resume);
    json_decref(jb->result);
    free(jb->error);
    free(jb);
}

static void fail_job(struct job *jb, const char *msg)
{
    jb->state = ST_FAILED;
    free(jb->error);
    jb->error = strdup(msg);
    jb->finished_ms = lyra_wall_ms();
}

int lyra_jobs_new(const struct lyra_jobs_options *o, struct lyra_jobs **out, struct lyra_err *err)
{
    *out = NULL;
    if (!o || !o->store || !o->bus)
        return lyra_err_set(err, LYRA_EINVAL, "jobs: a store and a bus are needed");
    struct lyra_jobs *j = calloc(1, sizeof *j);
    if (!j)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    j->store = o->store;
    j->bus = o->bus;
    j->max_concurrent = o->max_concurrent > 0 ? o->max_concurrent : 1;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    *out = j;
    return 0;
}

int lyra_jobs_register(struct lyra_jobs *j, const struct lyra_job_type *t)
{
    if (!t || !t->name || !*t->name || !t->run || strlen(t->name) > 24)
        return LYRA_EINVAL;
    pthread_mutex_lock(&j->lock);
    int rc = 0;
    if (j->started)
        rc = LYRA_EINVAL;
    else if (find_type(j, t->name))
        rc = LYRA_EEXISTS;
    if (rc == 0) {
        struct jtype *types = realloc(j->types, sizeof *types * (j->n_types + 1));
        char *name = strdup(t->name);
        if (types)
            j->types = types;
        if (!types || !name) {
            free(name);
            rc = LYRA_ENOMEM;
        } else {
            struct jtype *jt = &j->types[j->n_types++];
            jt->t = *t;
            jt->t.name = jt->name = name;
            if (jt->t.max_concurrent < 1)
                jt->t.max_concurrent = 1;
            jt->running = 0;
        }
    }
    pthread_mutex_unlock(&j->lock);
    return rc;
}

/* What a runner's context points to. */
struct run {
    struct lyra_jobs *j;
    struct job *job;
};

static void ctx_progress(struct lyra_job_ctx *c, uint64_t done, uint64_t total)
{
    struct run *r = c->impl;
    struct lyra_jobs *j = r->j;
    struct job *jb = r->job;
    int64_t now = lyra_now_us();
    pthread_mutex_lock(&j->lock);
    if (jb->rate_t_us == 0 || done < jb->rate_done) {
        jb->rate_t_us = now;
        jb->rate_done = done;
    } else if (now - jb->rate_t_us >= RATE_SAMPLE_US) {
        double dt = (double)(now - jb->rate_t_us) / 1e6;
        double inst = (double)(done - jb->rate_done) / dt;
        /* dt / (dt + tau) approximates 1 - e^(-dt/tau): recent samples weigh
         * more, and a stall decays the rate instead of freezing it. */
        jb->rate = jb->rate == 0 ? inst : jb->rate + (inst - jb->rate) * (dt / (dt + RATE_TAU_S));
        jb->rate_t_us = now;
        jb->rate_done = done;
    }
    jb->done = done;
    jb->total = total;
    json_t *data = NULL;
    struct row *row = NULL;
    if (jb->last_pub_us == 0 || now - jb->last_pub_us >= PROGRESS_MIN_INTERVAL_US) {
        jb->last_pub_us = now;
        data = event_data(jb);
        row = snapshot(jb);
    }
    pthread_mutex_unlock(&j->lock);
    if (data) {
        write_async(j, row, jb->id);
        publish_progress(j, data);
    }
}

static bool ctx_cancelled(struct lyra_job_ctx *c)
{
    struct run *r = c->impl;
    pthread_mutex_lock(&r->j->lock);
    bool v = r->job->cancel_req || r->j->stopping;
    pthread_mutex_unlock(&r->j->lock);
    return v;
}

static void ctx_save_resume(struct lyra_job_ctx *c, const json_t *state)
{
    struct run *r = c->impl;
    json_t *copy = state ? json_deep_copy(state) : NULL;
    if (state && !copy) {
        lyra_warn("jobs", "job %s: out of memory: resume state not saved", r->job->id);
        return;
    }
    pthread_mutex_lock(&r->j->lock);
    json_decref(r->job->resume);
    r->job->resume = copy;
    struct row *row = snapshot(r->job);
    pthread_mutex_unlock(&r->j->lock);
    write_async(r->j, row, r->job->id);
}

/* Under the lock: takes the oldest queued job whose type has room. */
static struct job *pick(struct lyra_jobs *j)
{
    for (struct job **p = &j->queue_head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        struct job *jb = *p;
        if (!jb->announced || jb->type->running >= jb->type->t.max_concurrent)
            continue;
        *p = jb->next;
        if (j->queue_tail == jb)
            j->queue_tail = prev;
        jb->next = j->running;
        j->running = jb;
        jb->type->running++;
        return jb;
    }
    return NULL;
}

static void unlink_running(struct lyra_jobs *j, struct job *jb)
{
    for (struct job **p = &j->running; *p; p = &(*p)->next)
        if (*p == jb) {
            *p = jb->next;
            jb->next = NULL;
            return;
        }
}

/* Runs one job on this worker thread; called and returns with the lock held. */
static void run_job(struct lyra_jobs *j, struct job *jb)
{
    if (jb->cancel_req) {
        jb->type->running--;
        unlink_running(j, jb);
        jb->state = ST_CANCELLED;
        jb->finished_ms = lyra_wall_ms();
        struct row *row = snapshot(jb);
        json_t *data = event_data(jb);
        pthread_mutex_unlock(&j->lock);
        write_async(j, row, jb->id);
        publish(j, ST_CANCELLED, data);
        job_free(jb);
        pthread_mutex_lock(&j->lock);
        pthread_cond_broadcast(&j->cond);
        return;
    }
    jb->state = ST_RUNNING;
    jb->started_ms = lyra_wall_ms();
    jb->runs++;
    jb->rate = 0;
    jb->rate_t_us = jb->last_pub_us = 0;
    struct row *row = snapshot(jb);
    json_t *data = event_data(jb);
    pthread_mutex_unlock(&j->lock);
    write_async(j, row, jb->id);
    publish(j, ST_RUNNING, data);

    struct run r = {j, jb};
    struct lyra_job_ctx ctx = {.id = jb->id,
                               .params = jb->params,
                               .resume = jb->resume && !json_is_null(jb->resume) ? jb->resume : NULL,
                               .progress = ctx_progress,
                               .cancelled = ctx_cancelled,
                               .save_resume = ctx_save_resume,
                               .impl = &r};
    /* The runner's own resume state is a reference it may hold while
     * save_resume replaces jb->resume: keep it alive for the run. */
    json_t *resume_hold = json_incref((json_t *)ctx.resume);
    json_t *result = NULL;
    struct lyra_err err = {0};
    int rc = jb->type->t.run(&ctx, &result, &err, jb->type->t.ud);
    json_decref(resume_hold);

    pthread_mutex_lock(&j->lock);
    jb->type->running--;
    unlink_running(j, jb);
    bool stay = false;
    if (rc == 0) {
        jb->state = ST_SUCCEEDED;
        jb->result = result;
        result = NULL;
        jb->finished_ms = lyra_wall_ms();
        if (jb->total > 0 && jb->done < jb->total)
            jb->done = jb->total;
    } else if (rc == LYRA_EUNAVAILABLE && jb->cancel_req) {
        jb->state = ST_CANCELLED;
        jb->finished_ms = lyra_wall_ms();
    } else if (rc == LYRA_EUNAVAILABLE && j->stopping) {
        if (jb->type->t.resumable)
            stay = true; /* stays "running" in the database: the next start resumes it */
        else
            fail_job(jb, "interrupted: the daemon stopped");
    } else {
        fail_job(jb, err.msg[0] ? err.msg : lyra_strerror(rc));
    }
    json_decref(result);
    row = snapshot(jb);
    data = stay ? NULL : event_data(jb);
    enum jstate st = jb->state;
    pthread_mutex_unlock(&j->lock);
    write_async(j, row, jb->id);
    if (data)
        publish(j, st, data);
    job_free(jb);
    pthread_mutex_lock(&j->lock);
    pthread_cond_broadcast(&j->cond); /* a slot of this type is free */
}

static void *worker_main(void *arg)
{
    struct lyra_jobs *j = arg;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        struct job *jb = NULL;
        while (!j->stopping && !(jb = pick(j)))
            pthread_cond_wait(&j->cond, &j->lock);
        if (j->stopping && !jb)
            break;
        if (j->stopping) {
            /* Picked as the stop began: back to the queue, untouched. */
            unlink_running(j, jb);
            jb->type->running--;
            jb->next = j->queue_head;
            j->queue_head = jb;
            if (!j->queue_tail)
                j->queue_tail = jb;
            break;
        }
        run_job(j, jb);
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

static void append_queued(struct lyra_jobs *j, struct job *jb)
{
    jb->next = NULL;
    if (j->queue_tail)
        j->queue_tail->next = jb;
    else
        j->queue_head = jb;
    j->queue_tail = jb;
}

static struct job *job_from_row(struct lyra_jobs *j, const json_t *o)
{
    struct job *jb = calloc(1, sizeof *jb);
    if (!jb)
        return NULL;
    snprintf(jb->id, sizeof jb->id, "%s", json_string_value(json_object_get(o, "id")) ?: "");
    jb->type = find_type(j, json_string_value(json_object_get(o, "type")));
    jb->params = json_incref(json_object_get(o, "params"));
    json_t *res = json_object_get(o, "resume");
    jb->resume = res && !json_is_null(res) ? json_incref(res) : NULL;
    json_t *p = json_object_get(o, "progress");
    jb->done = (uint64_t)json_integer_value(json_object_get(p, "done"));
    jb->total = (uint64_t)json_integer_value(json_object_get(p, "total"));
    jb->created_ms = json_integer_value(json_object_get(o, "created_ms"));
    jb->started_ms = json_integer_value(json_object_get(o, "started_ms"));
    jb->runs = (int)json_integer_value(json_object_get(o, "runs"));
    return jb;
}

int lyra_jobs_start(struct lyra_jobs *j, struct lyra_err *err)
{
    struct query q = {.unfinished = true, .out = json_array()};
    if (!q.out)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = lyra_store_run(j->store, read_rows, &q, err);
    if (rc < 0) {
        json_decref(q.out);
        return rc;
    }
    size_t i;
    json_t *o;
    int resumed = 0, failed = 0;
    json_array_foreach(q.out, i, o)
    {
        struct job *jb = job_from_row(j, o);
        if (!jb) {
            json_decref(q.out);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        const char *type = json_string_value(json_object_get(o, "type"));
        if (jb->type && jb->type->t.resumable) {
            jb->state = ST_QUEUED;
            json_t *data = event_data(jb);
            json_object_set_new(data, "resumed", json_true());
            write_async(j, snapshot(jb), jb->id);
            publish(j, ST_QUEUED, data);
            jb->announced = true;
            pthread_mutex_lock(&j->lock);
            append_queued(j, jb);
            pthread_mutex_unlock(&j->lock);
            resumed++;
        } else {
            struct jtype unknown = {.name = (char *)(type ? type : "?")};
            if (!jb->type)
                jb->type = &unknown; /* for the row and the event only */
            fail_job(jb, "interrupted by a restart");
            write_async(j, snapshot(jb), jb->id);
            publish(j, ST_FAILED, event_data(jb));
            job_free(jb);
            failed++;
        }
    }
    json_decref(q.out);
    if (resumed || failed)
        lyra_info("jobs", "%d job(s) resumed, %d failed as interrupted by the restart", resumed, failed);

    j->threads = calloc((size_t)j->max_concurrent, sizeof *j->threads);
    if (!j->threads)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    pthread_mutex_lock(&j->lock);
    j->started = true;
    pthread_mutex_unlock(&j->lock);
    for (int t = 0; t < j->max_concurrent; t++) {
        if (pthread_create(&j->threads[t], NULL, worker_main, j) != 0)
            return lyra_err_set(err, LYRA_ENOMEM, "jobs: cannot start worker thread %d", t);
        j->n_threads++;
    }
    return 0;
}

int lyra_jobs_submit(struct lyra_jobs *j, const char *type, json_t *params, char id_out[40],
                     struct lyra_err *err)
{
    if (id_out)
        id_out[0] = '\0';
    if (!params)
        params = json_object();
    struct jtype *jt = find_type(j, type);
    if (!jt) {
        json_decref(params);
        return lyra_err_set(err, LYRA_ENOTFOUND, "unknown job type '%.*s'",
                            (int)lyra_utf8_clip(type ?: "", 32), type ?: "");
    }
    int rc;
    if (jt->t.validate && (rc = jt->t.validate(params, err, jt->t.ud)) < 0) {
        json_decref(params);
        return rc;
    }
    struct job *jb = calloc(1, sizeof *jb);
    if (!jb) {
        json_decref(params);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    memcpy(jb->id, "job_", 4);
    lyra_random_hex(jb->id + 4, 8);
    jb->type = jt;
    jb->params = params;
    jb->state = ST_QUEUED;
    jb->created_ms = lyra_wall_ms();
    pthread_mutex_lock(&j->lock);
    bool stopping = j->stopping;
    pthread_mutex_unlock(&j->lock);
    if (stopping) {
        job_free(jb);
        return lyra_err_set(err, LYRA_EUNAVAILABLE, "the daemon is stopping");
    }
    /* Durable before it is announced: a 202 names a job that a restart
     * will know. */
    struct row *row = snapshot(jb);
    rc =
        row ? lyra_store_run(j->store, write_row, row, err) : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    row_free(row);
    if (rc < 0) {
        job_free(jb);
        return rc;
    }
    if (id_out)
        memcpy(id_out, jb->id, sizeof jb->id);
    /* In the queue but not to be taken until job.queued is out, so that
     * job.started cannot come first; published without the lock, which a
     * bus subscriber's own locks must never be ordered after. */
    pthread_mutex_lock(&j->lock);
    json_t *data = event_data(jb);
    append_queued(j, jb);
    pthread_mutex_unlock(&j->lock);
    publish(j, ST_QUEUED, data);
    pthread_mutex_lock(&j->lock);
    jb->announced = true;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    return 0;
}

/* Under the lock: the live progress of running jobs over what the
 * database holds (written at most 4 times a second). */
static void overlay_live(struct lyra_jobs *j, json_t *o)
{
    const char *id = json_string_value(json_object_get(o, "id"));
    for (struct job *jb = j->running; id && jb; jb = jb->next)
        if (strcmp(jb->id, id) == 0) {
            json_object_set_new(o, "progress", progress_json(jb->done, jb->total, jb->rate));
            return;
        }
}

json_t *lyra_jobs_get(struct lyra_jobs *j, const char *id)
{
    if (!id)
        return NULL;
    struct query q = {.id = id, .out = json_array()};
    if (!q.out || lyra_store_run(j->store, read_rows, &q, NULL) < 0) {
        json_decref(q.out);
        return NULL;
    }
    json_t *o = json_incref(json_array_get(q.out, 0));
    json_decref(q.out);
    if (o) {
        pthread_mutex_lock(&j->lock);
        overlay_live(j, o);
        pthread_mutex_unlock(&j->lock);
    }
    return o;
}

json_t *lyra_jobs_list(struct lyra_jobs *j, const char *state, const char *type, int limit)
{
    struct query q = {.state = state,
                      .type = type,
                      .limit = limit <= 0         ? LIST_DEFAULT
                               : limit > LIST_MAX ? LIST_MAX
                                                  : limit,
                      .out = json_array()};
    if (!q.out || lyra_store_run(j->store, read_rows, &q, NULL) < 0) {
        json_decref(q.out);
        return NULL;
    }
    size_t i;
    json_t *o;
    pthread_mutex_lock(&j->lock);
    json_array_foreach(q.out, i, o) overlay_live(j, o);
    pthread_mutex_unlock(&j->lock);
    return q.out;
}

int lyra_jobs_cancel(struct lyra_jobs *j, const char *id, struct lyra_err *err)
{
    if (!id)
        return lyra_err_set(err, LYRA_ENOTFOUND, "no job id");
    pthread_mutex_lock(&j->lock);
    for (struct job **p = &j->queue_head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        struct job *jb = *p;
        if (strcmp(jb->id, id) != 0)
            continue;
        if (!jb->announced) {
            /* Its job.queued is being published: the worker that takes it
             * ends it cancelled without running it. */
            jb->cancel_req = true;
            pthread_mutex_unlock(&j->lock);
            return 0;
        }
        *p = jb->next;
        if (j->queue_tail == jb)
            j->queue_tail = prev;
        jb->state = ST_CANCELLED;
        jb->finished_ms = lyra_wall_ms();
        struct row *row = snapshot(jb);
        json_t *data = event_data(jb);
        pthread_mutex_unlock(&j->lock);
        write_async(j, row, jb->id);
        publish(j, ST_CANCELLED, data);
        job_free(jb);
        return 0;
    }
    for (struct job *jb = j->running; jb; jb = jb->next)
        if (strcmp(jb->id, id) == 0) {
            jb->cancel_req = true; /* the runner sees cancelled(); its worker ends the job */
            pthread_mutex_unlock(&j->lock);
            return 0;
        }
    pthread_mutex_unlock(&j->lock);
    /* Not in memory: finished (or finishing right now, its row not yet
     * written), or unknown. */
    json_t *o = lyra_jobs_get(j, id);
    if (!o)
        return lyra_err_set(err, LYRA_ENOTFOUND, "job '%.*s' not found", (int)lyra_utf8_clip(id, 64), id);
    const char *st = json_string_value(json_object_get(o, "state"));
    bool finished = st && strcmp(st, "queued") != 0 && strcmp(st, "running") != 0;
    lyra_err_set(err, LYRA_EEXISTS, "job %s already %s", id, finished ? st : "finished");
    json_decref(o);
    return LYRA_EEXISTS;
}

void lyra_jobs_free(struct lyra_jobs *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->lock);
    j->stopping = true;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    for (int t = 0; t < j->n_threads; t++)
        pthread_join(j->threads[t], NULL);
    /* What is still queued: resumable jobs stay queued in the database for
     * the next start; the others can never run, so they fail now. */
    while (j->queue_head) {
        struct job *jb = j->queue_head;
        j->queue_head = jb->next;
        if (!jb->type->t.resumable) {
            fail_job(jb, "interrupted: the daemon stopped");
            write_async(j, snapshot(jb), jb->id);
            publish(j, ST_FAILED, event_data(jb));
        }
        job_free(jb);
    }
    for (size_t i = 0; i < j->n_types; i++)
        free(j->types[i].name);
    free(j->types);
    free(j->threads);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->lock);
    free(j);
}
