#!/usr/bin/env bash
# liege against uWSGI's own Emperor, hosting the same WSGI app with the same app server (uWSGI)
# two ways, in interleaved rounds: throughput and latency, failed requests over rewrites of the
# vassal file under load, rewrite -> new release answering, drop a file -> it answers, failed
# requests while the serving vassal's file is broken, and the emperor's and router's memory.
#
# Usage: bench/app_servers.sh            (from anywhere; see bench/README.md)
#
# Environment (defaults in brackets):
#   ROUNDS [3]             interleaved rounds; each runs liege, then uWSGI, once
#   DURATION [10s]         wrk duration of each throughput run
#   CONNECTIONS [50]       wrk connections (wrk -t1 ... --latency)
#   WARMUP [2s]            unmeasured wrk run before each throughput run (0 to skip)
#   RELOADS [3]            rewrites of the vassal file under load per round
#   BROKEN_SECONDS [6]     how long the broken vassal file stays, under load
#   POLL [0.02]            seconds between polls for a new release
#   LIEGE_CONCURRENCY [1]  `concurrency` of the liege vassal; 0 leaves the key out (the
#                          default then: no limit)
#   LIEGE_THREADS [1]      liege router threads (uWSGI's HTTP router runs 1 process)
#   UWSGI_KEEPALIVE [1]    1: uWSGI's HTTP router keeps client connections alive
#                          (--http-keepalive); 0: it closes each after one response
#   SERVERS ["liege uwsgi"]
#   PIN [1]                pin with taskset (0: let the scheduler place everything)
#   WRK_CPUS [1]           CPUs for wrk and the polls (bench/poll_release.py)
#   SERVER_CPUS [0]        CPUs for each server: emperor, router and app processes
#   SKIP_BUILD [0]         1: use the existing build-bench/liege as is
#   QUIET_WAIT [60]        seconds to wait for other load to stop before measuring
#
# Every process it starts runs in its own session from a temporary directory and is stopped
# with its whole process group after each round and on exit, Ctrl-C included. Results go to
# stdout and bench/results/app-servers-<UTC timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-2s}
RELOADS=${RELOADS:-3}
BROKEN_SECONDS=${BROKEN_SECONDS:-6}
POLL=${POLL:-0.02}
LIEGE_CONCURRENCY=${LIEGE_CONCURRENCY:-1}
LIEGE_THREADS=${LIEGE_THREADS:-1}
UWSGI_KEEPALIVE=${UWSGI_KEEPALIVE:-1}
SERVERS=${SERVERS:-"liege uwsgi"}
PIN=${PIN:-1}
WRK_CPUS=${WRK_CPUS:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
RELEASE_TIMEOUT=30 # seconds a new release or a dropped vassal may take before it counts as never
export PYTHONDONTWRITEBYTECODE=1 # the helpers import each other: no __pycache__ in bench/

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---------------------------------------------------------------- build
cd "$ROOT"
command -v sudo >/dev/null || [[ $(id -u) == 0 ]] || die "scripts/deps.sh needs root or sudo"
scripts/deps.sh --bench
if [[ $SKIP_BUILD != 1 && " $SERVERS " == *" liege "* ]]; then
    log "building liege (Release) in build-bench/"
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=OFF -DLIEGE_BENCH=ON \
        >"$TMP/cmake.log" 2>&1 ||
        { cat "$TMP/cmake.log" >&2; die "cmake configure failed"; }
    cmake --build build-bench -j"$ncpu" --target liege >>"$TMP/cmake.log" 2>&1 ||
        { tail -50 "$TMP/cmake.log" >&2; die "build failed"; }
fi
LIEGE="$ROOT/build-bench/liege"

# ---------------------------------------------------------------- the app and the vassal files
# One WSGI app for both. It names its release (the RELEASE environment value, set by the vassal
# file) so that a poll can tell which generation answered, and sets Content-Length: without it
# uWSGI's HTTP/1.1 socket closes the connection after each response.
APP="$TMP/app.py"
cat >"$APP" <<'EOF'
import os

BODY = ("release %s\n" % os.environ.get("RELEASE", "none")).encode()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
EOF

# liege_vassal HOST RELEASE: a liege vassal of 2 uWSGI workers. No --master: each worker is one
# uWSGI process, which exits on SIGTERM, liege's stop signal (a uWSGI master would take SIGTERM
# as "reload" and need --die-on-term). Request logging is off on both sides.
liege_vassal() {
    cat <<EOF
# release $2
workers = 2
$([[ $LIEGE_CONCURRENCY == 0 ]] || echo "concurrency = $LIEGE_CONCURRENCY")
hosts = ["$1"]
env = { RELEASE = "$2" }
command = ["uwsgi", "--plugin", "python3", "--http11-socket", "127.0.0.1:\${PORT}", "--wsgi-file", "$APP", "--disable-logging"]

[health]
path = "/"
EOF
}

# uwsgi_vassal HOST RELEASE SOCKET_PORT: the same app as a uWSGI Emperor vassal, 2 processes
# under a master, announced to the HTTP router's subscription server under HOST.
uwsgi_vassal() {
    cat <<EOF
; release $2
[uwsgi]
plugin = python3
master = true
processes = 2
wsgi-file = $APP
disable-logging = true
env = RELEASE=$2
subscribe-to = 127.0.0.1:$SUB_PORT:$1
socket = 127.0.0.1:$3
EOF
}

# broken VASSAL_TEXT KEY: the file cut off two characters into its line that starts with KEY
# (liege: command, uWSGI: socket), as a deploy that writes the file in place leaves it for a
# moment. For TOML that is a syntax error. uWSGI's ini reader has no syntax errors as such (it
# skips lines it cannot read, and takes unknown keys and unterminated quotes), so for it the cut
# means a file whose app has no socket.
broken() {
    awk -v key="$2" 'index($0, key) == 1 { printf "%s", substr($0, 1, 2); exit } { print }' <<<"$1"
}

# write_file PATH TEXT: replace PATH at once (write beside, then rename), as deploy tools do.
write_file() {
    printf '%s\n' "$2" >"$TMP/.write.tmp"
    mv -f "$TMP/.write.tmp" "$1"
}

# ---------------------------------------------------------------- servers
# The per-round state of the server under test.
PORT="" EMPEROR="" VDIR="" SUFFIX="" SUB_PORT="" SOCK_PORT="" DROP_SOCK_PORT=""

# vassal_text SERVER HOST RELEASE [SOCKET_PORT]
vassal_text() {
    case $1 in
    liege) liege_vassal "$2" "$3" ;;
    uwsgi) uwsgi_vassal "$2" "$3" "$4" ;;
    esac
}

