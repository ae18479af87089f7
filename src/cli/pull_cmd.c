/* pull_cmd.c — `lyra pull SOURCE [--name N] [--sha256 H]`: asks the daemon
 * to pull a model (POST /models/pull, a background job) and follows the job
 * (GET /jobs/{id} every 250 ms) with a progress bar on stderr: bytes, rate,
 * ETA.  The job belongs to the daemon, so the command can lose it for a
 * while: when the daemon cannot be reached (a restart), it keeps the job id,
 * finds the daemon again (its URL may have changed: serve.json) and goes on,
 * giving up after 60 s without one.  Interrupting the command does not
 * cancel the pull.
 *
 * The bar is drawn only when stderr is a terminal (and TERM is not dumb);
 * to a pipe or a log it prints one line per 10 % instead; --json draws
 * nothing and prints the job's final state (GET /jobs/{id}) on stdout.
 *
 * Exit status (cli/output.h): 0 the job succeeded, 1 it failed or was
 * cancelled (its error is printed) or the daemon refused, 2 usage, 3 no
 * daemon at the URL (at the start, or for 60 s while following). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "core/util.h"

#define POLL_MS 250
#define GIVE_UP_MS 60000

static void usage(FILE *out)
{
    fprintf(out, "usage: lyra pull SOURCE [--name N] [--sha256 H] [--json] [--url URL]\n"
                 "       [--home DIR] [--config FILE]\n\n"
                 "Downloads a GGUF model into the daemon's models directory and shows its\n"
                 "progress.  SOURCE is an http(s) URL, hf://ORG/REPO/FILE.gguf (Hugging Face;\n"
                 "the daemon's HF_TOKEN is used), or a local file path (copied).\n"
                 "  --name N     the model's name (default: the file name without .gguf)\n"
                 "  --sha256 H   the expected SHA-256; a mismatch fails and keeps nothing\n"
                 "  --json       no progress; print the job's final state as JSON on stdout\n"
                 "  --url URL    the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "               then the configured host and port, 127.0.0.1:8000)\n"
                 "Interrupting the command leaves the pull running in the daemon.\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void human_bytes(double b, char *out, size_t cap)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4)
        b /= 1024, u++;
    snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

struct bar {
    bool quiet; /* --json: nothing drawn */
    bool tty;
    bool drawn;
    int64_t last_ms;
    double last_done;
    double rate; /* bytes/s, smoothed, when the job gives none */
    int last_step; /* not a terminal: the last 10% step printed */
};

/* Draws the job's progress: one line redrawn in place on a terminal;
 * otherwise (a log, a pipe) one line per 10 % step, as wget does. */
