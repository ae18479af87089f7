/* client.h — the CLI's HTTP client for a running daemon (libcurl easy API).
 *
 * The client commands (run, ls, ps) find the daemon with
 * lyra_client_find_daemon(), open a client on its URL, and make blocking
 * requests: GET a JSON document, or POST a JSON body and receive an OpenAI
 * server-sent-event stream chunk by chunk.  Every call returns 0 or a
 * negative LYRA_E* code and leaves a message for a person on the handle
 * (lyra_client_errmsg):
 *   LYRA_EUNAVAILABLE  no daemon answers at the URL.  The message depends on
 *                      how the URL was found (lyra_client_set_origin): the
 *                      default one (serve.json, the configuration) says
 *                      "no Lyra daemon at URL: start it with `lyra serve`
 *                      (or make run)"; one given by --url or LYRA_URL says
 *                      the connection was refused there and to check the
 *                      address; an unknown host and a connection that is
 *                      not accepted in time say so
 *   LYRA_ETIMEOUT      connected, but the daemon did not answer in time
 *   LYRA_EIO           the daemon answered 4xx/5xx: the message is the
 *                      daemon's own (error.message of Lyra's and OpenAI's
 *                      error shapes); lyra_client_status() has the status.
 *                      A 401 adds where keys come from ("set LYRA_API_KEY,
 *                      pass --api-key or run `lyra login`", and which key
 *                      was refused), a 403 the permission that is missing,
 *                      a 429 its Retry-After
 *   LYRA_EPARSE        the answer is not the JSON that was expected
 *   LYRA_ETOOBIG       the answer is larger than LYRA_CLIENT_MAX_BODY
 *   LYRA_ENOMEM        out of memory
 *
 * API keys: with a key set (lyra_client_set_key; lyra_client_connect finds
 * one), every request carries `Authorization: Bearer KEY`.  The key is
 * never part of a message: a message that would contain it (a daemon
 * echoing it) has it replaced by "[key]", and the copy is wiped at free.
 *
 * Thread-safety: a client is used by one thread at a time.  curl's global
 * initialisation happens in lyra_client_new(), which must not race with
 * other threads starting up libcurl (the CLI is single-threaded). */
#ifndef LYRA_CLI_CLIENT_H
#define LYRA_CLI_CLIENT_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "cli/cli.h"
#include "core/error.h"

/* A body the client holds in memory (GET answers, error bodies). */
#define LYRA_CLIENT_MAX_BODY (64u << 20)

struct lyra_client;

/* Where a daemon URL came from; the messages of LYRA_EUNAVAILABLE differ. */
enum lyra_client_origin {
    LYRA_URL_FROM_CONFIG = 0, /* the configured server.host:port (default) */
    LYRA_URL_FROM_STATE,      /* $LYRA_HOME/serve.json of a running daemon */
    LYRA_URL_FROM_FLAG,       /* --url */
    LYRA_URL_FROM_ENV,        /* env LYRA_URL */
};

/* As lyra_client_find_daemon, and *origin (may be NULL) says which source
 * gave the URL. */
int lyra_client_locate(const char *url_flag, const struct lyra_common_flags *flags, char **out,
                       enum lyra_client_origin *origin);

/* Tells the client how its URL was found (default LYRA_URL_FROM_CONFIG),
 * for the message when nothing answers there.  lyra_client_connect sets
 * it. */
void lyra_client_set_origin(struct lyra_client *c, enum lyra_client_origin origin);

/* The message (into msg, len bytes) for a daemon at `base` that could not
 * be reached: `resolve_failed` when the host name is unknown, `slow` when
 * the connection was not accepted in time, else refused.  Returns
 * LYRA_EUNAVAILABLE.  For callers that make their own transfers (`lyra
 * events`). */
int lyra_client_unreachable(const char *base, enum lyra_client_origin origin, bool resolve_failed, bool slow,
                            char *msg, size_t len);

/* The daemon's base URL, first found of: `url_flag` (--url, may be NULL),
 * env LYRA_URL, the `url` of $LYRA_HOME/serve.json when the pid it names is
 * alive (home resolved like the configuration: --home, env LYRA_HOME,
 * default), else the configured server.host:port (127.0.0.1:8000 by
 * default).  *out receives a malloc'd string without a trailing slash
 * (caller frees).  Configuration errors are printed to stderr, as
 * lyra_cli_load_config() does, and return LYRA_ECONFIG. */
int lyra_client_find_daemon(const char *url_flag, const struct lyra_common_flags *flags, char **out);

