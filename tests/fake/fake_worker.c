/* fake_worker.c — `lyra-fake-worker`: a stand-in for `lyra worker` that
 * breaks the protocol on purpose, for the tests of the daemon's supervisor
 * (it_supervisor).  The daemon runs it through LYRA_WORKER_EXE.
 *
 * Its behaviour comes from the model name (--name): "fake-<mode>".
 *   ok             ready, answers status and generate ("done" at once)
 *   never-ready    heartbeats, never "ready" (the load timeout must fire)
 *   slow-ready     "ready" after 3 s (a request waits for the load)
 *   second-ready   "ready" twice
 *   garbage        on generate: a frame that is not JSON
 *   oversize       on generate: a length prefix over the frame limit
 *   mislabelled    on generate: "done" for a request that was never sent
 *   bad-field      on generate: a "token" whose text is a number
 *   hang           on generate: "started", then nothing (heartbeats go on,
 *                  their step count stays: the progress deadline must fire)
 *   silent         ready, then no heartbeat any more
 *   crash          on generate: exits with status 3 before answering
 *   flaky          like crash for its first three workers (counted in
 *                  $LYRA_WORKER_FAKE_COUNT), then like ok
 *   stubborn       ignores EOF and SIGTERM (the stop must escalate to
 *                  SIGKILL)
 *   chatty         like ok, while a thread floods stderr with lines
 * Every start appends a line to $LYRA_WORKER_FAKE_COUNT (if set), so a test
 * can count how many workers the daemon started. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"

static int hb_fd = -1, hb_ms = 1000;
static atomic_bool hb_stop;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void *heartbeat_main(void *arg)
{
    while (!atomic_load(&hb_stop)) {
        json_t *m = json_pack("{s:s, s:i, s:b}", "type", "heartbeat", "steps", 0, "busy", 0);
        lyra_frame_write(hb_fd, m, NULL);
        json_decref(m);
        sleep_ms(hb_ms);
    }
    return NULL;
}

static void *chatter_main(void *arg)
{
    char line[128];
    for (unsigned long i = 0;; i++) {
        int n = snprintf(line, sizeof line, "chatter line %lu: the same noise again and again\n", i);
        if (write(2, line, (size_t)n) < 0 && errno != EINTR && errno != EAGAIN)
            return NULL;
    }
}

static void send_frame(int fd, json_t *m)
{
    lyra_frame_write(fd, m, NULL);
    json_decref(m);
}

static void send_raw(int fd, const void *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data = (const char *)data + n;
        len -= (size_t)n;
    }
}

static void ready(int fd, const char *name)
{
    send_frame(fd, json_pack("{s:s, s:s, s:f, s:i, s:i}", "type", "ready", "name", name, "load_ms", 1.0,
                             "n_ctx_slot", 256, "n_slots", 2));
}

static int earlier_starts; /* of this model, before this process */

static void on_generate(int fd, const char *mode, json_int_t id)
{
    if (strcmp(mode, "flaky") == 0)
        mode = earlier_starts < 3 ? "crash" : "ok";
    if (strcmp(mode, "garbage") == 0) {
        static const unsigned char g[] = {0, 0, 0, 9, 'n', 'o', 't', ' ', 'j', 's', 'o', 'n', '!'};
        send_raw(fd, g, sizeof g);
    } else if (strcmp(mode, "oversize") == 0) {
        static const unsigned char g[] = {0x7f, 0xff, 0xff, 0xff, '{'};
        send_raw(fd, g, sizeof g);
    } else if (strcmp(mode, "mislabelled") == 0) {
        send_frame(fd, json_pack("{s:s, s:I, s:s, s:{}}", "type", "done", "id", id + 1000, "finish_reason", "stop",
                                 "usage"));
    } else if (strcmp(mode, "bad-field") == 0) {
        send_frame(fd, json_pack("{s:s, s:I, s:i, s:i}", "type", "token", "id", id, "text", 7, "n", 1));
    } else if (strcmp(mode, "hang") == 0) {
        send_frame(fd, json_pack("{s:s, s:I, s:i}", "type", "started", "id", id, "slot", 0));
    } else if (strcmp(mode, "crash") == 0) {
        _exit(3);
    } else {
        send_frame(fd, json_pack("{s:s, s:I, s:i}", "type", "started", "id", id, "slot", 0));
        send_frame(fd, json_pack("{s:s, s:I, s:s, s:i}", "type", "token", "id", id, "text", "fake", "n", 1));
        send_frame(fd, json_pack("{s:s, s:I, s:s, s:{s:i, s:i, s:i}}", "type", "done", "id", id, "finish_reason",
                                 "stop", "usage", "prompt_tokens", 1, "completion_tokens", 1, "cached_tokens", 0));
    }
}

int main(int argc, char **argv)
{
    int fd = -1;
    const char *name = "fake-ok";
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--fd") == 0)
            fd = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--heartbeat-fd") == 0)
            hb_fd = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--heartbeat-ms") == 0)
            hb_ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--name") == 0)
            name = argv[i + 1];
    }
    if (fd < 0)
        return 2;
    const char *mode = strncmp(name, "fake-", 5) == 0 ? name + 5 : "ok";
    const char *count = getenv("LYRA_WORKER_FAKE_COUNT");
    if (count && *count) {
        FILE *in = fopen(count, "r");
        char line[256], want[160];
        snprintf(want, sizeof want, "%s ", name);
        while (in && fgets(line, sizeof line, in))
            earlier_starts += strncmp(line, want, strlen(want)) == 0;
        if (in)
            fclose(in);
        FILE *f = fopen(count, "a");
        if (f) {
            fprintf(f, "%s %d\n", name, (int)getpid());
            fclose(f);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "stubborn") == 0)
        signal(SIGTERM, SIG_IGN);
    pthread_t hb;
    if (hb_fd >= 0)
        pthread_create(&hb, NULL, heartbeat_main, NULL);
    fprintf(stderr, "fake worker %s starting\n", mode);

    if (strcmp(mode, "never-ready") == 0) {
        for (;;)
            pause();
    }
    if (strcmp(mode, "slow-ready") == 0)
        sleep_ms(3000);
    ready(fd, name);
    if (strcmp(mode, "chatty") == 0) {
        pthread_t chatter;
        pthread_create(&chatter, NULL, chatter_main, NULL);
        pthread_detach(chatter);
    }
    if (strcmp(mode, "second-ready") == 0)
        ready(fd, name);
    if (strcmp(mode, "silent") == 0)
        atomic_store(&hb_stop, true);

    struct lyra_frame_reader *rd = lyra_frame_reader_new();
    for (;;) {
        int n = lyra_frame_reader_read(rd, fd, NULL);
        if (n <= 0) {
            if (strcmp(mode, "stubborn") == 0) {
                for (;;)
                    pause();
            }
            break;
        }
        json_t *m;
        while (lyra_frame_reader_next(rd, &m, NULL) == 0 && m) {
            const char *type = json_string_value(json_object_get(m, "type"));
            json_int_t id = json_integer_value(json_object_get(m, "id"));
            if (type && strcmp(type, "status") == 0)
                send_frame(fd, json_pack("{s:s, s:I, s:[], s:i}", "type", "status", "id", id, "slots", "queued", 0));
            else if (type && strcmp(type, "generate") == 0)
                on_generate(fd, mode, id);
            json_decref(m);
        }
    }
    atomic_store(&hb_stop, true);
    if (hb_fd >= 0)
        pthread_join(hb, NULL);
    lyra_frame_reader_free(rd);
    return 0;
}
