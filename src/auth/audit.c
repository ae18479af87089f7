/* audit.c — the append-only audit log (audit.h): rows of the `audit` table
 * (store migration 6, whose triggers refuse UPDATE and DELETE) and their
 * events.
 *
 * Ids are handed out here, not by SQLite: the daemon is the only writer of
 * its database (one daemon per LYRA_HOME), so the next id is max(id) + 1 at
 * open and a counter afterwards.  That lets lyra_audit_record publish the
 * row's event — id included — on the caller's thread at once, while the
 * INSERT goes through the store's queue (never waiting for the disk).  The
 * counter and the submit happen under one mutex, so rows reach the queue in
 * id order.  A failed INSERT leaves a gap in the ids and a log line. */
#include "auth/audit.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/events.h"
#include "core/log.h"
#include "core/store.h"
#include "core/util.h"

/* Longest stored text per field, in bytes (cut on a character boundary). */
#define MAX_PRINCIPAL 64
#define MAX_KEY_ID 32
#define MAX_ACTION 128
#define MAX_TARGET 256
#define MAX_RESULT 16
#define MAX_CLIENT 64
#define MAX_REQUEST_ID 128
#define MAX_DETAIL 256

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000

struct lyra_audit {
    struct lyra_store *store;
    struct lyra_bus *bus;
    pthread_mutex_t lock; /* guards next_id and the order of submits */
    int64_t next_id;
};

/* One row on its way to the database (all text owned). */
struct row {
    int64_t id, ts_ms;
    int status;
    char *principal, *key_id, *action, *target, *result, *client, *request_id, *detail;
};

static void row_free(struct row *r)
{
    if (!r)
        return;
    free(r->principal);
    free(r->key_id);
    free(r->action);
    free(r->target);
    free(r->result);
    free(r->client);
    free(r->request_id);
    free(r->detail);
    free(r);
}

/* A copy of s (NULL = "") of at most max bytes, valid UTF-8: cut at the
 * byte bound, then a character cut short is dropped and any other invalid
 * byte becomes '?'.  NULL when out of memory. */
static char *clip_copy(const char *s, size_t max)
{
    if (!s)
        s = "";
    size_t n = strnlen(s, max);
    char *c = malloc(n + 1);
    if (!c)
        return NULL;
    memcpy(c, s, n);
    c[n] = '\0';
    return lyra_utf8_scrub(c);
}

/* The row as its event data / query entry (new reference; NULL on failure). */
static json_t *row_json(const struct row *r)
{
    return json_pack("{s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:s,s:s}", "id", (json_int_t)r->id, "ts_ms",
                     (json_int_t)r->ts_ms, "principal", r->principal, "key_id", r->key_id, "action", r->action,
                     "target", r->target, "result", r->result, "status", r->status, "client", r->client,
                     "request_id", r->request_id, "detail", r->detail);
}

