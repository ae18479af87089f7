/* hostcheck.h — the DNS-rebinding guard: which Host headers the daemon serves.
 *
 * A web page can drive a daemon that listens on loopback by pointing a name
 * it controls at 127.0.0.1 (DNS rebinding; Ollama's CVE-2024-28224): the
 * browser then treats the daemon as that name's origin and reads its
 * answers.  The browser still sends the attacker's name in Host, so a daemon
 * that serves only loopback names cannot be reached that way.
 *
 * Accepted (the rules docs/configuration.md repeats for users):
 *   - `localhost` and any `*.localhost` name (RFC 6761: loopback by
 *     definition, resolved by browsers themselves, never by public DNS);
 *   - 127.0.0.0/8 as a dotted quad, `[::1]` in any spelling, and
 *     `[::ffff:127.x.y.z]`;
 *   - the names and addresses of the allow list (server.allowed_hosts); an
 *     entry "*" accepts every Host;
 * each with or without `:port` (any port: the port is not what an attacker
 * changes), case-insensitive, with at most one trailing dot (`localhost.`).
 *   - no Host header at all (HTTP/1.0, or an HTTP/1.1 client that omits it,
 *     which libmicrohttpd 0.9.75 accepts) and an empty Host: browsers always
 *     send a non-empty Host, so such a request is not a rebinding.
 * Refused: every other name or address (0.0.0.0 and the machine's other
 * addresses included), and malformed values: bytes outside [A-Za-z0-9._-]
 * in a name (non-ASCII too: browsers send IDNs as punycode), empty labels,
 * over-long names, unbracketed IPv6, IPv6 zone ids, IPv4 in any form other
 * than the dotted quad (127.1, 2130706433: browsers normalise those before
 * sending), and a port that is not 1-5 digits up to 65535.
 *
 * Thread-safety: lyra_hostcheck_check and the pure functions are
 * thread-safe (the guard is read-only once built); new/free are not. */
#ifndef LYRA_HOSTCHECK_H
#define LYRA_HOSTCHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct lyra_hostcheck;

/* Builds a guard accepting loopback hosts plus `allowed` (borrowed, copied;
 * may be NULL when n_allowed is 0).  Each entry is a host name, an IPv4
 * address, an IPv6 address with or without brackets, or "*"; without a port
 * (every port matches).  Returns 0 and *out (caller frees with
 * lyra_hostcheck_free), LYRA_EINVAL naming the bad entry, or LYRA_ENOMEM. */
int lyra_hostcheck_new(char *const *allowed, size_t n_allowed, struct lyra_hostcheck **out,
                       struct lyra_err *err);

/* NULL is a no-op. */
void lyra_hostcheck_free(struct lyra_hostcheck *hc);

/* Returns 0 when a request whose Host header is `host` (NULL when absent)
 * may be served, else LYRA_EPERM with the reason in err; the message quotes
 * the Host in printable ASCII, clipped, so it is safe to send back. */
int lyra_hostcheck_check(const struct lyra_hostcheck *hc, const char *host, struct lyra_err *err);

/* True when the Host value `host` is a loopback name or address by the rules
 * above (no allow list; NULL and "" are not loopback). */
bool lyra_hostcheck_is_loopback(const char *host);

/* True when `addr`, a listen address as written in server.host ("127.0.0.1",
 * "::1", "[::1]", "localhost"), is loopback.  The wildcards 0.0.0.0 and ::
 * are not. */
bool lyra_hostcheck_addr_is_loopback(const char *addr);

#endif
