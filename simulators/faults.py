"""Fault injection for the simulated devices: what can go wrong, and a control channel to make it go wrong.

Faults (`Fault`), and what a client sees:

- `refuse`: nothing listens on the device's port: connecting fails with
  "connection refused". Existing connections are closed too (the device is
  off). Clearing the fault listens on the same port again.
- `drop`: the device closes every open connection now, and while the fault is
  active closes each new connection when its first request arrives (a device
  that keeps resetting its TCP stack). The client sees the connection lost.
- `silent`: requests are read and never answered: the client times out. Behind
  the gateway this is per unit id, so one silent meter can make a client that
  drops its connection after unanswered requests lose all units (DOMAIN.md).
- `slow`: answers arrive `delay_s` late (per unit id).
- `busy`: every request is answered with Modbus exception 6 (server device busy).
- `frozen`: the device answers, but its readings stop changing (a hung meter
  firmware); writes are still accepted.

`refuse` and `drop` act on a TCP endpoint, so for a unit behind the gateway they
affect every unit there; the others are per device. The MQTT device supports
`drop` (disconnects from the broker, reconnects when cleared), `silent` (stops
publishing), `slow` (publishes late) and `frozen`.

Decisions:
- Faults are state, not events: each stays active until cleared, so a test
  can hold a fault across several client retries and then clear it.
- The control channel is JSON lines over TCP on loopback (one request object
  per line, one answer per line), because a test that runs `hubctl simulate`
  as a subprocess needs nothing but a socket to reach it, and a broker is not
  always there. Requests: `{"op": "status"}`, `{"op": "inject", "device": ID,
  "fault": NAME, "delay_s": 2.0}`, `{"op": "clear", "device": ID, "fault":
  NAME}` (no fault: clear all of that device's faults). Answers carry
  `"ok": true` or `"ok": false, "error": "..."`. The park's `status` adds its
  clock (`t_s`), where everything listens and, per company, the energy up to
  `t_s` (`energy_kwh`: `pv` given and `pv_available`, what the sun offered):
  the truth a test holds a gateway's curtailment estimate against.
- Unknown devices or faults, and faults a device does not support, are errors
  answered on the channel (`FaultError` in process), never ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from simulators.connections import ConnectionSet

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

_MAX_LINE_BYTES = 64 * 1024


class Fault(StrEnum):
    REFUSE = "refuse"
    DROP = "drop"
    SILENT = "silent"
    SLOW = "slow"
    BUSY = "busy"
    FROZEN = "frozen"


ENDPOINT_FAULTS = frozenset({Fault.REFUSE, Fault.DROP})
UNIT_FAULTS = frozenset({Fault.SILENT, Fault.SLOW, Fault.BUSY, Fault.FROZEN})
DEFAULT_DELAY_S = 2.0


class FaultError(ValueError):
    """A fault request that cannot be carried out: unknown device or fault, or one the device lacks."""


@dataclass(slots=True)
class FaultSet:
    """The faults active on one device or endpoint, with the delay of `slow`."""

    active: set[Fault] = field(default_factory=set)
    delay_s: float = DEFAULT_DELAY_S

    def __contains__(self, fault: object) -> bool:
        return fault in self.active

    def add(self, fault: Fault, delay_s: float | None = None) -> None:
        if delay_s is not None:
            if not (math.isfinite(delay_s) and 0 <= delay_s <= 600):
                raise FaultError(f"delay_s must lie in 0..600 s, got {delay_s!r}")
            self.delay_s = delay_s
        self.active.add(fault)

    def discard(self, fault: Fault | None = None) -> None:
        if fault is None:
            self.active.clear()
        else:
            self.active.discard(fault)

    def names(self) -> list[str]:
        return sorted(f.value for f in self.active)


class FaultTarget(Protocol):
    """A simulated device that takes faults."""

    @property
    def device_id(self) -> str: ...

    @property
    def supported_faults(self) -> frozenset[Fault]: ...

    async def inject(self, fault: Fault, delay_s: float | None) -> None: ...

    async def clear(self, fault: Fault | None) -> None: ...

    def fault_names(self) -> list[str]: ...


def parse_fault(name: object) -> Fault:
    try:
        return Fault(str(name))
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise FaultError(f"unknown fault {name!r} (known: {known})") from None


class FaultControl:
    """The in-process control API: devices register here; tests and the control channel inject faults."""

    def __init__(self) -> None:
        self._targets: dict[str, FaultTarget] = {}
        self._status_extra: Callable[[], dict[str, Any]] | None = None

    def register(self, target: FaultTarget) -> None:
        if target.device_id in self._targets:
            raise ValueError(f"device {target.device_id!r} is registered twice")
        self._targets[target.device_id] = target

    def set_status_extra(self, extra: Callable[[], dict[str, Any]]) -> None:
        """Add what `status` reports beyond the faults (the park's clock, the listening addresses)."""
        self._status_extra = extra

    def _target(self, device_id: str) -> FaultTarget:
        try:
            return self._targets[device_id]
        except KeyError:
            raise FaultError(f"unknown device {device_id!r}") from None

    async def inject(self, device_id: str, fault: Fault | str, delay_s: float | None = None) -> None:
        target = self._target(device_id)
        f = parse_fault(fault)
        if f not in target.supported_faults:
            supported = ", ".join(sorted(x.value for x in target.supported_faults))
            raise FaultError(
                f"device {device_id!r} does not support fault {f.value!r} (it supports {supported})"
            )
        await target.inject(f, delay_s)
        log.info("%s: fault %s injected", device_id, f.value)

    async def clear(self, device_id: str, fault: Fault | str | None = None) -> None:
        target = self._target(device_id)
        f = None if fault is None else parse_fault(fault)
        await target.clear(f)
        log.info("%s: fault %s cleared", device_id, "all" if f is None else f.value)

    async def clear_all(self) -> None:
        for target in self._targets.values():
            await target.clear(None)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"faults": {d: t.fault_names() for d, t in sorted(self._targets.items())}}
        if self._status_extra is not None:
            out.update(self._status_extra())
        return out

    async def handle(self, request: object) -> dict[str, Any]:
        """Answer one control request (the JSON-lines protocol of the module docstring)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request must be a JSON object"}
        op = request.get("op")
        try:
            if op == "status":
                return {"ok": True, **self.status()}
            if op in {"inject", "clear"}:
                await self._change(op, request)
                return {"ok": True}
        except FaultError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown op {op!r} (known: status, inject, clear)"}

    async def _change(self, op: str, request: dict[str, Any]) -> None:
        device = request.get("device")
        if not isinstance(device, str):
            raise FaultError(f"{op!r} needs a device id")
        fault = request.get("fault")
        if op == "clear":
            await self.clear(device, None if fault is None else str(fault))
            return
        delay = request.get("delay_s")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
            raise FaultError("delay_s must be a number")
        await self.inject(device, str(fault), None if delay is None else float(delay))


class ControlServer:
    """JSON lines over TCP on loopback, answering with `FaultControl.handle`."""

    def __init__(self, control: FaultControl, host: str = "127.0.0.1", port: int = 0) -> None:
        self._control = control
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections = ConnectionSet(self._session)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("control server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connections.serve, self._host, self._port, limit=_MAX_LINE_BYTES
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._connections.drop_all()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except json.JSONDecodeError as exc:
                    answer: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    answer = await self._control.handle(request)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (asyncio.LimitOverrunError, ValueError):
            return  # an oversized request ends that connection only


async def control_request(
    host: str, port: int, request: dict[str, Any], timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one request to a `ControlServer` and return its answer (for tests and tools)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise TypeError(f"control answer is not an object: {answer!r}")
    return answer
