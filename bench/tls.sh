#!/usr/bin/env bash
# TLS termination: `liege router --listen-tls` against nginx with the same ECDSA P-256
# certificate, in front of the same nginx backend, on loopback.
#
# Usage: bench/tls.sh            (see bench/README.md, "TLS")
#
# Environment (defaults in brackets):
#   DURATION [10s]       each measured run
#   CONNECTIONS [50]     wrk connections for the keep-alive run
#   PARALLEL [4]         `openssl s_time -new` clients for the handshake run
#   ROUNDS [3]           interleaved rounds
#   THREADS [1]          proxy threads / nginx workers
#   PIN [1]              pin with taskset: proxy on CPU 0, clients on CPU 1
#   SKIP_BUILD [0]       1: use the existing build-bench/liege as is
#   FD_LIMIT [20000]     fd limit of every proxy
#
# Measured per proxy and round: new TLS handshakes per second (`openssl s_time -new`: full TLS 1.3
# handshakes, no session resumption, PARALLEL clients), and requests per second with the
# p99 over kept-alive TLS connections (wrk). CPU per request is the proxy's CPU time over the
# keep-alive run divided by the requests it served. The median over the rounds is reported.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
PARALLEL=${PARALLEL:-4}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
PIN=${PIN:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
FD_LIMIT=${FD_LIMIT:-20000}

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

"$ROOT/scripts/deps.sh" --bench
for tool in wrk nginx openssl curl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
LIEGE=$ROOT/build-bench/liege
if [[ $SKIP_BUILD != 1 ]]; then
    cmake -S "$ROOT" -B "$ROOT/build-bench" -DCMAKE_BUILD_TYPE=Release -DLIEGE_TESTS=OFF >/dev/null
    cmake --build "$ROOT/build-bench" -j"$(nproc)" --target liege >/dev/null
fi

# A throwaway certificate: ECDSA P-256, self-signed, for bench.test.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$TMP/cert.key" -out "$TMP/cert.pem" 2>/dev/null

read -r BACKEND LIEGE_PORT NGINX_PORT < <(free_ports 3)
mkdir -p "$TMP/temp"
temp_paths="client_body_temp_path $TMP/temp/body; proxy_temp_path $TMP/temp/proxy;
    fastcgi_temp_path $TMP/temp/fastcgi; uwsgi_temp_path $TMP/temp/uwsgi; scgi_temp_path $TMP/temp/scgi;"
cat >"$TMP/backend.conf" <<EOF
worker_processes 1;
pid $TMP/backend.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    $temp_paths
    server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok\n"; } }
}
EOF
# nginx as Mozilla's intermediate configuration has it, as liege does.
cat >"$TMP/nginx.conf" <<EOF
worker_processes $THREADS;
worker_rlimit_nofile $FD_LIMIT;
pid $TMP/nginx.pid;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_requests 1000000;
    $temp_paths
    upstream backends { server 127.0.0.1:$BACKEND; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl reuseport;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/cert.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
        ssl_prefer_server_ciphers off;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

declare -A MAIN_PID
start() { # NAME CPUS CMD...: in the background, fd limit raised, pinned, output to TMP/NAME.out
    local name=$1 cpus=$2
    shift 2
    (
        ulimit -n "$FD_LIMIT"
        pin "$cpus" "$@"
    ) >"$TMP/$name.out" 2>&1 </dev/null &
    PIDS+=($!)
    MAIN_PID[$name]=$!
}
wait_https() { # PORT PID NAME
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || die "$3 exited during startup"
        [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "https://127.0.0.1:$1/") == 200 ]] &&
            return 0
        sleep 0.1
    done
    die "$3 did not answer over https on $1"
}

start backend all nginx -p "$TMP" -e "$TMP/backend.err" -c "$TMP/backend.conf" -g 'daemon off;'
wait_http "$BACKEND" "${MAIN_PID[backend]}" backend || die "backend failed"
start liege 0 "$LIEGE" router --listen-tls "127.0.0.1:$LIEGE_PORT" --tls-cert "$TMP/cert.pem" \
    --tls-key "$TMP/cert.key" --backend "127.0.0.1:$BACKEND" --threads "$THREADS" --access-log off
start nginx 0 nginx -p "$TMP" -e "$TMP/nginx.err" -c "$TMP/nginx.conf" -g 'daemon off;'
liege_pid=${MAIN_PID[liege]}
nginx_pid=${MAIN_PID[nginx]}
wait_https "$LIEGE_PORT" "$liege_pid" liege
wait_https "$NGINX_PORT" "$nginx_pid" nginx

proc_pids() { # NAME: the processes that do the work
    if [[ $1 == nginx ]]; then pgrep -P "$nginx_pid"; else echo "$liege_pid"; fi
}
declare -A HS RPS P99 CPU
for round in $(seq "$ROUNDS"); do
    for p in liege nginx; do
        port=$LIEGE_PORT
        [[ $p == nginx ]] && port=$NGINX_PORT
        # New handshakes: PARALLEL `openssl s_time -new` clients, each handshaking again and
        # again (full handshakes, no resumption) for the run's duration.
        secs=${DURATION%s}
        clients=()
        for i in $(seq "$PARALLEL"); do
            (pin 1 openssl s_time -connect "127.0.0.1:$port" -new -time "$secs") \
                >"$TMP/stime-$p-$round-$i" 2>&1 </dev/null &
            clients+=($!)
        done
        wait "${clients[@]}" || true
        hs=$(cat "$TMP"/stime-"$p"-"$round"-* |
            awk '/connections in [0-9.]+ real seconds/ { n += $1; t = $4 } END { if (t > 0) printf "%.0f", n / t }')
        HS[$p]+="${hs:-nan} "
        mapfile -t pids < <(proc_pids "$p")
        before=$(cpu_ticks "${pids[@]}")
        (pin 1 wrk -t1 -c "$CONNECTIONS" -d "$DURATION" --latency "https://127.0.0.1:$port/") \
            >"$TMP/wrk-$p-$round" 2>&1 </dev/null || true
        after=$(cpu_ticks "${pids[@]}")
        read -r rps _p50 p99 _err reqs < <(parse_wrk "$TMP/wrk-$p-$round")
        RPS[$p]+="$rps "
        P99[$p]+="$p99 "
        CPU[$p]+="$(cpu_per_req "$before" "$after" "$reqs") "
        log "round $round $p: ${hs:-?} handshakes/s, $rps req/s, p99 $p99 ms"
    done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
echo "| proxy | handshakes/s | req/s (keep-alive) | p99 ms | CPU µs/req |"
echo "| --- | --- | --- | --- | --- |"
for p in liege nginx; do
    echo "| $p ($THREADS thread(s)) | $(median "${HS[$p]}") | $(median "${RPS[$p]}") | $(median "${P99[$p]}") | $(median "${CPU[$p]}") |"
done
echo
echo "liege/nginx: handshakes $(ratio "$(median "${HS[liege]}")" "$(median "${HS[nginx]}")")x," \
    "req/s $(ratio "$(median "${RPS[liege]}")" "$(median "${RPS[nginx]}")")x," \
    "CPU per request $(ratio "$(median "${CPU[liege]}")" "$(median "${CPU[nginx]}")")x"