# start_server SERVER ROUND: start it on an empty vassals directory with the app vassal; sets
# PORT, EMPEROR (the pid of its session), VDIR and SUFFIX.
start_server() {
    local s=$1 r=$2 dir=$TMP/$1-round$2
    VDIR=$dir/vassals.d
    mkdir -p "$VDIR"
    case $s in
    liege)
        SUFFIX=toml
        write_file "$VDIR/app.$SUFFIX" "$(liege_vassal app.test "$s-$r-0")"
        (pin "$SERVER_CPUS" setsid "$LIEGE" run --vassals "$VDIR" --listen 127.0.0.1:0 \
            --admin "unix:$dir/liege.sock" --access-log off --threads "$LIEGE_THREADS") \
            >"$dir/server.log" 2>&1 </dev/null &
        EMPEROR=$!
        ;;
    uwsgi)
        SUFFIX=ini
        read -r PORT SUB_PORT SOCK_PORT DROP_SOCK_PORT <<<"$(free_ports 4)"
        write_file "$VDIR/app.$SUFFIX" "$(uwsgi_vassal app.test "$s-$r-0" "$SOCK_PORT")"
        local keepalive=()
        [[ $UWSGI_KEEPALIVE == 1 ]] && keepalive=(--http-keepalive)
        # The master (--master) is what spawns the HTTP router; SIGINT stops it and everything
        # under it (SIGTERM would be a reload), in about 4 s.
        (cd "$dir" && pin "$SERVER_CPUS" setsid uwsgi --master --plugin http --http "127.0.0.1:$PORT" \
            "${keepalive[@]}" --http-subscription-server "127.0.0.1:$SUB_PORT" --emperor "$VDIR") \
            >"$dir/server.log" 2>&1 </dev/null &
        EMPEROR=$!
        STOP_WITH[$EMPEROR]=INT
        STOP_WAIT[$EMPEROR]=15
        ;;
    esac
    PIDS+=("$EMPEROR")
    LEADS[$EMPEROR]=1
    if [[ $s == liege ]]; then
        for _ in $(seq 200); do
            PORT=$(sed -n 's/.*info listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/server.log" | head -1)
            [[ -n $PORT ]] && break
            sleep 0.05
        done
        [[ -n $PORT ]] || die "liege run did not report its port: $(tail -5 "$dir/server.log")"
    fi
    wait_for_body app.test "release $s-$r-0" >/dev/null ||
        die "$s never served its app: $(tail -20 "$dir/server.log")"
}

# server_pids SERVER: the emperor's and the router's processes, not the app's. liege: the
# emperor and its child `liege router`. uWSGI: the master and its children (the Emperor and the
# HTTP router); the vassals are the Emperor's children.
server_pids() {
    local c
    echo "$EMPEROR"
    for c in $(pgrep -P "$EMPEROR" || true); do
        case $1 in
        liege) [[ $(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null) == *" router "* ]] && echo "$c" ;;
        uwsgi) echo "$c" ;;
        esac
    done
}

