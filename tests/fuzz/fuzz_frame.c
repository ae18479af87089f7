/* fuzz_frame.c — the worker protocol's frame reader (proto/frame.h) on an
 * arbitrary byte stream, as a hostile or broken peer would send it.
 *
 * Input: byte 0 seeds how the stream is cut into reads; the rest is the
 * stream.  Beyond "no crash, no leak":
 *   - the frames and the final result do not depend on how the stream was
 *     cut (one feed vs. many small ones);
 *   - every frame is a JSON object; a protocol error is sticky (next and
 *     feed repeat it) with a non-empty, valid UTF-8 message; without an
 *     error, lyra_frame_reader_eof() agrees with lyra_frame_reader_buffered();
 *   - the frames re-serialise: a writer queues them, flushes them through a
 *     socket, and a reader reading that socket gets the same frames back. */
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/util.h"
#include "fuzz.h"
#include "proto/frame.h"

struct outcome {
    json_t *frames; /* array of the frames popped */
    int rc;         /* 0 or the protocol error */
    size_t buffered;
};

/* Pops every complete frame; returns false once the reader failed. */
static bool pop_all(struct lyra_frame_reader *r, struct outcome *o)
{
    for (;;) {
        json_t *f = (json_t *)1;
        struct lyra_err err = {0};
        int rc = lyra_frame_reader_next(r, &f, &err);
        if (rc < 0) {
            CHECKF(rc == LYRA_ETOOBIG || rc == LYRA_EPARSE, "rc %d", rc);
            CHECK(f == NULL && err.code == rc && err.msg[0]);
            CHECK(lyra_utf8_valid(err.msg, strlen(err.msg)));
            o->rc = rc;
            /* Sticky: the same error again, from next and from feed. */
            struct lyra_err again = {0};
            CHECK(lyra_frame_reader_next(r, &f, &again) == rc && f == NULL);
            CHECK(strcmp(again.msg, err.msg) == 0);
            CHECK(lyra_frame_reader_feed(r, "x", 1, &again) == rc);
            return false;
        }
        if (!f)
            return true;
        CHECK(json_is_object(f));
        CHECK(json_array_append_new(o->frames, f) == 0);
    }
}

static void finish(struct lyra_frame_reader *r, struct outcome *o)
{
    if (o->rc)
        return;
    o->buffered = lyra_frame_reader_buffered(r);
    struct lyra_err err = {0};
    int eof = lyra_frame_reader_eof(r, &err);
    CHECK((eof == 0) == (o->buffered == 0));
    if (eof)
        CHECK(eof == LYRA_EPARSE && lyra_utf8_valid(err.msg, strlen(err.msg)));
}

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The frames written back through a socket come back equal. */
static void roundtrip(const json_t *frames)
{
    static int sv[2] = {-1, -1};
    if (sv[0] < 0) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        int big = 1 << 20;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
    }
    struct lyra_frame_writer *w = lyra_frame_writer_new();
    CHECK(w);
    size_t i;
    json_t *f;
    json_array_foreach(frames, i, f) {
        struct lyra_err err = {0};
        size_t before = lyra_frame_writer_pending(w);
        int rc = lyra_frame_writer_add(w, f, &err);
        CHECKF(rc == 0, "writer refuses a frame the reader accepted: %s", err.msg);
        char *text = json_dumps(f, JSON_COMPACT);
        CHECK(text);
        CHECK(lyra_frame_writer_pending(w) == before + LYRA_FRAME_HEADER + strlen(text));
        free(text);
    }
    /* One thread writes and reads: stay well inside the socket buffers. */
    if (lyra_frame_writer_pending(w) > (256u << 10)) {
        lyra_frame_writer_free(w);
        return;
    }
    struct lyra_err err = {0};
    CHECK(lyra_frame_writer_flush(w, sv[0], &err) == 0);
    CHECK(lyra_frame_writer_pending(w) == 0);
    lyra_frame_writer_free(w);

    struct lyra_frame_reader *r = lyra_frame_reader_new();
    CHECK(r);
    int n;
    while ((n = lyra_frame_reader_read(r, sv[1], &err)) > 0)
        ;
    CHECK(n == LYRA_EBUSY || (n == 0 && json_array_size(frames) == 0));
    struct outcome back = {.frames = json_array()};
    CHECK(back.frames && pop_all(r, &back));
    CHECK(back.rc == 0 && lyra_frame_reader_buffered(r) == 0);
    CHECK(json_equal(back.frames, frames));
    json_decref(back.frames);
    lyra_frame_reader_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint32_t seed = data[0] | 0x100u;
    const uint8_t *stream = data + 1;
    size_t len = size - 1;

    struct outcome whole = {.frames = json_array()}, cut = {.frames = json_array()};
    CHECK(whole.frames && cut.frames);
    struct lyra_frame_reader *a = lyra_frame_reader_new(), *b = lyra_frame_reader_new();
    CHECK(a && b);
    struct lyra_err err = {0};
    CHECK(lyra_frame_reader_feed(a, stream, len, &err) == 0);
    pop_all(a, &whole);
    finish(a, &whole);

    for (size_t off = 0; off < len;) {
        size_t n = 1 + next_rand(&seed) % (next_rand(&seed) % 4 == 0 ? 4096 : 16);
        if (n > len - off)
            n = len - off;
        CHECK(lyra_frame_reader_feed(b, stream + off, n, &err) == 0);
        off += n;
        if (!pop_all(b, &cut))
            break;
    }
    finish(b, &cut);

    CHECKF(whole.rc == cut.rc, "one feed: %d, cut feeds: %d", whole.rc, cut.rc);
    CHECK(json_equal(whole.frames, cut.frames));
    CHECK(whole.buffered == cut.buffered);
    roundtrip(whole.frames);

    json_decref(whole.frames);
    json_decref(cut.frames);
    lyra_frame_reader_free(a);
    lyra_frame_reader_free(b);
    return 0;
}
