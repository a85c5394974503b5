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

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/liege-bench.XXXXXX")
PIDS=() # every long-running process we started, stopped in reverse order

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 && -d "$TMP" ]]; then
        log "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- helpers
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $FD_LIMIT ]]; then
    log "WARNING: fd hard limit $hard is below FD_LIMIT=$FD_LIMIT; using $hard"
    FD_LIMIT=$hard
fi
ncpu=$(nproc)
if [[ $PIN == 1 ]] && { ! command -v taskset >/dev/null || [[ $ncpu -lt 2 ]]; }; then
    log "pinning disabled (needs taskset and at least 2 CPUs)"
    PIN=0
fi

# pin CPUS CMD...: run CMD on CPUS when pinning is on; CPUS "" or "all" means unpinned.
pin() {
    local cpus=$1
    shift
    if [[ $PIN == 1 && -n $cpus && $cpus != all ]]; then
        exec taskset -c "$cpus" "$@"
    fi
    exec "$@"
}

# CPUs for a proxy with T threads: a 1-thread proxy gets PROXY_CPUS, apart
# from wrk; with more threads than that it cannot be pinned apart on 2 cores.
proxy_cpus() { if [[ $1 == 1 ]]; then echo "$PROXY_CPUS"; else echo all; fi; }

# free_ports N: N loopback ports that are free right now.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# wait_http PORT PID NAME: until GET / answers 200, bounded; fails if PID dies.
wait_http() {
    local port=$1 pid=$2 name=$3 code
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || {
            log "$name exited during startup"
            return 1
        }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    log "$name did not answer 200 on port $port within 10s (last status: ${code:-none})"
    return 1
}

# rss_kb PID...: summed VmRSS in KiB.
rss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# cpu_ticks PID...: summed utime+stime (fields 14 and 15 of /proc/PID/stat) in
# clock ticks; the stat of a process's main pid covers all its threads, dead
# ones included. "nan" when there is no pid or one of them is gone.
cpu_ticks() {
    local total=0 pid stat fields
    [[ $# -gt 0 ]] || {
        echo nan
        return
    }
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || {
            echo nan
            return
        }
        # comm (field 2) may hold spaces and ")": fields 3.. follow its last ")".
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12])) # fields 14 and 15
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# cpu_busy SECONDS: percent of all CPUs busy over SECONDS (everything, not only ours).
cpu_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); d = y[2] - x[2];
        printf "%d\n", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}

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

# forget PID: drop a reaped pid from PIDS so cleanup never signals a reused one.
forget() {
    local keep=() x
    for x in "${PIDS[@]}"; do [[ $x == "$1" ]] || keep+=("$x"); done
    PIDS=("${keep[@]}")
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

# parse_wrk FILE: "rps p50_ms p99_ms errors requests" from wrk --latency output
# (requests: the completed ones, from "N requests in Xs").
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { reqs = $1 }
        /Latency Distribution/ { dist = 1; next }
        dist && $1 == "50%" { p50 = ms($2) }
        dist && $1 == "99%" { p99 = ms($2); dist = 0 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        END {
            if (rps == "") { print "nan nan nan -1 nan"; exit }  # wrk did not run
            printf "%s %s %s %d %s\n", rps, p50 == "" ? "nan" : p50, p99 == "" ? "nan" : p99, err,
                reqs == "" ? "nan" : reqs
        }
    ' "$1"
}

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

# cpu_per_req TICKS_BEFORE TICKS_AFTER REQUESTS: CPU microseconds per request, or nan.
cpu_per_req() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
        if (a !~ /^[0-9]+$/ || b !~ /^[0-9]+$/ || n !~ /^[0-9]+$/ || n == 0 || b < a) { print "nan"; exit }
        printf "%.2f\n", (b - a) * 1e6 / hz / n }'
}

# The box is shared: give other load (a build, another tenant) a chance to end.
BUSY_BEFORE=$(cpu_busy 2)
waited=0
while [[ $BUSY_BEFORE -gt 10 && $waited -lt $QUIET_WAIT ]]; do
    [[ $waited == 0 ]] && log "CPUs ${BUSY_BEFORE}% busy with other work; waiting up to ${QUIET_WAIT}s for quiet"
    BUSY_BEFORE=$(cpu_busy 5)
    waited=$((waited + 5))
done
if [[ $BUSY_BEFORE -gt 10 ]]; then
    log "WARNING: the CPUs are ${BUSY_BEFORE}% busy before any load: figures will be noisy"
fi

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
