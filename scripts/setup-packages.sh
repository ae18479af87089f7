#!/usr/bin/env bash
# Installs the Debian packages Lyra builds and tests with, when missing.
# Needs root (apt-get) only when something is missing; idempotent and fast
# when everything is there.
#   scripts/setup-packages.sh          what build and test need
#   scripts/setup-packages.sh --demo   also what `make demo-model` needs (the
#                                      training text and SentencePiece); the
#                                      build and the tests never need these
set -euo pipefail
demo=false
[ "${1:-}" = --demo ] && demo=true

# Tools count as present when their command exists (a machine may have them
# from elsewhere, e.g. Node.js from nodesource); libraries by dpkg status.
declare -A tool_package=(
    [cc]=build-essential [cmake]=cmake [ninja]=ninja-build [pkg-config]=pkg-config [git]=git
    [npm]=npm [wrk]=wrk [curl]=curl [ps]=procps [jq]=jq [clang-14]=clang-14 [flock]=util-linux
    # ctest integration.it_metrics lints GET /metrics with promtool
    [promtool]=prometheus
    # the dashboard's browser tests (tests/ui/, puppeteer-core drives it)
    [chromium]=chromium
    # the small copies of its screenshots in docs/ui/ (docs/ui.md)
    [pngquant]=pngquant
    # ctest integration.it_nginx (deploy/nginx/lyra.conf in front of Lyra);
    # systemd-analyze (it_systemd) comes with systemd
    [nginx]=nginx-light [systemd-analyze]=systemd [shellcheck]=shellcheck
    # it_pull and it_ollama_node download from tests/tools/pull_server.py
    [python3]=python3
)
packages=(
    ca-certificates
    libmicrohttpd-dev libwslay-dev libjansson-dev libsqlite3-dev libyaml-dev
    libsodium-dev libcurl4-openssl-dev libcmocka-dev
    # sd_notify for `lyra serve` under systemd (src/sys/sdnotify.c)
    libsystemd-dev
    # `make fuzz` and ctest fuzz.smoke: clang-14 (above) with libFuzzer and
    # the sanitizer runtimes, and llvm-symbolizer for readable reports.
    libclang-rt-14-dev llvm-14
)
# `make demo-model` only: spm_train/spm_encode, the KJV text and its reader.
if $demo; then
    tool_package[spm_train]=sentencepiece
    tool_package[bible]=bible-kjv
    packages+=(bible-kjv-text)
fi
missing=()
# nginx and systemd-analyze live in /usr/sbin and /usr/bin; a non-root
# PATH may lack sbin.
PATH="$PATH:/usr/sbin:/sbin"
for tool in "${!tool_package[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${tool_package[$tool]}")
done
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
        echo "setup: missing packages and not root: apt-get install ${missing[*]}" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's prometheus package (for promtool) would start a Prometheus server
# listening on :9090 from its postinst, nginx one on :80.  Nothing of it may run: while it is
# installed, invoke-rc.d and deb-systemd-invoke are told "no" by a
# policy-rc.d (exit 101; one already there, as in most containers, is kept),
# recommends (prometheus-node-exporter, another listener) are left out, and
# the service is disabled afterwards so a reboot does not start it either.
server_package=false
services=()
[[ " ${missing[*]} " == *" prometheus "* ]] && server_package=true && services+=(prometheus)
[[ " ${missing[*]} " == *" nginx-light "* ]] && server_package=true && services+=(nginx)
if $server_package && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# scripts/setup-packages.sh: no services start while it installs\nexit 101\n' |
        ${SUDO:-} tee /usr/sbin/policy-rc.d >/dev/null
    ${SUDO:-} chmod 755 /usr/sbin/policy-rc.d
    trap '${SUDO:-} rm -f /usr/sbin/policy-rc.d' EXIT
fi
${SUDO:-} apt-get update -q >/dev/null
${SUDO:-} apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
for svc in "${services[@]}"; do
    if [ -d /run/systemd/system ]; then
        ${SUDO:-} systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
    else
        ${SUDO:-} update-rc.d "$svc" disable >/dev/null 2>&1 || true
        # the init script itself: invoke-rc.d would ask the policy, which says no
        [ -x "/etc/init.d/$svc" ] && ${SUDO:-} "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
done
