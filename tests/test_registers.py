# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Register maps and their codec: contracts over every file in drivers/, raw-word tables, properties."""

from __future__ import annotations

import math
import struct
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubctl.codec.registers import (
    DataType,
    Function,
    ReadBlock,
    WordOrder,
    decode,
    decode_reads,
    encode,
    plan_reads,
)
from hubctl.codec.regmap import Access, Point, RegisterMap, load_map, parse_map
from hubctl.errors import DecodeError, EncodeError, RegisterMapError

DRIVERS = Path(__file__).resolve().parent.parent / "drivers"
MAP_FILES = sorted(DRIVERS.glob("*.yaml"))
EXPECTED_MAPS = {
    "eastron-sdm630.yaml",
    "janitza-umg96rm.yaml",
    "carlo-gavazzi-em24.yaml",
    "victron-gx-grid.yaml",
    "victron-gx-ess.yaml",
    "huawei-sun2000.yaml",
    "victron-vebus-ess3.yaml",
}
SF = -2  # exponent used wherever a test needs a scale factor value
RAW_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.ACC32: (0, 2**32 - 1),
    DataType.ACC64: (0, 2**64 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def point(name: str = "x_kw", **fields: Any) -> Point:
    base: dict[str, Any] = {
        "name": name,
        "unit": "kW",
        "function": "holding",
        "address": 0,
        "type": "int16",
    }
    return Point.model_validate(base | fields)


def map_data(*points: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "device": {"vendor": "Test", "model": "T1", "document": {"title": "Test protocol", "version": "1.0"}},
        "default_unit_id": 1,
        "points": list(points),
    } | top


def raw_point(name: str, address: int, kind: str = "int16", **fields: Any) -> dict[str, Any]:
    return {"name": name, "unit": "kW", "function": "holding", "address": address, "type": kind} | fields


def factor(p: Point, exponent: int = 0) -> float:
    return p.scale * p.sign * 10.0**exponent


def sf_values(p: Point) -> dict[str, int | None] | None:
    return {p.scale_factor: SF} if p.scale_factor else None


def sample_values(p: Point) -> list[float]:
    """Values every point must round-trip: its bounds and midpoint, else a spread over its type's range."""
    if p.write_min is not None and p.write_max is not None:
        return [p.write_min, p.write_max, (p.write_min + p.write_max) / 2]
    if p.type is DataType.FLOAT32:
        return [0.0, 1.5, -1234.5, 230.25]
    low, high = RAW_RANGE[p.type]
    low, high = max(low + 1, -(2**40)), min(high - 1, 2**40)  # 64-bit extremes are beyond float precision
    raws = {low, high, 1, 2, (low + high) // 3}
    step = factor(p, SF if p.scale_factor else 0)
    return [raw * step for raw in sorted(raws) if raw not in p.sentinels]


# --- Contract tests over every map in drivers/ ------------------------------------------------------------


def test_every_expected_map_is_present() -> None:
    present = {path.name for path in MAP_FILES}
    assert EXPECTED_MAPS - present == set()


@pytest.fixture(params=MAP_FILES, ids=lambda path: path.name)
def register_map(request: pytest.FixtureRequest) -> RegisterMap:
    path: Path = request.param
    return load_map(path)


def test_map_cites_its_document(register_map: RegisterMap) -> None:
    document = register_map.device.document
    assert document.title.strip()
    assert document.version.strip()
    assert register_map.transport.max_registers_per_read <= 125


def test_map_has_no_overlapping_registers(register_map: RegisterMap) -> None:
    for function in Function:
        owner: dict[int, str] = {}
        for p in register_map.points:
            if p.function is not function:
                continue
            for register in range(p.address, p.address + p.count):
                assert register not in owner, f"{p.name} and {owner[register]} share {function} {register}"
                owner[register] = p.name


def test_rw_points_are_bounded(register_map: RegisterMap) -> None:
    for p in register_map.points:
        if p.access is Access.RW:
            assert p.write_min is not None
            assert p.write_max is not None
            assert p.write_min < p.write_max


def test_every_point_round_trips(register_map: RegisterMap) -> None:
    for p in register_map.points:
        exponent = SF if p.scale_factor else 0
        for value in sample_values(p):
            decoded = decode(p, encode(p, value, sf_values(p)), sf_values(p))
            assert decoded is not None, p.name
            tolerance = abs(value) * 2**-22 if p.type is DataType.FLOAT32 else abs(factor(p, exponent)) / 2
            assert abs(decoded - value) <= tolerance + 1e-9, (p.name, value, decoded)


def test_read_plan_covers_the_map(register_map: RegisterMap) -> None:
    plan = register_map.read_plan()
    planned = [p.name for block in plan for p in block.points]
    assert sorted(planned) == sorted(p.name for p in register_map.points)
    assert all(block.count <= register_map.transport.max_registers_per_read for block in plan)


def test_a_read_plan_decodes(register_map: RegisterMap) -> None:
    """Zero words decode without error: every point gets a value or None (accumulators read 0 as None)."""
    plan = register_map.read_plan()
    values = decode_reads((block, [0] * block.count) for block in plan)
    assert set(values) == {p.name for p in register_map.points}


# --- Table tests: raw words in, values out -----------------------------------------------------------------


def float_words(value: float) -> list[int]:
    raw = int.from_bytes(struct.pack(">f", value), "big")
    return [raw >> 16, raw & 0xFFFF]


@pytest.mark.parametrize(
    ("fields", "words", "expected"),
    [
        # float32, high word first: 230.5 V is 0x43668000
        ({"name": "voltage_l1_v", "unit": "V", "type": "float32"}, [0x4366, 0x8000], 230.5),
        (
            {"name": "voltage_l1_v", "unit": "V", "type": "float32", "word_order": "little"},
            [0x8000, 0x4366],
            230.5,
        ),
        # float32 W -> kW
        ({"type": "float32", "scale": 0.001}, float_words(-4321.5), -4.3215),
        # Carlo Gavazzi: int32 low word first, Watt*10: -123456 = 0xFFFE1DC0 -> -12345.6 W
        ({"type": "int32", "word_order": "little", "scale": 0.0001}, [0x1DC0, 0xFFFE], -12.3456),
        ({"type": "int32", "scale": 0.0001}, [0xFFFE, 0x1DC0], -12.3456),
        ({"type": "uint32", "word_order": "little"}, [0x0002, 0x0001], 65538.0),
        ({"type": "int16"}, [0xFFFF], -1.0),
        ({"type": "uint16"}, [0xFFFE], 65534.0),
        # Victron/Huawei battery power: + charging on the device, + discharge in hubctl
        ({"name": "battery_power_kw", "type": "int16", "scale": 0.001, "sign": -1}, [1000], -1.0),
        ({"name": "battery_power_kw", "type": "int16", "scale": 0.001, "sign": -1}, [0xFC18], 1.0),
        ({"type": "acc32"}, [0x0000, 0x0001], 1.0),
        ({"type": "acc64"}, [0, 0, 0x0001, 0x0000], 65536.0),
        ({"type": "uint64", "word_order": "little"}, [1, 0, 0, 0], 1.0),
        ({"name": "soc_pct", "unit": "%", "type": "uint16", "scale": 0.1}, [655], 65.5),
    ],
)
def test_decode_table(fields: dict[str, Any], words: list[int], expected: float) -> None:
    assert decode(point(**fields), words) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"type": "int16"}, [0x8000]),
        ({"type": "uint16"}, [0xFFFF]),
        ({"type": "int32"}, [0x8000, 0x0000]),
        ({"type": "int32", "word_order": "little"}, [0x0000, 0x8000]),
        ({"type": "uint32"}, [0xFFFF, 0xFFFF]),
        ({"type": "acc32"}, [0, 0]),
        ({"type": "acc64"}, [0, 0, 0, 0]),
        ({"type": "uint64"}, [0xFFFF] * 4),
        ({"type": "float32"}, [0x7FC0, 0x0000]),  # NaN
        ({"type": "float32"}, [0xFFC0, 0x0001]),  # another NaN
        ({"type": "float32"}, [0x7F80, 0x0000]),  # +inf
        ({"type": "int32", "not_implemented": [0x7FFFFFFF]}, [0x7FFF, 0xFFFF]),  # Huawei's marker
        ({"type": "int16", "not_implemented": [0x7FFF]}, [0x7FFF]),
    ],
)
def test_not_implemented_decodes_as_none(fields: dict[str, Any], words: list[int]) -> None:
    assert decode(point(**fields), words) is None


