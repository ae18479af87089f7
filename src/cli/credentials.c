/* credentials.c — see credentials.h.  The file is small (a line per
 * daemon), so every operation reads it whole, and a change writes it whole
 * again through lyra_write_file_atomic. */
#include "cli/credentials.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

/* A credentials file larger than this is not ours. */
#define MAX_FILE (1u << 20)

int lyra_credentials_dir(char **out)
{
    *out = NULL;
    const char *d = getenv("LYRA_CONFIG_DIR");
    char *s = NULL;
    if (d && *d) {
        s = strdup(d);
    } else if ((d = getenv("XDG_CONFIG_HOME")) && *d) {
        s = lyra_path_join(d, "lyra");
    } else if ((d = getenv("HOME")) && *d) {
        s = lyra_path_join(d, ".config/lyra");
    } else {
        return LYRA_ENOTFOUND;
    }
    if (!s)
        return LYRA_ENOMEM;
    *out = s;
    return 0;
}

bool lyra_credentials_key_valid(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > LYRA_CREDENTIALS_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] <= 0x20 || (unsigned char)key[i] >= 0x7f)
            return false;
    return true;
}

/* Length of url without its trailing slashes. */
static size_t url_len(const char *url, size_t n)
{
    while (n > 0 && url[n - 1] == '/')
        n--;
    return n;
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r';
}

/* One line of the file, [p, p+n) without its '\n': when it is an entry,
 * the url and key words are returned through the out pointers. */
static bool parse_line(const char *p, size_t n, const char **url, size_t *ulen, const char **key,
                       size_t *klen)
{
    size_t i = 0;
    while (i < n && is_blank(p[i]))
        i++;
    if (i == n || p[i] == '#')
        return false;
    size_t u0 = i;
    while (i < n && !is_blank(p[i]))
        i++;
    size_t u1 = i;
    while (i < n && is_blank(p[i]))
        i++;
    size_t k0 = i;
    while (i < n && !is_blank(p[i]))
        i++;
    size_t k1 = i;
    while (i < n && is_blank(p[i]))
        i++;
    if (k0 == k1 || i != n) /* no key, or more than two words */
        return false;
    *url = p + u0;
    *ulen = url_len(p + u0, u1 - u0);
    *key = p + k0;
    *klen = k1 - k0;
    return true;
}

static bool same_url(const char *a, size_t alen, const char *url)
{
    size_t n = url_len(url, strlen(url));
    return alen == n && memcmp(a, url, n) == 0;
}

/* Reads dir/credentials into *text (NUL-terminated, caller frees; NULL
 * with 0 returned when the file does not exist).  *path gets the file's
 * path (caller frees) either way. */
