/* status_cmd.c — `lyra status [--json]`: what GET /status says, as a
 * readable summary for a person (the daemon, memory, CPU, GPUs, the cache,
 * one row per loaded model, warnings and fallbacks) or, with --json, the
 * daemon's JSON as it came.  States and warnings are coloured only on a
 * terminal (cli/output.h).
 *
 * Exit status: 0, 1 the daemon refused (e.g. 403 without status.read) or
 * answered something that is not JSON, 2 usage, 3 no daemon at the URL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: lyra status [--json] [--url URL] [--home DIR] [--config FILE]\n\n"
                 "Shows the daemon's state (GET /status): version, uptime, memory (system,\n"
                 "cgroup, daemon, workers, the cache's budget), CPU, GPUs, cache hits, misses\n"
                 "and evictions, each loaded model (state, memory, pid, GPU layers, idle time,\n"
                 "queue, pinned), warnings and fallbacks.\n"
                 "  --json      print the daemon's JSON as it came instead of the summary\n"
                 "  --url URL   the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "              then the configured host and port, 127.0.0.1:8000)\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

/* 5497728 -> "5.2 MiB" (binary units, as memory is counted). */
static const char *bytes(json_t *v, char *buf, size_t len)
{
    if (!json_is_number(v))
        return "-";
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double b = json_number_value(v);
    size_t u = 0;
    while (b >= 1024 && u + 1 < sizeof units / sizeof *units)
        b /= 1024, u++;
    snprintf(buf, len, u == 0 ? "%.0f %s" : b < 10 ? "%.1f %s" : "%.0f %s", b, units[u]);
    return buf;
}

static const char *duration(json_t *v, char *buf, size_t len)
{
    if (!json_is_number(v))
        return "-";
    long s = (long)(json_number_value(v) + 0.5);
    if (s < 60)
        snprintf(buf, len, "%lds", s);
    else if (s < 3600)
        snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%ldd%02ldh", s / 86400, s % 86400 / 3600);
    return buf;
}

static const char *percent(json_t *v, char *buf, size_t len)
{
    if (!json_is_number(v))
        return "-";
    snprintf(buf, len, "%.1f %%", json_number_value(v));
    return buf;
}

static long long integer(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static const char *string(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s && *s ? s : dflt;
}

/* The colour of a state: green when serving, red when failed, yellow on
 * the way, none otherwise. */
static const char *state_sgr(const char *s)
{
    if (!s)
        return NULL;
    if (strcmp(s, "ready") == 0 || strcmp(s, "loaded") == 0 || strcmp(s, "ok") == 0)
        return LYRA_SGR_GREEN;
    if (strcmp(s, "failed") == 0 || strcmp(s, "critical") == 0 || strcmp(s, "invalid") == 0)
        return LYRA_SGR_RED;
    if (strcmp(s, "available") == 0 || strcmp(s, "off") == 0)
        return NULL;
    return LYRA_SGR_YELLOW;
}

/* The cache's entry for a model (cache.resident[]), NULL when none. */
static json_t *resident_of(json_t *st, const char *name)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(json_object_get(st, "cache"), "resident"), i, r)
    {
        const char *m = json_string_value(json_object_get(r, "model"));
        if (m && name && strcmp(m, name) == 0)
            return r;
    }
    return NULL;
}

enum { NCOL = 9 };

