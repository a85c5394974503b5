#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang under ASan+UBSan (in build-fuzz/) and
# runs each for SECONDS seconds (default 600) from its seed corpus. New inputs that add
# coverage go to build-fuzz/corpus/TARGET (the seeds in tests/fuzz/corpus/ stay as they are);
# a crash, leak or timeout leaves its input in build-fuzz/artifacts/ and the script exits
# non-zero.
# Usage: bench/fuzz.sh [SECONDS] [TARGET...]   (targets: request_head response chunked
#        vassal_toml control_codec; all by default). .ci/run calls it with a short time.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(request_head response chunked vassal_toml control_codec)
build="${FUZZ_BUILD_DIR:-build-fuzz}"
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLIEGE_FUZZ=ON \
    -DLIEGE_TESTS=OFF >/dev/null
cmake --build "$build" -j2 --target "${targets[@]/#/fuzz_}" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${targets[@]}"; do
    mkdir -p "$build/corpus/$t" "$build/artifacts"
    echo "== fuzz_$t for ${seconds}s"
    log="$build/fuzz_$t.log"
    if ! "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=8192 \
        -artifact_prefix="$build/artifacts/$t-" "$build/corpus/$t" "tests/fuzz/corpus/$t" \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz_$t failed; the input is in $build/artifacts/" >&2
        exit 1
    fi
    grep -E "^(#[0-9]+|Done)" "$log" | tail -n 1
done
