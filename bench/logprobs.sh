#!/usr/bin/env bash
# bench/logprobs.sh — the cost of logprobs, Lyra and llama-server (same
# pinned source) side by side in one run, on models/demo.gguf: 120 greedy
# tokens through /v1/completions with no logprobs and with logprobs 0, 5,
# 20; median of ROUNDS interleaved runs; tokens/s and ratios printed.
# Usage: bench/logprobs.sh [build dir]
set -euo pipefail
B=${1:-build}
ROUNDS=${ROUNDS:-5}
cd "$(dirname "$0")/.."
server=$(bench/build-llama-server.sh)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/models" "$tmp/home"
cp models/demo.gguf "$tmp/models/"
LYRA_AUTH_ANONYMOUS_ROLE=admin LYRA_LOG_LEVEL=warn LYRA_MODELS_PARALLEL=1 "$B/lyra" serve --home "$tmp/home" \
    --port 0 --models-dir "$tmp/models" >"$tmp/lyra.log" 2>&1 & pids+=($!)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$server" -m "$tmp/models/demo.gguf" --port "$port" -np 1 >"$tmp/server.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -f "$tmp/home/serve.json" ] && break; sleep 0.1; done
for _ in $(seq 200); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.1; done
lport=$(python3 -c "import json;print(json.load(open('$tmp/home/serve.json'))['port'])")
echo "# machine: $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$lport" "$port" "$ROUNDS" <<'PY'
import json, statistics, sys, time, urllib.request
lport, sport, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def run(port, extra):
    body = {"model": "demo", "prompt": "And God said", "max_tokens": 120, "temperature": 0, **extra}
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    r = json.load(urllib.request.urlopen(req))
    return r["usage"]["completion_tokens"] / (time.perf_counter() - t)
settings = [("none", {}), ("logprobs 0", {"logprobs": 0}), ("logprobs 5", {"logprobs": 5}),
            ("logprobs 20", {"logprobs": 20})]
servers = [("lyra", lport), ("llama-server", sport)]
for _, p in servers:
    run(p, {})
res = {(s, k): [] for s, _ in servers for k, _ in settings}
for _ in range(rounds):
    for k, extra in settings:
        for s, p in servers:
            res[(s, k)].append(run(p, extra))
med = {key: statistics.median(v) for key, v in res.items()}
for k, _ in settings:
    l, s = med[("lyra", k)], med[("llama-server", k)]
    print("%-12s lyra %7.1f tok/s (x%.3f of none)   llama-server %7.1f tok/s (x%.3f of none)   lyra/llama-server x%.3f" % (
        k, l, l / med[("lyra", "none")], s, s / med[("llama-server", "none")], l / s))
PY
