#!/usr/bin/env bash
# bench/events.sh — the live event stream (issue 8's performance part):
#  (a) publish → WebSocket receive latency with 100 connected clients, p50/p99
#  (b) 1,000 concurrent WebSocket clients held: daemon RSS and threads before/after
#  (c) reconnect with since after missing 1,000 events: upgrade → last missed event
# Usage: bench/events.sh [build dir]   (needs a built lyra; builds the client)
# Benchmark daemons listen on loopback and act as admin without a key (they load and publish).
export LYRA_AUTH_ANONYMOUS_ROLE=${LYRA_AUTH_ANONYMOUS_ROLE:-admin}
set -euo pipefail
B=${1:-build}
cc -O2 -o "$B/events_client" bench/events_client.c
H=$(mktemp -d)
ulimit -n 8192 || true
LYRA_LOG_LEVEL=warn LYRA_SERVER_MAX_CONNECTIONS=4096 "$B/lyra" serve --home "$H" --port 0 >"$H.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$H" "$H.log"' EXIT
for _ in $(seq 100); do [ -f "$H/serve.json" ] && break; sleep 0.05; done
PORT=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$H/serve.json")
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
threads() { awk '/Threads/ {print $2}' /proc/$PID/status; }
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  cpus: $(nproc)"
echo "(a) latency, 100 clients, 200 events:"
"$B/events_client" latency "$PORT" 100 200
R0=$(rss); T0=$(threads)
"$B/events_client" hold "$PORT" 1000 4 >/dev/null &
HP=$!
sleep 3
R1=$(rss); T1=$(threads)
wait $HP || true
echo "(b) 1000 clients held: RSS ${R0} kB -> ${R1} kB (+$(( (R1 - R0) / 1024 )) MiB), threads $T0 -> $T1"
echo "(c) reconnect after 1000 missed events:"
"$B/events_client" replay "$PORT" 1000 1
