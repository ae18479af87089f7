/* registry.c — the list of known models: scanned *.gguf files plus the
 * configured entries, each with its GGUF metadata and effective settings.
 *
 * The registry holds a name-sorted array of reference-counted, immutable
 * model snapshots (struct node).  Readers take the read lock only to find a
 * node and bump its count.  A refresh builds the next array on the side:
 * unchanged files (same size, mtime, inode, device) reuse their node, others
 * get a fresh node whose file is read with no lock held; the write lock is
 * taken only to swap the arrays.  Nodes dropped from the array are released,
 * and die when the last reader lets go.
 *
 * Precedence: configured names and aliases shadow scanned file names, so the
 * name/alias space is unambiguous (the configuration already rejects
 * duplicates among its entries). */
#include "models/registry.h"

#include "core/log.h"
#include "core/util.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/limits.h"
#include "sys/cpu.h"

struct node {
    atomic_long refs;
    struct lyra_model m;
    /* what the file looked like when it was read, for change detection */
    int stat_errno; /* 0 when stat succeeded */
    dev_t dev;
    ino_t ino;
    mode_t mode;
};

#define NODE_OF(mp) ((struct node *)((char *)(mp)-offsetof(struct node, m)))

struct lyra_registry {
    char *dir; /* NULL when the config has none */
    int def_parallel, def_threads, def_gpu_layers, def_ctx_size, def_keep_alive_s;
    int n_cpus;
    struct lyra_model_entry *entries; /* deep copies */
    size_t n_entries;

    pthread_mutex_t refresh_lock; /* serialises refreshes (and listener calls) */
    lyra_registry_listener_fn listener; /* told what each refresh changed */
    void *listener_ud;
    pthread_rwlock_t lock;        /* guards models / n_models */
    struct node **models;         /* sorted by name */
    size_t n_models;
    /* Symlinks already warned about for pointing out of dir ("link\ttarget"),
     * so each is logged once, not at every refresh (under refresh_lock). */
    char **escapes;
    size_t n_escapes;
};

/* ---- helpers ---------------------------------------------------------- */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* Copies n strings; NULL on NOMEM (nothing leaked). */
static char **dup_strv(char *const *v, size_t n)
{
    if (n == 0)
        return NULL;
    char **o = calloc(n, sizeof *o);
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(o[i] = strdup(v[i]))) {
            free_strv(o, n);
            return NULL;
        }
    return o;
}

/* dir + "/" + rel, or rel itself when absolute or dir is NULL.  Caller frees. */
static int errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return LYRA_ENOTFOUND;
    case EACCES:
    case EPERM:
        return LYRA_EPERM;
    case ENOMEM:
        return LYRA_ENOMEM;
    default:
        return LYRA_EIO;
    }
}

static void free_entry_copy(struct lyra_model_entry *e)
{
    free(e->name);
    free(e->path);
    free_strv(e->aliases, e->n_aliases);
    free(e->chat_template);
    free_strv(e->fallback, e->n_fallback);
}

/* ---- nodes ------------------------------------------------------------ */

static void node_free(struct node *n)
{
    if (!n)
        return;
    free(n->m.name);
    free_strv(n->m.aliases, n->m.n_aliases);
    free(n->m.path);
    free(n->m.error);
    lyra_gguf_info_free((struct lyra_gguf_info *)n->m.info);
    free(n->m.settings.chat_template);
    free_strv(n->m.settings.fallback, n->m.settings.n_fallback);
    free(n);
}

const struct lyra_model *lyra_registry_ref(const struct lyra_model *m)
{
    if (m)
        atomic_fetch_add_explicit(&NODE_OF(m)->refs, 1, memory_order_relaxed);
    return m;
}

void lyra_registry_unref(const struct lyra_model *m)
{
    if (!m)
        return;
    struct node *n = NODE_OF(m);
    if (atomic_fetch_sub_explicit(&n->refs, 1, memory_order_acq_rel) == 1)
        node_free(n);
}