def test_not_implemented_list_replaces_the_default() -> None:
    assert decode(point(type="int16", not_implemented=[0x7FFF]), [0x8000]) == -32768.0
    assert decode(point(type="uint16", not_implemented=[]), [0xFFFF]) == 65535.0


def test_scale_factor_ten_to_the_minus_two() -> None:
    w = point("w_kw", type="uint16", scale_factor="w_sf")
    assert decode(w, [12345], {"w_sf": -2}) == 123.45
    assert decode(w, [12345], {"w_sf": 1}) == 123450.0
    assert decode(w, [12345], {"w_sf": None}) is None  # scale factor not implemented
    with pytest.raises(DecodeError):
        decode(w, [12345])
    with pytest.raises(DecodeError):
        decode(w, [12345], {"w_sf": 11})


def test_decode_reads_applies_scale_factors_from_the_same_read() -> None:
    m = parse_map(
        map_data(
            raw_point("w_kw", 40083, "int16", scale_factor="w_sf"),
            {"name": "w_sf", "unit": "", "function": "holding", "address": 40084, "type": "int16"},
            raw_point("energy_kwh", 40093, "acc32", unit="kWh", scale=0.001, scale_factor="wh_sf"),
            {"name": "wh_sf", "unit": "", "function": "holding", "address": 40095, "type": "int16"},
            transport={"max_gap_registers": 10},
        )
    )
    (block,) = m.read_plan()
    words = [0] * block.count
    words[0] = 0xFB2E  # -1234
    words[1] = 0xFFFE  # sf = -2
    words[10:12] = [0x0001, 0x86A0]  # 100000 Wh
    words[12] = 0x0001  # sf = 1
    values = decode_reads([(block, words)])
    assert values["w_kw"] == -12.34
    assert values["w_sf"] == -2.0
    assert values["energy_kwh"] == pytest.approx(1000.0)
    words[1] = 0x8000  # scale factor not implemented -> the value is unknown
    assert decode_reads([(block, words)])["w_kw"] is None


