"""A shared connection's park meter: the caps are held on it (`Snapshot.park_meter`), the companies'
meters split it; a stale park meter is fail-safe. Pure tests of the core and the config rules.

The park in these tests imports over its cap at night (no sun) and at noon exports over it; a
common load `c` at the connection (the park meter reads the companies' sum plus `c`) must be
covered by the batteries as if the cap were `c` lower, and an export from a common PV roof as if
the export cap were that much lower.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_control import NIGHT, NOON, decide, expected_grid, park, reading

from hubctl.cli.main import main
from hubctl.config.devices import DeviceRole
from hubctl.config.site import Connection, parse_config
from hubctl.core.control import step
from hubctl.core.forecast import Forecast, with_common_load
from hubctl.core.quarters import ParkStep
from hubctl.core.types import CompanyReading, Params, ParkMeterReading, Snapshot, State
from hubctl.data.ledger import Ledger
from hubctl.devices.base import Reading
from hubctl.errors import ConfigError
from hubctl.service.cycle import MeterCheck
from hubctl.service.store import Layout, ReadingStore

if TYPE_CHECKING:
    from pathlib import Path


def metered(snap: Snapshot, common_kw: float, age_s: float = 1.0) -> Snapshot:
    """The snapshot with a park meter that reads the companies' sum plus `common_kw`."""
    total = sum(r.grid_kw or 0.0 for r in snap.companies)
    return Snapshot(snap.ts_utc, snap.companies, park_meter=ParkMeterReading(total + common_kw, age_s))


def test_the_import_cap_is_held_on_the_park_meter_not_on_the_sum() -> None:
    p = park()
    snap = Snapshot(NIGHT, (reading(200), reading(260, soc=60)))  # 460 summed, cap 500
    alone, _ = decide(p, snap)
    sp_alone = alone.battery_setpoint_kw[1]
    assert sp_alone is not None
    assert sp_alone <= 0.0  # the sum is inside the cap: no discharge (it may charge into the headroom)
    assert expected_grid(snap, alone) <= 500 + 1e-6
    with_meter, _ = decide(p, metered(snap, 80.0))  # the park meter reads 540: 40 over
    sp = with_meter.battery_setpoint_kw[1]
    assert sp is not None
    assert sp >= 40.0 - 1e-6
    assert expected_grid(snap, with_meter) + 80.0 <= 500 + 1e-6  # on the park meter
    assert "import cap" in with_meter.reason


def test_an_export_the_sub_meters_do_not_see_is_held_too() -> None:
    p = park()
    snap = Snapshot(NOON, (reading(50, pv=200), reading(50, pv=50, soc=30)))  # -150 summed, cap 200
    d, _ = decide(p, metered(snap, -120.0))  # a common roof exports 120 more: -270 at the meter
    assert expected_grid(snap, d) - 120.0 >= -200 - 1e-6


def test_a_stale_or_missing_park_meter_is_fail_safe() -> None:
    p = park()
    snap = Snapshot(NIGHT, (reading(200), reading(260, soc=60)))
    stale, _ = decide(p, metered(snap, 10.0, age_s=p.stale_after_s + 1))
    assert stale.mode == "failsafe"
    assert "park meter" in stale.reason
    missing, _ = decide(p, Snapshot(NIGHT, snap.companies, park_meter=ParkMeterReading(None)))
    assert missing.mode == "failsafe"
    fresh, _ = decide(p, metered(snap, 10.0))
    assert fresh.mode == "normal"


def test_no_park_meter_and_an_agreeing_one_decide_alike() -> None:
    """A park meter that reads exactly the sum changes nothing (the group contract's decision)."""
    p = park()
    for snap in (
        Snapshot(NIGHT, (reading(300), reading(350, soc=60))),
        Snapshot(NOON, (reading(20, pv=500), reading(30, pv=250, soc=50))),
    ):
        a, _ = decide(p, snap)
        b, _ = decide(p, metered(snap, 0.0))
        assert a.battery_setpoint_kw == pytest.approx(b.battery_setpoint_kw)
        assert a.pv_limit_kw == b.pv_limit_kw


@settings(max_examples=150, deadline=None)
@given(
    load_a=st.floats(0, 400),
    load_b=st.floats(0, 400),
    common=st.floats(-50, 150),
    soc=st.floats(20, 90),
)
def test_the_park_meter_stays_inside_the_import_cap_while_the_battery_can_cover_it(
    load_a: float, load_b: float, common: float, soc: float
) -> None:
    p = park(imp=500)
    snap = Snapshot(NIGHT, (reading(load_a), reading(load_b, soc=soc)))
    d, _ = decide(p, metered(snap, common))
    sp = d.battery_setpoint_kw[1]
    assert sp is not None
    need = load_a + load_b + common - 500  # what the battery must give at the park meter
    if need <= 200 - 1e-6:  # within its power (and far from empty at >= 20 %)
        assert expected_grid(snap, d) + common <= 500 + 1e-6
    else:
        assert sp == pytest.approx(200, abs=1e-6)  # all it has