# app_master_pids SERVER: uWSGI's vassal masters (app processes that supervise the workers, the
# job liege's emperor does itself); nothing for liege.
app_master_pids() {
    [[ $1 == uwsgi ]] || return 0
    local c
    for c in $(pgrep -P "$EMPEROR" || true); do pgrep -P "$c" || true; done
}

# ---------------------------------------------------------------- polls and load
# wait_for_body HOST BODY [TRACE [FILE TEXT]]: poll GET / with that Host every POLL s until it
# answers BODY (bench/poll_release.py, pinned with wrk); prints the seconds that took, or "nan"
# after RELEASE_TIMEOUT. TRACE gets one line per poll. With FILE and TEXT, writes TEXT as FILE's
# new content first (renamed into place by the poller) and times from that rename.
wait_for_body() {
    local rename=()
    if [[ $# -ge 5 ]]; then
        printf '%s\n' "$5" >"$TMP/.write.tmp"
        rename=(--rename "$TMP/.write.tmp" "$4")
    fi
    (pin "$WRK_CPUS" python3 "$BENCH/poll_release.py" "$PORT" "$1" "$2" --interval "$POLL" \
        --timeout "$RELEASE_TIMEOUT" --trace "${3:-/dev/null}" "${rename[@]}")
}

# wrk_start OUTFILE [DURATION]: wrk against the app in the background (default: until
# wrk_stop); sets WRK.
WRK=""
wrk_start() {
    (pin "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d"${2:-600s}" --latency -H "Host: app.test" \
        "http://127.0.0.1:$PORT/") >"$1" 2>&1 &
    WRK=$!
    PIDS+=("$WRK")
    STOP_WITH[$WRK]=INT # wrk prints its figures on SIGINT
}
wrk_stop() { # stop WRK now (its figures so far are printed) or, with "wait", once it ends
    [[ ${1:-} == wait ]] || kill -INT "$WRK" 2>/dev/null || true
    wait "$WRK" || true
    forget "$WRK"
}

# ---------------------------------------------------------------- measure
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$BENCH/results/app-servers-$STAMP"
mkdir -p "$OUT/raw"
SAMPLES="$OUT/samples.tsv"
printf 'round\tserver\trps\tp50_ms\tp99_ms\terrors\tcpu_us_per_req\trss_kib\tapp_master_rss_kib\treload_requests\treload_failed\treload_s\tworker_ready_ms\tbroken_requests\tbroken_failed\trestore_s\tdrop_s\tbusy_before_pct\n' >"$SAMPLES"

# The liege vassal must be valid for this build (concurrency is a newer key).
if [[ " $SERVERS " == *" liege "* ]]; then
    liege_vassal app.test check >"$TMP/check.toml"
    "$LIEGE" check "$TMP/check.toml" >"$TMP/check.log" 2>&1 ||
        die "this liege rejects the vassal (LIEGE_CONCURRENCY=0 leaves concurrency out): $(cat "$TMP/check.log")"
fi

BUSY_BEFORE=$(wait_quiet "$QUIET_WAIT")
read -r -a SERVER_NAMES <<<"$SERVERS"

# session SERVER ROUND: start the server, measure everything once, stop it; one samples.tsv row.
session() {
    local s=$1 r=$2 raw="$OUT/raw/round$2-$1" busy i lat reload_s=() release
    busy=$(cpu_busy 1) # nothing of ours runs now: this is everyone else
    start_server "$s" "$r"
    local file="$VDIR/app.$SUFFIX"

    # Throughput and latency, and the CPU and memory of the emperor and the router.
    [[ $WARMUP == 0 ]] || { wrk_start "$raw-warmup.txt" "$WARMUP" && wrk_stop wait; }
    local pids cpu_before cpu_after rps p50 p99 errs reqs cpu rss app_rss
    mapfile -t pids < <(server_pids "$s")
    cpu_before=$(cpu_ticks "${pids[@]}")
    wrk_start "$raw-wrk.txt" "$DURATION"
    wrk_stop wait
    cpu_after=$(cpu_ticks "${pids[@]}")
    read -r rps p50 p99 errs reqs <<<"$(parse_wrk "$raw-wrk.txt")"
    cpu=$(cpu_per_req "$cpu_before" "$cpu_after" "$reqs")
    rss=$(rss_kb "${pids[@]}")
    mapfile -t pids < <(app_master_pids "$s")
    if [[ ${#pids[@]} -gt 0 ]]; then app_rss=$(rss_kb "${pids[@]}"); else app_rss=nan; fi

    # Rewrites under load: each changes the release; time until the new one answers.
    local rl_reqs rl_failed
    wrk_start "$raw-reloads.txt"
    sleep 1
    for ((i = 1; i <= RELOADS; i++)); do
        release="$s-$r-$i"
        lat=$(wait_for_body app.test "release $release" "$raw-polls-rewrite$i.tsv" "$file" \
            "$(vassal_text "$s" app.test "$release" "$SOCK_PORT")") || true
        reload_s+=("$lat")
        sleep 1.1 # uWSGI's Emperor compares whole-second mtimes
    done
    wrk_stop
    read -r _ _ _ rl_failed rl_reqs <<<"$(parse_wrk "$raw-reloads.txt")"
    # liege logs each worker's time from spawn to ready; a rolling reload starts with worker 1,
    # and its readiness gates the new release's first answer.
    local ready_ms=nan
    if [[ $s == liege ]]; then
        ready_ms=$(awk '/vassal app: worker 1 ready in [0-9]+ ms/ && n++ { out = out (out ? "," : "") $(NF - 1) }
            END { print out ? out : "nan" }' "$TMP/$s-round$r/server.log")
    fi

    # A broken file under load, for BROKEN_SECONDS; then a valid one again.
    local br_reqs br_failed restore
    wrk_start "$raw-broken.txt"
    sleep 0.5
    write_file "$file" "$(broken "$(vassal_text "$s" app.test "$s-$r-broken" "$SOCK_PORT")" \
        "$([[ $s == liege ]] && echo command || echo socket)")"
    sleep "$BROKEN_SECONDS"
    wrk_stop
    read -r _ _ _ br_failed br_reqs <<<"$(parse_wrk "$raw-broken.txt")"
    release="$s-$r-restored"
    restore=$(wait_for_body app.test "release $release" "$raw-polls-restore.tsv" "$file" \
        "$(vassal_text "$s" app.test "$release" "$SOCK_PORT")") || true

    # Drop a second vassal; time until it answers.
    local drop
    drop=$(wait_for_body drop.test "release $s-$r-drop" "$raw-polls-drop.tsv" "$VDIR/drop.$SUFFIX" \
        "$(vassal_text "$s" drop.test "$s-$r-drop" "$DROP_SOCK_PORT")") || true

    cp "$TMP/$s-round$r/server.log" "$raw-server.log"
    stop_pid "$EMPEROR"
    local IFS=,
    printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$rps" \
        "$p50" "$p99" "$errs" "$cpu" "$rss" "$app_rss" "$rl_reqs" "$rl_failed" "${reload_s[*]}" \
        "$ready_ms" "$br_reqs" "$br_failed" "$restore" "$drop" "$busy" >>"$SAMPLES"
    log "round $r/$ROUNDS $(printf '%-5s' "$s") $rps req/s  p99 $p99 ms  errors $errs  cpu $cpu us/req  rss $((rss / 1024)) MiB | rewrites: ${rl_failed} failed (${rl_reqs} responses), new release after ${reload_s[*]} s | broken file: ${br_failed} failed (${br_reqs} responses), restored after $restore s | drop: $drop s  (busy before: $busy%)"
}

log "measuring: $ROUNDS rounds of ${SERVER_NAMES[*]} (wrk -t1 -c$CONNECTIONS -d$DURATION on CPUs $WRK_CPUS, servers on CPUs $SERVER_CPUS)"
for ((r = 1; r <= ROUNDS; r++)); do
    for s in "${SERVER_NAMES[@]}"; do session "$s" "$r"; done
done

# ---------------------------------------------------------------- report
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo '-dirty')"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) x $ncpu"
    echo "uwsgi=$(uwsgi --version)"
    echo "wrk=wrk -t1 -c$CONNECTIONS -d$DURATION --latency"
    echo "rounds=$ROUNDS"
    echo "reloads=$RELOADS"
    echo "broken_seconds=$BROKEN_SECONDS"
    echo "liege_concurrency=$LIEGE_CONCURRENCY"
    echo "liege_threads=$LIEGE_THREADS"
    echo "uwsgi_keepalive=$UWSGI_KEEPALIVE"
    if [[ $PIN == 1 ]]; then
        echo "pinning=wrk and the polls on CPUs $WRK_CPUS; each server (emperor, router, app) on CPUs $SERVER_CPUS"
    else
        echo "pinning=none"
    fi
    echo "busy_before=$BUSY_BEFORE"
    echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.txt"
python3 "$BENCH/app_servers_report.py" "$OUT" | tee "$OUT/report.md"
cp "$OUT/report.md" "$BENCH/results/app-servers-latest.md"
log "results: $OUT/report.md"
