/* models_cmd.c — `lyra ls` (the models the daemon knows, GET /models) and
 * `lyra ps` (the models resident in worker processes, GET
 * /models?state=loaded), each as a table or, with --json, as JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

/* --- tables --------------------------------------------------------- */

#define MAX_COLS 8

struct table {
    size_t n_cols, n_rows, cap;
    const char *head[MAX_COLS];
    char **cells; /* n_rows * n_cols, owned */
    size_t width[MAX_COLS];
};

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* Adds a row of n_cols cells (copied; NULL shows as "-").  Returns false
 * when out of memory. */
static bool table_row(struct table *t, const char *const *cells)
{
    if (t->n_rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **c = realloc(t->cells, cap * t->n_cols * sizeof *c);
        if (!c)
            return false;
        t->cells = c;
        t->cap = cap;
    }
    char **row = t->cells + t->n_rows * t->n_cols;
    for (size_t i = 0; i < t->n_cols; i++) {
        row[i] = strdup(cells[i] ? cells[i] : "-");
        if (!row[i]) {
            while (i-- > 0)
                free(row[i]);
            return false;
        }
    }
    t->n_rows++;
    return true;
}

/* Prints the table left-aligned with two spaces between columns; a column
 * whose cells are all "-" or empty is left out when `drop_empty` is its
 * bit. */
static void table_print(struct table *t, unsigned drop_empty)
{
    bool show[MAX_COLS];
    for (size_t k = 0; k < t->n_cols; k++) {
        t->width[k] = strlen(t->head[k]);
        show[k] = !(drop_empty & (1u << k));
        for (size_t r = 0; r < t->n_rows; r++) {
            const char *cell = t->cells[r * t->n_cols + k];
            size_t w = strlen(cell);
            if (w > t->width[k])
                t->width[k] = w;
            if (w > 0 && strcmp(cell, "-") != 0)
                show[k] = true;
        }
    }
    size_t last = 0;
    for (size_t k = 0; k < t->n_cols; k++)
        if (show[k])
            last = k;
    for (long r = -1; r < (long)t->n_rows; r++) {
        for (size_t k = 0; k < t->n_cols; k++) {
            if (!show[k])
                continue;
            const char *cell = r < 0 ? t->head[k] : t->cells[(size_t)r * t->n_cols + k];
            if (k == last)
                printf("%s\n", cell);
            else
                printf("%-*s  ", (int)t->width[k], cell);
        }
    }
}

/* --- units ---------------------------------------------------------- */

