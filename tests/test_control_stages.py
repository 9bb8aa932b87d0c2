"""The stages of `hubctl.core.control.step`, one by one: table tests and hypothesis properties.

The stages are pure functions over plain data, so each is driven here with hand-made inputs
(a snapshot, a state, or the small frozen values the stages before it return).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_control import NIGHT, NOON, park, reading

from hubctl.config.site import parse_config
from hubctl.core.control import (
    current_plan,
    forecast_ahead,
    limits_now,
    observe,
    outcome,
    plan_ahead,
    quarter_caps,
    stale_meters,
    step,
)
from hubctl.core.dispatch import (
    CompanyShares,
    follow_check,
    own_caps,
    pv_limits_of,
    split,
    split_park,
)
from hubctl.core.forecast import RecentLoad
from hubctl.core.limits import NO_LIMITS, LimitsInForce
from hubctl.core.park import (
    BatteryRoom,
    NetPrediction,
    ParkTotal,
    Preference,
    band_preference,
    battery_room,
    park_total,
    predict_net,
    pv_available,
)
from hubctl.core.types import (
    NO_OVERRIDES,
    BandMode,
    BatteryMode,
    BatteryOverride,
    CompanyReading,
    Overrides,
    Params,
    QuarterBudget,
    Snapshot,
    State,
)

FIVE_PM = dt.datetime(2026, 12, 15, 16, 0, tzinfo=dt.UTC).timestamp()  # 17:00 CET: in the window
NINE_AM = dt.datetime(2026, 12, 15, 8, 0, tzinfo=dt.UTC).timestamp()  # 09:00 CET: outside it
BAT = {"capacity_kwh": 400, "max_charge_kw": 200, "max_discharge_kw": 200}
kw = st.floats(0, 500, allow_nan=False)


def windowed(contract: float, window: float | None, company_import: float | None = None) -> Params:
    park_cfg: dict[str, Any] = {"import_limit_kw": contract}
    if window is not None:
        park_cfg["windows"] = [{"start": "16:00", "end": "20:00", "import_limit_kw": window}]
    b: dict[str, Any] = {"id": "b", "battery": BAT}
    if company_import is not None:
        b["import_limit_kw"] = company_import
    data = {
        "park": park_cfg,
        "companies": [{"id": "a"}, b],
        "control": {"margin_pct": 0, "margin_min_kw": 0},
    }
    return Params.from_config(parse_config(data))


def room_of(
    dis_cap: tuple[float, ...],
    ch_cap: tuple[float, ...],
    *,
    dis_free: tuple[float, ...] | None = None,
    energy: tuple[float, ...] | None = None,
    stored: float = 200.0,
    hyst: float = 0.0,
    seen_share: float = 1.0,
) -> BatteryRoom:
    free = dis_cap if dis_free is None else dis_free
    n = len(dis_cap)
    return BatteryRoom(
        dis_cap,
        ch_cap,
        free,
        energy if energy is not None else (stored / n,) * n,
        (0,) * n,
        (0,) * n,
        sum(dis_cap),
        sum(ch_cap),
        sum(free),
        stored,
        hyst,
        seen_share,
    )


def prediction(
    net: tuple[float, ...], avail: tuple[float, ...] | None = None, trend: float = 0.0
) -> NetPrediction:
    park_net = sum(net)
    return NetPrediction(
        avail if avail is not None else (0.0,) * len(net),
        net,
        park_net,
        net,
        0.0,
        park_net + max(0.0, trend),
        park_net + min(0.0, trend),
    )


# --- 1. limits in force ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contract", "window", "operator", "ts", "expected"),
    [
        (800, 400, None, FIVE_PM, (400, "window 16:00-20:00")),
        (800, 400, None, NINE_AM, (800, "contract")),
        (800, 400, 300, FIVE_PM, (300, "operator")),
        (800, 400, 600, FIVE_PM, (400, "window 16:00-20:00")),  # an operator may only lower a cap
        (800, 1000, None, FIVE_PM, (1000, "window 16:00-20:00")),  # a window replaces the contract's cap
        (800, None, 900, NINE_AM, (800, "contract")),
        (800, None, 700, NINE_AM, (700, "operator")),
    ],
)
def test_limits_in_force_table(
    contract: float, window: float | None, operator: float | None, ts: float, expected: tuple[float, str]
) -> None:
    p = windowed(contract, window)
    park_lim, _ = limits_now(p, ts, Overrides(park_import_kw=operator))
    assert (park_lim.import_kw, park_lim.import_source) == expected


def test_operator_company_limits_reach_companies_without_own_caps() -> None:
    p = windowed(800, None, company_import=300)
    _, comp = limits_now(p, NINE_AM, NO_OVERRIDES)
    assert set(comp) == {"b"}  # only companies with own caps have limits of their own
    _, comp = limits_now(p, NINE_AM, Overrides(company_import_kw={"a": 50, "b": 400}))
    assert (comp["a"].import_kw, comp["a"].import_source) == (50, "operator")
    assert (comp["b"].import_kw, comp["b"].import_source) == (300, "contract")  # 400 would raise it


@settings(max_examples=60, deadline=None)
@given(
    st.floats(50, 2000),
    st.none() | st.floats(50, 2000),
    st.none() | st.floats(10, 2000),
    st.sampled_from([FIVE_PM, NINE_AM]),
)
def test_limits_in_force_are_the_lowest_of_contract_window_and_operator(
    contract: float, window: float | None, operator: float | None, ts: float
) -> None:
    p = windowed(contract, window)
    park_lim, _ = limits_now(p, ts, Overrides(park_import_kw=operator))
    in_window = window is not None and ts == FIVE_PM
    # a window in force replaces the contract's cap (it may be higher); an operator only lowers
    configured = window if in_window else contract
    assert configured is not None
    assert park_lim.import_kw == (configured if operator is None else min(configured, operator))
    if window is None or window <= contract:  # then simply the lowest of the three
        present = [v for v in (contract, window if in_window else None, operator) if v is not None]
        assert park_lim.import_kw == min(present)


# --- 2. stale meters ---------------------------------------------------------------------------------


def test_stale_meters_names_every_unsafe_grid_reading() -> None:
    comps = [{"id": f"c{k}"} for k in range(5)]
    p = park(companies=comps)
    snap = Snapshot(
        NIGHT,
        (
            reading(10, age=4.9),
            reading(10, age=5.1),  # older than stale_after_s (5 s)
            CompanyReading(None),
            CompanyReading(math.nan),
            CompanyReading(math.inf),
        ),
    )
    assert stale_meters(snap, p) == ("c1", "c2", "c3", "c4")
    assert stale_meters(Snapshot(NIGHT, (reading(10),) * 5), p) == ()


# --- 3. observe --------------------------------------------------------------------------------------


def test_observe_reads_the_operating_point() -> None:
    p = park()  # solar: PV 600; store: PV 300 and a battery
    snap = Snapshot(NOON, (reading(50, pv=300), reading(100, pv=20, bat=30)))
    obs = observe(snap, State.initial(p), p)
    assert obs.grid == (-250, 50)
    assert obs.load == (50, 100)
    assert obs.pv == (300, 20)
    assert obs.bat_meas == (0, 30)
    assert obs.pv_net == (300, 20)
    assert obs.curtailed == (False, False)
    assert obs.dt_s == 1.0  # the first cycle
    assert obs.lag_s == 1.0
    assert obs.shape > 0.5  # noon in June
    assert obs.recent.count == 1
    assert obs.recent.total == 150


def test_observe_takes_the_least_pv_that_explains_a_meter_s_export() -> None:
    p = park()
    snap = Snapshot(NOON, (CompanyReading(-250.0), reading(100, soc=50)))  # no PV reading yet
    obs = observe(snap, State.initial(p), p)
    assert obs.pv[0] == 0.0  # as read, for learning the sky
    assert obs.load[0] == 0.0
    assert obs.pv_net[0] == 250.0


@pytest.mark.parametrize(("gap_s", "dt_s"), [(0.0, 1e-3), (0.5, 0.5), (2.0, 2.0), (120.0, 60.0)])
def test_observe_bounds_the_time_step(gap_s: float, dt_s: float) -> None:
    p = park()
    state = replace(State.initial(p), last_ts=NOON - gap_s)
    assert observe(Snapshot(NOON, (reading(50), reading(50))), state, p).dt_s == dt_s


@pytest.mark.parametrize(
    ("pv", "limit", "held"), [(300.0, 300.0, True), (295.0, 300.0, True), (200.0, 300.0, False)]
)
def test_observe_sees_which_inverters_are_held_by_their_limit(pv: float, limit: float, held: bool) -> None:
    p = park()
    state = replace(State.initial(p), pv_limit_kw=(limit, None))
    obs = observe(Snapshot(NOON, (reading(50, pv=pv), reading(50, pv=100))), state, p)
    assert obs.curtailed == (held, False)  # within 1 % of peak (6 kW) of the limit


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-800, 800), st.none() | kw, st.floats(-200, 200)), min_size=2, max_size=2)
)
def test_observe_net_without_pv_is_the_meter_with_the_battery_taken_out(
    rows: list[tuple[float, float | None, float]],
) -> None:
    p = park()
    snap = Snapshot(NOON, tuple(CompanyReading(g, pv, b, 50.0) for g, pv, b in rows))
    obs = observe(snap, State.initial(p), p)
    for i, (g, _, b) in enumerate(rows):
        assert obs.load[i] >= 0
        assert obs.pv_net[i] >= obs.pv[i]
        assert obs.load[i] - obs.pv_net[i] == pytest.approx(g + obs.bat_meas[i], abs=1e-9)
        assert obs.bat_meas[i] == (b if i == 1 else 0.0)  # only the store has a battery


# --- 4. caps this cycle (margin and quarter-hour budget) ----------------------------------------------

QUARTER = int(NIGHT // 900)
CONTRACT = LimitsInForce(500, "contract", 200, "contract")


@pytest.mark.parametrize(
    ("limits", "grid", "budget", "offset_s", "caps"),
    [
        (CONTRACT, 500.0, QuarterBudget(QUARTER, 0.0, 0.0), 0.0, (500.0, 200.0)),
        # 1 kWh over so far, 600 s left: 6 kW less for the rest of the quarter
        (CONTRACT, 500.0, QuarterBudget(QUARTER, 1.0, 0.0), 300.0, (494.0, 200.0)),
        (CONTRACT, -200.0, QuarterBudget(QUARTER, 0.0, 0.5), 450.0, (500.0, 196.0)),
        # a large excess: never below half the cap
        (CONTRACT, 500.0, QuarterBudget(QUARTER, 100.0, 0.0), 300.0, (250.0, 200.0)),
        # the budget of another quarter does not count
        (CONTRACT, 500.0, QuarterBudget(QUARTER - 1, 100.0, 100.0), 300.0, (500.0, 200.0)),
        (NO_LIMITS, 900.0, QuarterBudget(QUARTER, 0.0, 0.0), 0.0, (math.inf, math.inf)),
    ],
)
def test_quarter_caps_table(
    limits: LimitsInForce, grid: float, budget: QuarterBudget, offset_s: float, caps: tuple[float, float]
) -> None:
    p = park()
    out = quarter_caps(p, limits, grid, budget, QUARTER * 900 + offset_s, 1.0)
    assert (out.import_kw, out.export_kw) == pytest.approx(caps)
    assert out.budget.quarter == QUARTER


def test_quarter_caps_less_the_margin() -> None:
    p = park(margin_pct=10, margin_min_kw=25)  # 10 % of 500 = 50; of 200 = 20, at least 25
    out = quarter_caps(p, CONTRACT, 0.0, QuarterBudget(QUARTER, 0.0, 0.0), QUARTER * 900.0, 1.0)
    assert (out.import_kw, out.export_kw) == (450.0, 175.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(-5, 5), st.floats(-800, 800), st.floats(0, 899), st.floats(0.001, 60))
def test_quarter_caps_stay_between_half_the_cap_and_the_cap(
    excess: float, grid: float, offset_s: float, dt_s: float
) -> None:
    p = park()
    out = quarter_caps(
        p, CONTRACT, grid, QuarterBudget(QUARTER, excess, excess), QUARTER * 900 + offset_s, dt_s
    )
    assert 250.0 <= out.import_kw <= 500.0
    assert 100.0 <= out.export_kw <= 200.0
    assert out.budget.import_excess_kwh == pytest.approx(excess + (grid - 500) * dt_s / 3600)
    assert out.budget.export_excess_kwh == pytest.approx(excess + (-grid - 200) * dt_s / 3600)
    if out.budget.import_excess_kwh <= 0:
        assert out.import_kw == 500.0


# --- 5. forecast and plan ----------------------------------------------------------------------------


def short_park(**control: Any) -> Params:
    comps = [{"id": "a", "pv": {"peak_kw": 200}}, {"id": "b", "battery": BAT}]
    return park(companies=comps, horizon_h=2, **control)  # 24 plan steps of 5 minutes


def test_the_plan_is_renewed_every_plan_every_s() -> None:
    p = short_park()
    snap = Snapshot(NIGHT, (reading(100), reading(200, soc=60)))
    state = State.initial(p)
    first = current_plan(snap, state, observe(snap, state, p), p)
    assert first.plan.ts_utc == NIGHT
    assert (first.floor_kwh, first.ceiling_kwh) == first.plan.band_at(NIGHT)
    state = replace(state, plan=first.plan, last_ts=NIGHT)
    for later, renewed in ((NIGHT + 299.0, False), (NIGHT + 300.0, True)):
        snap = Snapshot(later, snap.companies)
        now = current_plan(snap, state, observe(snap, state, p), p)
        assert (now.plan is not first.plan) == renewed
        assert (now.floor_kwh, now.ceiling_kwh) == now.plan.band_at(later)


def test_plan_ahead_holds_operator_limits_over_the_horizon() -> None:
    p = short_park()
    snap = Snapshot(NIGHT, (reading(150), reading(150, soc=60)))
    state = replace(State.initial(p), recent=RecentLoad.empty().add(NIGHT - 600, 300.0))
    fc = forecast_ahead(NIGHT, observe(snap, state, p), p)
    plain = plan_ahead(NIGHT, fc, p, NO_OVERRIDES, 200.0)
    held = plan_ahead(NIGHT, fc, p, Overrides(park_import_kw=100), 200.0)
    assert plain.ts_utc == held.ts_utc == NIGHT
    assert len(held.floor_kwh) == len(plain.floor_kwh) == 24
    # a lower import cap over the next hours needs energy kept in the batteries
    assert sum(held.floor_kwh) > sum(plain.floor_kwh)
    assert all(h >= f - 1e-9 for h, f in zip(held.floor_kwh, plain.floor_kwh, strict=True))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kw, min_size=1, max_size=24), st.sampled_from([NOON, NIGHT]))
def test_forecast_ahead_has_one_non_negative_value_per_plan_step(loads: list[float], ts: float) -> None:
    p = short_park()
    recent = RecentLoad.empty()
    for k, load in enumerate(loads):
        recent = recent.add(ts - 300.0 * (len(loads) - k), load)
    state = replace(State.initial(p), recent=recent)
    snap = Snapshot(ts, (reading(loads[-1] / 2), reading(loads[-1] / 2, soc=60)))
    fc = forecast_ahead(ts, observe(snap, state, p), p)
    for series in (
        fc.load_kw,
        fc.load_low_kw,
        fc.load_high_kw,
        fc.pv_clear_kw,
        fc.pv_low_kw,
        fc.load_room_kw,
    ):
        assert len(series) == 24
        assert all(v >= 0 for v in series)
    assert len(fc.load_need_kw) == len(fc.load_soft_need_kw) == len(fc.covered) == 24
    assert fc.load_peak_kw >= max(loads) - 1e-9


# --- 6. dispatch: the park's battery power ----------------------------------------------------------


def test_predict_net_takes_pv_as_read_and_the_model_where_held() -> None:
    p = park()
    snap = Snapshot(NOON, (reading(50, pv=300), reading(100, pv=100, bat=-20)))
    state = State.initial(p)
    pred = predict_net(observe(snap, state, p), state, p)
    assert pred.avail == (300, 100)
    assert pred.net == (-250, 0)  # load - PV, the battery taken out
    assert pred.park_net == -250
    assert pred.net_hi == pred.net_lo == pred.park_net  # no trend on a first cycle
    held = replace(state, pv_limit_kw=(300.0, None))
    pred = predict_net(observe(snap, held, p), held, p)
    assert 306 <= pred.avail[0] <= 600  # held by its limit: at least a step above, at most its peak
    assert pred.net[0] == pytest.approx(min(50 - pred.avail[0], -250))


def test_predict_net_extrapolates_a_ramp_but_not_a_jump() -> None:
    p = park()
    before = Snapshot(NIGHT, (reading(100, age=2.0), reading(100, age=2.0)))
    state = State.initial(p)
    _, state = step(before, state, p)
    snap = Snapshot(NIGHT + 1, (reading(110, age=2.0), reading(110, age=2.0)))
    jump = predict_net(observe(snap, state, p), state, p)
    assert jump.slope == pytest.approx(20)
    assert jump.net_hi == jump.net_lo == jump.park_net  # one cycle does not make a ramp
    turned_state = replace(state, last_slope_kw_per_s=-10.0)
    turned = predict_net(observe(snap, turned_state, p), turned_state, p)
    assert turned.net_hi == turned.net_lo == turned.park_net  # nor a slope that turned round
    ramp_state = replace(state, last_slope_kw_per_s=10.0)
    ramp = predict_net(observe(snap, ramp_state, p), ramp_state, p)
    assert ramp.net_hi == pytest.approx(ramp.park_net + 10.0 * 2.0)  # the smaller slope over the meters' age
    assert ramp.net_lo == ramp.park_net


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 800), kw, st.floats(-200, 200)), min_size=2, max_size=2),
    st.floats(-50, 50),
    st.booleans(),
)
def test_predict_net_brackets_the_park_net(
    rows: list[tuple[float, float, float]], last_slope: float, held: bool
) -> None:
    p = park()
    state = replace(
        State.initial(p),
        last_ts=NOON - 1,
        last_net_kw=(0.0, 0.0),
        last_slope_kw_per_s=last_slope,
        pv_limit_kw=(rows[0][1], None) if held else (None, None),
    )
    snap = Snapshot(NOON, tuple(reading(load, pv=pv, bat=b) for load, pv, b in rows))
    obs = observe(snap, state, p)
    pred = predict_net(obs, state, p)
    assert pred.net_lo <= pred.park_net <= pred.net_hi
    assert pred.park_net == sum(pred.net)
    for i in range(2):
        assert pred.net[i] <= obs.grid[i] + obs.bat_meas[i]  # never above the meter
        assert 0 <= pred.avail[i] <= p.companies[i].pv_peak_kw + 1e-9 or pred.avail[i] == obs.pv_net[i]


def test_battery_room_near_the_soc_limits() -> None:
    p = park()
    state = State.initial(p)
    for soc, dis, ch in ((5.0, 0.0, 200.0), (95.0, 200.0, 0.0), (50.0, 200.0, 200.0)):
        snap = Snapshot(NIGHT, (reading(10), reading(10, soc=soc)))
        room = battery_room(snap, state, observe(snap, state, p), p)
        assert (room.dis_cap[1], room.ch_cap[1]) == pytest.approx((dis, ch))
        assert (room.dis_cap[0], room.ch_cap[0]) == (0.0, 0.0)  # no battery
        assert room.stored == pytest.approx(400 * soc / 100)


def test_battery_room_keeps_an_operator_s_reserve_free_of_self_consumption() -> None:
    p = park()
    state = State.initial(p)
    snap = Snapshot(NIGHT, (reading(10), reading(10, soc=50)), Overrides(reserve_soc_pct={"store": 60}))
    room = battery_room(snap, state, observe(snap, state, p), p)
    assert room.dis_cap[1] == 200.0
    assert room.dis_free[1] == 0.0
    assert room.total_dis_free == 0.0


def test_battery_room_holds_a_battery_that_does_not_follow_to_what_it_gives() -> None:
    p = park()
    state = replace(State.initial(p), battery_kw=(0.0, 100.0), short_charge=(0, 0), short_discharge=(0, 2))
    snap = Snapshot(NIGHT, (reading(10), reading(10, bat=20, soc=50)))
    room = battery_room(snap, state, observe(snap, state, p), p)
    assert room.short_dis == (0, 3)
    assert room.dis_cap[1] == pytest.approx(20 + 0.02 * 200 + 1)  # what it gives plus a probe
    assert room.ch_cap[1] == 200.0


def test_battery_room_counts_the_share_of_the_pool_it_sees() -> None:
    big = {"capacity_kwh": 300, "max_charge_kw": 100, "max_discharge_kw": 100}
    p = park(companies=[{"id": "a", "battery": BAT}, {"id": "b", "battery": big}])
    state = State.initial(p)
    snap = Snapshot(NIGHT, (reading(10, soc=50), reading(10, soc=None)))
    room = battery_room(snap, state, observe(snap, state, p), p)
    assert room.seen_share == pytest.approx(400 / 700)
    assert room.dis_cap[1] == room.ch_cap[1] == 0.0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=2, max_size=2),
    st.none() | st.floats(0, 100),
    st.floats(-200, 200),
    st.floats(0.001, 60),
)
def test_battery_room_stays_within_the_devices(
    socs: list[float], reserve: float | None, bat: float, gap_s: float
) -> None:
    bat_cfg = {**BAT, "min_soc_pct": 10, "max_soc_pct": 90}
    p = park(companies=[{"id": "a", "battery": bat_cfg}, {"id": "b", "battery": BAT}])
    state = replace(State.initial(p), last_ts=NIGHT - gap_s, battery_kw=(bat, -bat), short_discharge=(3, 3))
    ov = Overrides(reserve_soc_pct={"a": reserve} if reserve is not None else {})
    snap = Snapshot(NIGHT, (reading(10, bat=bat, soc=socs[0]), reading(10, bat=-bat, soc=socs[1])), ov)
    room = battery_room(snap, state, observe(snap, state, p), p)
    for i in range(2):
        assert 0.0 <= room.dis_free[i] <= room.dis_cap[i] <= 200.0
        assert 0.0 <= room.ch_cap[i] <= 200.0
    assert room.total_dis == sum(room.dis_cap)
    assert room.total_ch == sum(room.ch_cap)
    assert room.total_dis_free == sum(room.dis_free)


def band_state(p: Params, mode: BandMode, prev_kw: float = 0.0) -> State:
    return replace(State.initial(p), band_mode=mode, battery_kw=(0.0, prev_kw))


@pytest.mark.parametrize(
    ("mode", "stored", "net", "expected"),
    [
        (BandMode.FREE, 50.0, 0.0, (BandMode.CHARGE, -200.0)),  # below the floor: charge at full power
        (BandMode.CHARGE, 104.0, 0.0, (BandMode.CHARGE, -200.0)),  # not yet floor + hysteresis
        # back in the band: the 6 kWh above the floor over an hour, half way
        (BandMode.CHARGE, 106.0, 100.0, (BandMode.FREE, 3.0)),
        # above the ceiling: drain the excess within 2 h, at least the park's import
        (BandMode.FREE, 350.0, 10.0, (BandMode.DRAIN, 25.0)),
        (BandMode.FREE, 350.0, 100.0, (BandMode.DRAIN, 100.0)),
        (BandMode.DRAIN, 300.0, 0.0, (BandMode.FREE, 0.0)),  # at the ceiling: free again
        (BandMode.FREE, 200.0, -100.0, (BandMode.FREE, -50.0)),  # self-consumption charges half the export
        (BandMode.FREE, 300.0, -100.0, (BandMode.FREE, 0.0)),  # not above the ceiling
        (BandMode.FREE, 110.0, 100.0, (BandMode.FREE, 5.0)),  # the energy above the floor, over an hour
    ],
)
def test_band_preference_table(
    mode: BandMode, stored: float, net: float, expected: tuple[BandMode, float]
) -> None:
    p = park()
    room = room_of((0.0, 200.0), (0.0, 200.0), stored=stored, hyst=5.0)
    pref = band_preference(band_state(p, mode), p, {}, prediction((net, 0.0)), room, 100.0, 300.0)
    assert pref.mode is expected[0]
    assert pref.pref_kw == pytest.approx(expected[1])


def test_band_preference_reasons_reserve_and_no_small_flip() -> None:
    p = park()
    room = room_of((0.0, 200.0), (0.0, 200.0), stored=200.0)
    pref = band_preference(band_state(p, BandMode.FREE), p, {}, prediction((100.0, 0.0)), room, 100.0, 300.0)
    assert pref.reason == "self-consumption"
    reserved = room_of((0.0, 200.0), (0.0, 200.0), dis_free=(0.0, 20.0), stored=200.0)
    pref = band_preference(
        band_state(p, BandMode.FREE), p, {}, prediction((100.0, 0.0)), reserved, 100.0, 300.0
    )
    assert pref.pref_kw == 20.0  # not below the operator's reserve
    # discharging 20 kW, a 10 kW export: the half-way step (-5) is no reason to flip the sign (flip: 10 kW)
    pref = band_preference(
        band_state(p, BandMode.FREE, 20.0), p, {}, prediction((-30.0, 0.0)), room, 100.0, 300.0
    )
    assert pref.pref_kw == 0.0
    charge = band_preference(band_state(p, BandMode.FREE), p, {}, prediction((0.0, 0.0)), room, 250.0, 300.0)
    assert charge.reason == "charging towards the floor for the caps ahead"


def test_band_preference_counts_what_own_export_caps_curtail_anyway() -> None:
    p = park(
        companies=[{"id": "a", "pv": {"peak_kw": 600}, "export_limit_kw": 100}, {"id": "b", "battery": BAT}]
    )
    comp_lim = {"a": LimitsInForce(None, "none", 100, "contract")}
    room = room_of((0.0, 200.0), (0.0, 200.0), stored=200.0)
    # a exports 300, its own cap 100: 200 kW are curtailed anyway, the park's surplus is 0 for b
    pref = band_preference(
        band_state(p, BandMode.FREE), p, comp_lim, prediction((-300.0, 100.0)), room, 100.0, 300.0
    )
    assert pref.pref_kw == pytest.approx(0.5 * 0.0)
    without = band_preference(
        band_state(p, BandMode.FREE), p, {}, prediction((-300.0, 100.0)), room, 100.0, 300.0
    )
    assert without.pref_kw == pytest.approx(-100.0)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(BandMode)),
    st.floats(0, 400),
    st.floats(-500, 500),
    st.floats(0, 200),
    st.floats(-200, 200),
    st.floats(0, 1),
)
def test_band_preference_never_spends_an_operator_s_reserve(
    mode: BandMode, stored: float, net: float, free: float, prev: float, share: float
) -> None:
    p = park()
    room = room_of(
        (0.0, 200.0), (0.0, 200.0), dis_free=(0.0, free), stored=stored, hyst=4.0, seen_share=share
    )
    pref = band_preference(band_state(p, mode, prev), p, {}, prediction((net, 0.0)), room, 100.0, 300.0)
    assert pref.pref_kw <= free
    if stored < 100.0 * share - 4.0:
        assert pref.mode is BandMode.CHARGE
    elif stored > 300.0 * share + 4.0:
        assert pref.mode is BandMode.DRAIN


@pytest.mark.parametrize(
    ("want", "net", "expected"),
    [
        (50.0, 100.0, (50.0, "self-consumption")),
        (0.0, 600.0, (100.0, "holding the park import cap")),  # 600 import, cap 500
        (0.0, -300.0, (-100.0, "holding the park export cap")),  # 300 export, cap 200
        (0.0, 900.0, (200.0, "holding the park import cap")),  # the battery gives what it can
        (150.0, -100.0, (90.0, "self-consumption")),  # draining into export: a headroom (10 kW) short of it
    ],
)
def test_park_total_table(want: float, net: float, expected: tuple[float, str]) -> None:
    room = room_of((0.0, 200.0), (0.0, 200.0))
    total = park_total(
        Preference(BandMode.FREE, want, "self-consumption"), prediction((net, 0.0)), room, 500.0, 200.0
    )
    assert total.battery_kw == pytest.approx(expected[0])
    assert total.reason == expected[1]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-400, 400),
    st.floats(-1500, 1500),
    st.floats(0, 50),
    kw,
    kw,
    st.floats(0, 1000),
    st.floats(0, 1000),
)
def test_park_total_holds_the_caps_when_the_batteries_can(
    want: float, net: float, trend: float, dis: float, ch: float, imp: float, exp: float
) -> None:
    room = room_of((dis,), (ch,))
    pred = prediction((net,), trend=trend)
    total = park_total(Preference(BandMode.FREE, want, "r"), pred, room, imp, exp)
    assert -ch <= total.battery_kw <= dis
    b_lo, b_hi = pred.net_hi - imp, pred.net_lo + exp
    if -ch <= b_lo <= b_hi <= dis:
        assert b_lo <= total.battery_kw <= b_hi
    if total.reason == "r":
        assert total.battery_kw == min(
            max(min(want, max(0.0, b_hi - 0.05 * exp)) if want > 0 else want, -ch), dis
        )


# --- 7. split over the companies ---------------------------------------------------------------------


def test_split_park_spreads_by_state_of_charge_and_curtails_in_proportion() -> None:
    comps = park(
        companies=[
            {"id": "a", "pv": {"peak_kw": 300}, "battery": BAT},
            {"id": "b", "pv": {"peak_kw": 100}, "battery": BAT},
        ]
    ).companies
    room = room_of((200.0, 200.0), (200.0, 200.0), energy=(300.0, 100.0))
    shares = split_park(comps, ParkTotal(100.0, "self-consumption"), prediction((50.0, 50.0)), room, 200.0)
    assert sum(shares.battery_kw) == pytest.approx(100.0)
    assert shares.battery_kw[0] > shares.battery_kw[1]  # the fuller battery gives more
    assert shares.curtail_kw == (0.0, 0.0)
    assert shares.reason == "self-consumption"
    # 400 kW export, batteries take 100, cap 200: 100 kW curtailed, 3:1 like the output
    full = room_of((200.0, 200.0), (50.0, 50.0), energy=(300.0, 300.0))
    pred = prediction((-300.0, -100.0), avail=(300.0, 100.0))
    shares = split_park(comps, ParkTotal(-100.0, "holding the park export cap"), pred, full, 200.0)
    assert shares.battery_kw == pytest.approx((-50.0, -50.0))
    assert shares.curtail_kw == pytest.approx((75.0, 25.0))
    assert shares.reason == "curtailing PV: export cap with batteries full or at full power"


def test_split_park_goes_below_reserves_only_for_a_cap() -> None:
    comps = park(companies=[{"id": "a", "battery": BAT}, {"id": "b", "battery": BAT}]).companies
    room = room_of((200.0, 200.0), (200.0, 200.0), dis_free=(50.0, 0.0), energy=(200.0, 200.0))
    shares = split_park(
        comps, ParkTotal(150.0, "holding the park import cap"), prediction((150.0, 0.0)), room, 200.0
    )
    # 50 kW free of a's reserve, then 100 kW below the reserves, in proportion to what is below (150:200)
    assert shares.battery_kw == pytest.approx((50.0 + 100.0 * 150 / 350, 100.0 * 200 / 350))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(kw, kw, st.floats(20, 380), kw), min_size=1, max_size=5),
    st.floats(0, 1),
    st.floats(-2000, 2000),
)
def test_split_park_sums_to_the_park_total(
    rows: list[tuple[float, float, float, float]], frac: float, export: float
) -> None:
    comps = park(companies=[{"id": f"c{k}", "battery": BAT} for k in range(len(rows))]).companies
    dis, ch = tuple(r[0] for r in rows), tuple(r[1] for r in rows)
    avail = tuple(r[3] for r in rows)
    room = room_of(dis, ch, energy=tuple(r[2] for r in rows))
    # any park total the batteries can give (`park_total` clips to this range)
    total = -sum(ch) + frac * (sum(dis) + sum(ch))
    pred = prediction((export / len(rows),) * len(rows), avail=avail)
    shares = split_park(comps, ParkTotal(total, "r"), pred, room, 100.0)
    assert sum(shares.battery_kw) == pytest.approx(total, abs=1e-6)
    for i in range(len(rows)):
        assert -ch[i] - 1e-9 <= shares.battery_kw[i] <= dis[i] + 1e-9
        assert 0.0 <= shares.curtail_kw[i] <= avail[i] + 1e-9
    over = -(pred.net_lo - total) - 100.0
    if over > 1e-6 and over <= sum(avail):
        assert sum(shares.curtail_kw) == pytest.approx(over, abs=1e-6)
    elif over <= 1e-6:
        assert sum(shares.curtail_kw) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1000), st.lists(st.tuples(kw, kw), min_size=1, max_size=6))
def test_split_shares_within_the_capacities(total: float, rows: list[tuple[float, float]]) -> None:
    caps = [c for c, _ in rows]
    out = split(total, caps, [w for _, w in rows])
    assert all(-1e-12 <= x <= c + 1e-9 for x, c in zip(out, caps, strict=True))
    assert sum(out) == pytest.approx(min(total, sum(caps)), abs=1e-6)


# --- 8. own caps ------------------------------------------------------------------------------------


def caps_park() -> Params:
    return park(
        exp=2000,
        imp=2000,
        companies=[
            {
                "id": "a",
                "pv": {"peak_kw": 500},
                "battery": BAT,
                "import_limit_kw": 150,
                "export_limit_kw": 100,
            },
            {
                "id": "b",
                "pv": {"peak_kw": 500},
                "battery": BAT,
                "import_limit_kw": 300,
                "export_limit_kw": 50,
            },
            {"id": "c", "pv": {"peak_kw": 500}, "battery": BAT},
        ],
    )


company_st = st.tuples(
    st.floats(-600, 600), kw, st.floats(0, 200), st.floats(0, 200), st.floats(0, 1), st.floats(0, 1)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(company_st, min_size=3, max_size=3))
def test_own_caps_hold_a_company_s_caps_when_its_battery_and_pv_can(
    rows: list[tuple[float, float, float, float, float, float]],
) -> None:
    p = caps_park()
    _, comp_lim = limits_now(p, NOON, NO_OVERRIDES)
    net = tuple(r[0] for r in rows)
    avail = tuple(r[1] for r in rows)
    dis, ch = tuple(r[2] for r in rows), tuple(r[3] for r in rows)
    bat = tuple(-c + f * (d + c) for d, c, f in zip(dis, ch, (r[4] for r in rows), strict=True))
    curt = tuple(a * r[5] for a, r in zip(avail, rows, strict=True))
    room = room_of(dis, ch)
    pred = prediction(net, avail=avail)
    held = own_caps(p, NO_OVERRIDES, comp_lim, pred, room, CompanyShares(bat, curt, "r"), 2000.0, 2000.0)
    for i, c in enumerate(p.companies):
        g0 = net[i] + curt[i] - bat[i]
        g = net[i] + held.curtail_kw[i] - held.battery_kw[i]
        assert -ch[i] - 1e-9 <= held.battery_kw[i] <= dis[i] + 1e-9
        assert -1e-9 <= held.curtail_kw[i] <= avail[i] + 1e-9
        lim = comp_lim.get(c.id)
        if lim is None:
            continue
        assert lim.import_kw is not None
        assert lim.export_kw is not None
        imp, exp = lim.import_kw, lim.export_kw
        if g0 > imp and g0 - imp <= max(0.0, dis[i] - bat[i]) + curt[i]:
            assert g <= imp + 1e-6
        elif g0 < -exp and -exp - g0 <= (ch[i] + bat[i]) + (avail[i] - curt[i]):
            assert g >= -exp - 1e-6
        elif -exp <= g0 <= imp:  # within its caps: left as split
            assert (held.battery_kw[i], held.curtail_kw[i]) == (bat[i], curt[i])
    assert held.manual == ()
    assert held.reason == "r"


def test_own_caps_rebalance_the_park_over_the_companies_without_caps() -> None:
    p = caps_park()
    _, comp_lim = limits_now(p, NOON, NO_OVERRIDES)
    room = room_of((200.0, 200.0, 200.0), (200.0, 200.0, 200.0))
    # a imports 250 over its own cap of 150: its battery covers 100; the park (cap 300) then imports
    # 400 - 100 = 300 + 100 from b and c: c, without own caps, covers the park's excess
    pred = prediction((250.0, 100.0, 150.0), avail=(0.0, 0.0, 0.0))
    shares = CompanyShares((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "r")
    held = own_caps(p, NO_OVERRIDES, comp_lim, pred, room, shares, 300.0, 2000.0)
    assert held.battery_kw == pytest.approx((100.0, 0.0, 100.0))


def test_own_caps_apply_manual_modes_and_charging_yields_to_the_park_cap() -> None:
    p = park()  # solar, store (battery); park import cap 500
    room = room_of((0.0, 200.0), (0.0, 200.0))
    shares = CompanyShares((0.0, 30.0), (0.0, 0.0), "self-consumption")
    hold = Overrides(battery={"store": BatteryOverride(BatteryMode.HOLD)})
    held = own_caps(p, hold, {}, prediction((100.0, 100.0)), room, shares, 500.0, 200.0)
    assert held.battery_kw == (0.0, 0.0)
    assert held.manual == ("store",)
    assert held.reason == "self-consumption; manual battery mode: store"
    charge = Overrides(battery={"store": BatteryOverride(BatteryMode.CHARGE, 150.0)})
    held = own_caps(p, charge, {}, prediction((300.0, 100.0)), room, shares, 500.0, 200.0)
    assert held.battery_kw == pytest.approx((0.0, -100.0))  # 400 + 150 would pass the cap: 100 only
    auto = Overrides(battery={"store": BatteryOverride(BatteryMode.AUTO)})
    held = own_caps(p, auto, {}, prediction((300.0, 100.0)), room, shares, 500.0, 200.0)
    assert (held.battery_kw, held.manual) == ((0.0, 30.0), ())


# --- 9. outcome and the small helpers ---------------------------------------------------------------


def test_pv_limits_of_keep_a_held_limit_and_release_a_free_inverter() -> None:
    comps = park(
        companies=[{"id": f"c{k}", "pv": {"peak_kw": 100}} for k in range(3)] + [{"id": "x"}]
    ).companies
    avail, curt = (80.0, 120.0, 50.0, 0.0), (30.0, 0.0, 0.0, 0.0)
    assert pv_limits_of(comps, avail, curt, (False, True, False, False)) == [50.0, 100.0, None, None]


def test_follow_check_counts_cycles_short_of_the_setpoint() -> None:
    p = park()
    state = replace(State.initial(p), battery_kw=(0.0, -100.0), short_charge=(0, 1), short_discharge=(0, 0))
    assert follow_check(p.companies, state, (0.0, -50.0)) == ((0, 2), (0, 0))  # charging 50 of 100
    assert follow_check(p.companies, state, (0.0, -99.0)) == ((0, 0), (0, 0))  # within the tolerance


def test_step_is_the_stages_in_order() -> None:
    p = park(
        companies=[{"id": "a", "pv": {"peak_kw": 600}, "export_limit_kw": 100}, {"id": "b", "battery": BAT}]
    )
    state = State.initial(p)
    snap = Snapshot(NOON, (reading(50, pv=400), reading(100, soc=60)))
    for k in range(3):
        snap = Snapshot(NOON + k, snap.companies, snap.overrides)
        decision, new_state = step(snap, state, p)
        park_lim, comp_lim = limits_now(p, snap.ts_utc, snap.overrides)
        obs = observe(snap, state, p)
        caps = quarter_caps(p, park_lim, sum(obs.grid), state.budget, snap.ts_utc, obs.dt_s)
        plan = current_plan(snap, state, obs, p)
        pred = predict_net(obs, state, p)
        room = battery_room(snap, state, obs, p)
        pref = band_preference(state, p, comp_lim, pred, room, plan.floor_kwh, plan.ceiling_kwh)
        total = park_total(pref, pred, room, caps.import_kw, caps.export_kw)
        shares = split_park(p.companies, total, pred, room, caps.export_kw)
        held = own_caps(p, snap.overrides, comp_lim, pred, room, shares, caps.import_kw, caps.export_kw)
        available = pv_available(obs, [r.pv_kw for r in snap.companies], state, p)
        by_hand = outcome(
            snap, p, obs, pred, room, pref, held, caps.budget, plan, (park_lim, comp_lim), available
        )
        assert by_hand[0] == decision
        assert by_hand[1].battery_kw == new_state.battery_kw
        assert by_hand[1].pv_limit_kw == new_state.pv_limit_kw == decision.pv_limit_kw
        assert decision.pv_limit_kw[0] == pytest.approx(150.0)  # a's own export cap: 50 load + 100
        state = new_state
