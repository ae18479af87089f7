/* util.h — small helpers shared by every module: time, ids, strings.
 * Thread-safety: all functions are thread-safe. */
#ifndef LYRA_UTIL_H
#define LYRA_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Monotonic clock in milliseconds / microseconds (for durations). */
int64_t lyra_now_ms(void);
int64_t lyra_now_us(void);
/* Fills *ts with the CLOCK_REALTIME time `ms` milliseconds from now: the
 * deadline pthread_cond_timedwait takes. */
struct timespec;
void lyra_deadline_in(struct timespec *ts, int64_t ms);

/* Wall clock in milliseconds since the epoch (for timestamps). */
int64_t lyra_wall_ms(void);

/* Formats a wall-clock time as RFC 3339 UTC with milliseconds
 * ("2026-11-27T14:00:00.123Z") into buf (at least 32 bytes). */
void lyra_format_ts(int64_t wall_ms, char *buf, size_t len);

/* Writes `nbytes` random bytes as lower-case hex plus NUL into out
 * (2*nbytes+1 bytes).  Uses getrandom(2). */
void lyra_random_hex(char *out, size_t nbytes);

/* Writes a random RFC 4122 version-4 UUID (37 bytes with NUL). */
void lyra_uuid4(char out[37]);

/* True if s[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
bool lyra_utf8_valid(const char *s, size_t len);

/* Text that is cut must stay valid UTF-8 (jansson refuses anything else, and
 * a refused message must never become a crash or a lost frame).  These are
 * the only ways Lyra bounds text; never a byte precision ("%.N" + "s") on
 * client or library text. */

/* The number of bytes (<= max) of the NUL-terminated s to keep so that no
 * character is split: use as `"%.*s", (int)lyra_utf8_clip(s, 32), s`. */
size_t lyra_utf8_clip(const char *s, size_t max);

/* Makes the NUL-terminated s valid UTF-8 in place: a character cut short at
 * the end is dropped, any other invalid byte becomes '?'.  Returns s. */
char *lyra_utf8_scrub(char *s);

/* vsnprintf into buf[0..cap) whose result is always valid UTF-8: cut on a
 * code-point boundary, invalid bytes of the arguments replaced by '?'.
 * Returns vsnprintf's count (the length it wanted). */
int lyra_vfmt(char *buf, size_t cap, const char *fmt, va_list ap);
int lyra_fmt(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* mkdir -p with mode 0700 for created directories. Returns 0 or -errno. */
int lyra_mkdirs(const char *path);

/* Parses a decimal unsigned 64-bit number made of digits only (no sign,
 * space or suffix; a query parameter, a header).  0, or -1 when it is not
 * one or overflows. */
int lyra_parse_u64(const char *s, uint64_t *out);

/* Reads a whole file into a malloc'd NUL-terminated buffer; *len gets the
 * size.  Returns NULL with errno set on failure.  Caller frees. */
char *lyra_read_file(const char *path, size_t *len);

/* Writes data to path atomically: a fresh temp file in the same directory
 * (mkstemp), fsync, permissions set to exactly `mode`, rename over path,
 * then fsync of the directory so the rename survives a crash.  The temp file
 * is removed on failure and path is then unchanged.  Returns 0 or -errno. */
int lyra_write_file_atomic(const char *path, const void *data, size_t len, int mode);

/* "dir/name" in a new string (one '/' between them); an absolute name, or
 * a NULL dir, gives a copy of name.  Caller frees.  NULL when out of
 * memory. */
char *lyra_path_join(const char *dir, const char *name);

#endif
