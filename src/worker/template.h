/* template.h — turning chat messages into a prompt with the model's chat
 * template (llama_chat_apply_template: llama.cpp's built-in templates, which
 * it recognises by name, e.g. "chatml", or by the model's Jinja text).
 *
 * Thread-safety: all functions are thread-safe (no shared state). */
#ifndef LYRA_TEMPLATE_H
#define LYRA_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct llama_model;

/* A Jinja chat template that joins the messages' contents (nothing else):
 * what a text-continuation model such as the demo model stores, so that
 * stock llama-server (Jinja) and Lyra (llama.cpp's built-in templates:
 * "deepseek-ocr" is exactly this) format a chat the same way. */
#define LYRA_TEMPLATE_JOIN_JINJA "{% for message in messages %}{{ message['content'] }}{% endfor %}"
#define LYRA_TEMPLATE_JOIN_BUILTIN "deepseek-ocr"

/* Chooses the template for `model`: `override` (a built-in name or template
 * text; NULL for none) if given, else the model's own template, else
 * "chatml" (LYRA_TEMPLATE_JOIN_JINJA counts as its built-in equivalent).
 * A template that llama.cpp does not support is an error for an
 * override (LYRA_EUNSUPPORTED) and replaced by "chatml" with *fell_back set
 * for the model's own.  Returns 0 with *out set to a malloc'd copy (caller
 * frees). */
int lyra_template_select(const struct llama_model *model, const char *override, char **out,
                         bool *fell_back, struct lyra_err *err);

/* Checks `messages`: a non-empty array of {"role": "system"|"user"|
 * "assistant", "content": string}.  On error returns LYRA_EINVAL with a
 * message naming the field ("messages[2].role: ..."). */
int lyra_template_check(const json_t *messages, struct lyra_err *err);

/* Formats `messages` (borrowed; checked as above) with `tmpl`, ending with
 * the assistant prefix (add_assistant).  Returns 0 with *out a malloc'd
 * NUL-terminated prompt of *out_len bytes (caller frees), LYRA_EINVAL for bad
 * messages, LYRA_EUNSUPPORTED when llama.cpp cannot apply the template, or
 * LYRA_ENOMEM / LYRA_ETOOBIG. */
int lyra_template_apply(const char *tmpl, const json_t *messages, char **out, size_t *out_len,
                        struct lyra_err *err);

#endif
