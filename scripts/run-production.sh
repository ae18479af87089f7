#!/usr/bin/env bash
# run-production.sh — set Lyra up as a production service on this machine
# (DEPLOYMENT.md): check the machine, create the lyra user and LYRA_HOME,
# validate the configuration, install and start the systemd unit; or, with
# --foreground, run `lyra serve` in the foreground instead of the unit.
#
#   scripts/run-production.sh [--dry-run] [--foreground] [--home DIR] [--port N]
#                             [--lyra BIN] [--unit FILE] [--min-mem-gib N] [--min-disk-gib N]
#
#   --dry-run     print every step and its commands; change nothing
#   --foreground  no unit: run `lyra serve` here (as the lyra user when root)
#
# Needs root for the user, /var/lib/lyra and the unit (not for --dry-run).
set -euo pipefail

LYRA_BIN=${LYRA_BIN:-/usr/local/bin/lyra}
LYRA_HOME=${LYRA_HOME:-/var/lib/lyra}
PORT=${LYRA_SERVER_PORT:-8000}
UNIT_SRC=""
MIN_MEM_GIB=2
MIN_DISK_GIB=10
DRY_RUN=false
FOREGROUND=false
LYRA_USER=lyra

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=true ;;
        --foreground) FOREGROUND=true ;;
        --home|--port|--lyra|--unit|--min-mem-gib|--min-disk-gib)
            if [ $# -lt 2 ] || [ -z "$2" ]; then echo "run-production: $1 needs a value" >&2; exit 2; fi
            case $1 in
                --home) LYRA_HOME=$2 ;;
                --port) PORT=$2 ;;
                --lyra) LYRA_BIN=$2 ;;
                --unit) UNIT_SRC=$2 ;;
                --min-mem-gib) MIN_MEM_GIB=$2 ;;
                --min-disk-gib) MIN_DISK_GIB=$2 ;;
            esac
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-production: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# Values that go into the unit file must be plain: an absolute path of
# ordinary characters (no spaces, no sed or systemd specials), a port number.
plain_path() { case $1 in /*) ;; *) return 1 ;; esac; case $1 in *[!A-Za-z0-9/._-]*) return 1 ;; esac; }
if ! plain_path "$LYRA_HOME"; then
    echo "run-production: --home '$LYRA_HOME': use an absolute path of letters, digits, '/', '.', '_' and '-'" >&2
    exit 2
fi
case $PORT in
    ''|*[!0-9]*) echo "run-production: --port '$PORT' is not a number" >&2; exit 2 ;;
esac
if [ "$PORT" -gt 65535 ]; then echo "run-production: --port $PORT: 0 (any free port) to 65535" >&2; exit 2; fi

# ExecStart needs an absolute path.
if [ -x "$LYRA_BIN" ]; then LYRA_BIN=$(readlink -f "$LYRA_BIN"); fi

# The unit: next to an installed binary (PREFIX/share/lyra), else the
# source tree's deploy/.
if [ -z "$UNIT_SRC" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    for c in "$here/lyra.service" "$here/../deploy/lyra.service" \
             "$(dirname "$LYRA_BIN")/../share/lyra/lyra.service"; do
        if [ -f "$c" ]; then UNIT_SRC=$c; break; fi
    done
fi

problems=0
say() { printf 'run-production: %s\n' "$*"; }
warn() { printf 'run-production: warning: %s\n' "$*" >&2; }
fail() { printf 'run-production: %s\n' "$*" >&2; problems=$((problems + 1)); }
# Runs a command, or prints it under --dry-run.
run() {
    if $DRY_RUN; then
        printf '  would run: %s\n' "$*"
    else
        "$@"
    fi
}

# --- 1. the machine --------------------------------------------------------
say "checking the machine"
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
mem_gib=$((mem_kib / 1024 / 1024))
if [ "$mem_gib" -lt "$MIN_MEM_GIB" ]; then
    fail "memory: ${mem_gib} GiB, less than ${MIN_MEM_GIB} GiB (models need room: DEPLOYMENT.md, Memory budget)"
else
    say "memory: ${mem_gib} GiB (models.memory_budget_percent of it goes to models, 80% by default)"
fi
disk_dir=$LYRA_HOME
while [ ! -d "$disk_dir" ]; do disk_dir=$(dirname "$disk_dir"); done
disk_gib=$(df -P -k "$disk_dir" | awk 'NR == 2 {print int($4 / 1024 / 1024)}')
if [ "$disk_gib" -lt "$MIN_DISK_GIB" ]; then
    fail "disk: ${disk_gib} GiB free under $disk_dir, less than ${MIN_DISK_GIB} GiB for models"
else
    say "disk: ${disk_gib} GiB free under $disk_dir"
fi
port_busy=false
if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && port_busy=true
elif (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    port_busy=true
fi
if $port_busy; then
    # a Lyra we installed before is no obstacle: the unit restarts it
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet lyra.service 2>/dev/null; then
        say "port $PORT: held by lyra.service (it will be restarted)"
    else
        fail "port $PORT is in use on this machine (server.port; --port N)"
    fi
else
    say "port $PORT: free"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    if gpus=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null); then
        say "GPU: $(echo "$gpus" | tr '\n' ';' | sed 's/;$//')"
        say "GPU: the unit needs PrivateDevices=no and the DeviceAllow lines (deploy/lyra.service), and a CUDA=1 build"
    else
        warn "nvidia-smi is present but does not answer: the driver is not loaded?"
    fi
else
    say "GPU: none found (nvidia-smi absent): CPU inference"
fi
systemd_ok=false
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemd_ok=true
    say "systemd: running"
elif ! $FOREGROUND; then
    fail "systemd is not running on this machine: use --foreground (or another supervisor)"
fi
if [ ! -x "$LYRA_BIN" ]; then
    fail "no lyra binary at $LYRA_BIN (make install, or --lyra BIN)"
fi
if ! $FOREGROUND && [ -z "$UNIT_SRC" ]; then
    fail "lyra.service not found (--unit FILE)"
fi
if [ "$problems" -gt 0 ]; then
    if $DRY_RUN; then
        warn "$problems problem(s) above; a real run would stop here"
    else
        echo "run-production: $problems problem(s); nothing changed" >&2
        exit 1
    fi
fi
if ! $DRY_RUN && [ "$(id -u)" != 0 ]; then
    echo "run-production: needs root (the user, $LYRA_HOME, the unit); try --dry-run" >&2
    exit 1
fi

# --- 2. the user and LYRA_HOME ---------------------------------------------
say "user $LYRA_USER and $LYRA_HOME (0700)"
if id "$LYRA_USER" >/dev/null 2>&1; then
    say "user $LYRA_USER exists"
else
    run useradd --system --user-group --home-dir "$LYRA_HOME" --no-create-home --shell /usr/sbin/nologin \
        "$LYRA_USER"
fi
run install -d -m 0700 -o "$LYRA_USER" -g "$LYRA_USER" "$LYRA_HOME"
run install -d -m 0700 -o "$LYRA_USER" -g "$LYRA_USER" "$LYRA_HOME/models"
run install -d -m 0755 /etc/lyra
if [ ! -e /etc/lyra/lyra.env ]; then
    say "/etc/lyra/lyra.env (0600, root): LYRA_ADMIN_KEY and HF_TOKEN go there"
    if $DRY_RUN; then
        printf '  would write: /etc/lyra/lyra.env\n'
    else
        umask 077
        printf '# Secrets for lyra.service (EnvironmentFile=). DEPLOYMENT.md, Keys.\n#LYRA_ADMIN_KEY=\n#HF_TOKEN=\n' \
            > /etc/lyra/lyra.env
        chmod 0600 /etc/lyra/lyra.env
    fi
fi

# --- 3. the configuration --------------------------------------------------
say "validating the configuration ($LYRA_HOME/lyra.yaml, LYRA_* environment)"
if $DRY_RUN; then
    run "$LYRA_BIN" config validate --home "$LYRA_HOME"
elif [ "$(id -u)" = 0 ] && id "$LYRA_USER" >/dev/null 2>&1; then
    runuser -u "$LYRA_USER" -- "$LYRA_BIN" config validate --home "$LYRA_HOME"
else
    "$LYRA_BIN" config validate --home "$LYRA_HOME"
fi

# --- 4. start --------------------------------------------------------------
if $FOREGROUND; then
    say "running lyra serve in the foreground (Ctrl-C drains and stops)"
    if [ "$(id -u)" = 0 ]; then
        run runuser -u "$LYRA_USER" -- "$LYRA_BIN" serve --home "$LYRA_HOME" --port "$PORT"
    else
        run "$LYRA_BIN" serve --home "$LYRA_HOME" --port "$PORT"
    fi
    exit 0
fi
say "installing lyra.service from $UNIT_SRC"
if [ "$LYRA_BIN" != /usr/local/bin/lyra ] || [ "$LYRA_HOME" != /var/lib/lyra ] || [ "$PORT" != 8000 ]; then
    say "  (with ExecStart=$LYRA_BIN and home $LYRA_HOME)"
    if $DRY_RUN; then
        printf '  would write: /etc/systemd/system/lyra.service (paths rewritten)\n'
    else
        sed -e "s#/usr/local/bin/lyra #$LYRA_BIN #" -e "s#/var/lib/lyra#$LYRA_HOME#g" \
            -e "s#^ExecStart=\(.*\)\$#ExecStart=\1 --port $PORT#" "$UNIT_SRC" \
            > /etc/systemd/system/lyra.service
        chmod 0644 /etc/systemd/system/lyra.service
    fi
else
    run install -m 0644 "$UNIT_SRC" /etc/systemd/system/lyra.service
fi
if $systemd_ok || $DRY_RUN; then
    run systemctl daemon-reload
    run systemctl enable --now lyra.service
    run systemctl --no-pager status lyra.service
fi
say "done: journalctl -u lyra -f for the log; curl -s http://127.0.0.1:$PORT/health"
