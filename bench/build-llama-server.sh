#!/usr/bin/env bash
# Builds llama-server from the same pinned llama.cpp source as deps/ (same
# ggml options) into deps/bench/, once.  It is the benchmark peer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/deps/src/llama.cpp
out=$root/deps/bench
bin=$out/build/bin/llama-server
[ -x "$bin" ] && { echo "$bin"; exit 0; }
[ -d "$src" ] || { echo "bench: run 'make deps' first (no $src)" >&2; exit 1; }
echo "bench: building llama-server from $src (once; several minutes)" >&2
cmake -S "$src" -B "$out/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_IS_DEV=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON >"$out.configure.log" 2>&1 \
    || { tail -30 "$out.configure.log" >&2; exit 1; }
cmake --build "$out/build" --target llama-server ggml-cpu -j "${JOBS:-$(nproc)}" >"$out.build.log" 2>&1 \
    || { tail -30 "$out.build.log" >&2; exit 1; }
echo "$bin"
