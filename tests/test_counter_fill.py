"""`CounterFill`: the gap a stale meter leaves, filled from energy counters (#13 item 7), on plain
cycle facts. The service end to end: test_stale_not_measured.py."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from hubctl.core.limits import NO_LIMITS
from hubctl.core.types import CompanyReading, Decision, ParkMeterReading, Snapshot
from hubctl.service.cycle import CounterFill, CycleFacts

if TYPE_CHECKING:
    from hubctl.service.cycle import Counters

DECISION = Decision((None, None), (None, None), "normal", NO_LIMITS, {}, 0.0, 0.0, "")


class Meters:
    """Two companies' counters (import, export kWh), as the reading store would give them."""

    def __init__(self) -> None:
        self.a: tuple[float, float] | None = (100.0, 10.0)
        self.b: tuple[float, float] | None = (50.0, 5.0)
        self.park: tuple[float, float] | None = None

    def __call__(self) -> Counters:
        return (self.a, self.b), self.park


def facts(
    t: float, *, a_age: float = 1.0, b_age: float = 1.0, measured: bool = True, park: float | None = None
) -> CycleFacts:
    companies = (CompanyReading(30.0, grid_age_s=a_age), CompanyReading(20.0, grid_age_s=b_age))
    pm = None if park is None else ParkMeterReading(park, 1.0)
    snap = Snapshot(t, companies, park_meter=pm)
    return CycleFacts(snap, DECISION, t, 1.0, 50.0, 0, 0, 0.0, 0.0, measured=measured)


def run(
    meters: Meters,
    gap_s: int,
    *,
    a_counts: tuple[float, float] | None = (100.9, 10.0),
    b_fresh: bool = True,
    park: float | None = None,
) -> CounterFill:
    fill = CounterFill(meters, stale_after_s=5.0)
    for t in range(10):
        assert fill.step(facts(float(t), park=park)) is None
    for t in range(10, 10 + gap_s):  # a's meter silent
        assert (
            fill.step(
                facts(float(t), a_age=t - 9.0, b_age=1.0 if b_fresh else 9.0, measured=False, park=park)
            )
            is None
        )
    meters.a = a_counts
    meters.b = (50.0 + 20.0 * gap_s / 3600.0, 5.0)
    return fill


def test_a_gap_is_filled_from_the_counters_at_the_mean_power() -> None:
    meters = Meters()
    fill = run(meters, 60)
    step = fill.step(facts(70.0))
    assert step is not None
    assert (step.ts, step.dt_s) == (10.0, 60.0)  # from the end of the last measured step
    assert step.grid_kw == pytest.approx((0.9 * 60.0, 20.0))  # a: 0.9 kWh in 60 s; b: its counters
    assert step.park_kw is None  # a group contract: the companies' sum
    assert fill.step(facts(71.0)) is None  # filled once


def test_a_company_without_counters_that_stayed_fresh_counts_its_readings() -> None:
    meters = Meters()
    meters.b = None
    fill = run(meters, 60)
    meters.b = None
    step = fill.step(facts(70.0))
    assert step is not None
    assert step.grid_kw[1] == pytest.approx(20.0)  # its power as read through the gap


@pytest.mark.parametrize(
    ("a_counts", "why"),
    [
        (None, "company 1 has no energy counters"),  # the stale meter has none
        ((90.0, 10.0), "company 1 has no energy counters"),  # went backwards: replaced or reset
    ],
)
def test_a_gap_without_usable_counters_stays_uncovered(
    a_counts: tuple[float, float] | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubctl.service")
    meters = Meters()
    fill = run(meters, 60, a_counts=a_counts)
    assert fill.step(facts(70.0)) is None
    assert any(why in r.getMessage() for r in caplog.records)


def test_two_stale_meters_without_counters_leave_the_gap() -> None:
    meters = Meters()
    meters.b = None
    fill = run(meters, 60, b_fresh=False)
    meters.b = None
    assert fill.step(facts(70.0)) is None


def test_a_shared_connection_takes_the_park_meter_s_own_counters() -> None:
    meters = Meters()
    meters.park = (500.0, 0.0)
    fill = run(meters, 60, park=60.0)
    meters.park = (500.0 + 1.2, 0.0)  # 72 kW over the minute: 10 kW of common load beyond the 62
    step = fill.step(facts(70.0, park=72.0))
    assert step is not None
    assert step.park_kw == pytest.approx(72.0)


def test_nothing_measured_yet_means_no_gap_to_fill() -> None:
    fill = CounterFill(Meters(), stale_after_s=5.0)
    assert fill.step(facts(0.0, a_age=9.0, measured=False)) is None
    assert fill.step(facts(1.0)) is None
