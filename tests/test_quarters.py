"""Tests for hubctl.core.quarters: local quarter-hours and DST (SCENARIOS.md, "Metrics")."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubctl.core.limits import LimitsInForce
from hubctl.core.quarters import (
    EPS_OVER_KW,
    ParkQuarter,
    ParkStep,
    QuarterMeter,
    local_label,
    local_seconds_of_day,
    mean_cap,
    over_direction,
    quarter_index_of_day,
    quarter_over_cap,
    quarter_start,
    quarters_in_local_day,
    step_pieces,
)
from hubctl.core.types import Decision

AMS = ZoneInfo("Europe/Amsterdam")
KTM = ZoneInfo("Asia/Kathmandu")


def utc(iso: str) -> float:
    """UTC epoch seconds of a naive ISO 8601 time read as UTC."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


# ----------------------------------------------------------------- quarter_start
@pytest.mark.parametrize(
    ("ts", "start"),
    [
        (0.0, 0.0),
        (899.999, 0.0),
        (900.0, 900.0),
        (1_782_000_450.5, 1_782_000_000.0),
        (math.nextafter(1_782_000_900.0, 0.0), 1_782_000_000.0),
        (-0.5, -900.0),
    ],
)
def test_quarter_start(ts: float, start: float) -> None:
    assert quarter_start(ts) == start


@given(st.floats(-1e10, 1e10))
def test_quarter_start_contains_ts(ts: float) -> None:
    start = quarter_start(ts)
    assert start % 900 == 0
    assert start <= ts < start + 900


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamps_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        quarter_start(bad)
    with pytest.raises(ValueError):
        quarter_index_of_day(bad, AMS)
    with pytest.raises(ValueError):
        local_seconds_of_day(bad, AMS)


# ----------------------------------------------------------------- quarters per day
@pytest.mark.parametrize(
    ("day", "zone", "n"),
    [
        (date(2026, 3, 29), "Europe/Amsterdam", 92),  # 02:00 -> 03:00
        (date(2026, 10, 25), "Europe/Amsterdam", 100),  # 03:00 -> 02:00
        (date(2026, 6, 22), "Europe/Amsterdam", 96),
        (date(2026, 3, 28), "Europe/Amsterdam", 96),
        (date(2026, 10, 26), "Europe/Amsterdam", 96),
        (date(2026, 6, 22), "Asia/Kathmandu", 96),
        (date(2026, 4, 5), "Australia/Lord_Howe", 98),  # half-hour DST
        (date(2026, 10, 4), "Australia/Lord_Howe", 94),
        (date(2018, 11, 4), "America/Sao_Paulo", 92),  # midnight skipped: day starts 01:00
        (date(2018, 2, 17), "America/Sao_Paulo", 100),  # 24:00 -> 23:00: Saturday repeats an hour
        (date(2018, 2, 18), "America/Sao_Paulo", 96),
        (date(2011, 12, 29), "Pacific/Apia", 96),
        (date(2011, 12, 30), "Pacific/Apia", 0),  # Samoa skipped the day
        (date(2011, 12, 31), "Pacific/Apia", 96),
    ],
)
def test_quarters_in_local_day(day: date, zone: str, n: int) -> None:
    assert quarters_in_local_day(day, ZoneInfo(zone)) == n


def test_amsterdam_2026_has_two_dst_days() -> None:
    days = [date(2026, 1, 1) + timedelta(days=k) for k in range(365)]
    counts = {d: quarters_in_local_day(d, AMS) for d in days}
    assert {d: n for d, n in counts.items() if n != 96} == {date(2026, 3, 29): 92, date(2026, 10, 25): 100}
    assert sum(counts.values()) == 365 * 96


# ----------------------------------------------------------------- quarter index
@pytest.mark.parametrize(
    ("day", "midnight_utc"),
    [
        (date(2026, 3, 29), utc("2026-03-28T23:00:00")),
        (date(2026, 10, 25), utc("2026-10-24T22:00:00")),
        (date(2026, 6, 22), utc("2026-06-21T22:00:00")),
    ],
)
def test_indices_continuous_through_the_day(day: date, midnight_utc: float) -> None:
    n = quarters_in_local_day(day, AMS)
    starts = [midnight_utc + 900 * k for k in range(n + 1)]
    assert [quarter_index_of_day(t, AMS) for t in starts] == [*range(n), 0]
    assert [quarter_index_of_day(t + 899.5, AMS) for t in starts] == [*range(n), 0]
    assert quarter_index_of_day(midnight_utc - 0.001, AMS) == 95


