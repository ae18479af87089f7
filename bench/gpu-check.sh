#!/usr/bin/env bash
# GPU check, run on the device machine from the repository root after
# bench/gpu-pack.sh: detection (ggml devices, nvidia-smi), offload (the
# worker's devices and all layers on the GPU) and speed (CPU vs GPU, Lyra's
# API vs the bare llama.cpp loop).  Writes everything to $OUT (or /tmp/gpu).
set -uo pipefail
out=${OUT:-/tmp/gpu}; mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.gpu/lib LYRA_BACKEND_DIR=$PWD/.gpu/lib
bin=$PWD/.gpu/bin
{
    echo "== nvidia-smi"; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "== cores: $(nproc)"
    "$bin/lyra-mkmodel" --preset small --vocab .gpu/vocab/ggml-vocab-starcoder.gguf --out /tmp/small.gguf
    for g in 0 99; do
        echo "== bare llama.cpp loop, gpu layers $g"
        "$bin/lyra-check-model" /tmp/small.gguf -n 256 -t 8 -b .gpu/lib -g "$g" | grep -E "device|generated|model:"
    done
    mkdir -p /tmp/lyra-home/models; ln -sf /tmp/small.gguf /tmp/lyra-home/models/small.gguf
    for g in 0 -1; do
        echo "== lyra serve, LYRA_MODELS_GPU_LAYERS=$g"
        LYRA_MODELS_GPU_LAYERS=$g LYRA_MODELS_THREADS=8 LYRA_LOG_LEVEL=warn \
            "$bin/lyra" serve --home /tmp/lyra-home --port 18777 2>>"$out/lyra.log" &
        pid=$!
        for i in $(seq 100); do curl -sf -o /dev/null localhost:18777/health && break; sleep 0.1; done
        for n in 1 2 3; do
            curl -s localhost:18777/v1/completions -H 'Content-Type: application/json' \
                -d '{"model":"small","prompt":"Once upon a time","max_tokens":256,"temperature":0,"ignore_eos":true}' |
                python3 -c 'import json,sys; t=json.load(sys.stdin)["timings"]; print("run", "prompt_ms %.1f" % t["prompt_ms"], "gen tok/s %.1f" % t["predicted_per_second"], "load_ms %.0f" % t["load_ms"])'
        done
        curl -s localhost:18777/status | python3 -c 'import json,sys; m=json.load(sys.stdin)["models"][0]; print("worker devices:", json.dumps(m.get("devices")), "rss MB", m["rss_bytes"]>>20)'
        kill $pid; wait $pid
    done
    grep -iE "cuda|gpu|offload" "$out/lyra.log" | head -20
} 2>&1 | tee "$out/gpu-check.txt"
