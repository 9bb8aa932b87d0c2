# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""SunSpec over Modbus: discover the model chain, decode models, and give the role values hubctl uses.

The model definitions are pysunspec2's (the official SunSpec JSON models): a
model's registers are decoded by `sunspec2.device.Model` (types, offsets,
repeating groups, "not implemented" patterns). hubctl retypes no SunSpec
table. pysunspec2's own Modbus client is blocking, so it is not used: reads go
through `hubctl.transport.modbus` (this module only takes read/write callables) and the
register words are handed to pysunspec2 to decode.

Decisions:

- **Discovery**: the marker "SunS" (0x5375 0x6E53) at 40000, then 0, then
  50000 (holding registers). Then the chain of (model id, length) headers up
  to id 0xFFFF. A chain that ends in an exception answer instead of 0xFFFF is
  accepted (some devices do that); one that runs past 65535 or holds more than
  `MAX_MODELS` models is a protocol error. No marker: DeviceIdentityError.
- **Scale factors** are applied here, not by pysunspec2's `cvalue`: when the
  scale factor register itself reads "not implemented" (0x8000) pysunspec2
  returns the unscaled number; hubctl returns None. Accumulators that read 0
  are "not implemented" in SunSpec and decode as None (DOMAIN.md).
- **Reads** of several models are coalesced: adjacent models are read in one
  request of up to 125 registers; a longer model is read in several requests.
