/* template.c — chat template selection and application (see template.h).
 *
 * llama_chat_apply_template() does not parse Jinja: it recognises a fixed
 * list of templates by name or by markers in the template text.  A model whose
 * template is not among them would make every chat request fail, so such a
 * template is replaced by ChatML once, at load, with a warning. */
#include "worker/template.h"

#include "core/util.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "llama.h"

/* True when llama.cpp can format a small conversation with tmpl. */
static bool supported(const char *tmpl)
{
    const struct llama_chat_message chat[] = {{"system", "s"}, {"user", "u"}, {"assistant", "a"}};
    char buf[512];
    return llama_chat_apply_template(tmpl, chat, 3, true, buf, sizeof buf) >= 0;
}

int lyra_template_select(const struct llama_model *model, const char *override, char **out,
                         bool *fell_back, struct lyra_err *err)
{
    *out = NULL;
    *fell_back = false;
    const char *tmpl;
    if (override && *override) {
        if (!supported(override))
            return lyra_err_set(err, LYRA_EUNSUPPORTED,
                                "chat template '%.*s' is not one llama.cpp can apply (use a "
                                "built-in name such as chatml, llama3, gemma, phi3)",
                                (int)lyra_utf8_clip(override, 64), override);
        tmpl = override;
    } else {
        tmpl = llama_model_chat_template(model, NULL);
        if (tmpl && strcmp(tmpl, LYRA_TEMPLATE_JOIN_JINJA) == 0)
            tmpl = LYRA_TEMPLATE_JOIN_BUILTIN;
        if (!tmpl || !*tmpl) {
            tmpl = "chatml";
        } else if (!supported(tmpl)) {
            tmpl = "chatml";
            *fell_back = true;
        }
    }
    *out = strdup(tmpl);
    if (!*out)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    return 0;
}

int lyra_template_check(const json_t *messages, struct lyra_err *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return lyra_err_set(err, LYRA_EINVAL, "messages: must be a non-empty array");
    size_t i;
    const json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m))
            return lyra_err_set(err, LYRA_EINVAL, "messages[%zu]: must be an object", i);
        const json_t *role = json_object_get(m, "role");
        const json_t *content = json_object_get(m, "content");
        if (!json_is_string(role))
            return lyra_err_set(err, LYRA_EINVAL, "messages[%zu].role: must be a string", i);
        const char *r = json_string_value(role);
        if (strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0)
            return lyra_err_set(err, LYRA_EINVAL,
                                "messages[%zu].role: unknown role '%.*s' (expected system, user or "
                                "assistant)",
                                i, (int)lyra_utf8_clip(r, 32), r);
        if (!json_is_string(content))
            return lyra_err_set(err, LYRA_EINVAL, "messages[%zu].content: must be a string", i);
        /* llama_chat_apply_template takes C strings: an embedded NUL would
         * silently cut the message. */
        if (strlen(json_string_value(content)) != json_string_length(content))
            return lyra_err_set(err, LYRA_EINVAL, "messages[%zu].content: contains a NUL character", i);
    }
    return 0;
}

int lyra_template_apply(const char *tmpl, const json_t *messages, char **out, size_t *out_len,
                        struct lyra_err *err)
{
    *out = NULL;
    *out_len = 0;
    int rc = lyra_template_check(messages, err);
    if (rc < 0)
        return rc;
    size_t n = json_array_size(messages), total = 0;
    struct llama_chat_message *chat = calloc(n, sizeof *chat);
    if (!chat)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(messages, i);
        chat[i].role = json_string_value(json_object_get(m, "role"));
        chat[i].content = json_string_value(json_object_get(m, "content"));
        total += json_string_length(json_object_get(m, "content"));
    }
    if (total > (size_t)INT32_MAX / 4) {
        free(chat);
        return lyra_err_set(err, LYRA_ETOOBIG, "messages: %zu bytes of content is too much", total);
    }
    /* llama.cpp's advice: 2x the characters; retried once with the exact size. */
    int32_t cap = (int32_t)(2 * total + 256);
    char *buf = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *nb = realloc(buf, (size_t)cap + 1);
        if (!nb) {
            free(buf);
            free(chat);
            return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
        }
        buf = nb;
        int32_t w = llama_chat_apply_template(tmpl, chat, n, true, buf, cap);
        if (w < 0) {
            free(buf);
            free(chat);
            return lyra_err_set(err, LYRA_EUNSUPPORTED, "the chat template cannot be applied");
        }
        if (w <= cap) {
            buf[w] = '\0';
            *out = buf;
            *out_len = (size_t)w;
            free(chat);
            return 0;
        }
        cap = w;
    }
    free(buf);
    free(chat);
    return lyra_err_set(err, LYRA_EINTERNAL, "chat template output kept growing");
}
