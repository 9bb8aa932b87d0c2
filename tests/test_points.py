"""The pure points: line protocol, the schema, and the exact line of every point kind.

Moved from tests/test_influx.py with hubctl.data.points (the pure half of the old influx module);
the table pins each builder's line and idempotency key, byte for byte.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubctl.data.points import (
    Point,
    allocation_point,
    command_point,
    company_point,
    device_point,
    encode_line,
    health_point,
    limit_point,
    park_point,
    parse_line,
    quarter_point,
    setpoint_point,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = 1_780_000_000.123
Q = 1_780_000_200.0

# (what, builder call, exact line, idempotency key)
KINDS: list[tuple[str, Callable[[], Point | None], str, str | None]] = [
    (
        "park",
        lambda: park_point(
            "de-hoek", T, grid_kw=-12.5, load_kw=40.25, pv_kw=None, pv_available_kw=30, battery_kw=0
        ),
        "park,site=de-hoek battery_kw=0.0,grid_kw=-12.5,load_kw=40.25,pv_available_kw=30.0 1780000000123",
        None,
    ),
    (
        "company",
        lambda: company_point("de-hoek", "cold-store", T, grid_kw=3, soc_pct=55.5, pv_kw=math.nan),
        "company,company=cold-store,site=de-hoek grid_kw=3.0,soc_pct=55.5 1780000000123",
        None,
    ),
    (
        "device without company",
        lambda: device_point("de-hoek", None, "meter 1", T, power_kw=1.5, energy_kwh=1e-05),
        "device,device=meter\\ 1,site=de-hoek energy_kwh=1e-05,power_kw=1.5 1780000000123",
        None,
    ),
    (
        "device",
        lambda: device_point("de-hoek", "cold-store", "meter-1", T, voltage_v=230),
        "device,company=cold-store,device=meter-1,site=de-hoek voltage_v=230.0 1780000000123",
        None,
    ),
    (
        "limit, import only",
        lambda: limit_point("de-hoek", None, T, 600, "window 16:00-20:00", None, "contract"),
        (
            "limit,export_source=contract,import_source=window\\ 16:00-20:00,site=de-hoek "
            "import_limit_kw=600.0 "
            "1780000000123"
        ),
        None,
    ),
    (
        "limit, export only",
        lambda: limit_point("de-hoek", "bakery", T, None, "none", 50.0, "operator"),
        (
            "limit,company=bakery,export_source=operator,import_source=none,site=de-hoek "
            "export_limit_kw=50.0 "
            "1780000000123"
        ),
        None,
    ),
    (
        "setpoint, battery",
        lambda: setpoint_point("de-hoek", "cold-store", T, -20.0, None),
        "setpoint,company=cold-store,mode=normal,site=de-hoek battery_setpoint_kw=-20.0 1780000000123",
        None,
    ),
    (
        "setpoint, PV limit",
        lambda: setpoint_point("de-hoek", "cold-store", T, None, 12.5, mode="manual"),
        "setpoint,company=cold-store,mode=manual,site=de-hoek pv_limit_kw=12.5 1780000000123",
        None,
    ),
    (
        "allocation",
        lambda: allocation_point("de-hoek", "cold-store", Q, 1.25, 0.0, 0.5, 0.0, 900),
        (
            "allocation,company=cold-store,site=de-hoek covered_s=900.0,export_kwh=0.0,import_kwh=1.25,"
            "shared_in_kwh=0.5,shared_out_kwh=0.0 1780000200000"
        ),
        "allocation:cold-store:1780000200000",
    ),
    (
        "quarter",
        lambda: quarter_point(
            "de-hoek",
            Q,
            grid_kw=450.0,
            import_kwh=112.5,
            export_kwh=0.0,
            import_limit_kw=466.7,
            export_limit_kw=None,
            over_cap=0.0,
            pv_kwh=None,
            covered_s=900.0,
            import_source="window 16:00-20:00",
            export_source="",
        ),
        (
            "quarter,import_source=window\\ 16:00-20:00,site=de-hoek "
            "covered_s=900.0,export_kwh=0.0,grid_kw=450.0,"
            "import_kwh=112.5,import_limit_kw=466.7,over_cap=0.0 1780000200000"
        ),
        "quarter:1780000200000",
    ),
    (
        "command, accepted",
        lambda: command_point("de-hoek", T, "set_mode", "mqtt", "accepted", company="cold-store"),
        (
            "command,command=set_mode,company=cold-store,origin=mqtt,result=accepted,site=de-hoek "
            "accepted=1.0 "
            "1780000000123"
        ),
        None,
    ),
    (
        "command, refused",
        lambda: command_point(
            "de-hoek",
            T,
            "set_battery",
            "api",
            "rejected: out of range",
            value=60.0,
            company="c",
            device="bat,1",
        ),
        (
            "command,command=set_battery,company=c,device=bat\\,1,origin=api,"
            "result=rejected:\\ out\\ of\\ range,"
            "site=de-hoek accepted=0.0,value=60.0 1780000000123"
        ),
        None,
    ),
    (
        "health, device",
        lambda: health_point("de-hoek", T, "device_online", 0.0, company="cold-store", device="meter=1"),
        "health,company=cold-store,device=meter\\=1,event=device_online,site=de-hoek state=0.0 1780000000123",
        None,
    ),
    (
        "health, count",
        lambda: health_point("de-hoek", T, "spool_drop", 1.0, count=700),
        "health,event=spool_drop,site=de-hoek count=700.0,state=1.0 1780000000123",
        None,
    ),
]


@pytest.mark.parametrize(("build", "line", "key"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_each_point_kind_has_its_exact_line(
    build: Callable[[], Point | None], line: str, key: str | None
) -> None:
    point = build()
    assert point is not None
    assert encode_line(point) == line
    assert point.line() == line
    assert point.key == key
    back = parse_line(line)
    assert (back.measurement, dict(back.tags), dict(back.fields), back.ts_ms) == (
        point.measurement,
        dict(point.tags),
        {k: float(v) for k, v in point.fields.items()},
        point.ts_ms,
    )


def test_line_protocol_shape() -> None:
    p = company_point("de-hoek", "cold-store", 1_780_000_000.123, grid_kw=-12.5, soc_pct=None, pv_kw=3)
    assert encode_line(p) == "company,company=cold-store,site=de-hoek grid_kw=-12.5,pv_kw=3.0 1780000000123"


def test_limit_source_is_an_escaped_tag() -> None:
    p = limit_point("park-1", None, 1_780_000_000, 600, "window 16:00-20:00", 500, "contract")
    assert p is not None
    line = encode_line(p)
    assert "import_source=window\\ 16:00-20:00" in line
    assert parse_line(line) == p


def test_nothing_to_record_gives_no_point() -> None:
    assert limit_point("p", None, 0, None, "none", None, "none") is None
    assert setpoint_point("p", "c", 0, None, None) is None


@pytest.mark.parametrize(
    "bad",
    [
        Point("Park", {}, {"grid_kw": 1.0}, 0),
        Point("park", {"Site": "x"}, {"grid_kw": 1.0}, 0),
        Point("park", {"site": ""}, {"grid_kw": 1.0}, 0),
        Point("park", {}, {"gridKw": 1.0}, 0),
        Point("park", {}, {"grid_kw": math.nan}, 0),
        Point("park", {}, {}, 0),
    ],
)
def test_bad_points_are_refused(bad: Point) -> None:
    with pytest.raises(ValueError):
        encode_line(bad)


def test_schema_is_enforced_by_the_builders() -> None:
    with pytest.raises(ValueError, match="not in the schema"):
        park_point("p", 0, grid_kw=1, voltage_v=230)
    assert device_point("p", None, "meter-1", 0, voltage_v=230.0).fields == {"voltage_v": 230.0}


_tag_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n\r\x00"), min_size=1, max_size=20
)


@given(
    tags=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), _tag_text, max_size=4),
    fields=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=4,
    ),
    ts=st.integers(min_value=0, max_value=2**52),
)
def test_line_protocol_round_trip(tags: dict[str, str], fields: dict[str, float], ts: int) -> None:
    p = Point("device", tags, fields, ts)
    back = parse_line(encode_line(p))
    assert back.measurement == "device"
    assert back.tags == tags
    assert back.fields == fields
    assert back.ts_ms == ts
