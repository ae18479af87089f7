#!/usr/bin/env bash
# Packs what the GPU check needs into .gpu/ (git-ignored locally) for the
# device machine, which has the NVIDIA driver and CUDA runtime but none of
# Lyra's Debian libraries: the lyra binaries, the pinned llama.cpp libraries
# with the CUDA plug-in (from `make deps CUDA=1`, or DEPS_LIB), the shared
# libraries lyra links (glibc and the C++ runtime excepted), and the vocab
# file to generate the small model there.
#   bench/gpu-pack.sh [DEPS_LIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
lib=${1:-deps/llama/lib}
[ -f "$lib/libggml-cuda.so" ] || { echo "no $lib/libggml-cuda.so: run make deps CUDA=1" >&2; exit 1; }
rm -rf .gpu; mkdir -p .gpu/bin .gpu/lib .gpu/vocab
cp build/lyra build/lyra-check-model build/lyra-mkmodel build/lyra-estimate .gpu/bin/
cp -a "$lib"/lib*.so* .gpu/lib/
ldd build/lyra | awk '/=> \// {print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libggml[^/]*|libllama)\.so' |
    while read -r so; do cp -L "$so" .gpu/lib/; done
cp deps/llama/share/vocab/ggml-vocab-starcoder.gguf .gpu/vocab/
strip --strip-unneeded .gpu/lib/*.so* 2>/dev/null || true
du -sh .gpu
