/* registry.h — the models the daemon knows about.
 *
 * Models come from two places:
 *   - every regular file (symlinks followed) named `*.gguf` directly in
 *     models.dir; its name is the file name without ".gguf" (`tiny.gguf` ->
 *     `tiny`).  Subdirectories and dot-files are not scanned.  A missing
 *     models.dir simply contributes nothing; one that cannot be read is an
 *     error naming the path.
 *   - every models.entries item of the configuration: name, path (relative
 *     paths resolve against models.dir), aliases and per-model settings.  An
 *     entry with the same name as a scanned file replaces it.
 * Every model's GGUF metadata is read (models/gguf.h).  A file that is
 * missing, unreadable, truncated, corrupt or not GGUF is still listed, as
 * invalid, with the reason.
 *
 * Models are handed out as references to immutable snapshots
 * (`const struct lyra_model *`): a refresh never modifies a model in place,
 * it replaces it, and the old snapshot stays valid until its last reference
 * is released with lyra_registry_unref().  So a caller may keep a model for
 * as long as it needs (for instance while a worker loads it) without holding
 * any lock.
 *
 * Thread-safety: every function is thread-safe.  Lookups and listings take a
 * read lock for a few pointer copies; a refresh reads files without holding
 * that lock and only takes the write lock to swap in the new list.  Refreshes
 * are serialised among themselves.  lyra_registry_free() must not race with
 * other calls on the same registry (references obtained earlier stay valid
 * after it). */
#ifndef LYRA_REGISTRY_H
#define LYRA_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/config.h"
#include "core/error.h"
#include "models/gguf.h"

/* Effective per-model settings: the entry's values with the models section's
 * defaults filled in. */
struct lyra_model_settings {
    int ctx_size;        /* entry, else models.ctx_size, else the GGUF's context_length (0 if unknown) */
    int parallel;        /* entry, else models.parallel */
    int threads;         /* entry, else models.threads, else the number of online CPUs */
    int gpu_layers;      /* entry (-1 = unset), else models.gpu_layers; -1 = all that fit */
    char *chat_template; /* entry's override; NULL = use the GGUF's */
    bool embeddings;     /* entry's; for scanned models true when the GGUF declares pooling */
    bool pinned;         /* entry's; false for scanned models */
    int keep_alive_s;    /* entry's, else models.keep_alive_s: -1 never, 0 after each request */
    char **fallback;     /* entry's fallback models, in order (n_fallback) */
    size_t n_fallback;
    double temperature;  /* < 0 = unset */
    double top_p;        /* < 0 = unset */
    int top_k;           /* < 0 = unset */
};

/* One model.  Read-only: every field is owned by the snapshot and lives as
 * long as the reference. */
struct lyra_model {
    char *name;
    char **aliases; /* n_aliases strings (config entries only) */
    size_t n_aliases;
    char *path;                        /* the file: models.dir joined with a relative entry path */
    bool from_config;                  /* true for a models.entries item, false for a scanned file */
    bool valid;                        /* the file is a readable GGUF whose tensor data is all there */
    char *error;                       /* why it is invalid; NULL when valid */
    int error_code;                    /* the LYRA_E* code behind error; 0 when valid */
    uint64_t size_bytes;               /* file size at the last scan, 0 if it could not be stat'ed */
    int64_t mtime_ns;                  /* modification time at the last scan (ns since the epoch) */
    const struct lyra_gguf_info *info; /* NULL when the metadata could not be read */
    struct lyra_model_settings settings;
};

/* What a refresh changed, as model names (each list sorted). */
struct lyra_registry_changes {
    char **added; /* models that were not there before */
    size_t n_added;
    char **removed; /* models that are gone */
    size_t n_removed;
    char **changed; /* models whose file (size, mtime, inode) changed and was re-read */
    size_t n_changed;
};

struct lyra_registry;

/* Creates an empty registry for `cfg` (borrowed: models.dir, the defaults
 * and models.entries are copied, so cfg may be freed afterwards).  Nothing
 * is read from disk until lyra_registry_refresh().  Returns 0 and *out, or
 * LYRA_ENOMEM.  Free with lyra_registry_free(). */
