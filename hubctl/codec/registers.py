# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Register maps: Modbus drivers as data, and the pure codec that reads and writes them.

One YAML file in `drivers/` describes one device model. This module validates
such a file (`load_map`), groups its points into Modbus reads (`plan_reads`),
and turns register words into engineering values and back (`decode`,
`encode`). It does no I/O besides reading the map file: no sockets, no
asyncio, no clock, no logging. Pollers, the simulator and the tests all use it.

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

Values: ``value = raw * scale * 10**sf * sign``, where raw is the register
content read as `type` (words joined per `word_order`) and sf the value of the
`scale_factor` point (0 without one). Sign convention (SCENARIOS.md): grid power
+ import / - export, battery power + discharge / - charge, PV power >= 0.

"Not implemented" (decoded as None, never 0): by default 0x8000 for int16,
0xFFFF for uint16, 0x80000000 for int32, 0xFFFFFFFF for uint32,
0xFFFFFFFFFFFFFFFF for uint64, 0 for the accumulators acc32/acc64, and any NaN
or infinity for float32. A point's `not_implemented` list replaces the integer
default (e.g. Huawei marks int32 as 0x7FFFFFFF); `[]` turns it off.

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

`encode` enforces write bounds on points that have them and the type's range
on every point (the simulator encodes read-only points too); whether a point
may be written at all (`access`) is for the writer to check.
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, model_validator

from hubctl.errors import DecodeError, EncodeError, RegisterMapError

if TYPE_CHECKING:  # annotations only (postponed by `from __future__ import annotations`)
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

MODBUS_MAX_REGISTERS_PER_READ = 125
_FLOAT = struct.Struct(">f")
SCALE_FACTOR_RANGE = range(-10, 11)  # SunSpec sunssf values outside this are treated as device faults

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


class Function(StrEnum):
    HOLDING = "holding"
    INPUT = "input"


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    ACC32 = "acc32"
    ACC64 = "acc64"
    UINT64 = "uint64"


class WordOrder(StrEnum):
    BIG = "big"  # high word first (Modbus' usual order)
    LITTLE = "little"  # low word first (e.g. Carlo Gavazzi)


class Access(StrEnum):
    R = "r"
    RW = "rw"


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    words: int
    signed: bool
    is_float: bool
    not_implemented: tuple[int, ...]

    @property
    def bits(self) -> int:
        return 16 * self.words

    @property
    def raw_min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


_TYPES: dict[DataType, _TypeInfo] = {
    DataType.INT16: _TypeInfo(1, signed=True, is_float=False, not_implemented=(0x8000,)),
    DataType.UINT16: _TypeInfo(1, signed=False, is_float=False, not_implemented=(0xFFFF,)),
    DataType.INT32: _TypeInfo(2, signed=True, is_float=False, not_implemented=(0x8000_0000,)),
    DataType.UINT32: _TypeInfo(2, signed=False, is_float=False, not_implemented=(0xFFFF_FFFF,)),
    DataType.FLOAT32: _TypeInfo(2, signed=True, is_float=True, not_implemented=()),
    DataType.ACC32: _TypeInfo(2, signed=False, is_float=False, not_implemented=(0,)),
    DataType.ACC64: _TypeInfo(4, signed=False, is_float=False, not_implemented=(0,)),
    DataType.UINT64: _TypeInfo(4, signed=False, is_float=False, not_implemented=(0xFFFF_FFFF_FFFF_FFFF,)),
}

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Document(_Model):
    """The vendor document a map cites."""

    title: str = Field(min_length=1)
    version: str = Field(min_length=1, description='issue/revision; "not confirmed" rather than a guess')
    section: str = ""


class DeviceModel(_Model):
    """What the map describes and where its addresses come from."""

    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    document: Document
    firmware_tested: tuple[str, ...] = Field(default=(), description="[] = not yet checked on hardware")


