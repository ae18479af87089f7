/* watch.h — keeps the model registry in step with the models directory:
 * inotify reports files created, written, moved or deleted there, and a
 * refresh follows once the directory has been quiet for a moment (so a copy
 * still being written is read when it is complete).  Whoever listens to the
 * registry (the manager) then learns what changed: a file added is servable
 * at once, a file replaced restarts its worker once its requests are done.
 *
 * Without inotify (or when models.dir does not exist yet) nothing is
 * watched; the manager still rescans when a request names an unknown model.
 *
 * Thread-safety: new/free from one thread; the watch runs on its own. */
#ifndef LYRA_MODELS_WATCH_H
#define LYRA_MODELS_WATCH_H

#include "core/error.h"
#include "models/registry.h"

struct lyra_models_watch;

/* Watches lyra_registry_dir(reg) and refreshes reg (borrowed; must outlive
 * the watch).  Returns 0 with *out, also when the directory cannot be
 * watched (then *out watches nothing and a warning says why); LYRA_ENOMEM
 * or LYRA_EIO when the thread cannot start. */
int lyra_models_watch_new(struct lyra_registry *reg, struct lyra_models_watch **out, struct lyra_err *err);

/* Stops the watch and joins its thread.  NULL is a no-op. */
void lyra_models_watch_free(struct lyra_models_watch *w);

#endif
