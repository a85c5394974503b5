#!/usr/bin/env python3
"""Pools that scale with demand: cold-start overhead, idle on-demand vassals, a load ramp.

Usage: bench/scaling.py LIEGE TEST_BACKEND OUTDIR [options]   (bench/scaling.sh runs it; see
bench/README.md)

Three measurements, each with `liege run` on a temporary vassal directory, a TCP admin API
(GET /status) and free loopback ports:

  cold   For each app (the test backend, uWSGI, gunicorn, ...): the app launched directly, its
         time from exec to accepting a connect() (polled every 1 ms) and to its first full
         response; then the same command as an on-demand vassal (workers = { min = 0, max = 1,
         idle = COLD_IDLE }), the time from a request sent while it has no worker to the full
         response. Between two requests the vassal is back at 0 workers (/status, and no
         process under the emperor but the router and the guard). Overhead: liege's time minus
         the app's own.
  idle   N on-demand vassals (min 0) for each N: the time from exec of `liege run` to the first
         200 from one of them; then in a second start, once it has settled, the emperor's and
         the router's RSS and CPU, and the processes under the emperor (no worker expected).
  ramp   One vassal, workers = { min = 1, max = RAMP_MAX, idle = RAMP_IDLE }, concurrency = 1,
         the test backend's /slow?ms=SLOW_MS. Client threads (http.client, keep-alive), each
         looping requests, step from 1 to 50 and back; per step: req/s, latency, the pool's
         workers and scale events from /status, and failed requests (non-200 or no response).

Servers and apps run on --server-cpus (sched_setaffinity, as taskset -c does); this process is
pinned by its caller. Raw figures go to OUTDIR/*.tsv, the markdown report to stdout.
Every process it starts is stopped before it exits.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from emperor_bench import free_port, http_fetch, wait_for, write_atomic

MIB = 1024 * 1024

WSGI_APP = '''BODY = b"ok\\n"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
'''


# ---------------------------------------------------------------- processes
def pinned(cpus):
    """A preexec_fn that pins the child to cpus (a set), or None when unpinned."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def children_map():
    """{ppid: [pid, ...]} for every process now."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid):
    """Every process below pid (children, their children, ...)."""
    kids = children_map()
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None when pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_group(proc, sig=signal.SIGTERM, timeout=10):
    """Stop a process started with start_new_session=True and everything in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group
    except ProcessLookupError:
        pass
    proc.wait()