static void print_models(json_t *st, bool color)
{
    static const char *const head[NCOL] = {"MODEL", "STATE", "MEMORY", "PID", "GPU LAYERS",
                                           "IDLE",  "QUEUE", "PINNED", "ERROR"};
    json_t *models = json_object_get(st, "models");
    size_t n = json_array_size(models);
    if (n == 0) {
        printf("\nno models loaded\n");
        return;
    }
    char(*cells)[NCOL][96] = calloc(n, sizeof *cells);
    if (!cells) {
        fprintf(stderr, "lyra status: out of memory\n");
        return;
    }
    int width[NCOL];
    bool show_error = false;
    for (int k = 0; k < NCOL; k++)
        width[k] = (int)strlen(head[k]);
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        const char *name = string(m, "name", "?");
        json_t *r = resident_of(st, name);
        json_t *q = json_object_get(json_object_get(st, "queues"), name);
        char (*row)[96] = cells[i];
        char tmp[32];
        snprintf(row[0], 96, "%s", name);
        snprintf(row[1], 96, "%s", string(m, "state", string(r, "state", "?")));
        /* Measured once the load settled; the cache's estimate until then. */
        json_t *mem = json_object_get(r, "measured_bytes");
        if (!json_is_number(mem) || json_number_value(mem) <= 0)
            mem = json_object_get(r, "bytes");
        if (!json_is_number(mem) || json_number_value(mem) <= 0)
            mem = json_object_get(m, "rss_bytes");
        snprintf(row[2], 96, "%s", bytes(mem, tmp, sizeof tmp));
        json_t *pid = json_object_get(m, "pid");
        if (json_is_integer(pid))
            snprintf(row[3], 96, "%lld", (long long)json_integer_value(pid));
        else
            snprintf(row[3], 96, "-");
        json_t *gl = json_object_get(r, "gpu_layers");
        if (json_is_integer(gl))
            snprintf(row[4], 96, "%lld", (long long)json_integer_value(gl));
        else
            snprintf(row[4], 96, "-");
        json_t *idle = json_object_get(m, "idle_s");
        snprintf(row[5], 96, "%s", duration(idle ? idle : json_object_get(r, "idle_s"), tmp, sizeof tmp));
        if (q)
            snprintf(row[6], 96, "%lld running/%lld, %lld waiting", integer(q, "in_flight"), integer(q, "slots"),
                     integer(q, "waiting"));
        else
            snprintf(row[6], 96, "%lld running", integer(m, "in_flight"));
        snprintf(row[7], 96, "%s", json_is_true(json_object_get(r, "pinned")) ? "yes" : "no");
        const char *state = row[1];
        const char *err = strcmp(state, "failed") == 0 || integer(m, "circuit_open_s") > 0
                              ? string(m, "last_error", NULL)
                              : NULL;
        snprintf(row[8], 96, "%s", err ? err : "");
        show_error |= err != NULL;
        for (int k = 0; k < NCOL; k++)
            if ((int)strlen(row[k]) > width[k])
                width[k] = (int)strlen(row[k]);
    }
    int last = show_error ? NCOL - 1 : NCOL - 2;
    putchar('\n');
    for (long r = -1; r < (long)n; r++) {
        for (int k = 0; k <= last; k++) {
            const char *cell = r < 0 ? head[k] : cells[r][k];
            const char *sgr = r < 0 ? LYRA_SGR_BOLD : k == 1 ? state_sgr(cell) : k == 8 ? LYRA_SGR_RED : NULL;
            lyra_cli_paint(stdout, color, sgr, cell, k == last ? 0 : width[k] + 2);
        }
        putchar('\n');
    }
    free(cells);
}

