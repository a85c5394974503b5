# shellcheck shell=bash
# Helpers the bench scripts share (sourced, not run): logging, a temporary directory and the
# processes started from it (all stopped on exit, Ctrl-C included), CPU pinning, free loopback
# ports, bounded waits, figures from /proc, and wrk's output.
#
# Source it from a bash script that runs with `set -euo pipefail`, after setting PIN (1: pin
# with taskset). It creates $TMP and installs the EXIT, INT and TERM traps.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- processes and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/liege-bench.XXXXXX")
PIDS=()               # every long-running process we started, stopped in reverse order
declare -A STOP_WITH  # pid -> the signal that stops it cleanly (default TERM)
declare -A LEADS      # pid -> 1 when it leads its own process group: stop the whole group
declare -A STOP_WAIT  # pid -> seconds it may take to stop before SIGKILL (default 5)

# signal_pid SIGNAL PID: to PID, or to its process group when it leads one.
signal_pid() {
    if [[ -n ${LEADS[$2]:-} ]]; then
        kill -"$1" -- "-$2" 2>/dev/null || true
    else
        kill -"$1" "$2" 2>/dev/null || true
    fi
}

# alive PID: PID (or, for a group leader, anything left in its group) still runs.
alive() {
    if [[ -n ${LEADS[$1]:-} ]]; then
        kill -0 -- "-$1" 2>/dev/null
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# reap PID: wait up to STOP_WAIT[PID] (5 s) for PID to go after its stop signal, then SIGKILL
# it (its group).
reap() {
    local pid=$1
    for _ in $(seq $((${STOP_WAIT[$pid]:-5} * 10))); do
        alive "$pid" || break
        sleep 0.1
    done
    alive "$pid" && log "pid $pid did not stop within ${STOP_WAIT[$pid]:-5} s; killing it"
    signal_pid KILL "$pid"
    wait "$pid" 2>/dev/null || true
}

# forget PID: drop a reaped pid from PIDS so cleanup never signals a reused one.
forget() {
    local keep=() x
    for x in "${PIDS[@]}"; do [[ $x == "$1" ]] || keep+=("$x"); done
    PIDS=("${keep[@]}")
    unset "STOP_WITH[$1]" "LEADS[$1]" "STOP_WAIT[$1]"
}

# stop_pid PID: stop one process we started (its stop signal, then SIGKILL) and forget it.
stop_pid() {
    signal_pid "${STOP_WITH[$1]:-TERM}" "$1"
    reap "$1"
    forget "$1"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        signal_pid "${STOP_WITH[$pid]:-TERM}" "$pid"
    done
    for pid in "${PIDS[@]}"; do reap "$pid"; done
    if [[ $rc -ne 0 && -d "$TMP" ]]; then
        log "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- placement
# pin CPUS CMD...: exec CMD on CPUS when pinning is on; CPUS "" or "all" means unpinned.
pin() {
    local cpus=$1
    shift
    if [[ $PIN == 1 && -n $cpus && $cpus != all ]]; then
        exec taskset -c "$cpus" "$@"
    fi
    exec "$@"
}

ncpu=$(nproc)
if [[ $PIN == 1 ]] && { ! command -v taskset >/dev/null || [[ $ncpu -lt 2 ]]; }; then
    log "pinning disabled (needs taskset and at least 2 CPUs)"
    PIN=0
fi

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

# ---------------------------------------------------------------- figures from /proc
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

# cpu_per_req TICKS_BEFORE TICKS_AFTER REQUESTS: CPU microseconds per request, or nan.
cpu_per_req() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
        if (a !~ /^[0-9]+$/ || b !~ /^[0-9]+$/ || n !~ /^[0-9]+$/ || n == 0 || b < a) { print "nan"; exit }
        printf "%.2f\n", (b - a) * 1e6 / hz / n }'
}

# cpu_busy SECONDS: percent of all CPUs busy over SECONDS (everything, not only ours).
cpu_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); d = y[2] - x[2];
        printf "%d\n", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}

# wait_quiet SECONDS: the box is shared; give other load (a build, another tenant) up to
# SECONDS to end. Prints how busy the CPUs were at the end, in percent.
wait_quiet() {
    local busy waited=0
    busy=$(cpu_busy 2)
    while [[ $busy -gt 10 && $waited -lt $1 ]]; do
        [[ $waited == 0 ]] && log "CPUs ${busy}% busy with other work; waiting up to ${1}s for quiet"
        busy=$(cpu_busy 5)
        waited=$((waited + 5))
    done
    if [[ $busy -gt 10 ]]; then
        log "WARNING: the CPUs are ${busy}% busy before any load: figures will be noisy"
    fi
    echo "$busy"
}

# ---------------------------------------------------------------- wrk
# parse_wrk FILE: "rps p50_ms p99_ms errors requests" from wrk --latency output
# (errors: non-2xx responses plus socket errors; requests: the completed ones, from
# "N requests in Xs"). "nan nan nan -1 nan" when wrk did not run.
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
