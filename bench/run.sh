#!/usr/bin/env bash
# Side-by-side benchmark of `liege router` against nginx and HAProxy on loopback.
#
# Usage: bench/run.sh            (from anywhere; see bench/README.md)
#
# Environment (defaults in brackets):
#   DURATION [10s]       wrk duration of each measured run
#   CONNECTIONS [50]     wrk connections
#   WRK_THREADS [1]      wrk threads
#   ROUNDS [5]           interleaved rounds; each runs every configuration once
#   THREADS_LIST ["1 2"] proxy threads/workers to measure
#   PROXIES ["liege nginx haproxy"]
#   FLOORS ["epoll uring"] floor relays (bench/floor_relay.cpp) measured beside the proxies
#   WARMUP [2s]          unmeasured wrk run per configuration before round 1 (0 to skip)
#   IDLE_CONNS [10000]   idle keep-alive connections for the memory test (0 to skip)
#   PIN [1]              pin with taskset (0: let the scheduler place everything)
#   WRK_CPUS [1]         CPUs for wrk
#   PROXY_CPUS [0]       CPUs for 1-thread proxies (more threads: unpinned)
#   BACKEND_CPUS [all]   CPUs for the backend nginx ("all": unpinned)
#   SKIP_BUILD [0]       1: use the existing build-bench/liege as is
#   BASELINE []          another liege binary, measured as "liege-base" in the same interleaved
#                        rounds (a before/after pair for a change to the data path)
#   QUIET_WAIT [60]      seconds to wait for other load to stop before measuring
#   FD_LIMIT [20000]     fd limit (ulimit -n) of every proxy and of the backends
#
# Every process it starts runs from a temporary directory (configs, pid files,
# logs) and is stopped on exit, Ctrl-C included. Nothing under /etc or any
# system service is touched. Results go to stdout and bench/results/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-5}
THREADS_LIST=${THREADS_LIST:-"1 2"}
PROXIES=${PROXIES:-"liege nginx haproxy"}
FLOORS=${FLOORS-"epoll uring"}
WARMUP=${WARMUP:-2s}
IDLE_CONNS=${IDLE_CONNS:-10000}
PIN=${PIN:-1}
WRK_CPUS=${WRK_CPUS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-all}
SKIP_BUILD=${SKIP_BUILD:-0}
BASELINE=${BASELINE:-}
QUIET_WAIT=${QUIET_WAIT:-60}
FD_LIMIT=${FD_LIMIT:-20000} # fd limit of every proxy; the hard limit on the reference box

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---------------------------------------------------------------- helpers
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $FD_LIMIT ]]; then
    log "WARNING: fd hard limit $hard is below FD_LIMIT=$FD_LIMIT; using $hard"
    FD_LIMIT=$hard
fi
# CPUs for a proxy with T threads: a 1-thread proxy gets PROXY_CPUS, apart
# from wrk; with more threads than that it cannot be pinned apart on 2 cores.
proxy_cpus() { if [[ $1 == 1 ]]; then echo "$PROXY_CPUS"; else echo all; fi; }

# ---------------------------------------------------------------- build
cd "$ROOT"
command -v sudo >/dev/null || [[ $(id -u) == 0 ]] || die "scripts/deps.sh needs root or sudo"
scripts/deps.sh --bench
if [[ $SKIP_BUILD != 1 && (" $PROXIES " == *" liege "* || -n $FLOORS) ]]; then
    log "building liege and the floor relay (Release) in build-bench/"
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=OFF -DLIEGE_BENCH=ON \
        >"$TMP/cmake.log" 2>&1 ||
        { cat "$TMP/cmake.log" >&2; die "cmake configure failed"; }
    cmake --build build-bench -j"$ncpu" >>"$TMP/cmake.log" 2>&1 ||
        { tail -50 "$TMP/cmake.log" >&2; die "build failed"; }
fi
LIEGE="$ROOT/build-bench/liege"
RELAY="$ROOT/build-bench/liege-floor-relay"

# ---------------------------------------------------------------- configs
read -r -a THREADS <<<"$THREADS_LIST"
read -r -a PROXY_NAMES <<<"$PROXIES"
if [[ -n $BASELINE ]]; then
    [[ -x $BASELINE ]] || die "BASELINE=$BASELINE is not an executable"
    PROXY_NAMES+=(liege-base)
