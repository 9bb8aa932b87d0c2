"""Limits in force: windows, schedules, midnight, lowest wins, the source is remembered."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubctl.config.site import Caps
from hubctl.core.limits import LimitClock, LocalTime, limits_in_force, window_is_active, with_operator

AMS = ZoneInfo("Europe/Amsterdam")


def caps(**kw: object) -> Caps:
    return Caps.model_validate({"import_limit_kw": 900, "export_limit_kw": 500, **kw})


def at(hhmm: str, day: dt.date = dt.date(2026, 12, 15)) -> LocalTime:
    h, m = hhmm.split(":")
    return LocalTime(day, int(h) * 3600 + int(m) * 60)


@pytest.mark.parametrize(
    ("start", "end", "hhmm", "active"),
    [
        ("16:00", "20:00", "15:59", False),
        ("16:00", "20:00", "16:00", True),
        ("16:00", "20:00", "19:59", True),
        ("16:00", "20:00", "20:00", False),  # [start, end)
        ("22:00", "06:00", "23:30", True),  # across midnight
        ("22:00", "06:00", "05:59", True),
        ("22:00", "06:00", "06:00", False),
        ("22:00", "06:00", "12:00", False),
        ("20:00", "24:00", "23:59", True),
        ("00:00", "24:00", "00:00", True),
    ],
)
def test_window_activity(start: str, end: str, hhmm: str, active: bool) -> None:
    c = caps(windows=[{"start": start, "end": end, "import_limit_kw": 600}])
    lim = limits_in_force(c, at(hhmm))
    assert (lim.import_kw == 600) is active
    assert lim.import_source == (f"window {start}-{end}" if active else "contract")
    assert lim.export_kw == 500
    assert lim.export_source == "contract"


def test_lowest_active_window_wins_per_direction() -> None:
    c = caps(
        windows=[
            {"start": "16:00", "end": "20:00", "import_limit_kw": 600},
            {"start": "17:00", "end": "18:00", "import_limit_kw": 700, "export_limit_kw": 100},
            {"start": "17:30", "end": "19:00", "import_limit_kw": 400},
        ]
    )
    lim = limits_in_force(c, at("17:45"))
    assert (lim.import_kw, lim.import_source) == (400, "window 17:30-19:00")
    assert (lim.export_kw, lim.export_source) == (100, "window 17:00-18:00")


def test_window_may_raise_the_base_as_the_contract_says() -> None:
    # SCENARIOS.md: a window replaces the base value of the limits it names
    c = caps(windows=[{"start": "01:00", "end": "05:00", "import_limit_kw": 1200}])
    assert limits_in_force(c, at("02:00")).import_kw == 1200


def test_day_schedule_applies_on_its_date_only() -> None:
    day = dt.date(2026, 12, 16)
    c = caps(
        schedules=[
            {"date": day.isoformat(), "windows": [{"start": "07:00", "end": "09:00", "import_limit_kw": 300}]}
        ]
    )
    assert limits_in_force(c, at("08:00", day)).import_kw == 300
    assert limits_in_force(c, at("08:00", day)).import_source == "schedule 2026-12-16 07:00-09:00"
    assert limits_in_force(c, at("08:00", day + dt.timedelta(days=1))).import_kw == 900


def test_schedule_window_across_midnight_spills_into_next_day() -> None:
    day = dt.date(2026, 12, 16)
    c = caps(
        schedules=[
            {"date": day.isoformat(), "windows": [{"start": "23:00", "end": "02:00", "export_limit_kw": 0}]}
        ]
    )
    assert limits_in_force(c, at("23:30", day)).export_kw == 0
    assert limits_in_force(c, at("01:00", day + dt.timedelta(days=1))).export_kw == 0
    assert limits_in_force(c, at("01:00", day)).export_kw == 500  # before the schedule started


def test_no_caps() -> None:
    lim = limits_in_force(Caps(), at("12:00"))
    assert lim.import_kw is None
    assert lim.import_source == "none"


def test_operator_may_lower_never_raise() -> None:
    base = limits_in_force(caps(), at("12:00"))
    low = with_operator(base, 800, 600)
    assert (low.import_kw, low.import_source) == (800, "operator")
    assert (low.export_kw, low.export_source) == (500, "contract")


def test_limit_clock_follows_local_time_across_dst() -> None:
    c = caps(windows=[{"start": "16:00", "end": "20:00", "import_limit_kw": 600}])
    clock = LimitClock(c, {}, AMS)
    # 2026-10-25: clocks go back at 03:00 CEST; 16:30 local is 15:30 UTC that day
    ts = dt.datetime(2026, 10, 25, 15, 30, tzinfo=dt.UTC).timestamp()
    assert clock.at(ts)[0].import_kw == 600
    ts_summer = dt.datetime(2026, 10, 24, 15, 30, tzinfo=dt.UTC).timestamp()  # 17:30 CEST
    assert clock.at(ts_summer)[0].import_kw == 600
    assert clock.at(ts_summer - 2 * 3600)[0].import_kw == 900  # 15:30 CEST


@given(
    st.integers(0, 1439),
    st.integers(0, 1439),
    st.integers(0, 86399),
)
def test_window_activity_matches_a_minute_set(start_min: int, end_min: int, sod: int) -> None:
    if start_min == end_min:
        return
    s, e = start_min * 60, end_min * 60
    minutes = set(range(start_min, end_min)) if s < e else set(range(start_min, 1440)) | set(range(end_min))
    assert window_is_active(s, e, sod) == (sod // 60 in minutes)