static void resolve_settings(const struct lyra_registry *reg, const struct lyra_model_entry *e,
                             const struct lyra_gguf_info *info, struct lyra_model_settings *s)
{
    if (e && e->ctx_size > 0)
        s->ctx_size = e->ctx_size;
    else if (reg->def_ctx_size > 0)
        s->ctx_size = reg->def_ctx_size;
    else
        /* the model's own, within the range a worker accepts */
        s->ctx_size = !info || !info->context_length ? 0
                      : info->context_length > LYRA_LIMIT_CTX_MAX
                          ? LYRA_LIMIT_CTX_MAX
                          : (int)lyra_limit_clamp(LYRA_LIMIT_CTX, (long)info->context_length);
    s->parallel = e && e->parallel > 0 ? e->parallel : reg->def_parallel;
    s->threads = e && e->threads > 0 ? e->threads : reg->def_threads > 0 ? reg->def_threads : reg->n_cpus;
    s->gpu_layers = e && e->gpu_layers >= 0 ? e->gpu_layers : reg->def_gpu_layers;
    s->embeddings = e ? e->embeddings : (info && info->pooling_type > 0);
    s->pinned = e ? e->pinned : false;
    s->keep_alive_s = e && e->keep_alive_s != LYRA_KEEP_ALIVE_DEFAULT ? e->keep_alive_s : reg->def_keep_alive_s;
    s->temperature = e ? e->temperature : -1;
    s->top_p = e ? e->top_p : -1;
    s->top_k = e ? e->top_k : -1;
}

/* Builds a node for `name` at `path` from the stat result given, reading
 * the file's metadata.  `e` is the configured entry or NULL.  NULL on NOMEM. */
static struct node *node_build(const struct lyra_registry *reg, const char *name, const char *path,
                               const struct lyra_model_entry *e, const struct stat *st, int stat_errno)
{
    struct node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    atomic_init(&n->refs, 1);
    n->stat_errno = stat_errno;
    n->m.from_config = e != NULL;
    if (!(n->m.name = strdup(name)) || !(n->m.path = strdup(path)))
        goto nomem;
    if (e && e->n_aliases) {
        if (!(n->m.aliases = dup_strv(e->aliases, e->n_aliases)))
            goto nomem;
        n->m.n_aliases = e->n_aliases;
    }
    if (e && e->chat_template && !(n->m.settings.chat_template = strdup(e->chat_template)))
        goto nomem;
    if (e && e->n_fallback) {
        if (!(n->m.settings.fallback = dup_strv(e->fallback, e->n_fallback)))
            goto nomem;
        n->m.settings.n_fallback = e->n_fallback;
    }

    struct lyra_err err = {0};
    int rc;
    if (stat_errno) {
        rc = lyra_err_set(&err, errno_code(stat_errno), "cannot stat %s: %s", path, strerror(stat_errno));
    } else {
        n->dev = st->st_dev;
        n->ino = st->st_ino;
        n->mode = st->st_mode;
        n->m.size_bytes = (uint64_t)st->st_size;
        n->m.mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
        if (!S_ISREG(st->st_mode)) {
            rc = lyra_err_set(&err, LYRA_EINVAL, "%s is not a regular file", path);
        } else {
            struct lyra_gguf_info *info = NULL;
            rc = lyra_gguf_read(path, &info, &err);
            n->m.info = info;
        }
    }
    if (rc == LYRA_ENOMEM)
        goto nomem;
    n->m.valid = rc == 0;
    n->m.error_code = rc;
    if (rc && !(n->m.error = strdup(err.msg[0] ? err.msg : lyra_strerror(rc))))
        goto nomem;
    resolve_settings(reg, e, n->m.info, &n->m.settings);
    return n;
nomem:
    node_free(n);
    return NULL;
}

