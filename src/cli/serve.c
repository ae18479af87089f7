/* serve.c — `lyra serve`: load the configuration, open the server, serve
 * until SIGINT/SIGTERM, drain, exit 0.  Under systemd (Type=notify) it
 * also tells systemd when it serves, pings its watchdog while /health
 * answers, and says when it stops (sys/sdnotify.h). */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "api/server.h"
#include "cli/cli.h"
#include "core/log.h"
#include "sys/sdnotify.h"

/* The notifier's view of the daemon (sys/sdnotify.h hooks). */
static enum lyra_sdnotify_state sd_state(void *ud)
{
    struct lyra_server *srv = ud;
    switch (atomic_load(&srv->state)) {
    case LYRA_SERVER_READY:
        return LYRA_SDNOTIFY_SERVING;
    case LYRA_SERVER_DRAINING:
        return LYRA_SDNOTIFY_STOPPING;
    default:
        return LYRA_SDNOTIFY_STARTING;
    }
}

/* Alive: first, that HTTP answers — a GET /health over loopback, so that
 * READY=1 means "serving" — and from then on, that the supervisor loop,
 * which runs every worker, request hand-off and deadline, answers a call
 * (lyra_manager_status goes through it and waits: a deadlocked loop never
 * returns, the pings stop, and systemd restarts the daemon).  The watchdog
 * does not probe HTTP: a probe needs a free connection slot, so a client
 * holding every slot (slow headers) could have the daemon restarted every
 * WatchdogSec; a saturated listener is bounded by server.idle_timeout_s. */
static bool sd_alive(void *ud, char *why, size_t why_len)
{
    static bool http_confirmed; /* the notifier's thread only */
    struct lyra_server *srv = ud;
    if (!http_confirmed)
        return http_confirmed = lyra_sdnotify_probe_http(srv->cfg->server.host, lyra_http_port(srv->http), "/health",
                                                         5000, NULL, why, why_len);
    json_t *st = lyra_manager_status(srv->manager);
    bool ok = st != NULL;
    if (!ok)
        snprintf(why, why_len, "the supervisor loop did not answer");
    json_decref(st);
    return ok;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lyra serve [--home DIR] [--config FILE] [--host ADDR] [--port N] [--models-dir DIR]\n\n"
            "Runs the Lyra daemon.  Defaults: 127.0.0.1:8000, LYRA_HOME ~/.local/share/lyra.\n"
            "Every setting can also come from $LYRA_HOME/lyra.yaml or LYRA_<SECTION>_<KEY>\n"
            "(see docs/configuration.md).  --port 0 picks a free port; the daemon writes\n"
            "its address to $LYRA_HOME/serve.json.  SIGINT/SIGTERM drain and exit 0.\n");
}

int lyra_cmd_serve(int argc, char **argv)
{
    struct lyra_common_flags flags = {0};
    argc = lyra_cli_common_flags(argc, argv, &flags);
    if (argc < 0)
        return 2;
    if (argc > 1) {
        bool help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
        if (!help)
            fprintf(stderr, "lyra serve: unknown argument '%s'\n", argv[1]);
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }

    /* Everything the daemon and its workers create (LYRA_HOME, lyra.db and
     * its -wal/-shm, serve.json, lyra.lock, logs, keys) is private to the
     * user; the places that create files also pass explicit modes. */
    umask(077);

    /* Block the stop signals before any thread exists, so every thread
     * inherits the mask and the main thread alone receives them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A file size limit (ulimit -f) must make writes fail with EFBIG, which
     * the store and the log report, not kill the daemon. */
    signal(SIGXFSZ, SIG_IGN);

    struct lyra_config cfg;
    if (lyra_cli_load_config(&cfg, &flags, 0) != 0)
        return 1;
    struct lyra_err err = {0};
    if (lyra_log_open(cfg.log.level, cfg.log.format, cfg.log.file, &err) < 0) {
        fprintf(stderr, "lyra serve: %s\n", err.msg);
        lyra_config_free(&cfg);
        return 1;
    }
    if (cfg.file)
        lyra_info("config", "configuration read from %s", cfg.file);
    /* An old file is used as migrated in memory and never rewritten here, so
     * that a read-only configuration still starts. */
    if (cfg.file && cfg.file_schema_version < cfg.schema_version)
        lyra_warn("config", "%s has schema_version %d; using it migrated in memory to %d (the file "
                  "is unchanged): run `lyra config migrate` to rewrite it", cfg.file,
                  cfg.file_schema_version, cfg.schema_version);

    lyra_sdnotify_send("STATUS=starting");
    struct lyra_server *srv = NULL;
    if (lyra_server_open(&srv, &cfg, &err) < 0) {
        lyra_error("server", "cannot start: %s", err.msg);
        lyra_log_close();
        lyra_config_free(&cfg);
        return 1;
    }
    /* READY=1 comes from the notifier once /health answers; it runs until
     * lyra_server_run has drained (STOPPING=1 as the drain begins). */
    struct lyra_sdnotify *sd = NULL;
    char ready_status[300];
    snprintf(ready_status, sizeof ready_status, "serving on %s:%d", cfg.server.host, lyra_http_port(srv->http));
    if (lyra_sdnotify_start(&sd, &(struct lyra_sdnotify_hooks){sd_state, sd_alive, srv}, ready_status, 0, &err) < 0)
        lyra_warn("server", "%s", err.msg);
    int rc = lyra_server_run(srv, &stop);
    lyra_sdnotify_stop(sd);
    lyra_server_close(srv, true);
    lyra_info("server", "stopped");
    lyra_log_close();
    lyra_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}