class Transport(_Model):
    """How the device wants to be talked to."""

    max_registers_per_read: StrictInt = Field(default=MODBUS_MAX_REGISTERS_PER_READ, ge=1, le=125)
    max_gap_registers: StrictInt = Field(default=0, ge=0, le=124)
    delay_between_requests_s: float = Field(default=0.0, ge=0, le=60, allow_inf_nan=False)
    delay_after_connect_s: float = Field(default=0.0, ge=0, le=60, allow_inf_nan=False)
    timeout_s: float = Field(default=3.0, gt=0, le=120, allow_inf_nan=False)
    single_client: bool = False


class Point(_Model):
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
        return _TYPES[self.type].words

    @property
    def end(self) -> int:
        """First register after the point (exclusive end)."""
        return self.address + self.count

    @property
    def sentinels(self) -> tuple[int, ...]:
        """Raw patterns (unsigned, words joined) that mean "not implemented"."""
        return _TYPES[self.type].not_implemented if self.not_implemented is None else self.not_implemented

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
        info = _TYPES[self.type]
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


class GridMeterRole(_Model):
    """A meter at a connection: + import / - export."""

    power_kw: PointNames
    energy_import_kwh: PointNames | None = None
    energy_export_kwh: PointNames | None = None


class PvRole(_Model):
    """A PV inverter: output >= 0, and optionally the point that limits it (percent of rating, or kW)."""

    power_kw: PointNames
    limit_pct: str | None = None
    limit_kw: str | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Self:
        if self.limit_pct is not None and self.limit_kw is not None:
            raise ValueError("give limit_pct or limit_kw, not both")
        return self


class BatteryRole(_Model):
    """A battery system: + discharge / - charge, its state of charge, and optionally its power setpoint."""

    power_kw: PointNames
    soc_pct: str
    setpoint_kw: str | None = None


class Roles(_Model):
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


class RegisterMap(_Model):
    """A device model's register map, as loaded from one file in drivers/."""

    device: DeviceModel
    transport: Transport = Transport()
    default_unit_id: StrictInt = Field(ge=0, le=255)
    word_order: WordOrder = Field(default=WordOrder.BIG, description="default for points without one")
    points: tuple[Point, ...]
    roles: Roles = Roles()
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


def _format_errors(exc: ValidationError, data: Any) -> list[str]:
    points = data.get("points") if isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int) and isinstance(points, list):
            raw = points[loc[1]] if loc[1] < len(points) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            loc[:2] = [f"points[{name}]" if isinstance(name, str) else f"points[{loc[1]}]"]
        path = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return lines


def parse_map(data: Any, source: str = "<register map>") -> RegisterMap:
    """Validate plain data (from YAML) into a RegisterMap, or raise RegisterMapError listing every problem."""
    if not isinstance(data, dict):
        raise RegisterMapError(
            source, ["(top level): expected a mapping with device, default_unit_id, points"]
        )
    try:
        return RegisterMap.model_validate(data)
    except ValidationError as exc:
        raise RegisterMapError(source, _format_errors(exc, data)) from exc


def load_map(path: Path) -> RegisterMap:
    """Read and validate one register map file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegisterMapError(str(path), [f"(file): cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"
        raise RegisterMapError(
            str(path), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from exc
    return parse_map(data, str(path))


# --- Read planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a point sits in a block's answer and how to decode it, worked out once per ReadBlock."""

    point: Point
    offset: int
    inside: bool
    count: int
    big: bool
    signed: bool
    is_float: bool
    bits: int
    sentinels: frozenset[int]
    sign: int
    scale: float
    divisor: int | None
    unsigned: struct.Struct | None  # the words as one big-endian unsigned integer; None: low word first


_UNSIGNED = {1: struct.Struct(">H"), 2: struct.Struct(">I"), 4: struct.Struct(">Q")}