/* True when the file still looks exactly as when node n read it. */
static bool node_unchanged(const struct node *n, const struct stat *st, int stat_errno)
{
    if (stat_errno || n->stat_errno)
        return stat_errno == n->stat_errno;
    return n->dev == st->st_dev && n->ino == st->st_ino && n->mode == st->st_mode &&
           n->m.size_bytes == (uint64_t)st->st_size &&
           n->m.mtime_ns == (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* ---- new / free ------------------------------------------------------- */

int lyra_registry_new(const struct lyra_config *cfg, struct lyra_registry **out, struct lyra_err *err)
{
    *out = NULL;
    struct lyra_registry *reg = calloc(1, sizeof *reg);
    if (!reg)
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    reg->def_parallel = cfg->models.parallel;
    reg->def_threads = cfg->models.threads;
    reg->def_gpu_layers = cfg->models.gpu_layers;
    reg->def_keep_alive_s = cfg->models.keep_alive_s;
    reg->def_ctx_size = cfg->models.ctx_size;
    /* threads 0: the CPUs the affinity mask and the cgroup quota leave us,
     * within what a worker accepts */
    reg->n_cpus = (int)lyra_limit_clamp(LYRA_LIMIT_THREADS, lyra_cpu_usable());
    pthread_mutex_init(&reg->refresh_lock, NULL);
    pthread_rwlock_init(&reg->lock, NULL);

    bool ok = !cfg->models.dir || (reg->dir = strdup(cfg->models.dir));
    if (ok && cfg->models.n_entries) {
        reg->entries = calloc(cfg->models.n_entries, sizeof *reg->entries);
        ok = reg->entries != NULL;
    }
    for (size_t i = 0; ok && i < cfg->models.n_entries; i++) {
        const struct lyra_model_entry *src = &cfg->models.entries[i];
        struct lyra_model_entry *dst = &reg->entries[i];
        *dst = *src;
        dst->name = dst->path = dst->chat_template = NULL;
        dst->aliases = dst->fallback = NULL;
        dst->n_aliases = dst->n_fallback = 0;
        reg->n_entries = i + 1;
        ok = src->name && src->path && (dst->name = strdup(src->name)) && (dst->path = strdup(src->path)) &&
             (!src->chat_template || (dst->chat_template = strdup(src->chat_template)));
        if (ok && src->n_aliases) {
            ok = (dst->aliases = dup_strv(src->aliases, src->n_aliases)) != NULL;
            if (ok)
                dst->n_aliases = src->n_aliases;
        }
        if (ok && src->n_fallback) {
            ok = (dst->fallback = dup_strv(src->fallback, src->n_fallback)) != NULL;
            if (ok)
                dst->n_fallback = src->n_fallback;
        }
        if (!ok && (!src->name || !src->path)) {
            lyra_registry_free(reg);
            return lyra_err_set(err, LYRA_EINVAL, "models.entries[%zu] has no %s", i,
                                src->name ? "path" : "name");
        }
    }
    if (!ok) {
        lyra_registry_free(reg);
        return lyra_err_set(err, LYRA_ENOMEM, "out of memory");
    }
    *out = reg;
    return 0;
}

void lyra_registry_free(struct lyra_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->n_models; i++)
        lyra_registry_unref(&reg->models[i]->m);
    free(reg->models);
    for (size_t i = 0; i < reg->n_entries; i++)
        free_entry_copy(&reg->entries[i]);
    free(reg->entries);
    free(reg->dir);
    free_strv(reg->escapes, reg->n_escapes);
    pthread_rwlock_destroy(&reg->lock);
    pthread_mutex_destroy(&reg->refresh_lock);
    free(reg);
}

const char *lyra_registry_dir(const struct lyra_registry *reg)
{
    return reg->dir;
}

/* ---- refresh ---------------------------------------------------------- */

/* One model the refresh wants to have. */
struct cand {
    char *name;
    char *path;
    const struct lyra_model_entry *entry; /* NULL for scanned files */
    struct node *keep;                    /* reuse as is (dir unreadable) */
};

struct cands {
    struct cand *v;
    size_t n, cap;
};

static int cands_add(struct cands *c, const char *name, char *path, const struct lyra_model_entry *e)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        struct cand *v = realloc(c->v, cap * sizeof *v);
        if (!v)
            return LYRA_ENOMEM;
        c->v = v;
        c->cap = cap;
    }
    char *nm = strdup(name);
    if (!nm)
        return LYRA_ENOMEM;
    c->v[c->n++] = (struct cand){.name = nm, .path = path, .entry = e};
    return 0;
}

