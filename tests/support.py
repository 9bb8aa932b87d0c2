"""Helpers shared by the tests that start real servers and subprocesses on loopback."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path


def open_sockets() -> set[str]:
    """The sockets this process holds open (for leak checks)."""
    out = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:"):
                out.add(target)
    return out


def wait_for_port(port: int, what: str, timeout_s: float = 5.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port, or raise RuntimeError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.connect(("127.0.0.1", port))
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")
