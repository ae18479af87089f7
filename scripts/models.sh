#!/usr/bin/env bash
# Generates the standard test models into build/models when missing or older
# than the generator's source (it is deterministic: same seed, same bytes, so
# sanitizer builds share the models of the main build instead of rewriting
# them).
#   scripts/models.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
out=build/models
vocab=deps/llama/share/vocab
mk=$build/lyra-mkmodel
mkdir -p "$out"
gen() { # name preset vocab
    local target=$out/$1.gguf
    if [ ! -f "$target" ] || [ tools/mkmodel.c -nt "$target" ]; then
        "$mk" --preset "$2" --vocab "$vocab/$3" --out "$target"
    fi
}
gen tiny tiny ggml-vocab-llama-spm.gguf
gen small small ggml-vocab-starcoder.gguf
