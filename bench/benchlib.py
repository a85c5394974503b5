"""Helpers the bench scripts share: loopback ports, atomic vassal-file writes, bounded waits,
and reading a response to the end."""

import os
import socket
import time


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_atomic(path, text):
    """Writes a file the way a deploy tool does: a hidden temporary file renamed into place."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def wait_for(cond, timeout, interval=0.05):
    """Polls `cond` every `interval` s until it holds or `timeout` s have passed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def read_to_close(sock):
    """Every byte the peer sends until it closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
