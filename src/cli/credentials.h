/* credentials.h — the API keys `lyra login` keeps for the client commands.
 *
 * The file is DIR/credentials, DIR being $LYRA_CONFIG_DIR, else
 * $XDG_CONFIG_HOME/lyra, else $HOME/.config/lyra.  One line per daemon:
 *
 *     <url> <key>
 *
 * where url is the daemon's base URL as the client resolved it (without a
 * trailing slash; compared exactly after stripping trailing slashes) and key
 * one word of printable ASCII.  Blank lines and lines starting with '#' are
 * kept as they are when the file is rewritten; a line that is neither an
 * entry nor a comment is kept too (it is the user's), but never matches.
 *
 * The file is written whole through a temp file + rename with mode 0600
 * (lyra_write_file_atomic); a missing DIR is created 0700.  A file that
 * other users may read (or write) is refused when read: its keys may have
 * leaked, and the user should know.
 *
 * No function here prints anything or puts a key into an error message.
 * Thread-safety: the functions keep no state; two processes storing at once
 * is last-writer-wins (each write is atomic). */
#ifndef LYRA_CLI_CREDENTIALS_H
#define LYRA_CLI_CREDENTIALS_H

#include <stdbool.h>

#include "core/error.h"

/* The longest key text the CLI sends (as the daemon's LYRA_AUTH_KEY_MAX). */
#define LYRA_CREDENTIALS_KEY_MAX 256

/* The directory holding the credentials file (above).  *out receives a
 * malloc'd path (caller frees).  LYRA_ENOTFOUND when none of the three
 * variables is set, LYRA_ENOMEM. */
int lyra_credentials_dir(char **out);

/* True when `key` can be sent as a bearer token: 1..LYRA_CREDENTIALS_KEY_MAX
 * characters, each printable ASCII and not a space (so it can neither split
 * a credentials line nor inject a header). */
bool lyra_credentials_key_valid(const char *key);

/* The key stored for `url` in dir/credentials: 0 with *key (malloc'd; caller
 * frees, preferably after wiping it), LYRA_ENOTFOUND when the file or the
 * entry does not exist, LYRA_EPERM when the file is readable or writable by
 * group or others, LYRA_EINVAL when the entry's key is malformed, LYRA_EIO
 * when it cannot be read, with err (may be NULL) saying so — never with the
 * key. */
int lyra_credentials_lookup(const char *dir, const char *url, char **key, struct lyra_err *err);

/* Stores `key` for `url` (borrowed, both validated: the url must be one
 * word, the key lyra_credentials_key_valid): the first entry for url is
 * replaced in place, later ones for it are dropped, or a line is appended.
 * Creates dir (0700) when missing.  0, or LYRA_EINVAL, LYRA_EPERM (the
 * existing file is open to others, as in lyra_credentials_lookup: refused,
 * not silently tightened), LYRA_EIO, LYRA_ENOMEM with err set. */
int lyra_credentials_store(const char *dir, const char *url, const char *key, struct lyra_err *err);

/* Removes every entry for `url`.  0 when one was removed, LYRA_ENOTFOUND
 * when there was none (the file is left untouched), else as
 * lyra_credentials_store. */
int lyra_credentials_remove(const char *dir, const char *url, struct lyra_err *err);

#endif
