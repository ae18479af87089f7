#!/usr/bin/env bash
# Inference benchmarks: Lyra against llama-server built from the same pinned
# source, same model file (build/models/small.gguf), same threads, greedy,
# same prompt, in one run.  Median of RUNS (default 5).  Prints a table.
#   bench/inference.sh [BUILD_DIR]
# Benchmark daemons listen on loopback and act as admin without a key (they load and publish).
export LYRA_AUTH_ANONYMOUS_ROLE=${LYRA_AUTH_ANONYMOUS_ROLE:-admin}
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
cd "$root"
. bench/lib.sh
lyra=$build/lyra
runs=${RUNS:-5}
model=${MODEL:-build/models/small.gguf}
threads=${THREADS:-$(nproc)}
server=$(bench/build-llama-server.sh)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
results=bench/results; mkdir -p "$results"
out="$results/inference-$(date -u +%Y%m%dT%H%M%SZ).txt"
log() { printf '%s\n' "$*" | tee -a "$out"; }
now() { date +%s.%N; }
prompt="The quick brown fox jumps over the lazy dog. Tell me a long story about it."

# Both set globals (lurl/lyra_pid, purl): a $(...) would wait on the server.
start_lyra() { # parallel
    local port; port=$(free_port); local home=$tmp/lyra-$port
    mkdir -p "$home/models"; ln -f "$root/$model" "$home/models/bench.gguf" 2>/dev/null || cp "$root/$model" "$home/models/bench.gguf"
    LYRA_MODELS_PARALLEL=$1 LYRA_MODELS_THREADS=$threads LYRA_MODELS_CTX_SIZE=4096 LYRA_LOG_LEVEL=warn \
        "$lyra" serve --home "$home" --port "$port" >/dev/null 2>>"$tmp/lyra.log" &
    lyra_pid=$!; pids+=($lyra_pid)
    lurl="http://127.0.0.1:$port"
    wait_health "$lurl" 10
}
start_peer() { # parallel
    local port; port=$(free_port)
    "$server" -m "$model" --host 127.0.0.1 --port "$port" -t "$threads" -np "$1" -c $((4096 * $1)) \
        --no-webui >>"$tmp/peer.log" 2>&1 &
    pids+=($!)
    purl="http://127.0.0.1:$port"
    wait_health "$purl" 120
}
lyra_gen() { # url n -> predicted tokens/s (server-side timing)
    curl -sf "$1/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"model\":\"bench\",\"prompt\":\"$prompt\",\"max_tokens\":$2,\"temperature\":0,\"ignore_eos\":true}" |
        jq -r '.timings.predicted_per_second'
}
peer_gen() {
    curl -sf "$1/completion" -H 'Content-Type: application/json' \
        -d "{\"prompt\":\"$prompt\",\"n_predict\":$2,\"temperature\":0,\"ignore_eos\":true,\"cache_prompt\":true}" |
        jq -r '.timings.predicted_per_second'
}
wall() { local t0; t0=$(now); "$@" >/dev/null; awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", (b-a)*1000}'; }
# Time to first token: a one-token request timed by curl itself (no process
# start-up in the number), same prompt as the warm cache holds.
ttft() { # url path body -> ms
    curl -sf -o /dev/null -w '%{time_total}' "$1$2" -H 'Content-Type: application/json' -d "$3" |
        awk '{printf "%.2f", $1 * 1000}'
}
lyra_ttft() { ttft "$1" /v1/completions "{\"model\":\"bench\",\"prompt\":\"$prompt\",\"max_tokens\":1,\"temperature\":0}"; }
peer_ttft() { ttft "$1" /completion "{\"prompt\":\"$prompt\",\"n_predict\":1,\"temperature\":0,\"cache_prompt\":true}"; }
parallel_tps() { # fn url streams n -> aggregate tokens/s by wall clock
    local t0 jobs_=(); t0=$(now)
    for i in $(seq "$3"); do "$1" "$2" "$4" >/dev/null & jobs_+=($!); done
    wait "${jobs_[@]}"
    awk -v a="$t0" -v b="$(now)" -v n=$(($3 * $4)) 'BEGIN{printf "%.1f", n/(b-a)}'
}

log "# Lyra inference benchmark $(date -u +%FT%TZ)"
log "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "# model $model, threads $threads, greedy, runs $runs"

# --- single stream, 256 tokens; TTFT (max_tokens 1) ----------------------
start_lyra 1; start_peer 1
lyra_gen "$lurl" 8 >/dev/null; peer_gen "$purl" 8 >/dev/null   # warm (Lyra loads lazily here)
ls=(); ps=(); lt=(); pt=()
for i in $(seq "$runs"); do
    ls+=($(lyra_gen "$lurl" 256)); ps+=($(peer_gen "$purl" 256))
done
# Warm TTFT: each timed request follows an untimed one on the same server,
# so neither pays for the other's use of the cores and caches.
for i in $(seq "$runs"); do
    lyra_ttft "$lurl" >/dev/null; lt+=($(lyra_ttft "$lurl"))
    peer_ttft "$purl" >/dev/null; pt+=($(peer_ttft "$purl"))
done
log "single tok/s lyra: ${ls[*]} | llama-server: ${ps[*]}"
log "ttft ms lyra: ${lt[*]} | llama-server: ${pt[*]}"
l1=$(printf '%s\n' "${ls[@]}" | median); p1=$(printf '%s\n' "${ps[@]}" | median)
lttft=$(printf '%s\n' "${lt[@]}" | median); pttft=$(printf '%s\n' "${pt[@]}" | median)

# --- second turn of a 2,000-token conversation: prompt tokens evaluated ---
long=$(for i in $(seq 220); do printf 'word%d is here. ' "$i"; done)
conv="[{\"role\":\"user\",\"content\":\"$long\"}]"
first=$(curl -sf "$lurl/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"bench\",\"messages\":$conv,\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true}")
reply=$(jq -r '.choices[0].message.content' <<<"$first" | jq -Rs .)
conv2="[{\"role\":\"user\",\"content\":\"$long\"},{\"role\":\"assistant\",\"content\":$reply},{\"role\":\"user\",\"content\":\"And then?\"}]"
second=$(curl -sf "$lurl/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"bench\",\"messages\":$conv2,\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true}")
turn1_prompt=$(jq -r '.usage.prompt_tokens' <<<"$first")
turn2_prompt=$(jq -r '.usage.prompt_tokens' <<<"$second"); turn2_eval=$(jq -r '.timings.prompt_n' <<<"$second")
log "conversation: turn 1 prompt $turn1_prompt tokens; turn 2 prompt $turn2_prompt tokens, evaluated $turn2_eval"
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
stop_all

# --- 8 concurrent streams x 128 tokens -----------------------------------
start_lyra 8; start_peer 8
lyra_gen "$lurl" 8 >/dev/null; peer_gen "$purl" 8 >/dev/null
la=(); pa=()
for i in $(seq "$runs"); do
    la+=($(parallel_tps lyra_gen "$lurl" 8 128)); pa+=($(parallel_tps peer_gen "$purl" 8 128))
done
log "8x128 aggregate tok/s lyra: ${la[*]} | llama-server: ${pa[*]}"
l8=$(printf '%s\n' "${la[@]}" | median); p8=$(printf '%s\n' "${pa[@]}" | median)
stop_all

# --- cold start: lazy load of the model on the first request --------------
cold=()
for i in $(seq "$runs"); do
    start_lyra 4
    cold+=($(lyra_ttft "$lurl"))
    kill "$lyra_pid"; wait "$lyra_pid" 2>/dev/null || true
done
lcold=$(printf '%s\n' "${cold[@]}" | median)
log "cold first request ms: ${cold[*]}"

# --- daemon RSS with 4 models loaded (workers excluded) -------------------
port=$(free_port); home=$tmp/rss; mkdir -p "$home/models"
for n in a b c d; do cp "$root/build/models/tiny.gguf" "$home/models/$n.gguf"; done
LYRA_MODELS_MAX_LOADED=4 LYRA_LOG_LEVEL=warn "$lyra" serve --home "$home" --port "$port" >/dev/null 2>>"$tmp/lyra.log" &
rpid=$!; pids+=($rpid); wait_health "http://127.0.0.1:$port" 10
for n in a b c d; do
    curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"model\":\"$n\",\"prompt\":\"hi\",\"max_tokens\":4}" >/dev/null
done
loaded=$(curl -sf "http://127.0.0.1:$port/status" | jq '[.models[] | select(.state=="loaded")] | length')
rss_mb=$(awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/$rpid/status)
log "daemon RSS with $loaded models loaded: $rss_mb MB"

# --- daemon CPU with stalled stream clients -------------------------------
# 8 streams whose clients never read: once the generations are over, the
# daemon must wait, not spin (CPU time of the daemon process over 5 s).
python3 - "$port" >"$tmp/stalled.pid" <<'PY' &
import socket, sys, time, os
port = int(sys.argv[1])
body = '{"model":"a","prompt":"hi","max_tokens":1500,"ignore_eos":true,"stream":true}'
socks = []
for i in range(8):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
    socks.append(s)
print(os.getpid(), flush=True)
time.sleep(120)  # never reads
PY
stalled=$!; pids+=($stalled)
for i in $(seq 600); do  # until the generations have ended
    n=$(curl -sf "http://127.0.0.1:$port/status" | jq '[.models[].in_flight] | add // 0')
    [ "$n" = 0 ] && [ $i -gt 5 ] && break
    sleep 0.1
done
cpu0=$(awk '{print $14 + $15}' /proc/$rpid/stat); sleep 5; cpu1=$(awk '{print $14 + $15}' /proc/$rpid/stat)
stalled_cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)/hz/5*100}')
log "daemon CPU with 8 stalled stream clients, generations over: $stalled_cpu %"
kill "$stalled" 2>/dev/null || true

log ""
log "| metric (median of $runs) | lyra | llama-server | ratio | target |"
log "|---|---|---|---|---|"
log "| single stream, 256 tokens (tok/s) | $l1 | $p1 | $(ratio "$l1" "$p1") | >= 0.97 |"
log "| 8 streams x 128 tokens, aggregate (tok/s) | $l8 | $p8 | $(ratio "$l8" "$p8") | >= 1.00 |"
log "| time to first token, warm (ms) | $lttft | $pttft | +$(awk -v a="$lttft" -v b="$pttft" 'BEGIN{printf "%.1f", a-b}') ms | <= +2 ms |"
log "| cold first request incl. lazy load (ms) | $lcold | | | < 1000 |"
log "| 2nd turn of a ${turn1_prompt}-token chat: prompt tokens evaluated | $turn2_eval of $turn2_prompt | | | ≈ new message only |"
log "| daemon RSS, $loaded models loaded, workers excluded (MB) | $rss_mb | | | < 30 |"
log "| daemon CPU, 8 stalled stream clients, 5 s (%) | $stalled_cpu | | | ≈ 0 |"
log ""
log "results: $out"
