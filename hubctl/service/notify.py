"""systemd's notify protocol (sd_notify(3)): READY, WATCHDOG, STATUS and STOPPING over a datagram socket.

The whole protocol is one datagram of `KEY=value` lines to the AF_UNIX socket
named by `$NOTIFY_SOCKET` (a leading `@` names a Linux abstract socket). It is
a few lines, so hubctl speaks it itself rather than depend on a binding.

Decisions:
- **Best effort.** Without `$NOTIFY_SOCKET` (not under systemd, or not
  `Type=notify`) every call is a no-op. A failed send is logged once and never
  raised: losing a watchdog ping must not stop the control loop (systemd will
  act on the missing pings, which is the point).
- **Non-blocking.** The socket is non-blocking, so a wedged manager cannot
  stall the control cycle.
- **Watchdog interval** comes from `$WATCHDOG_USEC`, honoured only when
  `$WATCHDOG_PID` is absent or names this process (sd_watchdog_enabled(3)).
  hubctl pings after each completed cycle, which at 1 s is far more often than
  half the interval the unit sets.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Self

log = logging.getLogger("hubctl.notify")  # the name the journal has always shown


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages to `socket_path` (None: do nothing)."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_s(self) -> float | None:
        """The unit's WatchdogSec, when the watchdog is on for this process."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1e6

    def send(self, *lines: str) -> bool:
        """Send one datagram; True when it went out."""
        if self.socket_path is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # noqa: FBT003 - the socket API
            self._sock.sendto("\n".join(lines).encode(), _address(self.socket_path))
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify to %s works again", self.socket_path)
        self._failed = False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping: writing fail-safe setpoints") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