fi
read -r -a FLOOR_MODES <<<"$FLOORS"
# Every proxy configuration (PROXY:THREADS), in base order; the floor relays run with as many
# threads as the proxies, pinned like them.
KEYS=()
for t in "${THREADS[@]}"; do
    for p in "${PROXY_NAMES[@]}"; do KEYS+=("$p:$t"); done
    for f in "${FLOOR_MODES[@]}"; do KEYS+=("floor-$f:$t"); done
done
read -r -a PORTS <<<"$(free_ports $((2 + ${#KEYS[@]})))"
B1=${PORTS[0]}
B2=${PORTS[1]}
declare -A PORT MAIN_PID # key: proxy:threads
i=2
for key in "${KEYS[@]}"; do
    PORT[$key]=${PORTS[i]}
    i=$((i + 1))
done

# Temp paths inside $TMP so nginx never writes to /var/lib/nginx.
nginx_temp_paths() {
    local d=$TMP/$1
    mkdir -p "$d"
    cat <<EOF
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# The two backends: one nginx worker listening on both ports, so "direct"
# measures the whole backend capacity with one wrk. keepalive_requests is
# raised here and in the nginx proxy so that no proxy pays reconnects the
# others do not (nginx closes a keep-alive connection after 1000 by default).
cat >"$TMP/backend.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $FD_LIMIT;
pid $TMP/backend.pid;
error_log $TMP/backend.error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
$(nginx_temp_paths backend-temp)
    server {
        listen 127.0.0.1:$B1;
        listen 127.0.0.1:$B2;
        location / { return 200 "ok\n"; }
    }
}
EOF

nginx_proxy_conf() { # THREADS PORT
    cat <<EOF
worker_processes $1;
worker_rlimit_nofile $FD_LIMIT;
pid $TMP/nginx-$1.pid;
error_log $TMP/nginx-$1.error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_requests 1000000;
$(nginx_temp_paths "nginx-$1-temp")
    upstream backends {
        least_conn;
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2 reuseport;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# HAProxy derives its connection limit from the fd limit (2 fds per
# connection): with $FD_LIMIT fds it holds at most ~9,993 client connections.
haproxy_conf() { # THREADS PORT
    cat <<EOF
global
    nbthread $1
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s
    http-reuse always
frontend fe
    bind 127.0.0.1:$2
    default_backend backends
backend backends
    balance leastconn
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
EOF
}

# ---------------------------------------------------------------- start
# start NAME CPUS CMD...: start CMD in the background with the fd limit,
# pinned to CPUS; records its pid in PIDS and MAIN_PID[NAME].
start() {
    local name=$1 cpus=$2
    shift 2
    (
        ulimit -n "$FD_LIMIT"
        pin "$cpus" "$@"
    ) >"$TMP/$name.out" 2>&1 </dev/null &
    PIDS+=($!)
    MAIN_PID[$name]=$!
}

# The pids whose RSS counts for NAME: nginx's workers (children of the
# master), the single process otherwise; "direct" is the backend nginx.
rss_pids() {
    local name=$1
    [[ $name == direct ]] && name=backend
    local pid=${MAIN_PID[$name]}
    if [[ $name == nginx:* || $name == backend ]]; then
        pgrep -P "$pid" || true
    else
        echo "$pid"
    fi
}

rss_of() { # NAME: summed RSS in KiB
    local pids
    mapfile -t pids < <(rss_pids "$1")
    rss_kb "${pids[@]}"
}

log "backends on 127.0.0.1:$B1 and 127.0.0.1:$B2 (one nginx worker, CPUs $BACKEND_CPUS)"
start backend "$BACKEND_CPUS" nginx -p "$TMP" -e "$TMP/backend.error.log" -c "$TMP/backend.conf" -g 'daemon off;'
wait_http "$B1" "${MAIN_PID[backend]}" backend || die "backend failed: $(cat "$TMP/backend.out" "$TMP/backend.error.log")"
wait_http "$B2" "${MAIN_PID[backend]}" backend || die "backend failed"

# launch PROXY:THREADS: start that proxy and wait until it answers 200.
launch() {
    local key=$1 p=${1%:*} t=${1#*:} cpus port=${PORT[$1]}
    cpus=$(proxy_cpus "$t")
    case $p in
    liege | liege-base)
        local bin=$LIEGE
        [[ $p == liege-base ]] && bin=$BASELINE
        [[ -x $bin ]] || die "$bin not built"
        start "$key" "$cpus" "$bin" router --listen "127.0.0.1:$port" --backend "127.0.0.1:$B1" \
            --backend "127.0.0.1:$B2" --threads "$t" --access-log off
        ;;
    nginx)
        nginx_proxy_conf "$t" "$port" >"$TMP/nginx-$t.conf"
        start "$key" "$cpus" nginx -p "$TMP" -e "$TMP/nginx-$t.error.log" -c "$TMP/nginx-$t.conf" \
            -g 'daemon off;'
        ;;
    haproxy)
        haproxy_conf "$t" "$port" >"$TMP/haproxy-$t.cfg"
        start "$key" "$cpus" haproxy -db -f "$TMP/haproxy-$t.cfg"
        ;;
    floor-*)
        [[ -x $RELAY ]] || die "$RELAY not built"
        start "$key" "$cpus" "$RELAY" --listen "127.0.0.1:$port" --backend "127.0.0.1:$B1" \
            --mode "${p#floor-}" --threads "$t"
        ;;
    *) die "unknown proxy $p" ;;
    esac
    if ! wait_http "$port" "${MAIN_PID[$key]}" "$key"; then
        tail -20 "$TMP/$key.out" >&2 || true
        return 1
    fi
    log "$key on 127.0.0.1:$port (pids: $(rss_pids "$key" | tr '\n' ' ')CPUs $cpus)"
}

