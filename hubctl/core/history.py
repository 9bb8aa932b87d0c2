"""What the controller knows of its park: quarter-hour loads per company, local day and day type.

Pure data and pure functions (no I/O, no clock, no logging); the gateway persists a
`History` in its state directory (`hubctl.data.history_store`) and `hubctl history import`
fills it from a metering company's data (`hubctl.data.history_import`), and `hubctl sim` hands
a scenario's `history.csv` to the controller through that same import.

Days and quarters
    A day is a *local* date (the site's time zone); its 96 slots are the local
    quarter-hours 00:00-00:15 ... 23:45-24:00 by the wall clock. Every real UTC
    offset is a whole number of quarter-hours, so a UTC quarter (`ts // 900`) maps
    to exactly one local slot (`LocalQuarters`). On the spring DST day four slots
    stay empty; on the autumn day the repeated hour's two readings of a slot are
    averaged. Loads follow the wall clock (people start work at 07:00 local), so
    this is the index a profile needs.

Day types (`Calendar`)
    working day (Monday to Friday), Saturday, Sunday, and public holiday: the
    country's holidays from the maintained `holidays` package (default NL: New
    Year, Good Friday, Easter, King's Day, Liberation Day in lustrum years,
    Ascension, Whitsun, Christmas) plus the park's own closed days from the
    configuration. A day keeps the type it had when it was measured.

What is kept per day (`DayRecord`)
    per slot and company the mean load (kW; `grid + pv + battery`, what the
    company would draw with no PV and no battery) and the mean PV output (kW),
    and per slot the highest park load the controller read within it (only
    from its own readings: imported quarter-hour data has no peaks). NaN where
    nothing was measured. At most `max_days` days are kept (the oldest go
    first): a year and a bit, so that last year's holidays are still there.

Profiles (`TypeProfile`, one per day type)
    For every slot: the recency-weighted mean and the 10 % and 90 % quantiles of
    the park's load over the days of that type, and the same per company. A
    day's weight halves every `half_life_days`; an exponential weight keeps the
    relative weights of two days the same whatever today is, so a profile only
    changes where a new quarter-hour enters it (it is updated slot by slot as
    quarters complete, never recomputed in the control loop). The day in
    progress counts for the slots it has: a morning seen today is tomorrow's
    morning forecast.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

import holidays
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from zoneinfo import ZoneInfo

FloatArray = npt.NDArray[np.float64]

QUARTER_S = 900
SLOTS = 96
QUANTILE_LOW = 0.1
QUANTILE_HIGH = 0.9
DEFAULT_MAX_DAYS = 400
DEFAULT_HALF_LIFE_DAYS = 21.0


class DayType(StrEnum):
    WORKING = "working"
    SATURDAY = "saturday"
    SUNDAY = "sunday"
    HOLIDAY = "holiday"


class Calendar:
    """Day types of local dates: weekdays, the country's public holidays and the park's closed days."""

    def __init__(
        self,
        country: str | None = "NL",
        subdiv: str | None = None,
        closed: Iterable[dt.date] = (),
    ) -> None:
        self.country = country
        self._holidays = holidays.country_holidays(country, subdiv=subdiv) if country else None
        self._closed = frozenset(closed)
        self._cache: dict[dt.date, DayType] = {}

    def day_type(self, date: dt.date) -> DayType:
        hit = self._cache.get(date)
        if hit is None:
            if date in self._closed or (self._holidays is not None and date in self._holidays):
                hit = DayType.HOLIDAY
            elif date.weekday() == 5:
                hit = DayType.SATURDAY
            elif date.weekday() == 6:
                hit = DayType.SUNDAY
            else:
                hit = DayType.WORKING
            self._cache[date] = hit
        return hit

    def holiday_name(self, date: dt.date) -> str | None:
        if date in self._closed:
            return "closed (site config)"
        if self._holidays is not None:
            name = self._holidays.get(date)
            return None if name is None else str(name)
        return None


class LocalQuarters:
    """UTC quarter number (`ts // 900`) -> (local date, slot 0..95), memoised."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._cache: dict[int, tuple[dt.date, int]] = {}

    def of(self, quarter: int) -> tuple[dt.date, int]:
        hit = self._cache.get(quarter)
        if hit is None:
            local = dt.datetime.fromtimestamp(quarter * QUARTER_S, self.tz)
            hit = (local.date(), (local.hour * 60 + local.minute) // 15)
            if len(self._cache) > 8 * SLOTS:
                self._cache.clear()
            self._cache[quarter] = hit
        return hit

    def start_utc(self, date: dt.date, slot: int) -> float:
        """UTC start of a local slot (on the autumn DST day: its first occurrence)."""
        h, q = divmod(slot, 4)
        local = dt.datetime(date.year, date.month, date.day, h, q * 15, tzinfo=self.tz)
        return local.timestamp()


def frozen(a: FloatArray) -> FloatArray:
    """`a`, made read-only: a DayRecord's arrays are shared between histories."""
    a.flags.writeable = False
    return a


@dataclass(frozen=True, slots=True)
class DayRecord:
    """One local day: per slot and company the mean load and PV output, per slot the park's peak load."""

    date: dt.date
    day_type: DayType
    load_kw: FloatArray  # (96, companies), NaN: not measured
    pv_kw: FloatArray  # (96, companies), NaN: not measured
    peak_kw: FloatArray  # (96,) highest park load reading within the slot, NaN: unknown

    @classmethod
    def empty(cls, date: dt.date, day_type: DayType, n: int) -> DayRecord:
        return cls(
            date,
            day_type,
            frozen(np.full((SLOTS, n), np.nan)),
            frozen(np.full((SLOTS, n), np.nan)),
            frozen(np.full(SLOTS, np.nan)),
        )

    def with_slot(
        self, slot: int, load_kw: Sequence[float], pv_kw: Sequence[float], peak_kw: float | None
    ) -> DayRecord:
        """The record with one slot set (a slot already set, the autumn's repeated hour, is averaged)."""
        load = self.load_kw.copy()
        pv = self.pv_kw.copy()
        peak = self.peak_kw.copy()
        new_load = np.asarray(load_kw, dtype=np.float64)
        new_pv = np.asarray(pv_kw, dtype=np.float64)
        old = load[slot]
        load[slot] = np.where(np.isnan(old), new_load, 0.5 * (old + new_load))
        old_pv = pv[slot]
        pv[slot] = np.where(np.isnan(old_pv), new_pv, 0.5 * (old_pv + new_pv))
        if peak_kw is not None:
            peak[slot] = peak_kw if math.isnan(peak[slot]) else max(peak[slot], peak_kw)
        return DayRecord(self.date, self.day_type, frozen(load), frozen(pv), frozen(peak))

    def park_load_kw(self) -> FloatArray:
        """(96,) park load per slot; NaN where any company was not measured."""
        park: FloatArray = self.load_kw.sum(axis=1)
        return park

    @property
    def slots_measured(self) -> int:
        return int(np.sum(~np.isnan(self.park_load_kw())))


@dataclass(frozen=True, slots=True)
class TypeProfile:
    """Recency-weighted statistics of one day type, per slot (see the module docstring)."""

    samples: FloatArray  # (96,) days with a park value in the slot
    park_mid_kw: FloatArray  # (96,) weighted mean
    park_low_kw: FloatArray  # (96,) weighted 10 % quantile
    park_high_kw: FloatArray  # (96,) weighted 90 % quantile
    peak_ratio: FloatArray  # (96,) weighted mean of peak / mean (own readings), NaN: none
    company_mid_kw: FloatArray  # (96, companies)
    company_low_kw: FloatArray
    company_high_kw: FloatArray

    @classmethod
    def empty(cls, n: int) -> TypeProfile:
        nan = np.full(SLOTS, np.nan)
        nan2 = np.full((SLOTS, n), np.nan)
        return cls(
            np.zeros(SLOTS),
            nan.copy(),
            nan.copy(),
            nan.copy(),
            nan.copy(),
            nan2.copy(),
            nan2.copy(),
            nan2.copy(),
        )

    @property
    def known(self) -> bool:
        return bool(self.samples.any())


def weighted_quantiles(x: FloatArray, w: FloatArray, qs: Sequence[float]) -> FloatArray:
    """Weighted quantiles of every column of `x` (days x columns, NaN = missing), weights per day.

    Midpoint rule: the i-th smallest value sits at `(cumulative weight - w_i / 2) / total`,
    with linear interpolation between; below the first position the smallest value, above the
    last the largest. A column without values gives NaN.
    """
    if x.ndim == 1:
        col: FloatArray = weighted_quantiles(x[:, None], w, qs)[:, 0]
        return col
    valid = ~np.isnan(x)
    order = np.argsort(np.where(valid, x, np.inf), axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    ws = np.where(np.take_along_axis(valid, order, axis=0), w[order], 0.0)
    cw = np.cumsum(ws, axis=0)
    total = cw[-1]
    n_valid = valid.sum(axis=0)
    out = np.full((len(qs), x.shape[1]), np.nan)
    ok = (n_valid > 0) & (total > 0)
    if not ok.any():
        return out
    safe_total = np.where(total > 0, total, 1.0)
    pos = (cw - 0.5 * ws) / safe_total
    cols = np.arange(x.shape[1])
    last = np.maximum(n_valid - 1, 0)
    # positions past the last valid value (the NaNs sorted to the end) must not be chosen
    rows = np.arange(x.shape[0])[:, None]
    pos = np.where(rows <= last[None, :], pos, np.inf)
    for k, q in enumerate(qs):
        above = np.sum(pos < q, axis=0)  # values strictly below the quantile position
        hi_i = np.minimum(above, last)
        lo_i = np.maximum(above - 1, 0)
        x_lo, x_hi = xs[lo_i, cols], xs[hi_i, cols]
        p_lo, p_hi = pos[lo_i, cols], pos[hi_i, cols]
        span = np.where(np.isfinite(p_hi - p_lo) & (p_hi > p_lo), p_hi - p_lo, 1.0)
        frac = np.clip((q - p_lo) / span, 0.0, 1.0)
        val = np.where(
            above == 0, xs[0, cols], np.where(above > last, xs[last, cols], x_lo + frac * (x_hi - x_lo))
        )
        out[k] = np.where(ok, val, np.nan)
    return out


def _weights(dates: Sequence[dt.date], half_life_days: float) -> FloatArray:
    if not dates:
        return np.zeros(0)
    newest = max(d.toordinal() for d in dates)
    age = np.array([newest - d.toordinal() for d in dates], dtype=np.float64)
    return np.power(0.5, age / half_life_days)


def _slot_stats(
    records: Sequence[DayRecord], slots: slice | int, half_life_days: float
) -> tuple[FloatArray, ...]:
    """Statistics over `records` for the given slots: park (samples, mid, low, high, peak ratio) and
    per company (mid, low, high); arrays have a leading slot axis."""
    w = _weights([r.date for r in records], half_life_days)
    load = np.stack([np.atleast_2d(r.load_kw[slots]) for r in records])  # (d, s, n)
    d, s, n = load.shape
    park = load.sum(axis=2)  # (d, s): NaN where a company is missing
    valid = ~np.isnan(park)
    samples = valid.sum(axis=0)
    wv = np.where(valid, w[:, None], 0.0)
    wsum = wv.sum(axis=0)
    mid = np.where(wsum > 0, np.nansum(park * wv, axis=0) / np.where(wsum > 0, wsum, 1.0), np.nan)
    lo, hi = weighted_quantiles(park, w, (QUANTILE_LOW, QUANTILE_HIGH))
    peak = np.stack([np.atleast_1d(r.peak_kw[slots]) for r in records])  # (d, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(valid & ~np.isnan(peak) & (park > 0), peak / park, np.nan)
    rv = ~np.isnan(ratio)
    rw = np.where(rv, w[:, None], 0.0)
    rsum = rw.sum(axis=0)
    peak_ratio = np.where(
        rsum > 0, np.nansum(np.nan_to_num(ratio) * rw, axis=0) / np.where(rsum > 0, rsum, 1.0), np.nan
    )
    flat = load.reshape(d, s * n)
    cvalid = ~np.isnan(flat)
    cw = np.where(cvalid, w[:, None], 0.0)
    csum = cw.sum(axis=0)
    cmid = np.where(
        csum > 0, np.nansum(np.nan_to_num(flat) * cw, axis=0) / np.where(csum > 0, csum, 1.0), np.nan
    )
    clo, chi = weighted_quantiles(flat, w, (QUANTILE_LOW, QUANTILE_HIGH))
    return (
        samples.astype(np.float64),
        mid,
        lo,
        hi,
        peak_ratio,
        cmid.reshape(s, n),
        clo.reshape(s, n),
        chi.reshape(s, n),
    )


def build_profile(records: Sequence[DayRecord], n: int, half_life_days: float) -> TypeProfile:
    """The profile of one day type from all its records (at start and after an import)."""
    if not records:
        return TypeProfile.empty(n)
    samples, mid, lo, hi, ratio, cmid, clo, chi = _slot_stats(records, slice(0, SLOTS), half_life_days)
    return TypeProfile(samples, mid, lo, hi, ratio, cmid, clo, chi)


def update_profile(
    profile: TypeProfile, records: Sequence[DayRecord], slot: int, half_life_days: float
) -> TypeProfile:
    """`profile` with one slot recomputed from `records` (the day type's records)."""
    if not records:
        return profile
    stats = _slot_stats(records, slice(slot, slot + 1), half_life_days)
    fields = [
        profile.samples,
        profile.park_mid_kw,
        profile.park_low_kw,
        profile.park_high_kw,
        profile.peak_ratio,
        profile.company_mid_kw,
        profile.company_low_kw,
        profile.company_high_kw,
    ]
    out = []
    for arr, new in zip(fields, stats, strict=True):
        a = arr.copy()
        a[slot] = new[0]
        out.append(a)
    return TypeProfile(*out)


@dataclass(frozen=True, slots=True)
class QuarterAccumulator:
    """The quarter-hour being measured: sums of load and PV per company, the park's peak load."""

    quarter: int = -1  # UTC quarter number, -1 before the first reading
    load_sums: tuple[float, ...] = ()
    pv_sums: tuple[float, ...] = ()
    seconds: float = 0.0
    peak_kw: float = 0.0

    def mean_load(self) -> tuple[float, ...] | None:
        if self.seconds <= 0:
            return None
        return tuple(s / self.seconds for s in self.load_sums)


# a quarter counts only with readings over at least this share of it (a restart, a meter outage)
_MIN_COVER = 0.5


@dataclass(frozen=True)
class History:
    """The controller's memory of its park (see the module docstring). Immutable: every change
    returns a new History sharing what did not change."""

    companies: tuple[str, ...]
    days: Mapping[dt.date, DayRecord]
    profiles: Mapping[DayType, TypeProfile]
    quarters: LocalQuarters = field(compare=False)
    calendar: Calendar = field(compare=False)
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    max_days: int = DEFAULT_MAX_DAYS
    current: QuarterAccumulator = QuarterAccumulator()
    revision: int = 0  # counts completed quarters and imports: the shell persists on a change

    @classmethod
    def empty(
        cls,
        companies: Sequence[str],
        tz: ZoneInfo,
        calendar: Calendar,
        *,
        half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
        max_days: int = DEFAULT_MAX_DAYS,
    ) -> History:
        n = len(companies)
        return cls(
            tuple(companies),
            {},
            {t: TypeProfile.empty(n) for t in DayType},
            LocalQuarters(tz),
            calendar,
            half_life_days,
            max_days,
        )

    # -- what is known
    def records_of(self, day_type: DayType) -> list[DayRecord]:
        return [r for d, r in sorted(self.days.items()) if r.day_type is day_type]

    def days_by_type(self) -> dict[DayType, int]:
        out = dict.fromkeys(DayType, 0)
        for r in self.days.values():
            if r.slots_measured >= SLOTS // 2:
                out[r.day_type] += 1
        return out

    def day_type(self, date: dt.date) -> DayType:
        rec = self.days.get(date)
        return rec.day_type if rec is not None else self.calendar.day_type(date)

    # -- learning from the controller's own readings
    def observe(
        self, ts_utc: float, load_kw: tuple[float, ...], pv_kw: tuple[float, ...], dt_s: float
    ) -> History:
        """Add one cycle's readings (held for `dt_s` seconds). Completes a quarter-hour when the
        UTC quarter changes; a quarter measured for less than half of it is not kept."""
        quarter = int(ts_utc // QUARTER_S)
        cur = self.current
        park = sum(load_kw)
        if quarter == cur.quarter:
            acc = QuarterAccumulator(
                quarter,
                tuple(s + x * dt_s for s, x in zip(cur.load_sums, load_kw, strict=True)),
                tuple(s + x * dt_s for s, x in zip(cur.pv_sums, pv_kw, strict=True)),
                cur.seconds + dt_s,
                max(cur.peak_kw, park),
            )
            return self.with_current(acc)
        done = self._complete(cur) if cur.quarter >= 0 else self
        acc = QuarterAccumulator(
            quarter, tuple(x * dt_s for x in load_kw), tuple(x * dt_s for x in pv_kw), dt_s, park
        )
        return done.with_current(acc)

    def with_current(self, acc: QuarterAccumulator) -> History:
        # the per-cycle path: the positional constructor, not dataclasses.replace (several times faster)
        return History(
            self.companies,
            self.days,
            self.profiles,
            self.quarters,
            self.calendar,
            self.half_life_days,
            self.max_days,
            acc,
            self.revision,
        )

    def complete_current(self) -> History:
        """The history with the quarter in progress kept (if measured for at least half of it): for a
        stop, so that a restart loses no quarter the gateway saw most of."""
        if self.current.quarter < 0:
            return self
        return replace(self._complete(self.current), current=QuarterAccumulator())

    def _complete(self, acc: QuarterAccumulator) -> History:
        if acc.seconds < _MIN_COVER * QUARTER_S:
            return self
        date, slot = self.quarters.of(acc.quarter)
        load = [s / acc.seconds for s in acc.load_sums]
        pv = [s / acc.seconds for s in acc.pv_sums]
        return self.with_slots([(date, slot, load, pv, acc.peak_kw)])

    def with_slots(
        self,
        slots: Iterable[tuple[dt.date, int, Sequence[float], Sequence[float], float | None]],
    ) -> History:
        """The history with these (date, slot, load per company, PV per company, peak) set; the
        profiles of the slots that changed are updated."""
        days = dict(self.days)
        touched: set[tuple[DayType, int]] = set()
        n = len(self.companies)
        for date, slot, load, pv, peak in slots:
            rec = days.get(date)
            if rec is None:
                rec = DayRecord.empty(date, self.calendar.day_type(date), n)
            days[date] = rec.with_slot(slot, load, pv, peak)
            touched.add((rec.day_type, slot))
        days, dropped = _bounded(days, self.max_days)
        profiles = dict(self.profiles)
        if dropped:
            kinds = {r.day_type for r in dropped} | {t for t, _ in touched}
            for t in kinds:
                profiles[t] = build_profile(
                    [r for _, r in sorted(days.items()) if r.day_type is t], n, self.half_life_days
                )
        else:
            by_type: dict[DayType, list[DayRecord]] = {}
            for t, slot in sorted(touched):
                recs = by_type.get(t)
                if recs is None:
                    recs = by_type[t] = [r for _, r in sorted(days.items()) if r.day_type is t]
                profiles[t] = update_profile(profiles[t], recs, slot, self.half_life_days)
        return replace(self, days=days, profiles=profiles, revision=self.revision + 1)

    def with_records(self, records: Iterable[DayRecord]) -> History:
        """The history with whole day records added or replaced (an import, a reload), profiles rebuilt."""
        days = dict(self.days)
        for r in records:
            days[r.date] = r
        days, _ = _bounded(days, self.max_days)
        n = len(self.companies)
        profiles = {
            t: build_profile([r for _, r in sorted(days.items()) if r.day_type is t], n, self.half_life_days)
            for t in DayType
        }
        return replace(self, days=days, profiles=profiles, revision=self.revision + 1)

    def today_so_far(self, date: dt.date) -> DayRecord | None:
        return self.days.get(date)


def _bounded(
    days: dict[dt.date, DayRecord], max_days: int
) -> tuple[dict[dt.date, DayRecord], list[DayRecord]]:
    if len(days) <= max_days:
        return days, []
    keep = sorted(days)[-max_days:]
    dropped = [r for d, r in days.items() if d < keep[0]]
    return {d: days[d] for d in keep}, dropped
