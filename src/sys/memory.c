/* memory.c — readings of /proc/meminfo, the cgroup v2 memory files and PSI,
 * or of the JSON fake; see memory.h for the formulas.
 *
 * Every read opens the files again: a source has no state to guard, the
 * files are small, and a process moved to another cgroup is followed.  The
 * cgroup path from /proc/self/cgroup is walked up to the mount, because an
 * ancestor's memory.max limits its children too (the same walk as cpu.c). */
#include "sys/memory.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

#define PROC_CGROUP_MAX 16384 /* /proc/self/cgroup is a few lines */
#define FAKE_FILE_MAX 65536   /* the fake is one small object */

enum source_kind { SOURCE_SYSTEM, SOURCE_FILE };

struct lyra_memsource {
    enum source_kind kind;
    char *proc_root;   /* system */
    char *cgroup_root; /* system */
    char *path;        /* file */
};

/* ---- small readers ---- */

/* Reads a small file whole into buf (NUL-terminated); false if unreadable
 * or empty. */
static bool read_small(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t got = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[got] = '\0';
    return got > 0;
}

/* A whole unsigned decimal number (trailing whitespace allowed). */
static bool parse_u64(const char *s, uint64_t *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return false;
    while (*end == ' ' || *end == '\t' || *end == '\n')
        end++;
    if (*end)
        return false;
    *out = v;
    return true;
}