class Liege:
    """`liege run` on VDIR with a TCP admin API; every process under it is stopped on stop()."""

    def __init__(self, liege, vdir, cpus, keep_log=None, extra=()):
        self.keep_log = keep_log  # where stop() copies liege's log to
        self.port, self.admin = free_port(), free_port()
        self.log_path = os.path.join(os.path.dirname(vdir), "liege.log")
        self.log = open(self.log_path, "w")
        # A TCP admin API needs a bearer token from a file only its owner can read.
        self.token = os.urandom(16).hex()
        token_file = os.path.join(os.path.dirname(vdir), "admin.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, self.token.encode() + b"\n")
        os.close(fd)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [liege, "run", "--vassals", vdir, "--listen", f"127.0.0.1:{self.port}",
             "--admin", f"127.0.0.1:{self.admin}", "--admin-token-file", token_file,
             "--access-log", "off", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=pinned(cpus))
        self.seen = {}  # pid -> start time of every process seen under it, for stop()

    def auth(self):
        return {"Authorization": "Bearer " + self.token}

    def status(self, timeout=5.0):
        """GET /status as a dict; None while the admin API does not answer."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=timeout)
            c.request("GET", "/status", headers=self.auth())
            r = c.getresponse()
            body = r.read()
            c.close()
            return json.loads(body) if r.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        c.request("GET", "/metrics", headers=self.auth())
        body = c.getresponse().read().decode()
        c.close()
        return body

    def vassal(self, name, st=None):
        st = st or self.status()
        for v in (st or {}).get("vassals", []):
            if v.get("name") == name:
                return v
        return None

    def processes(self):
        """The processes under the emperor: (router pids, guard pids, worker pids). The router is
        the child whose command line is `liege router ...`, the guard the forked child named
        `liege-guard` (README.md, "guard"); everything else under it is an app's."""
        below = descendants(self.proc.pid)
        self.seen.update((p, start_time(p)) for p in below)
        router, guard, workers = [], [], []
        for p in below:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{p}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == "liege-guard":
                guard.append(p)
            elif len(argv) > 1 and argv[1] == b"router":
                router.append(p)
            else:
                workers.append(p)
        return router, guard, workers

    def wait_ready(self, timeout=30):
        if not wait_for(lambda: self.status(timeout=1) is not None, timeout, 0.01):
            raise RuntimeError(f"liege's admin API never answered; log: {self.log_path}")

    def stop(self):
        self.processes()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        if self.keep_log:
            shutil.copyfile(self.log_path, self.keep_log)
        # A worker in a process group of its own that outlived the emperor; the start time
        # tells it from a process that got its pid since.
        for p, started in self.seen.items():
            if started is not None and start_time(p) == started:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def exchange(sock, host, path):
    """One GET on a connected socket, read to the end of the response as its framing says
    (Content-Length or chunked: uWSGI's HTTP/1.1 socket keeps the connection open after it, even
    when asked to close); the status, or None when no whole response came."""
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        r = http.client.HTTPResponse(sock)
        r.begin()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return None


def get(port, host, path, timeout=30.0):
    """One GET on a fresh connection: (status or None, seconds to the full response)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            status = exchange(s, host, path)
    except OSError:
        status = None
    return status, time.perf_counter() - t0


# ---------------------------------------------------------------- 1. cold start
def app_commands(backend, app_file):
    """name -> the command (with ${PORT}) that serves it on 127.0.0.1:${PORT}."""
    wsgi_dir, wsgi_mod = os.path.dirname(app_file), os.path.basename(app_file)[:-3]
    return {
        "backend": [backend, "--listen", "127.0.0.1:${PORT}", "--name", "cold"],
        # As bench/app_servers.sh runs it: one uWSGI process, no master.
        "uwsgi": ["uwsgi", "--plugin", "python3", "--http11-socket", "127.0.0.1:${PORT}",
                  "--wsgi-file", app_file, "--disable-logging"],
        # An arbiter and one sync worker; the arbiter binds the port before the worker has
        # imported the app, so a connect() is accepted before it can answer.
        "gunicorn": ["gunicorn", "--bind", "127.0.0.1:${PORT}", "--workers", "1",
                     "--chdir", wsgi_dir, f"{wsgi_mod}:application"],
        # The standard library's server, serving the file `id` from a directory of its own.
        "python": ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                   os.path.join(wsgi_dir, "www"), "${PORT}"],
    }


def app_alone(cmd, cpus):
    """Launch cmd directly; seconds from exec to an accepted connect() (polled every 1 ms) and
    to its first full response."""
    port = free_port()
    argv = [a.replace("${PORT}", str(port)) for a in cmd]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=pinned(cpus), cwd=tempfile.gettempdir())
    accepted = responded = None
    try:
        while time.perf_counter() - t0 < 30 and p.poll() is None:
            s = socket.socket()
            if s.connect_ex(("127.0.0.1", port)) != 0:
                s.close()
                time.sleep(0.001)
                continue
            if accepted is None:
                accepted = time.perf_counter() - t0
            s.settimeout(30)
            status = exchange(s, "cold.test", "/id")
            s.close()
            if status == 200:
                responded = time.perf_counter() - t0
                break
            time.sleep(0.001)
    finally:
        stop_group(p, signal.SIGINT if argv[0] == "python3" else signal.SIGTERM)
    if responded is None:
        raise RuntimeError(f"{argv[0]} alone never answered 200")
    return accepted, responded


def cold_start(a, out):
    apps = [x for x in a.cold_apps.split(",") if x]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        app_file = os.path.join(tmp, "scaling_app.py")
        with open(app_file, "w") as f:
            f.write(WSGI_APP)
        os.mkdir(os.path.join(tmp, "www"))
        with open(os.path.join(tmp, "www", "id"), "w") as f:
            f.write("ok\n")
        cmds = app_commands(a.backend, app_file)
        for app in apps:
            if app not in cmds:
                raise SystemExit(f"unknown app {app!r} (known: {', '.join(cmds)})")
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        for app in apps:
            write_atomic(os.path.join(vdir, f"{app}.toml"),
                         f'command = {json.dumps(cmds[app])}\n'
                         f'hosts = ["{app}.test"]\n'
                         f'workers = {{ min = 0, max = 1, idle = "{a.cold_idle}" }}\n'
                         'concurrency = 1\n'
                         '[stop]\ntimeout = "5s"\n')
        emp = Liege(a.liege, vdir, a.cpus, os.path.join(out, "cold-liege.log"))
        try:
            emp.wait_ready()

            def all_idle():
                st = emp.status(timeout=1)
                if st is None or any(v["scale"]["workers"] != 0 or v["workers"]
                                     for v in st["vassals"]):
                    return False
                return not emp.processes()[2]

            for r in range(1, a.cold_rounds + 1):
                for app in apps:
                    accepted, alone = app_alone(cmds[app], a.cpus)
                    if not wait_for(all_idle, 60, 0.05):
                        raise RuntimeError("the vassals did not go back to 0 workers in 60 s")
                    log_at = os.path.getsize(emp.log_path)
                    status, first = get(emp.port, f"{app}.test", "/id")
                    if status != 200:
                        raise RuntimeError(f"{app}: first request got {status}")
                    # liege's own count of the worker's spawn -> ready, from its log.
                    wait_for(lambda: "ready in" in read_from(emp.log_path, log_at), 2, 0.01)
                    m = re.search(r"worker \d+ ready in (\d+) ms", read_from(emp.log_path, log_at))
                    ready_ms = int(m.group(1)) if m else None
                    st = emp.vassal(app)
                    rows.append({"round": r, "app": app, "alone_accept_s": accepted,
                                 "alone_response_s": alone, "liege_first_s": first,
                                 "liege_ready_ms": ready_ms,
                                 "cold_starts": st["scale"]["cold_starts"]})
                    print(f"[scaling] cold {r}/{a.cold_rounds} {app}: alone accept "
                          f"{accepted * 1e3:.1f} ms, response {alone * 1e3:.1f} ms; through "
                          f"liege {first * 1e3:.1f} ms", file=sys.stderr, flush=True)
            # The router's figures reach the emperor once a second: wait for every cold request.
            def complete():
                h = cold_start_histogram(emp.metrics())
                return all(h.get(app, (0, 0))[1] >= a.cold_rounds for app in apps)
            wait_for(complete, 10, 0.1)
            histo = cold_start_histogram(emp.metrics())
        finally:
            emp.stop()
    write_tsv(os.path.join(out, "cold.tsv"), rows)

    print("## 1. Cold start: the first request to an on-demand vassal\n")
    print(f"Each app once alone (exec to an accepted connect(), polled every 1 ms, and to its "
          f"first full response), then through liege as a vassal with `workers = {{ min = 0, "
          f"max = 1, idle = \"{a.cold_idle}\" }}`, `concurrency = 1`: a GET on a fresh "
          f"connection while the vassal has no worker, to the full response; before each, the "
          f"vassal is back at 0 workers. Medians of {a.cold_rounds} interleaved rounds, ms.\n")
    print("| app | alone: exec → accepting | alone: exec → first response | through liege: "
          "request → response | liege: spawn → ready (log) | overhead vs first response | "
          "overhead vs accepting | router's mean cold start (/metrics) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for app in apps:
        mine = [x for x in rows if x["app"] == app]
        acc = statistics.median(x["alone_accept_s"] for x in mine) * 1e3
        alone = statistics.median(x["alone_response_s"] for x in mine) * 1e3
        first = statistics.median(x["liege_first_s"] for x in mine) * 1e3
        ready = [x["liege_ready_ms"] for x in mine if x["liege_ready_ms"] is not None]
        ready_txt = f"{statistics.median(ready):.0f}" if ready else "n/a"
        over = [(x["liege_first_s"] - x["alone_response_s"]) * 1e3 for x in mine]
        h = histo.get(app)
        mean = f"{h[0] / h[1] * 1e3:.1f} ({h[1]} request(s))" if h and h[1] else "n/a"
        print(f"| {app} | {acc:.1f} | {alone:.1f} | {first:.1f} | {ready_txt} | "
              f"{first - alone:.1f} ({min(over):.1f} to {max(over):.1f}) | {first - acc:.1f} | "
              f"{mean} |")
    print("\nOverhead: the median through liege minus the app's median alone (in brackets, the "
          "range of the per-round differences). Target: below 30 ms.\n", flush=True)


def read_from(path, offset):
    with open(path) as f:
        f.seek(offset)
        return f.read()


def cold_start_histogram(metrics):
    """{vassal: (sum seconds, count)} of liege_cold_start_seconds."""
    out = {}
    for m in re.finditer(r'^liege_cold_start_seconds_(sum|count)\{[^}]*vassal="([^"]+)"[^}]*\}'
                         r' ([0-9.e+-]+)$', metrics, re.M):
        s, c = out.get(m.group(2), (0.0, 0))
        if m.group(1) == "sum":
            s = float(m.group(3))
        else:
            c = int(float(m.group(3)))
        out[m.group(2)] = (s, c)
    return out


# ---------------------------------------------------------------- 2. idle vassals
def idle_vassals(a, out):
    rows = []
    for n in [int(x) for x in a.idle_counts.split(",") if x]:
        with tempfile.TemporaryDirectory() as tmp:
            vdir = os.path.join(tmp, "vassals.d")
            os.mkdir(vdir)
            names = [f"v{i:04d}" for i in range(n)]
            for name in names:
                write_atomic(os.path.join(vdir, f"{name}.toml"),
                             f'command = ["{a.backend}", "--listen", "127.0.0.1:${{PORT}}", '
                             f'"--name", "${{NAME}}"]\n'
                             f'hosts = ["{name}.test"]\n'
                             'workers = { min = 0, max = 2, idle = "5m" }\n'
                             'concurrency = 1\n')
            last = f"{names[-1]}.test"

            # First start: from exec to the first 200 of the last vassal.
            emp = Liege(a.liege, vdir, a.cpus, os.path.join(out, f"idle-{n}-first-liege.log"))
            try:
                def served():
                    return http_fetch(emp.port, last, "/id", timeout=5)[0] == 200
                ok = wait_for(served, 30, 0.001)
                first = time.perf_counter() - emp.started if ok else None
            finally:
                emp.stop()

            # Second start: nothing asked; settle, then count processes and memory.
            emp = Liege(a.liege, vdir, a.cpus, os.path.join(out, f"idle-{n}-settled-liege.log"))
            try:
                emp.wait_ready()
                t_listed = None
                if wait_for(lambda: len((emp.status(timeout=1) or {}).get("vassals", [])) == n,
                            60, 0.02):
                    t_listed = time.perf_counter() - emp.started
                time.sleep(a.settle)
                st = emp.status()
                router_pid = st["router"]["pid"]
                c0 = cpu_seconds(emp.proc.pid) + cpu_seconds(router_pid)
                time.sleep(a.idle_cpu_seconds)
                c1 = cpu_seconds(emp.proc.pid) + cpu_seconds(router_pid)
                st = emp.status()
                emperor_rss, router_rss = rss_bytes(emp.proc.pid), rss_bytes(router_pid)
                routers, guards, workers = emp.processes()
                guard_rss = sum(rss_bytes(p) or 0 for p in guards)
                listed_workers = sum(len(v["workers"]) + v["scale"]["workers"]
                                     for v in st["vassals"])
                # And now the first request with all of them loaded: a cold start.
                status, cold = get(emp.port, last, "/id")
            finally:
                emp.stop()
        row = {"vassals": n, "first_200_s": first, "all_listed_s": t_listed,
               "emperor_rss": emperor_rss, "router_rss": router_rss,
               "status_emperor_rss": st["emperor"].get("rss_bytes"),
               "status_router_rss": st["router"].get("rss_bytes"),
               "guard_rss": guard_rss,
               "processes_below": len(routers) + len(guards) + len(workers),
               "router_processes": len(routers), "guard_processes": len(guards),
               "worker_processes": len(workers), "status_workers": listed_workers,
               "idle_cpu_pct": (c1 - c0) / a.idle_cpu_seconds * 100,
               "cold_status": status, "cold_s": cold}
        rows.append(row)
        print(f"[scaling] idle {n} vassals: first 200 after {fmt_s(first)}, emperor "
              f"{emperor_rss / MIB:.1f} MiB + router {router_rss / MIB:.1f} MiB, "
              f"{len(workers)} worker processes", file=sys.stderr, flush=True)
    write_tsv(os.path.join(out, "idle.tsv"), rows)

    print("## 2. Idle on-demand vassals\n")
    print(f"N vassals of the test backend, each `workers = {{ min = 0, max = 2, idle = \"5m\" }}`, "
          f"`concurrency = 1`. First start: from exec of `liege run` to the first 200 of the last "
          f"vassal (GET on a fresh connection every 1 ms). Second start, no request: "
          f"{a.settle:g} s after /status lists all N, VmRSS of the emperor and the router, the "
          f"processes under the emperor, their CPU over {a.idle_cpu_seconds:g} s; then one "
          f"request (a cold start with N vassals loaded).\n")
    print("| vassals | exec → first 200 | all listed in /status | emperor RSS MiB "
          "| router RSS MiB | together MiB | processes under the emperor | workers (/status) "
          "| idle CPU | then a cold start |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['vassals']} | {fmt_s(r['first_200_s'])} | {fmt_s(r['all_listed_s'])} | "
              f"{r['emperor_rss'] / MIB:.1f} | {r['router_rss'] / MIB:.1f} | "
              f"{(r['emperor_rss'] + r['router_rss']) / MIB:.1f} | "
              f"{r['processes_below']} ({r['router_processes']} router, "
              f"{r['guard_processes']} guard, {r['worker_processes']} workers) | "
              f"{r['status_workers']} | "
              f"{r['idle_cpu_pct']:.1f} % | {r['cold_s'] * 1e3:.0f} ms ({r['cold_status']}) |")
    print("\nThe guard (`liege-guard`, a fork of the emperor that kills the workers if the emperor "
          "is killed) is not a worker; its RSS: "
          + ", ".join(f"{r['guard_rss'] / MIB:.1f} MiB ({r['vassals']})" for r in rows) + ".")
    print("Bounds: first request served within 1 s of start, no worker process, emperor + "
          "router under 60 MiB RSS.\n", flush=True)


def fmt_s(v):
    return "n/a" if v is None else f"{v * 1e3:.0f} ms"


# ---------------------------------------------------------------- 3. load ramp
class Clients:
    """Threads that each loop GET requests on their own kept-alive connection while their index
    is below `active`."""

    def __init__(self, port, host, path, count):
        self.port, self.host, self.path = port, host, path
        self.active = 0
        self.done = False
        self.results = []  # (end time, ok, latency s); list.append is atomic
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(count)]
        for t in self.threads:
            t.start()

    def run(self, i):
        conn = None
        while not self.done:
            if i >= self.active:
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.005)
                continue
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            t0 = time.perf_counter()
            try:
                conn.request("GET", self.path, headers={"Host": self.host})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = None
            t1 = time.perf_counter()
            self.results.append((t1, ok, t1 - t0))

    def stop(self):
        self.active = 0
        self.done = True
        for t in self.threads:
            t.join(timeout=60)


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def load_ramp(a, out):
    steps = [int(x) for x in a.ramp_steps.split(",") if x]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        write_atomic(os.path.join(vdir, "ramp.toml"),
                     f'command = ["{a.backend}", "--listen", "127.0.0.1:${{PORT}}", '
                     f'"--name", "ramp-${{WORKER}}"]\n'
                     'hosts = ["ramp.test"]\n'
                     f'workers = {{ min = 1, max = {a.ramp_max}, idle = "{a.ramp_idle}" }}\n'
                     'concurrency = 1\n')
        emp = Liege(a.liege, vdir, a.cpus, os.path.join(out, "ramp-liege.log"))
        clients = None
        try:
            if not wait_for(lambda: http_fetch(emp.port, "ramp.test", "/id")[0] == 200, 30, 0.01):
                raise RuntimeError("the ramp vassal never answered")
            samples = []  # (time, pool workers, worker processes in /status, up, down)
            sampling = True

            def sample():
                while sampling:
                    v = emp.vassal("ramp", emp.status(timeout=2))
                    if v is not None:
                        s = v["scale"]
                        samples.append((time.perf_counter(), s["workers"], len(v["workers"]),
                                        s["scale_events"]["up"], s["scale_events"]["down"]))
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            clients = Clients(emp.port, "ramp.test", f"/slow?ms={a.slow_ms}", max(steps))
            for i, n in enumerate(steps, 1):
                clients.active = n
                t0 = time.perf_counter()
                time.sleep(a.step_seconds)
                t1 = time.perf_counter()
                done = [x for x in list(clients.results) if t0 <= x[0] < t1]
                mine = [x for x in list(samples) if t0 <= x[0] < t1] or samples[-1:]
                lat = [x[2] for x in done if x[1]]
                row = {"step": i, "clients": n, "seconds": t1 - t0, "requests": len(done),
                       "rps": len(done) / (t1 - t0), "failed": sum(1 for x in done if not x[1]),
                       "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
                       "pool_end": mine[-1][1], "pool_min": min(x[1] for x in mine),
                       "pool_max": max(x[1] for x in mine), "processes_end": mine[-1][2],
                       "up": mine[-1][3], "down": mine[-1][4]}
                rows.append(row)
                print(f"[scaling] ramp step {i}/{len(steps)}: {n} clients, {row['rps']:.0f} req/s, "
                      f"pool {row['pool_min']}-{row['pool_max']} (end {row['pool_end']}), "
                      f"events up {row['up']} down {row['down']}, failed {row['failed']}",
                      file=sys.stderr, flush=True)
            clients.stop()
            sampling = False
            sampler.join()
            total = len(clients.results)
            failed = sum(1 for x in clients.results if not x[1])
            final = emp.vassal("ramp")["scale"]
        finally:
            if clients is not None:
                clients.stop()
            emp.stop()
    write_tsv(os.path.join(out, "ramp.tsv"), rows)

    print("## 3. Load ramp\n")
    print(f"One vassal of the test backend, `workers = {{ min = 1, max = {a.ramp_max}, idle = "
          f"\"{a.ramp_idle}\" }}`, `concurrency = 1`; each client a thread looping `GET "
          f"/slow?ms={a.slow_ms}` on its own kept-alive connection; {a.step_seconds:g} s per "
          f"step. Pool: the vassal's `scale.workers` in /status, sampled every 0.25 s "
          f"(min-max over the step, and at its end); scale events cumulative at the step's "
          f"end.\n")
    print("| step | clients | req/s | p50 ms | p99 ms | pool (min-max) | pool at end | "
          "scale events up | down | failed |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['step']} | {r['clients']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['pool_min']}-{r['pool_max']} | {r['pool_end']} | "
              f"{r['up']} | {r['down']} | {r['failed']} |")
    print(f"\nTotal: {total} requests, {failed} failed; scale events up "
          f"{final['scale_events']['up']}, down {final['scale_events']['down']}; pool at the "
          f"end {final['workers']}.\n", flush=True)


# ---------------------------------------------------------------- main
def write_tsv(path, rows):
    if not rows:
        return
    keys = list(rows[0])
    with open(path, "w") as f:
        f.write("\t".join(keys) + "\n")
        for r in rows:
            f.write("\t".join("" if r[k] is None else
                              f"{r[k]:.6f}" if isinstance(r[k], float) else str(r[k])
                              for k in keys) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("liege")
    ap.add_argument("backend")
    ap.add_argument("out")
    ap.add_argument("--measure", default="cold,idle,ramp")
    ap.add_argument("--server-cpus", default="", help="e.g. 0 or 0,1; empty: unpinned")
    ap.add_argument("--cold-apps", default="backend,uwsgi,gunicorn")
    ap.add_argument("--cold-rounds", type=int, default=10)
    ap.add_argument("--cold-idle", default="1s")
    ap.add_argument("--idle-counts", default="10,100,500")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--idle-cpu-seconds", type=float, default=3.0)
    ap.add_argument("--ramp-steps", default="1,2,4,8,16,32,50,32,16,8,4,2,1,1,1,1,1,1")
    ap.add_argument("--step-seconds", type=float, default=2.5)
    ap.add_argument("--ramp-max", type=int, default=8)
    ap.add_argument("--ramp-idle", default="2s")
    ap.add_argument("--slow-ms", type=int, default=20)
    a = ap.parse_args()
    a.liege = os.path.abspath(a.liege)
    a.backend = os.path.abspath(a.backend)  # workers run in their vassal's directory
    a.cpus = {int(c) for c in a.server_cpus.split(",") if c}
    os.makedirs(a.out, exist_ok=True)
    for m in [x for x in a.measure.split(",") if x]:
        {"cold": cold_start, "idle": idle_vassals, "ramp": load_ramp}[m](a, a.out)


if __name__ == "__main__":
    main()