static void cands_free(struct cands *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].name);
        free(c->v[i].path);
    }
    free(c->v);
}

static int cmp_cand(const void *a, const void *b)
{
    return strcmp(((const struct cand *)a)->name, ((const struct cand *)b)->name);
}

/* True when a configured entry owns `name` as its name or an alias. */
static bool entry_claims(const struct lyra_registry *reg, const char *name)
{
    for (size_t i = 0; i < reg->n_entries; i++) {
        const struct lyra_model_entry *e = &reg->entries[i];
        if (strcmp(e->name, name) == 0)
            return true;
        for (size_t a = 0; a < e->n_aliases; a++)
            if (strcmp(e->aliases[a], name) == 0)
                return true;
    }
    return false;
}

/* Adds every *.gguf in reg->dir to c.  Returns 0 (also when the directory
 * does not exist), LYRA_ENOMEM, or an error for an unreadable directory. */
/* True when the symlink `path` resolves to a file outside reg->dir: such
 * a model is not listed (a link must not let models.dir serve, or a delete
 * reach, a file elsewhere), with a warning once per link and target.  A
 * dangling link is not an escape (it is listed as invalid). */
static bool link_escapes(struct lyra_registry *reg, const char *path)
{
    char dir_real[PATH_MAX], target[PATH_MAX];
    if (!realpath(path, target) || !realpath(reg->dir, dir_real))
        return false;
    size_t n = strlen(dir_real);
    if (strncmp(target, dir_real, n) == 0 && (target[n] == '/' || (n == 1 && dir_real[0] == '/')))
        return false;
    char *key = NULL;
    if (asprintf(&key, "%s\t%s", path, target) < 0)
        return true;
    for (size_t i = 0; i < reg->n_escapes; i++)
        if (strcmp(reg->escapes[i], key) == 0) {
            free(key);
            return true;
        }
    lyra_log(LYRA_LOG_WARN, "models", NULL, NULL,
             "%s is a symlink to %s, outside the models directory %s: not listed", path, target, reg->dir);
    char **v = reg->n_escapes < 1024 ? realloc(reg->escapes, (reg->n_escapes + 1) * sizeof *v) : NULL;
    if (v) {
        reg->escapes = v;
        reg->escapes[reg->n_escapes++] = key;
    } else {
        free(key);
    }
    return true;
}

static int scan_dir(struct lyra_registry *reg, struct cands *c, struct lyra_err *err)
{
    if (!reg->dir)
        return 0;
    DIR *d = opendir(reg->dir);
    if (!d) {
        int e = errno;
        if (e == ENOENT)
            return 0;
        return lyra_err_set(err,
                            e == ENOMEM                 ? LYRA_ENOMEM
                            : e == EACCES || e == EPERM ? LYRA_EPERM
                                                        : LYRA_EIO,
                            "cannot read models directory %s: %s", reg->dir, strerror(e));
    }
    int rc = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno)
                rc = lyra_err_set(err, LYRA_EIO, "cannot read models directory %s: %s", reg->dir,
                                  strerror(errno));
            break;
        }
        const char *fn = de->d_name;
        size_t len = strlen(fn);
        if (fn[0] == '.' || len <= 5 || strcmp(fn + len - 5, ".gguf") != 0)
            continue;
        char *name = strndup(fn, len - 5);
        char *path = name ? lyra_path_join(reg->dir, fn) : NULL;
        if (!path) {
            free(name);
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            break;
        }
        /* Directories are not scanned; other non-regular files (fifos,
         * devices) are skipped because opening them could block or worse.
         * A dangling symlink is kept: it is listed as invalid.  A symlink
         * to a file outside the directory is not listed at all. */
        struct stat st, lst;
        bool skip = entry_claims(reg, name) || (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) ||
                    (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode) && link_escapes(reg, path));
        if (!skip && cands_add(c, name, path, NULL) != 0) {
            free(name);
            free(path);
            rc = lyra_err_set(err, LYRA_ENOMEM, "out of memory");
            break;
        }
        if (skip)
            free(path);
        free(name);
    }
    closedir(d);
    return rc;
}