def forecast(n: int = 3) -> Forecast:
    return Forecast(
        load_kw=[100.0] * n,
        load_low_kw=[60.0] * n,
        load_high_kw=[150.0] * n,
        load_peak_kw=160.0,
        covered=[True] * n,
        pv_clear_kw=[50.0] * n,
        pv_low_kw=[10.0] * n,
        load_need_kw=[150.0, float("inf"), float("-inf")],
        load_soft_need_kw=[150.0] * n,
        load_room_kw=[100.0] * n,
        ramp_hours=[False] * n,
    )


@pytest.mark.parametrize(
    ("common", "high", "low", "need0", "room"),
    [
        (0.0, 150.0, 60.0, 150.0, 100.0),
        (30.0, 180.0, 60.0, 180.0, 100.0),  # an import raises the high side only
        (-20.0, 150.0, 40.0, 150.0, 80.0),  # an export lowers the low side only
    ],
)
def test_the_plan_counts_the_common_load_conservatively(
    common: float, high: float, low: float, need0: float, room: float
) -> None:
    fc = with_common_load(forecast(), common)
    assert fc.load_high_kw[0] == high
    assert fc.load_low_kw[0] == low
    assert fc.load_need_kw[0] == need0
    assert fc.load_need_kw[1] == float("inf")  # nothing known stays nothing known
    assert fc.load_need_kw[2] == float("-inf")
    assert fc.room_kw(0) == room
    assert fc.load_kw[0] == 100.0 + common


# --- the config: the park's connection ------------------------------------------------------------------

METER = {"id": "m", "role": "grid_meter", "company": "a", "driver": "sunspec", "modbus": {"host": "h"}}
PARK_METER = {"id": "pm", "role": "park_meter", "driver": "sunspec", "modbus": {"host": "h"}}


def site(park: dict[str, Any], devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"park": {"import_limit_kw": 400, **park}, "companies": [{"id": "a"}], "devices": devices}


@pytest.mark.parametrize(
    ("park_cfg", "devices", "connection"),
    [
        ({}, [METER], Connection.GROUP),
        ({}, [METER, PARK_METER], Connection.SHARED),
        ({"connection": "shared"}, [METER, PARK_METER], Connection.SHARED),
        ({"connection": "group"}, [METER], Connection.GROUP),
        ({"connection": "shared"}, [], Connection.SHARED),  # a simulation: no devices at all
    ],
)
def test_the_connection_is_as_configured_or_follows_the_park_meter(
    park_cfg: dict[str, Any], devices: list[dict[str, Any]], connection: Connection
) -> None:
    assert parse_config(site(park_cfg, devices)).connection is connection


