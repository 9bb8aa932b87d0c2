"""The controller's own forecasts of load and available PV (pure, causal).

Only what a gateway sees is used: its own past readings (`hubctl.core.history`, and the
last day in 5-minute buckets here), imported metering data, the clock, the
calendar and the sun's position. Nothing is read from the future.

Load (park total over the plan steps, three variants)
    * **expected**: the recency-weighted mean of the step's day type and local
      quarter-hour (`TypeProfile.park_mid_kw`), plus today's deviation.
    * **high** (for the floor: energy the import caps may need): the 90 %
      quantile, the highest of the quarter-hour and its two neighbours (a ramp
      that comes 15 minutes early), plus `uncertainty`, plus today's deviation
      where today runs above its profile.
    * **low** (for the ceiling: room for the solar excess): the 10 % quantile,
      the lowest of the quarter and its neighbours, less `uncertainty`, plus
      today's deviation where today runs below its profile.
    * **deviation of today**: the park's load over the last 30 minutes against
      its profile at those quarters, added to the forecast and fading with the
      lead time (`_DEVIATION_FADE_S`). A working day that runs 10 % high is
      expected to go on so for a while; the tail of the horizon is the profile.
    * **a day type not seen yet** (the first Saturday, a holiday before any was
      measured): every day type that has been seen is a candidate; the high is
      the highest candidate, the low the lowest. The energy a candidate's high
      needs is kept but not bought from the grid (`load_soft_need_kw`): a
      Saturday after a week of working days is rarely busier than they were.
      Today's own readings rule a candidate out once the park has been clearly
      below its 10 % quantile for the last two hours (a holiday morning without
      the working day's ramp); while no candidate is left, the high is the
      persistence of what today shows. A candidate less busy than the day
      (`_BUSY`: a weekend standing in for the first working day) bounds nothing
      in the ramp hours: there the first-day rule below holds.
    * **never seen at all** (a first day, no imported history): in the hours a
      park typically ramps up (`ramp_windows`, local time) of a working day the
      need is unbounded (`math.inf`): the planner then keeps all the energy the
      batteries could give in those hours and charges for it (`hubctl.core.plan`); on
      a first Saturday it keeps what the batteries hold but buys nothing; on a
      Sunday or a holiday parks do not typically ramp up. Outside them the high
      is the recent level and the highest reading of the last hour, planned for
      `_PERSIST_S` ahead; the low falls from the last hour's lowest towards the
      lowest of the last day (offices close, shifts end).

PV, per company
    * Available PV is `peak_kw * clear_sky_shape(t) * k`. The factor `k` is
      learned from the inverter's own readings while it is not curtailed:
      `k_now` (an exponential mean, the current sky) and `k_clear` (the highest
      recent value, the clear-sky factor of this field, decaying slowly;
      starting from the configured prior).
    * For the room the batteries keep for export congestion the planner assumes a
      clear sky (`k_clear`): too much room costs a little import, too little
      costs curtailed solar. For the energy it keeps for import caps it assumes
      a dull sky (`_DULL_SKY` of clear) until the sky has been seen today (an
      overcast morning must not find the batteries empty), then the dullest sky
      of about the last hour (`k_low`: it follows a cloud down at once and
      recovers over `_K_LOW_RECOVER_S`), fading within the hour to at most half
      of clear (`_LATER_SKY`: clouds may come; a sky seen dull stays dull).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from hubctl.core.history import QUARTER_S, SLOTS, DayRecord, DayType
from hubctl.core.solar import clear_sky_shape, clear_sky_shape_minute

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

    from hubctl.core.history import History, TypeProfile

BUCKET_S = 300.0
# how busy a park usually is on a day type: a stand-in bounds a day's load only if it is as busy
_BUSY = {DayType.WORKING: 2, DayType.SATURDAY: 1, DayType.SUNDAY: 0, DayType.HOLIDAY: 0}
_RECENT_BUCKETS = 288 + 12  # a day and an hour of 5-minute buckets
_DEVIATION_FADE_S = 2 * 3600.0
_PERSIST_S = 2 * 3600.0  # a load never seen at that hour is expected to go on as it is for this long
_DEVIATION_BUCKETS = 6  # today's deviation from its profile: the last 30 minutes
_REFUTE_BUCKETS = 24  # a candidate day type is ruled out by the last two hours ...
_REFUTE_MIN_BUCKETS = 12  # ... of which at least one measured ...
_REFUTE_FRAC = 0.8  # ... where the park stayed below this share of the candidate's low quantile
# without history, the low load falls from the last hour's lowest by this much per hour of lead
_DROP_PER_H = 0.04
_MAX_DROP = 0.5
_K_NOW_TAU_S = 600.0
_K_NOW_GAIN_1S = 1.0 - math.exp(-1.0 / _K_NOW_TAU_S)
_K_CLEAR_DECAY_PER_S = 0.25 / 86400.0  # the clear-sky factor may fall by 0.25 a day when skies stay dull
_DULL_SKY = 0.2  # share of clear-sky PV that even an overcast day gives: what import planning counts on
_K_LOW_RECOVER_S = 3600.0  # the dull side of today's sky recovers from 0 to clear over this long
_SKY_FADE_S = 3600.0  # the current sky counts for import planning over about this lead ...
_LATER_SKY = 0.7  # ... after which a sky seen bright today counts at this share of clear
_SKY_KNOWN_S = 300.0  # readings needed before the current sky counts for import planning
_MIN_SHAPE = 0.15  # learn k only when the sun is high enough for the ratio to mean something
_NEIGHBOURS = 1  # quarter-hours either side that the high and the low also cover (timing jitter)


@dataclass(frozen=True, slots=True)
class RecentLoad:
    """The park's load over the last day in 5-minute buckets, keyed by UTC bucket (ts // 300): the
    short-term memory behind persistence and today's deviation."""

    buckets: dict[int, float]  # mean park load per complete bucket
    peaks: dict[int, float]  # highest park load reading within the bucket: peaks hide in means
    current: int  # bucket being filled, -1 before the first reading
    total: float
    count: int
    peak: float  # of the current bucket

    @classmethod
    def empty(cls) -> RecentLoad:
        return cls({}, {}, -1, 0.0, 0, 0.0)

    def add(self, ts_utc: float, park_kw: float) -> RecentLoad:
        bucket = int(ts_utc // BUCKET_S)
        if bucket == self.current:
            return RecentLoad(
                self.buckets,
                self.peaks,
                bucket,
                self.total + park_kw,
                self.count + 1,
                max(self.peak, park_kw),
            )
        buckets, peaks = self.buckets, self.peaks
        if self.count > 0:
            buckets = dict(buckets)
            peaks = dict(peaks)
            buckets[self.current] = self.total / self.count
            peaks[self.current] = self.peak
            if len(buckets) > _RECENT_BUCKETS:
                oldest = bucket - _RECENT_BUCKETS
                buckets = {k: v for k, v in buckets.items() if k > oldest}
                peaks = {k: v for k, v in peaks.items() if k > oldest}
        return RecentLoad(buckets, peaks, bucket, park_kw, 1, park_kw)

    def peak_since(self, bucket: int) -> float:
        """Highest park load reading from `bucket` on, the current bucket included (0 without readings)."""
        best = self.peak if self.count > 0 else 0.0
        for k, v in self.peaks.items():
            if k >= bucket:
                best = max(best, v)
        return best

    def last(self, buckets: int) -> list[tuple[int, float]]:
        """(bucket, mean) of the last `buckets` complete buckets that have a value, plus the current one."""
        out = [(b, self.buckets[b]) for b in range(self.current - buckets, self.current) if b in self.buckets]
        if self.count > 0:
            out.append((self.current, self.total / self.count))
        return out


@dataclass(frozen=True, slots=True)
class PvIndex:
    """Learned factors k = output / (peak * clear-sky shape), per company: the current sky (`k_now`),
    the dullest sky of the last hour or so (`k_low`) and the clear-sky factor of the field (`k_clear`)."""

    k_now: tuple[float, ...]
    k_clear: tuple[float, ...]
    seen_s: tuple[float, ...]  # seconds of readings since the sun rose today: k_now means something
    k_low: tuple[float, ...] = ()

    @classmethod
    def prior(cls, n: int, k_prior: float) -> PvIndex:
        return cls((k_prior,) * n, (k_prior,) * n, (0.0,) * n, (k_prior,) * n)

    def knows_the_sky(self, i: int) -> bool:
        return self.seen_s[i] >= _SKY_KNOWN_S

    def update(
        self,
        shape: float,
        pv_kw: tuple[float | None, ...],
        peaks: tuple[float, ...],
        curtailed: tuple[bool, ...],
        dt_s: float,
    ) -> PvIndex:
        if shape < _MIN_SHAPE:
            if any(self.seen_s):
                return PvIndex(self.k_now, self.k_clear, (0.0,) * len(self.seen_s), self.k_low)
            return self
        a = _K_NOW_GAIN_1S if dt_s == 1.0 else 1.0 - math.exp(-dt_s / _K_NOW_TAU_S)
        k_now, k_clear, seen = list(self.k_now), list(self.k_clear), list(self.seen_s)
        k_low = list(self.k_low or self.k_now)
        for i, peak in enumerate(peaks):
            pv = pv_kw[i]
            if peak <= 0 or pv is None:
                continue
            cut = curtailed[i]
            if not cut:
                ratio = min(pv / (peak * shape), 1.5)
                if seen[i] == 0:
                    k_now[i] = k_low[i] = ratio
                else:
                    k_now[i] += a * (ratio - k_now[i])
                    # follows a cloud down at once, recovers to the clear sky over `_K_LOW_RECOVER_S`
                    k_low[i] = min(ratio, k_low[i] + k_clear[i] * dt_s / _K_LOW_RECOVER_S)
                seen[i] += dt_s
            k_clear[i] = max(k_clear[i] - _K_CLEAR_DECAY_PER_S * dt_s, k_now[i])
        return PvIndex(tuple(k_now), tuple(k_clear), tuple(seen), tuple(k_low))


@dataclass(frozen=True, slots=True)
class Forecast:
    """Park totals over the plan steps (kW), with the planning variants."""

    load_kw: list[float]  # expected load
    load_low_kw: list[float]  # a low load: for export-room planning
    load_high_kw: list[float]  # a high load: for import-energy planning
    load_peak_kw: float  # highest load reading of the last 24 h
    covered: list[bool]  # step backed by history (its own day type or a candidate)
    pv_clear_kw: list[float]  # clear sky: for export-room planning
    pv_low_kw: list[float]  # dull sky: for import-energy planning
    # the load the import caps are planned for: the high load where it is known (or persists, up to
    # `_PERSIST_S` ahead); inf where nothing is known in a ramp window (all the energy a ramp may
    # need); -inf where nothing is known further ahead (no need planned; `load_high_kw` still gives
    # the room to charge)
    load_need_kw: list[float] = field(default_factory=list)
    # the same where today's day type is known; where another day type stands in for it (the first
    # Saturday, a holiday) its high load: energy the batteries hold is kept for it, none is bought
    load_soft_need_kw: list[float] = field(default_factory=list)
    # the load the room for the solar excess is planned with: the expected load where a profile
    # exists, the low load where none does
    load_room_kw: list[float] = field(default_factory=list)
    ramp_hours: list[bool] = field(default_factory=list)  # step within a working day's ramp hours

    def need_kw(self, j: int) -> float:
        return self.load_need_kw[j] if self.load_need_kw else self.load_high_kw[j]

    def soft_need_kw(self, j: int) -> float:
        return self.load_soft_need_kw[j] if self.load_soft_need_kw else self.need_kw(j)

    def room_kw(self, j: int) -> float:
        return self.load_room_kw[j] if self.load_room_kw else self.load_low_kw[j]

    @property
    def coverage(self) -> float:
        """Share of the first 12 h of the horizon (at most) backed by history."""
        head = self.covered[: max(1, len(self.covered) // 2)]
        return sum(head) / len(head) if head else 1.0


def with_common_load(fc: Forecast, kw: float) -> Forecast:
    """The forecast with the common load at a shared connection (`kw`: the park meter less the companies'
    meters, + import) added, taken as it is now over the horizon: it is nobody's load and is not learned.

    Conservative both ways: an import (a common load, losses) raises the expected, the high and the
    needed load, never the low one; an export (a common PV roof) lowers the low and the room load,
    never the high one. A reading noisy by the meters' read times therefore never lowers the energy
    kept for an import cap, nor raises the room planned for the solar excess.
    """
    if kw == 0.0 or not math.isfinite(kw):
        return fc
    up, down = max(kw, 0.0), min(kw, 0.0)

    def add(values: list[float], by: float) -> list[float]:
        return [v + by for v in values]  # inf and -inf (nothing known) stay as they are

    return Forecast(
        load_kw=add(fc.load_kw, kw),
        load_low_kw=add(fc.load_low_kw, down),
        load_high_kw=add(fc.load_high_kw, up),
        load_peak_kw=fc.load_peak_kw + up,
        covered=fc.covered,
        pv_clear_kw=fc.pv_clear_kw,
        pv_low_kw=fc.pv_low_kw,
        load_need_kw=add(fc.load_need_kw, up),
        load_soft_need_kw=add(fc.load_soft_need_kw, up),
        load_room_kw=add(fc.load_room_kw, down),
        ramp_hours=fc.ramp_hours,
    )


def in_windows(sod_s: float, windows: Sequence[tuple[int, int]]) -> bool:
    """Local second of day within one of the [start, end) windows (start > end runs over midnight)."""
    for start, end in windows:
        if start < end:
            if start <= sod_s < end:
                return True
        elif sod_s >= start or sod_s < end:
            return True
    return False


def _around(values: Sequence[float], slot: int, pick: str) -> float:
    """max or min of a profile over the slot and its neighbours (NaN ignored; NaN when none)."""
    best = math.nan
    for s in range(slot - _NEIGHBOURS, slot + _NEIGHBOURS + 1):
        if 0 <= s < SLOTS:
            v = float(values[s])
            if not math.isnan(v) and (math.isnan(best) or (v > best if pick == "max" else v < best)):
                best = v
    return best


class _Profiles:
    """The profiles a forecast looks up, as plain floats for the hot loop, with the neighbours'
    highest high and lowest low precomputed (`_NEIGHBOURS`)."""

    def __init__(self, history: History) -> None:
        self.known: dict[DayType, bool] = {}
        self.mid: dict[DayType, list[float]] = {}
        self.low: dict[DayType, list[float]] = {}
        self.high: dict[DayType, list[float]] = {}
        self.high_around: dict[DayType, list[float]] = {}
        self.low_around: dict[DayType, list[float]] = {}
        self.samples: dict[DayType, list[float]] = {}
        for t, p in history.profiles.items():
            self._add(t, p)

    def _add(self, t: DayType, p: TypeProfile) -> None:
        self.known[t] = p.known
        if p.known:
            self.mid[t] = p.park_mid_kw.tolist()
            self.low[t] = p.park_low_kw.tolist()
            self.high[t] = p.park_high_kw.tolist()
            self.samples[t] = p.samples.tolist()
            self.high_around[t] = [_around(self.high[t], s, "max") for s in range(SLOTS)]
            self.low_around[t] = [_around(self.low[t], s, "min") for s in range(SLOTS)]

    def has(self, t: DayType, slot: int) -> bool:
        return self.known.get(t, False) and self.samples[t][slot] > 0


# the profiles of the last forecast: they change once a quarter-hour, the plan asks every 5 minutes
_LAST_PROFILES: list[tuple[object, _Profiles]] = []


def _profiles_of(history: History) -> _Profiles:
    if _LAST_PROFILES and _LAST_PROFILES[0][0] is history.profiles:
        return _LAST_PROFILES[0][1]
    profiles = _Profiles(history)
    _LAST_PROFILES[:] = [(history.profiles, profiles)]
    return profiles


def _deviation(
    recent: RecentLoad, history: History, profiles: _Profiles, buckets: int
) -> tuple[float, int] | None:
    """Mean of (measured - profile mean) over the last `buckets` 5-minute buckets, where the bucket's
    own day type has a profile; and how many buckets that was. None without any."""
    total, count = 0.0, 0
    for b, load in recent.last(buckets):
        date, slot = history.quarters.of(int(b * BUCKET_S // QUARTER_S))
        t = history.day_type(date)
        if profiles.has(t, slot):
            total += load - profiles.mid[t][slot]
            count += 1
    return (total / count, count) if count else None


def _refuted(recent: RecentLoad, history: History, profiles: _Profiles, candidate: DayType) -> bool:
    """Has today's load stayed clearly below `candidate`'s low quantile over the last two hours?"""
    obs, ref, count = 0.0, 0.0, 0
    for b, load in recent.last(_REFUTE_BUCKETS):
        _, slot = history.quarters.of(int(b * BUCKET_S // QUARTER_S))
        if profiles.has(candidate, slot):
            obs += load
            ref += profiles.low[candidate][slot]
            count += 1
    return count >= _REFUTE_MIN_BUCKETS and obs < _REFUTE_FRAC * ref


@dataclass(frozen=True, slots=True)
class _Recently:
    """What the park's last hour and day of readings say (kW)."""

    level: float  # mean of the last 30 minutes
    base: float  # lowest bucket of the last day
    peak: float  # highest reading of the last day
    lo_now: float  # lowest bucket of the last hour
    hi_now: float  # highest reading or bucket of the last hour


def _recently(ts_utc: float, recent: RecentLoad) -> _Recently:
    now_bucket = int(ts_utc // BUCKET_S)
    last_hour = [v for _, v in recent.last(12)] or [0.0]
    last_30 = last_hour[-7:]
    level = sum(last_30) / len(last_30)
    day = [v for k, v in recent.buckets.items() if k > now_bucket - 288] + last_hour
    base = min(day)
    peak = recent.peak_since(now_bucket - 287)
    lo_now, hi_now = min(last_hour), max(recent.peak_since(now_bucket - 12), *last_hour)
    return _Recently(level, base, peak, lo_now, hi_now)


@dataclass(frozen=True, slots=True)
class _LoadContext:
    """What every step of the load forecast looks at: the profiles, today and what it rules out."""

    history: History
    profiles: _Profiles
    recently: _Recently
    dev: float  # today's deviation from its profile (kW)
    today: dt.date
    seen_types: list[DayType]  # day types with a profile
    refuted: set[DayType]  # stand-ins for today's day type that today's readings rule out
    ramp_windows: Sequence[tuple[int, int]]
    uncertainty: float


def _load_context(
    ts_utc: float,
    recent: RecentLoad,
    history: History,
    ramp_windows: Sequence[tuple[int, int]],
    uncertainty: float,
) -> _LoadContext:
    profiles = _profiles_of(history)
    dev_seen = _deviation(recent, history, profiles, _DEVIATION_BUCKETS)
    dev = dev_seen[0] if dev_seen is not None else 0.0
    today, _ = history.quarters.of(int(ts_utc // QUARTER_S))
    today_type = history.day_type(today)
    seen_types = [t for t in DayType if profiles.known.get(t, False)]
    # another day type standing in for today's, where today's has not been seen: ruled out by today
    refuted = {t for t in seen_types if t is not today_type and _refuted(recent, history, profiles, t)}
    recently = _recently(ts_utc, recent)
    return _LoadContext(
        history, profiles, recently, dev, today, seen_types, refuted, ramp_windows, uncertainty
    )


class _LoadStep(NamedTuple):
    """One plan step of the load forecast (kW; the fields of `Forecast` of the same names)."""

    expected: float
    low: float
    high: float
    need: float
    soft: float
    room: float
    covered: bool
    ramp: bool


def _load_step(ts_utc: float, lead: float, ctx: _LoadContext) -> _LoadStep:
    """The load forecast of the step whose middle is `lead` seconds ahead."""
    history, profiles, uncertainty = ctx.history, ctx.profiles, ctx.uncertainty
    t = ts_utc + lead
    date, slot = history.quarters.of(int(t // QUARTER_S))
    day_type = history.day_type(date)
    fade = math.exp(-lead / _DEVIATION_FADE_S)
    local_sod = slot * QUARTER_S + t % QUARTER_S  # UTC offsets are whole quarter-hours
    ramp = day_type is DayType.WORKING and in_windows(local_sod, ctx.ramp_windows)
    avail = [c for c in ctx.seen_types if profiles.has(c, slot)]  # day types seen at this quarter-hour
    if profiles.has(day_type, slot):
        cands = [day_type]
    elif date == ctx.today:
        cands = [c for c in avail if c not in ctx.refuted]
    else:
        cands = avail
    persist = math.exp(-lead / 3600.0)
    rec = ctx.recently
    persisted = (rec.hi_now * persist + rec.level * (1 - persist)) * (1 + uncertainty)
    if cands:
        dev = ctx.dev
        e = sum(profiles.mid[c][slot] for c in cands) / len(cands)
        hi = max(profiles.high_around[c][slot] for c in cands)
        lo = min(profiles.low_around[c][slot] for c in cands)
        expected = max(0.0, e + dev * fade)
        high = max(0.0, hi * (1 + uncertainty) + max(dev, 0.0) * fade)
        low = max(0.0, lo * (1 - uncertainty) + min(dev, 0.0) * fade)
        if cands == [day_type]:
            need = soft = high
        elif max(_BUSY[c] for c in cands) < _BUSY[day_type] and in_windows(local_sod, ctx.ramp_windows):
            need = soft = math.inf  # the first working day after a weekend: a Sunday says nothing of its ramp
        else:  # another day type stands in: its energy is kept, not bought (`hubctl.core.plan`)
            need = persisted if lead <= _PERSIST_S else -math.inf
            soft = high
        return _LoadStep(expected, low, high, need, soft, expected, covered=True, ramp=ramp)
    # nothing of this quarter-hour seen on any day type (or today rules the candidates out)
    drop = min(_MAX_DROP, uncertainty + _DROP_PER_H * lead / 3600.0)
    low = max(rec.base * (1 - uncertainty), rec.lo_now * (1 - drop))
    blind = not avail and in_windows(local_sod, ctx.ramp_windows)  # never seen: keep what a ramp may need
    if blind and day_type is DayType.WORKING:
        need = math.inf
    elif lead <= _PERSIST_S:
        need = persisted
    else:
        need = -math.inf  # not known: no import need planned this far ahead
    # a first Saturday keeps the energy it has for its ramp hours and buys none; parks do not
    # typically ramp up on a Sunday or a public holiday
    soft = math.inf if blind and day_type is DayType.SATURDAY else need
    return _LoadStep(rec.level, low, persisted, need, soft, 0.5 * (low + rec.level), covered=False, ramp=ramp)


def _pv_forecast(
    ts_utc: float,
    steps: int,
    step_s: float,
    history: History,
    pv_index: PvIndex,
    peaks: tuple[float, ...],
    lat: float,
    lon: float,
) -> tuple[list[float], list[float]]:
    """The park's PV over the plan steps (kW): under a clear sky, and under a dull one."""
    today, _ = history.quarters.of(int(ts_utc // QUARTER_S))
    # by the minute, memoised: every renewal of the plan asks again for most of the same minutes
    shapes = [
        clear_sky_shape_minute(int((ts_utc + (j + 0.5) * step_s) // 60), lat, lon) for j in range(steps)
    ]
    k_clear = sum(p * k for p, k in zip(peaks, pv_index.k_clear, strict=True))
    # a sky not seen (tomorrow; today before the sun is up): a dull day of this site's record
    total_peak = sum(peaks)
    share = dull_sky_share(history, peaks, lat, lon, k_clear / total_peak if total_peak > 0 else 0.0)
    k_lows = pv_index.k_low or pv_index.k_now
    k_now = sum(
        p * (k if pv_index.knows_the_sky(i) else share * kc)
        for i, (p, k, kc) in enumerate(zip(peaks, k_lows, pv_index.k_clear, strict=True))
    )
    k_later = _LATER_SKY * k_clear
    k_far = share * k_clear
    pv_clear = [k_clear * s for s in shapes]
    pv_low = []
    for j, s in enumerate(shapes):
        t = ts_utc + (j + 0.5) * step_s
        if history.quarters.of(int(t // QUARTER_S))[0] != today:
            pv_low.append(k_far * s)
            continue
        fade = math.exp(-(j + 0.5) * step_s / _SKY_FADE_S)
        pv_low.append(min(k_now, k_now * fade + k_later * (1 - fade)) * s)
    return pv_clear, pv_low


def forecast(
    ts_utc: float,
    steps: int,
    step_s: float,
    recent: RecentLoad,
    history: History,
    pv_index: PvIndex,
    peaks: tuple[float, ...],
    lat: float,
    lon: float,
    ramp_windows: Sequence[tuple[int, int]] = (),
    uncertainty: float = 0.1,
) -> Forecast:
    """Forecast for the plan steps starting at ts_utc (step j covers [ts + j*step, ts + (j+1)*step));
    see the module docstring."""
    ctx = _load_context(ts_utc, recent, history, ramp_windows, uncertainty)
    load = [_load_step(ts_utc, (j + 0.5) * step_s, ctx) for j in range(steps)]
    pv_clear, pv_low = _pv_forecast(ts_utc, steps, step_s, history, pv_index, peaks, lat, lon)
    return Forecast(
        [s.expected for s in load],
        [s.low for s in load],
        [s.high for s in load],
        ctx.recently.peak,
        [s.covered for s in load],
        pv_clear,
        pv_low,
        [s.need for s in load],
        [s.soft for s in load],
        [s.room for s in load],
        [s.ramp for s in load],
    )


_CLEARNESS: dict[tuple[object, dt.date], tuple[DayRecord, float | None]] = {}
_SKY_DAYS = 28  # the dull side of the site's sky is judged over its last four weeks ...
_SKY_PRIOR_DAYS = 5.0  # ... and weighs as this many days of `_DULL_SKY` while there are few of them
_SKY_QUANTILE = 0.1


def _day_yield(
    history: History, rec: DayRecord, peaks: tuple[float, ...], lat: float, lon: float
) -> float | None:
    """The day's PV output over what its fields give under a clear sky (None: too little measured)."""
    key = (history.quarters, rec.date)
    hit = _CLEARNESS.get(key)
    if hit is not None and hit[0] is rec:
        return hit[1]
    num = den = 0.0
    slots = 0
    with_pv = [i for i, p in enumerate(peaks) if p > 0]
    for slot in range(SLOTS):
        pv = rec.pv_kw[slot]
        values = [(peaks[i], float(pv[i])) for i in with_pv if not math.isnan(pv[i])]
        if not values:
            continue
        shape = clear_sky_shape(history.quarters.start_utc(rec.date, slot) + QUARTER_S / 2, lat, lon)
        if shape <= 0:
            continue
        slots += 1
        num += sum(v for _, v in values)
        den += sum(p for p, _ in values) * shape
    value = num / den if den > 0 and slots >= 16 else None
    if len(_CLEARNESS) > 4096:
        _CLEARNESS.clear()
    _CLEARNESS[key] = (rec, value)
    return value


def dull_sky_share(
    history: History, peaks: tuple[float, ...], lat: float, lon: float, clear_ref: float = 0.0
) -> float:
    """The share of a clear sky's PV to count on for a day whose sky has not been seen: the 10 %
    quantile of the site's own days over the last four weeks (PV output over the clear-sky model,
    relative to its brightest day, or to `clear_ref` where no day was brighter), weighed with a
    prior of `_DULL_SKY` worth `_SKY_PRIOR_DAYS` days. With no PV history it is `_DULL_SKY`: an
    overcast morning must not find the batteries empty."""
    if not any(p > 0 for p in peaks):
        return _DULL_SKY
    dates = sorted(history.days)[-_SKY_DAYS - 1 :]
    yields = [y for d in dates if (y := _day_yield(history, history.days[d], peaks, lat, lon)) is not None]
    if not yields:
        return _DULL_SKY
    top = max(*yields, clear_ref)
    if top <= 0:
        return _DULL_SKY
    shares = sorted(min(1.0, y / top) for y in yields)
    q = shares[min(len(shares) - 1, int(_SKY_QUANTILE * len(shares)))]
    n = len(shares)
    return (n * q + _SKY_PRIOR_DAYS * _DULL_SKY) / (n + _SKY_PRIOR_DAYS)