@pytest.mark.parametrize(
    "words",
    [[1], [1, 2, 3], [0x10000, 0], [-1, 0]],
)
def test_decode_rejects_words_that_do_not_fit(words: list[int]) -> None:
    with pytest.raises(DecodeError):
        decode(point(type="int32"), words)


def test_read_block_checks_its_answer() -> None:
    p = point(type="int32", address=10)
    (block,) = plan_reads([p], 125)
    with pytest.raises(DecodeError):
        block.words_for(p, [0])
    with pytest.raises(DecodeError):
        block.words_for(point(type="int16", address=20), [0, 0])


# --- Encoding ------------------------------------------------------------------------------------------


def setpoint(**fields: Any) -> Point:
    base: dict[str, Any] = {"scale": 0.001, "access": "rw", "write_min": -32.767, "write_max": 32.767}
    return point("grid_setpoint_kw", **(base | fields))


def test_encode_table() -> None:
    assert encode(setpoint(), 1.5) == [1500]
    assert encode(setpoint(), -0.05) == [0xFFCE]
    assert encode(setpoint(type="int32", word_order="little", scale=0.0001), -12.3456) == [0x1DC0, 0xFFFE]
    assert encode(point(type="float32"), 230.5) == [0x4366, 0x8000]
    assert encode(point("w_kw", scale_factor="w_sf"), 123.45, {"w_sf": -2}) == [12345]