def _divisor(scale: float) -> int | None:
    """The integer to divide by instead of multiplying by `scale` (0.001 -> 1000), when there is one."""
    inverse = 1 / scale
    return round(inverse) if abs(scale) < 1 and inverse == round(inverse) else None


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read: `count` registers of `function` from `address`, holding `points` (address order).

    The decoding layout of its points is worked out when the block is made
    (`decode_reads` is the hot path of every poll), from the points it holds.
    """

    function: Function
    address: int
    count: int
    points: tuple[Point, ...]
    _layouts: tuple[_Layout, ...] = field(init=False, repr=False, compare=False)
    _scale_factors: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        layouts = []
        for point in self.points:
            info = _TYPES[point.type]
            offset = point.address - self.address
            inside = point.function is self.function and offset >= 0 and point.end <= self.end
            layouts.append(
                _Layout(
                    point=point,
                    offset=offset,
                    inside=inside,
                    count=info.words,
                    big=point.word_order is WordOrder.BIG,
                    signed=info.signed,
                    is_float=info.is_float,
                    bits=info.bits,
                    sentinels=frozenset(point.sentinels),
                    sign=point.sign,
                    scale=point.scale,
                    divisor=_divisor(point.scale),
                    unsigned=_UNSIGNED[info.words]
                    if point.word_order is WordOrder.BIG or info.words == 1
                    else None,
                )
            )
        object.__setattr__(self, "_layouts", tuple(layouts))
        sfs = frozenset(p.scale_factor for p in self.points if p.scale_factor is not None)
        object.__setattr__(self, "_scale_factors", sfs)

    @property
    def end(self) -> int:
        return self.address + self.count

    def words_for(self, point: Point, words: Sequence[int]) -> Sequence[int]:
        """The slice of this block's answer that belongs to `point`."""
        if len(words) != self.count:
            raise DecodeError(
                f"read at {self.function} {self.address} expected {self.count} words, got {len(words)}"
            )
        offset = point.address - self.address
        if point.function is not self.function or offset < 0 or point.end > self.end:
            raise DecodeError(f"{point.name} is not inside the read at {self.function} {self.address}")
        return words[offset : offset + point.count]


def plan_reads(points: Iterable[Point], max_registers: int, *, max_gap: int = 0) -> list[ReadBlock]:
    """Group points into as few reads as a greedy pass finds.

    A read holds points of one function, spans at most `max_registers`
    registers and skips at most `max_gap` unused registers between two points.
    Blocks are returned by function, then address; they never overlap.
    """
    if not 1 <= max_registers <= MODBUS_MAX_REGISTERS_PER_READ:
        raise ValueError(f"max_registers must be 1..{MODBUS_MAX_REGISTERS_PER_READ}, got {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    blocks: list[ReadBlock] = []
    for function in Function:
        ordered = sorted((p for p in points if p.function is function), key=lambda p: (p.address, p.end))
        current: list[Point] = []
        start = end = 0
        for point in ordered:
            if point.count > max_registers:
                raise ValueError(f"{point.name} needs {point.count} registers, more than {max_registers}")
            if current and point.address - end <= max_gap and max(end, point.end) - start <= max_registers:
                current.append(point)
                end = max(end, point.end)
                continue
            if current:
                blocks.append(ReadBlock(function, start, end - start, tuple(current)))
            current, start, end = [point], point.address, point.end
        if current:
            blocks.append(ReadBlock(function, start, end - start, tuple(current)))
    return blocks


# --- Codec -----------------------------------------------------------------------------------------------


def _join(point: Point, words: Sequence[int]) -> int:
    if len(words) != point.count:
        raise DecodeError(f"{point.name}: {point.type} needs {point.count} words, got {len(words)}")
    ordered = words if point.word_order is WordOrder.BIG else list(reversed(words))
    raw = 0
    for word in ordered:
        if not 0 <= word <= 0xFFFF:
            raise DecodeError(f"{point.name}: {word!r} is not a 16-bit register value")
        raw = raw << 16 | word
    return raw


def _split(point: Point, raw: int) -> list[int]:
    words = [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(point.count))]
    return words if point.word_order is WordOrder.BIG else list(reversed(words))


def _raw_value(point: Point, words: Sequence[int]) -> float | None:
    """The register content as its type says (signed int, unsigned int or float), None if not implemented."""
    raw = _join(point, words)
    info = _TYPES[point.type]
    if raw in point.sentinels:
        return None
    if info.is_float:
        value: float = struct.unpack(">f", raw.to_bytes(4, "big"))[0]
        return value if math.isfinite(value) else None
    if info.signed and raw > info.raw_max:
        raw -= 1 << info.bits
    return raw


