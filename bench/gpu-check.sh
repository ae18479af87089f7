#!/usr/bin/env bash
# GPU check, run on the device machine from the repository root after
# bench/gpu-pack.sh: detection (ggml devices, nvidia-smi, `lyra worker
# --probe-devices`), offload (the worker's devices and all layers on the
# GPU), speed (CPU vs GPU, Lyra's API vs the bare llama.cpp loop) and the
# memory estimate (models/estimate.h) against the GPU memory a loaded worker
# really takes.  Writes everything to $OUT (or /tmp/gpu); the lines starting
# with FAIL say what did not hold.
# Benchmark daemons listen on loopback and act as admin without a key (they load and publish).
export LYRA_AUTH_ANONYMOUS_ROLE=${LYRA_AUTH_ANONYMOUS_ROLE:-admin}
set -uo pipefail
out=${OUT:-/tmp/gpu}; mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.gpu/lib LYRA_BACKEND_DIR=$PWD/.gpu/lib
bin=$PWD/.gpu/bin
{
    echo "== nvidia-smi"; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "== cores: $(nproc)"
    echo "== lyra worker --probe-devices"
    "$bin/lyra" worker --probe-devices | tee "$out/probe.json"
    python3 - "$out/probe.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
gpus = [d for d in m["devices"] if d["type"] == "gpu" and d["memory_total"] > 0 and d["memory_free"] > 0]
print("PASS probe lists %d GPU(s) with memory" % len(gpus) if gpus else "FAIL probe lists no GPU with memory")
PY
    "$bin/lyra-mkmodel" --preset small --vocab .gpu/vocab/ggml-vocab-starcoder.gguf --out /tmp/small.gguf
    for g in 0 99; do
        echo "== bare llama.cpp loop, gpu layers $g"
        "$bin/lyra-check-model" /tmp/small.gguf -n 256 -t 8 -b .gpu/lib -g "$g" | grep -E "device|generated|model:"
    done
    mkdir -p /tmp/lyra-home/models; ln -f /tmp/small.gguf /tmp/lyra-home/models/small.gguf 2>/dev/null || cp /tmp/small.gguf /tmp/lyra-home/models/small.gguf
    for g in 0 -1; do
        echo "== lyra serve, LYRA_MODELS_GPU_LAYERS=$g"
        LYRA_MODELS_GPU_LAYERS=$g LYRA_MODELS_THREADS=8 LYRA_LOG_LEVEL=warn \
            "$bin/lyra" serve --home /tmp/lyra-home --port 18777 2>>"$out/lyra.log" &
        pid=$!
        python3 - <<'PY'
import json, time, urllib.request
base = "http://127.0.0.1:18777"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/health"); break
    except Exception:
        time.sleep(0.1)
body = json.dumps({"model": "small", "prompt": "Once upon a time", "max_tokens": 256,
                   "temperature": 0, "ignore_eos": True}).encode()
for n in range(3):
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    t = json.load(urllib.request.urlopen(req))["timings"]
    print("run %d: prompt_ms %.1f, gen tok/s %.1f, load_ms %.0f" % (n, t["prompt_ms"], t["predicted_per_second"], t["load_ms"]))
m = json.load(urllib.request.urlopen(base + "/status"))["models"][0]
print("worker devices:", json.dumps(m.get("devices")), "rss MB", m["rss_bytes"] >> 20)
PY
        kill $pid; wait $pid
    done
    echo "== estimate vs GPU memory (small, all layers, daemon defaults)"
    "$bin/lyra-estimate" /tmp/small.gguf --gpu-layers -1 | tee "$out/estimate.json"
    used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0; }
    before=$(used)
    LYRA_MODELS_GPU_LAYERS=-1 LYRA_MODELS_THREADS=8 LYRA_LOG_LEVEL=warn \
        "$bin/lyra" serve --home /tmp/lyra-home --port 18778 2>>"$out/lyra.log" &
    pid=$!
    python3 - <<'PY'
import json, time, urllib.request
base = "http://127.0.0.1:18778"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/health"); break
    except Exception:
        time.sleep(0.1)
body = json.dumps({"model": "small", "prompt": "Once upon a time", "max_tokens": 16}).encode()
urllib.request.urlopen(urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"}))
PY
    after=$(used)
    kill $pid; wait $pid
    python3 - "$out/estimate.json" "$before" "$after" <<'PY'
import json, sys
est = json.load(open(sys.argv[1]))["device_bytes"]
used = (int(sys.argv[3]) - int(sys.argv[2])) << 20
ratio = est / used if used > 0 else float("inf")
print("estimate %.1f MiB, worker uses %.1f MiB (nvidia-smi, after - before), ratio %.2f"
      % (est / 2**20, used / 2**20, ratio))
print(("PASS" if 0.5 <= ratio <= 2 else "FAIL") + " estimate within 2x of the measured device memory")
PY
    grep -iE "cuda|gpu|offload" "$out/lyra.log" | head -20
} 2>&1 | tee "$out/gpu-check.txt"
