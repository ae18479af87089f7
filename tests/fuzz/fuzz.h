/* fuzz.h — what the harnesses in tests/fuzz/ share.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput() (and may define
 * LLVMFuzzerInitialize()).  Built with clang -fsanitize=fuzzer it is a
 * libFuzzer binary (build-fuzz/fuzz_<name>); built with replay.c it replays
 * files (the committed corpus) in any build.  CHECK() states an invariant:
 * unlike assert() it is never compiled out (the builds define NDEBUG), and a
 * violation aborts, which libFuzzer records as a crash with its input. */
#ifndef LYRA_FUZZ_H
#define LYRA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond);                   \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

/* Like CHECK, with a message (printf-style) saying what was seen. */
#define CHECKF(cond, ...)                                                                                    \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: invariant violated: %s: ", __FILE__, __LINE__, #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