/* "Key:   123 kB" lines of meminfo-like text; the value in bytes. */
static bool meminfo_field(const char *text, const char *key, uint64_t *out)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, key, klen) && line[klen] == ':') {
            unsigned long long kb;
            char unit[8] = "";
            int n = sscanf(line + klen + 1, " %llu %7s", &kb, unit);
            if (n >= 1) {
                /* /proc always says kB; a bare number would be bytes */
                bool is_kb = n == 2 && !strcmp(unit, "kB");
                if (is_kb && kb > UINT64_MAX / 1024)
                    return false;
                *out = is_kb ? kb * 1024 : kb;
                return true;
            }
            return false;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

/* "key value" lines of memory.stat. */
static bool stat_field(const char *text, const char *key, uint64_t *out)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, key, klen) && line[klen] == ' ') {
            unsigned long long v;
            if (sscanf(line + klen + 1, "%llu", &v) == 1) {
                *out = v;
                return true;
            }
            return false;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

/* PSI text: "some avg10=1.23 avg60=... total=...\nfull avg10=...". */
static void parse_psi(const char *text, double *some, double *full)
{
    for (const char *line = text; line && *line;) {
        double v;
        bool is_some = !strncmp(line, "some ", 5), is_full = !strncmp(line, "full ", 5);
        const char *a = (is_some || is_full) ? strstr(line, "avg10=") : NULL;
        const char *eol = strchr(line, '\n');
        if (a && (!eol || a < eol)) {
            char *end;
            errno = 0;
            v = strtod(a + 6, &end);
            if (!errno && end != a + 6 && isfinite(v) && v >= 0 && v <= 100) {
                if (is_some)
                    *some = v;
                else
                    *full = v;
            }
        }
        line = eol ? eol + 1 : NULL;
    }
}

/* ---- the cgroup v2 tree ---- */

/* The v2 path of this process ("0::<path>"), copied into out; false if none. */
static bool v2_path(const char *proc_cgroup, char *out, size_t len)
{
    for (const char *line = proc_cgroup; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t l = eol ? (size_t)(eol - line) : strlen(line);
        if (l > 3 && !strncmp(line, "0::", 3) && l - 3 < len) {
            memcpy(out, line + 3, l - 3);
            out[l - 3] = '\0';
            /* never look outside the mount */
            if (out[0] != '/' || strstr(out, "/.."))
                snprintf(out, len, "/");
            return true;
        }
        line = eol ? eol + 1 : NULL;
    }
    return false;
}

/* Where the v2 hierarchy is mounted: the root itself, or <root>/unified on
 * a hybrid host. */
static bool v2_mount(const char *cgroup_root, char *out, size_t len)
{
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/cgroup.controllers", cgroup_root);
    if (access(probe, F_OK) == 0) {
        snprintf(out, len, "%s", cgroup_root);
        return true;
    }
    snprintf(probe, sizeof probe, "%s/unified/cgroup.controllers", cgroup_root);
    if (access(probe, F_OK) == 0) {
        snprintf(out, len, "%s/unified", cgroup_root);
        return true;
    }
    return false;
}

/* memory.current less memory.stat's inactive_file in dir; false if dir has
 * no memory.current. */
static bool working_set(const char *dir, uint64_t *out)
{
    char path[PATH_MAX + 32], buf[8192];
    uint64_t current, inactive = 0;
    snprintf(path, sizeof path, "%s/memory.current", dir);
    if (!read_small(path, buf, sizeof buf) || !parse_u64(buf, &current))
        return false;
    snprintf(path, sizeof path, "%s/memory.stat", dir);
    if (read_small(path, buf, sizeof buf))
        stat_field(buf, "inactive_file", &inactive);
    *out = inactive < current ? current - inactive : 0;
    return true;
}

/* memory.max in dir; 0 for "max", missing or odd. */
static uint64_t memory_max(const char *dir)
{
    char path[PATH_MAX + 32], buf[64];
    uint64_t v;
    snprintf(path, sizeof path, "%s/memory.max", dir);
    if (!read_small(path, buf, sizeof buf) || !parse_u64(buf, &v))
        return 0;
    return v;
}

/* Fills the cgroup fields and, from the cgroup's memory.pressure, PSI.  The
 * deepest directory on the path that exists is "this process's cgroup" (in
 * a container without a cgroup namespace the path names cgroups above the
 * mount, which are not there). */
static void read_cgroup(const struct lyra_memsource *s, struct lyra_mem_reading *r)
{
    char path[PATH_MAX + 32], text[PROC_CGROUP_MAX], cg[PATH_MAX], mount[PATH_MAX], dir[PATH_MAX];
    snprintf(path, sizeof path, "%s/self/cgroup", s->proc_root);
    if (!read_small(path, text, sizeof text) || !v2_path(text, cg, sizeof cg) ||
        !v2_mount(s->cgroup_root, mount, sizeof mount))
        return;
    if (snprintf(dir, sizeof dir, "%s%s", mount, strcmp(cg, "/") ? cg : "") >= (int)sizeof dir)
        return;
    size_t base = strlen(mount);
    bool own_seen = false, psi_seen = false;
    uint64_t best_room = UINT64_MAX;
    for (;;) {
        if (access(dir, F_OK) == 0) {
            uint64_t ws = 0;
            bool has_ws = working_set(dir, &ws);
            if (!own_seen && has_ws) {
                own_seen = true;
                if (r->cgroup_max == 0)
                    r->cgroup_current = ws;
            }
            if (!psi_seen) {
                char buf[512];
                snprintf(path, sizeof path, "%s/memory.pressure", dir);
                if (read_small(path, buf, sizeof buf)) {
                    psi_seen = true;
                    parse_psi(buf, &r->psi_some_avg10, &r->psi_full_avg10);
                }
            }
            uint64_t max = memory_max(dir);
            if (max > 0) {
                uint64_t room = ws < max ? max - ws : 0;
                if (room < best_room) {
                    best_room = room;
                    r->cgroup_max = max;
                    r->cgroup_current = ws;
                }
            }
        }
        char *slash = strrchr(dir + base, '/');
        if (!slash)
            break;
        *slash = '\0';
    }
}

static int read_system(const struct lyra_memsource *s, struct lyra_mem_reading *r)
{
    char path[PATH_MAX + 32], text[8192];
    snprintf(path, sizeof path, "%s/meminfo", s->proc_root);
    int rc = 0;
    if (!read_small(path, text, sizeof text) || !meminfo_field(text, "MemTotal", &r->total_bytes) ||
        r->total_bytes == 0) {
        r->total_bytes = 0;
        rc = LYRA_EIO;
    } else if (!meminfo_field(text, "MemAvailable", &r->available_bytes)) {
        /* kernels before 3.14: free + page cache is the old estimate */
        uint64_t free_b = 0, cached = 0, buffers = 0;
        meminfo_field(text, "MemFree", &free_b);
        meminfo_field(text, "Cached", &cached);
        meminfo_field(text, "Buffers", &buffers);
        r->available_bytes = free_b + cached + buffers;
    }
    if (r->available_bytes > r->total_bytes)
        r->available_bytes = r->total_bytes;
    read_cgroup(s, r);
    if (r->psi_some_avg10 < 0 && r->psi_full_avg10 < 0) {
        char buf[512];
        snprintf(path, sizeof path, "%s/pressure/memory", s->proc_root);
        if (read_small(path, buf, sizeof buf))
            parse_psi(buf, &r->psi_some_avg10, &r->psi_full_avg10);
    }
    return rc;
}

/* ---- the fake ---- */

static uint64_t json_bytes(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    double d = json_is_number(v) ? json_number_value(v) : 0;
    if (!(d > 0)) /* also NaN */
        return 0;
    if (json_is_integer(v))
        return (uint64_t)json_integer_value(v);
    return d >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)d;
}

static double json_psi(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v))
        return -1;
    double d = json_number_value(v);
    return d >= 0 && d <= 100 ? d : -1;
}

static int read_file_source(const struct lyra_memsource *s, struct lyra_mem_reading *r)
{
    size_t len;
    char *text = lyra_read_file(s->path, &len);
    if (!text)
        return LYRA_EIO;
    json_t *obj = len < FAKE_FILE_MAX ? json_loadb(text, len, 0, NULL) : NULL;
    free(text);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return LYRA_EPARSE;
    }
    r->total_bytes = json_bytes(obj, "total");
    r->available_bytes = json_bytes(obj, "available");
    r->cgroup_current = json_bytes(obj, "cgroup_current");
    r->cgroup_max = json_bytes(obj, "cgroup_max");
    r->psi_some_avg10 = json_psi(obj, "psi_some");
    r->psi_full_avg10 = json_psi(obj, "psi_full");
    json_decref(obj);
    return 0;
}

/* ---- the interface ---- */

