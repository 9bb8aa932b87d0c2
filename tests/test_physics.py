"""Tests for simulators.physics against SCENARIOS.md: "Physics (the reference semantics)", "profiles.csv"."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from support import score_module

from simulators.physics import BatterySpec, CompanySpec, ParkPhysics, Profiles, PvSpec, StepRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from simulators.physics import FloatArray

EPS = 1e-9
SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))


def flat(load_kw: Sequence[float], pv_kw: Sequence[float]) -> Profiles:
    """Constant profiles, one value per company."""
    return Profiles([0.0], [list(load_kw)], [list(pv_kw)])


def steps(
    companies: Sequence[CompanySpec],
    profiles: Profiles,
    battery_setpoint_kw: Sequence[float | None] = (),
    pv_limit_kw: Sequence[float | None] = (),
    step_s: float = 1.0,
) -> list[StepRecord]:
    """Run one company (the first) through the given setpoints or limits; the others get None."""
    physics = ParkPhysics(companies, profiles, step_s)
    n_steps = max(len(battery_setpoint_kw), len(pv_limit_kw))
    rest: list[float | None] = [None] * (len(companies) - 1)
    return [
        physics.step(
            k * step_s,
            [battery_setpoint_kw[k] if k < len(battery_setpoint_kw) else None, *rest],
            [pv_limit_kw[k] if k < len(pv_limit_kw) else None, *rest],
        )
        for k in range(n_steps)
    ]


def column(records: Sequence[StepRecord], name: str, j: int = 0) -> list[float]:
    return [float(getattr(r, name)[j]) for r in records]


# ----------------------------------------------------------------- PV
PV = CompanySpec("pv", pv=PvSpec(peak_kw=100.0, ramp_pct_per_s=10.0))  # 10 kW per 1 s step


def test_pv_limit_ramps_down_then_release_ramps_up() -> None:
    limits: list[float | None] = [20.0] * 8 + [None] * 8
    records = steps([PV], flat([0.0], [80.0]), pv_limit_kw=limits)
    down, up = [70, 60, 50, 40, 30, 20, 20, 20], [30, 40, 50, 60, 70, 80, 80, 80]
    assert column(records, "pv_kw") == pytest.approx([*down, *up])
    assert column(records, "pv_available_kw") == [80.0] * 16


def test_pv_limit_raised_ramps_up_from_the_old_limit() -> None:
    records = steps([PV], flat([0.0], [80.0]), pv_limit_kw=[50.0, 50.0, 50.0, 65.0, 65.0, 100.0, 100.0])
    assert column(records, "pv_kw") == pytest.approx([70, 60, 50, 60, 65, 75, 80])


def test_pv_cloud_edge_drops_at_once_and_the_sun_returns_at_once() -> None:
    # available 80 kW, a cloud at t = 10 s (30 kW) until t = 15 s
    profiles = Profiles([0, 9.5, 10, 14.5, 15], [[0]] * 5, [[80], [80], [30], [30], [80]])
    records = steps([PV], profiles, pv_limit_kw=[None] * 3 + [50.0] * 15)
    assert column(records, "pv_available_kw") == [80] * 10 + [30] * 5 + [80] * 3
    # the limit ramps down (70, 60, 50); the cloud drops output to 30 at once; when
    # the sun returns the output was at availability, so it jumps to the limit
    assert column(records, "pv_kw") == pytest.approx([80, 80, 80, 70, 60] + [50] * 5 + [30] * 5 + [50] * 3)


def test_pv_follows_availability_without_ramp() -> None:
    profiles = Profiles([0, 4.5, 5, 9.5, 10], [[0]] * 5, [[10], [10], [95], [95], [0]])
    records = steps([PV], profiles, pv_limit_kw=[None] * 12)
    assert column(records, "pv_kw") == column(records, "pv_available_kw")
    assert column(records, "pv_kw") == [10] * 5 + [95] * 5 + [0] * 2


def test_pv_limit_raise_while_following_is_immediate() -> None:
    profiles = Profiles([0, 1.5, 2], [[0]] * 3, [[60], [60], [120]])
    # at t = 2 s availability jumps to 120 kW as the limit goes up from 90 (not binding) to 110;
    # at 110 the output no longer follows availability, so the next raise ramps
    records = steps([PV], profiles, pv_limit_kw=[90.0, 90.0, 110.0, 110.0, 150.0, 150.0])
    assert column(records, "pv_kw") == [60, 60, 110, 110, 120, 120]


def test_pv_ramp_down_is_capped_by_available() -> None:
    # following at 80, limit 0 ramps 70, 60; availability drops to 45 then 20
    profiles = Profiles([0, 1, 2, 3], [[0]] * 4, [[80], [80], [45], [20]])
    records = steps([PV], profiles, pv_limit_kw=[0.0] * 6)
    assert column(records, "pv_kw") == pytest.approx([70, 60, 45, 20, 10, 0])


@pytest.mark.parametrize(("limit", "expected"), [(-5.0, 0.0), (math.nan, 80.0), (None, 80.0), (1e9, 80.0)])
def test_pv_limit_edge_values(limit: float | None, expected: float) -> None:
    records = steps([PV], flat([0.0], [80.0]), pv_limit_kw=[limit] * 12)
    assert records[-1].pv_kw[0] == expected
    assert min(column(records, "pv_kw")) >= 0.0


def test_pv_step_s_scales_the_ramp() -> None:
    records = steps([PV], flat([0.0], [80.0]), pv_limit_kw=[0.0] * 3, step_s=2.0)
    assert column(records, "pv_kw") == pytest.approx([60, 40, 20])
    assert [r.t_s for r in records] == [0.0, 2.0, 4.0]


# ----------------------------------------------------------------- battery
def battery(**kw: float) -> CompanySpec:
    spec: dict[str, float] = {
        "capacity_kwh": 1000.0,
        "max_charge_kw": 100.0,
        "max_discharge_kw": 100.0,
        "soc_pct": 50.0,
    } | kw
    return CompanySpec("bat", battery=BatterySpec(**spec))


def test_battery_ramp() -> None:
    sps: list[float | None] = [100, 100, 100, -100, -100, -100, -100, None, None]
    records = steps([battery(ramp_pct_per_s=50.0)], flat([0.0], [0.0]), battery_setpoint_kw=sps)
    assert column(records, "battery_kw") == [50, 100, 100, 50, 0, -50, -100, -50, 0]


def test_battery_ramp_uses_the_larger_power_limit_and_clamps() -> None:
    bat = battery(max_charge_kw=40.0, max_discharge_kw=80.0, ramp_pct_per_s=50.0)  # 40 kW per step
    records = steps([bat], flat([0.0], [0.0]), battery_setpoint_kw=[500, 500, 500, -500, -500, -500, -500])
    assert column(records, "battery_kw") == [40, 80, 80, 40, 0, -40, -40]


def test_battery_stops_exactly_at_min_soc() -> None:
    bat = battery(capacity_kwh=1.0, soc_pct=50.0, min_soc_pct=40.0)
    records = steps([bat], flat([0.0], [0.0]), battery_setpoint_kw=[100.0] * 6 + [-100.0])
    # 100 kW for 1 s is 1/36 kWh: three full steps, then the 60 kW that ends at 0.4 kWh
    assert column(records, "battery_kw") == pytest.approx([100, 100, 100, 60, 0, 0, -100])
    assert column(records, "soc_pct") == pytest.approx([50, 47.2222222, 44.4444444, 41.6666667, 40, 40, 40])
    assert records[4].soc_pct[0] == 40.0
    assert min(column(records, "soc_pct")) >= 40.0


def test_battery_stops_exactly_at_max_soc_with_losses() -> None:
    bat = battery(capacity_kwh=1.0, soc_pct=89.0, max_soc_pct=95.0, efficiency=0.9)
    records = steps([bat], flat([0.0], [0.0]), battery_setpoint_kw=[-100.0] * 5 + [100.0])
    # charging 100 kW stores 0.9 * 100 / 3600 = 0.025 kWh per step; the last 0.01 kWh takes 40 kW
    assert column(records, "battery_kw") == pytest.approx([-100, -100, -40, 0, 0, 100])
    assert column(records, "soc_pct") == pytest.approx([89, 91.5, 94, 95, 95, 95])
    assert records[3].soc_pct[0] == 95.0


def test_battery_outside_its_soc_window_only_moves_back_into_it() -> None:
    low = battery(capacity_kwh=1.0, soc_pct=2.0, min_soc_pct=5.0)
    records = steps([low], flat([0.0], [0.0]), battery_setpoint_kw=[100.0, 100.0, -36.0, -36.0])
    assert column(records, "battery_kw") == [0, 0, -36, -36]
    assert column(records, "soc_pct") == pytest.approx([2, 2, 2, 3])


def test_battery_efficiency_bookkeeping() -> None:
    bat = battery(capacity_kwh=100.0, max_charge_kw=36.0, max_discharge_kw=36.0, efficiency=0.9)
    sps = [-36.0] * 100 + [0.0] + [36.0] * 100 + [0.0]  # the ramp allows 36 kW per step
    records = steps([bat], flat([0.0], [0.0]), battery_setpoint_kw=sps)
    assert column(records, "battery_kw") == sps
    assert records[100].soc_pct[0] == pytest.approx(50.0 + 0.9, rel=1e-12)  # + 36 kW * 0.9 * 100 s
    assert records[201].soc_pct[0] == pytest.approx(50.9 - 100 / 90, rel=1e-12)  # - 36 kW / 0.9 * 100 s


def test_battery_step_s_scales_ramp_and_energy() -> None:
    bat = battery(capacity_kwh=100.0, ramp_pct_per_s=10.0)  # 10 kW/s, 100 kW per 10 s step
    records = steps([bat], flat([0.0], [0.0]), battery_setpoint_kw=[100.0, 100.0, 0.0], step_s=10.0)
    assert column(records, "battery_kw") == [100, 100, 0]
    kwh_per_step = 100 * 10 / 3600  # = percentage points of 100 kWh
    assert column(records, "soc_pct") == pytest.approx([50, 50 - kwh_per_step, 50 - 2 * kwh_per_step])


# ----------------------------------------------------------------- companies, park
def test_company_without_pv_or_battery() -> None:
    profiles = Profiles([0.0], [[30.0, 10.0]], [[50.0, 50.0]])
    park = [CompanySpec("plain"), battery(soc_pct=20.0)]
    physics = ParkPhysics(park, profiles)
    rec = physics.step(0.0, [100.0, -100.0], [10.0, None])
    assert rec.pv_available_kw.tolist() == [0.0, 0.0]  # no pv block: no PV whatever the column says
    assert rec.pv_kw.tolist() == [0.0, 0.0]
    assert rec.battery_kw.tolist() == [0.0, -100.0]
    assert rec.soc_pct.tolist() == [0.0, 20.0]
    assert rec.grid_kw.tolist() == [30.0, 110.0]
    assert rec.park_grid_kw == 140.0


def test_grid_identity_and_park_sum() -> None:
    park = [PV, battery(), CompanySpec("both", PvSpec(50.0), BatterySpec(10.0, 5.0, 5.0, 50.0))]
    profiles = Profiles([0.0, 100.0], [[10, 20, 30], [40, 50, 60]], [[80, 0, 40], [0, 0, 45]])
    physics = ParkPhysics(park, profiles)
    for k in range(5):
        rec = physics.step(float(k), [None, 30.0, -3.0], [50.0, None, None])
        assert rec.grid_kw.tolist() == (rec.load_kw - rec.pv_kw - rec.battery_kw).tolist()
        assert rec.park_grid_kw == pytest.approx(float(np.sum(rec.grid_kw)))


def test_records_are_read_only() -> None:
    rec = ParkPhysics([PV], flat([1.0], [2.0])).step(0.0, [None], [None])
    with pytest.raises(ValueError, match="read-only"):
        rec.pv_kw[0] = 5.0
    with pytest.raises(AttributeError):
        rec.t_s = 1.0  # type: ignore[misc]


def test_step_checks_time_and_lengths() -> None:
    physics = ParkPhysics([PV], flat([1.0], [2.0]))
    with pytest.raises(ValueError, match="next step is 0"):
        physics.step(1.0, [None], [None])
    with pytest.raises(ValueError, match="need 1 battery setpoints"):
        physics.step(0.0, [None, None], [None])
    physics.step(0.0, [None], [None])
    with pytest.raises(ValueError, match="next step is 1"):
        physics.step(0.0, [None], [None])
    with pytest.raises(ValueError, match="profiles hold 1 companies"):
        ParkPhysics([PV, PV], flat([1.0], [2.0]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: PvSpec(peak_kw=-1.0),
        lambda: PvSpec(peak_kw=10.0, ramp_pct_per_s=0.0),
        lambda: BatterySpec(0.0, 1.0, 1.0, 50.0),
        lambda: BatterySpec(1.0, -1.0, 1.0, 50.0),
        lambda: BatterySpec(1.0, 1.0, 1.0, 50.0, min_soc_pct=60.0, max_soc_pct=40.0),
        lambda: BatterySpec(1.0, 1.0, 1.0, 150.0),
        lambda: BatterySpec(1.0, 1.0, 1.0, 50.0, efficiency=0.0),
        lambda: BatterySpec(1.0, 1.0, 1.0, 50.0, ramp_pct_per_s=math.inf),
        lambda: Profiles([0.0, 0.0], [[1.0], [1.0]], [[1.0], [1.0]]),
        lambda: Profiles([0.0], [[1.0]], [[-1.0]]),
        lambda: Profiles([0.0], [[1.0]], [[1.0, 2.0]]),
        lambda: Profiles([], [], []),
    ],
)
def test_invalid_specs_are_rejected(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------- profiles
def test_profiles_interpolate_and_hold() -> None:
    profiles = Profiles([10.0, 20.0, 40.0], [[0, 5], [10, 5], [30, 25]], [[100, 0], [0, 0], [50, 0]])
    cases = {
        0.0: ([0, 5], [100, 0]),  # the first row holds before it
        10.0: ([0, 5], [100, 0]),
        15.0: ([5, 5], [50, 0]),
        20.0: ([10, 5], [0, 0]),
        35.0: ([25, 20], [37.5, 0]),
        40.0: ([30, 25], [50, 0]),
        1e6: ([30, 25], [50, 0]),  # the last row holds
    }
    for t, (load, pv) in cases.items():
        got_load, got_pv = profiles.at(t)
        assert got_load.tolist() == pytest.approx(load), t
        assert got_pv.tolist() == pytest.approx(pv), t
    ts = np.array([*cases, 12.345, 39.999])
    load_s, pv_s = profiles.sample(ts)
    assert load_s.shape == pv_s.shape == (len(ts), 2)
    for k, t in enumerate(ts):
        load_a, pv_a = profiles.at(float(t))
        assert load_s[k].tolist() == load_a.tolist()
        assert pv_s[k].tolist() == pv_a.tolist()


def test_profiles_single_row() -> None:
    profiles = flat([1.0, 2.0], [3.0, 4.0])
    assert profiles.at(123.0)[0].tolist() == [1.0, 2.0]
    load, pv = profiles.sample(np.array([-1.0, 0.0, 5.0]))
    assert load.tolist() == [[1.0, 2.0]] * 3
    assert pv.tolist() == [[3.0, 4.0]] * 3


def test_profiles_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text("t_s, a.load_kw, b.pv_kw, a.pv_kw, other.load_kw\n0,1,2,3,9\n10,11,12,13,9\n\n")
    profiles = Profiles.from_csv(path, ["a", "b", "c"])
    assert profiles.t_s.tolist() == [0.0, 10.0]
    load, pv = profiles.at(5.0)
    assert load.tolist() == [6.0, 0.0, 0.0]  # missing columns read as zeros
    assert pv.tolist() == [8.0, 7.0, 0.0]


def test_profiles_from_csv_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "profiles.csv"
    for text, match in [("", "empty"), ("time,a.load_kw\n0,1\n", "no t_s"), ("t_s,a.load_kw\n", "no rows")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            Profiles.from_csv(path, ["a"])


# ----------------------------------------------------------------- properties
@st.composite
def pv_specs(draw: st.DrawFn) -> PvSpec:
    return PvSpec(draw(st.floats(0.0, 500.0)), draw(st.floats(0.5, 100.0)))


@st.composite
def battery_specs(draw: st.DrawFn) -> BatterySpec:
    lo, hi = sorted(draw(st.lists(st.floats(0.0, 100.0), min_size=2, max_size=2)))
    return BatterySpec(
        capacity_kwh=draw(st.floats(0.01, 20.0)),  # small, so that the SoC limits are reached
        max_charge_kw=draw(st.floats(0.0, 300.0)),
        max_discharge_kw=draw(st.floats(0.0, 300.0)),
        soc_pct=draw(st.floats(lo, hi)),
        min_soc_pct=lo,
        max_soc_pct=hi,
        efficiency=draw(st.floats(0.5, 1.0)),
        ramp_pct_per_s=draw(st.floats(0.5, 100.0)),
    )


@st.composite
def parks(draw: st.DrawFn) -> tuple[list[CompanySpec], Profiles, float]:
    n = draw(st.integers(1, 3))
    companies = [
        CompanySpec(f"c{j}", draw(st.none() | pv_specs()), draw(st.none() | battery_specs()))
        for j in range(n)
    ]
    rows = draw(st.integers(1, 6))
    gaps = draw(st.lists(st.floats(0.5, 20.0), min_size=rows - 1, max_size=rows - 1))
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    load = draw(st.lists(st.floats(-100.0, 500.0), min_size=rows * n, max_size=rows * n))
    pv = draw(st.lists(st.floats(0.0, 600.0), min_size=rows * n, max_size=rows * n))
    profiles = Profiles(t, np.reshape(load, (rows, n)), np.reshape(pv, (rows, n)))
    return companies, profiles, draw(st.sampled_from([1.0, 0.5, 5.0]))


setpoints = st.none() | st.floats(-400.0, 400.0)
limits = st.none() | st.floats(-50.0, 700.0) | st.just(0.0)


def between(x: float, a: float, b: float) -> bool:
    return min(a, b) - EPS <= x <= max(a, b) + EPS


@settings(deadline=None, max_examples=300)
@given(park=parks(), data=st.data())
def test_physics_invariants(park: tuple[list[CompanySpec], Profiles, float], data: st.DataObject) -> None:
    companies, profiles, step_s = park
    n = len(companies)
    n_steps = data.draw(st.integers(1, 40))
    sps = data.draw(st.lists(st.lists(setpoints, min_size=n, max_size=n), min_size=n_steps, max_size=n_steps))
    lims = data.draw(st.lists(st.lists(limits, min_size=n, max_size=n), min_size=n_steps, max_size=n_steps))
    physics = ParkPhysics(companies, profiles, step_s)
    has_pv = np.array([c.pv is not None for c in companies], dtype=float)
    prev_pv: FloatArray = profiles.at(0.0)[1] * has_pv  # before t = 0: output = available
    prev_avail, prev_bat = prev_pv, np.zeros(n)
    energy = [
        0.0 if c.battery is None else c.battery.capacity_kwh * c.battery.soc_pct / 100 for c in companies
    ]
    h = step_s / 3600
    for k in range(n_steps):
        t = k * step_s
        rec = physics.step(t, sps[k], lims[k])
        load, avail = profiles.at(t)
        assert rec.t_s == t
        assert rec.load_kw.tolist() == load.tolist()
        assert rec.pv_available_kw.tolist() == (avail * has_pv).tolist()
        assert np.all(rec.grid_kw == rec.load_kw - rec.pv_kw - rec.battery_kw)
        assert rec.park_grid_kw == pytest.approx(float(np.sum(rec.grid_kw)), abs=1e-6)
        for j, c in enumerate(companies):
            pv, a = float(rec.pv_kw[j]), float(rec.pv_available_kw[j])
            assert 0.0 <= pv <= a
            if c.pv is None:
                assert pv == 0.0
            else:
                r = c.pv.ramp_pct_per_s / 100 * c.pv.peak_kw * step_s
                lim = lims[k][j]
                target = a if lim is None or math.isnan(lim) else max(0.0, min(a, lim))
                prev = float(prev_pv[j])
                assert between(pv, prev, target)  # toward the target, never past it
                if abs(target - prev) <= r:
                    assert pv == target
                if pv > prev + r + EPS:  # faster than the ramp: only while following availability
                    assert abs(prev - prev_avail[j]) <= EPS
                    assert pv == target
                if pv < prev - r - EPS:  # a cloud edge
                    assert pv == a
            b, p, soc = c.battery, float(rec.battery_kw[j]), float(rec.soc_pct[j])
            if b is None:
                assert p == 0.0
                assert soc == 0.0
                continue
            assert -b.max_charge_kw <= p <= b.max_discharge_kw
            e_min, e_max = b.capacity_kwh * b.min_soc_pct / 100, b.capacity_kwh * b.max_soc_pct / 100
            assert soc * b.capacity_kwh / 100 == pytest.approx(energy[j], abs=1e-9)  # state at the start
            e_next = energy[j] + (max(-p, 0.0) * b.efficiency - max(p, 0.0) / b.efficiency) * h
            assert e_min - 1e-12 <= e_next <= e_max + 1e-12
            rb = b.ramp_pct_per_s / 100 * max(b.max_charge_kw, b.max_discharge_kw) * step_s
            sp = sps[k][j] or 0.0
            want = min(
                max(float(prev_bat[j]) + min(max(sp - float(prev_bat[j]), -rb), rb), -b.max_charge_kw),
                b.max_discharge_kw,
            )
            if p != pytest.approx(want, abs=EPS):  # only where the SoC limit stopped it, toward 0
                assert 0.0 <= p / want < 1.0 if want else p == 0.0
                assert min(abs(e_next - e_min), abs(e_next - e_max)) <= 1e-9 or p == 0.0
            energy[j] = e_next
        prev_pv, prev_avail, prev_bat = rec.pv_kw, rec.pv_available_kw, rec.battery_kw


# ----------------------------------------------------------------- a stretch of a real scenario
SUMMER = SHARED / "scenarios" / "summer-small" / "scenario.yaml"
START_S = 10 * 3600.0  # start the stretch at 10:00, with the sun up
STRETCH_S = 3 * 3600


def company_spec(c: dict[str, Any]) -> CompanySpec:
    return CompanySpec(
        c["id"],
        PvSpec(**c["pv"]) if c.get("pv") else None,
        BatterySpec(**c["battery"]) if c.get("battery") else None,
    )


@pytest.fixture(scope="module")
def summer_run() -> tuple[list[CompanySpec], Profiles, list[StepRecord]]:
    if not SUMMER.exists():
        pytest.skip(f"{SUMMER} not found")
    scenario = yaml.safe_load(SUMMER.read_text())
    companies = [company_spec(c) for c in scenario["companies"]]
    full = Profiles.from_csv(SUMMER.parent / scenario["profiles"], [c.id for c in companies])
    profiles = Profiles(full.t_s - START_S, full.load_kw, full.pv_kw)
    physics = ParkPhysics(companies, profiles, float(scenario["step_s"]))
    records = []
    for k in range(STRETCH_S):
        # fixed plan: discharge at full power for an hour, then charge; PV limits that come
        # and go every 10 minutes
        sp = 200.0 if k < 3600 else -200.0
        lim = 60.0 if (k // 600) % 2 else None
        records.append(
            physics.step(float(k), [None if c.battery is None else sp for c in companies], [lim] * 4)
        )
    return companies, profiles, records


def test_summer_small_battery_energy_is_conserved(
    summer_run: tuple[list[CompanySpec], Profiles, list[StepRecord]],
) -> None:
    companies, _, records = summer_run
    (j, b), *_ = [(j, c.battery) for j, c in enumerate(companies) if c.battery is not None]
    power = np.array([r.battery_kw[j] for r in records])
    soc = np.array([r.soc_pct[j] for r in records])
    stored = (np.maximum(-power, 0) * b.efficiency - np.maximum(power, 0) / b.efficiency) / 3600
    energy = b.capacity_kwh * b.soc_pct / 100 + np.concatenate([[0.0], np.cumsum(stored)])
    assert soc * b.capacity_kwh / 100 == pytest.approx(energy[:-1], abs=1e-9)
    # both SoC limits were reached, and held exactly
    assert soc.min() == b.min_soc_pct
    assert soc.max() == b.max_soc_pct
    assert 0.0 in power.tolist()
    curtailed = sum(float(np.sum(r.pv_available_kw - r.pv_kw)) for r in records)
    assert curtailed > 0.0


def test_summer_small_passes_score_physics_checks(
    summer_run: tuple[list[CompanySpec], Profiles, list[StepRecord]],
) -> None:
    """The physics checks of tools/score.py (`validate`) accept the stretch, rounded as in a CSV."""
    score = score_module()
    companies, _, records = summer_run
    sc = score.load_scenario(str(SUMMER))
    sc["duration_s"] = float(STRETCH_S)
    t_prof, cols = score.read_profiles(sc)
    prof = (t_prof - START_S, cols)
    t = np.array([r.t_s for r in records])
    sod, _ = score.clock(sc, t)
    ts: dict[str, FloatArray] = {"t_s": t, "park.grid_kw": np.round([r.park_grid_kw for r in records], 4)}
    for name, ent in [("park", sc["park"]), *((c["id"], c) for c in sc["companies"])]:
        for key, lim in zip(
            ("import_limit_kw", "export_limit_kw"), score.limits_in_force(ent, sod), strict=True
        ):
            ts[f"{name}.{key}"] = np.where(np.isfinite(lim), lim, np.nan)
    for j, c in enumerate(companies):
        for key in ("load_kw", "pv_available_kw", "pv_kw", "battery_kw", "soc_pct", "grid_kw"):
            ts[f"{c.id}.{key}"] = np.round([getattr(r, key)[j] for r in records], 4)
    ck = score.Checks()
    assert score.validate(sc, prof, ts, ck) is not None
    assert [c for c in ck.items if not c["ok"]] == []
