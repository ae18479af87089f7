/* jobs_cmd.c — `lyra jobs`: the daemon's background jobs.
 *   lyra jobs [--state S] [--type T] [--limit N] [--json]   table: ID TYPE STATE PROGRESS AGE
 *   lyra jobs show ID [--json]                               one job, every field
 *   lyra jobs cancel ID                                      POST /jobs/ID/cancel
 * Exit status (cli/output.h): 0, 1 when the daemon refused (its message is
 * printed: "job ... not found", "already succeeded"), 2 for a usage error,
 * 3 when no daemon answers at the URL. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "core/util.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: lyra jobs [--state STATE] [--type TYPE] [--limit N] [--json] [--url URL]\n"
                 "       lyra jobs show ID [--json] [--url URL]\n"
                 "       lyra jobs cancel ID [--json] [--url URL]\n\n"
                 "Lists the daemon's background jobs (warmup, verify, unload, pull), newest\n"
                 "first, shows one, or cancels a queued or running one.\n"
                 "  --state S   queued, running, succeeded, failed or cancelled\n"
                 "  --type T    only jobs of this type\n"
                 "  --limit N   at most N jobs (default 100)\n"
                 "  --json      print the daemon's JSON instead of a table\n"
                 "  --url URL   the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "              then the configured host and port)\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

/* 42 -> "42s", 125 -> "2m", 7300 -> "2h", 200000 -> "2d". */
static void human_age(double s, char *buf, size_t len)
{
    long v = s < 0 ? 0 : (long)s;
    if (v < 60)
        snprintf(buf, len, "%lds", v);
    else if (v < 3600)
        snprintf(buf, len, "%ldm", v / 60);
    else if (v < 86400)
        snprintf(buf, len, "%ldh", v / 3600);
    else
        snprintf(buf, len, "%ldd", v / 86400);
}

/* "42%", "1234", "12/100 (rate 3.5/s, eta 25s)" style, compact. */
static void progress_text(const json_t *p, char *buf, size_t len)
{
    uint64_t done = (uint64_t)json_integer_value(json_object_get(p, "done"));
    uint64_t total = (uint64_t)json_integer_value(json_object_get(p, "total"));
    json_t *eta = json_object_get(p, "eta_s");
    if (total > 0) {
        int n = snprintf(buf, len, "%3.0f%%", 100.0 * (double)done / (double)total);
        if (json_is_number(eta) && done < total && n > 0 && (size_t)n < len)
            snprintf(buf + n, len - (size_t)n, " eta %.0fs", json_number_value(eta));
    } else if (done > 0) {
        snprintf(buf, len, "%" PRIu64, done);
    } else {
        snprintf(buf, len, "-");
    }
}

static void print_table(json_t *jobs)
{
    size_t n = json_array_size(jobs);
    if (n == 0) {
        printf("no jobs\n");
        return;
    }
    enum { NC = 5 };
    static const char *const head[NC] = {"ID", "TYPE", "STATE", "PROGRESS", "AGE"};
    char(*cells)[NC][64] = calloc(n, sizeof *cells);
    if (!cells) {
        fprintf(stderr, "lyra jobs: out of memory\n");
        return;
    }
    size_t width[NC];
    for (int k = 0; k < NC; k++)
        width[k] = strlen(head[k]);
    int64_t now = lyra_wall_ms();
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j)
    {
        lyra_fmt(cells[i][0], 64, "%s", json_string_value(json_object_get(j, "id")) ?: "?");
        lyra_fmt(cells[i][1], 64, "%s", json_string_value(json_object_get(j, "type")) ?: "?");
        lyra_fmt(cells[i][2], 64, "%s", json_string_value(json_object_get(j, "state")) ?: "?");
        progress_text(json_object_get(j, "progress"), cells[i][3], 64);
        human_age((double)(now - json_integer_value(json_object_get(j, "created_ms"))) / 1000.0, cells[i][4],
                  64);
        for (int k = 0; k < NC; k++)
            if (strlen(cells[i][k]) > width[k])
                width[k] = strlen(cells[i][k]);
    }
    for (long r = -1; r < (long)n; r++)
        for (int k = 0; k < NC; k++) {
            const char *cell = r < 0 ? head[k] : cells[r][k];
            if (k == NC - 1)
                printf("%s\n", cell);
            else
                printf("%-*s  ", (int)width[k], cell);
        }
    free(cells);
}

