/* protocol.c — length-prefixed JSON frames over a stream fd.
 *
 * Writing: a frame is serialised by jansson into a buffer whose first four
 * bytes are then patched with the length, so one frame (or a writer's whole
 * queue) goes out in as few write calls as the kernel allows.  Sockets get
 * sendmsg(MSG_NOSIGNAL) so that a dead peer is an error, not a SIGPIPE.
 *
 * Reading: bytes accumulate in one buffer with a consumed offset; a frame is
 * popped once its length prefix and body are complete.  The buffer is
 * compacted lazily, so a burst of small frames costs one memmove. */
#include "proto/frame.h"

#include "core/limits.h"
#include "core/util.h"

_Static_assert(LYRA_LIMIT_BODY_MAX * 2 <= LYRA_FRAME_MAX, "a request body must fit a frame");

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- growable byte buffer ------------------------------------------------ */

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return LYRA_ENOMEM;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return LYRA_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* jansson dump callback: appends to a struct buf. */
static int dump_cb(const char *chunk, size_t size, void *data)
{
    struct buf *b = data;
    if (buf_reserve(b, size) < 0)
        return -1;
    memcpy(b->data + b->len, chunk, size);
    b->len += size;
    return 0;
}

/* Appends header + serialised msg to b; on failure b is left as it was. */
static int append_json_frame(struct buf *b, const json_t *msg, struct lyra_err *err)
{
    if (!json_is_object(msg))
        return lyra_err_set(err, LYRA_EINVAL, "a frame must hold a JSON object");
    size_t start = b->len;
    if (buf_reserve(b, LYRA_FRAME_HEADER) < 0)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory building a frame");
    b->len += LYRA_FRAME_HEADER;
    if (json_dump_callback(msg, dump_cb, b, JSON_COMPACT) != 0) {
        b->len = start;
        return lyra_err_set(err, LYRA_ENOMEM, "cannot serialise a frame (out of memory)");
    }
    size_t body = b->len - start - LYRA_FRAME_HEADER;
    if (body > LYRA_FRAME_MAX) {
        b->len = start;
        return lyra_err_set(err, LYRA_ETOOBIG, "frame of %zu bytes exceeds the %u-byte limit", body,
                            LYRA_FRAME_MAX);
    }
    put_be32((unsigned char *)b->data + start, (uint32_t)body);
    return 0;
}

static int append_raw_frame(struct buf *b, const char *json, size_t len, struct lyra_err *err)
{
    if (len > LYRA_FRAME_MAX)
        return lyra_err_set(err, LYRA_ETOOBIG, "frame of %zu bytes exceeds the %u-byte limit", len,
                            LYRA_FRAME_MAX);
    if (buf_reserve(b, LYRA_FRAME_HEADER + len) < 0)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory building a frame");
    put_be32((unsigned char *)b->data + b->len, (uint32_t)len);
    memcpy(b->data + b->len + LYRA_FRAME_HEADER, json, len);
    b->len += LYRA_FRAME_HEADER + len;
    return 0;
}

/* Writes data[0..len) completely.  Sockets use MSG_NOSIGNAL; other fds fall
 * back to write(2) after the first ENOTSOCK. */
static int write_all(int fd, const char *data, size_t len, struct lyra_err *err)
{
    bool sock = true;
    while (len > 0) {
        ssize_t n;
        if (sock) {
            n = send(fd, data, len, MSG_NOSIGNAL);
            if (n < 0 && errno == ENOTSOCK) {
                sock = false;
                continue;
            }
        } else {
            n = write(fd, data, len);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, -1) < 0 && errno != EINTR)
                    return lyra_err_set(err, LYRA_EIO, "poll on fd %d: %s", fd, strerror(errno));
                continue;
            }
            return lyra_err_set(err, LYRA_EIO, "write to fd %d: %s", fd, strerror(errno));
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int lyra_frame_write(int fd, const json_t *msg, struct lyra_err *err)
{
    struct buf b = {0};
    int rc = append_json_frame(&b, msg, err);
    if (rc == 0)
        rc = write_all(fd, b.data, b.len, err);
    free(b.data);
    return rc;
}

/* ---- writer --------------------------------------------------------------- */

struct lyra_frame_writer {
    struct buf out;
    size_t sent; /* bytes at the front of out already written */
};

struct lyra_frame_writer *lyra_frame_writer_new(void)
{
    return calloc(1, sizeof(struct lyra_frame_writer));
}

void lyra_frame_writer_free(struct lyra_frame_writer *w)
{
    if (!w)
        return;
    free(w->out.data);
    free(w);
}

int lyra_frame_writer_add(struct lyra_frame_writer *w, const json_t *msg, struct lyra_err *err)
{
    return append_json_frame(&w->out, msg, err);
}

int lyra_frame_writer_add_raw(struct lyra_frame_writer *w, const char *json, size_t len,
                              struct lyra_err *err)
{
    return append_raw_frame(&w->out, json, len, err);
}

size_t lyra_frame_writer_pending(const struct lyra_frame_writer *w)
{
    return w->out.len - w->sent;
}

/* Called once everything queued was written. */
static void writer_reset(struct lyra_frame_writer *w)
{
    w->out.len = 0;
    w->sent = 0;
    /* A one-off huge message must not pin its buffer for the process's
     * life: give back anything far above the usual working size. */
    if (w->out.cap > (1u << 20)) {
        free(w->out.data);
        w->out.data = NULL;
        w->out.cap = 0;
    }
}

