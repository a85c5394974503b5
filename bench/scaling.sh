#!/usr/bin/env bash
# Pools that scale with demand (workers = { min, max, idle }): the overhead liege adds to an
# on-demand vassal's first request (cold start), what idle on-demand vassals cost (memory,
# processes, time to the first request), and a pool's size under a load that ramps up and down.
# The measuring is bench/scaling.py's; this script builds, pins, waits for a quiet box and saves.
#
# Usage: bench/scaling.sh            (from anywhere; see bench/README.md)
#
# Environment (defaults in brackets):
#   MEASURE ["cold idle ramp"]   which measurements to run
#   COLD_APPS ["backend uwsgi gunicorn python"]  apps for the cold start: the test backend,
#                          uWSGI and gunicorn with a one-line WSGI app, python3 -m http.server
#   COLD_ROUNDS [10]       interleaved rounds (each app alone, then through liege)
#   COLD_IDLE [1s]         the cold-start vassals' `idle`: how soon they are back at 0 workers
#   IDLE_VASSALS ["10 100 500"]  counts of idle on-demand vassals
#   SETTLE [2]             seconds after /status lists them all before memory is sampled
#   RAMP_STEPS ["1 2 4 8 16 32 50 32 16 8 4 2 1 1 1 1 1 1"]  concurrent clients, step by step
#   STEP_SECONDS [2.5]     length of each step
#   RAMP_MAX [8]           the ramp vassal's workers.max (min is 1)
#   RAMP_IDLE [2s]         the ramp vassal's workers.idle
#   SLOW_MS [20]           each ramp request is GET /slow?ms=SLOW_MS on the test backend
#   PIN [1]                pin with taskset (0: let the scheduler place everything)
#   CLIENT_CPUS [1]        CPUs for bench/scaling.py: the clients and the polls
#   SERVER_CPUS [0]        CPUs for liege (emperor, router, workers) and the apps launched alone
#   BUILD_DIR [build-bench]  where liege and liege-test-backend are built (or found)
#   SKIP_BUILD [0]         1: use BUILD_DIR's binaries as they are
#   QUIET_WAIT [60]        seconds to wait for other load to stop before measuring
#
# Everything runs on 127.0.0.1 from temporary directories; every process started is stopped
# before the script exits, Ctrl-C included. Results go to stdout and
# bench/results/scaling-<UTC timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

MEASURE=${MEASURE:-"cold idle ramp"}
COLD_APPS=${COLD_APPS:-"backend uwsgi gunicorn python"}
COLD_ROUNDS=${COLD_ROUNDS:-10}
COLD_IDLE=${COLD_IDLE:-1s}
IDLE_VASSALS=${IDLE_VASSALS:-"10 100 500"}
SETTLE=${SETTLE:-2}
RAMP_STEPS=${RAMP_STEPS:-"1 2 4 8 16 32 50 32 16 8 4 2 1 1 1 1 1 1"}
STEP_SECONDS=${STEP_SECONDS:-2.5}
RAMP_MAX=${RAMP_MAX:-8}
RAMP_IDLE=${RAMP_IDLE:-2s}
SLOW_MS=${SLOW_MS:-20}
PIN=${PIN:-1}
CLIENT_CPUS=${CLIENT_CPUS:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
BUILD_DIR=${BUILD_DIR:-build-bench}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
export PYTHONDONTWRITEBYTECODE=1 # the helpers import each other: no __pycache__ in bench/

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---------------------------------------------------------------- build
cd "$ROOT"
command -v sudo >/dev/null || [[ $(id -u) == 0 ]] || die "scripts/deps.sh needs root or sudo"
scripts/deps.sh --bench
if [[ $SKIP_BUILD != 1 ]]; then
    # The test backend is an app here; bench/run.sh may have configured build-bench without tests.
    log "building liege and liege-test-backend (Release) in $BUILD_DIR/"
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=ON >"$TMP/cmake.log" 2>&1 ||
        { cat "$TMP/cmake.log" >&2; die "cmake configure failed"; }
    cmake --build "$BUILD_DIR" -j"$ncpu" --target liege liege-test-backend >>"$TMP/cmake.log" 2>&1 ||
        { tail -50 "$TMP/cmake.log" >&2; die "build failed"; }
fi
LIEGE="$ROOT/$BUILD_DIR/liege"
BACKEND="$ROOT/$BUILD_DIR/tests/liege-test-backend"
[[ -x $LIEGE && -x $BACKEND ]] || die "no $LIEGE or $BACKEND (SKIP_BUILD=1 needs a build there)"
ulimit -n "$(ulimit -Hn)" # 500 vassals, 50 clients

# ---------------------------------------------------------------- measure
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$BENCH/results/scaling-$STAMP"
mkdir -p "$OUT"

server_cpus=""
[[ $PIN == 1 ]] && server_cpus=$SERVER_CPUS
csv() { tr -s ' ' ',' <<<"$*" | sed 's/^,//; s/,$//'; }
args=(--measure "$(csv "$MEASURE")" --server-cpus "$server_cpus"
    --cold-apps "$(csv "$COLD_APPS")" --cold-rounds "$COLD_ROUNDS" --cold-idle "$COLD_IDLE"
    --idle-counts "$(csv "$IDLE_VASSALS")" --settle "$SETTLE"
    --ramp-steps "$(csv "$RAMP_STEPS")" --step-seconds "$STEP_SECONDS" --ramp-max "$RAMP_MAX"
    --ramp-idle "$RAMP_IDLE" --slow-ms "$SLOW_MS")

BUSY_BEFORE=$(wait_quiet "$QUIET_WAIT")
UPTIME_BEFORE=$(uptime)
log "measuring: ${MEASURE} (scaling.py on CPUs $CLIENT_CPUS, liege and the apps on CPUs ${server_cpus:-all})"
(pin "$CLIENT_CPUS" python3 "$BENCH/scaling.py" "$LIEGE" "$BACKEND" "$OUT" "${args[@]}") \
    >"$OUT/figures.md"

# ---------------------------------------------------------------- report
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo '-dirty')"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) x $ncpu"
    echo "uwsgi=$(uwsgi --version)"
    echo "gunicorn=$(gunicorn --version 2>&1 | head -1)"
    echo "python=$(python3 --version)"
    echo "scaling.py=${args[*]}"
    if [[ $PIN == 1 ]]; then
        echo "pinning=scaling.py on CPUs $CLIENT_CPUS; liege and the apps on CPUs $SERVER_CPUS"
    else
        echo "pinning=none"
    fi
    echo "busy_before=$BUSY_BEFORE"
    echo "uptime_before=$UPTIME_BEFORE"
    echo "uptime_after=$(uptime)"
} >"$OUT/meta.txt"
{
    echo "# Scaling: cold starts, idle vassals, a load ramp"
    echo
    # shellcheck disable=SC2016 # the backquotes are markdown
    sed 's/^\([^=]*\)=\(.*\)$/- \1: `\2`/' "$OUT/meta.txt"
    echo
    cat "$OUT/figures.md"
} | tee "$OUT/report.md"
cp "$OUT/report.md" "$BENCH/results/scaling-latest.md"
log "results: $OUT/report.md"
