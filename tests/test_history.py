"""The load history (pure): day types, local quarter-hours, learning, profiles, weighted quantiles."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubctl.core.history import (
    SLOTS,
    Calendar,
    DayRecord,
    DayType,
    History,
    LocalQuarters,
    weighted_quantiles,
)

TZ = ZoneInfo("Europe/Amsterdam")
CAL = Calendar("NL")


def local_ts(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return dt.datetime(y, m, d, hh, mm, tzinfo=TZ).timestamp()


@pytest.mark.parametrize(
    ("date", "kind"),
    [
        (dt.date(2026, 5, 11), DayType.WORKING),  # a Monday
        (dt.date(2026, 5, 14), DayType.HOLIDAY),  # Ascension Day
        (dt.date(2026, 5, 16), DayType.SATURDAY),
        (dt.date(2026, 5, 17), DayType.SUNDAY),
        (dt.date(2026, 4, 27), DayType.HOLIDAY),  # King's Day
        (dt.date(2026, 12, 25), DayType.HOLIDAY),
        (dt.date(2026, 12, 24), DayType.WORKING),
    ],
)
def test_day_types_follow_the_dutch_calendar(date: dt.date, kind: DayType) -> None:
    assert CAL.day_type(date) is kind


def test_closed_days_and_no_country() -> None:
    closed = Calendar("NL", closed=[dt.date(2026, 7, 31)])
    assert closed.day_type(dt.date(2026, 7, 31)) is DayType.HOLIDAY
    assert closed.holiday_name(dt.date(2026, 7, 31)) == "closed (site config)"
    assert Calendar(None).day_type(dt.date(2026, 5, 14)) is DayType.WORKING


def test_local_quarters_follow_the_wall_clock_across_dst() -> None:
    q = LocalQuarters(TZ)
    # spring: 02:00 local does not exist, 01:45 is followed by 03:00
    before = local_ts(2026, 3, 29, 1, 45)
    assert q.of(int(before // 900)) == (dt.date(2026, 3, 29), 7)
    assert q.of(int(before // 900) + 1) == (dt.date(2026, 3, 29), 12)
    # autumn: the hour 02:00-03:00 comes twice and maps to the same slots
    first = local_ts(2026, 10, 25, 2, 0)  # the first 02:00 (+02:00)
    assert q.of(int(first // 900)) == (dt.date(2026, 10, 25), 8)
    assert q.of(int(first // 900) + 4) == (dt.date(2026, 10, 25), 8)
    assert q.start_utc(dt.date(2026, 6, 1), 28) == local_ts(2026, 6, 1, 7, 0)


def observe_day(h: History, date: dt.date, load_of_slot: list[float], dt_s: float = 60.0) -> History:
    """Feed constant loads per slot for a whole local day (two companies: a 1/4, b 3/4)."""
    t = local_ts(date.year, date.month, date.day)
    end = t + 86400
    while t < end:
        _, slot = h.quarters.of(int(t // 900))
        x = load_of_slot[slot]
        h = h.observe(t, (0.25 * x, 0.75 * x), (0.0, 0.0), dt_s)
        t += dt_s
    return h


def test_observed_quarters_become_the_profile_of_their_day_type() -> None:
    h = History.empty(["a", "b"], TZ, CAL)
    shape = [100.0 + 10 * s for s in range(SLOTS)]
    h = observe_day(h, dt.date(2026, 6, 1), shape)  # a Monday
    rec = h.days[dt.date(2026, 6, 1)]
    assert rec.day_type is DayType.WORKING
    assert rec.load_kw[40, 1] == pytest.approx(0.75 * shape[40])
    # the last quarter completes with the first reading after it
    assert math.isnan(rec.load_kw[95, 0])
    h = h.complete_current()
    prof = h.profiles[DayType.WORKING]
    assert prof.park_mid_kw[95] == pytest.approx(shape[95])
    assert prof.park_high_kw[30] == pytest.approx(shape[30])  # one day: every quantile is that day
    assert prof.company_mid_kw[30, 0] == pytest.approx(0.25 * shape[30])
    assert not h.profiles[DayType.SUNDAY].known
    assert h.days_by_type()[DayType.WORKING] == 1


def test_a_quarter_seen_for_less_than_half_is_not_kept() -> None:
    h = History.empty(["a", "b"], TZ, CAL)
    t = local_ts(2026, 6, 1, 10, 0)
    for k in range(400):  # 400 s of a 900 s quarter
        h = h.observe(t + k, (1.0, 3.0), (0.0, 0.0), 1.0)
    h = h.observe(t + 900, (1.0, 3.0), (0.0, 0.0), 1.0)
    assert dt.date(2026, 6, 1) not in h.days
    assert h.revision == 0


def test_recency_weighting_and_quantiles_over_days() -> None:
    h = History.empty(["a", "b"], TZ, CAL, half_life_days=7.0)
    records = []
    for k, level in enumerate([100.0, 200.0, 300.0, 400.0, 500.0]):
        date = dt.date(2026, 6, 1) + dt.timedelta(days=k)  # Monday .. Friday
        load = np.full((SLOTS, 2), level / 2)
        records.append(
            DayRecord(date, CAL.day_type(date), load, np.zeros((SLOTS, 2)), np.full(SLOTS, np.nan))
        )
    h = h.with_records(records)
    prof = h.profiles[DayType.WORKING]
    w = 0.5 ** (np.arange(4, -1, -1) / 7.0)
    assert prof.park_mid_kw[10] == pytest.approx(float(np.sum(w * [100, 200, 300, 400, 500]) / w.sum()))
    assert prof.park_mid_kw[10] > 300  # recent days weigh more
    assert 100 <= prof.park_low_kw[10] < prof.park_mid_kw[10] < prof.park_high_kw[10] <= 500


def test_the_history_is_bounded_and_profiles_forget_dropped_days() -> None:
    h = History.empty(["a", "b"], TZ, CAL, max_days=7)
    records = []
    for k in range(10):
        date = dt.date(2026, 6, 1) + dt.timedelta(days=k)
        load = np.full((SLOTS, 2), 1000.0 if k < 3 else 10.0)
        records.append(DayRecord(date, CAL.day_type(date), load, load * 0, np.full(SLOTS, np.nan)))
    h = h.with_records(records)
    assert len(h.days) == 7
    assert min(h.days) == dt.date(2026, 6, 4)
    assert h.profiles[DayType.WORKING].park_high_kw[0] == pytest.approx(20.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
            st.floats(min_value=1e-3, max_value=10),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_weighted_quantiles_are_monotone_and_within_the_data(
    pairs: list[tuple[float, float]], q: float
) -> None:
    x = np.array([p[0] for p in pairs])
    w = np.array([p[1] for p in pairs])
    lo, mid, hi = weighted_quantiles(x, w, (0.0, q, 1.0))
    assert x.min() - 1e-9 <= lo <= mid <= hi <= x.max() + 1e-9
    assert lo == pytest.approx(x.min())
    assert hi == pytest.approx(x.max())


def test_weighted_quantiles_ignore_missing_values_and_match_equal_weights() -> None:
    x = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 5.0], [4.0, np.nan]])
    w = np.ones(4)
    q = weighted_quantiles(x, w, (0.5,))
    assert q[0, 0] == pytest.approx(2.5)  # the median of 1..4
    assert q[0, 1] == pytest.approx(5.0)  # a single value
    assert np.isnan(weighted_quantiles(np.full((3, 1), np.nan), np.ones(3), (0.5,))[0, 0])
