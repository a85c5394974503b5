#!/usr/bin/env python3
"""Chaos soak and slow-client attacks against `liege run` (bench/chaos.sh runs it).

Usage: bench/chaos.py LIEGE TEST_BACKEND OUTDIR [--measure soak,slow] [options]

soak  `liege run` on a temporary vassal directory with three vassals: `be` (the test backend,
      4 workers), `one` (the test backend's /slow?ms=5, 2 workers, concurrency = 1 and a
      queue) and `gun` (a gunicorn sync app, 2 workers, concurrency = 1). For --duration
      seconds, wrk loads `be` in the background while client threads (one keep-alive raw-socket
      client per thread) load all three and record every failed request with its cause
      (connect refused, reset, closed before the response, timeout, HTTP 5xx, ...) and its time.
      A chaos loop meanwhile, at random intervals, SIGKILLs a random worker, SIGSTOPs one for a
      few seconds then SIGCONTs it, SIGKILLs the router (the emperor starts a new one), rewrites
      a vassal file several times in a row (a reload storm), and creates or removes extra vassal
      files (file churn). Each failure is attributed to the action in flight: a request on a
      connection the killed router held, or a request in flight when a worker was SIGKILLed, is
      "in flight on a killed process" (the expected cost); anything else is a finding.
slow  slowhttptest (slow headers -H, slow body -B, slow read -X) against liege (a gunicorn sync
      app, 2 workers of concurrency 1) and against nginx in front of the same app (gunicorn -w 2),
      one after the other; during each attack a probe client sends a normal GET every second.

Raw output goes to OUTDIR; the markdown report to stdout. Every process it starts is stopped
before it exits, Ctrl-C included (processes run in their own sessions and are killed by group).
"""
import argparse
import collections
import csv
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, read_to_close, wait_for, write_atomic

