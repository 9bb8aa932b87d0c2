# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Device drivers: a configured device plus its register map (or SunSpec) -> readings and setpoints.

Layers (python-kasa's split): `hubctl.modbus` is the transport, `hubctl.registers`
and `hubctl.sunspec` the protocol codecs, this module the device. A `Device`
reads into a `Reading` (every decoded point with its unit, None where the
device says "not implemented", and the role values power_kw, soc_pct, ...) and
takes the setpoints its role allows. `build_device` makes one from a config
entry: a map name from drivers/, "sunspec" or "mqtt" (`hubctl.mqtt_devices`).

Decisions:

- **Which unit id and timeout**: the site config's, when it sets them
  explicitly; otherwise the map's `default_unit_id` and `transport.timeout_s`
  (ModbusEndpoint has defaults of its own, which would otherwise always win).
- **Setpoints are checked, written, read back.** A value outside the map's
  bounds raises CommandRejectedError before anything is written (no silent
  clamping: the controller must know). A read-back that differs by more than
  half a register step raises CommandNotConfirmedError.
- **Installer limits are never loosened.** `start()` (run before the first
  setpoint) reads the device's limit point. A limit found then is the
  ceiling for every later PV limit, when it is static: for a map point one
  without a revert timer; for SunSpec 123/704 one that is enabled, below 100 %
  and has no revert time (hubctl always writes a revert time, so a limit with
  one may be hubctl's own from before a restart and is not taken as a
  ceiling). A larger request is applied as the ceiling and the result says so
  (`limited_by`).
- **Revert timers**: where the device reverts a setpoint by itself (SunSpec
  `*_RvrtTms`, a map point's `revert_s` or `revert_point`), hubctl writes the
  timer (`revert_s`, default 60 s) with the setpoint and re-writes it before it
  runs out: at the map's `refresh_s`, else half its `revert_s`, else a third
  of the timer hubctl wrote. `refresh_due(now)` / `refresh(now)` expose that to
  a control loop; `hold_setpoints` is a small async refresher. A dead
  controller thus leaves the device to its fallback (below). Exception: SunSpec
  123 with an installer's static limit. Its revert would fall back to "no
  limit", looser than the installer's, so hubctl then writes without a revert
  time (a dead controller leaves hubctl's limit, which is at most the
  installer's) and `release()` restores the installer's value. With 704 the
  revert value itself is at most the installer's limit instead.
- **Fallback values** (`configure_fallback`, called by the service at start,
  daily and when the caps change): what a device falls back to when its
  revert timer runs out, written and read back where the device has a
  register for it. SunSpec 704 battery: `WSetRvrt` = 0 W (and `WSetPctRvrt` =
  0 where implemented), `WSetEnaRvrt` = 1: always 0 kW, the fail-safe's rule.
  SunSpec 704 PV (no 123): `WMaxLimPctRvrt` = the given limit in % of the
  rating, rounded a register step down and never above the installer's
  ceiling, `WMaxLimPctEnaRvrt` = 1. Nothing is written (the result says so,
  logged once at info) for SunSpec 123 (it reverts to no limit), 124 (it
  reverts to the device's own mode and power), map devices (no map in
  drivers/ has a fallback value point: Victron ESS keeps its installer
  settings, Huawei's derating is persistent and its forcible mode ends by
  itself) and MQTT devices: they keep the installer's fallback.
- **SunSpec battery setpoints**: 704 `WSet` (W, + discharge) with
  `WSetRvrtTms`; else 124: `StorCtl_Mod` = 3 with the charge bound `InWRte`
  (% of WChaMax) and the discharge bound `OutWRte` (% of 120 MaxDisChaRte)
  both set to the wanted power, a negative rate forcing the other direction
  (the reading of 124 that Fronius and evcc use), with `InOutWRte_RvrtTms`.
  Bounds: 702/802 charge and discharge ratings (704), WChaMax and MaxDisChaRte
  (124). `release()` disables them (WSetEna = 0, StorCtl_Mod = 0).
- **Persistent setpoints** (a map point without revert, e.g. Huawei's
  derating): written once, not refreshed (flash wear); `release()` writes back
  the value read at start.
- **Failures are logged as transitions**: once when a device starts failing,
  once when it recovers; the errors themselves are raised to the caller.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, ClassVar

from hubctl.codec import sunspec
from hubctl.codec.registers import Access, Function, decode_reads, encode, load_map
from hubctl.config.devices import DeviceRole
from hubctl.drivers import DRIVERS_DIR
from hubctl.errors import (
    CommandNotConfirmedError,
    CommandRejectedError,
    DecodeError,
    DeviceBusyError,
    DeviceConfigError,
    DeviceError,
    DeviceIdentityError,
    DeviceProtocolError,
    DeviceUnavailableError,
    EncodeError,
    RegisterMapError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from hubctl.codec.registers import Point, ReadBlock, RegisterMap
    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.devices.mqtt import MqttHub
    from hubctl.transport.modbus import ConnectionPool, ModbusConnection

__all__ = [
    "CommandNotConfirmedError",
    "CommandRejectedError",
    "Device",
    "DeviceBusyError",
    "DeviceConfigError",
    "DeviceError",
    "DeviceIdentityError",
    "DeviceProtocolError",
    "DeviceUnavailableError",
    "FallbackResult",
    "ModbusMapDevice",
    "Quantity",
    "Reading",
    "SetpointResult",
    "SunSpecDevice",
    "build_device",
    "hold_setpoints",
    "read_all",
]

log = logging.getLogger("hubctl.devices")  # the name the journal has always shown

DEFAULT_DRIVERS = DRIVERS_DIR
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
_TIMER_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0}


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

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Check identity and read what setpoints must respect (installer limits). Idempotent."""

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
        raise CommandRejectedError(f"{self.id}: this device takes no PV limit")

    async def _set_battery(self, kw: float) -> SetpointResult:  # noqa: ARG002 - overridden where supported
        raise CommandRejectedError(f"{self.id}: this device takes no battery setpoint")

    async def configure_fallback(self, pv_limit_kw: float | None = None) -> FallbackResult:
        """Write what the device falls back to once no controller writes, and confirm it by read-back.

        A battery falls back to 0 kW (no charging from the grid, no export of stored energy); a PV
        inverter to `pv_limit_kw` (None: no limit), never above an installer's ceiling. A device
        without a fallback value register is left alone: the result says so (`configured` False)
        and it is logged once, at info. Raises a DeviceError subclass when a write fails.
        """
        if pv_limit_kw is not None and not (math.isfinite(pv_limit_kw) and pv_limit_kw >= 0):
            raise CommandRejectedError(f"{self.id}: fallback PV limit {pv_limit_kw!r} kW is not >= 0")
        result = await self._configure_fallback(pv_limit_kw)
        if not result.configured and not self._no_fallback_logged:
            log.info("%s: no fallback configured: %s", self.id, result.detail)
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

    def _require(self, kind: str) -> None:
        if self.role is not self.kinds[kind]:
            what = "PV limit" if kind == "pv_limit" else "battery setpoint"
            raise CommandRejectedError(f"{self.id}: a {self.role.value} takes no {what}")

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


def _kw_bounds_text(low: float, high: float) -> str:
    return f"{low:g}..{high:g} kW"


def _confirmed(applied: float, read_back: float, step: float) -> bool:
    return abs(read_back - applied) <= abs(step) / 2 + 1e-9 * max(1.0, abs(applied))


# --- Devices with a register map ---------------------------------------------------------------------------


@cache
def _load_map(path: Path) -> RegisterMap:
    return load_map(path)


@cache
def _shared_plan(register_map: RegisterMap, points: tuple[str, ...] | None) -> tuple[ReadBlock, ...]:
    """One read plan (and its decoding layouts) for all devices of a model: fewer objects to walk per poll."""
    return tuple(register_map.read_plan(points))


def _unit_and_timeout(config: DeviceConfig, default_unit: int, default_timeout_s: float) -> tuple[int, float]:
    endpoint = config.modbus
    if endpoint is None:
        raise DeviceConfigError(f"{config.id}: driver {config.driver!r} needs a modbus block")
    given = endpoint.model_fields_set
    unit_id = endpoint.unit_id if "unit_id" in given else default_unit
    timeout_s = endpoint.timeout_s if "timeout_s" in given else default_timeout_s
    return unit_id, timeout_s


class ModbusMapDevice(Device):
    """A device described by a register map in drivers/."""

    def __init__(
        self,
        config: DeviceConfig,
        register_map: RegisterMap,
        connection: ModbusConnection,
        *,
        rated_kw: float | None = None,
        revert_s: float = DEFAULT_REVERT_S,
        points: Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock=clock)
        keys = register_map.roles.keys(config.role.value)
        if keys is None:
            offered = ", ".join(register_map.roles.offered()) or "none"
            raise DeviceConfigError(
                f"{config.id}: map {config.driver!r} offers no {config.role.value} role (offers: {offered})"
            )
        self.map = register_map
        self.connection = connection
        self.rated_kw = rated_kw
        self.revert_s = revert_s
        self.unit_id, self.timeout_s = _unit_and_timeout(
            config, register_map.default_unit_id, register_map.transport.timeout_s
        )
        self._keys = keys
        self._plan = _shared_plan(register_map, None if points is None else tuple(points))
        self._units = {p.name: p.unit for block in self._plan for p in block.points}
        self._started = False
        self._original: dict[str, float | None] = {}  # setpoint point -> value read at start
        self._ceiling: float | None = None  # installer's static PV limit, in the limit point's unit

    async def _read(self) -> Reading:
        answered = await self.connection.read_blocks(self._plan, self.unit_id, timeout_s=self.timeout_s)
        at = self.clock()
        try:
            values = decode_reads(answered)
        except DecodeError as exc:
            raise DeviceProtocolError(f"{self.id}: {exc}") from None
        return Reading(
            device_id=self.id,
            role=self.role,
            read_at_s=at,
            values=self._role_values(values),
            point_values=values,
            units=self._units,
        )

    def _role_values(self, values: Mapping[str, float | None]) -> dict[str, float | None]:
        """`registers.role_values` with the role's keys looked up once (this runs on every poll)."""
        result: dict[str, float | None] = {}
        for key, names in self._keys.items():
            if len(names) == 1:
                result[key] = values.get(names[0])
            else:
                parts = [v for name in names if (v := values.get(name)) is not None]
                result[key] = math.fsum(parts) if parts else None
        return result

    async def start(self) -> None:
        if self._started:
            return
        for key in ("limit_pct", "limit_kw", "setpoint_kw"):
            if key in self._keys:
                point = self.map.point(self._keys[key][0])
                self._original[point.name] = await self._read_point(point)
        limit = self._limit_point()
        if limit is not None and self._is_persistent(limit):
            value = self._original.get(limit.name)
            if value is not None and limit.write_max is not None and value < limit.write_max:
                self._ceiling = value
                log.info(
                    "%s: installer limit %g %s found; hubctl will not exceed it", self.id, value, limit.unit
                )
        self._started = True

    def _limit_point(self) -> Point | None:
        for key in ("limit_pct", "limit_kw"):
            if key in self._keys:
                return self.map.point(self._keys[key][0])
        return None

    @staticmethod
    def _is_persistent(point: Point) -> bool:
        return point.revert_s is None and point.revert_point is None and point.refresh_s is None

    def _refresh_every_s(self, point: Point) -> float | None:
        if point.refresh_s is not None:
            return point.refresh_s
        if point.revert_s is not None:
            return point.revert_s / 2
        if point.revert_point is not None:
            return self.revert_s / 3
        return None

    async def _set_pv_limit(self, kw: float) -> SetpointResult:
        point = self._limit_point()
        if point is None:
            raise CommandRejectedError(f"{self.id}: map {self.config.driver!r} has no PV limit point")
        await self.start()
        per_kw = 1.0
        if point.unit == "%":
            if not self.rated_kw:
                raise CommandRejectedError(f"{self.id}: a limit in % needs the inverter's rating (rated_kw)")
            per_kw = 100.0 / self.rated_kw
        return await self._command("pv_limit", point, kw, per_kw, ceiling=self._ceiling)

    async def _set_battery(self, kw: float) -> SetpointResult:
        if "setpoint_kw" not in self._keys:
            raise CommandRejectedError(f"{self.id}: map {self.config.driver!r} has no battery setpoint point")
        await self.start()
        return await self._command(
            "battery", self.map.point(self._keys["setpoint_kw"][0]), kw, 1.0, ceiling=None
        )

    async def _command(
        self, kind: str, point: Point, kw: float, per_kw: float, *, ceiling: float | None
    ) -> SetpointResult:
        low, high = point.write_min, point.write_max
        if (
            low is None
            or high is None
            or point.access is not Access.RW
            or point.function is not Function.HOLDING
        ):
            raise CommandRejectedError(f"{self.id}: {point.name} is not a writable holding register")
        target = kw * per_kw
        if not math.isfinite(target) or not low - 1e-9 <= target <= high + 1e-9:
            raise CommandRejectedError(
                f"{self.id}: {kw:g} kW is outside {_kw_bounds_text(low / per_kw, high / per_kw)}"
                f" ({point.name})"
            )
        applied, limited_by = target, None
        if ceiling is not None and target > ceiling:
            applied, limited_by = ceiling, f"installer limit {ceiling:g} {point.unit}"
        exponents = await self._exponents(point)
        try:
            words = encode(point, min(max(applied, low), high), exponents)
        except EncodeError as exc:
            raise CommandRejectedError(f"{self.id}: {exc}") from None
        if point.revert_point is not None:
            await self._write_timer(self.map.point(point.revert_point))
        await self.connection.write(point.address, words, self.unit_id, timeout_s=self.timeout_s)
        read_back = await self._read_point(point)
        exponent = exponents.get(point.scale_factor or "", 0) or 0
        step = (
            point.scale * 10.0**exponent if point.type.value != "float32" else 1e-6 * max(1.0, abs(applied))
        )
        if read_back is None or not _confirmed(applied, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote {applied:g} {point.unit} to {point.name}, reads back {read_back}"
            )
        return SetpointResult(
            device_id=self.id,
            kind=kind,
            requested_kw=kw,
            applied_kw=applied / per_kw,
            confirmed_kw=read_back / per_kw,
            limited_by=limited_by,
            refresh_every_s=self._refresh_every_s(point),
        )

    async def _write_timer(self, timer: Point) -> None:
        factor = _TIMER_UNITS_S.get(timer.unit)
        if factor is None:
            raise CommandRejectedError(
                f"{self.id}: revert point {timer.name} is in {timer.unit!r}, not a time"
            )
        value = math.ceil(self.revert_s / factor)
        try:
            words = encode(timer, value, await self._exponents(timer))
        except EncodeError as exc:
            raise CommandRejectedError(f"{self.id}: revert timer: {exc}") from None
        await self.connection.write(timer.address, words, self.unit_id, timeout_s=self.timeout_s)

    async def _exponents(self, point: Point) -> dict[str, int | None]:
        if point.scale_factor is None:
            return {}
        sf = await self._read_point(self.map.point(point.scale_factor))
        return {point.scale_factor: None if sf is None else int(sf)}

    async def _read_point(self, point: Point) -> float | None:
        plan = self.map.read_plan([point.name])
        answered = await self.connection.read_blocks(plan, self.unit_id, timeout_s=self.timeout_s)
        try:
            return decode_reads(answered)[point.name]
        except DecodeError as exc:
            raise DeviceProtocolError(f"{self.id}: {exc}") from None

    async def release(self) -> None:
        held = set(self._held)
        await super().release()
        limit = self._limit_point()
        if "pv_limit" in held and limit is not None and self._is_persistent(limit):
            original = self._original.get(limit.name)
            restore = limit.write_max if original is None else original
            if restore is not None:
                words = encode(limit, restore, await self._exponents(limit))
                await self.connection.write(limit.address, words, self.unit_id, timeout_s=self.timeout_s)


# --- SunSpec devices ---------------------------------------------------------------------------------------


class SunSpecDevice(Device):
    """A device found by SunSpec discovery; decoded with pysunspec2's model definitions."""

    def __init__(
        self,
        config: DeviceConfig,
        connection: ModbusConnection,
        *,
        revert_s: float = DEFAULT_REVERT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock=clock)
        self.connection = connection
        self.revert_s = revert_s
        self.unit_id, self.timeout_s = _unit_and_timeout(config, 1, 3.0)
        self.headers: list[sunspec.ModelHeader] | None = None
        self._role_headers: list[sunspec.ModelHeader] = []
        self._ceiling_pct: float | None = None
        self._fallback_pct: float | None = None  # 704 WMaxLimPctRvrt hubctl configured and read back
        self._started = False
        self._recent: dict[int, tuple[float, sunspec.DecodedModel]] = {}  # model id -> (read at, model)

    async def _read_words(self, address: int, count: int) -> list[int]:
        return await self.connection.read(
            Function.HOLDING, address, count, self.unit_id, timeout_s=self.timeout_s
        )

    async def _write_words(self, address: int, words: Sequence[int]) -> None:
        await self.connection.write(address, words, self.unit_id, timeout_s=self.timeout_s)

    async def discover(self) -> list[sunspec.ModelHeader]:
        if self.headers is None:
            headers = await sunspec.discover(self._read_words)
            wanted = sunspec.ROLE_MODELS[self.role.value]
            self._role_headers = []
            seen: set[int] = set()
            for header in headers:
                if header.model_id in wanted and header.model_id not in seen:
                    self._role_headers.append(header)
                    seen.add(header.model_id)
            self.headers = headers
        return self.headers

    async def models(self, model_ids: Iterable[int] | None = None) -> dict[int, sunspec.DecodedModel]:
        """Read and decode the role's models (or `model_ids`)."""
        await self.discover()
        if model_ids is None:
            headers = self._role_headers
        else:
            ids = set(model_ids)
            headers = [h for h in self.headers or [] if h.model_id in ids]
        try:
            decoded = await sunspec.read_models(self._read_words, headers)
        except DeviceProtocolError:
            self.headers = None  # the chain may have changed (firmware update): discover again next time
            self._recent.clear()
            raise
        at = self.clock()
        for model_id, model in decoded.items():
            self._recent[model_id] = (at, model)
        return decoded

    async def _read(self) -> Reading:
        models = await self.models()
        at = self.clock()
        values = sunspec.role_values(self.role.value, models)
        point_values: dict[str, float | None] = {}
        units: dict[str, str] = {}
        for model_id, model in models.items():
            for name, value in model.values.items():
                point_values[f"{model_id}.{name}"] = value
                units[f"{model_id}.{name}"] = model.points[name].units
        return Reading(
            device_id=self.id,
            role=self.role,
            read_at_s=at,
            values=values,
            point_values=point_values,
            units=units,
        )

    async def start(self) -> None:
        if self._started:
            return
        models = await self.models()
        sunspec.role_values(self.role.value, models)  # raises DeviceIdentityError when a model is missing
        if self.role is DeviceRole.PV:
            for model_id, enable, timer in (
                (123, "WMaxLim_Ena", "WMaxLimPct_RvrtTms"),
                (704, "WMaxLimPctEna", "WMaxLimPctRvrtTms"),
            ):
                model = models.get(model_id)
                if model is None:
                    continue
                pct = model.values.get("WMaxLimPct")
                static = not model.values.get(timer)
                if model.values.get(enable) == 1 and pct is not None and pct < 100 and static:
                    self._ceiling_pct = pct
                    log.info(
                        "%s: installer limit %g %% (model %d) found; hubctl will not exceed it",
                        self.id,
                        pct,
                        model_id,
                    )
                break
        self._started = True

    async def _set_pv_limit(self, kw: float) -> SetpointResult:
        await self.start()
        models = await self._current(h.model_id for h in self._role_headers)
        rating = sunspec.rated_kw(models)
        if rating is None:
            raise CommandRejectedError(
                f"{self.id}: no power rating (121 WMax, 120 WRtg, 702) to express kW in %"
            )
        if not math.isfinite(kw) or not 0 <= kw <= rating + 1e-9:
            raise CommandRejectedError(f"{self.id}: {kw:g} kW is outside {_kw_bounds_text(0, rating)}")
        pct = kw / rating * 100
        applied, limited_by = pct, None
        if self._ceiling_pct is not None and pct > self._ceiling_pct:
            applied, limited_by = self._ceiling_pct, f"installer limit {self._ceiling_pct:g} %"
        if 123 in models:
            control = models[123]
            timer = 0.0 if self._ceiling_pct is not None else self.revert_s
            writes = [("WMaxLimPct", applied), ("WMaxLimPct_RvrtTms", timer), ("WMaxLim_Ena", 1)]
        elif 704 in models:
            control = models[704]
            timer = self.revert_s
            # in 704's register order: enable and limit in one request, the timer after (when it changed)
            writes = [("WMaxLimPctEna", 1), ("WMaxLimPct", applied), ("WMaxLimPctRvrtTms", timer)]
            if self._ceiling_pct is not None and self._fallback_pct is None:
                # no fallback configured (yet): the installer's limit is the reversion value at least
                writes = [("WMaxLimPctRvrt", self._ceiling_pct), ("WMaxLimPctEnaRvrt", 1), *writes]
        else:
            raise CommandRejectedError(f"{self.id}: no SunSpec control model (123 or 704) for a power limit")
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = await self.models([control.header.model_id])
        read_back = sunspec.pv_limit_pct(check)
        step = 10.0 ** (control.exponent(control.points["WMaxLimPct"]) or 0)
        if read_back is None or not _confirmed(applied, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WMaxLimPct {applied:g} %, reads back {read_back}"
            )
        return SetpointResult(
            device_id=self.id,
            kind="pv_limit",
            requested_kw=kw,
            applied_kw=applied * rating / 100,
            confirmed_kw=read_back * rating / 100,
            limited_by=limited_by,
            refresh_every_s=timer / 3 if timer > 0 else None,
        )

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:
        await self.start()
        if self.role is DeviceRole.BATTERY:
            return await self._battery_fallback()
        if self.role is DeviceRole.PV:
            return await self._pv_fallback(pv_limit_kw)
        return await super()._configure_fallback(pv_limit_kw)

    async def _battery_fallback(self) -> FallbackResult:
        """704: reversion power 0 W (WSetRvrt, and WSetPctRvrt where implemented), WSetEnaRvrt = 1."""
        models = await self.models([124, 704])
        if 704 not in models:
            why = "model 124 has no reversion power" if 124 in models else "no SunSpec model 704"
            return self._no_fallback(f"{why}; the battery falls back to its own configuration")
        control = models[704]
        writes: list[tuple[str, float]] = [
            (name, 0.0) for name in ("WSetRvrt", "WSetPctRvrt") if control.values.get(name) is not None
        ]
        if not writes or control.values.get("WSetEnaRvrt") is None:
            return self._no_fallback("model 704 without WSetRvrt/WSetPctRvrt and WSetEnaRvrt")
        await self._write_points(control, [*writes, ("WSetEnaRvrt", 1)])
        check = (await self.models([704]))[704]
        for name, _ in writes:
            value = check.values.get(name)
            step = 10.0 ** (control.exponent(control.points[name]) or 0)
            if value is None or not _confirmed(0.0, value, step):
                raise CommandNotConfirmedError(f"{self.id}: wrote {name} 0, reads back {value}")
        if check.values.get("WSetEnaRvrt") != 1:
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WSetEnaRvrt 1, reads back {check.values.get('WSetEnaRvrt')}"
            )
        watts = check.values.get("WSetRvrt")
        names = ", ".join(name for name, _ in writes)
        return FallbackResult(
            self.id,
            configured=True,
            detail=f"battery falls back to 0 kW (704 {names} 0, WSetEnaRvrt 1)",
            fallback_kw=0.0,
            confirmed_kw=0.0 if watts is None else watts / 1000,
        )

    async def _pv_fallback(self, kw: float | None) -> FallbackResult:
        """704 (the limit's control model): WMaxLimPctRvrt = the fallback limit, WMaxLimPctEnaRvrt = 1."""
        models = await self.models()
        if 123 in models:
            return self._no_fallback("model 123 has no reversion limit; the inverter reverts to no limit")
        if 704 not in models:
            return self._no_fallback("no SunSpec model 704; the inverter keeps its own fallback")
        control = models[704]
        if control.values.get("WMaxLimPctEnaRvrt") is None:
            return self._no_fallback("model 704 without WMaxLimPctEnaRvrt")
        rating = sunspec.rated_kw(models)
        if rating is None:
            raise CommandRejectedError(
                f"{self.id}: no power rating (121 WMax, 120 WRtg, 702) to express kW in %"
            )
        step = 10.0 ** (control.exponent(control.points["WMaxLimPctRvrt"]) or 0)
        pct = 100.0 if kw is None else min(100.0, kw / rating * 100)
        pct = math.floor(pct / step + 1e-9) * step  # a register step down, never up
        if self._ceiling_pct is not None:
            pct = min(pct, self._ceiling_pct)
        await self._write_points(control, [("WMaxLimPctRvrt", pct), ("WMaxLimPctEnaRvrt", 1)])
        check = (await self.models([704]))[704]
        read_back, enabled = check.values.get("WMaxLimPctRvrt"), check.values.get("WMaxLimPctEnaRvrt")
        if read_back is None or enabled != 1 or not _confirmed(pct, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WMaxLimPctRvrt {pct:g} % enabled, reads back {read_back} % ({enabled})"
            )
        self._fallback_pct = read_back
        limited = " (installer limit)" if self._ceiling_pct is not None and pct == self._ceiling_pct else ""
        return FallbackResult(
            self.id,
            configured=True,
            detail=f"PV falls back to {read_back:g} % of {rating:g} kW{limited} (704 WMaxLimPctRvrt)",
            fallback_kw=None if read_back >= 100 else pct * rating / 100,
            confirmed_kw=read_back * rating / 100,
        )

    async def _set_battery(self, kw: float) -> SetpointResult:
        await self.start()
        models = await self._current([*sunspec.ROLE_MODELS["battery"], 120])
        if 704 in models:
            return await self._set_battery_704(kw, models)
        if 124 in models:
            return await self._set_battery_124(kw, models)
        raise CommandRejectedError(f"{self.id}: no SunSpec model 704 (WSet) or 124 for a battery setpoint")

    def _check_battery_bounds(self, kw: float, charge_kw: float | None, discharge_kw: float | None) -> None:
        if charge_kw is None or discharge_kw is None:
            raise CommandRejectedError(f"{self.id}: no charge/discharge rating to bound the setpoint")
        if not math.isfinite(kw) or not -charge_kw - 1e-9 <= kw <= discharge_kw + 1e-9:
            raise CommandRejectedError(
                f"{self.id}: {kw:g} kW is outside {_kw_bounds_text(-charge_kw, discharge_kw)}"
            )

    async def _set_battery_704(self, kw: float, models: Mapping[int, sunspec.DecodedModel]) -> SetpointResult:
        control = models[704]
        self._check_battery_bounds(kw, *_battery_limits_kw(models))
        writes: list[tuple[str, float]] = [
            ("WSetEna", 1),
            ("WSet", kw * 1000),
            ("WSetRvrtTms", self.revert_s),
        ]
        if control.values.get("WSetMod") is not None:
            writes.insert(1, ("WSetMod", 1))  # 1 = WATTS; in the registers between WSetEna and WSet
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = await self.models([704])
        watts = check[704].values.get("WSet")
        step = 10.0 ** (control.exponent(control.points["WSet"]) or 0)
        if watts is None or not _confirmed(kw * 1000, watts, step):
            raise CommandNotConfirmedError(f"{self.id}: wrote WSet {kw * 1000:g} W, reads back {watts}")
        return SetpointResult(
            device_id=self.id,
            kind="battery",
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=watts / 1000,
            refresh_every_s=self.revert_s / 3,
        )

    async def _set_battery_124(self, kw: float, models: Mapping[int, sunspec.DecodedModel]) -> SetpointResult:
        """Model 124: pin the power between the charge bound (InWRte) and the discharge bound (OutWRte).

        With StorCtl_Mod = 3 both bounds apply: charging is limited to InWRte %
        of WChaMax, discharging to OutWRte % of 120 MaxDisChaRte (else WChaMax);
        a negative rate forces the other direction (the reading of 124 that
        Fronius and evcc use). Both bounds at kw make the battery run at kw.
        """
        control = models[124]
        charge_w = control.values.get("WChaMax")
        discharge_w = models[120].values.get("MaxDisChaRte") if 120 in models else None
        discharge_w = discharge_w or charge_w
        if not charge_w or not discharge_w:
            raise CommandRejectedError(
                f"{self.id}: no charge/discharge rating (124 WChaMax, 120 MaxDisChaRte)"
            )
        self._check_battery_bounds(kw, charge_w / 1000, discharge_w / 1000)
        in_pct = -kw * 1000 / charge_w * 100  # > 0 bounds charging, < 0 forces discharging
        out_pct = kw * 1000 / discharge_w * 100  # > 0 bounds discharging, < 0 forces charging
        writes = [
            ("OutWRte", out_pct),
            ("InWRte", in_pct),
            ("InOutWRte_RvrtTms", self.revert_s),
            ("StorCtl_Mod", 3),
        ]
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = (await self.models([124]))[124]
        mode, in_back, out_back = (check.values.get(n) for n in ("StorCtl_Mod", "InWRte", "OutWRte"))
        step = 10.0 ** (control.exponent(control.points["InWRte"]) or 0)
        if mode != 3 or in_back is None or out_back is None or not _confirmed(out_pct, out_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote StorCtl_Mod 3, OutWRte {out_pct:.2f} %, reads back {mode}, {out_back}"
            )
        return SetpointResult(
            device_id=self.id,
            kind="battery",
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=out_back / 100 * discharge_w / 1000,
            refresh_every_s=self.revert_s / 3,
        )

    async def _write_points(
        self,
        model: sunspec.DecodedModel,
        writes: Sequence[tuple[str, float]],
        *,
        unless_set: frozenset[str] = frozenset(),
    ) -> None:
        """Write points in the order given, in as few requests as the register layout allows.

        Points named in `unless_set` are skipped when `model` shows them already at the value (a
        revert time, a control mode: settings, not commands). Writes that follow each other in
        `writes` and in the registers go in one request; a gap of at most `_MAX_FILL_REGISTERS`
        between them is filled with what `model` shows its writable points hold (123's window
        and ramp times between the limit and its enable point), so one request re-arms a control.
        """
        items: list[tuple[sunspec.SunSpecPoint, list[int]]] = []
        held: dict[int, list[int]] = {}  # settings the device holds already: not written, but may fill a gap
        for name, value in writes:
            point = model.points.get(name)
            if point is None or not point.writable:
                raise CommandRejectedError(f"{self.id}: model {model.header.model_id} has no writable {name}")
            words = sunspec.encode_value(point, value, model.exponent(point))
            if name in unless_set and model.values.get(name) == value:
                held[point.address] = words
                continue
            items.append((point, words))
        requests: list[tuple[int, list[int]]] = []
        end = -1
        for point, words in items:
            fill = _gap_words(model, end, point.address, held) if requests else None
            if fill is not None:
                requests[-1][1].extend([*fill, *words])
            else:
                requests.append((point.address, list(words)))
            end = point.address + len(words)
        for address, words in requests:
            await self._write_words(address, words)

    async def _current(self, model_ids: Iterable[int]) -> dict[int, sunspec.DecodedModel]:
        """The models as last read if that was within `_RECENT_S` (the poller reads every cycle), else read.

        A setpoint needs the device's ratings, scale factors and settings: reading them again before
        every write doubled the requests of a cycle that moves every battery of a park.
        """
        headers = await self.discover()
        ids = {h.model_id for h in headers} & set(model_ids)
        now = self.clock()
        recent = {i: self._recent[i] for i in ids if i in self._recent}
        if len(recent) == len(ids) and all(now - at <= _RECENT_S for at, _ in recent.values()):
            return {i: m for i, (_, m) in recent.items()}
        return await self.models(ids)

    async def release(self) -> None:
        held = set(self._held)
        await super().release()
        if "battery" in held:
            await self._release_battery()
        if "pv_limit" not in held:
            return
        models = await self.models([123, 704])
        if 123 in models:
            if self._ceiling_pct is not None:
                await self._write_points(models[123], [("WMaxLimPct", self._ceiling_pct)])
            else:
                await self._write_points(models[123], [("WMaxLim_Ena", 0)])
        elif 704 in models and self._ceiling_pct is None:
            await self._write_points(models[704], [("WMaxLimPctEna", 0)])

    async def _release_battery(self) -> None:
        models = await self.models([124, 704])
        if 704 in models:
            await self._write_points(models[704], [("WSetEna", 0)])
        elif 124 in models:
            await self._write_points(models[124], [("StorCtl_Mod", 0)])


# Settings a setpoint write leaves alone when the device already holds them (see `_write_points`).
_SETTINGS = frozenset(
    {"WMaxLimPct_RvrtTms", "WMaxLimPctRvrtTms", "WSetRvrtTms", "WSetMod", "InOutWRte_RvrtTms", "StorCtl_Mod"}
)
_MAX_FILL_REGISTERS = 4
_RECENT_S = 2.0


def _gap_words(
    model: sunspec.DecodedModel, start: int, end: int, held: Mapping[int, list[int]]
) -> list[int] | None:
    """The words filling registers [start, end): a setting of this write that the device holds
    already (`held`, by address), or a control's window or ramp time (`*WinTms`, `*RmpTms`, which
    hubctl never sets) as `model` shows it. None if the gap is too wide, runs backwards or holds
    anything else. Never a reversion value: `model` may be older than the fallback
    `configure_fallback` wrote, and writing it back would undo that."""
    if end < start or end - start > _MAX_FILL_REGISTERS:
        return None
    words: list[int] = []
    at = start
    by_address = {p.address: p for p in model.points.values()}
    while at < end:
        if at in held:
            if at + len(held[at]) > end:
                return None
            words.extend(held[at])
            at += len(held[at])
            continue
        point = by_address.get(at)
        value = None if point is None else model.values.get(point.name)
        if point is None or not point.writable or value is None or at + point.size > end:
            return None
        if not point.name.endswith(("WinTms", "RmpTms")):
            return None
        try:
            words.extend(sunspec.encode_value(point, value, model.exponent(point)))
        except CommandRejectedError:
            return None
        at += point.size
    return words


def _battery_limits_kw(models: Mapping[int, sunspec.DecodedModel]) -> tuple[float | None, float | None]:
    """(max charge, max discharge) in kW from 702 (settings, then ratings) or 802."""

    def first(*where: tuple[int, str]) -> float | None:
        for model_id, name in where:
            model = models.get(model_id)
            watts = None if model is None else model.values.get(name)
            if watts is not None and watts > 0:
                return watts / 1000
        return None

    charge = first((702, "WChaRteMax"), (702, "WChaRteMaxRtg"), (802, "WChaRteMax"), (702, "WMaxRtg"))
    discharge = first(
        (702, "WDisChaRteMax"), (702, "WDisChaRteMaxRtg"), (802, "WDisChaRteMax"), (702, "WMaxRtg")
    )
    return charge, discharge


# --- Building and using devices ----------------------------------------------------------------------------


def build_device(
    config: DeviceConfig,
    *,
    pool: ConnectionPool,
    mqtt: MqttHub | None = None,
    drivers_dir: Path = DEFAULT_DRIVERS,
    rated_kw: float | None = None,
    revert_s: float = DEFAULT_REVERT_S,
    clock: Callable[[], float] = time.monotonic,
) -> Device:
    """The driver for one configured device. Raises DeviceConfigError when it cannot be driven."""
    if config.driver == "mqtt":
        if mqtt is None:
            raise DeviceConfigError(f"{config.id}: an MQTT device needs a broker (MqttHub)")
        from hubctl.devices.mqtt import MqttDevice  # noqa: PLC0415 - mqtt_devices imports this module

        return MqttDevice(config, mqtt, clock=clock)
    endpoint = config.modbus
    if endpoint is None:
        raise DeviceConfigError(f"{config.id}: driver {config.driver!r} needs a modbus block")
    if config.driver == "sunspec":
        connection = pool.get(endpoint.host, endpoint.port)
        return SunSpecDevice(config, connection, revert_s=revert_s, clock=clock)
    path = drivers_dir / f"{config.driver}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in drivers_dir.glob("*.yaml")))
        raise DeviceConfigError(f"{config.id}: no map {config.driver!r} in {drivers_dir} (known: {known})")
    try:
        register_map = _load_map(path)
    except RegisterMapError as exc:
        raise DeviceConfigError(f"{config.id}: {exc}") from None
    connection = pool.get(endpoint.host, endpoint.port, register_map.transport)
    return ModbusMapDevice(
        config, register_map, connection, rated_kw=rated_kw, revert_s=revert_s, clock=clock
    )


async def read_all(devices: Sequence[Device]) -> dict[str, Reading | DeviceError]:
    """Read every device once, concurrently; a device's failure is its entry, not an exception."""

    async def one(device: Device) -> Reading | DeviceError:
        try:
            return await device.read()
        except DeviceError as exc:
            return exc

    results = await asyncio.gather(*(one(device) for device in devices))
    return {device.id: result for device, result in zip(devices, results, strict=True)}


async def hold_setpoints(devices: Sequence[Device], *, tick_s: float = 0.5) -> None:
    """Re-write held setpoints before their revert timers run out; runs until cancelled.

    A failed refresh is logged (once per device until it works again) and
    tried again on the next tick: the refresh interval leaves room for it.
    """
    failing: set[str] = set()
    while True:
        for device in devices:
            if not device.refresh_due():
                continue
            try:
                await device.refresh()
            except DeviceError as exc:
                if device.id not in failing:
                    log.warning("%s: setpoint refresh failed: %s", device.id, exc)
                failing.add(device.id)
            else:
                if device.id in failing:
                    log.info("%s: setpoint refresh works again", device.id)
                failing.discard(device.id)
        await asyncio.sleep(tick_s)
