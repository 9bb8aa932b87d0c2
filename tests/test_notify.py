"""sd_notify over a real datagram socket: path and abstract addresses, watchdog env, best effort."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from hubctl.service.notify import Notifier

if TYPE_CHECKING:
    from pathlib import Path


def test_ready_watchdog_and_stopping_reach_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        try:
            assert notifier.ready("controlling")
            assert notifier.watchdog()
            assert notifier.stopping()
        finally:
            notifier.close()
        got = [server.recv(4096).decode() for _ in range(3)]
    assert got == [
        "READY=1\nSTATUS=controlling",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping: writing fail-safe setpoints",
    ]


def test_abstract_socket_address() -> None:
    name = f"hubctl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        notifier = Notifier(f"@{name}")
        try:
            assert notifier.watchdog()
        finally:
            notifier.close()
        assert server.recv(64) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_s is None


def test_watchdog_interval_only_for_this_process() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "10000000"}).watchdog_s == 10.0
    mine = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_s == 10.0
    other = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_env(other).watchdog_s is None


def test_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "absent.sock"))
    try:
        assert not notifier.watchdog()  # logged once, never raised: the control loop goes on
        assert not notifier.watchdog()
    finally:
        notifier.close()
