#!/usr/bin/env bash
# Builds the pinned llama.cpp (ggml + libllama, shared, GGML_BACKEND_DL) into deps/.
#
# Source: a system libllama of exactly the pinned version when pkg-config finds
# one (then nothing is built); otherwise the git bundle shipped inside the npm
# package node-llama-cpp, whose commit id is checked.  Idempotent: a deps/ tree
# stamped with the pinned commit and the same options is left alone.
#
#   scripts/deps.sh            CPU backend only
#   CUDA=1 scripts/deps.sh     also the CUDA backend plug-in (CUDA_ARCH, default 90)
set -euo pipefail

LLAMA_TAG=v0.5.0
LLAMA_VERSION=0.5.0
GGML_VERSION=0.25.1
LLAMA_COMMIT=de3ff815ea7d559ee917f063901b8986f038abc6
NPM_PKG=node-llama-cpp@3.22.1

root=$(cd "$(dirname "$0")/.." && pwd)
deps=${DEPS_DIR:-$root/deps}
src=$deps/src/llama.cpp
prefix=$deps/llama
cuda=${CUDA:-0}
cuda_arch=${CUDA_ARCH:-90}
jobs=${JOBS:-$(nproc)}

log() { printf 'deps: %s\n' "$*" >&2; }

# A system libllama of the pinned version wins; the stamp records the choice.
if [ "${LYRA_SYSTEM_LLAMA:-1}" = 1 ] && pkg-config --exists "llama = $LLAMA_VERSION" 2>/dev/null \
   && pkg-config --exists "ggml = $GGML_VERSION" 2>/dev/null; then
    log "using system libllama $LLAMA_VERSION ($(pkg-config --variable=libdir llama))"
    mkdir -p "$deps"; echo system > "$deps/source"
    exit 0
fi

want_stamp="commit=$LLAMA_COMMIT cuda=$cuda arch=$cuda_arch cpu=x86-64-v3"
if [ -f "$prefix/.stamp" ] && [ "$(cat "$prefix/.stamp")" = "$want_stamp" ]; then
    log "llama.cpp $LLAMA_TAG already built in deps/llama"
    exit 0
fi

# --- source -------------------------------------------------------------
if [ ! -d "$src/.git" ] || [ "$(git -C "$src" rev-parse HEAD 2>/dev/null)" != "$LLAMA_COMMIT" ]; then
    log "fetching $NPM_PKG (npm registry) for its llama.cpp git bundle"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$NPM_PKG" >/dev/null && tar xzf node-llama-cpp-*.tgz package/llama/gitRelease.bundle)
    rm -rf "$src"; mkdir -p "$(dirname "$src")"
    git clone -q "$tmp/package/llama/gitRelease.bundle" "$src"
    got=$(git -C "$src" rev-parse HEAD)
    if [ "$got" != "$LLAMA_COMMIT" ]; then
        log "bundle commit $got is not the pinned $LLAMA_COMMIT ($LLAMA_TAG)"; exit 1
    fi
fi

# --- build ---------------------------------------------------------------
# GGML_NATIVE cannot be combined with GGML_BACKEND_DL, so the x86 level is
# named: x86-64-v3 (AVX2, FMA, F16C, BMI2), which every machine we run on has.
cmake_args=(
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_INSTALL_PREFIX="$prefix"
    -DCMAKE_INSTALL_LIBDIR=lib
    -DCMAKE_INSTALL_RPATH='$ORIGIN'
    -DBUILD_SHARED_LIBS=ON
    -DLLAMA_BUILD_IS_DEV=OFF
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_OPENSSL=OFF
    -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=ON
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_BACKEND_DIR="$prefix/lib"
)
if [ "$cuda" = 1 ]; then
    export PATH=$PATH:/usr/local/cuda/bin
    cmake_args+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cuda_arch")
fi

log "configuring llama.cpp $LLAMA_TAG (cuda=$cuda)"
cmake -S "$src" -B "$deps/build" -G Ninja "${cmake_args[@]}" >"$deps/configure.log" 2>&1 \
    || { tail -n 30 "$deps/configure.log"; exit 1; }
log "building ggml + libllama with $jobs jobs (a few minutes; log: deps/build.log)"
cmake --build "$deps/build" -j "$jobs" >"$deps/build.log" 2>&1 || { tail -n 40 "$deps/build.log"; exit 1; }
cmake --install "$deps/build" >"$deps/install.log" 2>&1 || { tail -n 20 "$deps/install.log"; exit 1; }

# The bundled ggml ships no ggml.pc.in when built inside llama.cpp: write one.
mkdir -p "$prefix/lib/pkgconfig"
cat >"$prefix/lib/pkgconfig/ggml.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ggml
Description: Tensor library for machine learning (bundled with llama.cpp $LLAMA_TAG)
Version: $GGML_VERSION
Libs: -L\${libdir} -lggml -lggml-base
Cflags: -I\${includedir}
PC

# Vocab-only GGUFs give test models real tokenizers.
mkdir -p "$prefix/share/vocab"
cp "$src"/models/ggml-vocab-*.gguf "$prefix/share/vocab/"

echo "$want_stamp" >"$prefix/.stamp"
echo source >"$deps/source"
log "done: $(ls "$prefix"/lib/libggml-cpu*.so "$prefix"/lib/libggml-cuda*.so 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