@pytest.mark.parametrize("value", [32.768, -32.768, 100.0, math.nan, math.inf, -math.inf])
def test_encode_refuses_out_of_bounds(value: float) -> None:
    with pytest.raises(EncodeError) as info:
        encode(setpoint(), value)
    assert info.value.point == "grid_setpoint_kw"


def test_encode_refuses_what_reads_back_as_not_implemented_or_overflows() -> None:
    with pytest.raises(EncodeError, match="not implemented"):
        encode(point(type="acc32"), 0.0)
    with pytest.raises(EncodeError, match="range"):
        encode(point(type="uint16"), -1.0)
    with pytest.raises(EncodeError, match="range"):
        encode(point(type="float32"), 1e39)
    with pytest.raises(EncodeError, match="scale factor"):
        encode(point("w_kw", scale_factor="w_sf"), 1.0)


def test_encode_rounds_back_inside_the_bounds() -> None:
    p = setpoint(scale=0.1, write_min=-1.06, write_max=1.06)
    assert encode(p, 1.06) == [10]  # 10.6 would round to 11 = 1.1 > 1.06
    assert encode(p, -1.06) == [0xFFF6]
    flipped = setpoint(scale=0.1, sign=-1, write_min=-1.06, write_max=1.06)
    assert decode(flipped, encode(flipped, 1.06)) == pytest.approx(1.0)


# --- Loading and validation -------------------------------------------------------------------------------


def problems_of(data: Any) -> str:
    with pytest.raises(RegisterMapError) as info:
        parse_map(data, "test.yaml")
    assert info.value.exit_code == 78
    return "\n".join(info.value.problems)


