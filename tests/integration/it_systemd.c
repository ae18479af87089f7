/* it_systemd.c — Lyra under systemd: deploy/lyra.service passes
 * `systemd-analyze verify` (with ExecStart pointed at this build's binary)
 * and has the settings DEPLOYMENT.md promises; and `lyra serve` speaks the
 * notify protocol to a NOTIFY_SOCKET this test listens on, as systemd's
 * Type=notify + WatchdogSec would see it: READY=1 only once /health
 * answers, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM, and
 * nothing for a watchdog meant for another PID.
 *
 * (A real Type=notify run under `systemd-run` needs systemd as PID 1 and a
 * bus, which CI containers lack; the socket is what systemd reads.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static const char *source_dir(void)
{
    const char *s = getenv("LYRA_SOURCE_DIR");
    return s ? s : "..";
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs a shell command, returns its exit status and its output (caller
 * frees). */
static int run_capture(const char *cmd, char **output)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int st = pclose(p);
    *output = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool have_tool(const char *name)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "PATH=\"$PATH:/usr/sbin:/sbin\" command -v %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

/* ------------------------------------------------------------------ */

static void test_unit_verifies(void **state)
{
    if (!have_tool("systemd-analyze")) {
        if (it_in_ci())
            fail_msg("systemd-analyze is missing: scripts/setup-packages.sh installs systemd");
        skip();
    }
    char dir[64], unit[128], cmd[1024];
    it_mkdtemp(dir, sizeof dir);
    snprintf(unit, sizeof unit, "%s/lyra.service", dir);
    const char *bin = getenv("LYRA_BIN");
    assert_non_null(bin);
    /* verify checks that ExecStart's binary exists: point it at ours */
    snprintf(cmd, sizeof cmd, "sed 's#^ExecStart=/usr/local/bin/lyra #ExecStart=%s #' '%s/deploy/lyra.service' > '%s'",
             bin, source_dir(), unit);
    assert_int_equal(system(cmd), 0);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "grep -c '^ExecStart=%s serve --home /var/lib/lyra$' '%s'", bin, unit);
    assert_int_equal(run_capture(cmd, &out), 0);
    free(out);

    /* verify exits 0 for unknown keys and unparsable values (it only
     * warns), so any output at all is a failure. */
    snprintf(cmd, sizeof cmd, "SYSTEMD_LOG_COLOR=0 systemd-analyze verify '%s' 2>&1", unit);
    int rc = run_capture(cmd, &out);
    if (rc != 0 || out[0])
        fail_msg("systemd-analyze verify (rc %d):\n%s", rc, out);
    free(out);

    /* ... and it does notice a broken unit (this test can fail) */
    snprintf(cmd, sizeof cmd, "sed -i 's/^Type=notify$/Type=notifyy/' '%s' && SYSTEMD_LOG_COLOR=0 systemd-analyze verify '%s' 2>&1",
             unit, unit);
    run_capture(cmd, &out);
    assert_non_null(strstr(out, "notifyy"));
    free(out);

    /* The settings the deployment relies on. */
    static const char *const want[] = {
        "Type=notify", "NotifyAccess=main", "WatchdogSec=30", "User=lyra", "Group=lyra",
        "ProtectSystem=strict", "ReadWritePaths=/var/lib/lyra", "ProtectHome=yes", "PrivateTmp=yes",
        "NoNewPrivileges=yes", "Restart=on-failure", "KillMode=mixed", "EnvironmentFile=-/etc/lyra/lyra.env",
        "StateDirectory=lyra", "LimitNOFILE=65536",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        snprintf(cmd, sizeof cmd, "grep -qx '%s' '%s/deploy/lyra.service'", want[i], source_dir());
        if (system(cmd) != 0)
            fail_msg("deploy/lyra.service lacks %s", want[i]);
    }
    /* TimeoutStopSec must outlast the default drain (10 s) and the workers'
     * stop. */
    snprintf(cmd, sizeof cmd, "sed -n 's/^TimeoutStopSec=\\([0-9]*\\)$/\\1/p' '%s/deploy/lyra.service'", source_dir());
    assert_int_equal(run_capture(cmd, &out), 0);
    assert_true(atoi(out) > 10 + 5);
    free(out);
    it_rmrf(dir);
}

/* ------------------------------------------------------------------ */
/* The notify socket                                                  */

struct notify_sock {
    int fd;
    char path[96];
    char dir[64];
};

