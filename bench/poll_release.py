#!/usr/bin/env python3
"""Time until a server answers with a given body: a vassal file's new release, or a new vassal.

Usage: bench/poll_release.py PORT HOST BODY [--rename SRC DST] [--interval 0.02] [--timeout 30]
                             [--trace FILE]

With --rename, renames SRC over DST first (a vassal file written beside its place) and times from
that rename; without it, from its own start. Then it sends GET / with that Host header on a fresh
connection every --interval seconds until the body is BODY (surrounding whitespace ignored), and
prints the seconds it took. After --timeout seconds it prints "nan" and exits 1. --trace appends
one line per poll: milliseconds since the start when it was sent and answered, status and body.
"""
import argparse
import os
import sys
import time

from emperor_bench import http_fetch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("host")
    ap.add_argument("body")
    ap.add_argument("--rename", nargs=2, metavar=("SRC", "DST"))
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--trace")
    a = ap.parse_args()
    trace = open(a.trace, "a") if a.trace else None
    want = a.body.strip().encode()

    t0 = time.perf_counter()
    if a.rename:
        os.rename(*a.rename)
    while True:
        sent = time.perf_counter()
        status, body = http_fetch(a.port, a.host, "/", timeout=1.0)
        now = time.perf_counter()
        if trace:
            trace.write(f"{(sent - t0) * 1000:.0f}\t{(now - t0) * 1000:.0f}\t{status}\t"
                        f"{' '.join(body.decode(errors='replace').split())}\n")
        if status == 200 and body.strip() == want:
            print(f"{now - t0:.3f}")
            return 0
        if now - t0 > a.timeout:
            print("nan")
            return 1
        time.sleep(max(0.0, a.interval - (time.perf_counter() - sent)))


if __name__ == "__main__":
    sys.exit(main())