static void draw(struct bar *b, const char *name, json_t *progress)
{
    double done = json_number_value(json_object_get(progress, "done"));
    double total = json_number_value(json_object_get(progress, "total"));
    json_t *jr = json_object_get(progress, "rate"), *je = json_object_get(progress, "eta_s");
    int64_t now = lyra_now_ms();
    if (b->last_ms && now > b->last_ms && done >= b->last_done) {
        double r = (done - b->last_done) * 1000.0 / (double)(now - b->last_ms);
        b->rate = b->rate ? 0.7 * b->rate + 0.3 * r : r;
    }
    b->last_ms = now;
    b->last_done = done;
    double rate = json_is_number(jr) ? json_number_value(jr) : b->rate;
    double eta = json_is_number(je)         ? json_number_value(je)
                 : rate > 0 && total > done ? (total - done) / rate
                                            : -1;
    char d[32], t[32], r[32], e[32] = "--:--";
    if (b->quiet)
        return;
    if (!b->tty) {
        int step = total > 0 ? (int)(10 * done / total) : 0;
        if (total > 0 && step > b->last_step) {
            b->last_step = step;
            human_bytes(done, d, sizeof d);
            human_bytes(total, t, sizeof t);
            fprintf(stderr, "%s: %3d%%  %s / %s\n", name, step * 10, d, t);
        }
        return;
    }
    human_bytes(done, d, sizeof d);
    human_bytes(total, t, sizeof t);
    human_bytes(rate, r, sizeof r);
    if (eta >= 0 && eta < 360000)
        snprintf(e, sizeof e, "%d:%02d", (int)eta / 60, (int)eta % 60);
    char bar[31];
    int filled = total > 0 ? (int)(30 * (done / total > 1 ? 1 : done / total)) : 0;
    for (int i = 0; i < 30; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[30] = '\0';
    if (total > 0)
        fprintf(stderr, "\r%s [%s] %3.0f%%  %s / %s  %s/s  ETA %s\033[K", name, bar, 100 * done / total, d, t,
                r, e);
    else
        fprintf(stderr, "\r%s  %s  %s/s\033[K", name, d, r);
    b->drawn = true;
}

static void end_bar(struct bar *b)
{
    if (b->drawn)
        fputc('\n', stderr);
    b->drawn = false;
}

/* (Re)opens a client on wherever the daemon is now. */
static int connect_daemon(const char *url_flag, const struct lyra_common_flags *flags, struct lyra_client **c,
                          bool quiet)
{
    char *url = NULL, *key = NULL;
    const char *source = NULL;
    enum lyra_client_origin origin;
    int rc = lyra_client_locate(url_flag, flags, &url, &origin);
    if (rc < 0)
        return rc;
    struct lyra_err err = {0};
    lyra_client_free(*c);
    *c = NULL;
    /* A key problem (an unreadable key file) is printed even when quiet:
     * it does not go away by waiting. */
    rc = lyra_client_resolve_key(flags, url, "pull", &key, &source);
    if (rc == 0 && (rc = lyra_client_new(c, url, &err)) < 0 && !quiet)
        fprintf(stderr, "lyra pull: %s\n", err.msg);
    if (rc == 0)
        lyra_client_set_origin(*c, origin);
    if (rc == 0 && key && (rc = lyra_client_set_key(*c, key, source)) < 0)
        fprintf(stderr, "lyra pull: %s\n", lyra_client_errmsg(*c));
    if (rc < 0) {
        lyra_client_free(*c);
        *c = NULL;
    }
    if (key)
        explicit_bzero(key, strlen(key));
    free(key);
    free(url);
    return rc;
}

/* Follows job `id` until it ends.  Returns the exit status. */
static int follow(struct lyra_client **c, const char *url_flag, const struct lyra_common_flags *flags,
                  const char *id, const char *name, bool json)
{
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s", id);
    const char *term = getenv("TERM");
    struct bar b = {.quiet = json, .tty = lyra_cli_is_tty(stderr) && !(term && strcmp(term, "dumb") == 0)};
    int64_t away_since = 0;
    for (;;) {
        char *body = NULL;
        int rc = *c ? lyra_client_get(*c, path, &body, NULL) : LYRA_EUNAVAILABLE;
        /* Not there, cut off without an answer, or starting / stopping (503):
         * a daemon on its way down or up, not an answer about the job. */
        long http = *c ? lyra_client_status(*c) : 0;
        bool away =
            rc == LYRA_EUNAVAILABLE || rc == LYRA_ETIMEOUT || (rc == LYRA_EIO && (http == 0 || http == 503));
        if (away) {
            int64_t now = lyra_now_ms();
            if (!away_since) {
                away_since = now;
                end_bar(&b);
                fprintf(stderr, "lyra pull: the daemon is not answering; waiting for it (job %s)\n", id);
            } else if (now - away_since > GIVE_UP_MS) {
                fprintf(stderr,
                        "lyra pull: no daemon for %d s; the job %s goes on when it is back "
                        "(`lyra jobs`)\n",
                        GIVE_UP_MS / 1000, id);
                return LYRA_EXIT_NO_DAEMON;
            }
            sleep_ms(POLL_MS);
            connect_daemon(url_flag, flags, c, true);
            continue;
        }
        if (rc < 0) {
            end_bar(&b);
            fprintf(stderr, "lyra pull: job %s: %s\n", id, lyra_client_errmsg(*c));
            return 1;
        }
        if (away_since) {
            fprintf(stderr, "lyra pull: the daemon is back\n");
            away_since = 0;
        }
        json_t *job = json_loads(body, 0, NULL);
        free(body);
        const char *state = json_string_value(json_object_get(job, "state"));
        if (!state) {
            json_decref(job);
            end_bar(&b);
            fprintf(stderr, "lyra pull: the daemon's answer for job %s has no state\n", id);
            return 1;
        }
        draw(&b, name, json_object_get(job, "progress"));
        int status = -1;
        bool over = strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
                    strcmp(state, "cancelled") == 0;
        if (json && over) {
            status = strcmp(state, "succeeded") == 0 ? 0 : 1;
            if (lyra_cli_print_json("pull", job, false) != 0)
                status = 1;
        } else if (strcmp(state, "succeeded") == 0) {
            end_bar(&b);
            json_t *r = json_object_get(job, "result");
            char size[32];
            human_bytes(json_number_value(json_object_get(r, "bytes")), size, sizeof size);
            printf("pulled %s (%s) into %s\nsha256 %s\n",
                   json_string_value(json_object_get(r, "name")) ?: name, size,
                   json_string_value(json_object_get(r, "path")) ?: "?",
                   json_string_value(json_object_get(r, "sha256")) ?: "?");
            status = 0;
        } else if (strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0) {
            end_bar(&b);
            const char *e = json_string_value(json_object_get(job, "error"));
            fprintf(stderr, "lyra pull: %s %s%s%s\n", name, state, e ? ": " : "", e ? e : "");
            status = 1;
        }
        json_decref(job);
        if (status >= 0)
            return status;
        sleep_ms(POLL_MS);
    }
}

int lyra_cmd_pull(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *source = NULL, *name = NULL, *sha = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **dst = NULL;
        size_t n = 0;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strncmp(arg, "--url", n = 5) == 0 && (arg[n] == '\0' || arg[n] == '=')) {
            dst = &url_flag;
        } else if (strncmp(arg, "--name", n = 6) == 0 && (arg[n] == '\0' || arg[n] == '=')) {
            dst = &name;
        } else if (strncmp(arg, "--sha256", n = 8) == 0 && (arg[n] == '\0' || arg[n] == '=')) {
            dst = &sha;
        } else if (strcmp(arg, "--json") == 0) {
            json = true;
            continue;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "lyra pull: unknown option '%s'\n", arg);
            usage(stderr);
            return 2;
        } else if (!source) {
            source = arg;
        } else {
            fprintf(stderr, "lyra pull: one source at a time ('%s' and '%s')\n", source, arg);
            return 2;
        }
        if (dst && !(*dst = arg[n] == '=' ? arg + n + 1 : i + 1 < argc ? argv[++i] : NULL)) {
            fprintf(stderr, "lyra pull: %.*s needs a value\n", (int)n, arg);
            return 2;
        }
    }
    if (!source || !*source) {
        fprintf(stderr, "lyra pull: what to pull? (a URL, hf://ORG/REPO/FILE.gguf or a file)\n");
        usage(stderr);
        return 2;
    }
    /* A local path means this machine's file as seen from here: the daemon
     * runs elsewhere in the file system tree (its own working directory). */
    char abs[PATH_MAX];
    bool remote = strncmp(source, "http://", 7) == 0 || strncmp(source, "https://", 8) == 0 ||
                  strncmp(source, "hf://", 5) == 0;
    if (!remote && realpath(source, abs))
        source = abs;

    struct lyra_client *c = NULL;
    int rc = connect_daemon(url_flag, &flags, &c, false);
    if (rc < 0) {
        if (rc != LYRA_ECONFIG && !c)
            fprintf(stderr, "lyra pull: %s\n", lyra_strerror(rc));
        return 1;
    }
    json_t *req = json_pack("{s:s, s:s?, s:s?}", "source", source, "name", name, "sha256", sha);
    json_t *answer = NULL;
    rc = req ? lyra_client_post_json(c, "/models/pull", req, 30, &answer) : LYRA_ENOMEM;
    json_decref(req);
    if (rc < 0) {
        fprintf(stderr, "lyra pull: %s\n",
                rc == LYRA_ENOMEM && !req ? "out of memory" : lyra_client_errmsg(c));
        lyra_client_free(c);
        return lyra_cli_exit_code(rc);
    }
    const char *id = json_string_value(json_object_get(json_object_get(answer, "job"), "id"));
    if (!id) {
        fprintf(stderr, "lyra pull: the daemon's answer has no job id\n");
        json_decref(answer);
        lyra_client_free(c);
        return 1;
    }
    char job_id[64];
    snprintf(job_id, sizeof job_id, "%s", id);
    json_decref(answer);
    char shown[160];
    if (!name) {
        const char *slash = strrchr(source, '/'), *base = slash ? slash + 1 : source;
        size_t n = lyra_utf8_clip(base, sizeof shown - 1); /* cut on a character boundary */
        memcpy(shown, base, n);
        shown[n] = '\0';
        name = shown;
    }
    if (!json)
        fprintf(stderr, "pulling %s (job %s)\n", name, job_id);
    int status = follow(&c, url_flag, &flags, job_id, name, json);
    lyra_client_free(c);
    return status;
}