- **Signs** (hubctl: grid + import, battery + discharge, PV >= 0):
  - Meters 201-204 / 211-214, `W`: SunSpec meters follow the utility metering
    convention (four quadrants, as the reactive energy names TotVArhImpQ1 /
    TotVArhExpQ3 show): positive real power is import, delivered from the grid.
    That is hubctl's sign: `METER_SIGN = 1`. Some vendors (SolarEdge meters)
    report export as positive; a site with such a meter needs a map of its own.
  - Inverters 101-103 / 111-113 / 701, `W`: + output. Clamped at 0 for the PV
    role (standby draw at night is not negative PV).
  - Storage 802 `W` and 714 `DCW`: + discharge (power leaving the battery,
    "injected" in 714's words), as hubctl. Not confirmed on hardware.
- **Role values** (`role_values`): grid_meter/park_meter from the first meter
  model; pv from the inverter model (power), 123 (WMaxLimPct when WMaxLim_Ena
  is on, else 100) or 704, and the rating (121 WMax, else 120 WRtg, else 702
  WMax / WMaxRtg) as `rated_kw`; battery SoC from 802, else 713, else 124
  ChaState; battery power from 802 W, else 714 DCW, else the W of its inverter
  model (101-103, 111-113, 701: + output = discharge; a 124 storage device has
  no power point of its own); 704 WSet as `setpoint_kw` when WSetEna is on.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import sunspec2.device as sunspec_device
import sunspec2.mb as sunspec_mb

from hubctl.codec.registers import MODBUS_MAX_REGISTERS_PER_READ
from hubctl.errors import (
    DeviceIdentityError,
    DeviceProtocolError,
    SetpointOutOfBoundsError,
    SetpointUnsupportedError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

ReadRegisters = Callable[[int, int], Awaitable[list[int]]]  # (address, count) -> holding register words
WriteRegisters = Callable[[int, Sequence[int]], Awaitable[None]]  # (address, words)

MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL_ID = 0xFFFF
MAX_MODELS = 100
METER_SIGN = 1  # SunSpec meters: + import, as hubctl (see the module docstring)

METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)
INVERTER_MODELS = (101, 102, 103, 111, 112, 113, 701)
STORAGE_MODELS = (124, 713, 714, 802)
PV_CONTROL_MODELS = (120, 121, 123, 702, 704)
ROLE_MODELS: dict[str, tuple[int, ...]] = {
    "grid_meter": METER_MODELS,
    "park_meter": METER_MODELS,
    "pv": INVERTER_MODELS + PV_CONTROL_MODELS,
    "battery": (*STORAGE_MODELS, *INVERTER_MODELS, 702, 704),
}
_TEXT_TYPES = {"string", "eui48", "ipaddr", "ipv6addr"}
_SKIP_TYPES = {"pad", "sunssf"}
_MAX_SF = 10  # SunSpec scale factors are -10..10


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """One model in the chain: its id, the address of its ID register, and its length L (after ID, L)."""

    model_id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """First register after the model."""
        return self.address + 2 + self.length

    @property
    def name(self) -> str:
        definition = _definition(self.model_id)
        return str(definition["group"]["name"]) if definition else "(no definition)"

    @property
    def label(self) -> str:
        definition = _definition(self.model_id)
        return str(definition["group"].get("label", "")) if definition else ""


@cache
def _definition(model_id: int) -> dict[str, Any] | None:
    try:
        definition: dict[str, Any] = sunspec_device.get_model_def(model_id)
    except Exception:  # noqa: BLE001 - pysunspec2 raises bare Exception subclasses for unknown models
        return None
    return definition


@dataclass(frozen=True, slots=True)
class SunSpecPoint:
    """Where a point of a model lives and how it is encoded (hubctl decodes top-level points; the
    simulators' images lay out group points too, named `Group.Point`)."""

    model_id: int
    name: str
    address: int
    type: str
    size: int
    units: str
    scale_factor: str | int | None  # name of the *_SF point, a fixed exponent, or None
    writable: bool

    @property
    def end(self) -> int:
        """First register after the point."""
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class DecodedModel:
    """A model's top-level points: numbers scaled (None when not implemented), texts, and locations."""

    header: ModelHeader
    values: Mapping[str, float | None]
    raw: Mapping[str, int | float | None]
    texts: Mapping[str, str]
    points: Mapping[str, SunSpecPoint]

    def exponent(self, point: SunSpecPoint) -> int | None:
        """The scale factor exponent of `point` now (0 without one; None: not implemented or out of range)."""
        if point.scale_factor is None:
            return 0
        if isinstance(point.scale_factor, int):
            return point.scale_factor
        raw = self.raw.get(point.scale_factor)
        if raw is None or not -_MAX_SF <= raw <= _MAX_SF:
            return None  # not implemented, or outside SunSpec's -10..10: no usable value
        return int(raw)


# --- Discovery --------------------------------------------------------------------------------------------


async def find_base(read: ReadRegisters) -> tuple[int, list[int]]:
    """The base address holding "SunS", and the 4 words read there (marker + first header)."""
    for base in BASE_ADDRESSES:
        try:
            words = await read(base, 4)
        except DeviceProtocolError:
            continue  # illegal address: not this base
        if tuple(words[:2]) == MARKER:
            return base, words
    raise DeviceIdentityError(
        'no SunSpec marker "SunS" at 40000, 0 or 50000: not a SunSpec device, or another unit id'
    )


async def discover(read: ReadRegisters) -> list[ModelHeader]:
    """The model chain: every model's header, in device order."""
    base, words = await find_base(read)
    headers: list[ModelHeader] = []
    address = base + 2
    header = words[2:4]
    while True:
        model_id, length = header
        if model_id == END_MODEL_ID:
            break
        headers.append(ModelHeader(model_id, address, length))
        address += 2 + length
        if len(headers) > MAX_MODELS or address + 2 > 0x10000:
            raise DeviceProtocolError(
                f"SunSpec chain does not end (past {len(headers)} models, at {address})"
            )
        try:
            header = await read(address, 2)
        except DeviceProtocolError:
            if headers:
                break  # no end marker; some devices answer an exception past the last model
            raise
    if not headers:
        raise DeviceIdentityError(f"SunSpec marker at {base} but no models follow")
    return headers


# --- Reading and decoding ---------------------------------------------------------------------------------


def plan_spans(
    headers: Iterable[ModelHeader], max_registers: int = MODBUS_MAX_REGISTERS_PER_READ
) -> list[tuple[int, int]]:
    """(address, count) reads covering the models: adjacent models joined, at most `max_registers` each."""
    ranges: list[list[int]] = []
    for header in sorted(headers, key=lambda h: h.address):
        if ranges and header.address <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], header.end)
        else:
            ranges.append([header.address, header.end])
    return [
        (address, min(max_registers, end - address))
        for start, end in ranges
        for address in range(start, end, max_registers)
    ]


