#!/usr/bin/env python3
"""Emperor benchmarks: reloads under load, drop-to-first-request latency, 100 vassals, idle CPU.

Usage: bench/emperor_bench.py LIEGE TEST_BACKEND [--reload-seconds 60] [--vassals 100]
Everything runs on 127.0.0.1 with ephemeral ports, in a temporary directory, and stops by itself.
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, wait_for, write_atomic


def http_fetch(port, host, path="/id", timeout=2.0):
    """One GET on a fresh connection; returns (status, body bytes), or (None, b"") when it got no
    HTTP response."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
    except OSError:
        return None, b""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)), data.partition(b"\r\n\r\n")[2]) if m else (None, b"")


def http_get(port, host, path="/id", timeout=2.0):
    """One GET on a fresh connection; returns the status or None."""
    return http_fetch(port, host, path, timeout)[0]


def vassal_toml(backend, name, host, workers=2, strategy="rolling", marker="a"):
    return f'''command = ["{backend}", "--listen", "127.0.0.1:${{PORT}}", "--name", "${{NAME}}-{marker}-${{WORKER}}"]
workers = {workers}
hosts = ["{host}"]
env = {{ MARKER = "{marker}" }}
[reload]
strategy = "{strategy}"
drain_timeout = "5s"
[stop]
timeout = "2s"
'''


class Emperor:
    def __init__(self, liege, vdir, extra=()):
        self.log = open(os.path.join(os.path.dirname(vdir), "emperor.log"), "w")
        self.proc = subprocess.Popen(
            [liege, "run", "--vassals", vdir, "--listen", "127.0.0.1:0", "--admin",
             "unix:" + os.path.join(os.path.dirname(vdir), "liege.sock"), "--access-log", "off",
             *extra],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = None
        logpath = self.log.name
        deadline = time.time() + 20
        while time.time() < deadline and self.port is None:
            with open(logpath) as f:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.01)
        if self.port is None:
            raise RuntimeError("liege run did not report its port")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reload_under_load(liege, backend, strategy, seconds, every):
    with tempfile.TemporaryDirectory() as tmp:
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        path = os.path.join(vdir, "app.toml")
        write_atomic(path, vassal_toml(backend, "app", "app.test", 2, strategy, "m0"))
        emp = Emperor(liege, vdir)
        try:
            if not wait_for(lambda: http_get(emp.port, "app.test") == 200, 20, 0.005):
                raise RuntimeError("app never served")
            wrk = subprocess.Popen(
                ["wrk", "-t1", "-c20", f"-d{seconds}s", "-H", "Host: app.test",
                 f"http://127.0.0.1:{emp.port}/id"], stdout=subprocess.PIPE, text=True)
            reloads = 0
            start = time.time()
            while time.time() - start < seconds - every:
                time.sleep(every)
                reloads += 1
                write_atomic(path, vassal_toml(backend, "app", "app.test", 2, strategy, f"m{reloads}"))
            out, _ = wrk.communicate()
            with open(os.path.join(tmp, "emperor.log")) as f:
                log = f.read()
            served = len(re.findall(r"vassal app: generation \d+ serving", log)) - 1
            abandoned = len(re.findall(r"reload to generation \d+ abandoned", log))
        finally:
            emp.stop()
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock_errors = sum(int(x) for x in sock.groups()) if sock else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"strategy": strategy, "reloads": reloads, "completed": served,
            "abandoned": abandoned, "requests": total, "non2xx": non2xx,
            "socket_errors": sock_errors, "rps": rps}


