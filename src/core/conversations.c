/* conversations.c — see conversations.h.  Tables from store migration 2.
 *
 * Statements that must tell "changed something" from "found nothing" use
 * RETURNING rather than sqlite3_changes(), which another thread's statement
 * on the shared connection could overwrite in between. */
#include "core/conversations.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static int db_error(struct lyra_err *err, sqlite3 *db, const char *what)
{
    return lyra_err_set(err, LYRA_EDB, "%s: %s", what, sqlite3_errmsg(db));
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s, struct lyra_err *err, const char *what)
{
    if (sqlite3_prepare_v2(db, sql, -1, s, NULL) != SQLITE_OK)
        return db_error(err, db, what);
    return 0;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

static void bind_count(sqlite3_stmt *s, int i, int64_t v)
{
    if (v >= 0)
        sqlite3_bind_int64(s, i, v);
    else
        sqlite3_bind_null(s, i);
}

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

static json_t *ts_json(int64_t ms)
{
    char buf[40];
    lyra_format_ts(ms, buf, sizeof buf);
    return json_string(buf);
}

int lyra_conv_create(struct lyra_store *st, char id_out[37], struct lyra_err *err)
{
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "INSERT INTO conversations (id, created_ms, updated_ms) VALUES (?, ?, ?)", &s, err,
                     "creating a conversation");
    if (rc < 0)
        return rc;
    int64_t now = lyra_wall_ms();
    lyra_uuid4(id_out);
    sqlite3_bind_text(s, 1, id_out, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_int64(s, 3, now);
    rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_error(err, db, "creating a conversation");
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_append(struct lyra_store *st, const char *conv_id, const struct lyra_conv_message *m,
                     int64_t *msg_id, struct lyra_err *err)
{
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    /* One statement: the next seq is computed and the row inserted
     * atomically, and nothing is inserted for a missing conversation. */
    int rc = prepare(db,
                     "INSERT INTO messages (conversation_id, seq, role, content, model, prompt_tokens,"
                     " completion_tokens, cached_tokens, prompt_ms, predicted_ms, created_ms) "
                     "SELECT id, COALESCE((SELECT MAX(seq) FROM messages WHERE conversation_id = ?1), 0) + 1,"
                     " ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM conversations WHERE id = ?1 RETURNING id",
                     &s, err, "appending a message");
    if (rc < 0)
        return rc;
    int64_t now = lyra_wall_ms();
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, m->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, m->content, -1, SQLITE_STATIC);
    bind_text_or_null(s, 4, m->model);
    bind_count(s, 5, m->prompt_tokens);
    bind_count(s, 6, m->completion_tokens);
    bind_count(s, 7, m->cached_tokens);
    bind_ms(s, 8, m->prompt_ms);
    bind_ms(s, 9, m->predicted_ms);
    sqlite3_bind_int64(s, 10, now);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        if (msg_id)
            *msg_id = sqlite3_column_int64(s, 0);
        step = sqlite3_step(s);
    } else if (step == SQLITE_DONE) {
        sqlite3_finalize(s);
        return lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id);
    }
    rc = step == SQLITE_DONE ? 0 : db_error(err, db, "appending a message");
    sqlite3_finalize(s);
    if (rc < 0)
        return rc;
    /* Separate statement: a crash in between only leaves updated_ms stale. */
    if (prepare(db, "UPDATE conversations SET updated_ms = MAX(updated_ms, ?) WHERE id = ?", &s, err,
                "updating a conversation") < 0)
        return LYRA_EDB;
    sqlite3_bind_int64(s, 1, now);
    sqlite3_bind_text(s, 2, conv_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_error(err, db, "updating a conversation");
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_delete_message(struct lyra_store *st, int64_t msg_id, struct lyra_err *err)
{
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "DELETE FROM messages WHERE id = ?", &s, err, "deleting a message");
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(s, 1, msg_id);
    rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_error(err, db, "deleting a message");
    sqlite3_finalize(s);
    return rc;
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

int lyra_conv_touch(struct lyra_store *st, const char *conv_id, const char *model, const char *first_text,
                    struct lyra_err *err)
{
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db,
                     "UPDATE conversations SET model = COALESCE(?1, model), updated_ms = MAX(updated_ms, ?2),"
                     " title = COALESCE(title, ?3) WHERE id = ?4 RETURNING id",
                     &s, err, "updating a conversation");
    if (rc < 0)
        return rc;
    /* A title is at most 60 characters of at most 4 bytes. */
    char title[LYRA_CONV_TITLE_MAX * 4 + 1];
    if (first_text)
        lyra_conv_title(first_text, title, sizeof title);
    bind_text_or_null(s, 1, model);
    sqlite3_bind_int64(s, 2, lyra_wall_ms());
    bind_text_or_null(s, 3, first_text ? title : NULL);
    sqlite3_bind_text(s, 4, conv_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_error(err, db, "updating a conversation");
    else if (step == SQLITE_DONE)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id);
    else
        rc = db_error(err, db, "updating a conversation");
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_model(struct lyra_store *st, const char *conv_id, char **model_out, struct lyra_err *err)
{
    *model_out = NULL;
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "SELECT model FROM conversations WHERE id = ?", &s, err, "reading a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (t && !(*model_out = strdup((const char *)t)))
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id);
    } else {
        rc = db_error(err, db, "reading a conversation");
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_messages(struct lyra_store *st, const char *conv_id, json_t **out, struct lyra_err *err)
{
    *out = NULL;
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY seq", &s, err,
                     "reading messages");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    json_t *list = json_array();
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(list,
                              json_pack("{s:o, s:o}", "role", text_json(s, 0), "content", text_json(s, 1)));
    if (step != SQLITE_DONE) {
        rc = db_error(err, db, "reading messages");
        json_decref(list);
    } else {
        *out = list;
    }
    sqlite3_finalize(s);
    return rc;
}

