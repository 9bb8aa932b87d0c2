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

**The two quarter-hour accumulators, side by side.** Two rules judge a park
quarter-hour against the caps, and they disagree; both are kept as they are
here until one rule is chosen (ARCHITECTURE-REVIEW.md, (d) 3 and "Not part of
the refactor" (a)):

- ``QuarterMeter`` (the gateway's journal and ``--trace``: ``QuarterRecord``,
  the ``OVER THE CAP`` warning): the quarter's mean grid power against the
  *lowest* cap seen in any cycle of the quarter, with that cap's source; over
  as soon as the mean is above it, without tolerance.
- ``LedgerQuarter`` + ``quarter_over_cap`` (the ledger's ``quarters`` rows,
  ``hubctl report``): the mean against the *time-weighted mean* cap over the
  seconds a cap was in force, with the source that held longest; over only
  beyond it by more than 1 W (``EPS_OVER_KW``, SCENARIOS.md), the rule of the
  core's budget integral and of ``hubctl.core.metrics``.

For one quarter in which the park imports 450 kW throughout and the import
cap drops from 500 to 400 kW at minute 10 (a window starting mid-quarter)::

    QuarterMeter:  mean 450.0 kW vs cap 400.0 (window 16:10-20:00) -> over=True
    LedgerQuarter: mean 450.0 kW vs cap 466.7 (contract)           -> over=False
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from hubctl.core.metrics import EPS_OVER_KW

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from hubctl.core.types import Decision

__all__ = [
    "LedgerQuarter",
    "ParkStep",
    "QuarterMeter",
    "QuarterRecord",
    "QuarterRow",
    "local_seconds_of_day",
    "quarter_index_of_day",
    "quarter_over_cap",
    "quarter_start",
    "quarters_in_local_day",
]

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


# --- The gateway's quarter meter (the journal's verdict: the lowest cap, no tolerance) ---------------------


@dataclass(frozen=True, slots=True)
class QuarterRecord:
    """One closed quarter-hour of the park connection: the evidence a grid operator asks for."""

    start_utc: float
    mean_kw: float  # + import
    import_cap_kw: float | None
    export_cap_kw: float | None
    import_source: str
    export_source: str
    coverage: float  # share of the quarter with a park reading
    over: bool


@dataclass(slots=True)
class _MeterQuarter:
    index: int
    energy_kws: float = 0.0
    seen_s: float = 0.0
    import_cap_kw: float | None = None
    export_cap_kw: float | None = None
    import_source: str = "none"
    export_source: str = "none"


class QuarterMeter:
    """Integrates the park's grid power per quarter-hour (UTC quarters, as the core counts them).

    Judged against the lowest cap seen in the quarter, without tolerance (module docstring).
    """

    def __init__(self) -> None:
        self._open: dict[int, _MeterQuarter] = {}
        self.closed: list[QuarterRecord] = []

    def add(self, ts_utc: float, park_kw: float | None, dt_s: float, decision: Decision) -> None:
        index = int(ts_utc // QUARTER_S)
        q = self._open.get(index)
        if q is None:
            q = self._open[index] = _MeterQuarter(index)
        lim = decision.park_limits
        # the lowest cap seen in the quarter is the one the quarter is judged against
        if lim.import_kw is not None and (q.import_cap_kw is None or lim.import_kw < q.import_cap_kw):
            q.import_cap_kw, q.import_source = lim.import_kw, lim.import_source
        if lim.export_kw is not None and (q.export_cap_kw is None or lim.export_kw < q.export_cap_kw):
            q.export_cap_kw, q.export_source = lim.export_kw, lim.export_source
        if park_kw is not None:
            q.energy_kws += park_kw * dt_s
            q.seen_s += dt_s

    def close_before(self, ts_utc: float) -> list[QuarterRecord]:
        """Close every quarter that ended before `ts_utc`."""
        current = int(ts_utc // QUARTER_S)
        out = []
        for index in sorted(i for i in self._open if i < current):
            q = self._open.pop(index)
            mean = q.energy_kws / q.seen_s if q.seen_s > 0 else math.nan
            over = bool(
                (q.import_cap_kw is not None and mean > q.import_cap_kw)
                or (q.export_cap_kw is not None and -mean > q.export_cap_kw)
            )
            out.append(
                QuarterRecord(
                    index * float(QUARTER_S),
                    mean,
                    q.import_cap_kw,
                    q.export_cap_kw,
                    q.import_source,
                    q.export_source,
                    min(1.0, q.seen_s / QUARTER_S),
                    over,
                )
            )
        self.closed.extend(out)
        return out


# --- The ledger's park quarter (the report's verdict: the time-weighted mean cap, 1 W tolerance) -----------


@dataclass(frozen=True, slots=True)
class ParkStep:
    """What the park did during a step besides the companies' grid power (``None``: not measured)."""

    load_kw: float | None = None
    pv_kw: float | None = None
    pv_available_kw: float | None = None
    import_limit_kw: float | None = None
    import_source: str = "none"
    export_limit_kw: float | None = None
    export_source: str = "none"


@dataclass(frozen=True, slots=True)
class QuarterRow:
    start_utc: float
    import_kwh: float
    export_kwh: float
    grid_kw: float | None  # mean over the covered seconds
    import_limit_kw: float | None  # mean over the seconds a cap was in force; None: no cap
    export_limit_kw: float | None
    import_source: str  # the source that held longest in the quarter
    export_source: str
    pv_kwh: float | None
    load_kwh: float | None
    curtailed_kwh: float | None
    covered_s: float
    over_cap: bool


def quarter_over_cap(
    grid_kw: float | None, import_limit_kw: float | None, export_limit_kw: float | None
) -> bool:
    """A quarter is over a cap when its mean is beyond the mean cap by more than 1 W (SCENARIOS.md)."""
    if grid_kw is None:
        return False
    over_import = import_limit_kw is not None and grid_kw - import_limit_kw > EPS_OVER_KW
    over_export = export_limit_kw is not None and -export_limit_kw - grid_kw > EPS_OVER_KW
    return over_import or over_export


@dataclass(slots=True)
class LedgerQuarter:
    """Accumulators of the ledger's open park quarter-hour (plain data, saved as JSON)."""

    start: float
    covered_s: float = 0.0
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    grid_kws: float = 0.0  # ∫ grid dt in kW·s
    imp_lim_kws: float = 0.0
    imp_lim_s: float = 0.0
    exp_lim_kws: float = 0.0
    exp_lim_s: float = 0.0
    imp_src_s: dict[str, float] = field(default_factory=dict)
    exp_src_s: dict[str, float] = field(default_factory=dict)
    pv_kwh: float | None = None
    load_kwh: float | None = None
    curtailed_kwh: float | None = None

    def add(self, park_grid_kw: float, dt_s: float, park: ParkStep | None) -> None:
        h = dt_s / 3600
        self.covered_s += dt_s
        self.import_kwh += max(park_grid_kw, 0.0) * h
        self.export_kwh += max(-park_grid_kw, 0.0) * h
        self.grid_kws += park_grid_kw * dt_s
        if park is None:
            return
        if park.import_limit_kw is not None:
            self.imp_lim_kws += park.import_limit_kw * dt_s
            self.imp_lim_s += dt_s
        if park.export_limit_kw is not None:
            self.exp_lim_kws += park.export_limit_kw * dt_s
            self.exp_lim_s += dt_s
        self.imp_src_s[park.import_source] = self.imp_src_s.get(park.import_source, 0.0) + dt_s
        self.exp_src_s[park.export_source] = self.exp_src_s.get(park.export_source, 0.0) + dt_s
        if park.pv_kw is not None:
            self.pv_kwh = (self.pv_kwh or 0.0) + park.pv_kw * h
        if park.load_kw is not None:
            self.load_kwh = (self.load_kwh or 0.0) + park.load_kw * h
        if park.pv_available_kw is not None and park.pv_kw is not None:
            self.curtailed_kwh = (self.curtailed_kwh or 0.0) + max(park.pv_available_kw - park.pv_kw, 0.0) * h

    def row(self) -> QuarterRow:
        grid = self.grid_kws / self.covered_s if self.covered_s > 0 else None
        imp = self.imp_lim_kws / self.imp_lim_s if self.imp_lim_s > 0 else None
        exp = self.exp_lim_kws / self.exp_lim_s if self.exp_lim_s > 0 else None
        return QuarterRow(
            start_utc=self.start,
            import_kwh=self.import_kwh,
            export_kwh=self.export_kwh,
            grid_kw=grid,
            import_limit_kw=imp,
            export_limit_kw=exp,
            import_source=max(self.imp_src_s, key=self.imp_src_s.__getitem__) if self.imp_src_s else "none",
            export_source=max(self.exp_src_s, key=self.exp_src_s.__getitem__) if self.exp_src_s else "none",
            pv_kwh=self.pv_kwh,
            load_kwh=self.load_kwh,
            curtailed_kwh=self.curtailed_kwh,
            covered_s=self.covered_s,
            over_cap=quarter_over_cap(grid, imp, exp),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerQuarter:
        return cls(**data)