async def read_models(read: ReadRegisters, headers: Sequence[ModelHeader]) -> dict[int, DecodedModel]:
    """Read and decode `headers` (the first model of each id wins, as in `first_model`)."""
    words: dict[int, int] = {}
    for address, count in plan_spans(headers):
        for offset, word in enumerate(await read(address, count)):
            words[address + offset] = word
    decoded: dict[int, DecodedModel] = {}
    for header in headers:
        if header.model_id in decoded:
            continue
        model_words = [words[a] for a in range(header.address, header.end)]
        decoded[header.model_id] = decode_model(header, model_words)
    return decoded


# pysunspec2 builds a Model and one object per point each time it is given data: about half of the
# gateway's CPU at 140 devices (bench/gateway.py), and refilling a kept Model with `set_mb` still
# cost 40 % at 200 devices. hubctl decodes a model's top-level points only (they come before any
# group, so their offsets do not depend on the groups). So a model is built by pysunspec2 once per
# (id, address, length); its layout (each point's offset, length and pysunspec2's own type codec
# `PointInfo.data_to` / `is_impl`, the same calls `Point.set_mb` makes) is kept, and later reads
# decode the words through that layout without building objects. tests/test_sunspec.py checks
# the fast path against a fresh pysunspec2 Model on random register contents.
@dataclass(frozen=True, slots=True)
class _Layout:
    points: Mapping[str, SunSpecPoint]
    fields: tuple[tuple[str, str, int, int, Callable[[bytes], Any], Callable[[Any], bool]], ...]


_LAYOUTS: dict[tuple[int, int, int], _Layout] = {}
_MAX_CACHED_MODELS = 256


def _point_location(header: ModelHeader, name: str, point: Any) -> SunSpecPoint:
    kind = str(point.pdef["type"])
    sf_name, sf_fixed = point.sf, point.pdef.get("sf")
    scale: str | int | None = str(sf_name) if sf_name else (int(sf_fixed) if sf_fixed is not None else None)
    return SunSpecPoint(
        model_id=header.model_id,
        name=name,
        address=header.address + int(point.offset),
        type=kind,
        size=int(point.len),
        units=str(point.pdef.get("units", "")),
        scale_factor=scale,
        writable=point.pdef.get("access") == "RW",
    )


def _decode_with_pysunspec2(
    header: ModelHeader, data: bytes
) -> tuple[dict[str, int | float | None], dict[str, str], dict[str, SunSpecPoint], Any]:
    try:
        model = sunspec_device.Model(
            model_id=header.model_id, model_addr=header.address, model_len=header.length, data=data
        )
    except Exception as exc:  # noqa: BLE001 - pysunspec2 raises ModelError and plain errors alike
        raise DeviceProtocolError(f"model {header.model_id}: cannot decode: {exc}") from None
    if model.error_info:
        problem = str(model.error_info).strip().replace("\n", "; ")
        raise DeviceProtocolError(f"model {header.model_id}: {problem}")
    raw: dict[str, int | float | None] = {}
    texts: dict[str, str] = {}
    points: dict[str, SunSpecPoint] = {}
    for name, point in model.points.items():
        kind = str(point.pdef["type"])
        if name in {"ID", "L"} or kind == "pad":
            continue
        points[name] = _point_location(header, name, point)
        _store(raw, texts, name, kind, point.value)
    return raw, texts, points, model


def _store(
    raw: dict[str, int | float | None], texts: dict[str, str], name: str, kind: str, value: Any
) -> None:
    if kind in _TEXT_TYPES:
        if value is not None:
            texts[name] = str(value).rstrip("\x00").strip()
        return
    raw[name] = None if value is None else (float(value) if kind.startswith("float") else int(value))


def _layout(model: Any, points: Mapping[str, SunSpecPoint]) -> _Layout:
    fields = []
    for name, location in points.items():
        point = model.points[name]
        start = 2 * int(point.offset)
        fields.append(
            (name, location.type, start, start + 2 * location.size, point.info.data_to, point.info.is_impl)
        )
    return _Layout(points, tuple(fields))