/* Job: INSERT of one row (arg: struct row, freed by insert_done). */
static int job_insert(sqlite3 *db, void *arg, struct lyra_err *err)
{
    const struct row *r = arg;
    sqlite3_stmt *s;
    const char *what = "recording an audit row";
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO audit (id, ts_ms, principal, key_id, action, target, result, status, "
                           "client, request_id, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, what);
    sqlite3_bind_int64(s, 1, r->id);
    sqlite3_bind_int64(s, 2, r->ts_ms);
    sqlite3_bind_text(s, 3, r->principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, r->key_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, r->action, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, r->target, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 7, r->result, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 8, r->status);
    sqlite3_bind_text(s, 9, r->client, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 10, r->request_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 11, r->detail, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    return step == SQLITE_DONE ? 0 : lyra_store_error(err, db, what);
}

static void insert_done(int rc, const struct lyra_err *err, void *arg)
{
    struct row *r = arg;
    if (rc < 0)
        lyra_log(LYRA_LOG_WARN, "audit", NULL, NULL, "audit row %lld (%s) not stored: %s", (long long)r->id,
                 r->action, err ? err->msg : lyra_strerror(rc));
    row_free(r);
}

/* Job: *(int64_t *)arg = max(id) of the table (0 when empty). */
static int job_max_id(sqlite3 *db, void *arg, struct lyra_err *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(max(id), 0) FROM audit", -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "reading the audit log");
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        *(int64_t *)arg = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return step == SQLITE_ROW ? 0 : lyra_store_error(err, db, "reading the audit log");
}

struct lyra_audit *lyra_audit_new(struct lyra_store *store, struct lyra_bus *bus)
{
    int64_t max_id = 0;
    struct lyra_err err = {0};
    if (lyra_store_run(store, job_max_id, &max_id, &err) < 0) {
        lyra_log(LYRA_LOG_ERROR, "audit", NULL, NULL, "cannot open the audit log: %s", err.msg);
        return NULL;
    }
    struct lyra_audit *au = calloc(1, sizeof *au);
    if (!au)
        return NULL;
    au->store = store;
    au->bus = bus;
    au->next_id = max_id + 1;
    pthread_mutex_init(&au->lock, NULL);
    return au;
}

void lyra_audit_free(struct lyra_audit *au)
{
    if (!au)
        return;
    pthread_mutex_destroy(&au->lock);
    free(au);
}

/* auth.denied for denied authentication/authorization, else audit.recorded. */
static const char *event_type(const struct row *r)
{
    return strcmp(r->result, "denied") == 0 && strncmp(r->action, "auth.", 5) == 0 ? "auth.denied"
                                                                                   : "audit.recorded";
}

int lyra_audit_record(struct lyra_audit *au, const struct lyra_audit_entry *e)
{
    struct row *r = calloc(1, sizeof *r);
    if (!r)
        return LYRA_ENOMEM;
    r->ts_ms = lyra_wall_ms();
    r->status = e->status;
    r->principal = clip_copy(e->principal, MAX_PRINCIPAL);
    r->key_id = clip_copy(e->key_id, MAX_KEY_ID);
    r->action = clip_copy(e->action, MAX_ACTION);
    r->target = clip_copy(e->target, MAX_TARGET);
    r->result = clip_copy(e->result, MAX_RESULT);
    r->client = clip_copy(e->client, MAX_CLIENT);
    r->request_id = clip_copy(e->request_id, MAX_REQUEST_ID);
    r->detail = clip_copy(e->detail, MAX_DETAIL);
    if (!r->principal || !r->key_id || !r->action || !r->target || !r->result || !r->client ||
        !r->request_id || !r->detail) {
        row_free(r);
        return LYRA_ENOMEM;
    }
    pthread_mutex_lock(&au->lock);
    r->id = au->next_id;
    /* The event is built before the row is handed over (r belongs to the
     * store's thread once submitted). */
    json_t *data = au->bus ? row_json(r) : NULL;
    const char *type = event_type(r);
    int rc = lyra_store_submit(au->store, job_insert, insert_done, r);
    if (rc == 0)
        au->next_id++;
    pthread_mutex_unlock(&au->lock);
    if (rc < 0) {
        json_decref(data);
        row_free(r);
        return rc;
    }
    if (au->bus && data)
        lyra_bus_publish(au->bus, type, "audit", data);
    return 0;
}

/* --- query ---------------------------------------------------------------- */

struct query {
    const struct lyra_audit_filter *f;
    int limit;
    json_t *entries;
    bool more;
};

static const char *col_text(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t ? (const char *)t : "";
}

/* Job: the rows matching q->f, newest first, one more than the limit (to
 * know whether another page exists). */
static int job_query(sqlite3 *db, void *arg, struct lyra_err *err)
{
    struct query *q = arg;
    const struct lyra_audit_filter *f = q->f;
    char sql[768];
    size_t n = (size_t)snprintf(sql, sizeof sql,
                                "SELECT id, ts_ms, principal, key_id, action, target, result, status, client, "
                                "request_id, detail FROM audit WHERE 1");
    /* Each clause binds one parameter, in this order. */
    size_t plen = 0;
    bool prefix = false;
    if (f->principal)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND principal = ?1");
    if (f->action) {
        plen = strlen(f->action);
        prefix = plen > 0 && f->action[plen - 1] == '*';
        if (prefix)
            plen--;
        n += (size_t)snprintf(sql + n, sizeof sql - n,
                              prefix ? " AND substr(action, 1, length(?2)) = ?2" : " AND action = ?2");
    }
    if (f->result)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND result = ?3");
    if (f->client)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND client = ?4");
    if (f->since_ms)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND ts_ms >= ?5");
    if (f->until_ms)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND ts_ms <= ?6");
    if (f->before_id)
        n += (size_t)snprintf(sql + n, sizeof sql - n, " AND id < ?7");
    snprintf(sql + n, sizeof sql - n, " ORDER BY id DESC LIMIT ?8");

    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return lyra_store_error(err, db, "querying the audit log");
    if (f->principal)
        sqlite3_bind_text(s, 1, f->principal, -1, SQLITE_STATIC);
    if (f->action)
        sqlite3_bind_text(s, 2, f->action, (int)plen, SQLITE_STATIC);
    if (f->result)
        sqlite3_bind_text(s, 3, f->result, -1, SQLITE_STATIC);
    if (f->client)
        sqlite3_bind_text(s, 4, f->client, -1, SQLITE_STATIC);
    if (f->since_ms)
        sqlite3_bind_int64(s, 5, f->since_ms);
    if (f->until_ms)
        sqlite3_bind_int64(s, 6, f->until_ms);
    if (f->before_id)
        sqlite3_bind_int64(s, 7, f->before_id);
    sqlite3_bind_int(s, 8, q->limit + 1);
    int step, count = 0, rc = 0;
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == q->limit) {
            q->more = true;
            break;
        }
        /* Stored text is valid UTF-8 (clipped on the way in); a row written
         * by something else is scrubbed rather than dropped. */
        struct row r = {.id = sqlite3_column_int64(s, 0),
                        .ts_ms = sqlite3_column_int64(s, 1),
                        .status = sqlite3_column_int(s, 7)};
        char *text[8];
        const int cols[8] = {2, 3, 4, 5, 6, 8, 9, 10};
        bool ok = true;
        for (int i = 0; i < 8; i++) {
            text[i] = strdup(col_text(s, cols[i]));
            ok = ok && text[i];
            if (text[i])
                lyra_utf8_scrub(text[i]);
        }
        r.principal = text[0];
        r.key_id = text[1];
        r.action = text[2];
        r.target = text[3];
        r.result = text[4];
        r.client = text[5];
        r.request_id = text[6];
        r.detail = text[7];
        json_t *j = ok ? row_json(&r) : NULL;
        for (int i = 0; i < 8; i++)
            free(text[i]);
        if (!j || json_array_append_new(q->entries, j) < 0) {
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            break;
        }
        count++;
    }
    if (rc == 0 && step != SQLITE_ROW && step != SQLITE_DONE)
        rc = lyra_store_error(err, db, "querying the audit log");
    sqlite3_finalize(s);
    return rc;
}

int lyra_audit_query(struct lyra_audit *au, const struct lyra_audit_filter *f, json_t **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_audit_filter none = {0};
    if (!f)
        f = &none;
    if (f->limit < 0 || f->limit > LIMIT_MAX)
        return lyra_err_set(err, LYRA_EINVAL, "limit must be 1..%d", LIMIT_MAX);
    if (f->before_id < 0 || f->since_ms < 0 || f->until_ms < 0)
        return lyra_err_set(err, LYRA_EINVAL, "negative bound");
    struct query q = {.f = f, .limit = f->limit ? f->limit : LIMIT_DEFAULT, .entries = json_array()};
    if (!q.entries)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int rc = lyra_store_run(au->store, job_query, &q, err);
    if (rc < 0) {
        json_decref(q.entries);
        return rc;
    }
    json_t *next = json_null();
    size_t n = json_array_size(q.entries);
    if (q.more && n > 0)
        next = json_integer(json_integer_value(json_object_get(json_array_get(q.entries, n - 1), "id")));
    *out = json_pack("{s:o,s:o}", "entries", q.entries, "next_before_id", next);
    return *out ? 0 : lyra_err_set(err, LYRA_ENOMEM, "out of memory");
}
