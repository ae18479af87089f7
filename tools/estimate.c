/*
 * lyra-estimate: prints what models/estimate.h expects a model to need, as one JSON object, for
 * docs/gpu.md's measurements and bench/gpu-check.sh.
 *
 *   lyra-estimate MODEL.gguf [--ctx N] [--parallel N] [--gpu-layers G] [--fit FREE_BYTES]
 *
 * Defaults are the daemon's (ctx 4096 per slot, 4 slots, all layers).  With --fit the output
 * also has "fit_layers": the most layers whose device bytes fit FREE_BYTES.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/estimate.h"
#include "models/gguf.h"

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr,
                "usage: lyra-estimate MODEL.gguf [--ctx N] [--parallel N] [--gpu-layers G] [--fit BYTES]\n");
        return 2;
    }
    int ctx = 4096, parallel = 4, gpu_layers = -1;
    long long fit = -1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--ctx") == 0)
            ctx = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--parallel") == 0)
            parallel = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--gpu-layers") == 0)
            gpu_layers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--fit") == 0)
            fit = atoll(argv[i + 1]);
        else {
            fprintf(stderr, "lyra-estimate: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    struct lyra_err err = {0};
    struct lyra_gguf_info *info = NULL;
    struct lyra_estimate e;
    if (lyra_gguf_read(argv[1], &info, &err) < 0 || lyra_estimate_model(info, ctx, parallel, &e, &err) < 0) {
        fprintf(stderr, "lyra-estimate: %s\n", err.msg);
        lyra_gguf_info_free(info);
        return 1;
    }
    json_t *j = lyra_estimate_to_json(&e, gpu_layers);
    if (j && fit >= 0)
        json_object_set_new(j, "fit_layers", json_integer(lyra_estimate_fit_layers(&e, (uint64_t)fit, 0)));
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    int rc = s ? 0 : 1;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(j);
    lyra_estimate_clear(&e);
    lyra_gguf_info_free(info);
    return rc;
}
