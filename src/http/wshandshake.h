/* wshandshake.h — the server side of the RFC 6455 opening handshake: the
 * checks on the client's request headers and Sec-WebSocket-Accept.  The
 * framing itself is wslay's (api/evstream.c).
 *
 * Thread-safety: pure functions, any thread. */
#ifndef LYRA_WSHANDSHAKE_H
#define LYRA_WSHANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* SHA-1 of len bytes (RFC 3174); only for the handshake, never for
 * anything that needs collision resistance. */
void lyra_ws_sha1(const void *data, size_t len, uint8_t out[20]);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + the
 * RFC's GUID)), 28 characters and a NUL into out. */
void lyra_ws_accept_key(const char *key, char out[29]);

/* Checks the upgrade headers (each may be NULL when absent): Upgrade has
 * the token "websocket", Connection the token "upgrade" (case-insensitive,
 * comma-separated lists), Sec-WebSocket-Key is base64 of 16 bytes.
 * Returns 0, LYRA_EINVAL with err for a request that is not a WebSocket
 * handshake, or LYRA_EUNSUPPORTED when Sec-WebSocket-Version is not 13
 * (answer 426 with Sec-WebSocket-Version: 13). */
int lyra_ws_check_request(const char *upgrade, const char *connection, const char *key, const char *version,
                          struct lyra_err *err);

#endif