def app_start_time(backend):
    """Time for the test backend alone, from exec to accepting connections."""
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([backend, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    wait_for(lambda: http_get(port, "x") is not None, 10, 0.001)
    t = time.perf_counter() - t0
    p.terminate()
    p.wait()
    return t


def drop_to_first_request(liege, backend, runs):
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        emp = Emperor(liege, vdir)
        try:
            time.sleep(1)  # let the emperor settle (router up, first scan done)
            for i in range(runs):
                host = f"drop{i}.test"
                t0 = time.perf_counter()
                write_atomic(os.path.join(vdir, f"drop{i}.toml"),
                             vassal_toml(backend, f"drop{i}", host, 1))
                if not wait_for(lambda: http_get(emp.port, host) == 200, 20, 0.002):
                    raise RuntimeError("dropped vassal never served")
                samples.append(time.perf_counter() - t0)
        finally:
            emp.stop()
    return samples


def many_vassals(liege, backend, count):
    with tempfile.TemporaryDirectory() as tmp:
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        for i in range(count):
            write_atomic(os.path.join(vdir, f"v{i:03d}.toml"),
                         vassal_toml(backend, f"v{i:03d}", f"v{i:03d}.test", 2))
        t0 = time.perf_counter()
        emp = Emperor(liege, vdir)
        try:
            log = os.path.join(tmp, "emperor.log")

            def ready_count():
                with open(log) as f:
                    return len(re.findall(r"worker \d+ ready in", f.read()))
            ok = wait_for(lambda: ready_count() >= 2 * count, 60, 0.01)
            all_ready = time.perf_counter() - t0
            served = sum(1 for i in range(count) if http_get(emp.port, f"v{i:03d}.test") == 200)
            time.sleep(1)
            c0 = cpu_seconds(emp.proc.pid)
            time.sleep(10)
            idle_cpu = (cpu_seconds(emp.proc.pid) - c0) / 10 * 100
        finally:
            emp.stop()
    return {"vassals": count, "workers": 2 * count, "all_ready_s": all_ready if ok else None,
            "served": served, "emperor_idle_cpu_percent": idle_cpu}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("liege")
    ap.add_argument("backend")
    ap.add_argument("--reload-seconds", type=int, default=60)
    ap.add_argument("--reload-every", type=float, default=3.0)
    ap.add_argument("--drops", type=int, default=7)
    ap.add_argument("--vassals", type=int, default=100)
    a = ap.parse_args()
    a.liege = os.path.abspath(a.liege)
    a.backend = os.path.abspath(a.backend)  # workers run in their vassal's directory

    print("## Reload under load\n")
    print(f"wrk -t1 -c20 -d{a.reload_seconds}s through liege run; the vassal file (2 workers of "
          f"liege-test-backend) is rewritten every {a.reload_every:g} s.\n")
    print("| strategy | file rewrites | reloads completed | abandoned | requests | req/s | non-2xx | socket errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for strategy in ("rolling", "bluegreen"):
        r = reload_under_load(a.liege, a.backend, strategy, a.reload_seconds, a.reload_every)
        print(f"| {r['strategy']} | {r['reloads']} | {r['completed']} | {r['abandoned']} | "
              f"{r['requests']} | {r['rps']:.0f} | {r['non2xx']} | {r['socket_errors']} |", flush=True)

    print("\n## Drop a file → first served request\n")
    app = statistics.median(app_start_time(a.backend) for _ in range(7))
    samples = drop_to_first_request(a.liege, a.backend, a.drops)
    med = statistics.median(samples)
    print(f"median of {len(samples)}: {med * 1000:.0f} ms (min {min(samples) * 1000:.0f}, max "
          f"{max(samples) * 1000:.0f}); the app alone starts in {app * 1000:.1f} ms (median of 7); "
          f"liege's share: {(med - app) * 1000:.0f} ms\n")

    print(f"## {a.vassals} vassals × 2 workers from an empty start\n")
    r = many_vassals(a.liege, a.backend, a.vassals)
    ready = f"{r['all_ready_s']:.2f} s" if r["all_ready_s"] is not None else "not within 60 s"
    print(f"all {r['workers']} workers ready: {ready}; vassals answering through the router: "
          f"{r['served']}/{r['vassals']}; emperor CPU while idle: "
          f"{r['emperor_idle_cpu_percent']:.2f} %")


if __name__ == "__main__":
    main()