def decode_model(header: ModelHeader, words: Sequence[int]) -> DecodedModel:
    """Decode one model from its register words (ID and L included) with pysunspec2's definition."""
    if len(words) != header.length + 2:
        raise DeviceProtocolError(
            f"model {header.model_id}: expected {header.length + 2} words, got {len(words)}"
        )
    if words[0] != header.model_id:
        raise DeviceProtocolError(f"model {header.model_id} at {header.address} reads as id {words[0]}")
    if _definition(header.model_id) is None:
        raise DeviceProtocolError(f"model {header.model_id}: pysunspec2 has no definition for it")
    try:
        data = struct.pack(f">{len(words)}H", *words)
    except struct.error:
        raise DeviceProtocolError(f"model {header.model_id}: a register word out of range") from None
    key = (header.model_id, header.address, header.length)
    layout = _LAYOUTS.get(key)
    raw: dict[str, int | float | None]
    texts: dict[str, str]
    points: Mapping[str, SunSpecPoint]
    if layout is None:
        raw, texts, points, model = _decode_with_pysunspec2(header, data)
        if len(_LAYOUTS) < _MAX_CACHED_MODELS:  # top-level points sit before any group: a fixed layout
            _LAYOUTS[key] = _layout(model, points)
    else:
        raw, texts, points = {}, {}, layout.points
        try:
            for name, kind, start, end, data_to, is_impl in layout.fields:
                value = data_to(data[start:end])
                _store(raw, texts, name, kind, value if is_impl(value) else None)
        except Exception as exc:  # noqa: BLE001 - as pysunspec2's own set_mb, which records any error
            raise DeviceProtocolError(f"model {header.model_id}: cannot decode: {exc}") from None
    decoded = DecodedModel(header=header, values={}, raw=raw, texts=texts, points=points)
    values: dict[str, float | None] = {}
    for name, location in points.items():
        if location.type in _TEXT_TYPES or location.type in _SKIP_TYPES:
            continue
        number = raw.get(name)
        exponent = decoded.exponent(location)
        if number is None or exponent is None or not math.isfinite(number):
            values[name] = None
        else:
            values[name] = _scaled(number, exponent)
    return DecodedModel(header=header, values=values, raw=raw, texts=texts, points=points)


def _scaled(number: float, exponent: int) -> float:
    if exponent < 0:
        return number / 10.0 ** (-exponent) + 0.0
    return number * 10.0**exponent + 0.0


# --- Encoding for writes ----------------------------------------------------------------------------------


def encode_value(point: SunSpecPoint, value: float, exponent: int | None) -> list[int]:
    """Register words for `value` (engineering units) in `point`, by pysunspec2's type codecs."""
    if exponent is None:
        raise SetpointUnsupportedError(f"{point.model_id}.{point.name}: its scale factor is not implemented")
    if not math.isfinite(value):
        raise SetpointOutOfBoundsError(f"{point.model_id}.{point.name}: {value!r} is not a finite number")
    info = sunspec_mb.point_type_info.get(point.type)
    if info is None or point.type in _TEXT_TYPES or point.type.startswith("float"):
        raise SetpointUnsupportedError(f"{point.model_id}.{point.name}: cannot write a {point.type}")
    raw = round(value / 10.0**exponent) if exponent >= 0 else round(value * 10.0 ** (-exponent))
    bits = 16 * point.size
    signed = point.type.startswith("int") or point.type == "sunssf"
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= raw <= high:
        raise SetpointOutOfBoundsError(f"{point.model_id}.{point.name}: {value} does not fit {point.type}")
    try:
        data: bytes = info.to_data(raw, 2 * point.size)
    except (struct.error, ValueError, TypeError) as exc:
        raise SetpointOutOfBoundsError(
            f"{point.model_id}.{point.name}: cannot encode {value}: {exc}"
        ) from None
    if not info.is_impl(info.data_to(data)):
        raise SetpointOutOfBoundsError(
            f"{point.model_id}.{point.name}: {value} would read as not implemented"
        )
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# --- Role values ------------------------------------------------------------------------------------------


def first_model(models: Mapping[int, DecodedModel], ids: Iterable[int]) -> DecodedModel | None:
    """The first of `ids` (in that order of preference) that the device offers."""
    for model_id in ids:
        if model_id in models:
            return models[model_id]
    return None


