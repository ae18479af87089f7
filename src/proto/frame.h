/* frame.h — framing between the daemon and its `lyra worker` processes.
 *
 * A frame is a 4-byte big-endian length followed by exactly that many bytes
 * of UTF-8 JSON holding one object.  A length above LYRA_FRAME_MAX, a body
 * that is not valid JSON, or JSON that is not an object is a protocol error:
 * the reader reports it and stays failed (the stream cannot be resynchronised),
 * and the side that sees it drops the connection.  docs/worker.md lists the
 * messages.
 *
 * Both sides use this module (it is part of lyracore, which the worker
 * links too), so it must not depend on llama.h.  The messages carried in
 * frames, their schemas and which ones end a request are in
 * proto/messages.h.
 *
 * Thread-safety: no shared state.  Writing is safe from several threads only
 * if the caller serialises writes per fd (one mutex per connection), since a
 * frame may take several write(2) calls; a reader or writer object belongs to
 * one thread at a time.
 *
 * SIGPIPE: on sockets frames are sent with MSG_NOSIGNAL, so a vanished peer
 * gives LYRA_EIO with err->msg naming EPIPE instead of killing the process; on
 * pipes the caller must ignore SIGPIPE itself. */
#ifndef LYRA_FRAME_H
#define LYRA_FRAME_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

/* Largest accepted frame body, in bytes. */
#define LYRA_FRAME_MAX (64u * 1024u * 1024u)
/* Size of the length prefix. */
#define LYRA_FRAME_HEADER 4u

/* Writes `msg` (borrowed; must be a JSON object) as one frame to fd.  Blocks
 * until the whole frame is written: retries on EINTR and partial writes and,
 * if fd is non-blocking, waits for POLLOUT on EAGAIN.  Returns 0, LYRA_ETOOBIG
 * (encoded body over LYRA_FRAME_MAX), LYRA_EINVAL (not an object),
 * LYRA_ENOMEM or LYRA_EIO (err->msg carries strerror; a closed peer reads
 * "Broken pipe"). */
int lyra_frame_write(int fd, const json_t *msg, struct lyra_err *err);

/* Frame writer: queues frames in one buffer so that everything produced in a
 * step leaves in one write(2).  Opaque; lyra_frame_writer_free(NULL) is a
 * no-op. */
struct lyra_frame_writer;

/* Returns a new empty writer, or NULL when out of memory.  Caller frees with
 * lyra_frame_writer_free(). */
struct lyra_frame_writer *lyra_frame_writer_new(void);
void lyra_frame_writer_free(struct lyra_frame_writer *w);

/* Appends `msg` (borrowed; a JSON object) as one frame.  Returns 0,
 * LYRA_EINVAL, LYRA_ETOOBIG or LYRA_ENOMEM; on error nothing is appended. */
int lyra_frame_writer_add(struct lyra_frame_writer *w, const json_t *msg, struct lyra_err *err);

/* Appends an already serialised JSON object `json[0..len)` (borrowed) as one
 * frame, without parsing it: the caller guarantees it is one valid object in
 * UTF-8.  This is the allocation-free path for hot messages.  Returns 0,
 * LYRA_ETOOBIG or LYRA_ENOMEM. */
int lyra_frame_writer_add_raw(struct lyra_frame_writer *w, const char *json, size_t len,
                              struct lyra_err *err);

/* Bytes queued and not yet written. */
size_t lyra_frame_writer_pending(const struct lyra_frame_writer *w);

/* Writes all queued bytes to fd, blocking as lyra_frame_write() does.
 * Returns 0 (queue empty afterwards) or LYRA_EIO; after an error the bytes
 * not written stay queued. */
int lyra_frame_writer_flush(struct lyra_frame_writer *w, int fd, struct lyra_err *err);

/* Writes as much of the queue as the socket fd takes now, never blocking
 * (MSG_DONTWAIT, MSG_NOSIGNAL).  Returns 0 when the queue is empty,
 * LYRA_EBUSY when bytes remain (wait for POLLOUT and call again; frames
 * may be added meanwhile), or LYRA_EIO (a closed peer reads "Broken pipe"
 * or "Connection reset"). */
int lyra_frame_writer_send(struct lyra_frame_writer *w, int fd, struct lyra_err *err);

/* Incremental frame reader: feed it bytes as they arrive (typically from a
 * non-blocking fd after poll), then pop complete frames.  Opaque;
 * lyra_frame_reader_free(NULL) is a no-op. */
struct lyra_frame_reader;

/* Returns a new reader, or NULL when out of memory.  Caller frees with
 * lyra_frame_reader_free(). */
struct lyra_frame_reader *lyra_frame_reader_new(void);
void lyra_frame_reader_free(struct lyra_frame_reader *r);

/* Appends data[0..len) (borrowed, copied) to the reader's buffer.  Returns 0,
 * LYRA_ENOMEM, or the reader's earlier protocol error. */
int lyra_frame_reader_feed(struct lyra_frame_reader *r, const void *data, size_t len,
                           struct lyra_err *err);

/* Performs one read(2) on fd into the reader's buffer (retrying on EINTR).
 * Returns the number of bytes read (> 0), 0 at end of file, LYRA_EBUSY when
 * a non-blocking fd has nothing to read (EAGAIN), LYRA_EIO on a read error or
 * LYRA_ENOMEM.  Call it until LYRA_EBUSY to drain a non-blocking fd. */
int lyra_frame_reader_read(struct lyra_frame_reader *r, int fd, struct lyra_err *err);

/* Pops the next complete frame.  Returns 0 with *out set to a new reference
 * (caller frees with json_decref) or to NULL when no complete frame is
 * buffered yet; or a protocol error: LYRA_ETOOBIG (length prefix over
 * LYRA_FRAME_MAX) or LYRA_EPARSE (body is not one JSON object; err->msg has
 * jansson's text and position).  Strings may contain NUL characters
 * ("\u0000"); use json_string_length().  Errors are sticky: every later call
 * returns the same code. */
int lyra_frame_reader_next(struct lyra_frame_reader *r, json_t **out, struct lyra_err *err);

/* Bytes buffered that do not yet form a complete frame (after all complete
 * frames were popped).  Non-zero at end of file means the peer died
 * mid-frame; lyra_frame_reader_eof() turns that into an error. */
size_t lyra_frame_reader_buffered(const struct lyra_frame_reader *r);

/* To be called when the fd reached end of file: returns 0 when the stream
 * ended on a frame boundary, LYRA_EPARSE ("end of file inside a frame")
 * otherwise. */
int lyra_frame_reader_eof(const struct lyra_frame_reader *r, struct lyra_err *err);

#endif
