"""Local-time quarter-hours, DST-aware.

Grid operators judge a contracted capacity per quarter-hour aligned to local
:00, :15, :30 and :45 (SCENARIOS.md, "Metrics", ``cap_quarters_over``), and
limit windows are given in local wall-clock time (SCENARIOS.md, "scenario.yaml"
and "Physics"). This module maps UTC epoch seconds to those. It is pure: no
I/O, no clock reads.

Why ``quarter_start(ts) = floor(ts / 900) · 900`` needs no time zone: every UTC
offset in use since the early 1970s is a multiple of 15 min (including
+05:45 Asia/Kathmandu, +08:45 Australia/Eucla, +12:45 Pacific/Chatham), and
local = UTC + offset, so a local :00/:15/:30/:45 boundary is a multiple of
900 s in UTC as well. The same quarter key is used by ``tools/score.py``
(``clock``). The functions that take a zone check this and raise
``ValueError`` for an offset that is not a multiple of 15 min (historic
local mean times).

A *local day* starts at the instant after which the wall clock shows that
date or later (local midnight; where midnight is skipped by a DST change,
the first instant after the change). Its quarter-hours are counted in real
elapsed time from there, so a local day has ``(start of next day − start of
day) / 900`` quarters: 96 normally, 92 on the spring-forward day and 100 on
the fall-back day in Europe/Amsterdam (2026-03-29 and 2026-10-25), where the
quarter index then runs 0…91 or 0…99 without a gap or repeat.

Wall-clock seconds of day (for limit windows) are ``(ts + offset) mod 86400``,
as in ``tools/score.py``: on the fall-back day the hour 02:00–03:00 occurs
twice and both times fall in a window that covers it; on the spring-forward
day 02:00–03:00 does not occur.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

__all__ = ["local_seconds_of_day", "quarter_index_of_day", "quarter_start", "quarters_in_local_day"]

QUARTER_S = 900
DAY_S = 86400


def _check_finite(ts_utc: float) -> None:
    if not math.isfinite(ts_utc):
        raise ValueError(f"timestamp must be finite, got {ts_utc}")


def _offset_s(ts_utc: float, tz: ZoneInfo) -> int:
    """UTC offset of ``tz`` at ``ts_utc`` in whole seconds; must be a multiple of 15 min."""
    offset = datetime.fromtimestamp(ts_utc, tz).utcoffset()
    if offset is None:  # pragma: no cover - a ZoneInfo always has an offset
        raise ValueError(f"{tz} has no UTC offset")
    seconds = offset.days * DAY_S + offset.seconds
    if seconds % QUARTER_S:
        raise ValueError(f"{tz}: UTC offset {offset} at {ts_utc} is not a multiple of 15 min")
    return seconds


def quarter_start(ts_utc: float) -> float:
    """Start (UTC epoch s) of the quarter-hour containing ``ts_utc``.

    ``floor(ts / 900) · 900``, which is also local-time aligned because every
    real UTC offset is a multiple of 15 min (see the module docstring).
    Computed as ``ts − ts mod 900`` so that a ``ts`` just below a boundary is
    not rounded up into the next quarter by the division.
    """
    _check_finite(ts_utc)
    start = ts_utc - ts_utc % QUARTER_S
    return float(start)


def _day_start(day: date, tz: ZoneInfo) -> int:
    """First instant (UTC epoch s) of the local ``day``: see the module docstring.

    Local midnight read with the later offset (``fold=1``) when midnight occurs
    twice, so the repeated hour belongs to the day before, as on the wall clock;
    when midnight is skipped the earlier offset (``fold=0``) lands on the
    transition itself. If a gap starts before midnight the result is walked
    back to the transition, one quarter at a time.
    """
    midnight = datetime.combine(day, time())
    later = int(midnight.replace(tzinfo=tz, fold=1).timestamp())
    if datetime.fromtimestamp(later, tz).replace(tzinfo=None) == midnight:
        start = later
    else:  # midnight does not exist on this day
        start = int(midnight.replace(tzinfo=tz, fold=0).timestamp())
        for _ in range(4 * 48):  # a gap never exceeds two days
            if datetime.fromtimestamp(start - QUARTER_S, tz).replace(tzinfo=None) < midnight:
                break
            start -= QUARTER_S
    _offset_s(start, tz)
    if start % QUARTER_S:  # pragma: no cover - follows from the offset check
        raise ValueError(f"{tz}: local day {day} does not start on a quarter-hour")
    return start


def quarter_index_of_day(ts_utc: float, tz: ZoneInfo) -> int:
    """0-based index of the quarter-hour containing ``ts_utc`` within its local day.

    Counts real elapsed quarters from the start of the local day, so it runs
    0…95 normally, 0…91 on a spring-forward day and 0…99 on a fall-back day
    (Europe/Amsterdam), continuously through the change.
    """
    start = quarter_start(ts_utc)
    _offset_s(start, tz)
    # The date is read at the quarter's start: datetime rounds to microseconds, so a
    # ts a hair before midnight could otherwise be dated the next day.
    day = datetime.fromtimestamp(start, tz).date()
    return int((start - _day_start(day, tz)) // QUARTER_S)


def quarters_in_local_day(day: date, tz: ZoneInfo) -> int:
    """Number of quarter-hours in the local ``day``: 96, or 92/100 on DST change days."""
    return (_day_start(day + timedelta(days=1), tz) - _day_start(day, tz)) // QUARTER_S


def local_seconds_of_day(ts_utc: float, tz: ZoneInfo) -> float:
    """Wall-clock seconds since local midnight, in [0, 86400): ``(ts + offset) mod 86400``.

    This is what the clock on the wall shows (for limit windows such as
    16:00–20:00), not the elapsed time since midnight.
    """
    # Offset read at the quarter's start (as tools/score.py does): offsets change only on
    # quarter boundaries, and datetime's rounding to microseconds cannot cross one then.
    offset = _offset_s(quarter_start(ts_utc), tz)
    return float((ts_utc + offset) % DAY_S)
