/* common.c — flags shared by the commands that read the configuration. */
#include <stdio.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "cli/cli.h"

int lyra_cli_common_flags(int argc, char **argv, struct lyra_common_flags *flags)
{
    static const struct {
        const char *flag;
        size_t offset;
    } known[] = {
        {"--home", offsetof(struct lyra_common_flags, home)},
        {"--config", offsetof(struct lyra_common_flags, config)},
        {"--host", offsetof(struct lyra_common_flags, host)},
        {"--port", offsetof(struct lyra_common_flags, port)},
        {"--models-dir", offsetof(struct lyra_common_flags, models_dir)},
        {"--api-key-file", offsetof(struct lyra_common_flags, api_key_file)},
        {"--api-key", offsetof(struct lyra_common_flags, api_key)},
    };
    int out = 1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool matched = false;
        for (size_t k = 0; k < sizeof known / sizeof *known; k++) {
            size_t n = strlen(known[k].flag);
            if (strncmp(arg, known[k].flag, n) != 0 || (arg[n] != '\0' && arg[n] != '='))
                continue;
            const char *value = arg[n] == '=' ? arg + n + 1 : NULL;
            if (!value) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "lyra: %s needs a value\n", known[k].flag);
                    return -1;
                }
                value = argv[++i];
            }
            if (known[k].offset == offsetof(struct lyra_common_flags, api_key)) {
                size_t len = strlen(value);
                if (len == 0 || len >= sizeof flags->api_key_buf) {
                    fprintf(stderr, "lyra: --api-key needs a key of 1 to %zu characters\n",
                            sizeof flags->api_key_buf - 1);
                    return -1;
                }
                memcpy(flags->api_key_buf, value, len + 1);
                memset((char *)value, 'x', len); /* argv is writable; /proc/PID/cmdline shows it */
                value = flags->api_key_buf;
            }
            *(const char **)((char *)flags + known[k].offset) = value;
            matched = true;
            break;
        }
        if (!matched)
            argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

int lyra_cli_load_config(struct lyra_config *cfg, const struct lyra_common_flags *flags, unsigned load_flags)
{
    struct lyra_err err = {0};
    int rc = lyra_config_load(cfg, flags->home, flags->config, NULL, load_flags, &err);
    const struct {
        const char *key, *value, *origin;
    } overrides[] = {
        {"server.host", flags->host, "--host"},
        {"server.port", flags->port, "--port"},
        {"models.dir", flags->models_dir, "--models-dir"},
    };
    for (size_t i = 0; rc == 0 && i < sizeof overrides / sizeof *overrides; i++)
        if (overrides[i].value)
            rc = lyra_config_set(cfg, overrides[i].key, overrides[i].value, overrides[i].origin, &err);
    if (rc == 0)
        rc = lyra_config_validate(cfg, &err);
    if (rc < 0) {
        fprintf(stderr, "lyra: configuration error: %s\n", err.msg);
        lyra_config_free(cfg);
        return 1;
    }
    return 0;
}