static void print_job(json_t *j)
{
    char prog[96];
    progress_text(json_object_get(j, "progress"), prog, sizeof prog);
    printf("id:        %s\ntype:      %s\nstate:     %s\nprogress:  %s\n",
           json_string_value(json_object_get(j, "id")) ?: "?",
           json_string_value(json_object_get(j, "type")) ?: "?",
           json_string_value(json_object_get(j, "state")) ?: "?", prog);
    static const char *const times[] = {"created_ms", "started_ms", "finished_ms"};
    static const char *const labels[] = {"created:   ", "started:   ", "finished:  "};
    for (int k = 0; k < 3; k++) {
        json_t *v = json_object_get(j, times[k]);
        if (json_is_integer(v)) {
            char ts[40];
            lyra_format_ts(json_integer_value(v), ts, sizeof ts);
            printf("%s%s\n", labels[k], ts);
        }
    }
    static const char *const objs[] = {"params", "result"};
    for (int k = 0; k < 2; k++) {
        json_t *v = json_object_get(j, objs[k]);
        if (v && !json_is_null(v)) {
            char *s = json_dumps(v, JSON_COMPACT);
            printf("%-10s %s\n", k == 0 ? "params:" : "result:", s ? s : "?");
            free(s);
        }
    }
    const char *error = json_string_value(json_object_get(j, "error"));
    if (error)
        printf("error:     %s\n", error);
}

/* Appends value to buf, escaped for a URL (path segment or query value). */
static void append_escaped(char *buf, size_t len, const char *value)
{
    size_t n = strlen(buf);
    for (const unsigned char *p = (const unsigned char *)value; *p && n + 4 < len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-_.~", *p))
            buf[n++] = (char)*p;
        else
            n += (size_t)snprintf(buf + n, len - n, "%%%02X", *p);
    }
    buf[n] = '\0';
}

/* Appends "?name=value" or "&name=value". */
static void add_query(char *q, size_t len, const char *name, const char *value)
{
    size_t n = strlen(q);
    snprintf(q + n, len - n, "%c%s=", strchr(q, '?') ? '&' : '?', name);
    append_escaped(q, len, value);
}

int lyra_cmd_jobs(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *state = NULL, *type = NULL, *limit = NULL, *verb = NULL, *id = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--state") == 0   ? &state
                            : strcmp(a, "--type") == 0  ? &type
                            : strcmp(a, "--limit") == 0 ? &limit
                            : strcmp(a, "--url") == 0   ? &url_flag
                                                        : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lyra jobs: %s needs a value\n", a);
                return 2;
            }
            *slot = argv[++i];
        } else if (strncmp(a, "--url=", 6) == 0) {
            url_flag = a + 6;
        } else if (!verb && a[0] != '-' && (strcmp(a, "show") == 0 || strcmp(a, "cancel") == 0)) {
            verb = a;
        } else if (verb && !id && a[0] != '-') {
            id = a;
        } else {
            fprintf(stderr, "lyra jobs: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (verb && !id) {
        fprintf(stderr, "lyra jobs %s: which job? (an ID from `lyra jobs`)\n", verb);
        return 2;
    }
    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, "jobs", &c) < 0)
        return 1;
    int rc;
    char path[512];
    json_t *answer = NULL;
    if (verb && strcmp(verb, "cancel") == 0) {
        snprintf(path, sizeof path, "/jobs/");
        append_escaped(path, sizeof path - 8, id);
        strncat(path, "/cancel", sizeof path - strlen(path) - 1);
        rc = lyra_client_post_json(c, path, NULL, 30, &answer);
    } else {
        char *body = NULL;
        size_t len = 0;
        if (verb) {
            snprintf(path, sizeof path, "/jobs/");
            append_escaped(path, sizeof path, id);
        } else {
            snprintf(path, sizeof path, "/jobs");
            if (state)
                add_query(path, sizeof path, "state", state);
            if (type)
                add_query(path, sizeof path, "type", type);
            if (limit)
                add_query(path, sizeof path, "limit", limit);
        }
        rc = lyra_client_get(c, path, &body, &len);
        if (rc == 0) {
            answer = json_loadb(body, len, 0, NULL);
            if (!answer)
                rc = LYRA_EPARSE;
        }
        free(body);
    }
    if (rc < 0) {
        fprintf(stderr, "lyra jobs: %s\n",
                rc == LYRA_EPARSE ? "the daemon's answer is not JSON" : lyra_client_errmsg(c));
        lyra_client_free(c);
        return lyra_cli_exit_code(rc);
    }
    lyra_client_free(c);
    int status = 0;
    if (json) {
        status = lyra_cli_print_json("jobs", answer, false);
    } else if (verb && strcmp(verb, "cancel") == 0) {
        printf("job %s: %s\n", id, json_string_value(json_object_get(answer, "state")) ?: "cancel requested");
    } else if (verb) {
        print_job(answer);
    } else {
        print_table(json_object_get(answer, "jobs"));
    }
    json_decref(answer);
    return status;
}
