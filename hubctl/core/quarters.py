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

**One quarter-hour verdict** (SCENARIOS.md, "Metrics", ``cap_quarters_over``, and
"Physics": "over" a cap means beyond it by more than 1 W): a quarter is over a cap when
its *mean power* is beyond the quarter's *mean limit* by more than ``EPS_OVER_KW``
(1 W). Both means are taken over the same seconds, the ones measured (all of them in
``hubctl sim``); a cap that was not in force for some of those seconds has no mean (the
contract counts "no cap" as an infinite limit, as ``tools/score.py`` does), so the
quarter is not judged on it. The rule lives here once: :func:`mean_cap`,
:func:`over_direction` (and :func:`quarter_over_cap`), applied to the integrals one
accumulator keeps (:class:`ParkQuarter`). Its users: the gateway's journal and
``--trace`` (:class:`QuarterMeter`, ``QuarterRecord``, the ``OVER THE CAP`` line in
``hubctl.service.jobs``), the ledger's ``quarters`` rows (``hubctl.data.ledger``),
``hubctl report`` (``hubctl.data.report``, ``report_load``) and the sim's metrics
(``hubctl.core.metrics``). The record of a quarter names the mean cap it was judged
against and every source in force during it (:func:`sources_in_force`, in the order
they came into force, joined by ``" + "``).

For one quarter in which the park imports 450 kW throughout and the import
cap drops from 500 to 400 kW at minute 10 (a window starting mid-quarter)::

    mean 450.0 kW vs mean cap 466.7 kW (contract + window 16:10-20:00) -> inside
    mean 470.0 kW vs mean cap 466.7 kW (contract + window 16:10-20:00) -> over

**Curtailed PV** of a quarter is ``Σ curtailed_kw · dt`` over its measured seconds. A step
says what it curtailed (``ParkStep.curtailed_kw``; on the gateway the controller's estimate,
``hubctl.core.park.curtailed_pv_kw``: available minus measured PV while a limit holds an
inverter, 0 while none does) or gives the available PV itself (``pv_available_kw``, known in
``hubctl sim``: ``max(available − pv, 0)``). The quarter's figure is an estimate
(``curtailed_basis`` ``"estimated"``) when any of its steps was, else ``"measured"``; None
when no step said anything about it (docs/reports.md).

The control core's quarter budget (``hubctl.core.control.quarter_caps``) steers the
same quantity: it integrates ``grid − cap in force`` over the quarter, which at the
quarter's end is ``(mean power − mean cap) · 900 s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from hubctl.core.limits import LimitsInForce
    from hubctl.core.types import Decision

__all__ = [
    "CURTAILED_ESTIMATED",
    "CURTAILED_MEASURED",
    "EPS_OVER_KW",
    "ParkQuarter",
    "ParkStep",
    "QuarterMeter",
    "QuarterRecord",
    "QuarterRow",
    "curtailed_basis",
    "local_label",
    "local_seconds_of_day",
    "mean_cap",
    "over_direction",
    "quarter_index_of_day",
    "quarter_over_cap",
    "quarter_start",
    "quarters_in_local_day",
    "sources_in_force",
    "step_pieces",
]

QUARTER_S = 900
DAY_S = 86400
EPS_OVER_KW = 1e-3  # "over" a cap means beyond it by more than 1 W (SCENARIOS.md, "Physics")
CURTAILED_MEASURED = "measured"  # the available PV was known (the simulator's own)
CURTAILED_ESTIMATED = "estimated"  # the controller's estimate of the available PV (the gateway)


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


def local_label(ts_utc: float, tz: tzinfo) -> str:
    """``ts_utc`` on the site's wall clock, ``2026-06-22 16:00 CEST`` (log lines; never the host's zone)."""
    return datetime.fromtimestamp(ts_utc, tz).strftime("%Y-%m-%d %H:%M %Z")


# --- The one quarter-hour verdict (module docstring) --------------------------------------------------------


def mean_cap(cap_kws: float, cap_s: float, covered_s: float) -> float | None:
    """The quarter's mean cap from ``∫ cap dt`` over the ``cap_s`` seconds it was in force.

    ``None`` (no cap to judge against: the contract's infinite limit) unless the cap was in
    force for every one of the ``covered_s`` measured seconds, or nothing was measured.
    """
    if covered_s <= 0 or cap_s < covered_s:
        return None
    return cap_kws / cap_s


def over_direction(
    mean_kw: float | None, import_cap_kw: float | None, export_cap_kw: float | None
) -> str | None:
    """``"import"`` or ``"export"``: the quarter's mean is beyond that mean cap by over 1 W; else None."""
    if mean_kw is None or not math.isfinite(mean_kw):
        return None
    if import_cap_kw is not None and mean_kw - import_cap_kw > EPS_OVER_KW:
        return "import"
    if export_cap_kw is not None and -export_cap_kw - mean_kw > EPS_OVER_KW:
        return "export"
    return None


