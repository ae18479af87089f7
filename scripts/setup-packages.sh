#!/usr/bin/env bash
# Installs the Debian packages Lyra builds and tests with, when missing.
# Needs root (apt-get) only when something is missing; idempotent and fast
# when everything is there.
set -euo pipefail

# Tools count as present when their command exists (a machine may have them
# from elsewhere, e.g. Node.js from nodesource); libraries by dpkg status.
declare -A tool_package=(
    [cc]=build-essential [cmake]=cmake [ninja]=ninja-build [pkg-config]=pkg-config [git]=git
    [npm]=npm [wrk]=wrk [curl]=curl [ps]=procps [jq]=jq [clang-14]=clang-14 [flock]=util-linux
)
packages=(
    ca-certificates
    libmicrohttpd-dev libwslay-dev libjansson-dev libsqlite3-dev libyaml-dev
    libsodium-dev libcurl4-openssl-dev libcmocka-dev
    # `make fuzz` and ctest fuzz.smoke: clang-14 (above) with libFuzzer and
    # the sanitizer runtimes, and llvm-symbolizer for readable reports.
    libclang-rt-14-dev llvm-14
)
missing=()
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
${SUDO:-} apt-get update -q >/dev/null
${SUDO:-} apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
