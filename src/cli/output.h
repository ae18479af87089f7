/* output.h — how the client commands write for people and for scripts.
 *
 * Exit statuses every client command uses (docs/cli.md):
 *   0  done
 *   1  the daemon refused or failed the request (its message is printed),
 *      or another error (a timeout, an answer that is not JSON)
 *   2  usage: a bad option or argument
 *   3  no daemon answers at the URL (nothing listens there, the host is
 *      unknown): the message says how the URL was found and what to do
 *
 * Colour and progress bars are for a person at a terminal only: they are
 * used when the stream written to is a terminal, env NO_COLOR is unset or
 * empty and TERM is not "dumb" (lyra_cli_color), and never with --json.
 *
 * Thread-safety: none needed (the CLI is single-threaded); the functions
 * keep no state. */
#ifndef LYRA_CLI_OUTPUT_H
#define LYRA_CLI_OUTPUT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

enum {
    LYRA_EXIT_OK = 0,
    LYRA_EXIT_ERROR = 1,
    LYRA_EXIT_USAGE = 2,
    LYRA_EXIT_NO_DAEMON = 3,
};

/* The exit status for a client call's result: 0 for rc >= 0, 3 for
 * LYRA_EUNAVAILABLE (no daemon at the URL), else 1. */
int lyra_cli_exit_code(int rc);

/* Whether `f` is a terminal a person reads (isatty of its descriptor). */
bool lyra_cli_is_tty(FILE *f);

/* Whether colour may be written to `f`: a terminal, NO_COLOR unset or
 * empty, TERM set and not "dumb". */
bool lyra_cli_color(FILE *f);

/* SGR sequences for lyra_cli_paint. */
#define LYRA_SGR_RED "31"
#define LYRA_SGR_GREEN "32"
#define LYRA_SGR_YELLOW "33"
#define LYRA_SGR_BOLD "1"
#define LYRA_SGR_DIM "2"

/* Writes `text` to `f` padded with spaces to `width` columns (0: no
 * padding; text is counted in bytes), wrapped in the SGR sequence `sgr`
 * ("31") when `color` is true and sgr is not NULL.  The padding goes
 * outside the colour, so columns line up either way. */
void lyra_cli_paint(FILE *f, bool color, const char *sgr, const char *text, int width);

/* Prints j to stdout as indented JSON and a newline (`compact`: one line).
 * Returns 0, or 1 after printing "lyra CMD: out of memory" to stderr. */
int lyra_cli_print_json(const char *cmd, const json_t *j, bool compact);

#endif
