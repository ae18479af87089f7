/* conversations.c — see conversations.h.  Tables from store migration 2.
 *
 * Each public function wraps a job that runs on the store's thread (the
 * `job_*` and `tx_*` functions below get the connection from it); the
 * connection is never touched anywhere else.  Statements that must tell
 * "changed something" from "found nothing" use RETURNING. */
#include "core/conversations.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Prepares sql into *s; on failure err says `what` and why. */
static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s, struct lyra_err *err, const char *what)
{
    if (sqlite3_prepare_v2(db, sql, -1, s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    return 0;
}

/* Binds v (copied) or NULL. */
static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

/* Binds a counter, NULL when below zero (not measured). */
static void bind_count(sqlite3_stmt *s, int i, int64_t v)
{
    if (v >= 0)
        sqlite3_bind_int64(s, i, v);
    else
        sqlite3_bind_null(s, i);
}

/* Binds a duration, NULL when below zero (not measured). */
static void bind_ms(sqlite3_stmt *s, int i, double v)
{
    if (v >= 0)
        sqlite3_bind_double(s, i, v);
    else
        sqlite3_bind_null(s, i);
}

/* A text column as a JSON string, or null. */
static json_t *text_json(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t ? json_string((const char *)t) : json_null();
}

/* A wall-clock time as an RFC 3339 JSON string (new reference). */
static json_t *ts_json(int64_t ms)
{
    char buf[40];
    lyra_format_ts(ms, buf, sizeof buf);
    return json_string(buf);
}

size_t lyra_conv_title(const char *text, char *out, size_t out_len)
{
    if (out_len == 0)
        return 0;
    size_t n = 0, chars = 0;
    while (text[n] && chars < LYRA_CONV_TITLE_MAX) {
        size_t next = n + 1;
        while ((text[next] & 0xc0) == 0x80) /* continuation bytes */
            next++;
        if (next >= out_len)
            break;
        n = next;
        chars++;
    }
    memcpy(out, text, n);
    out[n] = '\0';
    return n;
}

/* --- saving a turn -------------------------------------------------------- */

/* Appends one message after the conversation's last (inside the turn's
 * transaction, which has already made sure the conversation exists). */
static int insert_message(sqlite3 *db, const char *conv_id, const char *role,
                          const struct lyra_conv_message *m, int64_t now, struct lyra_err *err)
{
    sqlite3_stmt *s;
    int rc = prepare(db,
                     "INSERT INTO messages (conversation_id, seq, role, content, model, prompt_tokens,"
                     " completion_tokens, cached_tokens, prompt_ms, predicted_ms, created_ms) VALUES (?1,"
                     " COALESCE((SELECT MAX(seq) FROM messages WHERE conversation_id = ?1), 0) + 1,"
                     " ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                     &s, err, "storing a message");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, role, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, m->content ? m->content : "", -1, SQLITE_STATIC);
    bind_text_or_null(s, 4, m->model);
    bind_count(s, 5, m->prompt_tokens);
    bind_count(s, 6, m->completion_tokens);
    bind_count(s, 7, m->cached_tokens);
    bind_ms(s, 8, m->prompt_ms);
    bind_ms(s, 9, m->predicted_ms);
    sqlite3_bind_int64(s, 10, now);
    rc = sqlite3_step(s) == SQLITE_DONE ? 0 : lyra_store_error(err, db, "storing a message");
    sqlite3_finalize(s);
    return rc;
}

/* Transaction body: the conversation row (new or updated), then both
 * messages. */
static int tx_save_turn(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct lyra_conv_turn *t = arg;
    int64_t now = lyra_wall_ms();
    /* A title is at most 60 characters of at most 4 bytes. */
    char title[LYRA_CONV_TITLE_MAX * 4 + 1];
    lyra_conv_title(t->user_text, title, sizeof title);
    sqlite3_stmt *s;
    int rc;
    if (t->create) {
        rc = prepare(db,
                     "INSERT INTO conversations (id, created_ms, updated_ms, title, model, owner)"
                     " VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
                     &s, err, "creating the conversation");
        if (rc < 0)
            return rc;
        sqlite3_bind_text(s, 1, t->conv_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, now);
        sqlite3_bind_text(s, 3, title, -1, SQLITE_STATIC);
        bind_text_or_null(s, 4, t->reply.model);
        bind_text_or_null(s, 5, t->owner);
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : lyra_store_error(err, db, "creating the conversation");
        sqlite3_finalize(s);
    } else {
        rc = prepare(db,
                     "UPDATE conversations SET model = COALESCE(?1, model), updated_ms = MAX(updated_ms, ?2),"
                     " title = COALESCE(title, ?3) WHERE id = ?4 RETURNING id",
                     &s, err, "updating the conversation");
        if (rc < 0)
            return rc;
        bind_text_or_null(s, 1, t->reply.model);
        sqlite3_bind_int64(s, 2, now);
        sqlite3_bind_text(s, 3, title, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, t->conv_id, -1, SQLITE_STATIC);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            rc = sqlite3_step(s) == SQLITE_DONE ? 0 : lyra_store_error(err, db, "updating the conversation");
        else if (step == SQLITE_DONE)
            rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found (deleted during the turn?)",
                              t->conv_id);
        else
            rc = lyra_store_error(err, db, "updating the conversation");
        sqlite3_finalize(s);
    }
    if (rc < 0)
        return rc;
    struct lyra_conv_message user = {.content = t->user_text,
                                     .prompt_tokens = -1,
                                     .completion_tokens = -1,
                                     .cached_tokens = -1,
                                     .prompt_ms = -1,
                                     .predicted_ms = -1};
    rc = insert_message(db, t->conv_id, "user", &user, now, err);
    return rc < 0 ? rc : insert_message(db, t->conv_id, "assistant", &t->reply, now, err);
}

/* Job: the turn (arg) in one transaction. */
static int job_save_turn(sqlite3 *db, void *arg, struct lyra_err *err)
{
    return lyra_store_tx(db, 0, tx_save_turn, arg, err);
}

int lyra_conv_save_turn(struct lyra_store *st, const struct lyra_conv_turn *t, struct lyra_err *err)
{
    return lyra_store_run(st, job_save_turn, (void *)t, err);
}

/* A turn copied for the queue: the struct, then its strings. */
struct saved_turn {
    struct lyra_conv_turn turn;
    lyra_conv_saved_fn done;
    void *ud;
    char strings[];
};

/* Callback of a queued turn: reports to the caller, frees the copy. */
static void save_turn_done(int rc, const struct lyra_err *err, void *arg)
{
    struct saved_turn *c = arg;
    if (c->done)
        c->done(rc, err, c->ud);
    free(c);
}

/* Copies s into *p (a cursor in the strings area); NULL stays NULL. */
static const char *copy_into(char **p, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    memcpy(*p, s, n);
    const char *out = *p;
    *p += n;
    return out;
}

int lyra_conv_save_turn_async(struct lyra_store *st, const struct lyra_conv_turn *t, lyra_conv_saved_fn done,
                              void *ud)
{
    const char *strs[] = {t->conv_id, t->user_text, t->reply.content, t->reply.model, t->owner};
    size_t total = 0;
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        total += strs[i] ? strlen(strs[i]) + 1 : 0;
    struct saved_turn *c = malloc(sizeof *c + total);
    if (!c)
        return LYRA_ENOMEM;
    c->turn = *t;
    c->done = done;
    c->ud = ud;
    char *p = c->strings;
    c->turn.conv_id = copy_into(&p, t->conv_id);
    c->turn.user_text = copy_into(&p, t->user_text);
    c->turn.reply.content = copy_into(&p, t->reply.content);
    c->turn.reply.model = copy_into(&p, t->reply.model);
    c->turn.owner = copy_into(&p, t->owner);
    int rc = lyra_store_submit(st, job_save_turn, save_turn_done, c);
    if (rc < 0)
        free(c);
    return rc;
}

/* --- reading -------------------------------------------------------------- */

/* "the owner is ?N" unless the filter ?N is NULL (every conversation). */
#define OWNER_IS(n) " (?" #n " IS NULL OR owner IS ?" #n ")"

struct history {
    const char *conv_id;
    const char *owner;
    char *model;
    json_t *messages;
};

/* Transaction body (a read transaction: model and messages of one moment). */
static int tx_history(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct history *h = arg;
    sqlite3_stmt *s;
    int rc = prepare(db, "SELECT model FROM conversations WHERE id = ?1 AND" OWNER_IS(2), &s, err,
                     "reading a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, h->conv_id, -1, SQLITE_STATIC);
    bind_text_or_null(s, 2, h->owner);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (t && !(h->model = strdup((const char *)t)))
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", h->conv_id);
    } else {
        rc = lyra_store_error(err, db, "reading a conversation");
    }
    sqlite3_finalize(s);
    if (rc < 0)
        return rc;

    rc = prepare(db, "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY seq", &s, err,
                 "reading messages");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, h->conv_id, -1, SQLITE_STATIC);
    h->messages = json_array();
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        json_t *m = json_pack("{s:o, s:o}", "role", text_json(s, 0), "content", text_json(s, 1));
        if (!m || json_array_append_new(h->messages, m) < 0) {
            step = SQLITE_NOMEM;
            break;
        }
    }
    if (step != SQLITE_DONE)
        rc = step == SQLITE_NOMEM ? lyra_err_set(err, LYRA_ENOMEM, "out of memory reading messages")
                                  : lyra_store_error(err, db, "reading messages");
    sqlite3_finalize(s);
    return rc;
}

