# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Register maps: Modbus drivers as data. The schema of a map file, its roles, and its loader.

One YAML file in `drivers/` describes one device model. This module validates
such a file (`load_map`, `parse_map`: YAML read and problems worded by
`hubctl.config.base`) into a `RegisterMap` of `Point`s and the roles the device
plays. Reads, decoding and encoding are the codec's (`hubctl.codec.registers`),
which a map uses to plan its reads (`RegisterMap.read_plan`) and to check that
its write bounds are representable. It does no I/O besides reading the map
file: no sockets, no asyncio, no clock, no logging.

Schema of a map file (every mapping is closed: unknown keys are errors)::

    device:
      vendor: Eastron                      # required
      model: SDM630-Modbus V2              # required
      document:                            # the vendor document the addresses come from
        title: "..."                       # required
        version: "..."                     # required; say "not confirmed" rather than guess
        section: "..."                     # optional: table or chapter
      firmware_tested: []                  # firmware versions checked on hardware ([] = none yet)
    transport:                             # optional; these are the defaults
      max_registers_per_read: 125          # 1..125 (the Modbus limit); lower for slow devices
      max_gap_registers: 0                 # unused registers a read may span to join two points
      delay_between_requests_s: 0.0        # pause after each answer before the next request
      delay_after_connect_s: 0.0           # quiet time after the TCP connect (Huawei: ~1 s)
      timeout_s: 3.0                       # per request
      single_client: false                 # the device serves one TCP client at a time
    default_unit_id: 1                     # 0..255, used unless the site config names another
    word_order: big                        # optional default for the points: big | little
    points:
      - name: active_power_kw              # snake_case, ends in a unit suffix (see UNIT_SUFFIXES)
        unit: kW                           # must agree with the suffix
        function: input                    # holding | input
        address: 52                        # 0-based protocol address (manual's 30053 -> 52)
        type: float32                      # int16 uint16 int32 uint32 float32 acc32 acc64 uint64
        word_order: big                    # big: high word first; little: low word first
        scale: 0.001                       # fixed multiplier: device unit -> unit of the name
        scale_factor: w_sf                 # optional: name of an int16 *_sf point (SunSpec 10^sf)
        sign: 1                            # 1 or -1, to reach hubctl's sign convention
        not_implemented: [0x8000]          # optional raw patterns meaning "no value"
        access: r                          # r | rw
        write_min: -10.0                   # rw only, required there: bounds in the unit of the name
        write_max: 10.0
        refresh_s: 30                      # rw only: hubctl re-writes at least this often
        revert_s: 60                       # rw only: the device reverts after this long unwritten
        revert_point: wmaxlim_rvrt_s       # rw only: rw point that sets the device's revert timer
        vendor_label: "Total system power" # optional: the register's name in the vendor document
    roles:                                 # what the device is to hubctl: semantic keys -> point names
      grid_meter: {power_kw: active_power_kw, energy_import_kwh: energy_import_kwh}
      pv:         {power_kw: inverter_active_power_kw, limit_pct: active_power_derating_pct}
      battery:    {power_kw: battery_power_kw, soc_pct: soc_pct, setpoint_kw: battery_setpoint_kw}
    fallback:                              # optional: what the device does once no controller writes
      battery:                             # per controllable role (battery, pv)
        value: battery_fallback_kw         # rw point hubctl writes at start: battery 0 kW; PV the fallback
                                           #   limit (% of the rating or kW)
        enable: fallback_enable_code       # rw point hubctl sets to 1 with the value (the "use it" switch)
        watchdog: comm_timeout_s           # rw time point (s, min, h) hubctl writes service.revert_s to at
                                           #   start: no Modbus request that long -> the device's fallback
        note: "..."                        # what the device does otherwise, in the document's words;
                                           #   required without `value`

Checks on load: names unique; no two points share a register within one
function space; every rw point has bounds that its type can hold; refresh_s is
at most half of revert_s (one lost write must not let a setpoint lapse);
scale_factor and revert_point name existing points of the right kind.

