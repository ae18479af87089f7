#!/usr/bin/env bash
# Model-swap benchmarks: Lyra against llama-server's router mode (the
# multi-model llama-server), built from the same pinned source, in one run.
# Prints a table with ratios and writes the raw numbers to
# bench/results/swap-<date>.txt.
#
#   bench/swap.sh [BUILD_DIR]            (part of make bench)
#   SWAPS=9 ROUNDS=5 REQS=21 bench/swap.sh
#
# 1. swap: one model resident (Lyra models.max_loaded 1, llama-server
#    --models-max 1); requests alternate between two copies of
#    build/models/small.gguf; time from sending the request for B while A is
#    resident until B's first streamed token, a Lyra swap and a llama-server
#    swap in turn.  Median of SWAPS (default 9).
# 2. concurrent cold loads: three copies, nothing resident (a fresh server
#    each round), three requests at once; wall time until all three have a
#    first token, against one cold load on a fresh server.  Median of ROUNDS
#    (default 5).  Threads per model COLD_THREADS (default cores / 3, at
#    least 1), the same for the single load.
# 3. bookkeeping: a non-streamed one-token request on a resident model,
#    Lyra (max_loaded 1) against plain llama-server -m.  Median of REQS.
# Same threads (THREADS, default the cores), context (4096) and one slot
# (parallel 1 / -np 1) for both; the copies are page-cached.
# Benchmark daemons listen on loopback and act as admin without a key (they load and publish).
export LYRA_AUTH_ANONYMOUS_ROLE=${LYRA_AUTH_ANONYMOUS_ROLE:-admin}
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
cd "$root"
. bench/lib.sh
lyra=$build/lyra
swaps=${SWAPS:-9}
rounds=${ROUNDS:-5}
reqs=${REQS:-21}
threads=${THREADS:-$(nproc)}
# Three loads at once with as many threads each as the cores allow: with
# more, the three workers' OpenMP threads spin against each other and the
# number measures that, not whether the loads overlap.
cold_threads=${COLD_THREADS:-$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))}
ctx=4096
src_model=build/models/small.gguf
[ -x "$lyra" ] || { echo "swap: no $lyra (build first)" >&2; exit 1; }
[ -f "$src_model" ] || { echo "swap: no $src_model (scripts/models.sh build)" >&2; exit 1; }
server=$(bench/build-llama-server.sh)
export TIMEOUT_S=${TIMEOUT_S:-120}   # per request, in first_token.py
ft=bench/first_token.py

