/* auth_cmd.c — API keys and principals from the command line:
 *   lyra login [--url U]            reads a key (stdin, or a prompt without
 *                                   echo), checks it with GET /permissions,
 *                                   stores it for the daemon's URL
 *   lyra logout [--url U]           forgets it
 *   lyra keys create|list|revoke    POST /keys, GET /keys, DELETE /keys/{id}
 *   lyra users add|list|remove|set-role
 *                                   POST/GET /users, DELETE /users/{name},
 *                                   POST /users/{name}/role
 * A new key is printed alone on stdout (KEY=$(lyra keys create ...)), its
 * description on stderr; no other output ever contains a key.
 * Every command takes --json: the daemon's answer (login and logout: what
 * they did) as JSON on stdout instead of sentences.
 * Exit status (cli/output.h): 0, 1 the daemon refused (its message is
 * printed), 2 usage, 3 no daemon at the URL. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/credentials.h"
#include "cli/expiry.h"
#include "cli/output.h"
#include "core/util.h"

#define TIMEOUT_S 30

/* --- options -------------------------------------------------------- */

struct opt {
    const char *name;   /* "--role" */
    const char **value; /* an option with a value, or NULL */
    bool *flag;         /* a flag, or NULL */
};

/* Parses argv[first..argc) into opts and up to max_pos positional words.
 * Returns -1 to go on, else an exit status (0 after --help, 2 after a
 * usage error, printed with the usage text). */
static int parse(int argc, char **argv, int first, const struct opt *opts, const char **pos, int max_pos,
                 int *n_pos, const char *cmd, void (*usage)(FILE *))
{
    *n_pos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const struct opt *o = NULL;
        const char *value = NULL;
        for (const struct opt *k = opts; k->name && !o; k++) {
            size_t n = strlen(k->name);
            if (strncmp(a, k->name, n) == 0 && (a[n] == '\0' || (a[n] == '=' && k->value))) {
                o = k;
                value = a[n] == '=' ? a + n + 1 : NULL;
            }
        }
        if (o && o->flag) {
            *o->flag = true;
        } else if (o) {
            if (!value && i + 1 >= argc) {
                fprintf(stderr, "lyra %s: %s needs a value\n", cmd, o->name);
                return 2;
            }
            *o->value = value ? value : argv[++i];
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "lyra %s: unknown option '%s'\n", cmd, a);
            usage(stderr);
            return 2;
        } else if (*n_pos < max_pos) {
            pos[(*n_pos)++] = a;
        } else {
            fprintf(stderr, "lyra %s: unexpected argument '%s'\n", cmd, a);
            usage(stderr);
            return 2;
        }
    }
    return -1;
}

/* "/prefix/NAME[suffix]" with NAME percent-encoded; caller frees. */
static char *path_of(const char *prefix, const char *name, const char *suffix)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(name);
    char *enc = malloc(n * 3 + 1), *p = enc;
    if (!enc)
        return NULL;
    for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
            *s == '_' || *s == '.' || *s == '~') {
            *p++ = (char)*s;
        } else {
            *p++ = '%';
            *p++ = hex[*s >> 4];
            *p++ = hex[*s & 15];
        }
    }
    *p = '\0';
    char *path = NULL;
    if (asprintf(&path, "%s%s%s", prefix, enc, suffix ? suffix : "") < 0)
        path = NULL;
    free(enc);
    return path;
}

/* One request; prints the daemon's error as "lyra CMD: ..." and returns
 * non-zero, or 0 with *answer (caller decrefs). */
static int call(struct lyra_client *c, const char *cmd, const char *method, const char *path, json_t *body,
                json_t **answer)
{
    int rc = path ? lyra_client_request_json(c, method, path, body, TIMEOUT_S, answer) : LYRA_ENOMEM;
    if (rc < 0) {
        fprintf(stderr, "lyra %s: %s\n", cmd, !path ? "out of memory" : lyra_client_errmsg(c));
        return path ? lyra_cli_exit_code(rc) : 1;
    }
    return 0;
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));
    printf("%s\n", s ? s : "null");
    free(s);
}

/* A list answer: a bare array, or the array under `field`. */
static json_t *list_of(json_t *answer, const char *field)
{
    return json_is_array(answer) ? answer : json_object_get(answer, field);
}