WSGI_APP = '''BIG = b"x" * 262144


def application(environ, start_response):
    body = BIG if environ.get("PATH_INFO") == "/big" else b"ok\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

STARTED = []  # Popen objects, each leading its own session: killed by group on exit


def start(argv, log, **kw):
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=30):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # anything left in its group
    except ProcessLookupError:
        pass
    p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in reversed(list(STARTED)):
        stop(p, timeout=10)


def http_once(port, host, path, timeout=5.0):
    """One GET on a fresh connection: (status or None, seconds)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = read_to_close(s)
    except OSError:
        return None, time.monotonic() - t0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), time.monotonic() - t0


class Liege:
    """`liege run` with a unix admin socket; the public port is read from its log."""

    def __init__(self, liege, tmp, vdir, logpath, extra=()):
        self.sock = os.path.join(tmp, "admin.sock")
        self.logpath = logpath
        self.log = open(logpath, "w")
        self.proc = start([liege, "run", "--vassals", vdir, "--listen", "127.0.0.1:0",
                           "--admin", "unix:" + self.sock, "--access-log", "off", *extra],
                          self.log)
        self.port = None

        def port():
            with open(logpath) as f:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
            self.port = int(m.group(1)) if m else None
            return self.port is not None
        if not wait_for(port, 20):
            raise RuntimeError("liege run did not report its port")

    def status(self, timeout=2.0):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(self.sock)
                s.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                data = read_to_close(s)
            return json.loads(data.partition(b"\r\n\r\n")[2])
        except (OSError, ValueError):
            return None

    def ready(self, names):
        st = self.status()
        if not st:
            return False
        have = {v["name"]: v for v in st["vassals"]}
        return all(n in have and have[n]["workers_ready"] > 0 for n in names)


# ---------------------------------------------------------------- the load client
class Client(threading.Thread):
    """Requests in a loop on one keep-alive connection (reopened when it closes). Records the
    latency of each success and, for each failure, (t0, t1, host, cause, connection opened at,
    requests the connection had carried before)."""

    def __init__(self, port, host, path, stop_event, timeout=10.0):
        super().__init__(daemon=True)
        self.port, self.host, self.path, self.stop_event = port, host, path, stop_event
        self.timeout = timeout
        self.ok = 0
        self.latencies = []
        self.failures = []
        self.req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: liege-chaos\r\n\r\n"
                    .encode())

    def run(self):
        sock, opened, carried = None, 0.0, 0
        while not self.stop_event.is_set():
            t0 = time.time()
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                    sock.settimeout(self.timeout)
                    opened, carried = time.time(), 0
                except ConnectionRefusedError:
                    self.fail(t0, "connect refused", opened, carried)
                    time.sleep(0.01)
                    continue
                except socket.timeout:
                    self.fail(t0, "connect timeout", opened, carried)
                    continue
                except OSError as e:
                    self.fail(t0, f"connect error ({e.strerror})", opened, carried)
                    time.sleep(0.01)
                    continue
            cause, keep = self.one(sock)
            if cause is None:
                self.ok += 1
                self.latencies.append(time.time() - t0)
                carried += 1
            else:
                self.fail(t0, cause, opened, carried)
            if cause is not None or not keep:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def fail(self, t0, cause, opened, carried):
        self.failures.append({"t0": t0, "t1": time.time(), "host": self.host, "cause": cause,
                              "opened": opened, "carried": carried})

    def one(self, sock):
        """(None or the failure's cause, whether the connection stays open)."""
        got = b""
        try:
            sock.sendall(self.req)
            while b"\r\n\r\n" not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    return ("closed before the response" if not got else
                            "closed during the response"), False
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            if not m:
                return "malformed response", False
            status = int(m.group(1))
            cl = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            if not cl:
                return f"HTTP {status} without Content-Length", False
            need = int(cl.group(1))
            while len(body) < need:
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed during the response", False
                body += chunk
            keep = not re.search(rb"\r\nconnection:\s*close", head, re.I)
            if status != 200:
                return f"HTTP {status}", keep
            return None, keep
        except socket.timeout:
            return "timeout (10 s)", False
        except ConnectionResetError:
            return ("reset before the response" if not got else "reset during the response"), False
        except BrokenPipeError:
            return "reset while sending", False
        except OSError as e:
            return f"socket error ({e.strerror})", False


# ---------------------------------------------------------------- chaos actions
def backend_vassal(backend, name, host, workers, marker, extra=""):
    return (f'command = ["{backend}", "--listen", "127.0.0.1:${{PORT}}", "--name", '
            f'"${{NAME}}-${{WORKER}}"]\n'
            f'workers = {workers}\nhosts = ["{host}"]\nenv = {{ MARKER = "{marker}" }}\n{extra}'
            '[reload]\ndrain_timeout = "5s"\n[stop]\ntimeout = "2s"\n')


def gunicorn_vassal(tmp, host, workers, marker):
    cmd = ["gunicorn", "--chdir", tmp, "-w", "1", "-k", "sync", "-b", "127.0.0.1:${PORT}",
           "chaos_app:application"]
    # gunicorn answers SIGTERM by finishing its requests (graceful) within its own timeout.
    return (f'command = {json.dumps(cmd)}\nworkers = {workers}\nconcurrency = 1\n'
            f'hosts = ["{host}"]\nenv = {{ MARKER = "{marker}" }}\n'
            '[queue]\nsize = 200\ntimeout = "10s"\n'
            '[reload]\ndrain_timeout = "5s"\n[stop]\ntimeout = "5s"\n')


def soak_vassals(a, tmp, marker):
    return {
        "be": backend_vassal(a.backend, "be", "be.test", 4, marker),
        "one": backend_vassal(a.backend, "one", "one.test", 2, marker,
                              'concurrency = 1\n[queue]\nsize = 200\ntimeout = "10s"\n'),
        "gun": gunicorn_vassal(tmp, "gun.test", 2, marker),
    }


class Chaos:
    def __init__(self, a, emp, tmp, vdir, logf):
        self.a, self.emp, self.tmp, self.vdir, self.logf = a, emp, tmp, vdir, logf
        self.actions = []  # {"kind", "t0", "t1", "detail"}
        self.rng = random.Random(a.seed)
        self.marker = 0
        self.churn = []
        self.churn_seq = 0
        self.stopped = set()  # pids under SIGSTOP now

    def note(self, kind, t0, detail):
        t1 = time.time()
        self.actions.append({"kind": kind, "t0": t0, "t1": t1, "detail": detail})
        stamp = time.strftime("%H:%M:%S", time.gmtime(t0)) + f".{int(t0 * 1000) % 1000:03d}"
        self.logf.write(f"{stamp} {kind}: {detail} ({t1 - t0:.2f} s)\n")
        self.logf.flush()

    @staticmethod
    def signal_worker(pid, sig):
        """Signals a worker's process group when it leads one (gunicorn's master and its
        worker process), else the pid. False when it is gone."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def workers(self):
        st = self.emp.status() or {"vassals": []}
        return [(v["name"], w["id"], w["pid"]) for v in st["vassals"] if v["name"] in
                ("be", "one", "gun") for w in v["workers"]
                if w.get("state") == "ready" and w.get("pid")]

    def worker_kill(self):
        ws = self.workers()
        if not ws:
            return
        name, wid, pid = self.rng.choice(ws)
        t0 = time.time()
        if not self.signal_worker(pid, signal.SIGKILL):
            return
        self.note("worker SIGKILL", t0, f"{name}/{wid} pid {pid}")

    def worker_stop(self):
        ws = [w for w in self.workers() if w[2] not in self.stopped]
        if not ws:
            return
        name, wid, pid = self.rng.choice(ws)
        secs = self.rng.uniform(1, 4)
        t0 = time.time()
        if not self.signal_worker(pid, signal.SIGSTOP):
            return
        self.stopped.add(pid)
        time.sleep(secs)
        self.signal_worker(pid, signal.SIGCONT)
        self.stopped.discard(pid)
        self.note("worker SIGSTOP", t0, f"{name}/{wid} pid {pid}, SIGCONT after {secs:.1f} s")

    def router_kill(self):
        st = self.emp.status()
        if not st or not st["router"].get("pid"):
            return
        pid = st["router"]["pid"]
        t0 = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return

        def replaced():
            s = self.emp.status(timeout=0.5)
            return bool(s and s["router"].get("pid") not in (None, pid))
        ok = wait_for(replaced, 20, 0.01)
        self.note("router SIGKILL", t0, f"pid {pid}; " + (
            f"new router after {time.time() - t0:.2f} s" if ok else "NO new router within 20 s"))

    def reload_storm(self):
        name = self.rng.choice(["be", "one", "gun"])
        n = self.rng.randint(3, 6)
        t0 = time.time()
        for _ in range(n):
            self.marker += 1
            write_atomic(os.path.join(self.vdir, f"{name}.toml"),
                         soak_vassals(self.a, self.tmp, f"m{self.marker}")[name])
            time.sleep(self.rng.uniform(0.1, 0.5))
        self.note("reload storm", t0, f"{name}.toml rewritten {n} times")

    def file_churn(self):
        t0 = time.time()
        if self.churn and (len(self.churn) >= 3 or self.rng.random() < 0.5):
            name = self.churn.pop(self.rng.randrange(len(self.churn)))
            os.unlink(os.path.join(self.vdir, f"{name}.toml"))
            self.note("file churn", t0, f"removed {name}.toml")
        else:
            self.churn_seq += 1
            name = f"churn{self.churn_seq}"
            write_atomic(os.path.join(self.vdir, f"{name}.toml"),
                         backend_vassal(self.a.backend, name, f"{name}.test", 1, "c"))
            self.churn.append(name)
            self.note("file churn", t0, f"added {name}.toml")

    def run(self, until):
        kinds = [(self.worker_kill, 30), (self.worker_stop, 20), (self.router_kill, 15),
                 (self.reload_storm, 15), (self.file_churn, 20)]
        funcs, weights = zip(*kinds)
        while time.time() < until - 2:
            time.sleep(self.rng.uniform(self.a.min_interval, self.a.max_interval))
            if time.time() >= until - 2:
                break
            self.rng.choices(funcs, weights)[0]()

    def release(self):
        for pid in list(self.stopped):
            self.signal_worker(pid, signal.SIGCONT)


# ---------------------------------------------------------------- attribution
KILLS = ("router SIGKILL", "worker SIGKILL")
SLACK = 0.005  # clocks are the same; this covers the time between kill() and time.time()


def attribute(f, actions, drain=5.0):
    """(action kind or "none", True when it is the expected cost of a killed process)."""
    for act in actions:
        if act["kind"] == "router SIGKILL":
            # A request on a connection the killed router held: in flight, or sent on it
            # before the client could see the connection was gone. The time is read before
            # kill(), so a connection opened after it went to the next router (or waits for it).
            if f["opened"] and f["opened"] < act["t0"] and f["t1"] >= act["t0"] - SLACK:
                return act["kind"], True
        elif act["kind"] == "worker SIGKILL":
            if f["t0"] <= act["t0"] + SLACK and f["t1"] >= act["t0"] - SLACK:
                return act["kind"], True
    for act in actions:  # not a killed process's: the action whose window it falls in
        hold = drain if act["kind"] in ("reload storm", "file churn") else 1.0
        if f["t0"] <= act["t1"] + hold and f["t1"] >= act["t0"] - SLACK:
            return act["kind"], False
    return "none", False


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def parse_wrk(out):
    def num(pattern):
        m = re.search(pattern, out)
        return [int(x) for x in m.groups()] if m else None
    total = num(r"(\d+) requests in")
    sock = num(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)") or [0] * 4
    non2xx = num(r"Non-2xx or 3xx responses: (\d+)") or [0]
    return {"requests": total[0] if total else None, "non2xx": non2xx[0],
            "connect": sock[0], "read": sock[1], "write": sock[2], "timeout": sock[3]}


def soak(a, out):
    with tempfile.TemporaryDirectory(prefix="liege-chaos.") as tmp:
        with open(os.path.join(tmp, "chaos_app.py"), "w") as f:
            f.write(WSGI_APP)
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        for name, text in soak_vassals(a, tmp, "m0").items():
            write_atomic(os.path.join(vdir, f"{name}.toml"), text)
        logpath = os.path.join(out, "soak-liege.log")
        emp = Liege(a.liege, tmp, vdir, logpath)
        if not wait_for(lambda: emp.ready(["be", "one", "gun"]), 30, 0.1):
            raise RuntimeError("the soak's vassals did not become ready; see " + logpath)
        stop_event = threading.Event()
        plan = [("be.test", "/id")] * a.clients_be + [("one.test", "/slow?ms=5")] * a.clients_one \
            + [("gun.test", "/")] * a.clients_gun
        clients = [Client(emp.port, h, p, stop_event) for h, p in plan]
        with open(os.path.join(out, "soak-chaos.log"), "w") as clog:
            chaos = Chaos(a, emp, tmp, vdir, clog)
            t_start = time.time()
            until = t_start + a.duration
            wrk = None
            if a.wrk_connections > 0:
                wrk = subprocess.Popen(
                    ["wrk", "-t1", f"-c{a.wrk_connections}", f"-d{int(a.duration)}s",
                     "--timeout", "10s", "-H", "Host: be.test", f"http://127.0.0.1:{emp.port}/id"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    start_new_session=True)
                STARTED.append(wrk)
            for c in clients:
                c.start()
            try:
                chaos.run(until)
                while time.time() < until:
                    time.sleep(0.1)
            finally:
                chaos.release()
                stop_event.set()
                for c in clients:
                    c.join(15)
            wrk_out = ""
            if wrk is not None:
                wrk_out, _ = wrk.communicate(timeout=60)
                STARTED.remove(wrk)
                with open(os.path.join(out, "soak-wrk.txt"), "w") as f:
                    f.write(wrk_out)
            elapsed = time.time() - t_start
        final = emp.status() or {}
        with open(os.path.join(out, "soak-status.json"), "w") as f:
            json.dump(final, f, indent=1)
        stop(emp.proc)
        emp.log.close()
    failures = sorted((f for c in clients for f in c.failures), key=lambda f: f["t0"])
    for f in failures:
        f["action"], f["expected"] = attribute(f, chaos.actions)
    with open(os.path.join(out, "soak-failures.tsv"), "w") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["t0", "t1", "host", "cause", "conn_opened", "conn_carried", "action",
                    "expected"])
        for x in failures:
            w.writerow([f"{x['t0']:.3f}", f"{x['t1']:.3f}", x["host"], x["cause"],
                        f"{x['opened']:.3f}", x["carried"], x["action"], int(x["expected"])])
    with open(logpath) as f:
        liege_log = f.read()
    report_soak(a, elapsed, clients, failures, chaos.actions, parse_wrk(wrk_out) if wrk_out
                else None, final, liege_log, t_start)


def report_soak(a, elapsed, clients, failures, actions, wrk, final, liege_log, t_start):
    print(f"## Chaos soak: {elapsed:.0f} s under load\n")
    counts = collections.Counter(x["kind"] for x in actions)
    print("Chaos actions: " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) +
          f" ({len(actions)} in all, one every {a.min_interval:g}-{a.max_interval:g} s; "
          f"seed {a.seed}).\n")
    restarts = [float(m) for m in re.findall(r"new router after ([\d.]+) s",
                                             " ".join(x["detail"] for x in actions))]
    if restarts:
        print(f"Router SIGKILL to a new router answering /status: median "
              f"{statistics.median(restarts) * 1000:.0f} ms, max {max(restarts) * 1000:.0f} ms "
              f"(in order: {', '.join(f'{x:.2f}' for x in restarts)} s; the emperor restarts a "
              f"crashed router after 100 ms doubling to at most 1 s, which 10 s of serving "
              f"resets).\n")
    print("| vassal | clients | requests | ok | failed | in flight on a killed process | "
          "other failures | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for host in ("be.test", "one.test", "gun.test"):
        cs = [c for c in clients if c.host == host]
        if not cs:
            continue
        lat = [x for c in cs for x in c.latencies]
        fs = [f for f in failures if f["host"] == host]
        ok = sum(c.ok for c in cs)
        exp = sum(1 for f in fs if f["expected"])
        print(f"| {host.split('.')[0]} (`{cs[0].path}`) | {len(cs)} | {ok + len(fs)} | {ok} | "
              f"{len(fs)} | {exp} | {len(fs) - exp} | {pct(lat, 50) * 1000:.1f} | "
              f"{pct(lat, 99) * 1000:.1f} | {max(lat) * 1000 if lat else float('nan'):.0f} |")
    total_ok = sum(c.ok for c in clients)
    exp = sum(1 for f in failures if f["expected"])
    print(f"| all | {len(clients)} | {total_ok + len(failures)} | {total_ok} | {len(failures)} | "
          f"{exp} | {len(failures) - exp} | | | |\n")
    if failures:
        print("Failed requests by cause and by the action they fall under (client threads):\n")
        print("| cause | action | in flight on a killed process | count |")
        print("| --- | --- | --- | ---: |")
        by = collections.Counter((f["cause"], f["action"], f["expected"]) for f in failures)
        for (cause, act, e), n in sorted(by.items(), key=lambda kv: (-kv[0][2], -kv[1])):
            print(f"| {cause} | {act} | {'yes' if e else '**no**'} | {n} |")
        print()
        per_kill = collections.Counter()
        for f in failures:
            if f["expected"]:
                per_kill[f["action"]] += 1
        for kind in KILLS:
            if counts.get(kind):
                print(f"- {kind}: {per_kill[kind]} failed requests over {counts[kind]} kills "
                      f"({per_kill[kind] / counts[kind]:.2f} per kill).")
        print()
    other = [f for f in failures if not f["expected"]]
    if other:
        print("Failures beyond requests in flight on a killed process (the first 30), each with "
              "the chaos actions around it:\n")
        print("| t (s) | vassal | cause | connection opened / requests carried | actions within "
              "±6 s (t, kind, detail) |")
        print("| ---: | --- | --- | --- | --- |")
        for f in other[:30]:
            near = [x for x in actions if abs(x["t0"] - f["t0"]) < 6 or
                    x["t0"] <= f["t0"] <= x["t1"]]
            desc = "; ".join(f"{x['t0'] - t_start:.1f} {x['kind']} ({x['detail']})"
                             for x in near) or "none"
            print(f"| {f['t0'] - t_start:.2f} | {f['host'].split('.')[0]} | {f['cause']} | "
                  f"{f['opened'] - t_start:.2f} / {f['carried']} | {desc} |")
        print()
    if wrk:
        errs = wrk["connect"] + wrk["read"] + wrk["write"] + wrk["timeout"] + wrk["non2xx"]
        print(f"wrk (`-t1 -c{a.wrk_connections} --timeout 10s`, `be`'s `/id`, alongside): "
              f"{wrk['requests']} requests, {errs} errors: non-2xx {wrk['non2xx']}, socket "
              f"connect {wrk['connect']}, read {wrk['read']}, write {wrk['write']}, "
              f"timeout {wrk['timeout']} (wrk does not say when, so these are not attributed; "
              f"a read error is a connection closed or reset under it).\n")
    if final:
        rs = final.get("router", {})
        print(f"At the end: router pid {rs.get('pid')}, " + ", ".join(
            f"{v['name']} {v['workers_ready']}/{v['workers_total']} ready, "
            f"{v.get('restarts', 0)} restarts, router_errors {v.get('router_errors')}"
            for v in final.get("vassals", [])) + ".\n")
    lines = [ln for ln in liege_log.splitlines() if re.search(r"\b(error|critical)\b", ln)]
    ours = [ln for ln in lines if "exited unexpectedly: killed by SIGKILL" in ln]
    lines = [ln for ln in lines if ln not in ours]
    print(f"liege's log: {len(ours)} error lines for the workers this script SIGKILLed, and "
          f"{len(lines)} other error-level lines" + (" (first 10):\n" if lines else ".\n"))
    if lines:
        print("```")
        for ln in lines[:10]:
            print(ln[:200])
        print("```\n")


# ---------------------------------------------------------------- slowhttptest
ATTACKS = {
    "H": ("slow headers", ["-H", "-i", "10", "-s", "8192", "-t", "GET", "-x", "24"], "/"),
    "B": ("slow body", ["-B", "-i", "10", "-s", "8192", "-t", "POST", "-x", "10"], "/"),
    "X": ("slow read", ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"], "/big"),
}


def probe_loop(port, stop_event, results):
    while not stop_event.is_set():
        t = time.time()
        status, secs = http_once(port, "probe.test", "/", timeout=10.0)
        results.append((t, status, secs))
        stop_event.wait(max(0.0, 1.0 - (time.time() - t)))


def slowhttptest_summary(prefix):
    """(seconds with the service unavailable, seconds, max connected) from slowhttptest's csv."""
    path = prefix + ".csv"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return None
    head = [h.strip().lower() for h in rows[0]]
    try:
        avail, conn = head.index("service available"), head.index("connected")
    except ValueError:
        return None
    data = [r for r in rows[1:] if len(r) > avail]
    down = sum(1 for r in data if r[avail].strip() == "0")
    return down, len(data), max(int(r[conn]) for r in data)


def slow(a, out):
    rows = []
    with tempfile.TemporaryDirectory(prefix="liege-slow.") as tmp:
        with open(os.path.join(tmp, "chaos_app.py"), "w") as f:
            f.write(WSGI_APP)
        vdir = os.path.join(tmp, "vassals.d")
        os.mkdir(vdir)
        write_atomic(os.path.join(vdir, "gun.toml"), gunicorn_vassal(tmp, "*", 2, "s"))
        emp = Liege(a.liege, tmp, vdir, os.path.join(out, "slow-liege.log"),
                    [f"--router-opt={o}" for o in a.router_opt])
        if not wait_for(lambda: emp.ready(["gun"]), 30, 0.1):
            raise RuntimeError("the slow test's vassal did not become ready")
        gport, nport = free_port(), free_port()
        glog = open(os.path.join(out, "slow-gunicorn.log"), "w")
        gun = start(["gunicorn", "--chdir", tmp, "-w", "2", "-k", "sync", "-b",
                     f"127.0.0.1:{gport}", "chaos_app:application"], glog)
        os.makedirs(os.path.join(tmp, "nginx"), exist_ok=True)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            n = os.path.join(tmp, "nginx")
            f.write(f"""worker_processes 2;
worker_rlimit_nofile 20000;
pid {n}/nginx.pid;
error_log {os.path.join(out, 'slow-nginx.error.log')} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {n}/body;
    proxy_temp_path {n}/proxy;
    fastcgi_temp_path {n}/fastcgi;
    uwsgi_temp_path {n}/uwsgi;
    scgi_temp_path {n}/scgi;
    upstream app {{ server 127.0.0.1:{gport}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{nport};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
        nlog = open(os.path.join(out, "slow-nginx.out"), "w")
        ngx = start(["nginx", "-p", tmp, "-e", os.path.join(out, "slow-nginx.error.log"), "-c",
                     conf, "-g", "daemon off;"], nlog)
        targets = {"liege": emp.port, "nginx": nport}
        for name, port in targets.items():
            if not wait_for(lambda: http_once(port, "x", "/")[0] == 200, 20, 0.1):
                raise RuntimeError(f"{name} does not answer before the slow tests")
        try:
            for mode in a.attacks:
                label, args, path = ATTACKS[mode]
                for name, port in targets.items():
                    prefix = os.path.join(out, f"slow-{mode}-{name}")
                    results = []
                    ev = threading.Event()
                    pt = threading.Thread(target=probe_loop, args=(port, ev, results), daemon=True)
                    with open(prefix + ".txt", "w") as sout:
                        sl = start(["slowhttptest", *args, "-c", str(a.slow_connections), "-r",
                                    str(a.slow_rate), "-l", str(a.slow_seconds), "-p", "3",
                                    "-g", "-o", prefix, "-u", f"http://127.0.0.1:{port}{path}"],
                                   sout)
                        pt.start()
                        try:
                            sl.wait(timeout=a.slow_seconds + 120)
                        except subprocess.TimeoutExpired:
                            pass
                        stop(sl, signal.SIGINT)
                        ev.set()
                        pt.join(15)
                    with open(prefix + ".txt") as f:
                        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())  # colours
                    m = re.search(r"Exit status: ([^\n]*)", text)
                    avail = re.findall(r"service available:\s*(\w+)", text)
                    ok = [r for r in results if r[1] == 200]
                    lat = [r[2] for r in ok]
                    rows.append({"mode": mode, "label": label, "target": name,
                                 "probes": len(results), "ok": len(ok),
                                 "statuses": collections.Counter(str(r[1]) for r in results
                                                                 if r[1] != 200),
                                 "p50": pct(lat, 50), "max": max(lat) if lat else float("nan"),
                                 "summary": slowhttptest_summary(prefix),
                                 "exit": m.group(1).strip() if m else "?",
                                 "last": avail[-1] if avail else "?"})
                    print(f"slow {mode} {name}: {len(ok)}/{len(results)} probes ok",
                          file=sys.stderr)
                    time.sleep(a.slow_pause)
                    wait_for(lambda: http_once(port, "x", "/", 2)[0] == 200, 30, 0.5)
        finally:
            stop(ngx, signal.SIGQUIT)
            stop(gun)
            stop(emp.proc)
            emp.log.close()
            glog.close()
            nlog.close()
    print("## slowhttptest: liege and nginx side by side\n")
    print(f"`slowhttptest -c {a.slow_connections} -r {a.slow_rate} -l {a.slow_seconds} -p 3` "
          "with the mode's options below, against a gunicorn sync app with 2 worker processes: "
          "behind liege (a vassal of `workers = 2`, `concurrency = 1`, each `gunicorn -w 1`; "
          "router settings " + (", ".join(a.router_opt) or "the defaults") + ") and behind "
          "nginx (`worker_processes 2`, `proxy_pass` to `gunicorn -w 2`, nginx's default "
          "timeouts and request buffering). A probe sends `GET /` on a new connection every "
          "second during the attack (10 s timeout).\n")
    print("| attack | options | target | probes ok | probe p50 ms | probe max ms | failed probes | "
          "slowhttptest: seconds unavailable / seconds, max connected | its last verdict | its exit |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |")
    for r in rows:
        s = r["summary"]
        summ = f"{s[0]} / {s[1]}, {s[2]}" if s else "n/a"
        fails = ", ".join(f"{k if k != 'None' else 'no response'} x{n}"
                          for k, n in r["statuses"].items()) or "none"
        print(f"| {r['label']} | `{' '.join(ATTACKS[r['mode']][1])}` `{ATTACKS[r['mode']][2]}` | "
              f"{r['target']} | {r['ok']}/{r['probes']} | {r['p50'] * 1000:.1f} | "
              f"{r['max'] * 1000:.0f} | {fails} | {summ} | service available: {r['last']} | "
              f"{r['exit']} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("liege")
    ap.add_argument("backend")
    ap.add_argument("out")
    ap.add_argument("--measure", default="soak,slow")
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--min-interval", type=float, default=1.0)
    ap.add_argument("--max-interval", type=float, default=4.0)
    ap.add_argument("--clients-be", type=int, default=4)
    ap.add_argument("--clients-one", type=int, default=2)
    ap.add_argument("--clients-gun", type=int, default=2)
    ap.add_argument("--wrk-connections", type=int, default=16)
    ap.add_argument("--attacks", default="H,B,X")
    ap.add_argument("--slow-connections", type=int, default=500)
    ap.add_argument("--slow-rate", type=int, default=200)
    ap.add_argument("--slow-seconds", type=int, default=30)
    ap.add_argument("--slow-pause", type=float, default=5)
    ap.add_argument("--router-opt", action="append", default=[])
    a = ap.parse_args()
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    a.attacks = [x for x in a.attacks.split(",") if x]
    for x in a.attacks:
        if x not in ATTACKS:
            raise SystemExit(f"unknown attack {x!r} (known: {', '.join(ATTACKS)})")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        measure = a.measure.split(",")
        if "soak" in measure:
            soak(a, a.out)
        if "slow" in measure:
            slow(a, a.out)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
