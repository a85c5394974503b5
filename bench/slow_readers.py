#!/usr/bin/env python3
"""Memory a proxy holds for slow readers, side by side with nginx.

N clients each ask for a large response (liege-test-backend's /bytes?n=SIZE) through the
proxy and then read nothing, with a small receive buffer: the proxy is left holding what it
read from the backend and could not send. Once the proxy's RSS stops growing, its growth over
the idle figure, per client, is what a slow reader costs. Then every client closes, and the
RSS a few seconds later tells whether the memory was given back.

    bench/slow_readers.py --liege build/liege --backend build/tests/liege-test-backend \
        [--baseline OTHER/liege] [--nginx /usr/sbin/nginx] [--clients 500] [--size 8MiB]

Prints a markdown table. Every process it starts is stopped when it exits.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, read_to_close


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (FileNotFoundError, IndexError):
                pass
    return out


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def settle(pids, timeout=20, quiet=1.0):
    """RSS once it has not grown by more than 1 % for `quiet` seconds."""
    last, since, end = rss_kib(pids), time.time(), time.time() + timeout
    while time.time() < end:
        time.sleep(0.1)
        now = rss_kib(pids)
        if now > last * 1.01:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return now
    return rss_kib(pids)


def measure(name, port, pids_of, clients, size):
    pids = pids_of()
    # Warm up: one full response, so that lazily made pools exist before the idle figure.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /bytes?n=65536 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        read_to_close(s)
    idle = settle(pids)
    socks = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /bytes?n={size} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        socks.append(s)
    # Every client's request has reached the backend and its response is under way once the
    # backend has been asked for all of them; then the RSS settles.
    held = settle(pids, timeout=60, quiet=3.0)
    for s in socks:
        s.close()
    time.sleep(3)
    after = rss_kib(pids)
    per = (held - idle) / clients
    print(f"| {name} | {idle / 1024:.1f} | {held / 1024:.1f} | {per:.0f} | {after / 1024:.1f} |",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--liege", required=True)
    ap.add_argument("--baseline")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--size", default="8388608")
    a = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    tmp = tempfile.mkdtemp(prefix="liege-slow-readers.")
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    try:
        bport = free_port()
        start([a.backend, "--listen", f"127.0.0.1:{bport}", "--name", "b"])
        assert wait_port(bport), "backend did not start"
        print(f"{a.clients} clients, each reading nothing of a {a.size}-byte response "
              "(SO_RCVBUF 4096)\n")
        print("| proxy | idle RSS MiB | RSS with the slow readers MiB | KiB per slow reader | "
              "RSS 3 s after they left MiB |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, binary in (("liege", a.liege), ("liege baseline", a.baseline)):
            if not binary:
                continue
            port = free_port()
            p = start([binary, "router", "--listen", f"127.0.0.1:{port}", "--backend",
                       f"127.0.0.1:{bport}", "--threads", "1", "--access-log", "off"])
            assert wait_port(port), f"{name} did not start"
            measure(name, port, lambda: [p.pid], a.clients, a.size)
            p.send_signal(signal.SIGKILL)
            p.wait()
        if a.nginx and os.path.exists(a.nginx):
            port = free_port()
            conf = os.path.join(tmp, "nginx.conf")
            temp = "".join(f"{k}_temp_path {tmp}/{k};\n" for k in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            with open(conf, "w") as f:
                f.write(f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  {temp}
  upstream b {{ server 127.0.0.1:{bport}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://b; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
}}
""")
            p = start([a.nginx, "-p", tmp, "-c", conf, "-e", f"{tmp}/nginx.error.log", "-g",
                       "daemon off;"])
            assert wait_port(port), "nginx did not start"
            measure("nginx 1 worker (proxy_buffering on)", port, lambda: children(p.pid),
                    a.clients, a.size)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
