"""Process helpers the benchmarks share: a free loopback port, and stopping a server's process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes], poll_s: float = 0.05) -> None:
    """SIGTERM the server's process group, SIGKILL it after 10 s, and wait until the group is gone."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace  # the leader is reaped; wait for any other member of the group
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(poll_s)
    proc.wait()
