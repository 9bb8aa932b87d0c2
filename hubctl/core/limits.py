"""Limits in force: which import/export cap holds at a moment, and who set it.

Pure functions over the configuration (no clock reads): the caller passes the
time. "Most restrictive wins, and remember who set it": the contracted value
(`contract`) is replaced by the daily windows and day-specific schedules that
are active and name that limit; where several are active the lowest holds
(SCENARIOS.md). An operator override (`operator`, a later issue) may only
lower the result, never raise it.

`None` means "no cap" for that direction.

`tightest_export_kw` answers another question: the lowest export cap the
configuration can put in force at any time from a date on, for the value a
device falls back to when no controller writes (`hubctl.core.failsafe.fallback_pv_limits`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from hubctl.config.site import Caps, Window

_DAY_S = 86400


@dataclass(frozen=True, slots=True)
class LimitsInForce:
    import_kw: float | None
    import_source: str
    export_kw: float | None
    export_source: str


NO_LIMITS = LimitsInForce(None, "none", None, "none")


def window_is_active(start_s: int, end_s: int, sod_s: float) -> bool:
    """[start, end) in local seconds of day; start > end runs across midnight."""
    if start_s < end_s:
        return start_s <= sod_s < end_s
    return sod_s >= start_s or sod_s < end_s


def _label(w: Window) -> str:
    return f"{w.start}-{w.end}"


@dataclass(frozen=True, slots=True)
class LocalTime:
    """A moment in the site's local clock: date and seconds since local midnight."""

    date: dt.date
    sod_s: float

    @classmethod
    def of(cls, ts_utc: float, tz: ZoneInfo) -> LocalTime:
        local = dt.datetime.fromtimestamp(ts_utc, tz)
        sod = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        return cls(local.date(), sod)


def _candidates(caps: Caps, at: LocalTime) -> list[tuple[Window, str]]:
    active = [
        (w, "window " + _label(w)) for w in caps.windows if window_is_active(w.start_s, w.end_s, at.sod_s)
    ]
    for sched in caps.schedules:
        for w in sched.windows:
            s, e = w.start_s, w.end_s
            today = sched.date == at.date and at.sod_s >= s and (s > e or at.sod_s < e)
            spill = s > e and sched.date == at.date - dt.timedelta(days=1) and at.sod_s < e
            if today or spill:
                active.append((w, f"schedule {sched.date} {_label(w)}"))
    return active


def limits_in_force(caps: Caps, at: LocalTime) -> LimitsInForce:
    """The caps of one connection at a local time, each with its source."""
    active = _candidates(caps, at)
    out: list[tuple[float | None, str]] = []
    for base, name in ((caps.import_limit_kw, "import_limit_kw"), (caps.export_limit_kw, "export_limit_kw")):
        best: tuple[float | None, str] = (base, "contract" if base is not None else "none")
        named = [(getattr(w, name), src) for w, src in active if getattr(w, name) is not None]
        if named:
            best = min(named, key=lambda x: x[0])
        out.append(best)
    return LimitsInForce(out[0][0], out[0][1], out[1][0], out[1][1])


def tightest_export_kw(caps: Caps, today: dt.date) -> float | None:
    """The lowest export cap `caps` can put in force on `today` or later; None: never an export cap.

    Counted: the contracted cap, every daily window's, and every day schedule's of `today` or later
    (and yesterday's windows that run across midnight, which still hold this morning). A window
    may replace the contracted cap by a higher one for its hours; the lowest value counts whenever
    it holds, because a device's fallback may have to last until a controller comes back, days later.
    """
    yesterday = today - dt.timedelta(days=1)
    values = [caps.export_limit_kw, *(w.export_limit_kw for w in caps.windows)]
    values += [
        w.export_limit_kw
        for sched in caps.schedules
        for w in sched.windows
        if sched.date >= today or (sched.date == yesterday and w.start_s > w.end_s)
    ]
    known = [v for v in values if v is not None]
    return min(known) if known else None


def with_operator(limits: LimitsInForce, import_kw: float | None, export_kw: float | None) -> LimitsInForce:
    """Apply operator limits: they may lower a cap, never raise it."""
    imp, imp_src, exp, exp_src = (
        limits.import_kw,
        limits.import_source,
        limits.export_kw,
        limits.export_source,
    )
    if import_kw is not None and (imp is None or import_kw < imp):
        imp, imp_src = import_kw, "operator"
    if export_kw is not None and (exp is None or export_kw < exp):
        exp, exp_src = export_kw, "operator"
    return LimitsInForce(imp, imp_src, exp, exp_src)


class LimitClock:
    """Limits in force for the park and each company at UTC times, with a cache per local minute.

    Windows and schedules are given in whole minutes, so limits are constant within a
    local minute; the cache makes the per-second control loop and the horizon plan cheap.
    """

    def __init__(self, park: Caps, companies: dict[str, Caps], tz: ZoneInfo) -> None:
        self._park = park
        self._companies = companies
        self._tz = tz
        self._cache: dict[int, tuple[LimitsInForce, dict[str, LimitsInForce]]] = {}

    def at(self, ts_utc: float) -> tuple[LimitsInForce, dict[str, LimitsInForce]]:
        key = int(ts_utc // 60)
        hit = self._cache.get(key)
        if hit is None:
            local = LocalTime.of(key * 60.0, self._tz)
            hit = (
                limits_in_force(self._park, local),
                {cid: limits_in_force(c, local) for cid, c in self._companies.items() if c.has_caps},
            )
            if len(self._cache) > 4 * 1440:  # a few days of minutes; the plan looks ahead at most 72 h
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def tightest_export(self, ts_utc: float) -> tuple[float | None, dict[str, float | None]]:
        """`tightest_export_kw` of the park and of each company with caps, from `ts_utc`'s local date on."""
        today = LocalTime.of(ts_utc, self._tz).date
        companies = {cid: tightest_export_kw(c, today) for cid, c in self._companies.items() if c.has_caps}
        return tightest_export_kw(self._park, today), companies
