/* it_install.c — `make install` and the deployment scripts:
 *  - `cmake --install` (what `make install DESTDIR=... PREFIX=/usr` runs)
 *    into a temporary DESTDIR puts bin/lyra, lib/lyra/ (llama.cpp and the
 *    ggml backends), share/lyra/{lyra.service,nginx/lyra.conf,...},
 *    share/doc/lyra/, and the bash completion in place; the installed
 *    binary runs `lyra version` from that tree with its libraries resolved
 *    there (ldd), not in the build's deps/, and its worker finds the
 *    installed backends (`lyra worker --probe-devices` lists the CPU);
 *  - scripts/run-production.sh passes shellcheck (or bash -n) and its
 *    --dry-run prints every step and changes nothing;
 *  - deploy/lyra.bash-completion completes subcommands and flags. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *source_dir(void)
{
    const char *s = getenv("LYRA_SOURCE_DIR");
    return s ? s : "..";
}

static int run_capture(const char *cmd, char **output)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
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

static void test_install_tree(void **state)
{
    char bindir[512];
    snprintf(bindir, sizeof bindir, "%s", getenv("LYRA_BIN"));
    char *build = dirname(bindir);
    char dest[64], cmd[2048], path[512];
    it_mkdtemp(dest, sizeof dest);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "DESTDIR='%s' cmake --install '%s' --prefix /usr 2>&1", dest, build);
    int rc = run_capture(cmd, &out);
    if (rc != 0)
        fail_msg("cmake --install: %s", out);
    free(out);

    static const char *const files[] = {
        "usr/bin/lyra", "usr/lib/lyra/libllama.so.0", "usr/lib/lyra/libggml.so.0", "usr/lib/lyra/libggml-base.so.0",
        "usr/share/lyra/lyra.service", "usr/share/lyra/nginx/lyra.conf", "usr/share/lyra/run-production.sh",
        "usr/share/bash-completion/completions/lyra", "usr/share/doc/lyra/DEPLOYMENT.md",
        "usr/share/doc/lyra/INTEGRATION_TESTING.md", "usr/share/doc/lyra/configuration.md",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dest, files[i]);
        if (access(path, R_OK) != 0)
            fail_msg("not installed: %s", files[i]);
    }
    /* a CPU backend plug-in, whatever its exact name */
    snprintf(cmd, sizeof cmd, "ls '%s'/usr/lib/lyra/libggml-cpu*.so >/dev/null", dest);
    assert_int_equal(system(cmd), 0);

    /* The installed binary runs from the DESTDIR tree: no LD_LIBRARY_PATH,
     * and its llama.cpp comes from there (RUNPATH $ORIGIN/../lib/lyra). */
    snprintf(cmd, sizeof cmd, "env -u LD_LIBRARY_PATH '%s/usr/bin/lyra' version 2>&1", dest);
    assert_int_equal(run_capture(cmd, &out), 0);
    assert_non_null(strstr(out, "lyra " LYRA_VERSION));
    free(out);
    snprintf(cmd, sizeof cmd, "env -u LD_LIBRARY_PATH ldd '%s/usr/bin/lyra' | grep -E 'libllama|libggml'", dest);
    assert_int_equal(run_capture(cmd, &out), 0);
    print_message("%s", out);
    char want[128];
    snprintf(want, sizeof want, "%s/usr/bin/../lib/lyra/libllama.so.0", dest);
    assert_non_null(strstr(out, want));
    assert_null(strstr(out, "deps/llama"));
    assert_null(strstr(out, "not found"));
    free(out);
    /* ... and so does its worker's backend loader */
    snprintf(cmd, sizeof cmd, "env -u LD_LIBRARY_PATH -u LYRA_BACKEND_DIR '%s/usr/bin/lyra' worker --probe-devices 2>/dev/null",
             dest);
    assert_int_equal(run_capture(cmd, &out), 0);
    assert_non_null(strstr(out, "\"cpu\""));
    free(out);
    it_rmrf(dest);
}

static void test_run_production_dry_run(void **state)
{
    char script[512], cmd[2048], home[64];
    snprintf(script, sizeof script, "%s/scripts/run-production.sh", source_dir());
    if (system("command -v shellcheck >/dev/null 2>&1") == 0) {
        snprintf(cmd, sizeof cmd, "shellcheck '%s' '%s/deploy/lyra.bash-completion' -s bash", script, source_dir());
        assert_int_equal(system(cmd), 0);
    } else {
        if (it_in_ci())
            fail_msg("shellcheck is missing: scripts/setup-packages.sh installs it");
        snprintf(cmd, sizeof cmd, "bash -n '%s'", script);
        assert_int_equal(system(cmd), 0);
    }
    it_mkdtemp(home, sizeof home);
    rmdir(home); /* a LYRA_HOME that does not exist yet */
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' --dry-run --foreground --lyra '%s' --home '%s' --port 0 --min-disk-gib 0 2>&1",
             script, getenv("LYRA_BIN"), home);
    assert_int_equal(run_capture(cmd, &out), 0);
    static const char *const steps[] = {"memory: ", "disk: ", "port 0", "GPU: ", "would run: useradd --system",
                                        "would run: install -d -m 0700 -o lyra -g lyra", "config validate --home",
                                        "would run: ", "serve --home"};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++)
        if (!strstr(out, steps[i]))
            fail_msg("--dry-run does not say '%s':\n%s", steps[i], out);
    free(out);
    /* the unit path, without --foreground */
    snprintf(cmd, sizeof cmd, "'%s' --dry-run --lyra '%s' --home '%s' --port 0 --min-disk-gib 0 2>&1", script,
             getenv("LYRA_BIN"), home);
    assert_int_equal(run_capture(cmd, &out), 0);
    assert_non_null(strstr(out, "/etc/systemd/system/lyra.service"));
    assert_non_null(strstr(out, "would run: systemctl enable --now lyra.service"));
    free(out);
    struct stat st;
    assert_int_not_equal(stat(home, &st), 0); /* nothing was created */
    /* an impossible requirement is reported */
    snprintf(cmd, sizeof cmd, "'%s' --dry-run --foreground --lyra '%s' --home '%s' --min-mem-gib 100000 2>&1", script,
             getenv("LYRA_BIN"), home);
    assert_int_equal(run_capture(cmd, &out), 0);
    assert_non_null(strstr(out, "less than 100000 GiB"));
    free(out);
    /* a bad argument is refused */
    snprintf(cmd, sizeof cmd, "'%s' --bogus >/dev/null 2>&1", script);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
}

static void test_bash_completion(void **state)
{
    char cmd[2048], *out = NULL;
    /* COMP_WORDS as bash would set them; prints COMPREPLY */
    const char *cases[][2] = {
        {"lyra se", "serve"},
        {"lyra serve --mo", "--models-dir"},
        {"lyra config m", "migrate"},
        {"lyra jobs --state f", "failed"},
        {"lyra pull x --sh", "--sha256"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd,
                 "bash -c 'source \"%s/deploy/lyra.bash-completion\"; read -ra COMP_WORDS <<< \"%s\"; "
                 "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _lyra; printf \"%%s\\n\" \"${COMPREPLY[@]}\"'",
                 source_dir(), cases[i][0]);
        assert_int_equal(run_capture(cmd, &out), 0);
        if (!strstr(out, cases[i][1]))
            fail_msg("'%s' completes to '%s', not %s", cases[i][0], out, cases[i][1]);
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_install_tree),
        cmocka_unit_test(test_run_production_dry_run),
        cmocka_unit_test(test_bash_completion),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