def test_autumn_repeated_hour_gets_distinct_indices() -> None:
    first = utc("2026-10-25T00:30:00")  # 02:30 CEST
    second = utc("2026-10-25T01:30:00")  # 02:30 CET
    assert quarter_index_of_day(first, AMS) == 10
    assert quarter_index_of_day(second, AMS) == 14
    assert quarter_index_of_day(utc("2026-10-25T22:45:00"), AMS) == 99  # 23:45 CET


def test_spring_day_index_skips_no_number() -> None:
    assert quarter_index_of_day(utc("2026-03-29T00:45:00"), AMS) == 7  # 01:45 CET
    assert quarter_index_of_day(utc("2026-03-29T01:00:00"), AMS) == 8  # 03:00 CEST
    assert quarter_index_of_day(utc("2026-03-29T21:45:00"), AMS) == 91  # 23:45 CEST


def test_kathmandu_aligns_to_900_s() -> None:
    midnight = utc("2026-06-21T18:15:00")  # 00:00 +05:45
    assert midnight % 900 == 0
    assert quarter_index_of_day(midnight, KTM) == 0
    assert quarter_index_of_day(midnight - 1, KTM) == 95
    assert quarter_index_of_day(midnight + 900 * 50 + 1, KTM) == 50
    ts = midnight + 12_345.6
    start = quarter_start(ts)
    assert start % 900 == 0
    local = datetime.fromtimestamp(start, KTM)
    assert local.minute % 15 == 0
    assert local.second == 0
    assert local_seconds_of_day(start, KTM) % 900 == 0


def test_offset_not_a_multiple_of_15_min_rejected() -> None:
    ts = utc("1930-06-01T12:00:00")  # Amsterdam mean time, +00:19:32 (summer +01:19:32)
    with pytest.raises(ValueError, match="15 min"):
        quarter_index_of_day(ts, AMS)
    with pytest.raises(ValueError, match="15 min"):
        local_seconds_of_day(ts, AMS)
    with pytest.raises(ValueError, match="15 min"):
        quarters_in_local_day(date(1930, 6, 1), AMS)


# ----------------------------------------------------------------- wall clock
@pytest.mark.parametrize(
    ("ts", "tz", "seconds"),
    [
        (utc("2026-06-22T14:00:00"), AMS, 16 * 3600),  # 16:00 CEST
        (utc("2026-01-15T23:30:15"), AMS, 30 * 60 + 15),  # 00:30:15 CET next day
        (utc("2026-10-25T00:30:00"), AMS, 2.5 * 3600),  # 02:30 CEST
        (utc("2026-10-25T01:30:00"), AMS, 2.5 * 3600),  # 02:30 CET, the hour repeats
        (utc("2026-03-29T00:59:59"), AMS, 3600 + 59 * 60 + 59),  # 01:59:59 CET
        (utc("2026-03-29T01:00:00"), AMS, 3 * 3600),  # 03:00 CEST
        (utc("2026-06-21T18:15:00") + 0.25, KTM, 0.25),  # 00:00:00.25 +05:45
    ],
)
def test_local_seconds_of_day(ts: float, tz: ZoneInfo, seconds: float) -> None:
    assert local_seconds_of_day(ts, tz) == pytest.approx(seconds, abs=1e-6)


def test_local_seconds_just_before_midnight() -> None:
    ts = math.nextafter(utc("2026-06-21T22:00:00"), 0.0)  # a hair before 00:00 CEST
    assert 86_399.99 < local_seconds_of_day(ts, AMS) < 86_400


# ----------------------------------------------------------------- properties
ZONES = [
    "UTC",
    "Europe/Amsterdam",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Kolkata",
]
YEARS_2000_2100 = st.floats(utc("2000-01-01T00:00:00"), utc("2100-01-01T00:00:00"))


