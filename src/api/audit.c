/* audit.c — placeholder until GET /audit lands (issue 9). */
#include "api/server.h"

void lyra_api_audit_list(struct lyra_http_req *req, void *ctx)
{
    (void)ctx;
    lyra_http_send_error(req, 501, "not_implemented", "not implemented yet");
}

void lyra_api_models_delete(struct lyra_http_req *req, void *ctx)
{
    (void)ctx;
    lyra_http_send_error(req, 501, "not_implemented", "not implemented yet");
}
