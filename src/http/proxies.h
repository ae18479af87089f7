/* proxies.h — trusted reverse proxies (server.trusted_proxies) and the
 * client address behind them.
 *
 * Behind nginx every connection comes from the proxy, so the peer address
 * says nothing about the client.  The proxy appends the address it saw to
 * X-Forwarded-For; that header is believed only when the peer is a proxy
 * we were told to trust, and then only as far as the chain of trusted
 * hops goes: the client is the right-most hop of X-Forwarded-For that is
 * not itself a trusted proxy (every hop left of it may be forged by the
 * client).  From an untrusted peer, X-Forwarded-For is ignored.
 *
 * Entries are IPv4 or IPv6 addresses or CIDR blocks ("127.0.0.1",
 * "10.0.0.0/8", "::1", "fd00::/8").  IPv4-mapped IPv6 addresses
 * ("::ffff:127.0.0.1", what a dual-stack listener reports) match the IPv4
 * entries.
 *
 * Thread-safety: a lyra_proxies is immutable after lyra_proxies_new; every
 * other function may be called from any thread. */
#ifndef LYRA_PROXIES_H
#define LYRA_PROXIES_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct lyra_proxies;

/* Parses `n` entries (borrowed).  An entry that is not an address or CIDR
 * block fails with LYRA_EINVAL and "server.trusted_proxies[i]: ...".
 * n == 0 gives an empty set (trusts nothing).  Caller frees with
 * lyra_proxies_free. */
int lyra_proxies_new(struct lyra_proxies **out, char *const *entries, size_t n, struct lyra_err *err);

/* NULL is a no-op. */
void lyra_proxies_free(struct lyra_proxies *p);

/* Entries in the set (0 for NULL). */
size_t lyra_proxies_count(const struct lyra_proxies *p);

/* True when `addr` (an address as text; an X-Forwarded-For hop may also
 * be "[v6]", "[v6]:port" or "v4:port") is one of the trusted proxies.
 * False for NULL sets and for text that is no address. */
bool lyra_proxies_trusts(const struct lyra_proxies *p, const char *addr);

/* The client address of a request from `peer` (the socket's address as
 * text) carrying X-Forwarded-For value `xff` (NULL when absent; several
 * headers joined with ", " in the order received).  Writes it, as text, to
 * out (out_size >= 46 holds any address): `peer` itself unless the peer is
 * trusted and xff names a hop; then the right-most hop that is not
 * trusted, or the left-most one if all are trusted.  A hop that is no
 * address ends the walk: the client is then the last good hop on its
 * right (the proxy that passed the garbage on), or the peer.  Returns true
 * when the address came from X-Forwarded-For. */
bool lyra_proxies_client(const struct lyra_proxies *p, const char *peer, const char *xff, char *out,
                         size_t out_size);

#endif
