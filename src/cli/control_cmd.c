/* control_cmd.c — `lyra load|unload|pin|unpin NAME`: ask the running daemon
 * to load a model into a worker, stop its worker, or pin / unpin it (a
 * pinned model is never evicted; pin also loads).  Each is one POST to
 * /models/{name}/{action} that answers when the action is done (the load
 * finished, the worker exited), so the command waits for it, up to
 * --timeout seconds.
 *
 * Exit status (cli/output.h): 0 done, 1 the daemon refused or failed (its
 * message is printed, with the Retry-After of a 503 when a model cannot fit
 * now), 2 usage, 3 no daemon at the URL. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

/* Long enough for the daemon's own deadlines (models.load_timeout_s 120 by
 * default; an unload first lets the requests in flight finish). */
#define DEFAULT_TIMEOUT_S 600

struct action {
    const char *name;    /* "load": the command and the path's last part */
    const char *summary; /* what the usage text says it does */
};

static void usage(const struct action *a, FILE *out)
{
    fprintf(out,
            "usage: lyra %s NAME%s [--json] [--timeout S] [--url URL] [--home DIR]\n"
            "       [--config FILE]\n\n%s\n"
            "  --json       print the daemon's JSON answer instead of a sentence\n"
            "  --timeout S  give up after S seconds (default %d)\n"
            "  --url URL    the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
            "               then the configured host and port, 127.0.0.1:8000)\n",
            a->name, strcmp(a->name, "unload") == 0 ? " [--force]" : "", a->summary, DEFAULT_TIMEOUT_S);
    if (strcmp(a->name, "unload") == 0)
        fprintf(out, "  --force      stop the worker at once, failing the requests in flight\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

/* "/models/NAME/ACTION" with NAME percent-encoded (all but RFC 3986's
 * unreserved characters); caller frees.  NULL when out of memory. */
static char *model_path(const char *name, const char *action, bool force)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(name);
    char *enc = malloc(n * 3 + 1), *p = enc;
    if (!enc)
        return NULL;
    for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
            *s == '_' || *s == '.' || *s == '~') {
            *p++ = (char)*s;
        } else {
            *p++ = '%';
            *p++ = hex[*s >> 4];
            *p++ = hex[*s & 15];
        }
    }
    *p = '\0';
    char *path = NULL;
    if (asprintf(&path, "/models/%s/%s%s", enc, action, force ? "?force=true" : "") < 0)
        path = NULL;
    free(enc);
    return path;
}

/* What a person reads for a successful answer. */
static void print_done(const char *action, const char *name, json_t *j)
{
    json_t *v;
    if (strcmp(action, "load") == 0) {
        printf("loaded %s", name);
        if (json_is_number(v = json_object_get(j, "load_ms")))
            printf(" in %.0f ms", json_number_value(v));
        if (json_is_integer(v = json_object_get(j, "pid")))
            printf(" (pid %lld)", (long long)json_integer_value(v));
        putchar('\n');
    } else if (strcmp(action, "unload") == 0) {
        const char *state = json_string_value(json_object_get(j, "state"));
        bool was = json_is_true(json_object_get(j, "was_loaded"));
        /* 202 "draining": requests are running, it unloads when they end;
         * "stopping": the worker did not exit within the daemon's bound. */
        if (state && strcmp(state, "draining") == 0)
            printf("%s is draining: it unloads when its running requests end (--force stops it now)\n", name);
        else if (state && strcmp(state, "stopping") == 0)
            printf("%s is stopping: its worker has not exited yet\n", name);
        else
            printf(was ? "unloaded %s\n" : "%s was not loaded\n", name);
    } else {
        const char *state = json_string_value(json_object_get(j, "state"));
        printf("%s %s", strcmp(action, "pin") == 0 ? "pinned" : "unpinned", name);
        if (state)
            printf(" (%s)", state);
        putchar('\n');
    }
}