static void print_status(json_t *st, const char *url, bool color)
{
    char a[32], b[32], c[32], d[32];
    const char *state = string(st, "status", "?");
    printf("Lyra %s at %s  ", string(st, "version", "?"), url);
    lyra_cli_paint(stdout, color, state_sgr(state), state, 0);
    printf("  up %s  (pid %lld)\n", duration(json_object_get(st, "uptime_s"), a, sizeof a),
           integer(json_object_get(st, "process"), "pid"));

    json_t *mem = json_object_get(st, "memory");
    printf("memory     system %s used of %s (%s), %s available",
           bytes(json_object_get(mem, "used_bytes"), a, sizeof a),
           bytes(json_object_get(mem, "limit_bytes"), b, sizeof b),
           percent(json_object_get(mem, "used_percent"), c, sizeof c),
           bytes(json_object_get(mem, "available_bytes"), d, sizeof d));
    const char *level = string(st, "memory_level", string(mem, "watchdog", "?"));
    printf("; level ");
    lyra_cli_paint(stdout, color, state_sgr(level), level, 0);
    putchar('\n');
    json_t *cg = json_object_get(mem, "cgroup");
    if (json_is_object(cg))
        printf("           cgroup %s of %s\n", bytes(json_object_get(cg, "current_bytes"), a, sizeof a),
               bytes(json_object_get(cg, "max_bytes"), b, sizeof b));
    else
        printf("           cgroup no limit\n");
    json_t *cache = json_object_get(st, "cache");
    printf("           daemon %s, workers %s; budget %s held of %s\n",
           bytes(json_object_get(mem, "daemon_bytes"), a, sizeof a),
           bytes(json_object_get(mem, "workers_bytes"), b, sizeof b),
           bytes(json_object_get(cache, "held_bytes"), c, sizeof c),
           bytes(json_object_get(cache, "budget_bytes"), d, sizeof d));

    json_t *cpu = json_object_get(st, "cpu");
    printf("cpu        daemon %s, system %s, %lld cpus\n", percent(json_object_get(cpu, "process_percent"), a, sizeof a),
           percent(json_object_get(cpu, "system_percent"), b, sizeof b), integer(cpu, "cpus"));

    json_t *gpus = json_object_get(st, "gpu");
    if (json_array_size(gpus) == 0)
        printf("gpus       none (models run on the CPU)\n");
    size_t i;
    json_t *g;
    json_array_foreach(gpus, i, g)
    {
        json_t *total = json_object_get(g, "memory_total"), *free_ = json_object_get(g, "memory_free");
        json_t *used = json_is_number(total) && json_is_number(free_)
                           ? json_integer((json_int_t)(json_number_value(total) - json_number_value(free_)))
                           : NULL;
        printf("%s %lld %s: %s used of %s", i == 0 ? "gpus      " : "          ", integer(g, "index"),
               string(g, "description", string(g, "name", "?")), bytes(used, a, sizeof a), bytes(total, b, sizeof b));
        json_decref(used);
        json_t *util = json_object_get(g, "utilization_percent");
        if (json_is_number(util))
            printf(", %s busy", percent(util, c, sizeof c));
        json_t *temp = json_object_get(g, "temperature_c");
        if (json_is_number(temp))
            printf(", %.0f C", json_number_value(temp));
        putchar('\n');
    }

    json_t *ev = json_object_get(cache, "evictions");
    json_t *ratio = json_object_get(cache, "hit_ratio");
    char rbuf[32] = "-";
    if (json_is_number(ratio))
        snprintf(rbuf, sizeof rbuf, "%.0f %%", 100 * json_number_value(ratio));
    printf("cache      %lld hits, %lld misses (hit ratio %s), %lld loads, at most %lld loaded\n",
           integer(cache, "hits"), integer(cache, "misses"), rbuf, integer(cache, "loads"),
           integer(cache, "max_loaded"));
    long long evicted = 0;
    const char *k;
    json_t *v;
    json_object_foreach(ev, k, v) evicted += (long long)json_integer_value(v);
    printf("           %lld evictions", evicted);
    if (evicted > 0) {
        const char *sep = " (";
        json_object_foreach(ev, k, v)
        {
            if (json_integer_value(v) > 0) {
                printf("%s%s %lld", sep, k, (long long)json_integer_value(v));
                sep = ", ";
            }
        }
        putchar(')');
    }
    putchar('\n');

    print_models(st, color);

    json_t *warnings = json_object_get(st, "warnings");
    putchar('\n');
    if (json_array_size(warnings) == 0)
        printf("warnings   none\n");
    json_array_foreach(warnings, i, g)
    {
        printf("%s ", i == 0 ? "warnings  " : "          ");
        lyra_cli_paint(stdout, color, LYRA_SGR_YELLOW, string(g, "code", "warning"), 0);
        const char *model = string(g, "model", NULL);
        printf("%s%s: %s\n", model ? " " : "", model ? model : "", string(g, "message", ""));
    }
    json_t *fb = json_object_get(st, "fallbacks");
    printf("fallbacks  %lld (%lld to fewer GPU layers or the CPU)", integer(fb, "count"), integer(fb, "gpu"));
    json_t *last = json_object_get(fb, "last");
    if (json_is_object(last)) {
        const char *kind = string(last, "kind", "?");
        printf("; last: %s", string(last, "model", "?"));
        if (strcmp(kind, "model") == 0)
            printf(" -> %s", string(last, "to", "?"));
        else
            printf(" -> %s (gpu layers %lld -> %lld)", kind, integer(last, "gpu_layers_from"),
                   integer(last, "gpu_layers_to"));
        const char *e = string(last, "error", NULL);
        if (e)
            printf(": %s", e);
    }
    putchar('\n');
}

int lyra_cmd_status(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return LYRA_EXIT_USAGE;
    const char *url_flag = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strncmp(a, "--url=", 6) == 0) {
            url_flag = a + 6;
        } else if (strcmp(a, "--url") == 0 && i + 1 < argc) {
            url_flag = argv[++i];
        } else {
            fprintf(stderr, strcmp(a, "--url") == 0 ? "lyra status: --url needs a value\n"
                                                    : "lyra status: unknown argument '%s'\n",
                    a);
            usage(stderr);
            return LYRA_EXIT_USAGE;
        }
    }
    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, "status", &c) < 0)
        return LYRA_EXIT_ERROR;
    char *raw = NULL;
    size_t len = 0;
    int rc = lyra_client_get(c, "/status", &raw, &len);
    int status = lyra_cli_exit_code(rc);
    if (rc < 0) {
        fprintf(stderr, "lyra status: %s\n", lyra_client_errmsg(c));
    } else {
        json_error_t jerr;
        json_t *st = json_loadb(raw, len, 0, &jerr);
        if (!json_is_object(st)) {
            fprintf(stderr, "lyra status: the answer from %s/status is not a JSON object: %s\n",
                    lyra_client_url(c), st ? "" : jerr.text);
            status = LYRA_EXIT_ERROR;
        } else if (json) {
            fputs(raw, stdout);
            if (len == 0 || raw[len - 1] != '\n')
                putchar('\n');
        } else {
            print_status(st, lyra_client_url(c), lyra_cli_color(stdout));
        }
        json_decref(st);
    }
    free(raw);
    lyra_client_free(c);
    return status;
}
