# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""The device interface: what every driver reads into and how its setpoints behave.

A `Device` reads into a `Reading` (every decoded point with its unit, None
where the device says "not implemented", and the role values power_kw,
soc_pct, ...) and takes the setpoints its role allows (`SetpointResult`), and
configures what it falls back to (`FallbackResult`). The drivers are
`hubctl.devices.mapped` (a register map), `hubctl.devices.sunspec` and
`hubctl.devices.mqtt`; `hubctl.devices.build_device` picks one for a config
entry. The drivers' own decisions are in their modules.

Decisions shared by every driver:

- **Setpoints are checked, written, read back.** A value outside the device's
  bounds raises SetpointOutOfBoundsError before anything is written (no silent
  clamping in a driver: its caller must know); a role, map or model that takes
  no such setpoint raises SetpointUnsupportedError. A read-back that differs
  by more than half a register step raises CommandNotConfirmedError
  (`confirmed`).
- **The device's own bounds** are read by `start()` (a map's write bounds, the
  SunSpec ratings, an MQTT device's configured bounds) and exposed by
  `setpoint_bounds_kw(kind)`, so that the setpoint writer clamps to what the
  device takes and reports a site config that promises more.
- **Revert timers**: where the device reverts a setpoint by itself, hubctl
  writes the timer with the setpoint and re-writes it before it runs out
  (the result's `refresh_every_s`). `refresh_due(now)` / `refresh(now)`
  expose that to a control loop. A dead controller thus leaves the device to
  its fallback.
- **Fallback values** (`configure_fallback`, called by the service at start,
  daily and when the caps change): what a device falls back to when its
  revert timer runs out. A driver without a fallback value register writes
  nothing; the result says so, logged once at info. `fallback_summary`
  says in one line what the device does once no controller writes
  (`hubctl read`), from a reading, without I/O.
- **Failures are logged as transitions**: once when a device starts failing,
  once when it recovers; the errors themselves are raised to the caller.
- **hubctl's own limit is never taken for the installer's** (#13 item 4). A limit the device
  keeps without a revert timer (Huawei's derating 40125, a SunSpec 123 limit written without a
  revert time under an installer's static limit) survives hubctl: at the next start it would look
  like an installer's limit and become the ceiling for good (56 kW of 219 kW from one routine
  stop on). With a `LimitRecord` (the service's, in the state directory) a driver records what
  the installer's limit was when it first saw the device (`RecordedLimit.installer`; None: no
  limit) and every value hubctl writes to such a limit, before it writes it (`written`: the
  last confirmed and the one in flight). At start (`_recall_limit`) a value hubctl wrote is
  hubctl's own: the installer's limit is the recorded one, and releasing the limit restores it;
  any other value is someone else's (the installer's, set since) and is recorded as the
  installer's. A value an installer sets equal to hubctl's last one cannot be told apart (it is
  taken for hubctl's). Without a record (no state directory) a limit found at start is the
  installer's, as before.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from hubctl.config.devices import DeviceRole
from hubctl.errors import (
    DeviceConfigError,
    DeviceError,
    SetpointOutOfBoundsError,
    SetpointUnsupportedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.config.devices import ModbusEndpoint

__all__ = [
    "DEFAULT_REVERT_S",
    "ROLE_UNITS",
    "Device",
    "FallbackResult",
    "LimitRecord",
    "Quantity",
    "Reading",
    "RecordedLimit",
    "SetpointResult",
    "confirmed",
    "kw_bounds_text",
    "modbus_endpoint",
    "unit_and_timeout",
]

log = logging.getLogger("hubctl.devices")  # the name the journal has always shown

DEFAULT_REVERT_S = 60.0
ROLE_UNITS = {
    "power_kw": "kW",
    "energy_import_kwh": "kWh",
    "energy_export_kwh": "kWh",
    "soc_pct": "%",
    "limit_pct": "%",
    "limit_kw": "kW",
    "setpoint_kw": "kW",
    "rated_kw": "kW",
}


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float | None
    unit: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of one device: role values (hubctl's signs) and every decoded point with its unit."""

    device_id: str
    role: DeviceRole
    read_at_s: float  # monotonic clock
    values: Mapping[str, float | None]
    point_values: Mapping[str, float | None]
    units: Mapping[str, str]  # point name -> unit (shared between readings of a device)
    stale: tuple[str, ...] = ()  # points too old to use (MQTT)

    @property
    def points(self) -> dict[str, Quantity]:
        """Every decoded point with its unit (built on demand: polling does not need it)."""
        units = self.units
        return {name: Quantity(value, units.get(name, "")) for name, value in self.point_values.items()}

    @property
    def power_kw(self) -> float | None:
        return self.values.get("power_kw")

    @property
    def soc_pct(self) -> float | None:
        return self.values.get("soc_pct")


@dataclass(frozen=True, slots=True)
class SetpointResult:
    """What a setpoint command did: asked, applied (after an installer's ceiling), read back."""

    device_id: str
    kind: str  # "pv_limit" | "battery"
    requested_kw: float
    applied_kw: float
    confirmed_kw: float | None  # read back from the device; None where it cannot be read (MQTT)
    limited_by: str | None = None
    refresh_every_s: float | None = None  # None: the device keeps it without refreshing


@dataclass(frozen=True, slots=True)
class FallbackResult:
    """What `configure_fallback` did: the value the device now falls back to, or why nothing was written."""

    device_id: str
    configured: bool  # False: nothing written, the device keeps its own (installer's) fallback
    detail: str  # what was written, or why nothing was
    fallback_kw: float | None = None  # battery: its power; PV: its limit (None: no limit)
    confirmed_kw: float | None = None  # read back


@dataclass(frozen=True, slots=True)
class RecordedLimit:
    """What a device's kept limit was before hubctl and what hubctl wrote to it (see the docstring)."""

    point: str  # the limit point (a map's point name, "123.WMaxLimPct"): a record of another is not used
    unit: str
    installer: float | None  # the installer's limit in the point's unit; None: none (no limit)
    written: tuple[float, ...] = ()  # what hubctl wrote: the last confirmed value and the one in flight


class LimitRecord(Protocol):
    """Where the drivers keep `RecordedLimit`s across restarts (the service's file in the state dir)."""

    def get(self, device_id: str) -> RecordedLimit | None: ...

    def put(self, device_id: str, entry: RecordedLimit) -> None: ...


@dataclass(slots=True)
class _Held:
    requested_kw: float
    written_at_s: float
    refresh_every_s: float | None

    def due(self, now: float) -> bool:
        return self.refresh_every_s is not None and now >= self.written_at_s + self.refresh_every_s


class Device(abc.ABC):
    """A device hubctl reads and, by role, commands. Subclasses implement `_read` and their setpoints."""

    kinds: ClassVar[dict[str, DeviceRole]] = {"pv_limit": DeviceRole.PV, "battery": DeviceRole.BATTERY}

    def __init__(self, config: DeviceConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.id = config.id
        self.role = config.role
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._failing: str | None = None
        self._no_fallback_logged = False
        self._bounds: dict[str, tuple[float, float]] = {}  # kind -> (low, high) kW, see setpoint_bounds_kw
        self.limit_record: LimitRecord | None = None  # set by the service before start(): see the docstring
        self._recorded: RecordedLimit | None = None  # this device's entry, once start() recalled it

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Check identity and read what setpoints must respect (installer limits, the device's own
        bounds: `setpoint_bounds_kw`). Idempotent."""

    @property
    def setpoint_kind(self) -> str | None:
        """The kind of setpoint this device's role takes ("pv_limit", "battery"), None for a meter."""
        return next((kind for kind, role in self.kinds.items() if role is self.role), None)

    def setpoint_bounds_kw(self, kind: str) -> tuple[float, float] | None:
        """The range of `kind` ("battery": -charge..+discharge kW; "pv_limit": 0..rating kW) the device
        takes, as read by `start()` (and updated when a setpoint finds them changed). None: not known
        (not started yet, or the device states none, or it takes no such setpoint)."""
        return self._bounds.get(kind)

    async def read(self) -> Reading:
        """Read the device once; raises a DeviceError subclass."""
        try:
            reading = await self._read()
        except DeviceError as exc:
            self._note_failure(exc)
            raise
        self._note_success()
        return reading

    @abc.abstractmethod
    async def _read(self) -> Reading: ...

    async def set_pv_limit_kw(self, kw: float) -> SetpointResult:
        """Limit PV output to `kw` (within the device's bounds), confirmed by read-back."""
        self._require("pv_limit")
        result = await self._set_pv_limit(kw)
        self._hold("pv_limit", result)
        return result

    async def set_battery_kw(self, kw: float) -> SetpointResult:
        """Battery power setpoint: + discharge / - charge (within the device's bounds), read back."""
        self._require("battery")
        result = await self._set_battery(kw)
        self._hold("battery", result)
        return result

    async def _set_pv_limit(self, kw: float) -> SetpointResult:  # noqa: ARG002 - overridden where supported
        raise SetpointUnsupportedError(f"{self.id}: this device takes no PV limit")

    async def _set_battery(self, kw: float) -> SetpointResult:  # noqa: ARG002 - overridden where supported
        raise SetpointUnsupportedError(f"{self.id}: this device takes no battery setpoint")

    async def configure_fallback(self, pv_limit_kw: float | None = None) -> FallbackResult:
        """Write what the device falls back to once no controller writes, and confirm it by read-back.

        A battery falls back to 0 kW (no charging from the grid, no export of stored energy); a PV
        inverter to `pv_limit_kw` (None: no limit), never above an installer's ceiling. A device
        without a fallback value register is left alone: the result says so (`configured` False)
        and it is logged once, at info. Raises a DeviceError subclass when a write fails.
        """
        if pv_limit_kw is not None and not (math.isfinite(pv_limit_kw) and pv_limit_kw >= 0):
            raise SetpointOutOfBoundsError(f"{self.id}: fallback PV limit {pv_limit_kw!r} kW is not >= 0")
        result = await self._configure_fallback(pv_limit_kw)
        if not result.configured and not self._no_fallback_logged:
            detail = result.detail.removeprefix("none: ")  # the summary's form; the line says "none" already
            log.info("%s: no fallback configured: %s", self.id, detail)
            self._no_fallback_logged = True
        return result

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:  # noqa: ARG002
        """Default: nothing to write (overridden where a device has a fallback value register)."""
        return self._no_fallback(
            f"driver {self.config.driver!r} has no fallback value register for a {self.role.value};"
            " the device keeps its own fallback"
        )

    def _no_fallback(self, detail: str) -> FallbackResult:
        return FallbackResult(self.id, configured=False, detail=detail)

    def fallback_summary(self, reading: Reading | None = None) -> str | None:
        """What the device does once no controller writes, in one line (`hubctl read`); None for a meter.

        From what the driver knows and `reading` (the device's points as last read; None: not read).
        No I/O: `hubctl read` never writes. Drivers say more where they know more.
        """
        del reading
        if self.setpoint_kind is None:
            return None
        return (
            f"none known: driver {self.config.driver!r} has no fallback or watchdog register;"
            " the device keeps the last setpoint"
        )

    def refresh_due(self, now: float | None = None) -> bool:
        """Whether a held setpoint must be re-written now (before the device's revert timer runs out)."""
        at = self.clock() if now is None else now
        return any(held.due(at) for held in self._held.values())

    async def refresh(self, now: float | None = None) -> list[SetpointResult]:
        """Re-write the held setpoints that are due."""
        at = self.clock() if now is None else now
        results = []
        for kind, held in list(self._held.items()):
            if held.due(at):
                setter = self._set_pv_limit if kind == "pv_limit" else self._set_battery
                result = await setter(held.requested_kw)
                self._hold(kind, result)
                results.append(result)
        return results

    async def release(self) -> None:
        """Stop holding setpoints and undo what the device would otherwise keep."""
        self._held.clear()

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the device holds of its own (connections are the pool's)."""

    def _check_bounds(self, kind: str, kw: float, low: float, high: float, where: str = "") -> None:
        """Note `kind`'s bounds (low..high kW) and raise SetpointOutOfBoundsError if `kw` is outside."""
        self._bounds[kind] = (low, high)
        if not math.isfinite(kw) or not low - 1e-9 <= kw <= high + 1e-9:
            raise SetpointOutOfBoundsError(
                f"{self.id}: {kw:g} kW is outside {kw_bounds_text(low, high)}{where}", low, high
            )

    def _recall_limit(
        self, point: str, unit: str, found: float | None, step: float, installer: float | None
    ) -> tuple[float | None, bool]:
        """The installer's limit for a kept limit point that reads `found` at start (`installer`: what
        that reading means as an installer's limit, None: none), and whether `found` is hubctl's own
        (a value hubctl wrote, per the record: see the module docstring). Without a record (no state
        directory) `installer` is taken as it reads."""
        record = self.limit_record
        entry = None if record is None else record.get(self.id)
        if entry is not None and entry.point != point:
            entry = None  # the device changed (another map or model): what was recorded does not apply
        if entry is not None and found is not None and any(confirmed(w, found, step) for w in entry.written):
            self._recorded = entry
            return entry.installer, True
        self._recorded = RecordedLimit(point, unit, installer)
        if record is not None and self._recorded != entry:
            record.put(self.id, self._recorded)
        return installer, False

    def _note_limit_writing(self, value: float) -> None:
        """Record `value` before hubctl writes it to the kept limit (with the last confirmed one)."""
        entry, record = self._recorded, self.limit_record
        if entry is None or record is None or value in entry.written:
            return
        self._recorded = RecordedLimit(entry.point, entry.unit, entry.installer, (*entry.written[-1:], value))
        record.put(self.id, self._recorded)

    def _note_limit_written(self, value: float) -> None:
        """`value` is confirmed in the kept limit: the only one hubctl's own from now on."""
        entry, record = self._recorded, self.limit_record
        if entry is None or record is None or entry.written == (value,):
            return
        self._recorded = RecordedLimit(entry.point, entry.unit, entry.installer, (value,))
        record.put(self.id, self._recorded)

    def _note_limit_released(self) -> None:
        """The installer's value (or no limit) is back in the kept limit: nothing in it is hubctl's."""
        entry, record = self._recorded, self.limit_record
        if entry is None or record is None or not entry.written:
            return
        self._recorded = RecordedLimit(entry.point, entry.unit, entry.installer)
        record.put(self.id, self._recorded)

    def _require(self, kind: str) -> None:
        if self.role is not self.kinds[kind]:
            what = "PV limit" if kind == "pv_limit" else "battery setpoint"
            raise SetpointUnsupportedError(f"{self.id}: a {self.role.value} takes no {what}")

    def _hold(self, kind: str, result: SetpointResult) -> None:
        self._held[kind] = _Held(result.requested_kw, self.clock(), result.refresh_every_s)

    def _note_failure(self, exc: DeviceError) -> None:
        if self._failing is None:
            log.warning("%s: %s failure: %s", self.id, exc.kind, exc)
        self._failing = exc.kind

    def _note_success(self) -> None:
        if self._failing is not None:
            log.info("%s: reading again after %s failures", self.id, self._failing)
        self._failing = None


def kw_bounds_text(low: float, high: float) -> str:
    return f"{low:g}..{high:g} kW"


def confirmed(applied: float, read_back: float, step: float) -> bool:
    """Whether a read-back agrees with what was written, to within half a register step."""
    return abs(read_back - applied) <= abs(step) / 2 + 1e-9 * max(1.0, abs(applied))


def modbus_endpoint(config: DeviceConfig) -> ModbusEndpoint:
    """The entry's modbus block; DeviceConfigError for a Modbus driver without one."""
    endpoint = config.modbus
    if endpoint is None:
        raise DeviceConfigError(f"{config.id}: driver {config.driver!r} needs a modbus block")
    return endpoint


def unit_and_timeout(config: DeviceConfig, default_unit: int, default_timeout_s: float) -> tuple[int, float]:
    """A Modbus device's unit id and timeout: the site config's where it sets them explicitly, else
    the driver's defaults (ModbusEndpoint has defaults of its own, which would otherwise always win)."""
    endpoint = modbus_endpoint(config)
    given = endpoint.model_fields_set
    unit_id = endpoint.unit_id if "unit_id" in given else default_unit
    timeout_s = endpoint.timeout_s if "timeout_s" in given else default_timeout_s
    return unit_id, timeout_s