/* Prints rows of n_cols cells (the first row the heading), columns padded. */
static void print_table(char (*cells)[8][80], size_t rows, int n_cols)
{
    size_t width[8] = {0};
    for (size_t r = 0; r < rows; r++)
        for (int k = 0; k < n_cols; k++)
            if (strlen(cells[r][k]) > width[k])
                width[k] = strlen(cells[r][k]);
    for (size_t r = 0; r < rows; r++)
        for (int k = 0; k < n_cols; k++)
            if (k == n_cols - 1)
                printf("%s\n", cells[r][k]);
            else
                printf("%-*s  ", (int)width[k], cells[r][k]);
}

/* "2026-11-27 14:00" (UTC) for a wall-clock ms value; `none` when it is not
 * a number. */
static void date_cell(json_t *v, const char *none, char *buf, size_t len)
{
    if (!json_is_integer(v)) {
        lyra_fmt(buf, len, "%s", none);
        return;
    }
    char ts[40];
    lyra_format_ts(json_integer_value(v), ts, sizeof ts);
    ts[10] = ' ';
    ts[16] = '\0'; /* drop the seconds */
    lyra_fmt(buf, len, "%s", ts);
}

/* "5m ago" for a wall-clock ms value, `none` when it is not a number. */
static void ago_cell(json_t *v, const char *none, char *buf, size_t len)
{
    if (!json_is_integer(v)) {
        lyra_fmt(buf, len, "%s", none);
        return;
    }
    long s = (long)((lyra_wall_ms() - json_integer_value(v)) / 1000);
    if (s < 0)
        s = 0;
    if (s < 60)
        lyra_fmt(buf, len, "%lds ago", s);
    else if (s < 3600)
        lyra_fmt(buf, len, "%ldm ago", s / 60);
    else if (s < 86400)
        lyra_fmt(buf, len, "%ldh ago", s / 3600);
    else
        lyra_fmt(buf, len, "%ldd ago", s / 86400);
}

static const char *str(json_t *o, const char *field, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, field));
    return s && *s ? s : dflt;
}

/* Prints a new key: the key alone on stdout, what it is on stderr. */
static void print_new_key(const char *cmd, json_t *answer)
{
    const char *key = json_string_value(json_object_get(answer, "key"));
    if (!key) {
        fprintf(stderr, "lyra %s: the daemon's answer has no key\n", cmd);
        return;
    }
    printf("%s\n", key);
    fflush(stdout);
    /* POST /users {"key":true} describes the key under "key_info". */
    json_t *info = json_object_get(answer, "key_info");
    if (json_is_object(info))
        answer = info;
    char exp[40];
    date_cell(json_object_get(answer, "expires_ms"), "never", exp, sizeof exp);
    fprintf(stderr,
            "lyra %s: key %s for %s (expires: %s%s). It is shown this once and cannot be\n"
            "retrieved again: store it now (`lyra keys revoke %s` if it leaks).\n",
            cmd, str(answer, "id", str(answer, "key_id", "?")),
            str(answer, "principal", str(answer, "name", "?")), exp, strcmp(exp, "never") == 0 ? "" : " UTC",
            str(answer, "id", str(answer, "key_id", "ID")));
}

/* --- login / logout ------------------------------------------------- */