int lyra_registry_new(const struct lyra_config *cfg, struct lyra_registry **out, struct lyra_err *err);

/* Frees the registry.  Models still referenced stay valid until unref'd.
 * NULL is a no-op. */
void lyra_registry_free(struct lyra_registry *reg);

/* Rescans models.dir and the configured entries.  A file whose size, mtime,
 * inode and device are unchanged keeps its existing snapshot (not re-read);
 * a changed file is re-read; vanished files are dropped; new files are read.
 * If `changes` is not NULL it is filled (caller frees with
 * lyra_registry_changes_free(); it is zeroed first).
 * Returns 0, or an error when models.dir exists but cannot be listed (err
 * names the path; LYRA_EPERM or LYRA_EIO): the configured entries are then
 * still refreshed and the previously scanned models are kept as they were.
 * Invalid model files are never an error here.  LYRA_ENOMEM leaves the
 * registry unchanged. */
int lyra_registry_refresh(struct lyra_registry *reg, struct lyra_registry_changes *changes,
                          struct lyra_err *err);

/* Told, after a refresh that changed something, what it changed (borrowed
 * for the call).  Runs on the refreshing thread with the refresh lock held
 * (refreshes and their calls are in order): it must be quick and must not
 * refresh or set the listener. */
typedef void (*lyra_registry_listener_fn)(const struct lyra_registry_changes *changes, void *ud);

/* Installs (or with NULL removes) the one listener.  When it returns, a
 * listener being replaced is not running. */
void lyra_registry_set_listener(struct lyra_registry *reg, lyra_registry_listener_fn fn, void *ud);

/* Frees the lists in *changes and zeroes it.  NULL is a no-op. */
void lyra_registry_changes_free(struct lyra_registry_changes *changes);

/* Finds a model by name, else by alias (both case-sensitive).  Returns a new
 * reference the caller releases with lyra_registry_unref(), or NULL when
 * nothing matches.  Invalid models are returned too (check ->valid). */
const struct lyra_model *lyra_registry_lookup(struct lyra_registry *reg, const char *name);

/* Takes another reference to a model.  Returns m. */
const struct lyra_model *lyra_registry_ref(const struct lyra_model *m);

/* Releases a reference; the snapshot is freed with the last one.  NULL is a
 * no-op. */
void lyra_registry_unref(const struct lyra_model *m);

/* All models in name order (strcmp).  *out receives a malloc'd array of n
 * references; release them all with lyra_registry_list_free().  Returns 0 or
 * LYRA_ENOMEM.  An empty registry gives *out = NULL, *n = 0. */
int lyra_registry_list(struct lyra_registry *reg, const struct lyra_model ***out, size_t *n);

/* Releases every reference in a list from lyra_registry_list() and the array.
 * NULL is a no-op. */
void lyra_registry_list_free(const struct lyra_model **models, size_t n);

/* Number of models. */
size_t lyra_registry_count(struct lyra_registry *reg);

/* The models directory the registry scans (owned by the registry). */
const char *lyra_registry_dir(const struct lyra_registry *reg);

enum lyra_registry_json_flags {
    LYRA_REGISTRY_JSON_GGUF = 1 << 0, /* add "gguf": lyra_gguf_info_to_json() (all metadata) */
};

/* One model as a JSON object:
 *   name, aliases[], path, source ("config"|"scan"), size_bytes, valid,
 *   error (string|null), architecture, parameters, quantization,
 *   context_length, tokenizer, has_chat_template, chat_template (the template
 *   in effect: the settings' override, else the GGUF's; null if none),
 *   settings {ctx_size, parallel, threads, gpu_layers, embeddings, pinned,
 *   temperature, top_p, top_k, chat_template (override or null)}, and with
 *   LYRA_REGISTRY_JSON_GGUF, gguf {...}.  Unknown values are null.
 * Returns a new reference, NULL on NOMEM. */
json_t *lyra_registry_model_to_json(const struct lyra_model *m, unsigned flags);

/* Every model, in name order, as a JSON array of lyra_registry_model_to_json()
 * objects.  Returns a new reference, NULL on NOMEM. */
json_t *lyra_registry_to_json(struct lyra_registry *reg, unsigned flags);

#endif