/* 5497728 -> "5.5 MB" (decimal units, as disk sizes are quoted). */
static void human_bytes(double v, char *buf, size_t len)
{
    static const char *units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    size_t u = 0;
    while (v >= 1000 && u + 1 < sizeof units / sizeof *units) {
        v /= 1000;
        u++;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
}

/* 4489856 -> "4.5M", 135000000 -> "135M", 7241732096 -> "7.2B". */
static void human_count(double v, char *buf, size_t len)
{
    static const char *units[] = {"", "K", "M", "B", "T"};
    size_t u = 0;
    while (v >= 1000 && u + 1 < sizeof units / sizeof *units) {
        v /= 1000;
        u++;
    }
    snprintf(buf, len, u == 0 || v >= 10 ? "%.0f%s" : "%.1f%s", v, units[u]);
}

/* 42.3 -> "42s", 125 -> "2m05s", 7300 -> "2h01m". */
static void human_seconds(double s, char *buf, size_t len)
{
    long v = (long)(s + 0.5);
    if (v < 60)
        snprintf(buf, len, "%lds", v);
    else if (v < 3600)
        snprintf(buf, len, "%ldm%02lds", v / 60, v % 60);
    else
        snprintf(buf, len, "%ldh%02ldm", v / 3600, v % 3600 / 60);
}

/* --- shared set-up -------------------------------------------------- */

struct cmd {
    const char *name;    /* "ls" */
    const char *summary; /* the usage text after the options line */
    const char *path;    /* what to GET */
    const char *json;    /* what --json prints */
};

static void usage(const struct cmd *cmd, FILE *out)
{
    fprintf(out,
            "usage: lyra %s [--json] [--url URL] [--home DIR] [--config FILE]\n\n%s\n"
            "  --json      %s\n"
            "  --url URL   the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
            "              then the configured host and port, 127.0.0.1:8000)\n",
            cmd->name, cmd->summary, cmd->json);
    fputs(LYRA_CLI_KEY_USAGE, out);
}

/* Parses the options and GETs cmd->path.  Returns -1 with *out (caller
 * decrefs) and, with --json, *raw (caller frees) to go on; else the exit
 * status. */
static int fetch(const struct cmd *cmd, int argc, char **argv, json_t **out, char **raw)
{
    *out = NULL;
    *raw = NULL;
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(cmd, stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strncmp(argv[i], "--url=", 6) == 0) {
            url_flag = argv[i] + 6;
        } else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
            url_flag = argv[++i];
        } else {
            fprintf(stderr,
                    strcmp(argv[i], "--url") == 0 ? "lyra %s: --url needs a value\n"
                                                  : "lyra %s: unknown argument '%s'\n",
                    cmd->name, argv[i]);
            usage(cmd, stderr);
            return 2;
        }
    }
    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, cmd->name, &c) < 0)
        return 1;
    int rc;
    size_t len = 0;
    rc = lyra_client_get(c, cmd->path, raw, &len);
    if (rc == 0) {
        json_error_t jerr;
        *out = json_loadb(*raw, len, 0, &jerr);
        if (!*out) {
            fprintf(stderr, "lyra %s: the answer from %s%s is not JSON: %s\n", cmd->name, lyra_client_url(c),
                    cmd->path, jerr.text);
            rc = LYRA_EPARSE;
        }
    } else {
        fprintf(stderr, "lyra %s: %s\n", cmd->name, lyra_client_errmsg(c));
    }
    lyra_client_free(c);
    if (rc < 0 || !json) {
        free(*raw);
        *raw = NULL;
    }
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
        return lyra_cli_exit_code(rc);
    }
    return -1;
}

static int print_raw(char *raw)
{
    size_t n = strlen(raw);
    fputs(raw, stdout);
    if (n == 0 || raw[n - 1] != '\n')
        putchar('\n');
    free(raw);
    return 0;
}

/* --- lyra ls -------------------------------------------------------- */

int lyra_cmd_ls(int argc, char **argv)
{
    static const struct cmd cmd = {
        "ls",
        "Lists the models the daemon knows: each *.gguf in models.dir and each entry of\n"
        "the configuration, with its state, and the reason for an invalid one.\n",
        "/models",
        "print the daemon's JSON (GET /models) instead of a table",
    };
    json_t *j;
    char *raw;
    int status = fetch(&cmd, argc, argv, &j, &raw);
    if (status >= 0)
        return status;
    if (raw) {
        json_decref(j);
        return print_raw(raw);
    }
    json_t *models = json_object_get(j, "models");
    if (!json_is_array(models)) {
        fprintf(stderr, "lyra ls: the daemon's answer has no \"models\" list\n");
        json_decref(j);
        return 1;
    }
    if (json_array_size(models) == 0) {
        const char *dir = json_string_value(json_object_get(j, "dir"));
        printf("no models%s%s\n", dir ? " in " : "", dir ? dir : "");
        json_decref(j);
        return 0;
    }
    struct table t = {.n_cols = 7, .head = {"NAME", "STATE", "SIZE", "PARAMS", "QUANT", "CONTEXT", "ERROR"}};
    size_t i;
    json_t *m;
    status = 0;
    json_array_foreach(models, i, m) {
        char size[32] = "-", params[32] = "-", ctx[32] = "-";
        json_t *v;
        if (json_is_number(v = json_object_get(m, "size_bytes")))
            human_bytes(json_number_value(v), size, sizeof size);
        if (json_is_number(v = json_object_get(m, "parameters")) && json_number_value(v) > 0)
            human_count(json_number_value(v), params, sizeof params);
        if (json_is_integer(v = json_object_get(m, "context_length")) && json_integer_value(v) > 0)
            snprintf(ctx, sizeof ctx, "%lld", (long long)json_integer_value(v));
        const char *cells[] = {
            json_string_value(json_object_get(m, "name")),
            json_string_value(json_object_get(m, "state")),
            size,
            params,
            json_string_value(json_object_get(m, "quantization")),
            ctx,
            json_string_value(json_object_get(m, "error")),
        };
        if (!table_row(&t, cells)) {
            fprintf(stderr, "lyra ls: out of memory\n");
            status = 1;
            break;
        }
    }
    if (status == 0)
        table_print(&t, 1u << 6);
    table_free(&t);
    json_decref(j);
    return status;
}

