#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz/ into build-fuzz/ (clang,
# -fsanitize=fuzzer,address,undefined) and runs each one.  docs/fuzzing.md.
#
#   scripts/fuzz.sh run [HARNESS...]    FUZZ_SECONDS each (default 60); `make fuzz`
#   scripts/fuzz.sh smoke               FUZZ_SMOKE_SECONDS each (default 3); ctest fuzz.smoke
#   scripts/fuzz.sh build
#
# Each harness reads the committed seeds (tests/fuzz/corpus/<h>/, never
# written) and keeps what it finds in build-fuzz/corpus/<h>/.  A crash leaves
# its input in build-fuzz/artifacts/<h>/ and fails the run; replay it with
# build-fuzz/fuzz_<h> FILE, and once fixed commit it as
# tests/fuzz/corpus/<h>/crash-<what> (ctest fuzz.replay.<h> replays it in
# every build).
#
# Without clang and libFuzzer: exit 77 (ctest: skipped), unless CI=true,
# where a missing fuzzer is a failure (scripts/setup-packages.sh installs it).
set -euo pipefail
mode=${1:-run}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
harnesses=(gguf frame config requests)
[ $# -gt 0 ] && harnesses=("$@")
out=build-fuzz
jobs=${JOBS:-$(nproc)}

missing() {
    echo "fuzz: $1" >&2
    if [ "${CI:-}" = true ] || [ "$mode" != smoke ]; then
        echo "fuzz: install clang-14 and libclang-rt-14-dev (scripts/setup-packages.sh)" >&2
        exit 1
    fi
    echo "fuzz: skipped (not in CI)" >&2
    exit 77
}

cc=${FUZZ_CC:-}
if [ -z "$cc" ]; then
    for c in clang-14 clang; do
        if command -v "$c" >/dev/null 2>&1; then cc=$(command -v "$c"); break; fi
    done
fi
[ -n "$cc" ] || missing "no clang found"
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' >"$probe/p.c"
"$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err" ||
    missing "$cc cannot link libFuzzer: $(head -c 300 "$probe/err")"

# One configure per compiler; concurrent callers (ctest -j) wait for each other.
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ ! -f "$out/build.ninja" ] || ! grep -q "CMAKE_C_COMPILER:[A-Z]*=$cc\$" "$out/CMakeCache.txt" 2>/dev/null; then
    rm -rf "$out/CMakeCache.txt" "$out/CMakeFiles"
    cmake -S . -B "$out" -G Ninja -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLYRA_FUZZ=ON >/dev/null
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$out" -j "$jobs" --target "${targets[@]}" >"$out/build.log" 2>&1 || {
    tail -40 "$out/build.log" >&2
    exit 1
}
flock -u 9
[ "$mode" = build ] && exit 0

if [ "$mode" = smoke ]; then
    secs=${FUZZ_SMOKE_SECONDS:-3}
    work=$(mktemp -d)
    trap 'rm -rf "$probe" "$work"' EXIT
else
    secs=${FUZZ_SECONDS:-60}
    work=$out/corpus
fi

# -max_len: the seeds are small; GGUF headers need a little more room.
declare -A max_len=([gguf]=20000 [frame]=8192 [config]=4096 [requests]=4096)
failed=()
for h in "${harnesses[@]}"; do
    mkdir -p "$work/$h" "$out/artifacts/$h"
    dict=()
    [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="tests/fuzz/$h.dict")
    echo "fuzz: $h for ${secs}s" >&2
    log="$out/fuzz-$h.log"
    if "$out/fuzz_$h" -max_total_time="$secs" -max_len="${max_len[$h]:-4096}" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$h/" "${dict[@]}" \
        "$work/$h" "tests/fuzz/corpus/$h" >"$log" 2>&1; then
        grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ +DONE" "$log" | tr '\n' ' ' >&2
        echo >&2
    else
        failed+=("$h")
        tail -60 "$log" >&2
        echo "fuzz: $h FAILED; input in $out/artifacts/$h/, log in $log" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all clean (${harnesses[*]})" >&2