static struct node *find_node(struct node **v, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, v[mid]->m.name);
        if (c == 0)
            return v[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Appends a copy of name to a list. */
static int list_add(char ***v, size_t *n, const char *name)
{
    char **nv = realloc(*v, (*n + 1) * sizeof **v);
    if (!nv)
        return LYRA_ENOMEM;
    *v = nv;
    if (!(nv[*n] = strdup(name)))
        return LYRA_ENOMEM;
    (*n)++;
    return 0;
}

int lyra_registry_refresh(struct lyra_registry *reg, struct lyra_registry_changes *changes,
                          struct lyra_err *err)
{
    struct lyra_registry_changes ch = {0};
    struct cands c = {0};
    struct node **next = NULL;
    size_t n_next = 0;
    int rc = 0, scan_rc;
    struct lyra_err scan_err = {0};

    if (changes)
        memset(changes, 0, sizeof *changes);
    pthread_mutex_lock(&reg->refresh_lock);
    bool collect = changes || reg->listener;
    /* Only refresh writes reg->models, and refreshes are serialised, so this
     * thread may read the array without the rwlock. */
    struct node **old = reg->models;
    size_t n_old = reg->n_models;

    for (size_t i = 0; !rc && i < reg->n_entries; i++) {
        const struct lyra_model_entry *e = &reg->entries[i];
        char *path = lyra_path_join(reg->dir, e->path);
        if (!path || cands_add(&c, e->name, path, e) != 0) {
            free(path);
            rc = LYRA_ENOMEM;
        }
    }
    scan_rc = rc ? 0 : scan_dir(reg, &c, &scan_err);
    if (scan_rc == LYRA_ENOMEM)
        rc = LYRA_ENOMEM;
    if (!rc && scan_rc) {
        /* Keep what the last good scan found. */
        for (size_t i = 0; !rc && i < n_old; i++) {
            struct node *o = old[i];
            if (o->m.from_config || entry_claims(reg, o->m.name))
                continue;
            char *path = strdup(o->m.path);
            if (!path || cands_add(&c, o->m.name, path, NULL) != 0) {
                free(path);
                rc = LYRA_ENOMEM;
            } else {
                c.v[c.n - 1].keep = o;
            }
        }
    }
    if (rc)
        goto out;
    if (c.n > 1) /* qsort(NULL, 0, ...) is undefined */
        qsort(c.v, c.n, sizeof *c.v, cmp_cand);

    if (c.n && !(next = calloc(c.n, sizeof *next))) {
        rc = LYRA_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < c.n; i++) {
        const struct cand *cd = &c.v[i];
        if (n_next && strcmp(next[n_next - 1]->m.name, cd->name) == 0)
            continue; /* defensive: the first of two equal names wins */
        struct node *o = find_node(old, n_old, cd->name);
        struct node *nn;
        if (cd->keep) {
            nn = cd->keep;
            lyra_registry_ref(&nn->m);
        } else {
            struct stat st;
            int se = stat(cd->path, &st) == 0 ? 0 : errno;
            if (o && o->m.from_config == (cd->entry != NULL) && strcmp(o->m.path, cd->path) == 0 &&
                node_unchanged(o, &st, se)) {
                nn = o;
                lyra_registry_ref(&nn->m);
            } else {
                nn = node_build(reg, cd->name, cd->path, cd->entry, &st, se);
                if (!nn) {
                    rc = LYRA_ENOMEM;
                    goto out;
                }
                if (collect && (o ? list_add(&ch.changed, &ch.n_changed, cd->name)
                                  : list_add(&ch.added, &ch.n_added, cd->name))) {
                    next[n_next++] = nn;
                    rc = LYRA_ENOMEM;
                    goto out;
                }
            }
        }
        next[n_next++] = nn;
    }
    for (size_t i = 0; collect && i < n_old; i++)
        if (!find_node(next, n_next, old[i]->m.name) &&
            list_add(&ch.removed, &ch.n_removed, old[i]->m.name)) {
            rc = LYRA_ENOMEM;
            goto out;
        }

    pthread_rwlock_wrlock(&reg->lock);
    reg->models = next;
    reg->n_models = n_next;
    pthread_rwlock_unlock(&reg->lock);
    for (size_t i = 0; i < n_old; i++)
        lyra_registry_unref(&old[i]->m);
    free(old);
    next = NULL;
    n_next = 0;
    /* Under refresh_lock, so that listeners hear of refreshes in order. */
    if (reg->listener && (ch.n_added || ch.n_removed || ch.n_changed))
        reg->listener(&ch, reg->listener_ud);

out:
    pthread_mutex_unlock(&reg->refresh_lock);
    for (size_t i = 0; i < n_next; i++)
        lyra_registry_unref(&next[i]->m);
    free(next);
    cands_free(&c);
    if (rc) {
        lyra_registry_changes_free(&ch);
        return lyra_err_set(err, rc, "out of memory while refreshing the model registry");
    }
    if (changes)
        *changes = ch;
    else
        lyra_registry_changes_free(&ch);
    if (scan_rc) {
        if (err)
            *err = scan_err;
        return scan_rc;
    }
    return 0;
}

void lyra_registry_set_listener(struct lyra_registry *reg, lyra_registry_listener_fn fn, void *ud)
{
    pthread_mutex_lock(&reg->refresh_lock);
    reg->listener = fn;
    reg->listener_ud = ud;
    pthread_mutex_unlock(&reg->refresh_lock);
}

void lyra_registry_changes_free(struct lyra_registry_changes *changes)
{
    if (!changes)
        return;
    free_strv(changes->added, changes->n_added);
    free_strv(changes->removed, changes->n_removed);
    free_strv(changes->changed, changes->n_changed);
    memset(changes, 0, sizeof *changes);
}

/* ---- reading ---------------------------------------------------------- */

const struct lyra_model *lyra_registry_lookup(struct lyra_registry *reg, const char *name)
{
    if (!reg || !name)
        return NULL;
    const struct lyra_model *found = NULL;
    pthread_rwlock_rdlock(&reg->lock);
    struct node *n = find_node(reg->models, reg->n_models, name);
    if (n)
        found = &n->m;
    for (size_t i = 0; !found && i < reg->n_models; i++) {
        const struct lyra_model *m = &reg->models[i]->m;
        for (size_t a = 0; a < m->n_aliases; a++)
            if (strcmp(m->aliases[a], name) == 0) {
                found = m;
                break;
            }
    }
    lyra_registry_ref(found);
    pthread_rwlock_unlock(&reg->lock);
    return found;
}

int lyra_registry_list(struct lyra_registry *reg, const struct lyra_model ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_rwlock_rdlock(&reg->lock);
    size_t cnt = reg->n_models;
    const struct lyra_model **v = cnt ? malloc(cnt * sizeof *v) : NULL;
    if (cnt && !v) {
        pthread_rwlock_unlock(&reg->lock);
        return LYRA_ENOMEM;
    }
    for (size_t i = 0; i < cnt; i++)
        v[i] = lyra_registry_ref(&reg->models[i]->m);
    pthread_rwlock_unlock(&reg->lock);
    *out = v;
    *n = cnt;
    return 0;
}

void lyra_registry_list_free(const struct lyra_model **models, size_t n)
{
    if (!models)
        return;
    for (size_t i = 0; i < n; i++)
        lyra_registry_unref(models[i]);
    free(models);
}

size_t lyra_registry_count(struct lyra_registry *reg)
{
    pthread_rwlock_rdlock(&reg->lock);
    size_t n = reg->n_models;
    pthread_rwlock_unlock(&reg->lock);
    return n;
}

/* ---- JSON ------------------------------------------------------------- */

/* A JSON string, or null when s is NULL; invalid UTF-8 (a file name, a
 * message quoting one) goes through as null rather than failing. */
static json_t *jstr(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    return j ? j : json_null();
}

static json_t *jopt_real(double d)
{
    return d < 0 ? json_null() : json_real(d);
}

static json_t *juint(uint64_t v)
{
    return v <= INT64_MAX ? json_integer((json_int_t)v) : json_real((double)v);
}

json_t *lyra_registry_model_to_json(const struct lyra_model *m, unsigned flags)
{
    const struct lyra_gguf_info *info = m->info;
    const struct lyra_model_settings *s = &m->settings;
    const char *tmpl = s->chat_template ? s->chat_template : info ? info->chat_template : NULL;

    json_t *aliases = json_array();
    if (!aliases)
        return NULL;
    for (size_t i = 0; i < m->n_aliases; i++)
        if (json_array_append_new(aliases, jstr(m->aliases[i])) != 0) {
            json_decref(aliases);
            return NULL;
        }
    json_t *fallback = json_array();
    for (size_t i = 0; fallback && i < s->n_fallback; i++)
        json_array_append_new(fallback, jstr(s->fallback[i]));
    json_t *settings = json_pack(
        "{s:i, s:i, s:i, s:i, s:b, s:b, s:i, s:o, s:o, s:o, s:o, s:o}", "ctx_size", s->ctx_size, "parallel",
        s->parallel, "threads", s->threads, "gpu_layers", s->gpu_layers, "embeddings", s->embeddings,
        "pinned", s->pinned, "keep_alive_s", s->keep_alive_s, "fallback", fallback ? fallback : json_array(),
        "temperature", jopt_real(s->temperature), "top_p", jopt_real(s->top_p), "top_k",
        s->top_k < 0 ? json_null() : json_integer(s->top_k), "chat_template", jstr(s->chat_template));
    json_t *o = json_pack(
        "{s:o, s:o, s:o, s:s, s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:b, s:o, s:o}", "name", jstr(m->name),
        "aliases", aliases, "path", jstr(m->path), "source", m->from_config ? "config" : "scan", "size_bytes",
        juint(m->size_bytes), "valid", m->valid, "error", jstr(m->error), "architecture",
        jstr(info ? info->architecture : NULL), "parameters", info ? juint(info->n_params) : json_null(),
        "quantization", jstr(lyra_gguf_quantization(info)), "context_length",
        info && info->context_length ? juint(info->context_length) : json_null(), "tokenizer",
        jstr(info ? info->tokenizer_model : NULL), "has_chat_template", tmpl != NULL, "chat_template",
        jstr(tmpl), "settings", settings);
    if (!o)
        return NULL;
    if (flags & LYRA_REGISTRY_JSON_GGUF) {
        json_t *g = info ? lyra_gguf_info_to_json(info) : json_null();
        if (!g || json_object_set_new(o, "gguf", g) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

json_t *lyra_registry_to_json(struct lyra_registry *reg, unsigned flags)
{
    const struct lyra_model **v;
    size_t n;
    if (lyra_registry_list(reg, &v, &n) != 0)
        return NULL;
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *j = lyra_registry_model_to_json(v[i], flags);
        if (!j || json_array_append_new(a, j) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    lyra_registry_list_free(v, n);
    return a;
}