/* --- lyra ps -------------------------------------------------------- */

/* Whether a GET /models entry is resident (a worker holds or is starting or
 * stopping it).  The daemon filters with ?state=loaded; the CLI checks too,
 * so that a daemon that ignores the query does not list every file. */
static bool resident(json_t *m)
{
    const char *state = json_string_value(json_object_get(m, "state"));
    return state && strcmp(state, "available") != 0 && strcmp(state, "invalid") != 0;
}

int lyra_cmd_ps(int argc, char **argv)
{
    static const struct cmd cmd = {
        "ps",
        "Lists the models loaded in worker processes (GET /models?state=loaded):\n"
        "worker pid, state, whether pinned, measured memory, requests in flight, idle time.\n",
        "/models?state=loaded",
        "print the loaded models' objects as a JSON list instead of a table",
    };
    json_t *j;
    char *raw;
    int status = fetch(&cmd, argc, argv, &j, &raw);
    if (status >= 0)
        return status;
    bool as_json = raw != NULL;
    free(raw); /* --json prints the filtered list, not the whole answer */
    json_t *all = json_object_get(j, "models");
    json_t *models = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(all, i, m) {
        if (resident(m) && json_array_append(models, m) < 0) {
            json_decref(models);
            models = NULL;
            break;
        }
    }
    json_decref(j);
    if (!models) {
        fprintf(stderr, "lyra ps: out of memory\n");
        return 1;
    }
    if (as_json) {
        char *s = json_dumps(models, JSON_INDENT(2));
        json_decref(models);
        if (!s) {
            fprintf(stderr, "lyra ps: out of memory\n");
            return 1;
        }
        return print_raw(s);
    }
    if (json_array_size(models) == 0) {
        printf("no models loaded\n");
        json_decref(models);
        return 0;
    }
    struct table t = {.n_cols = 8,
                      .head = {"NAME", "PID", "STATE", "PINNED", "MEMORY", "IN FLIGHT", "IDLE", "ERROR"}};
    status = 0;
    json_array_foreach(models, i, m) {
        char pid[32] = "-", mem[32] = "-", inflight[32] = "-", idle[32] = "-";
        json_t *v;
        if (json_is_integer(v = json_object_get(m, "pid")))
            snprintf(pid, sizeof pid, "%lld", (long long)json_integer_value(v));
        /* What the worker was measured to use; its RSS until it was measured. */
        if ((json_is_number(v = json_object_get(m, "measured_bytes")) && json_number_value(v) > 0) ||
            (json_is_number(v = json_object_get(m, "rss_bytes")) && json_number_value(v) > 0))
            human_bytes(json_number_value(v), mem, sizeof mem);
        if (json_is_integer(v = json_object_get(m, "in_flight")))
            snprintf(inflight, sizeof inflight, "%lld", (long long)json_integer_value(v));
        if (json_is_number(v = json_object_get(m, "idle_s")))
            human_seconds(json_number_value(v), idle, sizeof idle);
        v = json_object_get(m, "pinned");
        const char *pinned = json_is_boolean(v) ? (json_is_true(v) ? "yes" : "no") : NULL;
        /* last_error outlives a recovery: show it only while it holds. */
        const char *state = json_string_value(json_object_get(m, "state"));
        const char *error = state && strcmp(state, "failed") == 0
                                ? json_string_value(json_object_get(m, "last_error"))
                                : NULL;
        const char *cells[] = {
            json_string_value(json_object_get(m, "name")), pid, state, pinned, mem, inflight, idle, error,
        };
        if (!table_row(&t, cells)) {
            fprintf(stderr, "lyra ps: out of memory\n");
            status = 1;
            break;
        }
    }
    if (status == 0)
        table_print(&t, 1u << 7);
    table_free(&t);
    json_decref(models);
    return status;
}
