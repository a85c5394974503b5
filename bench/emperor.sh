#!/usr/bin/env bash
# Emperor benchmarks (reloads under load, drop-to-first-request, 100 vassals, idle CPU).
# Usage: bench/emperor.sh   (RELOAD_SECONDS, VASSALS, DROPS override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --bench
# The test backend is the app; bench/run.sh may have configured build-bench without tests.
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target liege liege-test-backend >/dev/null
ulimit -n "$(ulimit -Hn)"
python3 bench/emperor_bench.py build-bench/liege build-bench/tests/liege-test-backend \
    --reload-seconds "${RELOAD_SECONDS:-60}" --vassals "${VASSALS:-100}" --drops "${DROPS:-7}"