def quarter_over_cap(
    grid_kw: float | None, import_limit_kw: float | None, export_limit_kw: float | None
) -> bool:
    """The verdict as a flag: over either mean cap (:func:`over_direction`)."""
    return over_direction(grid_kw, import_limit_kw, export_limit_kw) is not None


def sources_in_force(seconds_by_source: dict[str, float]) -> str:
    """Every source in force during the quarter, in the order they came into force (``a + b``)."""
    return " + ".join(seconds_by_source) if seconds_by_source else "none"


def curtailed_basis(curtailed_kwh: float | None, *, estimated: bool) -> str | None:
    """How a curtailed figure was got: ``"estimated"``, ``"measured"``, or None without a figure."""
    if curtailed_kwh is None:
        return None
    return CURTAILED_ESTIMATED if estimated else CURTAILED_MEASURED


def step_pieces(
    start: float, end: float, last_end: float | None, grid_s: float = QUARTER_S
) -> list[tuple[float, float]]:
    """The step ``[start, end)`` as ``(start, seconds)`` pieces cut at multiples of ``grid_s``.

    What ended at or before ``last_end`` was taken already: a replay gives no piece, an
    overlap is trimmed. The ledger and the quarter meter take their steps through this.
    """
    if last_end is not None and start < last_end:
        start = last_end
    pieces = []
    while start < end:
        boundary = (math.floor(start / grid_s) + 1) * grid_s
        piece_end = min(end, boundary)
        pieces.append((start, piece_end - start))
        start = piece_end
    return pieces


@dataclass(frozen=True, slots=True)
class ParkStep:
    """What the park did during a step besides the companies' grid power (``None``: not measured).

    ``curtailed_kw``: the PV the step curtailed, when the caller knows it (the gateway: the
    controller's estimate, ``curtailed_estimated``); else it follows from ``pv_available_kw``
    and ``pv_kw`` when both are known (measured). See the module docstring.
    """

    load_kw: float | None = None
    pv_kw: float | None = None
    pv_available_kw: float | None = None
    curtailed_kw: float | None = None
    curtailed_estimated: bool = False
    import_limit_kw: float | None = None
    import_source: str = "none"
    export_limit_kw: float | None = None
    export_source: str = "none"
    # the step is a gap in the readings filled from the meters' energy counters (its mean power),
    # not measured cycle by cycle: counted as covered, and as filled (`QuarterRow.filled_s`)
    filled: bool = False

    @classmethod
    def under(cls, lim: LimitsInForce, **fields: Any) -> ParkStep:
        """A step under the park limits in force `lim`, with the other `fields` given."""
        return cls(
            import_limit_kw=lim.import_kw,
            import_source=lim.import_source,
            export_limit_kw=lim.export_kw,
            export_source=lim.export_source,
            **fields,
        )


@dataclass(frozen=True, slots=True)
class QuarterRow:
    start_utc: float
    import_kwh: float
    export_kwh: float
    grid_kw: float | None  # mean over the covered seconds
    import_limit_kw: float | None  # mean over the covered seconds; None: not in force all of them
    export_limit_kw: float | None
    import_source: str  # every source in force in the quarter (sources_in_force)
    export_source: str
    pv_kwh: float | None
    load_kwh: float | None
    curtailed_kwh: float | None
    covered_s: float
    over_cap: bool
    curtailed_basis: str | None = None  # CURTAILED_MEASURED or CURTAILED_ESTIMATED; None: no figure
    filled_s: float = 0.0  # of covered_s, filled from energy counters over a gap in the readings