Roles (the contract with the simulator and the device drivers): a map lists the
roles its device can play and, per role, which point gives each semantic value::

    grid_meter: {power_kw: <point>, energy_import_kwh: <point>?, energy_export_kwh: <point>?}
    park_meter: same keys as grid_meter; a park_meter device falls back to grid_meter
    pv:         {power_kw: <point>, limit_pct: <rw point>? | limit_kw: <rw point>?}
    battery:    {power_kw: <point>, soc_pct: <point>, setpoint_kw: <rw point>?}

A key's unit suffix must match its point's unit; the setpoint keys (limit_pct,
limit_kw, setpoint_kw) must name rw points. A read key may name a list of
points instead of one: the value is their sum (a device that only reports per
phase, e.g. Victron's system service); points that are not implemented are
left out of the sum, and the sum is None only when all of them are. Decoded
values follow hubctl's signs (the points' `sign` does that), so role values
need no further flipping. `role_values` computes them from decoded points;
`role_point_values` is the inverse a simulator uses (a sum is spread equally).
`roles` is optional in the schema; the contract tests require it of every
file in drivers/.

Fallbacks (#12, "every controllable device has a fallback for a dead controller"): `fallback` says,
per controllable role, which registers make the device fall back by itself and what it does
without them. `hubctl.service.fallbacks.FallbackKeeper` (through `ModbusMapDevice.configure_fallback`)
is the one place that writes them, once the device answers; a map without a block for the role is
said at start and in `hubctl read` ("none: keeps the last setpoint", or the setpoint's own revert
timer). Checks: the points exist, are rw holding registers, `value` is in kW (battery) or % / kW
(PV), `enable` is a *_code point whose bounds take 1, `watchdog` is a time (s, min, h), the role is
one the map offers, and `note` is given where there is no `value`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from enum import StrEnum
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import Field, PrivateAttr, StrictInt, model_validator

from hubctl.codec.registers import (
    MODBUS_MAX_REGISTERS_PER_READ,
    TYPES,
    DataType,
    Function,
    WordOrder,
    encode,
    plan_reads,
)
from hubctl.config.base import FrozenModel, load_yaml, parse_model
from hubctl.errors import EncodeError, RegisterMapError

if TYPE_CHECKING:  # annotations only (postponed by `from __future__ import annotations`)
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from hubctl.codec.registers import ReadBlock

# Unit suffix of a point name -> the unit its value is in ("" = dimensionless).
UNIT_SUFFIXES: dict[str, str] = {
    "kw": "kW",
    "w": "W",
    "kwh": "kWh",
    "wh": "Wh",
    "kvar": "kvar",
    "var": "var",
    "kvarh": "kvarh",
    "kva": "kVA",
    "va": "VA",
    "v": "V",
    "a": "A",
    "hz": "Hz",
    "pct": "%",
    "s": "s",
    "min": "min",
    "h": "h",
    "degc": "°C",
    "ratio": "",  # e.g. power factor
    "code": "",  # enumerations and bit fields, decoded as their integer
    "sf": "",  # SunSpec scale factor exponent
}
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")


class Access(StrEnum):
    R = "r"
    RW = "rw"


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class Document(FrozenModel):
    """The vendor document a map cites."""

    title: str = Field(min_length=1)
    version: str = Field(min_length=1, description='issue/revision; "not confirmed" rather than a guess')
    section: str = ""


class DeviceModel(FrozenModel):
    """What the map describes and where its addresses come from."""

    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    document: Document
    firmware_tested: tuple[str, ...] = Field(default=(), description="[] = not yet checked on hardware")


class Transport(FrozenModel):
    """How the device wants to be talked to."""

    max_registers_per_read: StrictInt = Field(default=MODBUS_MAX_REGISTERS_PER_READ, ge=1, le=125)
    max_gap_registers: StrictInt = Field(default=0, ge=0, le=124)
    delay_between_requests_s: float = Field(default=0.0, ge=0, le=60, allow_inf_nan=False)
    delay_after_connect_s: float = Field(default=0.0, ge=0, le=60, allow_inf_nan=False)
    timeout_s: float = Field(default=3.0, gt=0, le=120, allow_inf_nan=False)
    single_client: bool = False


class Point(FrozenModel):
    """One value on the device: where it lives, how it is encoded, and how it may be written."""

    name: str
    unit: str
    function: Function
    address: StrictInt = Field(ge=0, le=0xFFFF)
    type: DataType
    word_order: WordOrder = WordOrder.BIG
    scale: FiniteFloat = 1.0
    scale_factor: str | None = None
    sign: Literal[1, -1] = 1
    not_implemented: tuple[StrictInt, ...] | None = None
    access: Access = Access.R
    write_min: FiniteFloat | None = None
    write_max: FiniteFloat | None = None
    refresh_s: Seconds | None = None
    revert_s: Seconds | None = None
    revert_point: str | None = None
    vendor_label: str = ""

    @property
    def count(self) -> int:
        """Number of 16-bit registers the point occupies."""
        return TYPES[self.type].words

    @property
    def end(self) -> int:
        """First register after the point (exclusive end)."""
        return self.address + self.count

    @property
    def sentinels(self) -> tuple[int, ...]:
        """Raw patterns (unsigned, words joined) that mean "not implemented"."""
        return TYPES[self.type].not_implemented if self.not_implemented is None else self.not_implemented

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*self._name_problems(), *self._encoding_problems(), *self._write_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _name_problems(self) -> list[str]:
        if not _NAME.match(self.name):
            return [f"name {self.name!r} must be snake_case with a unit suffix, e.g. active_power_kw"]
        suffix = self.name.rsplit("_", 1)[1]
        if suffix not in UNIT_SUFFIXES:
            known = ", ".join(sorted(UNIT_SUFFIXES))
            return [f"name {self.name!r} must end in a unit suffix ({known})"]
        if self.unit != UNIT_SUFFIXES[suffix]:
            return [
                f"unit {self.unit!r} does not match the suffix _{suffix} (expected {UNIT_SUFFIXES[suffix]!r})"
            ]
        return []

    def _encoding_problems(self) -> list[str]:
        problems = []
        info = TYPES[self.type]
        if self.end > 0x10000:
            problems.append(f"registers {self.address}..{self.end - 1} run past 65535")
        if self.scale == 0:
            problems.append("scale must not be 0")
        problems += [
            f"not_implemented pattern {raw:#x} does not fit {self.type}"
            for raw in self.not_implemented or ()
            if not 0 <= raw < 1 << info.bits
        ]
        if self.scale_factor is not None and info.is_float:
            problems.append("scale_factor applies to integer types, not float32")
        return problems

    def _write_problems(self) -> list[str]:
        if self.access is Access.R:
            rw_only = ("write_min", "write_max", "refresh_s", "revert_s", "revert_point")
            given = [field for field in rw_only if getattr(self, field) is not None]
            return [f"{', '.join(given)}: only for access rw"] if given else []
        if self.write_min is None or self.write_max is None:
            return ["an rw point needs write_min and write_max (in the unit of its name)"]
        problems = []
        if self.write_min >= self.write_max:
            problems.append(f"write_min {self.write_min} must be below write_max {self.write_max}")
        elif self.scale_factor is None:  # with a scale factor the range is only known at run time
            for bound in (self.write_min, self.write_max):
                try:
                    encode(self, bound)
                except EncodeError as exc:
                    problems.append(f"bound {bound} is not representable: {exc.reason}")
        if self.refresh_s is not None and self.revert_s is not None and self.refresh_s > self.revert_s / 2:
            problems.append(
                f"refresh_s {self.refresh_s} must be at most half of revert_s {self.revert_s}"
                " so that one lost write does not let the setpoint lapse"
            )
        if self.revert_point is not None and self.revert_s is not None:
            problems.append("give revert_s or revert_point, not both")
        return problems


# --- Roles -----------------------------------------------------------------------------------------------

PointNames = str | tuple[str, ...]  # one point, or several whose values are summed
SETPOINT_KEYS = frozenset({"limit_pct", "limit_kw", "setpoint_kw"})
_ROLE_UNITS = {"power_kw": "kW", "energy_import_kwh": "kWh", "energy_export_kwh": "kWh", "soc_pct": "%"}
_ROLE_UNITS |= {"limit_pct": "%", "limit_kw": "kW", "setpoint_kw": "kW"}


class GridMeterRole(FrozenModel):
    """A meter at a connection: + import / - export."""

    power_kw: PointNames
    energy_import_kwh: PointNames | None = None
    energy_export_kwh: PointNames | None = None


class PvRole(FrozenModel):
    """A PV inverter: output >= 0, and optionally the point that limits it (percent of rating, or kW)."""

    power_kw: PointNames
    limit_pct: str | None = None
    limit_kw: str | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Self:
        if self.limit_pct is not None and self.limit_kw is not None:
            raise ValueError("give limit_pct or limit_kw, not both")
        return self


class BatteryRole(FrozenModel):
    """A battery system: + discharge / - charge, its state of charge, and optionally its power setpoint."""

    power_kw: PointNames
    soc_pct: str
    setpoint_kw: str | None = None


class RoleFallback(FrozenModel):
    """What a device falls back to once no controller writes, and the registers hubctl sets for it."""

    value: str | None = None
    enable: str | None = None
    watchdog: str | None = None
    note: str = ""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.value is None and not self.note.strip():
            raise ValueError("a fallback without a value point needs a note: what the device does then")
        if self.enable is not None and self.value is None:
            raise ValueError("enable switches a fallback value on: give value too")
        return self


class Fallbacks(FrozenModel):
    """Per controllable role, the device's own fallback (see the module docstring, "Fallbacks")."""

    pv: RoleFallback | None = None
    battery: RoleFallback | None = None

    def of(self, role: str) -> RoleFallback | None:
        return self.battery if role == "battery" else self.pv if role == "pv" else None


_FALLBACK_VALUE_UNITS = {"battery": ("kW",), "pv": ("%", "kW")}
_TIME_UNITS = ("s", "min", "h")


class Roles(FrozenModel):
    """The roles a device model can play; a park_meter device uses `park_meter`, else `grid_meter`."""

    grid_meter: GridMeterRole | None = None
    park_meter: GridMeterRole | None = None
    pv: PvRole | None = None
    battery: BatteryRole | None = None

    def offered(self) -> tuple[str, ...]:
        """Names of the roles this map can play (park_meter whenever a grid meter is there)."""
        names = [name for name in ("grid_meter", "pv", "battery") if getattr(self, name) is not None]
        if self.park_meter is not None or self.grid_meter is not None:
            names.insert(1 if self.grid_meter is not None else 0, "park_meter")
        return tuple(names)

    def keys(self, role: str) -> dict[str, tuple[str, ...]] | None:
        """Semantic key -> point names for `role` (None when the map does not offer it)."""
        if role not in {"grid_meter", "park_meter", "pv", "battery"}:
            return None
        block = getattr(self, role)
        if block is None and role == "park_meter":
            block = self.grid_meter
        if block is None:
            return None
        return {
            key: (names,) if isinstance(names, str) else tuple(names)
            for key, names in block.model_dump().items()
            if names is not None
        }


class RegisterMap(FrozenModel):
    """A device model's register map, as loaded from one file in drivers/."""

    device: DeviceModel
    transport: Transport = Transport()
    default_unit_id: StrictInt = Field(ge=0, le=255)
    word_order: WordOrder = Field(default=WordOrder.BIG, description="default for points without one")
    points: tuple[Point, ...]
    roles: Roles = Roles()
    fallback: Fallbacks = Fallbacks()
    _index: dict[str, Point] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_word_order(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "word_order" not in data or not isinstance(data.get("points"), list):
            return data
        points = [
            {"word_order": data["word_order"], **point} if isinstance(point, dict) else point
            for point in data["points"]
        ]
        return {**data, "points": points}

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = [*self._duplicate_names(), *self._overlaps(), *self._references(), *self._read_sizes()]
        problems += self._role_problems()
        problems += self._fallback_problems()
        if not self.points:
            problems.append("points: a map needs at least one point")
        if problems:
            raise ValueError("; ".join(problems))
        self._index.update((point.name, point) for point in self.points)
        return self

    def _duplicate_names(self) -> list[str]:
        counts = Counter(p.name for p in self.points)
        return [f"point name {name!r} is used more than once" for name, n in sorted(counts.items()) if n > 1]

    def _overlaps(self) -> list[str]:
        problems = []
        for function in Function:
            ordered = sorted((p for p in self.points if p.function is function), key=lambda p: p.address)
            problems += [
                f"{a.name} ({function} {a.address}..{a.end - 1}) overlaps {b.name} ({function} {b.address}..)"
                for a, b in pairwise(ordered)
                if b.address < a.end
            ]
        return problems

    def _references(self) -> list[str]:
        by_name = {p.name: p for p in self.points}
        problems = []
        for point in self.points:
            if point.scale_factor is not None:
                sf = by_name.get(point.scale_factor)
                if sf is None:
                    problems.append(
                        f"{point.name}: scale_factor {point.scale_factor!r} is not a point of this map"
                    )
                elif not (
                    sf.type is DataType.INT16 and sf.name.endswith("_sf") and sf.scale == 1 and sf.sign == 1
                ):
                    problems.append(f"{point.name}: scale_factor {sf.name!r} must be an int16 *_sf point")
                elif sf.scale != 1 or sf.sign != 1 or sf.scale_factor is not None or sf.access is Access.RW:
                    problems.append(
                        f"{point.name}: scale_factor {sf.name!r} must be read-only, scale 1, sign 1"
                    )
            if point.revert_point is not None:
                timer = by_name.get(point.revert_point)
                if timer is None or timer.access is not Access.RW:
                    problems.append(
                        f"{point.name}: revert_point {point.revert_point!r} must be an rw point of this map"
                    )
        return problems

    def _read_sizes(self) -> list[str]:
        limit = self.transport.max_registers_per_read
        return [
            f"{p.name}: needs {p.count} registers, more than max_registers_per_read {limit}"
            for p in self.points
            if p.count > limit
        ]

    def _role_problems(self) -> list[str]:
        by_name = {p.name: p for p in self.points}
        problems = []
        for role in ("grid_meter", "park_meter", "pv", "battery"):
            if getattr(self.roles, role) is None:
                continue
            for key, names in (self.roles.keys(role) or {}).items():
                if not names:
                    problems.append(f"roles.{role}.{key}: names no point")
                for name in names:
                    point = by_name.get(name)
                    if point is None:
                        problems.append(f"roles.{role}.{key}: {name!r} is not a point of this map")
                    elif point.unit != _ROLE_UNITS[key]:
                        problems.append(
                            f"roles.{role}.{key}: {name} is in {point.unit!r}, expected {_ROLE_UNITS[key]!r}"
                        )
                    elif key in SETPOINT_KEYS and point.access is not Access.RW:
                        problems.append(f"roles.{role}.{key}: {name} must be an rw point")
        return problems

    def _fallback_problems(self) -> list[str]:
        by_name = {p.name: p for p in self.points}
        problems = []
        for role in ("battery", "pv"):
            spec = self.fallback.of(role)
            if spec is None:
                continue
            where = f"fallback.{role}"
            if getattr(self.roles, role) is None:
                problems.append(f"{where}: the map offers no {role} role")
            for field, name in (("value", spec.value), ("enable", spec.enable), ("watchdog", spec.watchdog)):
                if name is None:
                    continue
                point = by_name.get(name)
                if point is None:
                    problems.append(f"{where}.{field}: {name!r} is not a point of this map")
                    continue
                if point.access is not Access.RW or point.function is not Function.HOLDING:
                    problems.append(f"{where}.{field}: {name} must be an rw holding register")
                    continue
                if field == "value" and point.unit not in _FALLBACK_VALUE_UNITS[role]:
                    units = " or ".join(repr(u) for u in _FALLBACK_VALUE_UNITS[role])
                    problems.append(f"{where}.value: {name} is in {point.unit!r}, expected {units}")
                elif field == "watchdog" and point.unit not in _TIME_UNITS:
                    problems.append(f"{where}.watchdog: {name} is in {point.unit!r}, not a time (s, min, h)")
                elif field == "enable" and not (
                    name.endswith("_code") and (point.write_min or 0) <= 1 <= (point.write_max or 0)
                ):
                    problems.append(f"{where}.enable: {name} must be a *_code point that takes 1")
        return problems

    def point(self, name: str) -> Point:
        """The point called `name`; KeyError if the map has none."""
        return self._index[name]

    def select(self, names: Iterable[str] | None = None) -> tuple[Point, ...]:
        """The named points (all when None) plus the scale factor points they depend on, in map order."""
        wanted = set(self._index) if names is None else {self.point(name).name for name in names}
        wanted |= {sf for name in wanted if (sf := self._index[name].scale_factor) is not None}
        return tuple(p for p in self.points if p.name in wanted)

    def read_plan(self, names: Iterable[str] | None = None) -> list[ReadBlock]:
        """Reads that fetch the named points (all when None), honouring this device's transport limits."""
        return plan_reads(
            self.select(names),
            self.transport.max_registers_per_read,
            max_gap=self.transport.max_gap_registers,
        )


def _role_keys(register_map: RegisterMap, role: str) -> dict[str, tuple[str, ...]]:
    keys = register_map.roles.keys(role)
    if keys is None:
        offered = ", ".join(register_map.roles.offered()) or "none"
        raise KeyError(f"the map offers no {role} role (it offers: {offered})")
    return keys


def role_values(
    register_map: RegisterMap, role: str, values: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Semantic values (power_kw, soc_pct, ...) of `role` from decoded point values.

    A key naming several points is their sum over the implemented ones (None
    when none is). Raises KeyError when the map does not offer `role`.
    """
    keys = _role_keys(register_map, role)
    result: dict[str, float | None] = {}
    for key, names in keys.items():
        parts = [v for name in names if (v := values.get(name)) is not None]
        result[key] = math.fsum(parts) if parts else None
    return result


def role_point_values(
    register_map: RegisterMap, role: str, semantic: Mapping[str, float]
) -> dict[str, float]:
    """Point values that make `role_values` give `semantic` (a sum is spread equally over its points).

    The inverse of `role_values`, for simulators that fill a register image from
    physical quantities. Keys of `semantic` the role does not map are ignored.
    """
    keys = _role_keys(register_map, role)
    return {
        name: semantic[key] / len(names) for key, names in keys.items() if key in semantic for name in names
    }


# --- Loading ---------------------------------------------------------------------------------------------


def parse_map(data: Any, source: str = "<register map>") -> RegisterMap:
    """Validate plain data (from YAML) into a RegisterMap, or raise RegisterMapError listing every problem."""
    return parse_model(
        RegisterMap,
        data,
        source,
        RegisterMapError,
        expected="device, default_unit_id, points",
        named="points",
    )


def load_map(path: Path) -> RegisterMap:
    """Read and validate one register map file."""
    return parse_map(load_yaml(path, RegisterMapError), str(path))