# ensure_running CONFIG: if the proxy exited (crashed, or killed from outside
# the script), say so, count it, and start it again; fails if it will not serve.
declare -A RESTARTS
ensure_running() {
    local c=$1 pid status=0
    [[ $c == direct ]] && c=backend
    pid=${MAIN_PID[$c]}
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" 2>/dev/null || status=$?
    forget "$pid"
    log "WARNING: $c (pid $pid) exited with status $status ($( ((status > 128)) && kill -l $((status - 128)) || echo exit)); last log lines:"
    tail -5 "$TMP/$c.out" >&2 || true
    RESTARTS[$c]=$((${RESTARTS[$c]:-0} + 1))
    [[ $c == backend ]] && die "the backend died"
    launch "$c"
}

UNFINISHED=() # proxies that did not start or serve
for key in "${KEYS[@]}"; do
    if ! launch "$key"; then
        [[ $key == liege* || $key == floor-* ]] || die "$key failed to start"
        log "WARNING: $key does not serve; it is left out of this run"
        UNFINISHED+=("$key")
    fi
done

# The configurations, in base order; round r starts at position r.
CONFIGS=(direct)
for key in "${KEYS[@]}"; do
    [[ " ${UNFINISHED[*]} " == *" $key "* ]] || CONFIGS+=("$key")
done
config_port() { if [[ $1 == direct ]]; then echo "$B1"; else echo "${PORT[$1]}"; fi; }

# ---------------------------------------------------------------- measure
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT/raw"
SAMPLES="$OUT/samples.tsv"
printf 'round\tconfig\trps\tp50_ms\tp99_ms\trss_kib\terrors\tbusy_before_pct\tcpu_us_per_req\n' >"$SAMPLES"

