#!/usr/bin/env bash
# Lyra's benchmarks, side by side with llama-server built from the same
# pinned llama.cpp source, in one run (the machine is noisy: never compare
# against another day's numbers).  Prints a table with ratios and appends
# the raw results to bench/results/<date>.txt.
#
#   bench/run.sh [BUILD_DIR]       (make bench)
#   RUNS=5 DURATION=10 bench/run.sh
#   BASELINE=/path/to/older/lyra bench/run.sh   also runs /health on that
#       binary in the same rounds (a change against the code before it)
# Benchmark daemons listen on loopback and act as admin without a key (they load and publish).
export LYRA_AUTH_ANONYMOUS_ROLE=${LYRA_AUTH_ANONYMOUS_ROLE:-admin}
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
cd "$root"
. bench/lib.sh
lyra=$build/lyra
runs=${RUNS:-5}
duration=${DURATION:-10}
model=build/models/tiny.gguf
results=bench/results
mkdir -p "$results"
out="$results/$(date -u +%Y%m%dT%H%M%SZ).txt"
server=$(bench/build-llama-server.sh)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT


log() { printf '%s\n' "$*" | tee -a "$out"; }
log "# Lyra benchmarks $(date -u +%FT%TZ)"
log "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "# lyra $($lyra version | cut -d' ' -f2); llama-server from deps/src/llama.cpp ($(git -C deps/src/llama.cpp rev-parse --short HEAD))"

# --- 1. start-up: exec to first 200 from /health ---------------------------
startup=()
for i in $(seq "$runs"); do
    home=$tmp/home-$i
    port=$(free_port)
    t0=$(date +%s%N)
    "$lyra" serve --home "$home" --port "$port" 2>/dev/null &
    pid=$!
    until curl -sf -o /dev/null "http://127.0.0.1:$port/health"; do sleep 0.002; done
    t1=$(date +%s%N)
    startup+=($(( (t1 - t0) / 1000000 )))
    if [ "$i" = 1 ]; then
        sleep 1
        rss_kb=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
startup_ms=$(printf '%s\n' "${startup[@]}" | median)
log "startup_ms runs: ${startup[*]}"

# --- 2. /health throughput: wrk -t2 -c64, alternating servers --------------
lport=$(free_port); sport=$(free_port)
"$lyra" serve --home "$tmp/home-wrk" --port "$lport" 2>/dev/null & pids+=($!)
"$server" -m "$model" --port "$sport" --host 127.0.0.1 -t "$(nproc)" -c 512 --no-webui >/dev/null 2>&1 & pids+=($!)
wait_health "http://127.0.0.1:$lport" 10
wait_health "http://127.0.0.1:$sport" 60 || { echo "llama-server did not come up" >&2; exit 1; }
if [ -n "${BASELINE:-}" ]; then
    bport=$(free_port)
    "$BASELINE" serve --home "$tmp/home-base" --port "$bport" 2>/dev/null & pids+=($!)
    wait_health "http://127.0.0.1:$bport" 10
fi
wrk_run() { # port -> "reqs p99_ms"
    wrk -t2 -c64 -d"${duration}s" --latency "http://127.0.0.1:$1/health" | awk '
        /Requests\/sec/ {rps=$2}
        /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p99=v}
        END {print rps, p99}'
}
lr=(); lp=(); sr=(); sp=(); br=(); bp=()
for i in $(seq "$runs"); do
    read -r r p < <(wrk_run "$lport"); lr+=("$r"); lp+=("$p")
    read -r r p < <(wrk_run "$sport"); sr+=("$r"); sp+=("$p")
    line="wrk run $i: lyra ${lr[-1]} req/s p99 ${lp[-1]} ms | llama-server ${sr[-1]} req/s p99 ${sp[-1]} ms"
    if [ -n "${BASELINE:-}" ]; then
        read -r r p < <(wrk_run "$bport"); br+=("$r"); bp+=("$p")
        line="$line | baseline ${br[-1]} req/s p99 ${bp[-1]} ms"
    fi
    log "$line"
done
l_rps=$(printf '%s\n' "${lr[@]}" | median); s_rps=$(printf '%s\n' "${sr[@]}" | median)
l_p99=$(printf '%s\n' "${lp[@]}" | median); s_p99=$(printf '%s\n' "${sp[@]}" | median)

verdict() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { ok = (op == ">=" ? a >= b : a <= b); print ok ? "ok" : "MISSED" }'; }
log ""
log "| metric (median of $runs) | lyra | llama-server | ratio | target | |"
log "|---|---|---|---|---|---|"
log "| start-up to first /health 200 (ms) | $startup_ms | | | < 300 | $(verdict "$startup_ms" "<=" 300) |"
log "| idle RSS (MB) | $(awk -v k="$rss_kb" 'BEGIN{printf "%.1f", k/1024}') | | | < 20 | $(verdict "$rss_kb" "<=" 20480) |"
log "| GET /health req/s (wrk -t2 -c64 ${duration}s) | $l_rps | $s_rps | $(ratio "$l_rps" "$s_rps") | >= 1.00 | $(verdict "$l_rps" ">=" "$s_rps") |"
log "| GET /health p99 latency (ms) | $l_p99 | $s_p99 | $(ratio "$l_p99" "$s_p99") | <= 1.00 | $(verdict "$l_p99" "<=" "$s_p99") |"
if [ -n "${BASELINE:-}" ]; then
    b_rps=$(printf '%s
' "${br[@]}" | median); b_p99=$(printf '%s
' "${bp[@]}" | median)
    log "| GET /health req/s, this build vs the baseline | $l_rps | $b_rps (baseline) | $(ratio "$l_rps" "$b_rps") | >= 1.00 | $(verdict "$l_rps" ">=" "$b_rps") |"
fi
log ""
log "results: $out"
