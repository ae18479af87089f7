/* events_cmd.c — `lyra events [--since SEQ] [--types PATTERNS]`: tails the
 * daemon's event stream (SSE, GET /events) and prints one JSON line per
 * event, as it arrives.  When the stream drops after it was open (the
 * daemon restarts), it reconnects every second with Last-Event-ID, so no
 * event is lost or printed twice.  SIGINT/SIGTERM end it with status 0.
 * The output is JSON already (one object per line, never coloured);
 * --json is accepted for symmetry with the other commands.  Exit status:
 * 0, 1 the daemon refused, 2 usage, 3 no daemon at the URL. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

struct tail {
    char line[1 << 20]; /* one SSE line; longer ones are cut (an event is at most events.max_payload_bytes) */
    size_t len;
    bool overlong;
    char *data;          /* the event's data line so far */
    unsigned long long id;
    bool have_id;
    bool opened;         /* a 200 came: reconnecting makes sense */
    long status;
};

static void end_line(struct tail *t)
{
    t->line[t->len] = '\0';
    if (t->len == 0) { /* blank line: the event is complete */
        if (t->data) {
            printf("%s\n", t->data);
            fflush(stdout);
            free(t->data);
            t->data = NULL;
        }
    } else if (strncmp(t->line, "data: ", 6) == 0 && !t->overlong) {
        free(t->data);
        t->data = strdup(t->line + 6);
    } else if (strncmp(t->line, "id: ", 4) == 0) {
        t->id = strtoull(t->line + 4, NULL, 10);
        t->have_id = true;
    }
    t->len = 0;
    t->overlong = false;
}

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    struct tail *t = ud;
    size_t total = size * n;
    for (size_t i = 0; i < total; i++) {
        if (p[i] == '\n') {
            end_line(t);
        } else if (p[i] != '\r') {
            if (t->len + 1 < sizeof t->line)
                t->line[t->len++] = p[i];
            else
                t->overlong = true;
        }
    }
    return total;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    return stop_flag ? 1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: lyra events [--since SEQ] [--types PATTERNS] [--json] [--url URL] [--home DIR]\n\n"
               "Prints the daemon's events as they happen, one JSON object per line\n"
               "({seq, ts, type, source, data}), from GET /events (server-sent events).\n"
               "  --since SEQ       first replay every event after SEQ, then go on live\n"
               "  --types PATTERNS  only these types: model.*,job.*,system.startup\n"
               "  --json            the default: the output is JSON lines already\n"
               "Reconnects (without loss) when the daemon restarts; Ctrl-C ends it.\n");
    fputs(LYRA_CLI_KEY_USAGE, f);
}

int lyra_cmd_events(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *since = NULL, *types = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--since") == 0 ? &since
                           : strcmp(a, "--types") == 0 ? &types
                           : strcmp(a, "--url") == 0   ? &url_flag
                                                       : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            continue;
        } else if (dst && i + 1 < argc) {
            *dst = argv[++i];
        } else if (strncmp(a, "--since=", 8) == 0) {
            since = a + 8;
        } else if (strncmp(a, "--types=", 8) == 0) {
            types = a + 8;
        } else if (strncmp(a, "--url=", 6) == 0) {
            url_flag = a + 6;
        } else {
            fprintf(stderr, dst ? "lyra events: %s needs a value\n" : "lyra events: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (since && (!*since || strspn(since, "0123456789") != strlen(since))) {
        fprintf(stderr, "lyra events: --since must be an event seq (a non-negative integer)\n");
        return 2;
    }
    char *base = NULL;
    enum lyra_client_origin origin;
    int rc = lyra_client_locate(url_flag, &flags, &base, &origin);
    if (rc < 0) {
        if (rc != LYRA_ECONFIG)
            fprintf(stderr, "lyra events: %s\n", lyra_strerror(rc));
        return 1;
    }
    char *key = NULL;
    const char *key_source = NULL;
    if (lyra_client_resolve_key(&flags, base, "events", &key, &key_source) < 0) {
        free(base);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *h = curl_easy_init();
    struct tail *t = calloc(1, sizeof *t);
    if (!h || !t) {
        fprintf(stderr, "lyra events: out of memory\n");
        free(base);
        free(key);
        return 1;
    }
    if (since) {
        t->id = strtoull(since, NULL, 10);
        t->have_id = true;
    }
    int status = 0;
    while (!stop_flag) {
        char *esc = types ? curl_easy_escape(h, types, 0) : NULL;
        char url[4096], hdr[64];
        snprintf(url, sizeof url, "%s/events%s%s", base, esc ? "?types=" : "", esc ? esc : "");
        curl_free(esc);
        struct curl_slist *hl = NULL;
        if (t->have_id) {
            snprintf(hdr, sizeof hdr, "Last-Event-ID: %llu", t->id);
            hl = curl_slist_append(hl, hdr);
        }
        hl = curl_slist_append(hl, "Accept: text/event-stream");
        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
        if (key) {
            curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
            curl_easy_setopt(h, CURLOPT_XOAUTH2_BEARER, key);
        }
        t->len = 0;
        CURLcode cc = curl_easy_perform(h);
        curl_slist_free_all(hl);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        if (stop_flag)
            break;
        if (code == 200) {
            t->opened = true;
        } else if (code >= 400) {
            t->line[t->len] = '\0';
            fprintf(stderr, "lyra events: the daemon answered %ld: %s\n", code, t->line);
            if (code == 401)
                fprintf(stderr, "lyra events: %s%s%sset LYRA_API_KEY, pass --api-key or run `lyra login`\n",
                        key ? "the key from " : "", key ? key_source : "", key ? " was refused: " : "");
            status = 1;
            break;
        } else if (!t->opened) {
            char msg[512];
            if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
                cc == CURLE_COULDNT_RESOLVE_PROXY || cc == CURLE_OPERATION_TIMEDOUT) {
                lyra_client_unreachable(base, origin, cc != CURLE_COULDNT_CONNECT && cc != CURLE_OPERATION_TIMEDOUT,
                                        cc == CURLE_OPERATION_TIMEDOUT, msg, sizeof msg);
                status = LYRA_EXIT_NO_DAEMON;
            } else {
                snprintf(msg, sizeof msg, "request to the Lyra daemon at %s failed: %s", base,
                         curl_easy_strerror(cc));
                status = LYRA_EXIT_ERROR;
            }
            fprintf(stderr, "lyra events: %s\n", msg);
            break;
        }
        free(t->data);
        t->data = NULL;
        fprintf(stderr, "lyra events: the stream ended; reconnecting\n");
        struct timespec ts = {1, 0};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !stop_flag)
            ;
    }
    curl_easy_cleanup(h);
    curl_global_cleanup();
    free(t->data);
    free(t);
    free(base);
    if (key)
        explicit_bzero(key, strlen(key));
    free(key);
    return status;
}
