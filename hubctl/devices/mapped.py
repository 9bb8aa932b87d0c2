# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Devices described by a register map in drivers/ (`ModbusMapDevice`), over Modbus TCP.

The map (`hubctl.codec.regmap`) says where each point is and which points give
the role values and take the setpoints; the codec (`hubctl.codec.registers`)
decodes and encodes. Devices of one model share one read plan.

Decisions:

- **Which unit id and timeout**: the site config's, when it sets them
  explicitly; otherwise the map's `default_unit_id` and `transport.timeout_s`.
- **Setpoints are checked, written, read back.** A value outside the map's
  bounds (`write_min`..`write_max`, in kW: `setpoint_bounds_kw`, known from
  `start()`) raises SetpointOutOfBoundsError before anything is written; a map
  without the point (or a % limit without the inverter's rating) raises
  SetpointUnsupportedError. A read-back that differs by more than half a
  register step raises CommandNotConfirmedError.
- **Installer limits are never loosened.** `start()` (run before the first
  setpoint) reads the device's limit point. A limit found then is the ceiling
  for every later PV limit when it is static (a point without a revert timer).
  A larger request is applied as the ceiling and the result says so
  (`limited_by`). A value hubctl wrote itself (a fail-safe derating before a
  stop) is not an installer's: with the service's `LimitRecord` every value
  written to a persistent limit is recorded before it is written, and at start
  such a value gives the installer's limit recorded when hubctl first saw the
  device (`hubctl.devices.base`, #13 item 4).
- **Revert timers**: a point's `revert_s` or `revert_point`: hubctl writes the
  timer (`revert_s`, default 60 s) with the setpoint and re-writes it at the
  map's `refresh_s`, else half its `revert_s`, else a third of the timer
  hubctl wrote.
- **Fallbacks** are the map's `fallback:` block (`hubctl.codec.regmap`, "Fallbacks"):
  `configure_fallback` writes the watchdog timer (`service.revert_s`, in the
  point's unit, rounded up) and the fallback value (battery 0 kW; PV the
  fallback limit, a register step down, never above the installer's limit,
  no limit = the point's `write_max`), sets the enable point to 1, and reads
  each back. A map without a block for the device's role writes nothing and
  says what the device does instead: "none: keeps the last setpoint" for a
  persistent setpoint, else its revert timer and then the device's own
  behaviour. No map in drivers/ has a fallback value or watchdog register
  (Victron ESS keeps its installer settings, Huawei's derating is persistent
  and its forcible mode ends by itself): their blocks say so in a `note`.
  `fallback_summary` says the same from a reading, for `hubctl read`.
- **Persistent setpoints** (a point without revert, e.g. Huawei's derating):
  written once, not refreshed (flash wear); `release()` writes back the
  installer's value (the value read at start, or the recorded installer's when
  the device held hubctl's own), or the point's `write_max` (no limit), whether
  or not hubctl holds a limit: the service releases every inverter whose first
  decision is "no limit", so a limit a previous run left is lifted (#13 item 5).
"""

from __future__ import annotations

import logging
import math
import time
from functools import cache
from typing import TYPE_CHECKING

from hubctl.codec.registers import Function, decode_reads, encode
from hubctl.codec.regmap import Access
from hubctl.devices.base import (
    DEFAULT_REVERT_S,
    Device,
    FallbackResult,
    Reading,
    SetpointResult,
    confirmed,
    unit_and_timeout,
)
from hubctl.errors import (
    CommandNotConfirmedError,
    DecodeError,
    DeviceConfigError,
    DeviceProtocolError,
    EncodeError,
    SetpointOutOfBoundsError,
    SetpointUnsupportedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from hubctl.codec.registers import ReadBlock
    from hubctl.codec.regmap import Point, RegisterMap, RoleFallback
    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.transport.modbus import ModbusConnection

log = logging.getLogger("hubctl.devices")  # the name the journal has always shown

_TIMER_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0}


@cache
def _shared_plan(register_map: RegisterMap, points: tuple[str, ...] | None) -> tuple[ReadBlock, ...]:
    """One read plan (and its decoding layouts) for all devices of a model: fewer objects to walk per poll."""
    return tuple(register_map.read_plan(points))


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
        self.unit_id, self.timeout_s = unit_and_timeout(
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
        if limit is not None and self._is_persistent(limit) and self.setpoint_kind == "pv_limit":
            await self._recall_installer_limit(limit)
        kind = self.setpoint_kind
        if kind is not None:
            try:
                _, per_kw, low, high = self._setpoint_point(kind)
            except SetpointUnsupportedError:
                pass  # said when a setpoint of this kind is asked for
            else:
                self._bounds[kind] = (low / per_kw, high / per_kw)
        self._started = True

    async def _recall_installer_limit(self, limit: Point) -> None:
        """The installer's limit of a persistent limit point, from what it reads and the record."""
        value = self._original.get(limit.name)
        high = limit.write_max
        limited = value if value is not None and high is not None and value < high else None
        exponents = await self._exponents(limit)
        step = abs(limit.scale) * 10.0 ** (exponents.get(limit.scale_factor or "", 0) or 0)
        installer, own = self._recall_limit(limit.name, limit.unit, value, step, limited)
        if own:
            self._original[limit.name] = high if installer is None else installer
            log.info(
                "%s: %s %g %s is hubctl's own (written before the restart), not an installer's; the"
                " installer's: %s",
                self.id,
                limit.name,
                value,
                limit.unit,
                "none" if installer is None else f"{installer:g} {limit.unit}",
            )
        if installer is not None:
            self._ceiling = installer
            log.info(
                "%s: installer limit %g %s found; hubctl will not exceed it", self.id, installer, limit.unit
            )

    def _setpoint_point(self, kind: str) -> tuple[Point, float, float, float]:
        """The point a setpoint of `kind` is written to, its units per kW and its write bounds (in its
        unit). SetpointUnsupportedError when the map has none, it is not a writable holding register
        with bounds, or a limit in % has no rating to express kW with."""
        if kind == "battery":
            if "setpoint_kw" not in self._keys:
                raise SetpointUnsupportedError(
                    f"{self.id}: map {self.config.driver!r} has no battery setpoint point"
                )
            point = self.map.point(self._keys["setpoint_kw"][0])
            per_kw = 1.0
        else:
            limit = self._limit_point()
            if limit is None:
                raise SetpointUnsupportedError(f"{self.id}: map {self.config.driver!r} has no PV limit point")
            point, per_kw = limit, 1.0
            if point.unit == "%":
                if not self.rated_kw:
                    raise SetpointUnsupportedError(
                        f"{self.id}: a limit in % needs the inverter's rating (rated_kw)"
                    )
                per_kw = 100.0 / self.rated_kw
        low, high = point.write_min, point.write_max
        if (
            low is None
            or high is None
            or point.access is not Access.RW
            or point.function is not Function.HOLDING
        ):
            raise SetpointUnsupportedError(f"{self.id}: {point.name} is not a writable holding register")
        return point, per_kw, low, high

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
        self._setpoint_point("pv_limit")
        await self.start()
        return await self._command("pv_limit", kw, ceiling=self._ceiling)

    async def _set_battery(self, kw: float) -> SetpointResult:
        self._setpoint_point("battery")
        await self.start()
        return await self._command("battery", kw, ceiling=None)

    async def _command(self, kind: str, kw: float, *, ceiling: float | None) -> SetpointResult:
        point, per_kw, low, high = self._setpoint_point(kind)
        self._check_bounds(kind, kw, low / per_kw, high / per_kw, f" ({point.name})")
        target = kw * per_kw
        applied, limited_by = target, None
        if ceiling is not None and target > ceiling:
            applied, limited_by = ceiling, f"installer limit {ceiling:g} {point.unit}"
        exponents = await self._exponents(point)
        try:
            words = encode(point, min(max(applied, low), high), exponents)
        except EncodeError as exc:
            raise SetpointOutOfBoundsError(f"{self.id}: {exc}", low / per_kw, high / per_kw) from None
        if point.revert_point is not None:
            await self._write_timer(self.map.point(point.revert_point))
        kept = kind == "pv_limit" and self._is_persistent(point)
        if kept:  # recorded first: a value found at the next start is then known to be hubctl's
            self._note_limit_writing(applied)
        await self.connection.write(point.address, words, self.unit_id, timeout_s=self.timeout_s)
        read_back = await self._read_point(point)
        exponent = exponents.get(point.scale_factor or "", 0) or 0
        step = (
            point.scale * 10.0**exponent if point.type.value != "float32" else 1e-6 * max(1.0, abs(applied))
        )
        if read_back is None or not confirmed(applied, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote {applied:g} {point.unit} to {point.name}, reads back {read_back}"
            )
        if kept:
            self._note_limit_written(applied)
        return SetpointResult(
            device_id=self.id,
            kind=kind,
            requested_kw=kw,
            applied_kw=applied / per_kw,
            confirmed_kw=read_back / per_kw,
            limited_by=limited_by,
            refresh_every_s=self._refresh_every_s(point),
        )

    # -- fallbacks (the map's `fallback:` block)
    def _fallback_spec(self) -> RoleFallback | None:
        return self.map.fallback.of(self.role.value)

    def _lapse_text(self) -> str:
        """What becomes of hubctl's setpoint once hubctl stops writing (no fallback register involved)."""
        kind = self.setpoint_kind
        if kind is None:
            return ""
        try:
            point = self._setpoint_point(kind)[0]
        except SetpointUnsupportedError:
            return "it takes no setpoint from hubctl"
        if point.revert_s is not None:
            return f"the setpoint lapses {point.revert_s:g} s after hubctl's last write"
        if point.revert_point is not None:
            return (
                f"the setpoint lapses {self.revert_s:g} s (service.revert_s, in {point.revert_point})"
                " after hubctl's last write"
            )
        return "keeps the last setpoint"

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:
        spec = self._fallback_spec()
        lapse = self._lapse_text()
        if spec is None:
            if lapse == "keeps the last setpoint":
                return self._no_fallback(f"none: {lapse} (map {self.config.driver!r} has no fallback block)")
            return self._no_fallback(
                f"none configurable: {lapse}; then the device does what its installer set"
                f" (map {self.config.driver!r} has no fallback block)"
            )
        if spec.value is None and spec.watchdog is None:
            return self._no_fallback(f"none configurable: {spec.note} ({lapse})")
        await self.start()
        done: list[str] = []
        if spec.watchdog is not None:
            done.append(await self._configure_watchdog(self.map.point(spec.watchdog)))
        fallback_kw: float | None = None
        confirmed_kw: float | None = None
        if spec.value is not None:
            point = self.map.point(spec.value)
            target, fallback_kw, per_kw = self._fallback_target(point, pv_limit_kw)
            exponents = await self._exponents(point)
            try:
                words = encode(point, target, exponents)
            except EncodeError as exc:
                raise SetpointOutOfBoundsError(f"{self.id}: fallback {point.name}: {exc}") from None
            await self.connection.write(point.address, words, self.unit_id, timeout_s=self.timeout_s)
            if spec.enable is not None:
                enable = self.map.point(spec.enable)
                await self.connection.write(
                    enable.address, encode(enable, 1), self.unit_id, timeout_s=self.timeout_s
                )
                if await self._read_point(enable) != 1:
                    raise CommandNotConfirmedError(f"{self.id}: wrote {enable.name} 1, reads back otherwise")
            read_back = await self._read_point(point)
            step = point.scale * 10.0 ** (exponents.get(point.scale_factor or "", 0) or 0)
            if read_back is None or not confirmed(target, read_back, step):
                raise CommandNotConfirmedError(
                    f"{self.id}: wrote fallback {target:g} {point.unit} to {point.name},"
                    f" reads back {read_back}"
                )
            confirmed_kw = read_back / per_kw
            what = (
                "no limit"
                if fallback_kw is None and self.role.value == "pv"
                else f"{read_back:g} {point.unit}"
            )
            done.insert(
                0,
                f"{self.role.value} falls back to {what} ({point.name}"
                + (f", {spec.enable} 1)" if spec.enable is not None else ")"),
            )
        else:
            done.append(f"then: {spec.note}")
        return FallbackResult(
            self.id,
            configured=True,
            detail="; ".join(done),
            fallback_kw=fallback_kw,
            confirmed_kw=confirmed_kw,
        )

    async def _configure_watchdog(self, timer: Point) -> str:
        await self._write_timer(timer)
        expect = math.ceil(self.revert_s / _TIMER_UNITS_S[timer.unit])
        back = await self._read_point(timer)
        if back is None or abs(back - expect) > 1e-9:
            raise CommandNotConfirmedError(f"{self.id}: wrote {timer.name} {expect:g}, reads back {back}")
        return f"watchdog {timer.name} {expect:g} {timer.unit} (no request that long: the fallback)"

    def _fallback_target(self, point: Point, pv_limit_kw: float | None) -> tuple[float, float | None, float]:
        """(value to write in the point's unit, the fallback in kW or None for no limit, units per kW)."""
        low = -math.inf if point.write_min is None else point.write_min
        high = math.inf if point.write_max is None else point.write_max
        if self.role.value == "battery":
            if not low <= 0.0 <= high:
                raise SetpointOutOfBoundsError(f"{self.id}: fallback {point.name} cannot hold 0 kW")
            return 0.0, 0.0, 1.0
        per_kw = 1.0
        if point.unit == "%":
            if not self.rated_kw:
                raise SetpointUnsupportedError(
                    f"{self.id}: a fallback limit in % needs the inverter's rating"
                )
            per_kw = 100.0 / self.rated_kw
        target = high if pv_limit_kw is None else min(high, pv_limit_kw * per_kw)
        step = abs(point.scale) if point.scale_factor is None else 1.0
        target = max(low, math.floor(target / step + 1e-9) * step)  # a register step down, never up
        limit = self._limit_point()
        if self._ceiling is not None and limit is not None:
            ceiling = self._ceiling if limit.unit == point.unit else None
            if ceiling is None and self.rated_kw:
                ceiling = self._ceiling * (self.rated_kw / 100 if limit.unit == "%" else 100 / self.rated_kw)
            if ceiling is not None:
                target = min(target, ceiling)
        unlimited = pv_limit_kw is None and target >= high
        return target, None if unlimited else target / per_kw, per_kw

    def fallback_summary(self, reading: Reading | None = None) -> str | None:
        if self.setpoint_kind is None:
            return None
        spec = self._fallback_spec()
        lapse = self._lapse_text()
        if spec is None:
            if lapse == "keeps the last setpoint":
                return "none: keeps the last setpoint"
            return f"none configurable: {lapse}; then the device does what its installer set"
        values = {} if reading is None else reading.point_values
        parts = []
        if spec.value is not None:
            point = self.map.point(spec.value)
            value = values.get(point.name)
            shown = "n/a" if value is None else f"{value:g} {point.unit}"
            enabled = ""
            if spec.enable is not None:
                on = values.get(spec.enable)
                enabled = ", enabled" if on == 1 else ", not enabled" if on is not None else ""
            parts.append(f"falls back to {shown} ({point.name}{enabled})")
        if spec.watchdog is not None:
            timer = self.map.point(spec.watchdog)
            value = values.get(timer.name)
            shown = "n/a" if value is None else f"{value:g} {timer.unit}"
            parts.append(f"watchdog {shown} ({timer.name})")
        if spec.note:
            parts.append(spec.note)
        parts.append(lapse)
        return "; ".join(part for part in parts if part)

    async def _write_timer(self, timer: Point) -> None:
        factor = _TIMER_UNITS_S.get(timer.unit)
        if factor is None:
            raise SetpointUnsupportedError(
                f"{self.id}: revert point {timer.name} is in {timer.unit!r}, not a time"
            )
        value = math.ceil(self.revert_s / factor)
        try:
            words = encode(timer, value, await self._exponents(timer))
        except EncodeError as exc:  # service.revert_s does not fit the map's timer: never will
            raise SetpointUnsupportedError(f"{self.id}: revert timer: {exc}") from None
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
        """Stop holding setpoints; a persistent PV limit gets the installer's value back (or no limit),
        held or not: a previous run's limit is lifted too (module docstring)."""
        await super().release()
        limit = self._limit_point()
        if self.setpoint_kind != "pv_limit" or limit is None or not self._is_persistent(limit):
            return
        await self.start()
        original = self._original.get(limit.name)
        restore = limit.write_max if original is None else original
        if restore is not None:
            words = encode(limit, restore, await self._exponents(limit))
            await self.connection.write(limit.address, words, self.unit_id, timeout_s=self.timeout_s)
            self._note_limit_released()
