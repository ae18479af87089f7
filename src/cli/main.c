/* main.c — `lyra`: one binary, subcommands. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/output.h"
#include "worker/worker.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"serve", lyra_cmd_serve, "run the daemon (HTTP API on 127.0.0.1:8000 by default)"},
    {"run", lyra_cmd_run, "chat with a model, or answer one prompt (streamed)"},
    {"ls", lyra_cmd_ls, "list the models the daemon knows"},
    {"ps", lyra_cmd_ps, "list the models loaded now"},
    {"status", lyra_cmd_status, "show the daemon's state: memory, CPU, GPUs, cache, loaded models"},
    {"load", lyra_cmd_load, "load a model now and wait until it is ready"},
    {"unload", lyra_cmd_unload, "stop a model's worker and wait until it exited"},
    {"pin", lyra_cmd_pin, "keep a model loaded (loads it), never evicted"},
    {"unpin", lyra_cmd_unpin, "let a pinned model be evicted again"},
    {"events", lyra_cmd_events, "print the daemon's events as they happen (one JSON line each)"},
    {"pull", lyra_cmd_pull, "download a model into the models directory (progress bar)"},
    {"jobs", lyra_cmd_jobs, "list, show or cancel background jobs (warmup, verify, unload, pull)"},
    {"login", lyra_cmd_login, "store an API key for the daemon (read from stdin or a silent prompt)"},
    {"logout", lyra_cmd_logout, "forget the API key stored for the daemon"},
    {"keys", lyra_cmd_keys, "create, list or revoke API keys (admin)"},
    {"users", lyra_cmd_users, "add, list, remove users and service accounts, set their role (admin)"},
    {"config", lyra_cmd_config, "validate, migrate or show the configuration"},
    {"version", lyra_cmd_version, "print the version"},
    {"help", lyra_cmd_help, "show help for a command"},
    {"worker", lyra_cmd_worker, "internal: run one model (started by the daemon)"},
};
#define N_COMMANDS (sizeof commands / sizeof *commands)

int lyra_cmd_help(int argc, char **argv)
{
    if (argc > 1) {
        for (size_t i = 0; i < N_COMMANDS; i++) {
            if (strcmp(argv[1], commands[i].name) == 0 && commands[i].run != lyra_cmd_help) {
                char *sub[] = {argv[1], "--help", NULL};
                return commands[i].run(2, sub);
            }
        }
        fprintf(stderr, "lyra: unknown command '%s'\n", argv[1]);
        return 2;
    }
    printf("Lyra %s — a local multi-model LLM server\n\n"
           "usage: lyra <command> [options]\n\ncommands:\n",
           LYRA_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++)
        printf("  %-8s %s\n", commands[i].name, commands[i].summary);
    printf("\n`lyra <command> --help` shows a command's options.  The client commands send\n"
           "the API key of --api-key-file PATH or --api-key KEY, else of env LYRA_API_KEY,\n"
           "else the one `lyra login` stored for the daemon's URL.  Every client command\n"
           "takes --json (output for scripts).  Exit status: 0 ok, 1 the daemon refused\n"
           "or failed, 2 usage, 3 no daemon at the URL.\n");
    return 0;
}

int lyra_cmd_version(int argc, char **argv)
{
#ifndef LYRA_LLAMA_CPP_VERSION
#define LYRA_LLAMA_CPP_VERSION "unknown"
#endif
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: lyra version [--json]\n\nPrints Lyra's version and the llama.cpp it was built with.\n"
                   "  --json   print {\"version\", \"llama_cpp\"}\n");
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else {
            fprintf(stderr, "lyra version: unknown argument '%s'\n", argv[i]);
            return LYRA_EXIT_USAGE;
        }
    }
    if (json) {
        json_t *j = json_pack("{s:s, s:s}", "version", LYRA_VERSION, "llama_cpp", LYRA_LLAMA_CPP_VERSION);
        int st = j ? lyra_cli_print_json("version", j, false) : LYRA_EXIT_ERROR;
        json_decref(j);
        return st;
    }
    printf("lyra %s (llama.cpp %s)\n", LYRA_VERSION, LYRA_LLAMA_CPP_VERSION);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return lyra_cmd_help(1, argv), 2;
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        return lyra_cmd_help(1, argv);
    if (strcmp(name, "--version") == 0)
        return lyra_cmd_version(1, argv);
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "lyra: unknown command '%s' (try `lyra help`)\n", name);
    return 2;
}
