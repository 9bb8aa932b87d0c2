"""Per-device health, debounced: a device is `ok`, `degraded` or `down`, and only changes are logged.

A device starts `unknown`. Each poll or write reports a success or a failure
(with the typed `DeviceError`). The state moves:

- to `down` after `fail_after` failures in a row (a reconnect blip of one or
  two polls is not an outage);
- to `degraded` on a single failure of an `ok` device (shown, not logged);
- back to `ok` after `recover_after` successes in a row (a device that
  flaps between answering and not is not declared healthy on every answer).

Transitions into and out of `down` are logged once each (warning / info), with
the error kind and how long the outage lasted; nothing is logged while the
state holds. A failure that retrying cannot cure (`DeviceError.retry` is
False: a protocol or identity error, a rejected command) counts as `down`
at once: waiting will not fix a wrong register map.

Pure bookkeeping: the caller passes the (monotonic) time; no I/O but logging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubctl.errors import DeviceError

log = logging.getLogger("hubctl.health")  # the name the journal has always shown


class State(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(slots=True)
class DeviceHealth:
    state: State = State.UNKNOWN
    failures: int = 0  # in a row
    successes: int = 0  # in a row
    since_s: float = 0.0  # when the state was entered
    last_error: str | None = None
    outages: int = 0


class Health:
    """The health of every device of the site, debounced."""

    def __init__(self, device_ids: list[str], *, fail_after: int = 3, recover_after: int = 2) -> None:
        if fail_after < 1 or recover_after < 1:
            raise ValueError("fail_after and recover_after must be >= 1")
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.devices = {d: DeviceHealth() for d in device_ids}

    def state(self, device_id: str) -> State:
        return self.devices[device_id].state

    def ok(self, device_id: str, now_s: float) -> State:
        h = self.devices[device_id]
        h.successes += 1
        h.failures = 0
        if h.state in {State.UNKNOWN, State.DEGRADED}:
            self._enter(device_id, h, State.OK, now_s)
        elif h.state is State.DOWN and h.successes >= self.recover_after:
            log.info(
                "%s: recovered after %.0f s down (%s)", device_id, now_s - h.since_s, h.last_error or "?"
            )
            self._enter(device_id, h, State.OK, now_s)
        return h.state

    def failed(self, device_id: str, error: DeviceError, now_s: float) -> State:
        h = self.devices[device_id]
        h.failures += 1
        h.successes = 0
        h.last_error = f"{error.kind}: {error}"
        if h.state is State.DOWN:
            return h.state
        if h.failures >= self.fail_after or not error.retry:
            log.warning("%s: down (%s)", device_id, h.last_error)
            h.outages += 1
            self._enter(device_id, h, State.DOWN, now_s)
        elif h.state is not State.DEGRADED:
            self._enter(device_id, h, State.DEGRADED, now_s)
        return h.state

    @staticmethod
    def _enter(_device_id: str, h: DeviceHealth, state: State, now_s: float) -> None:
        h.state = state
        h.since_s = now_s

    def down(self) -> list[str]:
        return sorted(d for d, h in self.devices.items() if h.state is State.DOWN)

    def summary(self) -> dict[str, str]:
        return {d: h.state.value for d, h in self.devices.items()}
