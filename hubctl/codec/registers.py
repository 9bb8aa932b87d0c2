# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""The register codec: register words to engineering values and back, and the reads that fetch them.

The pure half of the register maps (the schema and its loader are `hubctl.codec.regmap`): the
word types (`DataType`, `WordOrder`, `Function`), the grouping of a map's points into Modbus reads
(`plan_reads`, `ReadBlock`), and decoding and encoding (`decode`, `decode_reads`, `encode`). No
I/O: no sockets, no asyncio, no clock, no logging. Pollers, the simulator and the tests all use it.
It takes the schema's `Point` as plain data (its fields) and imports nothing of `regmap` when it runs.

Values: ``value = raw * scale * 10**sf * sign``, where raw is the register
content read as `type` (words joined per `word_order`) and sf the value of the
`scale_factor` point (0 without one). Sign convention (SCENARIOS.md): grid power
+ import / - export, battery power + discharge / - charge, PV power >= 0.

"Not implemented" (decoded as None, never 0): by default 0x8000 for int16,
0xFFFF for uint16, 0x80000000 for int32, 0xFFFFFFFF for uint32,
0xFFFFFFFFFFFFFFFF for uint64, 0 for the accumulators acc32/acc64, and any NaN
or infinity for float32. A point's `not_implemented` list replaces the integer
default (e.g. Huawei marks int32 as 0x7FFFFFFF); `[]` turns it off.

`encode` enforces write bounds on points that have them and the type's range
on every point (the simulator encodes read-only points too); whether a point
may be written at all (`access`) is for the writer to check.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from hubctl.errors import DecodeError, EncodeError

if TYPE_CHECKING:  # annotations only (postponed by `from __future__ import annotations`)
    from collections.abc import Iterable, Mapping, Sequence

    from hubctl.codec.regmap import Point

MODBUS_MAX_REGISTERS_PER_READ = 125
_FLOAT = struct.Struct(">f")
SCALE_FACTOR_RANGE = range(-10, 11)  # SunSpec sunssf values outside this are treated as device faults


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


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """How a register type is held: its words, sign, float or not, and its "not implemented" patterns."""

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


TYPES: dict[DataType, TypeInfo] = {
    DataType.INT16: TypeInfo(1, signed=True, is_float=False, not_implemented=(0x8000,)),
    DataType.UINT16: TypeInfo(1, signed=False, is_float=False, not_implemented=(0xFFFF,)),
    DataType.INT32: TypeInfo(2, signed=True, is_float=False, not_implemented=(0x8000_0000,)),
    DataType.UINT32: TypeInfo(2, signed=False, is_float=False, not_implemented=(0xFFFF_FFFF,)),
    DataType.FLOAT32: TypeInfo(2, signed=True, is_float=True, not_implemented=()),
    DataType.ACC32: TypeInfo(2, signed=False, is_float=False, not_implemented=(0,)),
    DataType.ACC64: TypeInfo(4, signed=False, is_float=False, not_implemented=(0,)),
    DataType.UINT64: TypeInfo(4, signed=False, is_float=False, not_implemented=(0xFFFF_FFFF_FFFF_FFFF,)),
}


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
            info = TYPES[point.type]
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
    info = TYPES[point.type]
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
    info = TYPES[point.type]
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