def _exponent(point: Point, scale_factors: Mapping[str, int | None] | None) -> tuple[bool, int | None]:
    """(found, exponent) of the point's scale factor: (True, 0) without one; None if not implemented."""
    if point.scale_factor is None:
        return True, 0
    if scale_factors is None or point.scale_factor not in scale_factors:
        return False, None
    return True, scale_factors[point.scale_factor]


def _apply(point: Point, raw: float, exponent: int) -> float:
    return _scaled(raw, point.sign, point.scale, _divisor(point.scale), exponent)


def _scaled(raw: float, sign: int, scale: float, divisor: int | None, exponent: int) -> float:
    # Dividing by 10**n rounds better than multiplying by 10**-n (12345 / 100 == 123.45, 12345 * 0.01 is not),
    # so a scale like 0.001 divides by 1000.
    value = raw * sign / divisor if divisor is not None else raw * sign * scale
    if exponent == 0:
        return value + 0.0  # + 0.0 drops -0.0
    power = float(10 ** abs(exponent))  # exact for |exponent| <= 22
    return (value / power if exponent < 0 else value * power) + 0.0


def decode(
    point: Point, words: Sequence[int], scale_factors: Mapping[str, int | None] | None = None
) -> float | None:
    """Engineering value of `point` from its register words; None when the device says "not implemented".

    `scale_factors` maps a scale factor point's name to its exponent (None when
    that register is itself not implemented), as `decode_reads` builds it.
    """
    found, exponent = _exponent(point, scale_factors)
    if not found:
        raise DecodeError(f"{point.name}: scale factor {point.scale_factor!r} was not given")
    raw = _raw_value(point, words)
    if raw is None or exponent is None:
        return None
    if exponent not in SCALE_FACTOR_RANGE:
        raise DecodeError(f"{point.name}: scale factor {point.scale_factor} = {exponent} is outside -10..10")
    return _apply(point, raw, exponent)


def decode_reads(reads: Iterable[tuple[ReadBlock, Sequence[int]]]) -> dict[str, float | None]:
    """Decode every point of the answered reads, scale factor points first.

    Gives the same values as `decode` point by point (a property test holds
    them equal), through each block's precomputed layout.
    """
    answered = list(reads)
    for block, words in answered:
        if len(words) != block.count:
            raise DecodeError(
                f"read at {block.function} {block.address} expected {block.count} words, got {len(words)}"
            )
    referenced = {name for block, _ in answered for name in block._scale_factors}  # noqa: SLF001
    exponents: dict[str, int | None] = {}
    if referenced:
        for block, words in answered:
            for layout in block._layouts:  # noqa: SLF001 - the block's own decoding layout
                if layout.point.name in referenced:
                    raw = _layout_raw(layout, block, words)
                    exponents[layout.point.name] = None if raw is None else int(raw)
    values: dict[str, float | None] = {}
    for block, words in answered:
        try:
            packed: bytes | None = struct.pack(f">{block.count}H", *words)
        except struct.error:
            packed = None  # a word that is not 16-bit: the per-point path names it
        for layout in block._layouts:  # noqa: SLF001
            point = layout.point
            exponent: int | None = 0
            if point.scale_factor is not None:
                if point.scale_factor not in exponents:
                    raise DecodeError(f"{point.name}: scale factor {point.scale_factor!r} was not given")
                exponent = exponents[point.scale_factor]
            unsigned = layout.unsigned
            if packed is not None and unsigned is not None and layout.inside:
                # _packed_raw inlined: this loop runs for every point of every poll.
                at = 2 * layout.offset
                raw = unsigned.unpack_from(packed, at)[0]
                if raw in layout.sentinels:
                    raw = None
                elif layout.is_float:
                    raw = _FLOAT.unpack_from(packed, at)[0]
                    if not math.isfinite(raw):
                        raw = None
                elif layout.signed and raw >> (layout.bits - 1):
                    raw -= 1 << layout.bits
            else:
                raw = _layout_raw(layout, block, words)
            if raw is None or exponent is None:
                values[point.name] = None
                continue
            if exponent == 0:  # _scaled inlined for the common case
                divisor = layout.divisor
                value = (
                    raw * layout.sign / divisor if divisor is not None else raw * layout.sign * layout.scale
                )
                values[point.name] = value + 0.0
                continue
            if exponent not in SCALE_FACTOR_RANGE:
                raise DecodeError(
                    f"{point.name}: scale factor {point.scale_factor} = {exponent} is outside -10..10"
                )
            values[point.name] = _scaled(raw, layout.sign, layout.scale, layout.divisor, exponent)
    return values


