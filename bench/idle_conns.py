#!/usr/bin/env python3
"""Open many idle HTTP/1.1 keep-alive connections to a proxy and hold them.

Each connection sends one request, reads the whole response, and then stays
open without sending anything: the state a proxy is in with thousands of idle
browsers or API clients. bench/run.sh samples the proxy's RSS while they are
held.

Protocol with the caller (stdout, one line each, flushed):
    ready held=N bad_status=B failed=F pending=P seconds=S
        once every connection has either got its response or failed, or at
        --open-timeout, or when none made progress for --stall-timeout;
        "pending" ones were still waiting for a response (for example queued
        behind a proxy's connection limit) and are not counted as held.
    done held=N closed_by_peer=C
        after SIGTERM/SIGINT (or --hold-timeout): how many held connections
        the proxy closed while they were held.

Exit status: 0 when every connection was held and none was closed by the
proxy, 1 otherwise, 2 on a usage error.
"""

import argparse
import errno
import resource
import selectors
import signal
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "state", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connecting"
        self.buf = b""


def response_complete(buf):
    """Return (done, status) for a response read so far; status is None until known."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False, None
    head = buf[:head_end].decode("latin-1")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return True, -1
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = buf[head_end + 4:]
    if chunked:
        return body.endswith(b"0\r\n\r\n"), status
    if length is None:
        # No framing: the proxy would have to close to end the body; treat the
        # headers as the whole answer so the connection is still held.
        return True, status
    return len(body) >= length, status


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"idle_conns: fd limit {soft} is below the {needed} needed", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200,
                    help="connections at most in the connect/request phase at once")
    ap.add_argument("--path", default="/")
    ap.add_argument("--open-timeout", type=float, default=60.0,
                    help="seconds allowed to open all connections")
    ap.add_argument("--stall-timeout", type=float, default=5.0,
                    help="stop opening when no connection made progress for this long")
    ap.add_argument("--hold-timeout", type=float, default=600.0,
                    help="seconds to hold them at most if never signalled")
    args = ap.parse_args()

    raise_fd_limit(args.count + 64)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               "User-Agent: liege-bench-idle\r\n\r\n").encode()

    stop = False

    def on_signal(_signo, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sel = selectors.DefaultSelector()
    held = []
    active = 0
    started = 0
    failed = 0
    bad_status = 0
    t0 = time.monotonic()
    deadline = t0 + args.open_timeout
    last_progress = t0

    def finish(conn, ok):
        nonlocal active, failed
        active -= 1
        sel.unregister(conn.sock)
        if ok:
            conn.state = "held"
            conn.buf = b""
            held.append(conn)
        else:
            failed += 1
            conn.sock.close()

    while (started < args.count or active > 0) and not stop and time.monotonic() < deadline:
        if time.monotonic() - last_progress > args.stall_timeout:
            break  # e.g. the rest are queued behind a proxy's connection limit
        while started < args.count and active < args.concurrency:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            err = s.connect_ex((args.host, args.port))
            if err not in (0, errno.EINPROGRESS):
                failed += 1
                s.close()
                continue
            c = Conn(s)
            sel.register(s, selectors.EVENT_WRITE, c)
            active += 1
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            last_progress = time.monotonic()
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, False)
                    continue
                try:
                    c.sock.send(request)  # small enough to go in one send
                except OSError:
                    finish(c, False)
                    continue
                c.state = "reading"
                sel.modify(c.sock, selectors.EVENT_READ, c)
            else:
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    finish(c, False)
                    continue
                if not data:
                    finish(c, False)
                    continue
                c.buf += data
                done, status = response_complete(c.buf)
                if done:
                    if status != 200:
                        bad_status += 1
                    finish(c, True)

    pending = active
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)  # pending ones stay open but are not watched
    print(f"ready held={len(held)} bad_status={bad_status} failed={failed} pending={pending} "
          f"seconds={time.monotonic() - t0:.1f}", flush=True)

    # Hold: watch the held connections; any readable event means the proxy
    # closed one (or sent something unasked, which counts the same).
    for c in held:
        sel.register(c.sock, selectors.EVENT_READ, c)
    closed = 0
    hold_deadline = time.monotonic() + args.hold_timeout
    while not stop and time.monotonic() < hold_deadline:
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            if c.state == "held":
                c.state = "closed"
                closed += 1
                sel.unregister(c.sock)
    # One last non-blocking sweep so a close that raced the signal is counted.
    for key, _ in sel.select(timeout=0):
        c = key.data
        if c.state == "held":
            c.state = "closed"
            closed += 1
    print(f"done held={len(held)} closed_by_peer={closed}", flush=True)
    ok = len(held) == args.count and bad_status == 0 and closed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
