#!/usr/bin/env bash
# Chaos: a soak under load with random worker SIGKILL and SIGSTOP, router SIGKILL, reload storms
# and vassal-file churn, reporting every failed request by cause and by the chaos action it falls
# under; then slowhttptest (slow headers, slow body, slow read) against liege and nginx side by
# side, with a probe request every second. The measuring is bench/chaos.py's; this script
# installs, builds and saves.
#
# Usage: bench/chaos.sh            (from anywhere; see bench/README.md)
#        DURATION=60s bench/chaos.sh   a quick run
#
# Environment (defaults in brackets):
#   MEASURE ["soak slow"]    which parts to run
#   DURATION [5m]            soak length (Ns, Nm or plain seconds)
#   SEED [random]            the chaos loop's random seed (printed in the report)
#   INTERVAL ["1 4"]         seconds between chaos actions, drawn uniformly in this range
#   CLIENTS ["4 2 2"]        recording client threads for the be, one and gun vassals
#   WRK_CONNECTIONS [16]     wrk connections loading `be` alongside (0: no wrk)
#   ATTACKS ["H B X"]        slowhttptest modes: slow headers, slow body, slow read
#   SLOW_CONNECTIONS [500]   slowhttptest -c
#   SLOW_RATE [200]          slowhttptest -r (connections per second)
#   SLOW_SECONDS [30]        slowhttptest -l, each attack on each target
#   ROUTER_OPTS []           liege --router-opt KEY=VALUE ... for the slowhttptest part
#   BUILD_DIR [build]        where liege and liege-test-backend are built (or found)
#   SKIP_BUILD [0]           1: use BUILD_DIR's binaries as they are
#
# Everything runs on 127.0.0.1 from temporary directories; every process started (liege and
# its workers, wrk, gunicorn, nginx with a generated config, never /etc/nginx, slowhttptest) is
# stopped before the script exits, Ctrl-C included. Results go to stdout and
# bench/results/chaos-<UTC timestamp>/ (the soak's failures one per line in soak-failures.tsv,
# the chaos actions in soak-chaos.log, liege's logs, wrk's and slowhttptest's output).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

MEASURE=${MEASURE:-"soak slow"}
DURATION=${DURATION:-5m}
SEED=${SEED:-}
INTERVAL=${INTERVAL:-"1 4"}
CLIENTS=${CLIENTS:-"4 2 2"}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
ATTACKS=${ATTACKS:-"H B X"}
SLOW_CONNECTIONS=${SLOW_CONNECTIONS:-500}
SLOW_RATE=${SLOW_RATE:-200}
SLOW_SECONDS=${SLOW_SECONDS:-30}
ROUTER_OPTS=${ROUTER_OPTS:-}
BUILD_DIR=${BUILD_DIR:-build}
SKIP_BUILD=${SKIP_BUILD:-0}
PIN=0 # lib.sh: nothing here is pinned; this measures failures, not speed
export PYTHONDONTWRITEBYTECODE=1

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

case $DURATION in
*m) seconds=$((${DURATION%m} * 60)) ;;
*s) seconds=${DURATION%s} ;;
*) seconds=$DURATION ;;
esac
[[ $seconds =~ ^[0-9]+$ && $seconds -ge 10 ]] || die "DURATION=$DURATION: give at least 10s"

# ---------------------------------------------------------------- build
cd "$ROOT"
command -v sudo >/dev/null || [[ $(id -u) == 0 ]] || die "scripts/deps.sh needs root or sudo"
scripts/deps.sh --bench
if [[ $SKIP_BUILD != 1 ]]; then
    log "building liege and liege-test-backend (Release) in $BUILD_DIR/"
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=ON >"$TMP/cmake.log" 2>&1 ||
        { cat "$TMP/cmake.log" >&2; die "cmake configure failed"; }
    cmake --build "$BUILD_DIR" -j"$ncpu" --target liege liege-test-backend >>"$TMP/cmake.log" 2>&1 ||
        { tail -50 "$TMP/cmake.log" >&2; die "build failed"; }
fi
LIEGE="$ROOT/$BUILD_DIR/liege"
BACKEND="$ROOT/$BUILD_DIR/tests/liege-test-backend"
[[ -x $LIEGE && -x $BACKEND ]] || die "no $LIEGE or $BACKEND (SKIP_BUILD=1 needs a build there)"
ulimit -n "$(ulimit -Hn)" # 500 slow connections, each two fds in a proxy

# ---------------------------------------------------------------- measure
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$BENCH/results/chaos-$STAMP"
mkdir -p "$OUT"

csv() { tr -s ' ' ',' <<<"$*" | sed 's/^,//; s/,$//'; }
read -r imin imax <<<"$INTERVAL"
read -r cbe cone cgun <<<"$CLIENTS"
args=(--measure "$(csv "$MEASURE")" --duration "$seconds" --min-interval "$imin"
    --max-interval "$imax" --clients-be "$cbe" --clients-one "$cone" --clients-gun "$cgun"
    --wrk-connections "$WRK_CONNECTIONS" --attacks "$(csv "$ATTACKS")"
    --slow-connections "$SLOW_CONNECTIONS" --slow-rate "$SLOW_RATE" --slow-seconds "$SLOW_SECONDS")
[[ -n $SEED ]] && args+=(--seed "$SEED")
for o in $ROUTER_OPTS; do args+=(--router-opt "$o"); done

UPTIME_BEFORE=$(uptime)
log "measuring: $MEASURE (soak $DURATION; slowhttptest ${ATTACKS} x ${SLOW_SECONDS}s on each target)"
# In the background so that lib.sh's cleanup stops it (SIGTERM) on Ctrl-C or any exit; chaos.py
# then stops everything it started (each in its own session) before it exits.
python3 "$BENCH/chaos.py" "$LIEGE" "$BACKEND" "$OUT" "${args[@]}" >"$OUT/figures.md" &
cpid=$!
PIDS+=("$cpid")
STOP_WAIT[$cpid]=60
wait "$cpid" || die "chaos.py failed (exit $?); its output so far is in $OUT/figures.md"
forget "$cpid"

# ---------------------------------------------------------------- report
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo '-dirty')"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) x $ncpu"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "gunicorn=$(gunicorn --version 2>&1 | head -1)"
    echo "slowhttptest=$(dpkg-query -W -f='${Version}' slowhttptest 2>/dev/null || echo '?')"
    echo "chaos.py=${args[*]}"
    echo "uptime_before=$UPTIME_BEFORE"
    echo "uptime_after=$(uptime)"
} >"$OUT/meta.txt"
{
    echo "# Chaos: a soak with kills, stops, reloads and churn; slow clients"
    echo
    # shellcheck disable=SC2016 # the backquotes are markdown
    sed 's/^\([^=]*\)=\(.*\)$/- \1: `\2`/' "$OUT/meta.txt"
    echo
    cat "$OUT/figures.md"
} | tee "$OUT/report.md"
cp "$OUT/report.md" "$BENCH/results/chaos-latest.md"
log "results: $OUT/report.md"