def test_parse_map_fills_the_map_word_order() -> None:
    m = parse_map(map_data(raw_point("a_kw", 0, "int32"), word_order="little"))
    assert m.point("a_kw").word_order is WordOrder.LITTLE
    m = parse_map(map_data(raw_point("a_kw", 0, "int32", word_order="big"), word_order="little"))
    assert m.point("a_kw").word_order is WordOrder.BIG


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (map_data(raw_point("a_kw", 0, "int32"), raw_point("b_kw", 1)), "a_kw (holding 0..1) overlaps b_kw"),
        (map_data(raw_point("a_kw", 0), raw_point("a_kw", 5)), "'a_kw' is used more than once"),
        (
            map_data(raw_point("a_kw", 0, access="rw")),
            "points[a_kw]: an rw point needs write_min and write_max",
        ),
        (map_data(raw_point("a_kw", 0, write_max=3)), "only for access rw"),
        (map_data(raw_point("a_kw", 0, scale_factor="nope_sf")), "scale_factor 'nope_sf' is not a point"),
        (
            map_data(raw_point("a_kw", 0, scale_factor="b_kw"), raw_point("b_kw", 1)),
            "must be an int16 *_sf point",
        ),
        (map_data(raw_point("active_power", 0)), "must end in a unit suffix"),
        (map_data(raw_point("ActivePower_kw", 0)), "must be snake_case"),
        (map_data(raw_point("a_kwh", 0)), "unit 'kW' does not match the suffix _kwh"),
        (map_data(raw_point("a_kw", 65535, "int32")), "run past 65535"),
        (map_data(raw_point("a_kw", 0, scale=0)), "scale must not be 0"),
        (map_data(raw_point("a_kw", 0, not_implemented=[0x10000])), "does not fit int16"),
        (map_data(raw_point("a_kw", 0, unexpected=1)), "Extra inputs are not permitted"),
        (
            map_data(raw_point("a_kw", 0, access="rw", write_min=-32.768, write_max=1, scale=0.001)),
            "not implemented",
        ),
        (map_data(raw_point("a_kw", 0, access="rw", write_min=0, write_max=70000, type="uint16")), "range"),
        (map_data(raw_point("a_kw", 0, access="rw", write_min=1, write_max=1)), "must be below write_max"),
        (
            map_data(raw_point("a_kw", 0, access="rw", write_min=1.1, write_max=1.9)),
            "no step of 1.0 kW lies in",
        ),
        (
            map_data(raw_point("a_kw", 0, access="rw", write_min=0, write_max=1, refresh_s=40, revert_s=60)),
            "at most half of revert_s",
        ),
        (
            map_data(raw_point("a_kw", 0, access="rw", write_min=0, write_max=1, revert_point="t_s")),
            "revert_point",
        ),
        (
            map_data(raw_point("a_kw", 0), transport={"max_registers_per_read": 126}),
            "less than or equal to 125",
        ),
        (
            map_data(raw_point("a_kw", 0, "int32"), transport={"max_registers_per_read": 1}),
            "more than max_registers",
        ),
        (map_data(), "at least one point"),
        ({"device": {"vendor": "x", "model": "y"}, "default_unit_id": 1, "points": []}, "device.document"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_invalid_maps_are_refused_with_a_reason(data: Any, expected: str) -> None:
    assert expected in problems_of(data)


def test_load_map_reports_file_and_yaml_problems(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_map(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("device: [unclosed\n", encoding="utf-8")
    with pytest.raises(RegisterMapError, match="line 2"):
        load_map(broken)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(map_data(raw_point("a_kw", 0x10, "uint16"))), encoding="utf-8")
    assert load_map(good).point("a_kw").address == 16


def test_select_adds_scale_factor_points() -> None:
    m = parse_map(
        map_data(
            raw_point("w_kw", 10, scale_factor="w_sf"),
            {"name": "w_sf", "unit": "", "function": "holding", "address": 20, "type": "int16"},
            raw_point("other_kw", 30),
        )
    )
    assert [p.name for p in m.select(["w_kw"])] == ["w_kw", "w_sf"]
    assert [p.name for b in m.read_plan(["w_kw"]) for p in b.points] == ["w_kw", "w_sf"]
    with pytest.raises(KeyError):
        m.point("missing_kw")


# --- Properties -----------------------------------------------------------------------------------------

TYPE_WORDS = {
    t: {DataType.INT16: 1, DataType.UINT16: 1, DataType.ACC64: 4, DataType.UINT64: 4}.get(t, 2)
    for t in DataType
}


@st.composite
def point_layouts(draw: st.DrawFn) -> list[Point]:
    """Non-overlapping points in both function spaces, with random gaps and sizes."""
    points = []
    for function in Function:
        address = draw(st.integers(0, 200))
        for i in range(draw(st.integers(0, 25))):
            kind = draw(st.sampled_from(list(DataType)))
            if address + TYPE_WORDS[kind] > 0x10000:
                break
            points.append(
                point(f"p{function.value}{i}_kw", function=function.value, address=address, type=kind.value)
            )
            address += TYPE_WORDS[kind] + draw(st.integers(0, 12))
    return points


@given(points=point_layouts(), max_registers=st.integers(4, 125), max_gap=st.integers(0, 16))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_plan_reads_covers_each_point_once_within_limits(
    points: list[Point], max_registers: int, max_gap: int
) -> None:
    blocks = plan_reads(points, max_registers, max_gap=max_gap)
    planned = [p.name for block in blocks for p in block.points]
    assert sorted(planned) == sorted(p.name for p in points)  # every point exactly once
    for block in blocks:
        assert 1 <= block.count <= max_registers
        assert block.address == block.points[0].address  # no wasted registers at the edges
        assert block.end == max(p.end for p in block.points)
        for p in block.points:
            assert p.function is block.function
            assert block.address <= p.address
            assert p.end <= block.end
        for before, after in pairwise(block.points):
            assert after.address - before.end <= max_gap
    for function in Function:
        spans = sorted((b.address, b.end) for b in blocks if b.function is function)
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start  # blocks never overlap


@given(points=point_layouts())
def test_plan_reads_without_gaps_only_joins_adjacent_points(points: list[Point]) -> None:
    for block in plan_reads(points, 125):
        assert block.count == sum(p.count for p in block.points)


def test_plan_reads_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads([], 126)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([], 10, max_gap=-1)
    with pytest.raises(ValueError, match="needs 4 registers"):
        plan_reads([point(type="uint64")], 3)


INTEGER_TYPES = [t for t in DataType if t is not DataType.FLOAT32]


@st.composite
def bounded_points(draw: st.DrawFn) -> Point:
    """A writable point with random type, scale, sign and word order, and bounds its type can hold."""
    kind = draw(st.sampled_from(list(DataType)))
    scale = draw(st.sampled_from([0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 0.5, 2.5]))
    sign = draw(st.sampled_from([1, -1]))
    if kind is DataType.FLOAT32:
        low, high = -1e6, 1e6
    else:
        raw_low, raw_high = RAW_RANGE[kind]
        raw_low, raw_high = max(raw_low + 1, -(2**40)), min(raw_high - 1, 2**40)  # stay clear of sentinels
        if kind in {DataType.ACC32, DataType.ACC64}:
            raw_low = 1
        a = draw(st.integers(raw_low, raw_high - 2))
        b = draw(st.integers(a + 2, raw_high))
        low, high = sorted((a * scale * sign, b * scale * sign))
        # Bounds between two steps, so that rounding to the nearest step can overshoot them.
        low += draw(st.sampled_from([0.0, 0.3, 0.5])) * scale
        high -= draw(st.sampled_from([0.0, 0.3, 0.5])) * scale
    return point(
        type=kind.value,
        scale=scale,
        sign=sign,
        word_order=draw(st.sampled_from(["big", "little"])),
        access="rw",
        write_min=low,
        write_max=high,
    )


@given(data=st.data(), p=bounded_points())
@settings(max_examples=300)
def test_encode_decode_round_trip(data: st.DataObject, p: Point) -> None:
    assert p.write_min is not None
    assert p.write_max is not None
    value = data.draw(st.floats(p.write_min, p.write_max, allow_nan=False))
    words = encode(p, value)
    assert len(words) == p.count
    assert all(0 <= w <= 0xFFFF for w in words)
    decoded = decode(p, words)
    assert decoded is not None
    if p.type is DataType.FLOAT32:
        assert abs(decoded - value) <= abs(value) * 2**-22 + 1e-30
    else:
        step = abs(p.scale)
        assert abs(decoded - value) <= step * (1 + 1e-9)
        tolerance = 1e-9 * max(1.0, abs(p.write_min), abs(p.write_max))
        assert (
            p.write_min - tolerance <= decoded <= p.write_max + tolerance
        )  # rounding never leaves the bounds


@given(kind=st.sampled_from(list(DataType)), order=st.sampled_from(list(WordOrder)), data=st.data())
def test_any_register_words_decode_to_a_finite_value_or_none(
    kind: DataType, order: WordOrder, data: st.DataObject
) -> None:
    p = point(type=kind.value, word_order=order.value, scale=0.01, sign=-1)
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=p.count, max_size=p.count))
    value = decode(p, words)
    assert value is None or math.isfinite(value)


@given(p=bounded_points(), block_offset=st.integers(0, 20), data=st.data())
def test_decode_reads_matches_decode(p: Point, block_offset: int, data: st.DataObject) -> None:
    moved = p.model_copy(update={"address": 1000 + block_offset})
    block = ReadBlock(Function.HOLDING, 1000, block_offset + moved.count, (moved,))
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
    assert decode_reads([(block, words)]) == {moved.name: decode(moved, words[block_offset:])}