/* The summary columns, in the order of SUMMARY_SQL. */
#define SUMMARY_SQL                                                                                          \
    "SELECT c.id, c.title, c.model, c.created_ms, c.updated_ms,"                                             \
    " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) FROM conversations c "

static json_t *summary_json(sqlite3_stmt *s)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I}", "id", text_json(s, 0), "title", text_json(s, 1),
                     "model", text_json(s, 2), "created", ts_json(sqlite3_column_int64(s, 3)), "updated",
                     ts_json(sqlite3_column_int64(s, 4)), "message_count",
                     (json_int_t)sqlite3_column_int64(s, 5));
}

static json_t *message_json(sqlite3_stmt *s)
{
    /* Columns: seq, role, content, model, prompt_tokens, completion_tokens,
     * cached_tokens, prompt_ms, predicted_ms, created_ms. */
    json_t *m = json_pack("{s:I, s:o, s:o, s:o}", "seq", (json_int_t)sqlite3_column_int64(s, 0), "role",
                          text_json(s, 1), "content", text_json(s, 2), "created",
                          ts_json(sqlite3_column_int64(s, 9)));
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

int lyra_conv_get(struct lyra_store *st, const char *conv_id, json_t **out, struct lyra_err *err)
{
    *out = NULL;
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, SUMMARY_SQL "WHERE c.id = ?", &s, err, "reading a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    json_t *conv = step == SQLITE_ROW ? summary_json(s) : NULL;
    sqlite3_finalize(s);
    if (!conv)
        return step == SQLITE_DONE ? lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id)
                                   : db_error(err, db, "reading a conversation");

    rc = prepare(
        db,
        "SELECT seq, role, content, model, prompt_tokens, completion_tokens, cached_tokens, prompt_ms,"
        " predicted_ms, created_ms FROM messages WHERE conversation_id = ? ORDER BY seq",
        &s, err, "reading messages");
    if (rc < 0) {
        json_decref(conv);
        return rc;
    }
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    json_t *msgs = json_array();
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(msgs, message_json(s));
    if (step != SQLITE_DONE) {
        rc = db_error(err, db, "reading messages");
        json_decref(msgs);
        json_decref(conv);
    } else {
        /* The count as read with the messages, not a moment earlier. */
        json_object_set_new(conv, "message_count", json_integer((json_int_t)json_array_size(msgs)));
        json_object_set_new(conv, "messages", msgs);
        *out = conv;
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_list(struct lyra_store *st, size_t limit, size_t offset, json_t **list_out, int64_t *total,
                   struct lyra_err *err)
{
    *list_out = NULL;
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "SELECT COUNT(*) FROM conversations", &s, err, "counting conversations");
    if (rc < 0)
        return rc;
    rc = sqlite3_step(s) == SQLITE_ROW ? 0 : db_error(err, db, "counting conversations");
    *total = rc == 0 ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    if (rc < 0)
        return rc;

    /* rowid breaks ties between conversations touched in the same ms. */
    rc = prepare(db, SUMMARY_SQL "ORDER BY c.updated_ms DESC, c.rowid DESC LIMIT ? OFFSET ?", &s, err,
                 "listing conversations");
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(s, 1, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
    sqlite3_bind_int64(s, 2, offset > INT64_MAX ? INT64_MAX : (int64_t)offset);
    json_t *list = json_array();
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(list, summary_json(s));
    if (step != SQLITE_DONE) {
        rc = db_error(err, db, "listing conversations");
        json_decref(list);
    } else {
        *list_out = list;
    }
    sqlite3_finalize(s);
    return rc;
}

int lyra_conv_delete(struct lyra_store *st, const char *conv_id, struct lyra_err *err)
{
    sqlite3 *db = lyra_store_db(st);
    sqlite3_stmt *s;
    int rc = prepare(db, "DELETE FROM conversations WHERE id = ? RETURNING id", &s, err,
                     "deleting a conversation");
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, conv_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_error(err, db, "deleting a conversation");
    else if (step == SQLITE_DONE)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "conversation %s not found", conv_id);
    else
        rc = db_error(err, db, "deleting a conversation");
    sqlite3_finalize(s);
    return rc;
}
