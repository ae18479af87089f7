#!/usr/bin/env bash
# bench/auth.sh — what checking an API key costs per request, side by side
# with llama-server (built from the same pinned source) in one run:
#   Lyra, auth on, with a key   vs   Lyra, auth off, anonymous
#   llama-server --api-key KEY  vs   llama-server without a key
# on GET /v1/models (both list the one demo model), keep-alive, median of
# ROUNDS rounds of N requests each.  Ratios are printed; no threshold.
# Usage: bench/auth.sh [build dir]
set -euo pipefail
B=${1:-build}
ROUNDS=${ROUNDS:-7} N=${N:-3000}
cd "$(dirname "$0")/.."
server=$(bench/build-llama-server.sh)
KEY=bench-admin-key-0123456789abcdefghijklmnop
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/models" "$tmp/h1" "$tmp/h2"
cp models/demo.gguf "$tmp/models/"
LYRA_AUTH_ENABLED=true LYRA_ADMIN_KEY=$KEY LYRA_LOG_LEVEL=warn "$B/lyra" serve --home "$tmp/h1" --port 0 \
    --models-dir "$tmp/models" >"$tmp/l1.log" 2>&1 & pids+=($!)
LYRA_AUTH_ANONYMOUS_ROLE=admin LYRA_LOG_LEVEL=warn "$B/lyra" serve --home "$tmp/h2" --port 0 \
    --models-dir "$tmp/models" >"$tmp/l2.log" 2>&1 & pids+=($!)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p3=$(free_port); p4=$(free_port)
"$server" -m "$tmp/models/demo.gguf" --port "$p3" --api-key "$KEY" >"$tmp/s3.log" 2>&1 & pids+=($!)
"$server" -m "$tmp/models/demo.gguf" --port "$p4" >"$tmp/s4.log" 2>&1 & pids+=($!)
for h in h1 h2; do for _ in $(seq 100); do [ -f "$tmp/$h/serve.json" ] && break; sleep 0.1; done; done
for p in "$p3" "$p4"; do for _ in $(seq 200); do curl -sf "localhost:$p/health" >/dev/null && break; sleep 0.1; done; done
p1=$(python3 -c "import json;print(json.load(open('$tmp/h1/serve.json'))['port'])")
p2=$(python3 -c "import json;print(json.load(open('$tmp/h2/serve.json'))['port'])")
echo "# machine: $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$p1" "$p2" "$p3" "$p4" "$KEY" "$ROUNDS" "$N" <<'PY'
import socket, statistics, sys, time
p1, p2, p3, p4 = map(int, sys.argv[1:5]); key = sys.argv[5]; rounds, n = int(sys.argv[6]), int(sys.argv[7])
# A new connection every 100 requests for every server alike: llama-server
# closes a keep-alive connection after 100 (Keep-Alive: max=100).
def run(port, hdr):
    req = ("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % hdr).encode()
    s = None
    t = time.perf_counter()
    for i in range(n):
        if i % 100 == 0:
            if s:
                s.close()
            s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("port %d closed the connection" % port)
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        assert status == 200, head
        cl = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < cl:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("port %d closed the connection" % port)
            rest += chunk
    dt = time.perf_counter() - t
    s.close()
    return dt / n * 1e6
bearer = "Authorization: Bearer %s\r\n" % key
cases = [("lyra, key (auth on)", p1, bearer), ("lyra, no key (auth off)", p2, ""),
         ("llama-server, --api-key", p3, bearer), ("llama-server, no key", p4, "")]
res = {c[0]: [] for c in cases}
for _ in range(rounds):
    for name, port, hdr in cases:
        res[name].append(run(port, hdr))
med = {k: statistics.median(v) for k, v in res.items()}
for k, v in med.items():
    print("%-26s %7.1f us/request (median of %d x %d)" % (k, v, rounds, n))
print("key check costs: lyra %+.1f us (x%.3f), llama-server %+.1f us (x%.3f)" % (
    med["lyra, key (auth on)"] - med["lyra, no key (auth off)"],
    med["lyra, key (auth on)"] / med["lyra, no key (auth off)"],
    med["llama-server, --api-key"] - med["llama-server, no key"],
    med["llama-server, --api-key"] / med["llama-server, no key"]))
print("lyra with a key / llama-server with a key: x%.3f" % (med["lyra, key (auth on)"] / med["llama-server, --api-key"]))
PY
