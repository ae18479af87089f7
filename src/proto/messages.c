/* messages.c — see messages.h.  One row per message a worker may send. */
#include "proto/messages.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"

enum ftype { F_INT, F_UINT, F_STR, F_OBJ, F_ARR, F_BOOL, F_OPT_ARR /* absent or an array */ };

struct field {
    const char *name;
    enum ftype type;
};

#define MAX_FIELDS 4

struct schema {
    const char *type;
    enum lyra_msg_kind kind;
    bool request;  /* carries "id" */
    bool terminal; /* ends the request */
    struct field fields[MAX_FIELDS];
};

static const struct schema schemas[] = {
    {"ready", LYRA_MSG_READY, false, false, {{"n_slots", F_UINT}, {"n_ctx_slot", F_UINT}}},
    {"fatal", LYRA_MSG_FATAL, false, false, {{"message", F_STR}}},
    {"heartbeat", LYRA_MSG_HEARTBEAT, false, false, {{"steps", F_UINT}, {"busy", F_BOOL}}},
    {"started", LYRA_MSG_STARTED, true, false, {{"slot", F_UINT}}},
    {"token", LYRA_MSG_TOKEN, true, false,
     {{"text", F_STR}, {"n", F_UINT}, {"logprobs", F_OPT_ARR}, {"prompt_logprobs", F_OPT_ARR}}},
    {"done", LYRA_MSG_DONE, true, true, {{"finish_reason", F_STR}, {"usage", F_OBJ}}},
    {"error", LYRA_MSG_ERROR, true, true, {{"code", F_STR}, {"message", F_STR}, {"status", F_UINT}}},
    {"embedding", LYRA_MSG_EMBEDDING, true, true, {{"data", F_ARR}}},
    {"tokens", LYRA_MSG_TOKENS, true, true, {{"count", F_UINT}}},
    {"status", LYRA_MSG_STATUS, true, true, {{"slots", F_ARR}, {"queued", F_UINT}}},
};

static const struct schema *schema_of(enum lyra_msg_kind kind)
{
    for (size_t i = 0; i < sizeof schemas / sizeof *schemas; i++)
        if (schemas[i].kind == kind)
            return &schemas[i];
    return NULL;
}

static bool field_ok(const json_t *v, enum ftype t)
{
    switch (t) {
    case F_INT: return json_is_integer(v);
    case F_UINT: return json_is_integer(v) && json_integer_value(v) >= 0;
    case F_STR: return json_is_string(v);
    case F_OBJ: return json_is_object(v);
    case F_ARR: return json_is_array(v);
    case F_BOOL: return json_is_boolean(v);
    case F_OPT_ARR: return !v || json_is_array(v);
    }
    return false;
}

static const char *const type_words[] = {
    [F_INT] = "an integer", [F_UINT] = "a non-negative integer", [F_STR] = "a string",
    [F_OBJ] = "an object",  [F_ARR] = "an array",                [F_BOOL] = "true or false",
    [F_OPT_ARR] = "an array",
};

int lyra_msg_check_worker(const json_t *frame, enum lyra_msg_kind *kind, uint64_t *id, struct lyra_err *err)
{
    *kind = LYRA_MSG_UNKNOWN;
    *id = 0;
    const json_t *type = json_object_get(frame, "type");
    if (!json_is_string(type))
        return lyra_err_set(err, LYRA_EPARSE, "frame without a \"type\" string");
    const char *t = json_string_value(type);
    const struct schema *s = NULL;
    for (size_t i = 0; i < sizeof schemas / sizeof *schemas && !s; i++)
        if (strcmp(schemas[i].type, t) == 0)
            s = &schemas[i];
    if (!s)
        return lyra_err_set(err, LYRA_EPARSE, "unknown message type '%.*s'", (int)lyra_utf8_clip(t, 40), t);
    if (s->request) {
        const json_t *idv = json_object_get(frame, "id");
        if (!field_ok(idv, F_UINT))
            return lyra_err_set(err, LYRA_EPARSE, "%s: field 'id' must be a non-negative integer", s->type);
        *id = (uint64_t)json_integer_value(idv);
    }
    for (int i = 0; i < MAX_FIELDS && s->fields[i].name; i++) {
        const json_t *v = json_object_get(frame, s->fields[i].name);
        if (!field_ok(v, s->fields[i].type))
            return lyra_err_set(err, LYRA_EPARSE, "%s: field '%s' must be %s", s->type, s->fields[i].name,
                                type_words[s->fields[i].type]);
    }
    *kind = s->kind;
    return 0;
}

enum lyra_msg_kind lyra_msg_kind_of(const json_t *frame)
{
    const char *t = json_string_value(json_object_get(frame, "type"));
    for (size_t i = 0; t && i < sizeof schemas / sizeof *schemas; i++)
        if (strcmp(schemas[i].type, t) == 0)
            return schemas[i].kind;
    return LYRA_MSG_UNKNOWN;
}

bool lyra_msg_is_terminal(enum lyra_msg_kind kind)
{
    const struct schema *s = schema_of(kind);
    return s && s->terminal;
}

const char *lyra_msg_name(enum lyra_msg_kind kind)
{
    const struct schema *s = schema_of(kind);
    return s ? s->type : "unknown";
}

/* Length of the valid UTF-8 character starting at p[0..avail), or 0 when
 * the bytes there are not one. */
static size_t char_len(const unsigned char *p, size_t avail)
{
    size_t c = (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 0;
    return c && c <= avail && lyra_utf8_valid((const char *)p, c) ? c : 0;
}

size_t lyra_msg_escape(char *buf, size_t limit, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    size_t n = 0;
    while (p < end) {
        char esc[6];
        size_t elen, step = 1;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p, elen = 2;
        } else if (*p == '\n') {
            esc[0] = '\\', esc[1] = 'n', elen = 2;
        } else if (*p < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[*p >> 4], esc[5] = hex[*p & 15], elen = 6;
        } else if (*p < 0x80) {
            esc[0] = (char)*p, elen = 1;
        } else if ((step = char_len(p, (size_t)(end - p))) > 0) {
            memcpy(esc, p, step);
            elen = step;
        } else {
            esc[0] = '?', elen = 1, step = 1; /* not UTF-8: never passed on */
        }
        if (n + elen > limit)
            break;
        memcpy(buf + n, esc, elen);
        n += elen;
        p += step;
    }
    return n;
}

size_t lyra_msg_error_raw(char *buf, size_t cap, uint64_t id, const char *code, int status, const char *message)
{
    char head[96];
    int h = snprintf(head, sizeof head, "{\"type\":\"error\",\"id\":%" PRIu64 ",\"status\":%d,\"code\":\"", id,
                     status);
    size_t len = 0;
    memcpy(buf, head, (size_t)h);
    len = (size_t)h;
    /* Room kept for the fixed tail: "\",\"message\":\"" + "\"}" + NUL. */
    size_t tail = 16;
    const char *c = code ? code : "internal", *m = message ? message : "";
    len += lyra_msg_escape(buf + len, 40 < cap - tail - len ? 40 : cap - tail - len, c, strlen(c));
    memcpy(buf + len, "\",\"message\":\"", 13);
    len += 13;
    len += lyra_msg_escape(buf + len, cap - 3 - len, m, strlen(m));
    memcpy(buf + len, "\"}", 3);
    return len + 2;
}

size_t lyra_msg_cancel_raw(char *buf, size_t cap, uint64_t id)
{
    int n = snprintf(buf, cap, "{\"type\":\"cancel\",\"id\":%" PRIu64 "}", id);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
