/* permissions.c — placeholder until the RBAC endpoints land (issue 9). */
#include "api/server.h"

#define TODO(fn)                                                                                              \
    void fn(struct lyra_http_req *req, void *ctx)                                                             \
    {                                                                                                         \
        (void)ctx;                                                                                            \
        lyra_http_send_error(req, 501, "not_implemented", "not implemented yet");                             \
    }
TODO(lyra_api_permissions_get)
TODO(lyra_api_permissions_check)
TODO(lyra_api_permissions_grant)
TODO(lyra_api_permissions_revoke)
TODO(lyra_api_users_list)
TODO(lyra_api_users_add)
TODO(lyra_api_users_remove)
TODO(lyra_api_users_set_role)
TODO(lyra_api_keys_list)
TODO(lyra_api_keys_create)
TODO(lyra_api_keys_revoke)
TODO(lyra_api_roles_list)
TODO(lyra_api_roles_create)
TODO(lyra_api_roles_delete)