static int job_history(sqlite3 *db, void *arg, struct lyra_err *err)
{
    /* BEGIN (deferred) is enough for a consistent read; no write lock. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "reading a conversation");
    int rc = tx_history(db, arg, err);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int lyra_conv_history(struct lyra_store *st, const char *conv_id, const char *owner, char **model_out,
                      json_t **messages_out, struct lyra_err *err)
{
    struct history h = {.conv_id = conv_id, .owner = owner};
    int rc = lyra_store_run(st, job_history, &h, err);
    if (rc < 0) {
        free(h.model);
        json_decref(h.messages);
        h.model = NULL;
        h.messages = NULL;
    }
    *model_out = h.model;
    *messages_out = h.messages;
    return rc;
}

/* The summary columns, in the order of SUMMARY_SQL. */
#define SUMMARY_SQL                                                                                          \
    "SELECT c.id, c.title, c.model, c.created_ms, c.updated_ms,"                                             \
    " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.owner FROM conversations c "

/* A conversation summary from a SUMMARY_SQL row (new reference). */
static json_t *summary_json(sqlite3_stmt *s)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:o}", "id", text_json(s, 0), "title", text_json(s, 1),
                     "model", text_json(s, 2), "created", ts_json(sqlite3_column_int64(s, 3)), "updated",
                     ts_json(sqlite3_column_int64(s, 4)), "message_count",
                     (json_int_t)sqlite3_column_int64(s, 5), "owner", text_json(s, 6));
}

