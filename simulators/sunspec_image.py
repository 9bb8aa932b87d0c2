"""SunSpec register images built from pysunspec2's official model definitions.

A `SunSpecImage` is the holding-register content of a SunSpec device from
address 40000: the marker "SunS", then each model as `ID, L, points...`, and
the end model `0xFFFF, 0`. The layout (offsets, types, sizes, scale factor
references) comes from the model JSON that pysunspec2 ships
(`sunspec2.device.get_model_def`), never retyped here; this module only
encodes and decodes the values.

Decisions:
- Every point starts "not implemented" (SunSpec's pattern for its type:
  0x8000 int16 and sunssf, 0xFFFF uint16/enum16/bitfield16, 0 for
  accumulators and pad, NUL strings, NaN float32); a device sets the points it
  implements, so a client sees exactly which ones are.
- Values are set in engineering units and encoded with the scale factor the
  image currently holds (`set_value`), or as raw integers (`set_raw`) for
  enums, bitfields and the scale factors themselves. A value that does not
  fit its type saturates at the largest value short of the "not implemented"
  pattern (as the map simulators do).
- Repeating groups with a count point are laid out with 0 repetitions; fixed
  groups (model 704's power factor groups) once. Group points are named
  `Group.Point`.
- pysunspec2 has no type information; its one import sits behind a
  `type: ignore` and returns plain dicts, checked as they are read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from sunspec2 import device as sunspec_device

from hubctl.codec.sunspec import SunSpecPoint

BASE_ADDRESS = 40000
MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF


@dataclass(frozen=True, slots=True)
class _Type:
    words: int
    signed: bool
    unimpl: int  # raw pattern, unsigned, words joined big-endian
    accumulator: bool = False


# (words, signed, "not implemented" pattern) -> the types that share them; accumulators are acc*
_TYPE_GROUPS: tuple[tuple[int, bool, int, tuple[str, ...]], ...] = (
    (1, True, 0x8000, ("int16", "sunssf")),
    (1, False, 0xFFFF, ("uint16", "count", "enum16", "bitfield16")),
    (1, False, 0, ("acc16", "pad")),
    (2, True, 0x8000_0000, ("int32",)),
    (2, False, 0xFFFF_FFFF, ("uint32", "enum32", "bitfield32")),
    (2, False, 0, ("acc32", "ipaddr")),
    (2, True, 0x7FC0_0000, ("float32",)),
    (4, True, 0x8000_0000_0000_0000, ("int64",)),
    (4, False, 0xFFFF_FFFF_FFFF_FFFF, ("uint64",)),
    (4, False, 0, ("acc64",)),
)
_TYPES: dict[str, _Type] = {
    name: _Type(words, signed=signed, unimpl=unimpl, accumulator=name.startswith("acc"))
    for words, signed, unimpl, names in _TYPE_GROUPS
    for name in names
}


class SunSpecImageError(ValueError):
    """A model or point the image does not have, or a value that cannot be set."""


def _point_def(pdef: Any) -> tuple[str, str, int, str | int | None, bool, str]:
    if not isinstance(pdef, dict):
        raise SunSpecImageError(f"point definition is not an object: {pdef!r}")
    name, ptype, size = pdef.get("name"), pdef.get("type"), pdef.get("size")
    if not isinstance(name, str) or not isinstance(ptype, str) or not isinstance(size, int):
        raise SunSpecImageError(f"point definition without name, type or size: {pdef!r}")
    sf = pdef.get("sf")
    if sf is not None and not isinstance(sf, str | int):
        raise SunSpecImageError(f"{name}: scale factor {sf!r} is neither a name nor a number")
    return name, ptype, size, sf, pdef.get("access") == "RW", str(pdef.get("units", ""))


class SunSpecImage:
    """Holding registers 40000.. of a SunSpec device with the given models (common model 1 first)."""

    def __init__(self, model_ids: tuple[int, ...]) -> None:
        if not model_ids or model_ids[0] != 1:
            raise SunSpecImageError("a SunSpec device starts with the common model 1")
        self.model_ids = model_ids
        self.points: dict[tuple[int, str], SunSpecPoint] = {}
        self.model_addresses: dict[int, int] = {}
        words: list[int] = list(MARKER)
        for mid in model_ids:
            if mid in self.model_addresses:
                raise SunSpecImageError(f"model {mid} twice: address points by model id and name")
            start = BASE_ADDRESS + len(words)
            self.model_addresses[mid] = start
            group = sunspec_device.get_model_def(mid)["group"]
            layout = self._layout(mid, group, start, "")
            length = sum(p.size for p in layout) - 2
            for p in layout:
                self.points[(mid, p.name)] = p
                words += _split(p, _TYPES[p.type].unimpl if p.type in _TYPES else 0)
            words[start - BASE_ADDRESS] = mid
            words[start - BASE_ADDRESS + 1] = length
        words += [END_MODEL_ID, 0]
        self.words = words

    def _layout(self, mid: int, group: Any, address: int, prefix: str) -> list[SunSpecPoint]:
        if not isinstance(group, dict):
            raise SunSpecImageError(f"model {mid}: group definition is not an object")
        out: list[SunSpecPoint] = []
        for pdef in group.get("points", []):
            name, ptype, size, sf, writable, units = _point_def(pdef)
            out.append(SunSpecPoint(mid, prefix + name, address, ptype, size, units, sf, writable))
            address += size
        for sub in group.get("groups", []):
            count = sub.get("count", 1) if isinstance(sub, dict) else 1
            repeats = count if isinstance(count, int) else 0  # counted by a point: none here
            for k in range(repeats):
                tag = f"{sub['name']}." if repeats == 1 else f"{sub['name']}[{k}]."
                inner = self._layout(mid, sub, address, prefix + tag)
                out += inner
                address = inner[-1].end if inner else address
        return out

    # -- access
    @property
    def end_address(self) -> int:
        """First address after the image (the end model included)."""
        return BASE_ADDRESS + len(self.words)

    def point(self, model_id: int, name: str) -> SunSpecPoint:
        try:
            return self.points[(model_id, name)]
        except KeyError:
            raise SunSpecImageError(f"model {model_id} has no point {name!r} in this image") from None

    def _words(self, p: SunSpecPoint) -> list[int]:
        i = p.address - BASE_ADDRESS
        return self.words[i : i + p.size]

    def _put(self, p: SunSpecPoint, words: list[int]) -> None:
        i = p.address - BASE_ADDRESS
        self.words[i : i + p.size] = words

    def set_raw(self, model_id: int, name: str, raw: int | None) -> None:
        """Store an integer as the point's type holds it (None: not implemented)."""
        p = self.point(model_id, name)
        info = _type(p)
        if raw is None:
            self._put(p, _split(p, info.unimpl))
            return
        low, high = _raw_range(p)
        self._put(p, _split(p, min(max(raw, low), high) & ((1 << (16 * p.size)) - 1)))

    def set_string(self, model_id: int, name: str, text: str) -> None:
        p = self.point(model_id, name)
        if p.type != "string":
            raise SunSpecImageError(f"{model_id}.{name} is {p.type}, not a string")
        data = text.encode("utf-8")[: 2 * p.size].ljust(2 * p.size, b"\0")
        self._put(p, [int.from_bytes(data[k : k + 2], "big") for k in range(0, len(data), 2)])

    def exponent(self, p: SunSpecPoint) -> int | None:
        """The scale factor exponent in force for `p` (0 without one; None when not implemented)."""
        if p.scale_factor is None:
            return 0
        if isinstance(p.scale_factor, int):
            return p.scale_factor
        return self.get_raw(p.model_id, p.scale_factor)

    def set_value(self, model_id: int, name: str, value: float | None) -> None:
        """Store an engineering value, scaled by the point's scale factor; None: not implemented."""
        p = self.point(model_id, name)
        exponent = self.exponent(p)
        if value is None or not math.isfinite(value) or exponent is None:
            self.set_raw(model_id, name, None)
            return
        if p.type == "float32":
            self._put(p, _split(p, int.from_bytes(struct.pack(">f", value), "big")))
            return
        raw = round(value / 10.0**exponent)
        if _type(p).accumulator and raw <= 0:
            raw = 1  # 0 reads as "not implemented"
        self.set_raw(model_id, name, raw)

    def get_raw(self, model_id: int, name: str) -> int | None:
        p = self.point(model_id, name)
        return self.decode_raw(p, self._words(p))

    def get_value(self, model_id: int, name: str) -> float | None:
        p = self.point(model_id, name)
        return self.decode_value(p, self._words(p))

    def decode_raw(self, p: SunSpecPoint, words: list[int]) -> int | None:
        """The integer the words hold for `p`, None for the "not implemented" pattern."""
        info = _type(p)
        raw = 0
        for w in words:
            raw = raw << 16 | (w & 0xFFFF)
        if raw == info.unimpl:
            return None
        if info.signed and raw >= 1 << (16 * p.size - 1):
            raw -= 1 << (16 * p.size)
        return raw

    def decode_value(self, p: SunSpecPoint, words: list[int]) -> float | None:
        """The engineering value of `words` for `p` (scaled), None when not implemented."""
        if p.type == "float32":
            raw = words[0] << 16 | words[1]
            value: float = struct.unpack(">f", raw.to_bytes(4, "big"))[0]
            return value if math.isfinite(value) else None
        raw_int = self.decode_raw(p, words)
        exponent = self.exponent(p)
        if raw_int is None or exponent is None:
            return None
        return raw_int * 10.0**exponent if exponent >= 0 else raw_int / 10.0**-exponent


def _type(p: SunSpecPoint) -> _Type:
    try:
        return _TYPES[p.type]
    except KeyError:
        raise SunSpecImageError(f"{p.model_id}.{p.name}: type {p.type} is not supported here") from None


def _raw_range(p: SunSpecPoint) -> tuple[int, int]:
    """Raw values a point may hold, short of its "not implemented" pattern."""
    info = _type(p)
    bits = 16 * p.size
    if info.signed:
        return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
    if info.unimpl == 0:
        return 1 if info.accumulator else 0, (1 << bits) - 1
    return 0, (1 << bits) - 2


def _split(p: SunSpecPoint, raw: int) -> list[int]:
    return [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(p.size))]


def scale_exponent(max_abs: float, *, signed: bool, minimum: int = 0) -> int:
    """The smallest exponent >= `minimum` at which `max_abs` fits an int16 (signed) or uint16."""
    limit = 32767 if signed else 65534
    exponent = minimum
    while abs(max_abs) / 10.0**exponent > limit and exponent < 10:
        exponent += 1
    return exponent