tmp=$(mktemp -d)
groups=()  # process groups of the servers started (each server and its children)
stop_group() { # pid: TERM the group, KILL it after 10 s
    local p=$1 i
    kill -TERM -- "-$p" 2>/dev/null || return 0
    for i in $(seq 100); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local p
    for p in "${groups[@]}"; do stop_group "$p"; done
    groups=()
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup_servers() { local p; for p in "${groups[@]}"; do stop_group "$p"; done; groups=(); }

results=bench/results; mkdir -p "$results"
out="$results/swap-$(date -u +%Y%m%dT%H%M%SZ).txt"
log() { printf '%s\n' "$*" | tee -a "$out"; }

models=$tmp/models; mkdir -p "$models"
for n in small small2 small3; do cp "$src_model" "$models/$n.gguf"; done
cat "$models"/*.gguf >/dev/null  # page-cached for both servers

# Starts a server in its own session (so that its workers / instances die
# with its group) on a free port and sets url (a $(...) would wait on the
# server).  free_port only finds a port nobody answers on; another process
# may bind it first, so a server that exits before it is healthy is started
# again on another port, three times at most.
#   launch NAME LOG TIMEOUT_S CMD... (the word PORT in CMD is the port)
launch() {
    local name=$1 logf=$2 limit=$3 attempt port pid end; shift 3
    for attempt in 1 2 3; do
        port=$(free_port)
        setsid "${@//PORT/$port}" >>"$logf" 2>&1 &
        pid=$!; groups+=("$pid")
        url="http://127.0.0.1:$port"
        end=$((SECONDS + limit))
        while ! curl -sf -m 2 -o /dev/null "$url/health"; do
            kill -0 "$pid" 2>/dev/null || break
            [ $SECONDS -lt $end ] || { echo "swap: $name not healthy in $limit s" >&2; tail -20 "$logf" >&2; exit 1; }
            sleep 0.05
        done
        kill -0 "$pid" 2>/dev/null && return 0
        echo "swap: $name exited before it was up (attempt $attempt, port $port)" >&2
    done
    tail -20 "$logf" >&2
    exit 1
}
start_lyra() { # max_loaded [threads]
    LYRA_MODELS_DIR=$models LYRA_MODELS_MAX_LOADED=$1 LYRA_MODELS_PARALLEL=1 LYRA_MODELS_THREADS=${2:-$threads} \
        LYRA_MODELS_CTX_SIZE=$ctx LYRA_LOG_LEVEL=warn \
        launch lyra "$tmp/lyra.log" 10 "$lyra" serve --home "$tmp/lyra-PORT" --port PORT
}
start_router() { # models_max [threads]
    launch "llama-server router" "$tmp/peer.log" 60 "$server" --models-dir "$models" --models-max "$1" \
        --host 127.0.0.1 --port PORT -t "${2:-$threads}" -c "$ctx" -np 1 --no-webui
}
start_plain() {
    launch llama-server "$tmp/peer.log" 120 "$server" -m "$models/small.gguf" --host 127.0.0.1 --port PORT \
        -t "$threads" -c "$ctx" -np 1 --no-webui
}
# How many models each server holds now (a check that max 1 really evicts).
lyra_loaded() { curl -sf -m 10 "$1/status" | jq '[.models[] | select(.state=="loaded")] | length'; }
peer_loaded() { curl -sf -m 10 "$1/models" | jq '[.data[] | select(.status.value=="loaded")] | length'; }
med() { printf '%s\n' "$@" | median; }
fmt() { awk -v v="$1" 'BEGIN{printf "%.1f", v}'; }

log "# Lyra model-swap benchmark $(date -u +%FT%TZ)"
log "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "# lyra $($lyra version | cut -d' ' -f2); llama-server from deps/src/llama.cpp ($(git -C deps/src/llama.cpp rev-parse --short HEAD 2>/dev/null || echo '?'))"
log "# model copies of $src_model ($(du -h "$src_model" | cut -f1)), threads $threads (cold loads: $cold_threads), ctx $ctx, 1 slot; swaps $swaps, rounds $rounds, requests $reqs"

# --- 1. swap with one model resident ---------------------------------------
# Both servers up at once, a Lyra swap then a llama-server swap, so that
# what else the machine does falls on both (the idle one takes no CPU).
one() { local line; line=$(python3 "$ft" "$1" "$2") || exit 1; echo "${line%% *}"; }
start_lyra 1; lurl=$url; start_router 1; purl=$url
one "$lurl" small >/dev/null; one "$purl" small >/dev/null   # A resident
lswap=(); pswap=(); next=small2
for i in $(seq "$swaps"); do
    t=$(one "$lurl" "$next"); lswap+=("$t")
    t=$(one "$purl" "$next"); pswap+=("$t")
    [ "$next" = small2 ] && next=small || next=small2
done
lres=$(lyra_loaded "$lurl"); pres=$(peer_loaded "$purl")
cleanup_servers
log "swap ms lyra: ${lswap[*]} (loaded after: $lres) | llama-server router: ${pswap[*]} (loaded after: $pres)"
l_swap=$(med "${lswap[@]}"); p_swap=$(med "${pswap[@]}")

# --- 2. cold loads: one alone, three at once --------------------------------
lone=(); lthree=(); pone=(); pthree=()
for r in $(seq "$rounds"); do
    start_lyra 3 "$cold_threads"; read -r t _ < <(python3 "$ft" "$url" small); lone+=("$t"); cleanup_servers
    start_router 3 "$cold_threads"; read -r t _ < <(python3 "$ft" "$url" small); pone+=("$t"); cleanup_servers
    start_lyra 3 "$cold_threads"; read -r a b c w < <(python3 "$ft" "$url" small small2 small3)
    lthree+=("$w")
    lc=$(lyra_loaded "$url"); cleanup_servers
    log "cold round $r lyra: one ${lone[-1]}, three at once $a $b $c, all by $w (loaded $lc)"
    start_router 3 "$cold_threads"; read -r a b c w < <(python3 "$ft" "$url" small small2 small3)
    pthree+=("$w"); pc=$(peer_loaded "$url"); cleanup_servers
    log "cold round $r llama-server router: one ${pone[-1]}, three at once $a $b $c, all by $w (loaded $pc)"
done
log "cold one ms lyra: ${lone[*]} | llama-server router: ${pone[*]}"
log "cold three-at-once wall ms lyra: ${lthree[*]} | llama-server router: ${pthree[*]}"
l_one=$(med "${lone[@]}"); p_one=$(med "${pone[@]}")
l_three=$(med "${lthree[@]}"); p_three=$(med "${pthree[@]}")

# --- 3. bookkeeping on a resident model ---------------------------------------
body='{"model":"small","prompt":"The quick brown fox","max_tokens":1,"temperature":0}'
req_ms() { curl -sf -m "$TIMEOUT_S" -o /dev/null -w '%{time_total}' "$1/v1/completions" \
    -H 'Content-Type: application/json' -d "$body" | awk '{printf "%.2f", $1 * 1000}'; }
start_lyra 1; lurl=$url; start_plain; purl=$url
req_ms "$lurl" >/dev/null; req_ms "$purl" >/dev/null   # load / warm
lb=(); pb=()
for i in $(seq "$reqs"); do lb+=("$(req_ms "$lurl")"); pb+=("$(req_ms "$purl")"); done
cleanup_servers
log "resident one-token request ms lyra: ${lb[*]} | llama-server: ${pb[*]}"
l_b=$(med "${lb[@]}"); p_b=$(med "${pb[@]}")

log ""
log "| metric (median) | lyra | llama-server | ratio (lyra/llama-server) |"
log "|---|---|---|---|"
log "| swap, B's first token while A resident, max 1 (ms, $swaps swaps) | $(fmt "$l_swap") | $(fmt "$p_swap") | $(ratio "$l_swap" "$p_swap") |"
log "| cold load, one model alone, first token ($cold_threads threads; ms, $rounds rounds) | $(fmt "$l_one") | $(fmt "$p_one") | $(ratio "$l_one" "$p_one") |"
log "| cold loads, 3 models at once, max 3, all first tokens ($cold_threads threads each; ms) | $(fmt "$l_three") | $(fmt "$p_three") | $(ratio "$l_three" "$p_three") |"
log "| 3 at once / one alone (1 = overlapped, 3 = serialised) | $(ratio "$l_three" "$l_one") | $(ratio "$p_three" "$p_one") | |"
log "| resident model, non-stream max_tokens 1 (ms, $reqs requests; noise-level) | $l_b | $p_b | $(ratio "$l_b" "$p_b") |"
log ""
log "results: $out"