static void login_usage(FILE *out)
{
    fprintf(out, "usage: lyra login [--json] [--url URL] [--api-key-file PATH] [--home DIR]\n\n"
                 "Reads an API key (from stdin; at a terminal, a prompt that does not echo),\n"
                 "checks it with the daemon (GET /permissions) and stores it for the daemon's\n"
                 "URL in the credentials file ($LYRA_CONFIG_DIR, else $XDG_CONFIG_HOME/lyra,\n"
                 "else ~/.config/lyra; file `credentials`, mode 0600), where every client\n"
                 "command finds it when neither --api-key nor LYRA_API_KEY gives a key.\n"
                 "  --json      print {url, principal, role} instead of a sentence\n"
                 "  --url URL   the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "              then the configured host and port, 127.0.0.1:8000)\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Reads the first line of fd 0 into buf (cap bytes), without its end.
 * At a terminal, prompts on stderr with echo off (restored on every path,
 * Ctrl-C included).  0, or -1 after printing why. */
static int read_key(const char *url, char *buf, size_t cap)
{
    bool tty = isatty(0) == 1;
    struct termios saved, quiet;
    struct sigaction sa = {.sa_handler = on_sigint}, old_int, old_term;
    if (tty) {
        if (tcgetattr(0, &saved) < 0) {
            fprintf(stderr, "lyra login: cannot read the terminal's settings: %s\n", strerror(errno));
            return -1;
        }
        sigemptyset(&sa.sa_mask); /* no SA_RESTART: the read returns on Ctrl-C */
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(0, TCSAFLUSH, &quiet);
        fprintf(stderr, "API key for %s: ", url);
        fflush(stderr);
    }
    size_t n = 0;
    bool eol = false, failed = false;
    while (!eol && !interrupted) {
        char ch;
        ssize_t r = read(0, &ch, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            failed = true;
        if (r <= 0)
            break;
        if (ch == '\n')
            eol = true;
        else if (n + 1 < cap)
            buf[n++] = ch;
        else
            failed = true; /* longer than any key: keep reading to the end, refuse it */
    }
    buf[n] = '\0';
    if (tty) {
        tcsetattr(0, TCSAFLUSH, &saved);
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    while (n > 0 && (buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    size_t lead = strspn(buf, " \t");
    memmove(buf, buf + lead, n - lead + 1);
    if (interrupted) {
        explicit_bzero(buf, cap);
        fprintf(stderr, "\nlyra login: interrupted\n");
        return -1;
    }
    if (failed || !lyra_credentials_key_valid(buf)) {
        explicit_bzero(buf, cap);
        fprintf(stderr, "lyra login: %s\n",
                failed ? "cannot read the key"
                       : "no key given (one line: 1 to 256 printable characters, no spaces)");
        return -1;
    }
    return 0;
}

int lyra_cmd_login(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *pos[1];
    int n_pos;
    bool json = false;
    const struct opt opts[] = {{"--url", &url_flag, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    int st = parse(argc, argv, 1, opts, pos, 0, &n_pos, "login", login_usage);
    if (st >= 0)
        return st;
    char *url = NULL, *key = NULL;
    const char *source = NULL;
    char typed[LYRA_CREDENTIALS_KEY_MAX + 2];
    struct lyra_client *c = NULL;
    json_t *answer = NULL;
    int status = 1;
    enum lyra_client_origin origin;
    if (lyra_client_locate(url_flag, &flags, &url, &origin) < 0)
        goto out;
    if (flags.api_key || flags.api_key_file) {
        if (lyra_client_resolve_key(&flags, url, "login", &key, &source) < 0)
            goto out;
    } else {
        if (read_key(url, typed, sizeof typed) < 0)
            goto out;
        if (!(key = strdup(typed)))
            goto out;
        explicit_bzero(typed, sizeof typed);
        source = "the standard input";
    }
    struct lyra_err err = {0};
    if (lyra_client_new(&c, url, &err) < 0) {
        fprintf(stderr, "lyra login: %s\n", err.msg);
        goto out;
    }
    lyra_client_set_hint(c, false);
    lyra_client_set_origin(c, origin);
    if (lyra_client_set_key(c, key, source) < 0) {
        fprintf(stderr, "lyra login: %s\n", lyra_client_errmsg(c));
        goto out;
    }
    if ((status = call(c, "login", "GET", "/permissions", NULL, &answer)) != 0)
        goto out;
    status = 1;
    json_t *caller = json_object_get(answer, "caller");
    const char *who = str(caller, "principal", str(caller, "name", NULL));
    const char *role = str(caller, "role", "?");
    if (!who) {
        fprintf(stderr, "lyra login: the daemon's answer names no principal (is it a Lyra daemon?)\n");
        goto out;
    }
    if (strcmp(who, "anonymous") == 0) {
        /* A daemon without auth on loopback may answer without checking. */
        fprintf(stderr, "lyra login: %s accepted the request as 'anonymous': it did not check the key\n",
                lyra_client_url(c));
        goto out;
    }
    char *dir = NULL;
    if (lyra_credentials_dir(&dir) < 0) {
        fprintf(stderr, "lyra login: no place for the credentials file: set LYRA_CONFIG_DIR or HOME\n");
        goto out;
    }
    int rc = lyra_credentials_store(dir, lyra_client_url(c), key, &err);
    if (rc < 0) {
        fprintf(stderr, "lyra login: %s\n", err.msg);
    } else if (json) {
        json_t *j = json_pack("{s:s, s:s, s:s}", "url", lyra_client_url(c), "principal", who, "role", role);
        rc = j && lyra_cli_print_json("login", j, false) == 0 ? 0 : -1;
        json_decref(j);
    } else {
        printf("logged in to %s as %s (role %s)\n", lyra_client_url(c), who, role);
    }
    free(dir);
    status = rc < 0 ? 1 : 0;
out:
    json_decref(answer);
    lyra_client_free(c);
    if (key)
        explicit_bzero(key, strlen(key));
    free(key);
    free(url);
    return status;
}

static void logout_usage(FILE *out)
{
    fprintf(out, "usage: lyra logout [--json] [--url URL] [--home DIR]\n\n"
                 "Removes the key `lyra login` stored for the daemon's URL from the credentials\n"
                 "file.  The key itself stays valid: `lyra keys revoke ID` ends it.\n"
                 "  --json      print {url, removed} instead of a sentence\n"
                 "  --url URL   the daemon (default: env LYRA_URL, $LYRA_HOME/serve.json,\n"
                 "              then the configured host and port, 127.0.0.1:8000)\n");
}

int lyra_cmd_logout(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    const char *url_flag = NULL, *pos[1];
    int n_pos;
    bool json = false;
    const struct opt opts[] = {{"--url", &url_flag, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    int st = parse(argc, argv, 1, opts, pos, 0, &n_pos, "logout", logout_usage);
    if (st >= 0)
        return st;
    char *url = NULL, *dir = NULL;
    if (lyra_client_find_daemon(url_flag, &flags, &url) < 0)
        return 1;
    if (lyra_credentials_dir(&dir) < 0) {
        fprintf(stderr, "lyra logout: no credentials file: neither LYRA_CONFIG_DIR nor HOME is set\n");
        free(url);
        return 1;
    }
    struct lyra_err err = {0};
    int rc = lyra_credentials_remove(dir, url, &err);
    if (json && (rc == 0 || rc == LYRA_ENOTFOUND)) {
        json_t *j = json_pack("{s:s, s:b}", "url", url, "removed", rc == 0);
        if (!j || lyra_cli_print_json("logout", j, false) != 0)
            rc = LYRA_ENOMEM;
        json_decref(j);
    } else if (rc == 0)
        printf("logged out of %s\n", url);
    else if (rc == LYRA_ENOTFOUND)
        printf("no key was stored for %s\n", url);
    else
        fprintf(stderr, "lyra logout: %s\n", err.msg);
    free(dir);
    free(url);
    return rc == 0 || rc == LYRA_ENOTFOUND ? 0 : 1;
}

/* --- keys ----------------------------------------------------------- */

static void keys_usage(FILE *out)
{
    fprintf(out, "usage: lyra keys create --role ROLE [--name N] [--expires D] [--label L]\n"
                 "       lyra keys create --user NAME [--expires D] [--label L]\n"
                 "       lyra keys list [--user NAME]\n"
                 "       lyra keys revoke ID\n"
                 "       (each also takes --json, --url URL, --home DIR and the key flags below)\n\n"
                 "create makes a key and prints it alone on stdout, once (KEY=$(lyra keys\n"
                 "create ...)): with --role, for a new service account N (generated when\n"
                 "--name is absent) holding ROLE; with --user, for the existing principal NAME.\n"
                 "  --expires D   30d, 12h, 90m, 2w, 3600s from now, or a date YYYY-MM-DD\n"
                 "                (00:00 UTC that day); default: never\n"
                 "  --label L     free text shown by `keys list`\n"
                 "list shows ID PREFIX PRINCIPAL LABEL STATE EXPIRES LAST USED (all keys, or\n"
                 "NAME's).  revoke ends key ID at once.  --json prints the daemon's JSON\n"
                 "answer instead (create: with the key in it).\n"
                 "These need permission permissions.manage (the admin role).\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

static int keys_create(struct lyra_client *c, const char *role, const char *name, const char *user,
                       const char *expires, const char *label, bool json)
{
    struct lyra_expiry exp = {0};
    struct lyra_err err = {0};
    if (expires && lyra_expiry_parse(expires, lyra_wall_ms(), &exp, &err) < 0) {
        fprintf(stderr, "lyra keys create: %s\n", err.msg);
        return 2;
    }
    json_t *body = json_object();
    int bad = !body;
    if (user)
        bad |= json_object_set_new(body, "principal", json_string(user));
    else
        bad |= json_object_set_new(body, "role", json_string(role));
    if (name)
        bad |= json_object_set_new(body, "name", json_string(name));
    if (label)
        bad |= json_object_set_new(body, "label", json_string(label));
    if (exp.in_s)
        bad |= json_object_set_new(body, "expires_in", json_integer(exp.in_s));
    if (exp.at_ms)
        bad |= json_object_set_new(body, "expires_at", json_integer(exp.at_ms));
    if (bad) { /* json_string refuses text that is not UTF-8 */
        fprintf(stderr, "lyra keys create: out of memory, or a name or label that is not UTF-8\n");
        json_decref(body);
        return 2;
    }
    json_t *answer = NULL;
    int st = call(c, "keys create", "POST", "/keys", body, &answer);
    json_decref(body);
    if (st == 0 && json)
        lyra_cli_print_json("keys create", answer, false);
    else if (st == 0)
        print_new_key("keys create", answer);
    if (st == 0)
        st = json_is_string(json_object_get(answer, "key")) ? 0 : 1;
    json_decref(answer);
    return st;
}

static void keys_table(json_t *keys)
{
    size_t n = json_array_size(keys);
    if (n == 0) {
        printf("no keys\n");
        return;
    }
    char(*cells)[8][80] = calloc(n + 1, sizeof *cells);
    if (!cells) {
        fprintf(stderr, "lyra keys list: out of memory\n");
        return;
    }
    static const char *const head[] = {"ID", "PREFIX", "PRINCIPAL", "LABEL", "STATE", "EXPIRES", "LAST USED"};
    for (int k = 0; k < 7; k++)
        lyra_fmt(cells[0][k], 80, "%s", head[k]);
    size_t i;
    json_t *j;
    json_array_foreach(keys, i, j)
    {
        char(*row)[80] = cells[i + 1];
        lyra_fmt(row[0], 80, "%s", str(j, "id", "?"));
        lyra_fmt(row[1], 80, "%s", str(j, "prefix", "-"));
        lyra_fmt(row[2], 80, "%s", str(j, "principal", "?"));
        lyra_fmt(row[3], 80, "%s", str(j, "label", "-"));
        lyra_fmt(row[4], 80, "%s", str(j, "state", "?"));
        date_cell(json_object_get(j, "expires_ms"), "never", row[5], 80);
        ago_cell(json_object_get(j, "last_used_ms"), "never", row[6], 80);
    }
    print_table(cells, n + 1, 7);
    free(cells);
}

int lyra_cmd_keys(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        keys_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    const char *url_flag = NULL, *role = NULL, *name = NULL, *user = NULL, *expires = NULL, *label = NULL;
    const char *pos[1] = {NULL};
    bool json = false;
    int n_pos = 0, max_pos = 0, st;
    const struct opt create_opts[] = {
        {"--url", &url_flag, NULL}, {"--role", &role, NULL},       {"--name", &name, NULL},
        {"--user", &user, NULL},    {"--expires", &expires, NULL}, {"--label", &label, NULL},
        {"--json", NULL, &json},    {NULL, NULL, NULL}};
    const struct opt list_opts[] = {
        {"--url", &url_flag, NULL}, {"--user", &user, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    const struct opt revoke_opts[] = {{"--url", &url_flag, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    const struct opt *opts;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "keys %s", verb);
    if (strcmp(verb, "create") == 0) {
        opts = create_opts;
    } else if (strcmp(verb, "list") == 0 || strcmp(verb, "ls") == 0) {
        opts = list_opts;
    } else if (strcmp(verb, "revoke") == 0) {
        opts = revoke_opts;
        max_pos = 1;
    } else {
        fprintf(stderr, "lyra keys: unknown command '%s' (create, list or revoke)\n", verb);
        keys_usage(stderr);
        return 2;
    }
    if ((st = parse(argc, argv, 2, opts, pos, max_pos, &n_pos, cmd, keys_usage)) >= 0)
        return st;
    if (opts == create_opts && !role == !user) {
        fprintf(stderr, "lyra keys create: --role ROLE (a new service account) or --user NAME (an existing "
                        "one)\n");
        return 2;
    }
    if (opts == create_opts && name && user) {
        fprintf(stderr, "lyra keys create: --name goes with --role (--user names an existing principal)\n");
        return 2;
    }
    if (opts == revoke_opts && n_pos != 1) {
        fprintf(stderr, "lyra keys revoke: which key? (an ID from `lyra keys list`)\n");
        return 2;
    }
    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, cmd, &c) < 0)
        return 1;
    json_t *answer = NULL;
    if (opts == create_opts) {
        st = keys_create(c, role, name, user, expires, label, json);
    } else if (opts == revoke_opts) {
        char *path = path_of("/keys/", pos[0], NULL);
        st = call(c, cmd, "DELETE", path, NULL, &answer);
        free(path);
        if (st == 0 && json)
            st = lyra_cli_print_json(cmd, answer, false);
        else if (st == 0)
            printf("revoked key %s\n", str(answer, "revoked", pos[0]));
    } else {
        char *path = user ? path_of("/keys?principal=", user, NULL) : strdup("/keys");
        st = call(c, cmd, "GET", path, NULL, &answer);
        free(path);
        if (st == 0 && json)
            print_json(answer);
        else if (st == 0)
            keys_table(list_of(answer, "keys"));
    }
    json_decref(answer);
    lyra_client_free(c);
    return st;
}

/* --- users ---------------------------------------------------------- */

static void users_usage(FILE *out)
{
    fprintf(out, "usage: lyra users add NAME --role ROLE [--service] [--key]\n"
                 "       lyra users list\n"
                 "       lyra users remove NAME\n"
                 "       lyra users set-role NAME ROLE\n"
                 "       (each also takes --json (the daemon's answer), --url URL, --home DIR\n"
                 "       and the key flags below)\n\n"
                 "add creates principal NAME with ROLE: a user, or with --service a service\n"
                 "account; --key also creates its first key and prints it alone on stdout,\n"
                 "once.  list shows NAME KIND ROLE KEYS CREATED; remove deletes NAME and\n"
                 "revokes its keys; set-role gives NAME another role.  The daemon refuses a\n"
                 "change that leaves no admin with a usable key (409 last_admin).\n"
                 "These need permission permissions.manage (the admin role).\n");
    fputs(LYRA_CLI_KEY_USAGE, out);
}

static void users_table(json_t *users)
{
    size_t n = json_array_size(users);
    if (n == 0) {
        printf("no users\n");
        return;
    }
    char(*cells)[8][80] = calloc(n + 1, sizeof *cells);
    if (!cells) {
        fprintf(stderr, "lyra users list: out of memory\n");
        return;
    }
    static const char *const head[] = {"NAME", "KIND", "ROLE", "KEYS", "CREATED"};
    for (int k = 0; k < 5; k++)
        lyra_fmt(cells[0][k], 80, "%s", head[k]);
    size_t i;
    json_t *j;
    json_array_foreach(users, i, j)
    {
        char(*row)[80] = cells[i + 1];
        lyra_fmt(row[0], 80, "%s", str(j, "name", "?"));
        lyra_fmt(row[1], 80, "%s", str(j, "kind", "?"));
        lyra_fmt(row[2], 80, "%s", str(j, "role", "?"));
        json_t *k = json_object_get(j, "keys");
        lyra_fmt(row[3], 80, "%lld", json_is_integer(k) ? (long long)json_integer_value(k) : 0LL);
        date_cell(json_object_get(j, "created_ms"), "-", row[4], 80);
    }
    print_table(cells, n + 1, 5);
    free(cells);
}

int lyra_cmd_users(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        users_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    const char *url_flag = NULL, *role = NULL, *pos[2] = {NULL, NULL};
    bool json = false, service = false, key = false;
    int n_pos = 0, want_pos, st;
    const struct opt add_opts[] = {{"--url", &url_flag, NULL},
                                   {"--role", &role, NULL},
                                   {"--service", NULL, &service},
                                   {"--key", NULL, &key},
                                   {"--json", NULL, &json},
                                   {NULL, NULL, NULL}};
    const struct opt list_opts[] = {{"--url", &url_flag, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    const struct opt plain_opts[] = {{"--url", &url_flag, NULL}, {"--json", NULL, &json}, {NULL, NULL, NULL}};
    const struct opt *opts;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "users %s", verb);
    if (strcmp(verb, "add") == 0) {
        opts = add_opts, want_pos = 1;
    } else if (strcmp(verb, "list") == 0 || strcmp(verb, "ls") == 0) {
        opts = list_opts, want_pos = 0;
    } else if (strcmp(verb, "remove") == 0 || strcmp(verb, "rm") == 0) {
        opts = plain_opts, want_pos = 1;
    } else if (strcmp(verb, "set-role") == 0) {
        opts = plain_opts, want_pos = 2;
    } else {
        fprintf(stderr, "lyra users: unknown command '%s' (add, list, remove or set-role)\n", verb);
        users_usage(stderr);
        return 2;
    }
    if ((st = parse(argc, argv, 2, opts, pos, want_pos, &n_pos, cmd, users_usage)) >= 0)
        return st;
    if (n_pos != want_pos) {
        fprintf(stderr, "lyra %s: %s\n", cmd,
                want_pos == 2 ? "needs NAME and ROLE" : "which principal? (a NAME from `lyra users list`)");
        return 2;
    }
    if (opts == add_opts && !role) {
        fprintf(stderr,
                "lyra users add: --role ROLE is needed (admin, operator, user, viewer or a custom role)\n");
        return 2;
    }
    struct lyra_client *c = NULL;
    if (lyra_client_connect(url_flag, &flags, cmd, &c) < 0)
        return 1;
    json_t *answer = NULL, *body = NULL;
    char *path = NULL;
    if (opts == add_opts) {
        body = json_pack("{s:s?, s:s?, s:s, s:b}", "name", pos[0], "role", role, "kind",
                         service ? "service" : "user", "key", key);
        st = body ? call(c, cmd, "POST", "/users", body, &answer)
                  : (fprintf(stderr,
                             "lyra %s: a name or role "
                             "that is not UTF-8\n",
                             cmd),
                     2);
        if (st == 0 && json) {
            st = lyra_cli_print_json(cmd, answer, false);
            if (st == 0 && key && !json_is_string(json_object_get(answer, "key")))
                st = 1;
        } else if (st == 0 && key) {
            print_new_key(cmd, answer);
            st = json_is_string(json_object_get(answer, "key")) ? 0 : 1;
        } else if (st == 0) {
            printf("added %s %s (role %s)\n", service ? "service account" : "user",
                   str(answer, "name", pos[0]), str(answer, "role", role));
        }
    } else if (opts == list_opts) {
        st = call(c, cmd, "GET", "/users", NULL, &answer);
        if (st == 0 && json)
            print_json(answer);
        else if (st == 0)
            users_table(list_of(answer, "users"));
    } else if (want_pos == 1) {
        path = path_of("/users/", pos[0], NULL);
        st = call(c, cmd, "DELETE", path, NULL, &answer);
        if (st == 0 && json)
            st = lyra_cli_print_json(cmd, answer, false);
        else if (st == 0)
            printf("removed %s (its keys are revoked)\n", str(answer, "removed", pos[0]));
    } else {
        path = path_of("/users/", pos[0], "/role");
        body = json_pack("{s:s?}", "role", pos[1]);
        st = body ? call(c, cmd, "POST", path, body, &answer) : 2;
        if (st == 0 && json)
            st = lyra_cli_print_json(cmd, answer, false);
        else if (st == 0)
            printf("%s now has role %s\n", pos[0], str(answer, "role", pos[1]));
    }
    free(path);
    json_decref(body);
    json_decref(answer);
    lyra_client_free(c);
    return st;
}