int lyra_frame_writer_flush(struct lyra_frame_writer *w, int fd, struct lyra_err *err)
{
    if (lyra_frame_writer_pending(w) == 0)
        return 0;
    int rc = write_all(fd, w->out.data + w->sent, w->out.len - w->sent, err);
    if (rc == 0)
        writer_reset(w);
    return rc;
}

int lyra_frame_writer_send(struct lyra_frame_writer *w, int fd, struct lyra_err *err)
{
    while (w->sent < w->out.len) {
        ssize_t n = send(fd, w->out.data + w->sent, w->out.len - w->sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return LYRA_EBUSY;
            return lyra_err_set(err, LYRA_EIO, "write to fd %d: %s", fd, strerror(errno));
        }
        w->sent += (size_t)n;
    }
    writer_reset(w);
    return 0;
}

/* ---- reader --------------------------------------------------------------- */

struct lyra_frame_reader {
    struct buf in;
    size_t off;           /* consumed bytes at the front of in */
    int failed;           /* sticky protocol error code, 0 if none */
    char failed_msg[160]; /* its message, repeated on later calls */
};

struct lyra_frame_reader *lyra_frame_reader_new(void)
{
    return calloc(1, sizeof(struct lyra_frame_reader));
}

void lyra_frame_reader_free(struct lyra_frame_reader *r)
{
    if (!r)
        return;
    free(r->in.data);
    free(r);
}

static int sticky(const struct lyra_frame_reader *r, struct lyra_err *err)
{
    return lyra_err_set(err, r->failed, "%s", r->failed_msg);
}

/* Drops consumed bytes so the buffer does not grow without bound. */
static void compact(struct lyra_frame_reader *r)
{
    if (r->off == 0)
        return;
    size_t live = r->in.len - r->off;
    if (live)
        memmove(r->in.data, r->in.data + r->off, live);
    r->in.len = live;
    r->off = 0;
}

int lyra_frame_reader_feed(struct lyra_frame_reader *r, const void *data, size_t len,
                           struct lyra_err *err)
{
    if (r->failed)
        return sticky(r, err);
    if (len == 0) /* nothing to copy, and no buffer yet to copy it to */
        return 0;
    if (r->off > 0 && r->off >= r->in.len / 2)
        compact(r);
    if (buf_reserve(&r->in, len) < 0)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory buffering input");
    memcpy(r->in.data + r->in.len, data, len);
    r->in.len += len;
    return 0;
}

int lyra_frame_reader_read(struct lyra_frame_reader *r, int fd, struct lyra_err *err)
{
    if (r->failed)
        return sticky(r, err);
    if (r->off > 0 && r->off >= r->in.len / 2)
        compact(r);
    enum { CHUNK = 64 * 1024 };
    if (buf_reserve(&r->in, CHUNK) < 0)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory buffering input");
    for (;;) {
        ssize_t n = read(fd, r->in.data + r->in.len, CHUNK);
        if (n > 0) {
            r->in.len += (size_t)n;
            return (int)n;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return LYRA_EBUSY;
        return lyra_err_set(err, LYRA_EIO, "read from fd %d: %s", fd, strerror(errno));
    }
}

static int fail(struct lyra_frame_reader *r, struct lyra_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct lyra_frame_reader *r, struct lyra_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lyra_vfmt(r->failed_msg, sizeof r->failed_msg, fmt, ap);
    va_end(ap);
    r->failed = code;
    return sticky(r, err);
}

int lyra_frame_reader_next(struct lyra_frame_reader *r, json_t **out, struct lyra_err *err)
{
    *out = NULL;
    if (r->failed)
        return sticky(r, err);
    size_t avail = r->in.len - r->off;
    if (avail < LYRA_FRAME_HEADER)
        return 0;
    const unsigned char *p = (const unsigned char *)r->in.data + r->off;
    uint32_t len = get_be32(p);
    if (len > LYRA_FRAME_MAX)
        return fail(r, err, LYRA_ETOOBIG, "frame length %u exceeds the %u-byte limit", len,
                    LYRA_FRAME_MAX);
    if (avail - LYRA_FRAME_HEADER < len)
        return 0;
    json_error_t jerr;
    /* JSON_ALLOW_NUL: "\u0000" inside a string is valid JSON that a client
     * may send through the daemon; refusing it would make it a protocol
     * violation that kills the connection. */
    json_t *msg = json_loadb((const char *)p + LYRA_FRAME_HEADER, len, JSON_ALLOW_NUL, &jerr);
    if (!msg)
        return fail(r, err, LYRA_EPARSE, "frame is not valid JSON: %s at byte %d", jerr.text,
                    jerr.position);
    if (!json_is_object(msg)) {
        json_decref(msg);
        return fail(r, err, LYRA_EPARSE, "frame holds JSON that is not an object");
    }
    r->off += LYRA_FRAME_HEADER + len;
    if (r->off == r->in.len)
        r->off = r->in.len = 0;
    *out = msg;
    return 0;
}

size_t lyra_frame_reader_buffered(const struct lyra_frame_reader *r)
{
    return r->in.len - r->off;
}

int lyra_frame_reader_eof(const struct lyra_frame_reader *r, struct lyra_err *err)
{
    size_t n = r->in.len - r->off;
    if (n == 0)
        return 0;
    return lyra_err_set(err, LYRA_EPARSE, "end of file inside a frame (%zu bytes buffered)", n);
}
