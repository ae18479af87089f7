/* memhog.c — `lyra-memhog N`: allocates N MiB, writes to every page so that
 * it is resident (not just reserved), prints "ready\n" on stdout, then
 * sleeps until it is killed.  Real memory pressure for the integration
 * tests of the memory watchdog and the model cache.
 *
 * Exit status: 2 for a bad argument, 1 when the memory cannot be had. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: lyra-memhog MIB\n");
        return 2;
    }
    errno = 0;
    char *end;
    unsigned long long mib = strtoull(argv[1], &end, 10);
    if (errno || end == argv[1] || *end || argv[1][0] == '-' || mib > (SIZE_MAX >> 20)) {
        fprintf(stderr, "lyra-memhog: not a size in MiB: %s\n", argv[1]);
        return 2;
    }
    size_t bytes = (size_t)mib << 20;
    unsigned char *p = bytes ? malloc(bytes) : NULL;
    if (bytes && !p) {
        fprintf(stderr, "lyra-memhog: cannot allocate %llu MiB\n", mib);
        return 1;
    }
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        page = 4096;
    /* A non-zero byte per page: a page only read, or written with zeros by
     * calloc, could stay shared with the zero page. */
    for (size_t off = 0; off < bytes; off += (size_t)page)
        p[off] = (unsigned char)(off / (size_t)page | 1);
    if (printf("ready\n") < 0 || fflush(stdout) != 0)
        return 1;
    for (;;)
        pause();
}