static int run_action(const struct action *a, int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *name = NULL;
    bool json = false, force = false;
    long timeout_s = DEFAULT_TIMEOUT_S;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(a, stdout);
            return 0;
        } else if (strcmp(arg, "--json") == 0) {
            json = true;
        } else if (strcmp(arg, "--force") == 0 && strcmp(a->name, "unload") == 0) {
            force = true;
        } else if (strncmp(arg, "--url", 5) == 0 && (arg[5] == '\0' || arg[5] == '=')) {
            if (!(value = arg[5] == '=' ? arg + 6 : i + 1 < argc ? argv[++i] : NULL)) {
                fprintf(stderr, "lyra %s: --url needs a value\n", a->name);
                return 2;
            }
            url_flag = value;
        } else if (strncmp(arg, "--timeout", 9) == 0 && (arg[9] == '\0' || arg[9] == '=')) {
            value = arg[9] == '=' ? arg + 10 : i + 1 < argc ? argv[++i] : NULL;
            char *end = NULL;
            timeout_s = value ? strtol(value, &end, 10) : 0;
            if (!value || end == value || *end != '\0' || timeout_s < 1 || timeout_s > 86400) {
                fprintf(stderr, "lyra %s: --timeout needs a number of seconds from 1 to 86400\n", a->name);
                return 2;
            }
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "lyra %s: unknown option '%s'\n", a->name, arg);
            usage(a, stderr);
            return 2;
        } else if (!name) {
            name = arg;
        } else {
            fprintf(stderr, "lyra %s: one model at a time ('%s' and '%s')\n", a->name, name, arg);
            return 2;
        }
    }
    if (!name || !*name) {
        fprintf(stderr, "lyra %s: which model? (`lyra ls` lists them)\n", a->name);
        usage(a, stderr);
        return 2;
    }

    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, a->name, &c) < 0)
        return 1;
    int rc;
    char *path = model_path(name, a->name, force);
    json_t *answer = NULL;
    rc = path ? lyra_client_post_json(c, path, NULL, timeout_s, &answer) : LYRA_ENOMEM;
    free(path);
    int status = 0;
    if (rc < 0) {
        long retry = lyra_client_retry_after(c);
        fprintf(stderr, "lyra %s: %s", a->name,
                rc == LYRA_ENOMEM && !path ? "out of memory" : lyra_client_errmsg(c));
        if (lyra_client_status(c) == 503 && retry >= 0)
            fprintf(stderr, " (retry after %ld s)", retry);
        fputc('\n', stderr);
        status = lyra_cli_exit_code(rc);
    } else if (json) {
        status = lyra_cli_print_json(a->name, answer, false);
    } else {
        print_done(a->name, name, answer);
    }
    json_decref(answer);
    lyra_client_free(c);
    return status;
}

int lyra_cmd_load(int argc, char **argv)
{
    static const struct action a = {
        "load",
        "Loads model NAME into a worker process now and waits until it is ready;\n"
        "prints how long the load took.  A model that does not fit beside the loaded\n"
        "ones evicts idle unpinned ones first, as a request would.\n",
    };
    return run_action(&a, argc, argv);
}

int lyra_cmd_unload(int argc, char **argv)
{
    static const struct action a = {
        "unload",
        "Stops the worker of model NAME and waits until its process exited.  With\n"
        "requests running it takes no new ones and unloads when they end (the command\n"
        "says so and returns); --force stops it at once.  A pinned model needs --force.\n",
    };
    return run_action(&a, argc, argv);
}

int lyra_cmd_pin(int argc, char **argv)
{
    static const struct action a = {
        "pin",
        "Pins model NAME: loads it now if it is not loaded, and keeps it loaded (it is\n"
        "not evicted to make room for another model) until `lyra unpin`.\n",
    };
    return run_action(&a, argc, argv);
}

int lyra_cmd_unpin(int argc, char **argv)
{
    static const struct action a = {
        "unpin",
        "Unpins model NAME: it stays loaded for now, and may be evicted again.\n",
    };
    return run_action(&a, argc, argv);
}