run_wrk() { # CONFIG DURATION OUTFILE
    local port
    port=$(config_port "$1")
    (pin "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency "http://127.0.0.1:$port/") >"$3" 2>&1 ||
        log "wrk failed for $1: $(tail -3 "$3")"
}

if [[ $WARMUP != 0 ]]; then
    log "warm-up: $WARMUP per configuration"
    for c in "${CONFIGS[@]}"; do run_wrk "$c" "$WARMUP" "$OUT/raw/warmup-${c/:/-}.txt"; done
fi

BUSY_BEFORE=$(wait_quiet "$QUIET_WAIT")

n=${#CONFIGS[@]}
log "measuring: $ROUNDS rounds x $n configurations x $DURATION (wrk -t$WRK_THREADS -c$CONNECTIONS, CPUs $WRK_CPUS)"
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        c=${CONFIGS[(r + k) % n]}
        f="$OUT/raw/round$((r + 1))-${c/:/-}.txt"
        busy=$(cpu_busy 1) # our processes are idle now: this is everyone else
        cpu_before=nan cpu_after=nan
        if ensure_running "$c"; then
            # CPU of the same pids as the RSS, read right before and right after wrk.
            mapfile -t cpids < <(rss_pids "$c")
            cpu_before=$(cpu_ticks "${cpids[@]}")
            run_wrk "$c" "$DURATION" "$f"
            cpu_after=$(cpu_ticks "${cpids[@]}")
        else
            echo "not running" >"$f"
        fi
        read -r rps p50 p99 errs reqs <<<"$(parse_wrk "$f")"
        cpu=$(cpu_per_req "$cpu_before" "$cpu_after" "$reqs")
        rss=$(rss_of "$c")
        # A proxy that died during the run invalidates it (wrk counts errors too).
        if [[ $c != direct ]] && ! kill -0 "${MAIN_PID[$c]}" 2>/dev/null; then errs=-1; fi
        printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $((r + 1)) "$c" "$rps" "$p50" "$p99" \
            "$rss" "$errs" "$busy" "$cpu" >>"$SAMPLES"
        log "round $((r + 1))/$ROUNDS $(printf '%-10s' "$c") $rps req/s  p50 $p50 ms  p99 $p99 ms  cpu $cpu us/req  rss $((rss / 1024)) MiB  errors $errs  (busy before: $busy%)"
    done
done

# ---------------------------------------------------------------- idle connections
IDLE="$OUT/idle.tsv"
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; } # field NAME LINE: NAME=value
printf 'config\tconns\theld\tpending\tfailed\tbad_status\tclosed_by_peer\trss_before_kib\trss_held_kib\n' >"$IDLE"
if [[ $IDLE_CONNS -gt 0 ]]; then
    for c in "${CONFIGS[@]}"; do
        [[ $c == direct || $c == floor-* ]] && continue
        ensure_running "$c" || continue
        before=$(rss_of "$c")
        ilog="$OUT/raw/idle-${c/:/-}.txt"
        python3 "$BENCH/idle_conns.py" --port "${PORT[$c]}" --count "$IDLE_CONNS" --open-timeout 60 \
            --stall-timeout 5 >"$ilog" 2>&1 &
        ipid=$!
        PIDS+=("$ipid")
        for _ in $(seq 900); do
            grep -q '^ready' "$ilog" && break
            kill -0 "$ipid" 2>/dev/null || break
            sleep 0.1
        done
        sleep 1 # let the proxy settle with every connection open
        held_rss=$(rss_of "$c")
        kill -TERM "$ipid" 2>/dev/null || true
        wait "$ipid" || true
        forget "$ipid"
        ready=$(grep '^ready' "$ilog" || echo "ready held=0 bad_status=0 failed=$IDLE_CONNS pending=0")
        done_line=$(grep '^done' "$ilog" || echo "done closed_by_peer=?")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$IDLE_CONNS" "$(field held "$ready")" \
            "$(field pending "$ready")" "$(field failed "$ready")" "$(field bad_status "$ready")" \
            "$(field closed_by_peer "$done_line")" "$before" "$held_rss" >>"$IDLE"
        log "idle $(printf '%-10s' "$c") $ready; rss $((before / 1024)) -> $((held_rss / 1024)) MiB"
        sleep 2
    done
fi

# ---------------------------------------------------------------- report
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo '-dirty')"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) x $ncpu"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "haproxy=$(haproxy -v | awk 'NR==1 {print $3}')"
    echo "wrk=wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency"
    echo "rounds=$ROUNDS"
    echo "warmup=$WARMUP"
    if [[ $PIN == 1 ]]; then
        echo "pinning=wrk on CPUs $WRK_CPUS; 1-thread proxies on CPUs $PROXY_CPUS; backends on CPUs $BACKEND_CPUS; multi-thread proxies unpinned"
    else
        echo "pinning=none"
    fi
    echo "unfinished=${UNFINISHED[*]}"
    restarts=""
    for c in "${!RESTARTS[@]}"; do restarts+="$c x${RESTARTS[$c]} "; done
    echo "restarts=${restarts% }"
    echo "busy_before=$BUSY_BEFORE"
    echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.txt"
python3 "$BENCH/report.py" "$OUT" | tee "$OUT/report.md"
cp "$OUT/report.md" "$BENCH/results/latest.md"
log "results: $OUT/report.md"
