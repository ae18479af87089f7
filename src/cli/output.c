/* output.c — see output.h. */
#include "cli/output.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

int lyra_cli_exit_code(int rc)
{
    if (rc >= 0)
        return LYRA_EXIT_OK;
    return rc == LYRA_EUNAVAILABLE ? LYRA_EXIT_NO_DAEMON : LYRA_EXIT_ERROR;
}

bool lyra_cli_is_tty(FILE *f)
{
    int fd = f ? fileno(f) : -1;
    return fd >= 0 && isatty(fd) == 1;
}

bool lyra_cli_color(FILE *f)
{
    const char *no = getenv("NO_COLOR"); /* https://no-color.org: any non-empty value */
    const char *term = getenv("TERM");
    if (no && *no)
        return false;
    if (!term || !*term || strcmp(term, "dumb") == 0)
        return false;
    return lyra_cli_is_tty(f);
}

void lyra_cli_paint(FILE *f, bool color, const char *sgr, const char *text, int width)
{
    if (!text)
        text = "-";
    if (color && sgr)
        fprintf(f, "\033[%sm%s\033[0m", sgr, text);
    else
        fputs(text, f);
    for (int n = (int)strlen(text); n < width; n++)
        fputc(' ', f);
}

int lyra_cli_print_json(const char *cmd, const json_t *j, bool compact)
{
    char *s = json_dumps(j, compact ? JSON_COMPACT : JSON_INDENT(2));
    if (!s) {
        fprintf(stderr, "lyra %s: out of memory\n", cmd);
        return LYRA_EXIT_ERROR;
    }
    printf("%s\n", s);
    fflush(stdout);
    free(s);
    return LYRA_EXIT_OK;
}