def _get(models: Mapping[int, DecodedModel], model_id: int, name: str) -> float | None:
    model = models.get(model_id)
    return None if model is None else model.values.get(name)


def _kw(watts: float | None, sign: int = 1) -> float | None:
    return None if watts is None else watts * sign / 1000 + 0.0


def _first_value(models: Mapping[int, DecodedModel], where: Iterable[tuple[int, str]]) -> float | None:
    return next((v for m, n in where if (v := _get(models, m, n)) is not None), None)


def rated_kw(models: Mapping[int, DecodedModel]) -> float | None:
    """The inverter's power rating: 121 WMax, else 120 WRtg, else 702 WMax, else 702 WMaxRtg."""
    for model_id, name in ((121, "WMax"), (120, "WRtg"), (702, "WMax"), (702, "WMaxRtg")):
        watts = _get(models, model_id, name)
        if watts is not None and watts > 0:
            return watts / 1000
    return None


def meter_values(models: Mapping[int, DecodedModel]) -> dict[str, float | None]:
    meter = first_model(models, METER_MODELS)
    if meter is None:
        raise DeviceIdentityError("no SunSpec meter model (201-204, 211-214)")
    imported, exported = meter.values.get("TotWhImp"), meter.values.get("TotWhExp")
    return {
        "power_kw": _kw(meter.values.get("W"), METER_SIGN),
        "energy_import_kwh": None if imported is None else imported / 1000,
        "energy_export_kwh": None if exported is None else exported / 1000,
    }


def pv_limit_pct(models: Mapping[int, DecodedModel]) -> float | None:
    """The active power limit in % of WMax: 123 (or 704) when enabled, 100 when disabled, None unknown."""
    for model_id, pct, enable in ((123, "WMaxLimPct", "WMaxLim_Ena"), (704, "WMaxLimPct", "WMaxLimPctEna")):
        if model_id in models:
            enabled = _get(models, model_id, enable)
            return _get(models, model_id, pct) if enabled == 1 else 100.0
    return None


def pv_values(models: Mapping[int, DecodedModel]) -> dict[str, float | None]:
    inverter = first_model(models, INVERTER_MODELS)
    if inverter is None:
        raise DeviceIdentityError("no SunSpec inverter model (101-103, 111-113, 701)")
    power = _kw(inverter.values.get("W"))
    return {
        "power_kw": None if power is None else max(0.0, power),
        "limit_pct": pv_limit_pct(models),
        "rated_kw": rated_kw(models),
    }


def battery_values(models: Mapping[int, DecodedModel]) -> dict[str, float | None]:
    if first_model(models, STORAGE_MODELS) is None:
        raise DeviceIdentityError("no SunSpec storage model (124, 713, 714, 802)")
    soc = _first_value(models, ((802, "SoC"), (713, "SoC"), (124, "ChaState")))
    # The battery's own power first; else its inverter's AC output (+ discharge), e.g. a 124 storage device.
    power = _first_value(models, ((802, "W"), (714, "DCW"), *((m, "W") for m in INVERTER_MODELS)))
    setpoint = _get(models, 704, "WSet") if _get(models, 704, "WSetEna") == 1 else None
    return {"power_kw": _kw(power), "soc_pct": soc, "setpoint_kw": _kw(setpoint)}


def role_values(role: str, models: Mapping[int, DecodedModel]) -> dict[str, float | None]:
    """hubctl's semantic values for `role` (grid_meter, park_meter, pv, battery) from decoded models."""
    if role in {"grid_meter", "park_meter"}:
        return meter_values(models)
    if role == "pv":
        return pv_values(models)
    if role == "battery":
        return battery_values(models)
    raise ValueError(f"unknown role {role!r}")


def identity(models: Mapping[int, DecodedModel]) -> dict[str, str]:
    """Manufacturer, model, version and serial number from the common model (1), where present."""
    common = models.get(1)
    if common is None:
        return {}
    names = {"Mn": "manufacturer", "Md": "model", "Vr": "version", "SN": "serial"}
    return {label: common.texts[key] for key, label in names.items() if common.texts.get(key)}
