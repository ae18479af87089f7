/* llamalog.h — where llama.cpp's log output goes inside a worker.
 *
 * llama.cpp logs through one process-wide callback.  The worker keeps that
 * output off stderr (unless LYRA_WORKER_VERBOSE=1) but remembers the error
 * lines written since the last lyra_llamalog_mark(), so that a failure
 * (model load, context creation, decode) can be reported with llama.cpp's own
 * reason instead of a bare "failed".
 *
 * Thread-safety: the callback and all functions may run on any thread (one
 * mutex); install() must be called once before llama.cpp is used. */
#ifndef LYRA_LLAMALOG_H
#define LYRA_LLAMALOG_H

#include <stdbool.h>
#include <stddef.h>

/* Routes llama.cpp and ggml logging into the capture; with verbose, every
 * line is also copied to stderr. */
void lyra_llamalog_install(bool verbose);

/* Forgets the error lines captured so far. */
void lyra_llamalog_mark(void);

/* Writes the first error lines captured since the last mark, joined by "; "
 * and without llama's "function: " prefixes, into buf (always
 * NUL-terminated).  Returns the length written (0 when nothing was
 * captured). */
size_t lyra_llamalog_errors(char *buf, size_t len);

#endif