@dataclass(slots=True)
class ParkQuarter:
    """The integrals of one park quarter-hour, the one accumulator of the verdict (plain data, saved as JSON
    by the ledger)."""

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
    curtailed_estimated: bool = False  # some of curtailed_kwh is the controller's estimate
    filled_s: float = 0.0  # of covered_s, from energy counters (`ParkStep.filled`)

    def add(self, park_grid_kw: float, dt_s: float, park: ParkStep | None) -> None:
        """A measured piece of the quarter (``park``: the caps in force; None: unknown, so no mean cap)."""
        h = dt_s / 3600
        self.covered_s += dt_s
        self.import_kwh += max(park_grid_kw, 0.0) * h
        self.export_kwh += max(-park_grid_kw, 0.0) * h
        self.grid_kws += park_grid_kw * dt_s
        if park is None:
            return
        if park.filled:
            self.filled_s += dt_s
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
        curtailed = park.curtailed_kw
        if curtailed is None and park.pv_available_kw is not None and park.pv_kw is not None:
            curtailed = max(park.pv_available_kw - park.pv_kw, 0.0)
        if curtailed is not None:
            self.curtailed_kwh = (self.curtailed_kwh or 0.0) + max(curtailed, 0.0) * h
            self.curtailed_estimated = self.curtailed_estimated or (
                park.curtailed_kw is not None and park.curtailed_estimated
            )

    def row(self) -> QuarterRow:
        grid = self.grid_kws / self.covered_s if self.covered_s > 0 else None
        imp = mean_cap(self.imp_lim_kws, self.imp_lim_s, self.covered_s)
        exp = mean_cap(self.exp_lim_kws, self.exp_lim_s, self.covered_s)
        return QuarterRow(
            start_utc=self.start,
            import_kwh=self.import_kwh,
            export_kwh=self.export_kwh,
            grid_kw=grid,
            import_limit_kw=imp,
            export_limit_kw=exp,
            import_source=sources_in_force(self.imp_src_s),
            export_source=sources_in_force(self.exp_src_s),
            pv_kwh=self.pv_kwh,
            load_kwh=self.load_kwh,
            curtailed_kwh=self.curtailed_kwh,
            covered_s=self.covered_s,
            over_cap=quarter_over_cap(grid, imp, exp),
            curtailed_basis=curtailed_basis(self.curtailed_kwh, estimated=self.curtailed_estimated),
            filled_s=self.filled_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParkQuarter:
        return cls(**data)


# --- The gateway's quarter meter (the journal's and the trace's view of the same verdict) -------------------


@dataclass(frozen=True, slots=True)
class QuarterRecord:
    """One closed quarter-hour of the park connection: the evidence a grid operator asks for."""

    start_utc: float
    mean_kw: float  # + import; nan: no reading in the quarter
    import_cap_kw: float | None  # the mean cap the quarter was judged against; None: none in force throughout
    export_cap_kw: float | None
    import_source: str  # every source in force during the quarter, "contract + window 16:10-20:00"
    export_source: str
    coverage: float  # share of the quarter with a park reading
    over: bool
    filled_s: float = 0.0  # of the covered seconds, filled from energy counters over a gap


class QuarterMeter:
    """The park's quarter-hours for the journal and ``--trace``: the ledger's accumulator and verdict
    (:class:`ParkQuarter`), steps taken as the ledger takes them (:func:`step_pieces`)."""

    def __init__(self) -> None:
        self._open: dict[int, ParkQuarter] = {}
        self._last_end: float | None = None
        self._closed_before = -1  # quarters below this index are closed: a late piece is not taken
        self.closed: list[QuarterRecord] = []  # since the day's summary (the daily job empties it)
        self.last_closed: QuarterRecord | None = None
        self.over_total = 0  # quarters closed over a cap since start

    def open_row(self) -> QuarterRow | None:
        """The newest quarter not closed yet, as its row so far (the park page's quarter in progress)."""
        if not self._open:
            return None
        return self._open[max(self._open)].row()

    def add(
        self, ts_utc: float, park_kw: float | None, dt_s: float, decision: Decision, *, filled: bool = False
    ) -> None:
        """The cycle at ``ts_utc``: the step ``[ts, ts + dt)`` with the caps the decision had in force
        (``filled``: a gap filled from energy counters, `ParkStep.filled`)."""
        index = int(ts_utc // QUARTER_S)
        if index not in self._open and index >= self._closed_before:
            self._open[index] = ParkQuarter(index * float(QUARTER_S))  # closes even without a reading
        if park_kw is None or not math.isfinite(park_kw):
            return
        step = ParkStep.under(decision.park_limits, filled=filled)
        end = ts_utc + dt_s
        for start, dt in step_pieces(ts_utc, end, self._last_end):
            i = int(start // QUARTER_S)
            if i < self._closed_before:
                continue  # closed: its evidence was given (a gap filled later counts from then on)
            q = self._open.get(i)
            if q is None:
                q = self._open[i] = ParkQuarter(i * float(QUARTER_S))
            q.add(park_kw, dt, step)
        self._last_end = max(self._last_end or end, end)

    def close_before(self, ts_utc: float) -> list[QuarterRecord]:
        """Close every quarter that ended before `ts_utc`."""
        current = int(ts_utc // QUARTER_S)
        self._closed_before = max(self._closed_before, current)
        out = []
        for index in sorted(i for i in self._open if i < current):
            row = self._open.pop(index).row()
            out.append(
                QuarterRecord(
                    row.start_utc,
                    math.nan if row.grid_kw is None else row.grid_kw,
                    row.import_limit_kw,
                    row.export_limit_kw,
                    row.import_source,
                    row.export_source,
                    min(1.0, row.covered_s / QUARTER_S),
                    row.over_cap,
                    row.filled_s,
                )
            )
        self.closed.extend(out)
        if out:
            self.last_closed = out[-1]
            self.over_total += sum(q.over for q in out)
        return out