/* Finds the daemon and opens a client on it (*out, free with
 * lyra_client_free) with the API key lyra_client_resolve_key finds for its
 * URL; on failure says why on stderr as "lyra CMD: ..." and returns a
 * negative LYRA_E*. */
int lyra_client_connect(const char *url_flag, const struct lyra_common_flags *flags, const char *cmd,
                        struct lyra_client **out);

/* Opens a client on `base_url` (copied).  Returns 0 or LYRA_ENOMEM /
 * LYRA_EINTERNAL with err filled.  Free with lyra_client_free(). */
int lyra_client_new(struct lyra_client **out, const char *base_url, struct lyra_err *err);
void lyra_client_free(struct lyra_client *c);

/* The API key for the daemon at `url`, first found of: flags->api_key
 * (--api-key), flags->api_key_file (--api-key-file: its first line), env
 * LYRA_API_KEY, the entry for url in the credentials file of `lyra login`
 * (cli/credentials.h).  *key receives a malloc'd copy (caller wipes and
 * frees) or NULL when no key is known (the request then goes without one);
 * *source (may be NULL) a static name of where it came from, for messages.
 * flags may be NULL.  A key file that cannot be read, a malformed key, both
 * flags at once, or a credentials file open to other users is printed as
 * "lyra CMD: ..." (never with the key) and returned as a negative LYRA_E*. */
int lyra_client_resolve_key(const struct lyra_common_flags *flags, const char *url, const char *cmd,
                            char **key, const char **source);

/* Sends `key` (copied; NULL: none) as the bearer token of every request;
 * `source` (static, may be NULL) names where it came from in the message
 * of a 401.  0, LYRA_EINVAL (not lyra_credentials_key_valid), LYRA_ENOMEM. */
int lyra_client_set_key(struct lyra_client *c, const char *key, const char *source);
bool lyra_client_has_key(const struct lyra_client *c);
/* Whether a 401's message says how to give a key (default true; `lyra
 * login`, which is giving one, turns it off). */
void lyra_client_set_hint(struct lyra_client *c, bool hint);

/* Borrowed strings, valid until the next call on the client or its free. */
const char *lyra_client_url(const struct lyra_client *c);
const char *lyra_client_errmsg(const struct lyra_client *c);
/* HTTP status of the last answer, 0 when none came. */
long lyra_client_status(const struct lyra_client *c);

/* GET base_url + path.  On 2xx, *body receives the answer NUL-terminated
 * (caller frees) and *len its length (len may be NULL). */
int lyra_client_get(struct lyra_client *c, const char *path, char **body, size_t *len);

/* POST `body` (borrowed; NULL sends an empty body) as JSON to base_url +
 * path and wait at most timeout_s seconds (<= 0: 120) for the whole answer.
 * On 2xx, *answer receives it parsed (caller decrefs); an answer that is not
 * JSON is LYRA_EPARSE.  A daemon that does not answer in time is
 * LYRA_ETIMEOUT. */
int lyra_client_post_json(struct lyra_client *c, const char *path, const json_t *body, long timeout_s,
                          json_t **answer);

/* METHOD ("GET", "POST", "DELETE") base_url + path with `body` (borrowed,
 * may be NULL: POST sends an empty body, the others none) as JSON, as
 * lyra_client_post_json does otherwise. */
int lyra_client_request_json(struct lyra_client *c, const char *method, const char *path, const json_t *body,
                             long timeout_s, json_t **answer);

/* The Retry-After of the last answer in seconds (a 503 when a model cannot
 * fit now, a 429 after too many failed authentications), -1 when it had
 * none. */
long lyra_client_retry_after(const struct lyra_client *c);

/* Called with each chunk of a stream (borrowed: valid during the call).
 * A non-zero return stops the stream. */
typedef int (*lyra_client_chunk_fn)(json_t *chunk, void *ud);

/* POST `body` (borrowed) as JSON to base_url + path and read the answer as
 * server-sent events: each `data:` event is parsed as JSON and handed to fn
 * as it arrives; `data: [DONE]` ends the stream.  A plain JSON answer (a
 * daemon that does not stream) is handed to fn once, whole.  An error
 * object sent in the stream ({"error":{...}}) ends it with LYRA_EIO and its
 * message.  The transfer is aborted soon (within about a second) after
 * *cancel becomes non-zero (cancel may be NULL); that, fn asking to stop, and
 * the end of the stream all return 0, so a caller that cancels tells the
 * cases apart by its own flag. */
int lyra_client_post_stream(struct lyra_client *c, const char *path, const json_t *body,
                            lyra_client_chunk_fn fn, void *ud, const volatile sig_atomic_t *cancel);

#endif
