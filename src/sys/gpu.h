/* gpu.h — the GPUs the daemon can place models on, as a "source" of device
 * descriptions.
 *
 * The daemon never links ggml.  It learns the devices from a subprocess,
 * `<worker_exe> worker --probe-devices`, which loads the ggml backends the
 * way a model load does and prints them as one JSON line: a driver that
 * crashes or hangs while initialising kills only that child (on our clock:
 * a deadline, then SIGKILL), and the daemon goes on with no GPU.  CPU
 * devices are not listed.
 *
 * Where NVIDIA's management library is installed (libnvidia-ml.so.1, opened
 * with dlopen, so nothing is linked), every lyra_gpu_list() also reads the
 * utilisation, the temperature and a fresh memory_free of each GPU.  A probed
 * device is matched to its NVML device by PCI bus id (ggml's device_id, e.g.
 * "0000:c1:00.0"), which stays right under CUDA_VISIBLE_DEVICES; only when
 * no probed device has a bus id and the counts agree are they matched in
 * index order.  Unmatched devices keep the probe's numbers and -1 for what
 * NVML would have said.
 *
 * A fake source (lyra_gpu_fake, or LYRA_FAKE_GPUS through
 * lyra_gpu_from_env) stands in for GPUs in tests; it never touches NVML.
 *
 * Thread-safety: a source is thread-safe (one mutex); the functions that
 * create one may run on any thread.  They log (component "gpu"): one info
 * line per device, "no GPU found: models run on the CPU" when there is
 * none, and one warning when the probe failed. */
#ifndef LYRA_GPU_H
#define LYRA_GPU_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct lyra_gpu_device {
    int index;             /* 0.. among the listed devices, in ggml's order (llama.cpp's device order) */
    char name[64];         /* ggml's name: "CUDA0", "Vulkan1", ... */
    char description[128]; /* the driver's: "NVIDIA H200", ... */
    char type[8];          /* "gpu", "igpu" or "accel" */
    char pci_bus_id[32];   /* "0000:c1:00.0"; "" when unknown */
    uint64_t memory_total, memory_free; /* bytes */
    int utilization_percent;            /* -1 unknown */
    int temperature_c;                  /* -1 unknown */
};

struct lyra_gpu_source;

/* Runs `<worker_exe> worker --probe-devices` (worker_exe borrowed; stdin
 * /dev/null, the workers' environment, its own process group), reads its
 * stdout until it exits or timeout_ms pass (then it is killed), and opens
 * NVML when present.  *out is always set unless the result is LYRA_ENOMEM
 * or LYRA_EINVAL (caller frees with lyra_gpu_free):
 *   0                   the probe answered (zero devices is a success)
 *   LYRA_ETIMEOUT       it did not finish in time and was killed
 *   LYRA_EIO            it could not start, crashed or exited non-zero
 *   LYRA_EPARSE         it printed no valid device line
 * With an error *out has no devices, err says why and a warning was logged:
 * the daemon goes on, models run on the CPU. */
int lyra_gpu_probe(const char *worker_exe, int timeout_ms, struct lyra_gpu_source **out,
                   struct lyra_err *err);

/* A FAKE source for tests, from a JSON array (borrowed):
 *   [{"name":"FakeGPU0","total":8589934592,"free":6442450944}, ...]
 * with optional "description", "type" (default "gpu"), "pci_bus_id",
 * "utilization" and "temperature" (default -1).  "free" defaults to
 * "total".  Returns 0 with *out (caller frees with lyra_gpu_free), or
 * LYRA_EPARSE (err says what is wrong) or LYRA_ENOMEM with *out NULL. */
int lyra_gpu_fake(const char *json, struct lyra_gpu_source **out, struct lyra_err *err);

/* LYRA_FAKE_GPUS set and not empty: lyra_gpu_fake() of its value (a test
 * knob, docs/gpu.md); else lyra_gpu_probe().  Same results as those. */
int lyra_gpu_from_env(const char *worker_exe, int timeout_ms, struct lyra_gpu_source **out,
                      struct lyra_err *err);

/* Copies the devices into *devs (caller frees with free(); NULL when *n is
 * 0), refreshing the NVML numbers first where NVML is open.  Returns 0 or
 * LYRA_ENOMEM. */
int lyra_gpu_list(struct lyra_gpu_source *s, struct lyra_gpu_device **devs, size_t *n);

/* Closes NVML (when this source opened it) and frees the source.  NULL is a
 * no-op. */
void lyra_gpu_free(struct lyra_gpu_source *s);

/* The devices as a JSON array for /status "gpu": objects with index, name,
 * description, type, pci_bus_id (null if unknown), memory_total,
 * memory_free, utilization_percent and temperature_c (null if unknown).
 * devs is borrowed; new reference (caller decrefs), NULL when out of
 * memory. */
json_t *lyra_gpu_to_json(const struct lyra_gpu_device *devs, size_t n);

/* Parses the probe's stdout (borrowed text, len bytes): the first line that
 * is {"type":"devices","devices":[...]} gives the devices that are not
 * "cpu".  Returns 0 with *devs (caller frees with free(); NULL when *n is 0)
 * or LYRA_EPARSE / LYRA_ENOMEM.  Exposed for tests. */
int lyra_gpu_parse_probe(const char *text, size_t len, struct lyra_gpu_device **devs, size_t *n,
                         struct lyra_err *err);

#endif