static int read_file(const char *dir, char **path, char **text, size_t *len, struct lyra_err *err)
{
    *text = NULL;
    *len = 0;
    if (!(*path = lyra_path_join(dir, "credentials")))
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    int fd = open(*path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0
                               : lyra_err_set(err, LYRA_EIO, "cannot open %s: %s", *path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = lyra_err_set(err, LYRA_EIO, "cannot stat %s: %s", *path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = lyra_err_set(err, LYRA_EIO, "%s is not a regular file", *path);
    else if (st.st_mode & 077)
        rc = lyra_err_set(err, LYRA_EPERM,
                          "%s may be read by other users (mode %03o): its keys may have leaked; "
                          "`chmod 600` it (and revoke the keys if in doubt)",
                          *path, (unsigned)(st.st_mode & 0777));
    else if (st.st_size > MAX_FILE)
        rc = lyra_err_set(err, LYRA_EIO, "%s is larger than %u KiB", *path, MAX_FILE >> 10);
    char *buf = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (rc == 0 && !buf)
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    size_t got = 0;
    while (rc == 0 && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = lyra_err_set(err, LYRA_EIO, "cannot read %s: %s", *path, strerror(errno));
        else if (r == 0)
            break;
        else
            got += (size_t)r;
    }
    close(fd);
    if (rc < 0) {
        if (buf)
            explicit_bzero(buf, got);
        free(buf);
        return rc;
    }
    buf[got] = '\0';
    *text = buf;
    *len = got;
    return 0;
}

static void free_secret(char *s, size_t n)
{
    if (s)
        explicit_bzero(s, n);
    free(s);
}

int lyra_credentials_lookup(const char *dir, const char *url, char **key, struct lyra_err *err)
{
    *key = NULL;
    char *path = NULL, *text = NULL;
    size_t len = 0;
    int rc = read_file(dir, &path, &text, &len, err);
    if (rc == 0 && !text)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "%s does not exist", path);
    for (const char *p = text, *end = text + len; rc == 0 && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *u, *k;
        size_t ulen, klen;
        if (parse_line(p, n, &u, &ulen, &k, &klen) && same_url(u, ulen, url)) {
            if (!(*key = strndup(k, klen)))
                rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            else if (!lyra_credentials_key_valid(*key))
                rc = lyra_err_set(err, LYRA_EINVAL, "the key stored for %s in %s is malformed", url, path);
            break;
        }
        p += n + 1;
    }
    if (rc == 0 && !*key)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no key for %s in %s", url, path);
    if (rc < 0 && *key) {
        free_secret(*key, strlen(*key));
        *key = NULL;
    }
    free_secret(text, len);
    free(path);
    return rc;
}

/* Rewrites the file without url's entries, putting "url key\n" where the
 * first one was (or at the end) when key is not NULL.  *found says whether
 * there was an entry. */
static int rewrite(const char *dir, const char *url, const char *key, bool *found, struct lyra_err *err)
{
    *found = false;
    size_t ul = url ? strlen(url) : 0;
    if (ul == 0 || ul > 4096 || strpbrk(url, " \t\r\n#") || url_len(url, ul) == 0)
        return lyra_err_set(err, LYRA_EINVAL, "the daemon URL must be one word");
    ul = url_len(url, ul);
    if (key && !lyra_credentials_key_valid(key))
        return lyra_err_set(err, LYRA_EINVAL,
                            "the key is malformed (1 to %d printable characters without spaces)",
                            LYRA_CREDENTIALS_KEY_MAX);
    char *path = NULL, *text = NULL;
    size_t len = 0;
    int rc = read_file(dir, &path, &text, &len, err);
    size_t entry = key ? ul + 1 + strlen(key) + 1 : 0;
    size_t cap = len + entry + 2;
    char *out = rc == 0 ? malloc(cap) : NULL;
    if (rc == 0 && !out)
        rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    size_t o = 0;
    bool placed = false;
    for (const char *p = text, *end = text + len; rc == 0 && text && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *u, *k;
        size_t ulen, klen;
        if (parse_line(p, n, &u, &ulen, &k, &klen) && same_url(u, ulen, url)) {
            *found = true;
            if (key && !placed) {
                o += (size_t)snprintf(out + o, cap - o, "%.*s %s\n", (int)ul, url, key);
                placed = true;
            }
        } else {
            memcpy(out + o, p, n);
            o += n;
            out[o++] = '\n';
        }
        p += n + 1;
    }
    if (rc == 0 && key && !placed)
        o += (size_t)snprintf(out + o, cap - o, "%.*s %s\n", (int)ul, url, key);
    if (rc == 0 && (key || *found)) {
        int e = lyra_mkdirs(dir);
        if (e == 0)
            e = lyra_write_file_atomic(path, out, o, 0600);
        if (e < 0)
            rc = lyra_err_set(err, LYRA_EIO, "cannot write %s: %s", path, strerror(-e));
    }
    free_secret(out, o);
    free_secret(text, len);
    free(path);
    return rc;
}

int lyra_credentials_store(const char *dir, const char *url, const char *key, struct lyra_err *err)
{
    bool found;
    if (!key)
        return lyra_err_set(err, LYRA_EINVAL, "no key to store");
    return rewrite(dir, url, key, &found, err);
}

int lyra_credentials_remove(const char *dir, const char *url, struct lyra_err *err)
{
    bool found;
    int rc = rewrite(dir, url, NULL, &found, err);
    if (rc == 0 && !found)
        rc = lyra_err_set(err, LYRA_ENOTFOUND, "no key stored for %s", url);
    return rc;
}