@given(YEARS_2000_2100, st.sampled_from(ZONES))
def test_index_within_day_and_consistent(ts: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    start = quarter_start(ts)
    index = quarter_index_of_day(ts, tz)
    day = datetime.fromtimestamp(start, tz).date()
    assert 0 <= index < quarters_in_local_day(day, tz)
    assert quarter_index_of_day(start, tz) == index
    # the next quarter is the next index, or 0 on the next local day
    after = quarter_index_of_day(start + 900, tz)
    assert after == index + 1 or (after == 0 and index == quarters_in_local_day(day, tz) - 1)
    sod = local_seconds_of_day(ts, tz)
    assert 0 <= sod < 86_400
    assert local_seconds_of_day(start, tz) % 900 == 0
    local = datetime.fromtimestamp(start, tz)
    assert local_seconds_of_day(start, tz) == local.hour * 3600 + local.minute * 60 + local.second


# ----------------------------------------------------------------- the one quarter-hour verdict
T_Q = 900.0 * 1_978_000  # a quarter boundary


def _decision(cap: float | None, source: str) -> Decision:
    return Decision((), (), "normal", LimitsInForce(cap, source, None, "none"), {}, 0.0, 0.0, "test")


@pytest.mark.parametrize(("park_kw", "over"), [(450.0, False), (466.0, False), (470.0, True)])
def test_meter_and_ledger_judge_a_mid_quarter_cap_change_alike(park_kw: float, over: bool) -> None:
    """The module docstring's example: the cap drops from 500 to 400 kW at minute 10; mean cap 466.7 kW."""
    meter = QuarterMeter()
    ledger = ParkQuarter(T_Q)
    for k in range(900):
        cap, source = (400.0, "window 16:10-20:00") if k >= 600 else (500.0, "contract")
        meter.add(T_Q + k, park_kw, 1.0, _decision(cap, source))
        ledger.add(park_kw, 1.0, ParkStep(import_limit_kw=cap, import_source=source))
    (q,) = meter.close_before(T_Q + 900)
    row = ledger.row()
    assert q.mean_kw == pytest.approx(park_kw)
    assert row.grid_kw == pytest.approx(park_kw)
    assert q.import_cap_kw == pytest.approx(1400.0 / 3)
    assert row.import_limit_kw == pytest.approx(1400.0 / 3)
    assert q.import_source == row.import_source == "contract + window 16:10-20:00"
    assert q.over is row.over_cap is over


def test_the_tolerance_is_one_watt_each_way() -> None:
    assert over_direction(500.0 + EPS_OVER_KW, 500.0, None) is None  # at the tolerance: inside
    assert over_direction(500.0 + 2 * EPS_OVER_KW, 500.0, None) == "import"
    assert over_direction(-300.0 - 2 * EPS_OVER_KW, 500.0, 300.0) == "export"
    assert over_direction(-300.0 - 2 * EPS_OVER_KW, 500.0, None) is None
    assert over_direction(None, 500.0, 300.0) is None  # nothing measured: not judged
    assert over_direction(math.nan, 500.0, 300.0) is None
    assert quarter_over_cap(510.0, 500.0, None)
    assert not quarter_over_cap(490.0, 500.0, None)


def test_a_cap_in_force_for_part_of_the_measured_seconds_has_no_mean() -> None:
    """The contract (tools/score.py) counts "no cap" as an infinite limit: such a quarter is not judged."""
    assert mean_cap(400.0 * 300, 300.0, 900.0) is None
    assert mean_cap(400.0 * 900, 900.0, 900.0) == 400.0
    assert mean_cap(0.0, 0.0, 0.0) is None
    q = ParkQuarter(T_Q)
    for k in range(900):
        cap = 400.0 if k >= 600 else None
        q.add(450.0, 1.0, ParkStep(import_limit_kw=cap, import_source="none" if cap is None else "window"))
    row = q.row()
    assert (row.import_limit_kw, row.import_source, row.over_cap) == (None, "none + window", False)
    # caps are judged over the measured seconds only: a gap in the readings does not dilute them
    meter = QuarterMeter()
    for k in range(900):
        meter.add(T_Q + k, 410.0 if k % 2 else None, 1.0, _decision(400.0, "contract"))
    (rec,) = meter.close_before(T_Q + 900)
    assert (rec.import_cap_kw, rec.over) == (400.0, True)
    assert rec.coverage == pytest.approx(0.5)


def test_steps_are_cut_at_quarter_boundaries_and_replays_dropped() -> None:
    assert step_pieces(T_Q - 10, T_Q + 20, None) == [(T_Q - 10, 10.0), (T_Q, 20.0)]
    assert step_pieces(T_Q, T_Q + 5, T_Q + 3) == [(T_Q + 3, 2.0)]  # an overlap is trimmed
    assert step_pieces(T_Q, T_Q + 5, T_Q + 5) == []  # a replay
    meter = QuarterMeter()
    meter.add(T_Q - 10, 100.0, 30.0, _decision(50.0, "contract"))  # 10 s before the boundary, 20 s after
    (before,) = meter.close_before(T_Q)
    assert before.coverage == pytest.approx(10 / 900)
    (after,) = meter.close_before(T_Q + 900)
    assert after.coverage == pytest.approx(20 / 900)
    assert before.over
    assert after.over


def test_local_label_is_the_sites_clock() -> None:
    assert local_label(utc("2026-06-22T14:00:00"), AMS) == "2026-06-22 16:00 CEST"
    assert local_label(utc("2026-12-15T14:00:00"), AMS) == "2026-12-15 15:00 CET"
    assert local_label(utc("2026-06-22T14:00:00"), KTM) == "2026-06-22 19:45 +0545"