@pytest.mark.parametrize(
    ("park_cfg", "devices", "message"),
    [
        ({}, [METER, PARK_METER, {**PARK_METER, "id": "pm2"}], "more than one park_meter (pm, pm2)"),
        ({"connection": "group"}, [METER, PARK_METER], "park.connection: group has no park meter"),
        ({"connection": "shared"}, [METER], "park.connection: shared needs the connection's meter"),
        ({"meter_tolerance_kw": 10}, [METER], "park.meter_tolerance_kw is for a shared connection"),
        ({"connection": "both"}, [METER], "park.connection"),
        ({"meter_tolerance_kw": -1}, [METER, PARK_METER], "park.meter_tolerance_kw"),
        ({"meter_tolerance_kw": 0}, [METER, PARK_METER], "park.meter_tolerance_kw"),
    ],
)
def test_a_connection_that_does_not_fit_its_meters_is_refused_naming_the_field(
    park_cfg: dict[str, Any], devices: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(site(park_cfg, devices))
    assert message in "\n".join(info.value.problems)


@pytest.mark.parametrize(
    ("park_cfg", "tolerance"),
    [
        ({}, 20.0),  # 5 % of 400
        ({"import_limit_kw": 60}, 5.0),  # at least 5 kW
        ({"windows": [{"start": "16:00", "end": "20:00", "export_limit_kw": 1000}]}, 50.0),
        ({"meter_tolerance_kw": 12.5}, 12.5),
    ],
)
def test_the_meter_tolerance(park_cfg: dict[str, Any], tolerance: float) -> None:
    cfg = parse_config(site(park_cfg, [METER, PARK_METER]))
    assert cfg.park.meter_tolerance() == tolerance


# --- the service side: the reading store, the meter check, the ledger -----------------------------------

SHARED: dict[str, Any] = {
    "park": {"import_limit_kw": 400},
    "companies": [{"id": "a"}, {"id": "b"}],
    "devices": [
        {"id": "a-grid", "company": "a", "role": "grid_meter", "driver": "sunspec", "modbus": {"host": "h"}},
        {"id": "b-grid", "company": "b", "role": "grid_meter", "driver": "sunspec", "modbus": {"host": "h"}},
        {"id": "pm", "role": "park_meter", "driver": "sunspec", "modbus": {"host": "h", "port": 4}},
    ],
}


def meter_reading(device_id: str, at: float, power: float) -> Reading:
    role = DeviceRole.PARK_METER if device_id == "pm" else DeviceRole.GRID_METER
    return Reading(device_id, role, at, {"power_kw": power}, {"W": power, "Wh": at}, {})


def test_every_company_metered_the_park_meter_still_goes_to_the_core() -> None:
    """The check that found 130 kW at the park meter against 90 kW summed, before it was ignored."""
    store = ReadingStore(Layout.from_config(parse_config(SHARED)), stale_after_s=5)
    store.put(meter_reading("a-grid", 10.0, 50.0))
    store.put(meter_reading("b-grid", 10.0, 40.0))
    store.put(meter_reading("pm", 9.0, 130.0))
    snap = store.snapshot(NIGHT, 11.0)
    assert snap.park_meter is not None
    assert snap.park_meter.grid_kw == 130.0
    assert snap.park_meter.age_s == pytest.approx(2.0)
    assert snap.park_grid_kw() == 130.0
    assert snap.common_kw() == pytest.approx(40.0)
    group = {**SHARED, "devices": SHARED["devices"][:2]}
    store = ReadingStore(Layout.from_config(parse_config(group)), stale_after_s=5)
    store.put(meter_reading("a-grid", 10.0, 50.0))
    store.put(meter_reading("b-grid", 10.0, 40.0))
    snap = store.snapshot(NIGHT, 11.0)
    assert snap.park_meter is None
    assert snap.park_grid_kw() == 90.0  # a group contract: the netted sum


def test_a_park_meter_that_never_answered_is_fail_safe_in_the_core() -> None:
    cfg = parse_config(SHARED)
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    store.put(meter_reading("a-grid", 10.0, 50.0))
    store.put(meter_reading("b-grid", 10.0, 40.0))
    snap = store.snapshot(NIGHT, 11.0)
    assert snap.park_meter is not None
    assert snap.park_meter.grid_kw is None
    params = Params.from_config(cfg)
    decision, _ = step(snap, State.initial(params), params)
    assert decision.mode == "failsafe"
    assert "park meter" in decision.reason


@pytest.mark.parametrize(
    ("frozen", "stand_in"),
    [
        ({"b-grid"}, "b"),  # the park meter stands in for b's meter
        ({"a-grid"}, "a"),
        ({"a-grid", "b-grid"}, None),  # two stale: the split is unknown, fail-safe
        ({"b-grid", "pm"}, None),  # the park meter stale too: fail-safe
        (set(), None),  # every meter fresh: none needed
    ],
)
def test_a_fresh_park_meter_stands_in_for_one_stale_company_meter(
    frozen: set[str], stand_in: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A company meter that froze (same registers) on a shared connection: its grid becomes the
    park meter less the other company and the common load (40 kW, measured while all were fresh);
    the core keeps control (not fail-safe) and the caps stay on the park meter."""
    caplog.set_level(logging.INFO, logger="hubctl.service")
    cfg = parse_config(SHARED)
    params = Params.from_config(cfg)
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    truth = {"a-grid": 50.0, "b-grid": 40.0}
    last: dict[str, Reading] = {}  # a frozen meter answers with these registers again and again
    for t in range(20):
        if t == 8:
            truth = {"a-grid": 80.0, "b-grid": 140.0}  # both move while a meter is frozen
        now = {**truth, "pm": sum(truth.values()) + 40.0}  # a 40 kW common load
        for device_id, kw in now.items():
            if device_id in frozen and t >= 3:
                old = last[device_id]
                store.put(Reading(device_id, old.role, t, old.values, old.point_values, {}))
            else:
                last[device_id] = meter_reading(device_id, t, kw + 0.01 * t)
                store.put(last[device_id])
        snap = store.snapshot(NIGHT + t, float(t))
    flags = {cid: r.grid_from_park_meter for cid, r in zip(("a", "b"), snap.companies, strict=True)}
    assert flags == {"a": stand_in == "a", "b": stand_in == "b"}
    decision, _ = step(snap, State.initial(params), params)
    if stand_in is None and frozen:
        assert decision.mode == "failsafe"
        assert not any("is taken as the park meter" in r.getMessage() for r in caplog.records)
        return
    assert decision.mode == "normal"
    assert snap.park_grid_kw() == pytest.approx(260.19)
    if stand_in is not None:
        index = ("a", "b").index(stand_in)
        other = 1 - index
        derived = snap.companies[index].grid_kw
        assert derived is not None
        assert derived == pytest.approx(260.19 - (snap.companies[other].grid_kw or 0.0) - 40.0, abs=0.05)
        assert derived == pytest.approx(truth[f"{stand_in}-grid"], abs=0.5)  # its true power
        warned = [r for r in caplog.records if "is taken as the park meter" in r.getMessage()]
        assert len(warned) == 1  # once per episode
        assert warned[0].getMessage().startswith(f"{stand_in}: its grid meter is stale")
        # the meter reads again: its own reading, and the episode's end in the journal
        store.put(meter_reading(f"{stand_in}-grid", 20.0, truth[f"{stand_in}-grid"] + 0.3))
        store.put(meter_reading("pm", 20.0, 260.5))
        again = store.snapshot(NIGHT + 20, 20.0)
        assert not again.companies[index].grid_from_park_meter
        assert again.companies[index].grid_kw == pytest.approx(truth[f"{stand_in}-grid"] + 0.3)
        assert any(r.getMessage() == f"{stand_in}: its grid meter reads again" for r in caplog.records)


def companies(*grids: float) -> tuple[CompanyReading, ...]:
    return tuple(CompanyReading(g) for g in grids)


def test_the_meter_check_flags_a_lasting_disagreement_once_and_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hubctl.service")
    check = MeterCheck("pm", tolerance_kw=20.0)
    verdicts = []
    for t in range(60):
        common = 45.0 if 10 <= t < 40 else 3.0
        if t == 25:  # one cycle within: the meters read at different moments
            common = 0.0
        park = ParkMeterReading(90.0 + common)
        verdicts.append(check.check(Snapshot(1e9 + t, companies(50.0, 40.0), park_meter=park)))
    flagged = [t for t, v in enumerate(verdicts) if v.disagree]
    assert flagged[0] == 20  # 10 s beyond the tolerance
    assert flagged[-1] == 49  # ... and 10 s back within it
    assert len(flagged) == 30  # the one agreeing cycle at t = 25 did not clear it
    assert verdicts[30].common_kw == pytest.approx(45.0)
    assert verdicts[30].companies_kw == pytest.approx(90.0)
    assert verdicts[30].park_kw == pytest.approx(135.0)
    lines = [r for r in caplog.records if "park meter pm" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "45.0 kW apart, more than the 20.0 kW tolerance" in lines[0].getMessage()
    missing = check.check(Snapshot(2e9, (CompanyReading(None), CompanyReading(40.0)), park_meter=park))
    assert missing.common_kw is None  # not known: neither flagged nor cleared
    assert missing.companies_kw is None


def test_the_ledger_judges_the_park_s_quarter_on_the_park_meter(tmp_path: Path) -> None:
    cfg = parse_config({**SHARED, "park": {"import_limit_kw": 100}})
    ledger = Ledger.from_config(tmp_path / "ledger.sqlite", cfg)
    start = 1_800_000_000.0 - 1_800_000_000.0 % 900
    step_info = ParkStep(import_limit_kw=100.0, import_source="contract")
    for k in range(901):  # the companies import 90 kW, the park meter shows 130 kW against a 100 kW cap
        ledger.add_step(start + k, [50.0, 40.0], 1.0, step_info, park_kw=130.0)
    quarter = ledger.quarters(start, start + 900)[0]
    assert quarter.import_kwh == pytest.approx(130.0 / 4, rel=1e-6)
    assert quarter.over_cap
    rows = ledger.rows(start, start + 900)
    assert sum(r.import_kwh for r in rows) == pytest.approx(90.0 / 4, rel=1e-6)  # the companies' own
    ledger.close()
    with pytest.raises(ValueError, match="park's grid power must be finite"):
        Ledger.from_config(tmp_path / "other.sqlite", cfg).add_step(start, [1.0, 2.0], 1.0, park_kw=math.nan)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (SHARED, "shared connection: the park caps are held on park meter pm, disagreement tolerance 20 kW"),
        (
            {**SHARED, "devices": SHARED["devices"][:2]},
            "group contract: the park caps are held on the sum of 2 companies' meters",
        ),
    ],
)
def test_check_config_says_where_the_caps_are_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], line: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    assert line in capsys.readouterr().out
