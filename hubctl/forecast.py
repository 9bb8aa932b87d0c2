"""The controller's own forecasts of load and available PV (pure, causal).

Only what a gateway sees is used: past readings of its own meters and
inverters, the clock, and the sun's position. Nothing is read from the future.

Load, per company
    * 5-minute means of measured load (`grid + pv + battery`) are kept for the
      last two days (`LoadHistory`).
    * The forecast for a time `tau` ahead is yesterday's value at `tau - 24 h`
      shifted by today's deviation from yesterday, the deviation fading with
      the lead time (`_DEVIATION_FADE_S`). Without yesterday's value it is
      persistence: the mean of the last 5 minutes.
    * `coverage` tells the planner how much of the horizon has a history
      behind it; without one, import peaks cannot be seen coming and the
      planner keeps a default reserve in the batteries.

PV, per company
    * Available PV is `peak_kw * clear_sky_shape(t) * k`. The factor `k` is
      learned from the inverter's own readings while it is not curtailed:
      `k_now` (an exponential mean, the current sky) and `k_clear` (the highest
      recent value, the clear-sky factor of this field, decaying slowly;
      starting from the configured prior).
    * For planning room for export congestion the planner assumes a clear sky
      (`k_clear`): too much room costs a little import, too little costs
      curtailed solar. For planning energy for import caps it assumes the
      current sky fading to half the clear-sky factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hubctl.solar import clear_sky_shape

BUCKET_S = 300.0
_HISTORY_BUCKETS = 2 * 288 + 12
_DEVIATION_FADE_S = 2 * 3600.0
# without history, the low load falls from the last hour's lowest by this much per hour of lead
_DROP_PER_H = 0.04
_MAX_DROP = 0.5
_K_NOW_TAU_S = 600.0
_K_CLEAR_DECAY_PER_S = 0.25 / 86400.0  # the clear-sky factor may fall by 0.25 a day when skies stay dull
_DULL_SKY = 0.25  # share of clear-sky PV that even an overcast day gives: what import planning counts on
_SKY_KNOWN_S = 300.0  # readings needed before the current sky counts for import planning
_MIN_SHAPE = 0.15  # learn k only when the sun is high enough for the ratio to mean something


@dataclass(frozen=True, slots=True)
class LoadHistory:
    """5-minute mean loads per company and the park's highest reading, keyed by UTC bucket (ts // 300)."""

    buckets: dict[int, tuple[float, ...]]
    peaks: dict[int, float]  # highest park load reading within the bucket: peaks hide in 5-minute means
    current: int  # bucket being filled, -1 before the first reading
    sums: tuple[float, ...]
    count: int
    peak: float  # of the current bucket

    @classmethod
    def empty(cls, n: int) -> LoadHistory:
        return cls({}, {}, -1, (0.0,) * n, 0, 0.0)

    def add(self, ts_utc: float, load_kw: tuple[float, ...]) -> LoadHistory:
        bucket = int(ts_utc // BUCKET_S)
        park = sum(load_kw)
        if bucket == self.current:
            return replace(
                self,
                sums=tuple(s + x for s, x in zip(self.sums, load_kw, strict=True)),
                count=self.count + 1,
                peak=max(self.peak, park),
            )
        buckets, peaks = self.buckets, self.peaks
        if self.count > 0:
            buckets = dict(buckets)
            peaks = dict(peaks)
            buckets[self.current] = tuple(s / self.count for s in self.sums)
            peaks[self.current] = self.peak
            if len(buckets) > _HISTORY_BUCKETS:
                oldest = bucket - _HISTORY_BUCKETS
                buckets = {k: v for k, v in buckets.items() if k > oldest}
                peaks = {k: v for k, v in peaks.items() if k > oldest}
        return LoadHistory(buckets, peaks, bucket, load_kw, 1, park)

    def peak_since(self, bucket: int) -> float:
        """Highest park load reading from `bucket` on, the current bucket included (0 without readings)."""
        best = self.peak if self.count > 0 else 0.0
        for k, v in self.peaks.items():
            if k >= bucket:
                best = max(best, v)
        return best

    def recent(self) -> tuple[float, ...] | None:
        """Mean load of the last (partial) bucket, else of the last complete one."""
        if self.count > 0:
            return tuple(s / self.count for s in self.sums)
        return self.buckets.get(self.current - 1)


@dataclass(frozen=True, slots=True)
class PvIndex:
    """Learned factors k = output / (peak * clear-sky shape), per company."""

    k_now: tuple[float, ...]
    k_clear: tuple[float, ...]
    seen_s: tuple[float, ...]  # seconds of readings since the sun rose today: k_now means something

    @classmethod
    def prior(cls, n: int, k_prior: float) -> PvIndex:
        return cls((k_prior,) * n, (k_prior,) * n, (0.0,) * n)

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
                return PvIndex(self.k_now, self.k_clear, (0.0,) * len(self.seen_s))
            return self
        a = 1.0 - math.exp(-dt_s / _K_NOW_TAU_S)
        k_now, k_clear, seen = list(self.k_now), list(self.k_clear), list(self.seen_s)
        for i, (pv, peak, cut) in enumerate(zip(pv_kw, peaks, curtailed, strict=True)):
            if peak <= 0 or pv is None:
                continue
            if not cut:
                ratio = min(pv / (peak * shape), 1.5)
                k_now[i] = ratio if seen[i] == 0 else k_now[i] + a * (ratio - k_now[i])
                seen[i] += dt_s
            k_clear[i] = max(k_clear[i] - _K_CLEAR_DECAY_PER_S * dt_s, k_now[i])
        return PvIndex(tuple(k_now), tuple(k_clear), tuple(seen))


@dataclass(frozen=True, slots=True)
class Forecast:
    """Park totals over the plan steps (kW), with the planning variants."""

    load_kw: list[float]  # expected load
    load_low_kw: list[float]  # a low load: for export-room planning
    load_high_kw: list[float]  # a high load: for import-energy planning
    load_peak_kw: float  # highest 5-minute mean load of the last 24 h
    covered: list[bool]  # step backed by yesterday's history
    pv_clear_kw: list[float]  # clear sky: for export-room planning
    pv_low_kw: list[float]  # dull sky: for import-energy planning

    @property
    def coverage(self) -> float:
        """Share of the first 12 h of the horizon (at most) backed by history."""
        head = self.covered[: max(1, len(self.covered) // 2)]
        return sum(head) / len(head) if head else 1.0


def _recent(history: LoadHistory, buckets: int) -> list[float]:
    """Park load of the last `buckets` complete 5-minute buckets plus the current partial one."""
    out = []
    for b in range(history.current - buckets, history.current):
        v = history.buckets.get(b)
        if v is not None:
            out.append(sum(v))
    cur = history.recent() if history.count > 0 else None
    if cur is not None:
        out.append(sum(cur))
    return out


def forecast(
    ts_utc: float,
    steps: int,
    step_s: float,
    history: LoadHistory,
    pv_index: PvIndex,
    peaks: tuple[float, ...],
    lat: float,
    lon: float,
    uncertainty: float = 0.1,
) -> Forecast:
    """Forecast for the plan steps starting at ts_utc (step j covers [ts + j*step, ts + (j+1)*step)).

    Load: yesterday's 5-minute mean at the same time, shifted by today's deviation
    from yesterday fading over `_DEVIATION_FADE_S`. Without yesterday, the mean of
    the last 30 minutes; the low variant then fades from the lowest 5-minute mean
    of the last hour to the lowest of the last 24 h (the base load: offices close,
    shifts end) and the high variant fades from the highest reading of the last hour
    (peaks hide in 5-minute means: a press or a charging fleet) to the recent level.
    """
    now_bucket = int(ts_utc // BUCKET_S)
    last_hour = _recent(history, 12) or [0.0]
    last_30 = last_hour[-7:]
    level = sum(last_30) / len(last_30)
    day = [sum(v) for k, v in history.buckets.items() if k > now_bucket - 288] + last_hour
    base = min(day)
    peak = history.peak_since(now_bucket - 287)
    lo_now, hi_now = min(last_hour), max(history.peak_since(now_bucket - 12), *last_hour)
    yesterday_now = history.buckets.get(now_bucket - 288)
    dev = level - sum(yesterday_now) if yesterday_now is not None else 0.0
    expected, low, high, covered = [], [], [], []
    for j in range(steps):
        lead = (j + 0.5) * step_s
        past = history.buckets.get(int((ts_utc + lead) // BUCKET_S) - 288)
        if past is not None:
            e = max(0.0, sum(past) + dev * math.exp(-lead / _DEVIATION_FADE_S))
            expected.append(e)
            low.append(e * (1 - uncertainty))
            high.append(e * (1 + uncertainty))
        else:
            fade = math.exp(-lead / 3600.0)
            expected.append(level)
            drop = min(_MAX_DROP, uncertainty + _DROP_PER_H * lead / 3600.0)
            low.append(max(base * (1 - uncertainty), lo_now * (1 - drop)))
            high.append((hi_now * fade + level * (1 - fade)) * (1 + uncertainty))
        covered.append(past is not None)
    shapes = [clear_sky_shape(ts_utc + (j + 0.5) * step_s, lat, lon) for j in range(steps)]
    k_clear = sum(p * k for p, k in zip(peaks, pv_index.k_clear, strict=True))
    # the current sky only once it has been seen today; before that, a dull day (_DULL_SKY of clear)
    k_now = sum(
        p * (k if pv_index.knows_the_sky(i) else _DULL_SKY * kc)
        for i, (p, k, kc) in enumerate(zip(peaks, pv_index.k_now, pv_index.k_clear, strict=True))
    )
    pv_clear = [k_clear * s for s in shapes]
    pv_low = []
    for j, s in enumerate(shapes):
        fade = math.exp(-(j + 0.5) * step_s / 3600.0)
        pv_low.append(min(k_now, k_now * fade + 0.5 * k_clear * (1 - fade)) * s)
    return Forecast(expected, low, high, peak, covered, pv_clear, pv_low)
