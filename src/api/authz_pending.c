/* authz_pending.c — TEMPORARY, audit branch only: weak stand-ins for the
 * lead's api/authz.c (not on main yet) so this branch links.  Every caller
 * acts as "anonymous" with every permission.  The lead's strong definitions
 * replace these; delete this file when main has api/authz.c. */
#include <string.h>

#include "api/authz.h"

__attribute__((weak)) const struct lyra_principal *lyra_authz_principal(const struct lyra_http_req *req)
{
    static const struct lyra_principal anon = {.name = LYRA_AUTH_ANONYMOUS, .role = "admin",
                                               .kind = LYRA_PRINCIPAL_ANONYMOUS};
    (void)req;
    return &anon;
}

__attribute__((weak)) bool lyra_authz_may(struct lyra_http_req *req, struct lyra_server *srv,
                                          const char *permission, const char *model)
{
    return true;
}

__attribute__((weak)) bool lyra_authz_require(struct lyra_http_req *req, struct lyra_server *srv,
                                              const char *permission, const char *model)
{
    return true;
}
