/* cli.h — the `lyra` command's subcommands.  Each takes argc/argv starting
 * at its own name and returns the process exit status. */
#ifndef LYRA_CLI_H
#define LYRA_CLI_H

#include "core/config.h"

int lyra_cmd_serve(int argc, char **argv);
int lyra_cmd_config(int argc, char **argv);
int lyra_cmd_run(int argc, char **argv);
int lyra_cmd_ls(int argc, char **argv);
int lyra_cmd_ps(int argc, char **argv);
int lyra_cmd_status(int argc, char **argv);
int lyra_cmd_load(int argc, char **argv);
int lyra_cmd_unload(int argc, char **argv);
int lyra_cmd_pin(int argc, char **argv);
int lyra_cmd_unpin(int argc, char **argv);
int lyra_cmd_events(int argc, char **argv);
int lyra_cmd_pull(int argc, char **argv);
int lyra_cmd_jobs(int argc, char **argv);
int lyra_cmd_login(int argc, char **argv);
int lyra_cmd_logout(int argc, char **argv);
int lyra_cmd_keys(int argc, char **argv);
int lyra_cmd_users(int argc, char **argv);
int lyra_cmd_version(int argc, char **argv);
int lyra_cmd_help(int argc, char **argv);

/* Flags every command that reads the configuration accepts.  The strings
 * are borrowed from argv, except api_key: --api-key's value is copied into
 * api_key_buf and overwritten with 'x' in argv, so that it shows in `ps`
 * only for the moment before the command parsed it (--api-key-file, the
 * environment or `lyra login` avoid even that). */
struct lyra_common_flags {
    const char *home, *config, *host, *port, *models_dir;
    const char *api_key;      /* --api-key: points into api_key_buf, or NULL */
    const char *api_key_file; /* --api-key-file PATH */
    char api_key_buf[257];
};

/* The usage lines of the API key flags, for every client command. */
#define LYRA_CLI_KEY_USAGE                                                                                   \
    "  --api-key-file PATH  read the API key from PATH (its first line)\n"                                   \
    "  --api-key KEY        the API key (visible to `ps` while the command starts;\n"                        \
    "                       default: env LYRA_API_KEY, then the key `lyra login`\n"                          \
    "                       stored for the daemon's URL)\n"

/* Parses --home --config --host --port --models-dir --api-key
 * --api-key-file (also --flag=value) out of argv, compacting the rest in
 * place; returns the new argc, or -1 after printing an error. */
int lyra_cli_common_flags(int argc, char **argv, struct lyra_common_flags *flags);

/* Loads the configuration with the flags applied on top; prints the error
 * and returns non-zero on failure. */
int lyra_cli_load_config(struct lyra_config *cfg, const struct lyra_common_flags *flags, unsigned load_flags);

#endif
