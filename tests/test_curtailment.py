"""Curtailed PV from the controller's estimate (#12 item 6), pure: the rule, the estimate, the quarter.

- `hubctl.core.park.curtailed_pv_kw`: `max(available - reading, 0)` while a limit holds an inverter
  back, 0 while none does (an estimate never invents curtailment), None when not known; table and
  hypothesis (never negative, zero when nothing is limited).
- `hubctl.core.park.pv_available` as `step` reports it in `Decision.pv_available`: the readings
  while no limit is in force, the clear-sky model (between the reading and the peak) while one
  holds an inverter back; properties over random snapshots and limits.
- `hubctl.core.quarters.ParkQuarter`: a quarter's curtailed kWh and whether it is an estimate.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_control import NIGHT, NOON, park, reading

from hubctl.core.control import step
from hubctl.core.park import curtailed_pv_kw
from hubctl.core.quarters import CURTAILED_ESTIMATED, CURTAILED_MEASURED, ParkQuarter, ParkStep
from hubctl.core.types import CompanyReading, PvAvailable, Snapshot, State

# --- the rule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "pv", "limited", "curtailed"),
    [
        (100.0, 40.0, True, 60.0),  # held back at 40 kW of 100
        (100.0, 100.0, True, 0.0),  # the limit sits at what the sun gives
        (30.0, 40.0, True, 0.0),  # an estimate below the reading: nothing curtailed, never negative
        (100.0, 40.0, False, 0.0),  # no limit holds it back: 0 whatever the estimate says
        (None, 40.0, False, 0.0),
        (None, None, False, 0.0),
        (None, 40.0, True, None),  # limited, but the estimate is not known
        (100.0, None, True, None),  # limited, but not read
        (0.0, 0.0, True, 0.0),
    ],
)
def test_curtailed_is_the_estimate_less_the_reading_while_limited(
    available: float | None, pv: float | None, *, limited: bool, curtailed: float | None
) -> None:
    assert curtailed_pv_kw(available, pv, limited=limited) == curtailed


maybe_kw = st.none() | st.floats(0, 1e4, allow_nan=False)


@given(maybe_kw, maybe_kw, st.booleans())
def test_curtailed_is_never_negative_and_zero_when_nothing_is_limited(
    available: float | None,
    pv: float | None,
    limited: bool,
) -> None:
    out = curtailed_pv_kw(available, pv, limited=limited)
    if not limited:
        assert out == 0.0
    elif available is None or pv is None:
        assert out is None
    else:
        assert out is not None
        assert out >= 0.0
        assert out == pytest.approx(max(available - pv, 0.0))


# --- the estimate the decision carries ----------------------------------------------------------------------


def _decide(
    readings: tuple[CompanyReading, ...],
    limits: tuple[float | None, ...],
    ts: float = NOON,
    at_limit: tuple[bool, ...] = (),
) -> PvAvailable:
    """The decision's available PV one cycle after the limits `limits` were written (they are in force);
    `at_limit`: the inverters that gave their limit the cycle before."""
    p = park()
    state = replace(State.initial(p), pv_limit_kw=limits, last_ts=ts - 1.0, pv_at_limit=at_limit)
    decision, _ = step(Snapshot(ts, readings), state, p)
    assert decision.pv_available is not None
    return decision.pv_available


def test_without_a_limit_the_readings_are_the_available_pv_and_nothing_is_curtailed() -> None:
    # the park exports more than the PV readings explain (a reading lags the meter): the controller
    # takes more PV for its net, but no limit is in force, so nothing is curtailed
    solar = CompanyReading(grid_kw=-450.0, pv_kw=400.0, battery_kw=0.0, soc_pct=None)
    out = _decide((solar, reading(100, pv=50, soc=50)), (None, None))
    assert out.available_kw == (400.0, 50.0)
    assert out.estimated == (False, False)
    assert out.curtailed_kw == (0.0, 0.0)
    assert out.park_curtailed_kw == 0.0
    assert not out.any_estimated


def test_an_inverter_held_at_its_limit_is_estimated_from_the_clear_sky() -> None:
    # solar (600 kW peak) held at 200 kW at noon in June: the prior clear-sky factor (0.8) says more
    out = _decide((reading(50, pv=200), reading(100, pv=50, soc=50)), (200.0, None))
    assert out.estimated == (True, False)
    solar = out.available_kw[0]
    assert solar is not None
    assert 200.0 < solar <= 600.0
    assert out.curtailed_kw == pytest.approx((solar - 200.0, 0.0))
    assert out.park_available_kw == pytest.approx(solar + 50.0)
    assert out.park_curtailed_kw == pytest.approx(solar - 200.0)
    assert out.any_estimated


def test_a_limit_above_the_clear_sky_holds_nothing_back() -> None:
    # a limit of 590 kW on a 600 kW field giving 100 kW: above what the clear sky says (about 400 kW)
    out = _decide((reading(50, pv=100), reading(100, pv=50, soc=50)), (590.0, None))
    assert out.estimated == (False, False)
    assert out.curtailed_kw == (0.0, 0.0)


def test_an_inverter_climbing_out_of_a_limit_is_held_back_for_one_cycle() -> None:
    # solar gave its limit last cycle; the limit was raised to 300 kW and it gives 250 kW on its way up,
    # while the clear sky says about 400: held back, estimated
    climbing = _decide(
        (reading(50, pv=250), reading(100, pv=50, soc=50)), (300.0, None), at_limit=(True, False)
    )
    assert climbing.estimated == (True, False)
    assert climbing.curtailed_kw[0] is not None
    assert climbing.curtailed_kw[0] > 100.0
    # the same reading without a limit the cycle before: the sky gives 250 (a cloud), nothing curtailed
    dull = _decide((reading(50, pv=250), reading(100, pv=50, soc=50)), (300.0, None), at_limit=(False, False))
    assert dull.estimated == (False, False)
    assert dull.curtailed_kw == (0.0, 0.0)


def test_a_dull_sky_under_a_raised_limit_counts_one_cycle_at_most() -> None:
    p = park()
    snap = Snapshot(NOON, (reading(50, pv=200), reading(100, pv=50, soc=50)))
    state = replace(State.initial(p), pv_limit_kw=(200.0, None), last_ts=NOON - 1.0)
    flags = []
    for k in range(6):
        decision, state = step(replace(snap, ts_utc=NOON + k), state, p)
        assert decision.pv_available is not None
        flags.append(decision.pv_available.estimated[0])
        # the limit raised to 250, 260, ... kW (below the clear sky's 400), but the sky gives 200 kW
        state = replace(state, pv_limit_kw=(250.0 + 10 * k, None))
    assert flags[0]  # at its limit: held back
    assert flags[1]  # below a raised limit, at its limit the cycle before: climbing
    assert not any(flags[2:])  # still below it: the sky, not a limit


def test_an_unread_inverter_has_no_estimate() -> None:
    out = _decide((CompanyReading(-100.0, None, 0.0, None), reading(100, pv=50, soc=50)), (200.0, None))
    assert out.available_kw == (None, 50.0)
    assert out.curtailed_kw == (None, 0.0)
    assert out.park_available_kw is None
    assert out.park_curtailed_kw is None


def test_at_night_a_limit_curtails_nothing() -> None:
    out = _decide((reading(50, pv=0), reading(100, pv=0, soc=50)), (0.0, 0.0), ts=NIGHT)
    assert out.curtailed_kw == (0.0, 0.0)


@given(
    st.floats(0, 700),
    st.floats(0, 300),
    st.one_of(st.none(), st.floats(0, 700)),
    st.one_of(st.none(), st.floats(0, 300)),
    st.floats(-300, 300),
    st.sampled_from([NOON, NOON + 3 * 3600, NIGHT]),
    st.tuples(st.booleans(), st.booleans()),
)
def test_the_estimate_stays_between_the_reading_and_the_peak(
    pv_a: float,
    pv_b: float,
    lim_a: float | None,
    lim_b: float | None,
    grid: float,
    ts: float,
    at_limit: tuple[bool, bool],
) -> None:
    readings = (CompanyReading(grid, pv_a, 0.0, None), reading(100, pv=pv_b, soc=50))
    out = _decide(readings, (lim_a, lim_b), ts, at_limit)
    for read, lim, peak, avail, est, cut in zip(
        (pv_a, pv_b),
        (lim_a, lim_b),
        (600.0, 300.0),
        out.available_kw,
        out.estimated,
        out.curtailed_kw,
        strict=True,
    ):
        assert avail is not None
        assert cut is not None
        assert cut >= 0.0
        if lim is None:  # nothing holds it back: the reading, no curtailment
            assert not est
        if not est:
            assert avail == read
            assert cut == 0.0
        else:
            assert read <= avail <= max(read, peak)
            assert cut == pytest.approx(avail - read)
    assert out.park_curtailed_kw is not None
    assert out.park_curtailed_kw >= 0.0


def test_the_fail_safe_decides_without_an_estimate() -> None:
    p = park()
    stale = CompanyReading(-100.0, 200.0, 0.0, None, grid_age_s=60.0)
    decision, _ = step(Snapshot(NOON, (stale, reading(100, pv=50, soc=50))), State.initial(p), p)
    assert decision.mode == "failsafe"
    assert decision.pv_available is None


def test_a_missing_pv_reading_does_not_teach_a_dark_sky() -> None:
    p = park()
    state = State.initial(p)
    unread = CompanyReading(-100.0, None, 0.0, None)
    for k in range(30):
        _, state = step(Snapshot(NOON + k, (unread, reading(100, pv=50, soc=50))), state, p)
    assert state.pv_index.k_clear[0] == pytest.approx(p.pv_prior_k, rel=1e-3)
    assert state.pv_index.k_now[0] == pytest.approx(p.pv_prior_k)  # never learned from a reading
    assert state.pv_index.seen_s[0] == 0.0


# --- the quarter --------------------------------------------------------------------------------------------


def test_a_quarter_of_estimates_is_an_estimate() -> None:
    q = ParkQuarter(0.0)
    q.add(-30.0, 450.0, ParkStep(pv_kw=70.0, curtailed_kw=0.0, curtailed_estimated=True))
    q.add(-40.0, 450.0, ParkStep(pv_kw=70.0, curtailed_kw=130.0, curtailed_estimated=True))
    row = q.row()
    assert row.curtailed_kwh == pytest.approx(130.0 * 450 / 3600)
    assert row.curtailed_basis == CURTAILED_ESTIMATED


def test_a_quarter_that_knew_the_available_pv_is_measured() -> None:
    q = ParkQuarter(0.0)
    q.add(-30.0, 900.0, ParkStep(pv_kw=70.0, pv_available_kw=200.0))
    row = q.row()
    assert row.curtailed_kwh == pytest.approx(130.0 / 4)
    assert row.curtailed_basis == CURTAILED_MEASURED


def test_one_estimated_step_makes_the_quarter_an_estimate_and_unknown_steps_add_nothing() -> None:
    q = ParkQuarter(0.0)
    q.add(-30.0, 300.0, ParkStep(pv_kw=70.0, pv_available_kw=200.0))
    q.add(-30.0, 300.0, ParkStep(pv_kw=None, curtailed_kw=None, curtailed_estimated=True))
    assert q.row().curtailed_basis == CURTAILED_MEASURED  # the unknown step said nothing
    q.add(-30.0, 300.0, ParkStep(pv_kw=70.0, curtailed_kw=30.0, curtailed_estimated=True))
    row = q.row()
    assert row.curtailed_kwh == pytest.approx((130.0 + 30.0) * 300 / 3600)
    assert row.curtailed_basis == CURTAILED_ESTIMATED


def test_a_quarter_without_a_figure_has_no_basis() -> None:
    q = ParkQuarter(0.0)
    q.add(-30.0, 900.0, ParkStep(pv_kw=70.0))
    row = q.row()
    assert row.curtailed_kwh is None
    assert row.curtailed_basis is None


def test_an_open_quarter_saved_before_the_estimate_existed_resumes() -> None:
    saved = ParkQuarter(900.0)
    saved.add(10.0, 60.0, ParkStep(pv_kw=5.0, pv_available_kw=8.0))
    data = saved.to_json()
    del data["curtailed_estimated"]  # what a ledger of an older hubctl saved
    resumed = ParkQuarter.from_json(data)
    assert resumed.row() == saved.row()
    assert math.isclose(resumed.row().curtailed_kwh or 0.0, 3.0 * 60 / 3600)