static void notify_open(struct notify_sock *ns)
{
    it_mkdtemp(ns->dir, sizeof ns->dir);
    snprintf(ns->path, sizeof ns->path, "%.80s/notify", ns->dir);
    ns->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(ns->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", ns->path);
    assert_int_equal(bind(ns->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static void notify_close(struct notify_sock *ns)
{
    close(ns->fd);
    it_rmrf(ns->dir);
}

/* The next datagram within timeout_ms, as text (static buffer), or NULL. */
static const char *notify_next(struct notify_sock *ns, int timeout_ms)
{
    static char buf[4096];
    struct pollfd p = {.fd = ns->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return NULL;
    ssize_t n = recv(ns->fd, buf, sizeof buf - 1, 0);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

static bool has_line(const char *msg, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, line, len) == 0 && (p[len] == '\n' || p[len] == '\0'))
            return true;
    return false;
}

static void test_notify_protocol(void **state)
{
    struct notify_sock ns;
    notify_open(&ns);
    char env_sock[200];
    snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", ns.path);
    const char *env[] = {env_sock, "WATCHDOG_USEC=2000000", NULL};
    struct it_server srv;
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);

    /* STATUS=starting, then READY=1 (with the address) once /health answers */
    bool ready = false, starting = false;
    int pings_before_ready = 0;
    int64_t deadline = now_ms() + 10000;
    while (!ready && now_ms() < deadline) {
        const char *m = notify_next(&ns, 1000);
        if (!m)
            continue;
        if (has_line(m, "STATUS=starting"))
            starting = true;
        if (has_line(m, "WATCHDOG=1"))
            pings_before_ready++;
        if (has_line(m, "READY=1")) {
            ready = true;
            assert_non_null(strstr(m, "STATUS=serving on 127.0.0.1:"));
        }
    }
    assert_true(starting);
    assert_true(ready);
    struct it_response r;
    assert_int_equal(it_http(srv.port, "GET", "/health", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    it_response_free(&r);

    /* WATCHDOG=1 every second (WATCHDOG_USEC/2): count them over 4.5 s */
    int pings = 0;
    int64_t first = 0, last = 0;
    deadline = now_ms() + 4500;
    while (now_ms() < deadline) {
        const char *m = notify_next(&ns, 200);
        if (m && has_line(m, "WATCHDOG=1")) {
            pings++;
            last = now_ms();
            if (!first)
                first = last;
        }
        assert_true(!m || !has_line(m, "READY=1")); /* once only */
    }
    print_message("watchdog: %d pings in 4.5 s (%d before READY), %lld ms between the first and last\n", pings,
                  pings_before_ready, (long long)(last - first));
    assert_true(pings >= 3);
    assert_true(pings <= 7); /* paced, not a flood */

    /* SIGTERM: STOPPING=1, and the daemon exits 0 */
    kill(srv.pid, SIGTERM);
    bool stopping = false;
    deadline = now_ms() + 10000;
    while (!stopping && now_ms() < deadline) {
        const char *m = notify_next(&ns, 500);
        if (m && has_line(m, "STOPPING=1"))
            stopping = true;
    }
    assert_true(stopping);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
    notify_close(&ns);
}

/* A watchdog meant for another process (WATCHDOG_PID) is not ours: READY
 * still comes, pings do not; without NOTIFY_SOCKET nothing is sent at all
 * (the daemon starts as usual). */
static void test_watchdog_other_pid(void **state)
{
    struct notify_sock ns;
    notify_open(&ns);
    char env_sock[200];
    snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", ns.path);
    const char *env[] = {env_sock, "WATCHDOG_USEC=400000", "WATCHDOG_PID=1", NULL};
    struct it_server srv;
    assert_int_equal(it_server_start(&srv, NULL, NULL, env), 0);
    bool ready = false;
    int pings = 0;
    int64_t deadline = now_ms() + 3000;
    while (now_ms() < deadline) {
        const char *m = notify_next(&ns, 200);
        if (m && has_line(m, "READY=1"))
            ready = true;
        if (m && has_line(m, "WATCHDOG=1"))
            pings++;
    }
    assert_true(ready);
    assert_int_equal(pings, 0);
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);

    while (notify_next(&ns, 0)) /* what the first daemon said last (STOPPING=1) */
        ;
    /* no NOTIFY_SOCKET (the harness's environment has none) */
    const char *plain[] = {"WATCHDOG_USEC=400000", NULL};
    assert_int_equal(it_server_start(&srv, NULL, NULL, plain), 0);
    assert_null(notify_next(&ns, 1000));
    assert_int_equal(it_server_stop(&srv, SIGTERM), 0);
    it_server_cleanup(&srv);
    notify_close(&ns);
}

int main(void)
{
    /* a NOTIFY_SOCKET of the environment running the suite is not ours */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unit_verifies),
        cmocka_unit_test(test_notify_protocol),
        cmocka_unit_test(test_watchdog_other_pid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