def _layout_raw(layout: _Layout, block: ReadBlock, words: Sequence[int]) -> float | None:
    """`_raw_value` through a precomputed layout (same checks, same results)."""
    if not layout.inside:
        raise DecodeError(f"{layout.point.name} is not inside the read at {block.function} {block.address}")
    offset = layout.offset
    if layout.count == 1:
        raw = words[offset]
        if not 0 <= raw <= 0xFFFF:
            raise DecodeError(f"{layout.point.name}: {raw!r} is not a 16-bit register value")
    else:
        part = words[offset : offset + layout.count]
        raw = 0
        for word in part if layout.big else reversed(part):
            if not 0 <= word <= 0xFFFF:
                raise DecodeError(f"{layout.point.name}: {word!r} is not a 16-bit register value")
            raw = raw << 16 | word
    if raw in layout.sentinels:
        return None
    if layout.is_float:
        value: float = _FLOAT.unpack(raw.to_bytes(4, "big"))[0]
        return value if math.isfinite(value) else None
    if layout.signed and raw >> (layout.bits - 1):
        raw -= 1 << layout.bits
    return raw


def encode(point: Point, value: float, scale_factors: Mapping[str, int | None] | None = None) -> list[int]:
    """Register words that make `point` read back as `value` (to within its resolution).

    Raises EncodeError when the value is not finite, outside the point's write
    bounds, not representable in its type, or would read back as "not implemented".
    Integer points round to the nearest step, then step back inside the bounds if rounding left them.
    """
    if not math.isfinite(value):
        raise EncodeError(point.name, value, "not a finite number")
    low, high = point.write_min, point.write_max
    if (low is not None and value < low) or (high is not None and value > high):
        raise EncodeError(point.name, value, f"outside the bounds {low}..{high} {point.unit}".rstrip())
    found, exponent = _exponent(point, scale_factors)
    if not found or exponent is None:
        raise EncodeError(point.name, value, f"scale factor {point.scale_factor!r} is unknown")
    if exponent not in SCALE_FACTOR_RANGE:
        raise EncodeError(point.name, value, f"scale factor {exponent} is outside -10..10")
    step = _apply(point, 1, exponent)
    info = _TYPES[point.type]
    if info.is_float:
        try:
            packed = struct.pack(">f", value / step)
        except OverflowError:
            raise EncodeError(point.name, value, "out of float32 range") from None
        raw = int.from_bytes(packed, "big")
        if not math.isfinite(struct.unpack(">f", packed)[0]):
            raise EncodeError(point.name, value, "out of float32 range")
    else:
        inside = _round_inside(round(value / step), step, low, high)
        if inside is None:
            raise EncodeError(point.name, value, f"no step of {abs(step)} {point.unit} lies in {low}..{high}")
        raw = inside
        if not info.raw_min <= raw <= info.raw_max:
            raise EncodeError(point.name, value, f"out of {point.type} range")
        raw &= (1 << info.bits) - 1
    if raw in point.sentinels:
        raise EncodeError(point.name, value, f"would read back as not implemented ({raw:#x})")
    return _split(point, raw)


def _round_inside(raw: int, step: float, low: float | None, high: float | None) -> int | None:
    """Step a rounded raw value back inside [low, high] if rounding pushed it out; None if no step fits."""

    def above(raw: int) -> bool:
        return high is not None and raw * step > high + 1e-9 * max(1.0, abs(high))

    def below(raw: int) -> bool:
        return low is not None and raw * step < low - 1e-9 * max(1.0, abs(low))

    if above(raw):
        raw = raw - 1 if step > 0 else raw + 1
    elif below(raw):
        raw = raw + 1 if step > 0 else raw - 1
    return None if above(raw) or below(raw) else raw