/* A message from a row of the messages query in job_get (new reference, NULL on allocation failure). */
static json_t *message_json(sqlite3_stmt *s)
{
    /* Columns: seq, role, content, model, prompt_tokens, completion_tokens,
     * cached_tokens, prompt_ms, predicted_ms, created_ms. */
    json_t *m = json_pack("{s:I, s:o, s:o, s:o}", "seq", (json_int_t)sqlite3_column_int64(s, 0), "role",
                          text_json(s, 1), "content", text_json(s, 2), "created",
                          ts_json(sqlite3_column_int64(s, 9)));
    if (!m)
        return NULL;
    if (sqlite3_column_type(s, 3) != SQLITE_NULL)
        json_object_set_new(m, "model", text_json(s, 3));
    if (sqlite3_column_type(s, 4) != SQLITE_NULL || sqlite3_column_type(s, 5) != SQLITE_NULL)
        json_object_set_new(m, "usage",
                            json_pack("{s:I, s:I, s:I}", "prompt_tokens",
                                      (json_int_t)sqlite3_column_int64(s, 4), "completion_tokens",
                                      (json_int_t)sqlite3_column_int64(s, 5), "cached_tokens",
                                      (json_int_t)sqlite3_column_int64(s, 6)));
    if (sqlite3_column_type(s, 7) != SQLITE_NULL || sqlite3_column_type(s, 8) != SQLITE_NULL)
        json_object_set_new(m, "timings",
                            json_pack("{s:f, s:f}", "prompt_ms", sqlite3_column_double(s, 7), "predicted_ms",
                                      sqlite3_column_double(s, 8)));
    return m;
}

