/* ollama.h — the Ollama-compatible API on Lyra's own port (api/ollama.c):
 *
 *   POST   /api/chat        messages → NDJSON stream (default) or one JSON
 *   POST   /api/generate    prompt → NDJSON stream (default) or one JSON
 *   POST   /api/embed       input (string or strings) → {embeddings:[[…]]}
 *   POST   /api/embeddings  prompt → {embedding:[…]} (Ollama's older endpoint)
 *   GET    /api/tags        the models Lyra can serve
 *   GET    /api/ps          the models resident now
 *   POST   /api/show        one model's details, template and metadata
 *   POST   /api/pull        a Lyra pull job (http(s):// or hf:// source),
 *                           followed as Ollama's NDJSON progress
 *   DELETE /api/delete      removes a model file from models.dir
 *   GET    /api/version     {"version":…}
 *
 * Shapes follow Ollama's API documentation (docs/api.md, "Ollama-compatible
 * API", lists what differs).  Errors are Ollama's {"error":"message"} with
 * its statuses: 400 bad field or option, 404 unknown model, 413 too large.
 * Inference goes through the bridge (api/infer.h) with formatters of this
 * file; sampling options are checked with the worker's own rules
 * (core/sampling_params.h), so a request accepted here is one the worker
 * accepts.
 *
 * The parsers below are pure functions of the parsed JSON (no HTTP, no
 * models), exposed for tests/unit/test_ollama.c.
 *
 * Thread-safety: handlers run on HTTP threads; the parsers are thread-safe. */
#ifndef LYRA_OLLAMA_H
#define LYRA_OLLAMA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "http/http.h"

/* keep_alive not given: the model's own policy (models.keep_alive_s). */
#define LYRA_OLLAMA_KEEP_DEFAULT (-2)

/* Ollama's keep_alive: absent/null → LYRA_OLLAMA_KEEP_DEFAULT; a number of
 * seconds; a Go duration string ("5m", "1h30m", "30s", "500ms", "-1m") or a
 * string of seconds ("300").  *seconds: 0 = unload after this request,
 * -1 = keep loaded (any negative value), else seconds (a fraction rounds
 * up).  Returns 0, or LYRA_EINVAL with err->msg "keep_alive: …". */
int lyra_ollama_keep_alive(const json_t *v, int *seconds, struct lyra_err *err);

/* Adds Ollama's `options` (borrowed; NULL or null = none) to the worker
 * params `params` under the worker's names — num_predict → max_tokens
 * (-1 and -2 → -1: until the context is full), temperature, top_k, top_p,
 * min_p, repeat_penalty, repeat_last_n, presence_penalty,
 * frequency_penalty, seed, stop — and checks them with the worker's rules.
 * num_ctx must be a positive integer (the context size is the model's
 * configuration in Lyra; a request cannot change it).  Ollama's other
 * runner options (num_gpu, num_thread, mirostat, ...) are accepted and
 * ignored, as Ollama ignores options it does not know.  Returns 0, or
 * LYRA_EINVAL with err->msg naming the option ("options.temperature: …"),
 * or LYRA_ENOMEM. */
int lyra_ollama_options(const json_t *options, json_t *params, struct lyra_err *err);

/* Ollama's `format`: absent, "" or null = free text; "json" or a JSON
 * schema object = JSON mode (params.json_mode; a schema is enforced as
 * "a JSON value", not compiled to a grammar).  LYRA_EINVAL otherwise. */
int lyra_ollama_format(const json_t *format, json_t *params, struct lyra_err *err);

/* RFC 3339 UTC with nanoseconds ("2025-01-02T03:04:05.123456789Z") for
 * `wall_ns` (nanoseconds since the epoch) into buf (at least 32 bytes). */
void lyra_ollama_timestamp(int64_t wall_ns, char *buf, size_t len);

/* A model name as an Ollama client writes it, in Lyra's terms: the tag
 * ":latest" is dropped ("tiny:latest" → "tiny"); other tags are kept (a
 * Lyra model may be named "qwen:7b").  Writes into buf; returns buf. */
char *lyra_ollama_model_name(const char *name, char *buf, size_t len);

/* Handlers (ctx: struct lyra_server). */
void lyra_api_ollama_chat(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_generate(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_embed(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_embeddings(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_tags(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_ps(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_show(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_pull(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_delete(struct lyra_http_req *req, void *ctx);
void lyra_api_ollama_version(struct lyra_http_req *req, void *ctx);

#endif