int lyra_memsource_system_at(const char *proc_root, const char *cgroup_root, struct lyra_memsource **out,
                             struct lyra_err *err)
{
    *out = NULL;
    if (!proc_root || !cgroup_root)
        return lyra_err_set(err, LYRA_EINVAL, "memory source: proc and cgroup roots are required");
    struct lyra_memsource *s = calloc(1, sizeof *s);
    if (s) {
        s->kind = SOURCE_SYSTEM;
        s->proc_root = strdup(proc_root);
        s->cgroup_root = strdup(cgroup_root);
    }
    if (!s || !s->proc_root || !s->cgroup_root) {
        lyra_memsource_free(s);
        return lyra_err_set(err, LYRA_ENOMEM, "memory source: out of memory");
    }
    *out = s;
    return 0;
}

int lyra_memsource_system(struct lyra_memsource **out, struct lyra_err *err)
{
    return lyra_memsource_system_at("/proc", "/sys/fs/cgroup", out, err);
}

int lyra_memsource_file(const char *path, struct lyra_memsource **out, struct lyra_err *err)
{
    *out = NULL;
    if (!path || !*path)
        return lyra_err_set(err, LYRA_EINVAL, "memory source: a fake file path is required");
    struct lyra_memsource *s = calloc(1, sizeof *s);
    if (s) {
        s->kind = SOURCE_FILE;
        s->path = strdup(path);
    }
    if (!s || !s->path) {
        lyra_memsource_free(s);
        return lyra_err_set(err, LYRA_ENOMEM, "memory source: out of memory");
    }
    *out = s;
    return 0;
}

int lyra_memsource_from_env(struct lyra_memsource **out, struct lyra_err *err)
{
    const char *fake = getenv("LYRA_FAKE_MEMINFO");
    if (fake && *fake)
        return lyra_memsource_file(fake, out, err);
    return lyra_memsource_system(out, err);
}

int lyra_memsource_read(struct lyra_memsource *src, struct lyra_mem_reading *out)
{
    *out = (struct lyra_mem_reading){.psi_some_avg10 = -1, .psi_full_avg10 = -1};
    out->at_us = lyra_now_us();
    if (!src)
        return LYRA_EINVAL;
    return src->kind == SOURCE_FILE ? read_file_source(src, out) : read_system(src, out);
}

void lyra_memsource_free(struct lyra_memsource *src)
{
    if (!src)
        return;
    free(src->proc_root);
    free(src->cgroup_root);
    free(src->path);
    free(src);
}

/* ---- derived values ---- */

uint64_t lyra_mem_limit(const struct lyra_mem_reading *r)
{
    return r->cgroup_max > 0 && r->cgroup_max < r->total_bytes ? r->cgroup_max : r->total_bytes;
}

uint64_t lyra_mem_headroom(const struct lyra_mem_reading *r)
{
    uint64_t room = r->available_bytes;
    if (r->cgroup_max > 0) {
        uint64_t cg = r->cgroup_current < r->cgroup_max ? r->cgroup_max - r->cgroup_current : 0;
        if (cg < room)
            room = cg;
    }
    uint64_t limit = lyra_mem_limit(r);
    return room < limit ? room : limit;
}

uint64_t lyra_mem_used(const struct lyra_mem_reading *r)
{
    return lyra_mem_limit(r) - lyra_mem_headroom(r);
}

double lyra_mem_used_percent(const struct lyra_mem_reading *r)
{
    uint64_t limit = lyra_mem_limit(r);
    return limit ? 100.0 * (double)lyra_mem_used(r) / (double)limit : 0.0;
}

/* ---- per process ---- */

int lyra_proc_memory_at(const char *proc_root, int pid, uint64_t *rss_bytes, uint64_t *pss_bytes)
{
    char dir[PATH_MAX], path[PATH_MAX + 32], text[8192];
    if (pid < 0)
        return LYRA_EINVAL;
    if (pid == 0)
        snprintf(dir, sizeof dir, "%s/self", proc_root);
    else
        snprintf(dir, sizeof dir, "%s/%d", proc_root, pid);
    if (access(dir, F_OK) != 0)
        return LYRA_ENOTFOUND;
    uint64_t rss = 0, pss = 0;
    snprintf(path, sizeof path, "%s/smaps_rollup", dir);
    bool ok = read_small(path, text, sizeof text) && meminfo_field(text, "Rss", &rss) &&
              meminfo_field(text, "Pss", &pss);
    if (!ok) {
        snprintf(path, sizeof path, "%s/status", dir);
        ok = read_small(path, text, sizeof text) && meminfo_field(text, "VmRSS", &rss);
        pss = rss;
    }
    if (!ok)
        return access(dir, F_OK) != 0 ? LYRA_ENOTFOUND : LYRA_EIO; /* it may have exited meanwhile */
    if (rss_bytes)
        *rss_bytes = rss;
    if (pss_bytes)
        *pss_bytes = pss;
    return 0;
}

int lyra_proc_memory(int pid, uint64_t *rss_bytes, uint64_t *pss_bytes)
{
    return lyra_proc_memory_at("/proc", pid, rss_bytes, pss_bytes);
}