struct get {
    const char *conv_id;
    const char *owner;
    json_t *out;
};

/* Job: g->out = the conversation with its messages. */
static int job_get(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct get *g = arg;
    sqlite3_stmt *s;
    int rc = prepare(db, SUMMARY_SQL "WHERE c.id = ?1 AND" OWNER_IS(2), &s, err, "reading a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, g->conv_id, -1, SQLITE_STATIC);
    bind_text_or_null(s, 2, g->owner);
    int step = sqlite3_step(s);
    json_t *conv = step == SQLITE_ROW ? summary_json(s) : NULL;
    sqlite3_finalize(s);
    if (!conv)
        return step == SQLITE_DONE
                   ? lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", g->conv_id)
               : step == SQLITE_ROW ? lyra_err_set(err, LYRA_ENOMEM, "out of memory")
                                    : lyra_store_error(err, db, "reading a conversation");

    rc = prepare(
        db,
        "SELECT seq, role, content, model, prompt_tokens, completion_tokens, cached_tokens, prompt_ms,"
        " predicted_ms, created_ms FROM messages WHERE conversation_id = ? ORDER BY seq",
        &s, err, "reading messages");
    if (rc < 0) {
        json_decref(conv);
        return rc;
    }
    sqlite3_bind_text(s, 1, g->conv_id, -1, SQLITE_STATIC);
    json_t *msgs = json_array();
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(msgs, message_json(s));
    if (step != SQLITE_DONE) {
        rc = lyra_store_error(err, db, "reading messages");
        json_decref(msgs);
        json_decref(conv);
    } else {
        /* The count as read with the messages, not a moment earlier. */
        json_object_set_new(conv, "message_count", json_integer((json_int_t)json_array_size(msgs)));
        json_object_set_new(conv, "messages", msgs);
        g->out = conv;
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_get(struct lyra_store *st, const char *conv_id, const char *owner, json_t **out,
                  struct lyra_err *err)
{
    struct get g = {conv_id, owner, NULL};
    int rc = lyra_store_run(st, job_get, &g, err);
    *out = g.out;
    return rc;
}

struct list {
    const char *owner;
    size_t limit, offset;
    json_t *out;
    int64_t total;
};

/* Job: l->out = one page of summaries, l->total = the count. */
static int job_list(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct list *l = arg;
    sqlite3_stmt *s;
    int rc = prepare(db, "SELECT COUNT(*) FROM conversations WHERE" OWNER_IS(1), &s, err,
                     "counting conversations");
    if (rc < 0)
        return rc;
    bind_text_or_null(s, 1, l->owner);
    rc = sqlite3_step(s) == SQLITE_ROW ? 0 : lyra_store_error(err, db, "counting conversations");
    l->total = rc == 0 ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    if (rc < 0)
        return rc;

    /* rowid breaks ties between conversations touched in the same ms. */
    rc = prepare(db, SUMMARY_SQL "WHERE" OWNER_IS(3) " ORDER BY c.updated_ms DESC, c.rowid DESC LIMIT ?1 OFFSET ?2",
                 &s, err, "listing conversations");
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(s, 1, l->limit > INT64_MAX ? INT64_MAX : (int64_t)l->limit);
    sqlite3_bind_int64(s, 2, l->offset > INT64_MAX ? INT64_MAX : (int64_t)l->offset);
    bind_text_or_null(s, 3, l->owner);
    json_t *list = json_array();
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(list, summary_json(s));
    if (step != SQLITE_DONE) {
        rc = lyra_store_error(err, db, "listing conversations");
        json_decref(list);
    } else {
        l->out = list;
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_list(struct lyra_store *st, const char *owner, size_t limit, size_t offset, json_t **list_out,
                   int64_t *total, struct lyra_err *err)
{
    struct list l = {owner, limit, offset, NULL, 0};
    int rc = lyra_store_run(st, job_list, &l, err);
    *list_out = l.out;
    *total = l.total;
    return rc;
}

struct del {
    const char *conv_id, *owner;
};

/* Job: deletes conversation d->conv_id (of d->owner); LYRA_ENOTFOUND when it
 * does not exist or is someone else's. */
static int job_delete(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct del *d = arg;
    const char *conv_id = d->conv_id;
    sqlite3_stmt *s;
    int rc = prepare(db, "DELETE FROM conversations WHERE id = ?1 AND" OWNER_IS(2) " RETURNING id", &s, err,
                     "deleting a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    bind_text_or_null(s, 2, d->owner);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : lyra_store_error(err, db, "deleting a conversation");
    else if (step == SQLITE_DONE)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id);
    else
        rc = lyra_store_error(err, db, "deleting a conversation");
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_delete(struct lyra_store *st, const char *conv_id, const char *owner, struct lyra_err *err)
{
    struct del d = {conv_id, owner};
    return lyra_store_run(st, job_delete, &d, err);
}

static int job_disown(sqlite3 *db, void *arg, struct lyra_err *err)
{
    sqlite3_stmt *s;
    int rc = prepare(db, "UPDATE conversations SET owner = NULL WHERE owner = ?1", &s, err,
                     "disowning conversations");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, arg, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = lyra_store_error(err, db, "disowning conversations");
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_disown(struct lyra_store *st, const char *owner, struct lyra_err *err)
{
    return lyra_store_run(st, job_disown, (void *)owner, err);
}

/* --- claims --------------------------------------------------------------- */

struct lyra_conv_claims {
    pthread_mutex_t lock;
    char (*ids)[37];
    size_t n, cap;
};

struct lyra_conv_claims *lyra_conv_claims_new(void)
{
    struct lyra_conv_claims *c = calloc(1, sizeof *c);
    if (c)
        pthread_mutex_init(&c->lock, NULL);
    return c;
}

void lyra_conv_claims_free(struct lyra_conv_claims *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->lock);
    free(c->ids);
    free(c);
}

/* Index of id in c, or c->n; called with c->lock held. */
static size_t find_locked(const struct lyra_conv_claims *c, const char *id)
{
    size_t i = 0;
    while (i < c->n && strcmp(c->ids[i], id) != 0)
        i++;
    return i;
}

int lyra_conv_claim(struct lyra_conv_claims *c, const char *conv_id)
{
    if (strlen(conv_id) >= sizeof c->ids[0])
        return LYRA_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    if (find_locked(c, conv_id) < c->n) {
        rc = LYRA_EBUSY;
    } else {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            char(*ids)[37] = realloc(c->ids, cap * sizeof *ids);
            if (!ids)
                rc = LYRA_ENOMEM;
            else {
                c->ids = ids;
                c->cap = cap;
            }
        }
        if (rc == 0)
            snprintf(c->ids[c->n++], sizeof c->ids[0], "%s", conv_id);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void lyra_conv_unclaim(struct lyra_conv_claims *c, const char *conv_id)
{
    pthread_mutex_lock(&c->lock);
    size_t i = find_locked(c, conv_id);
    if (i < c->n) {
        c->n--;
        if (i != c->n)
            memcpy(c->ids[i], c->ids[c->n], sizeof c->ids[0]);
    }
    pthread_mutex_unlock(&c->lock);
}

size_t lyra_conv_claims_count(struct lyra_conv_claims *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}
