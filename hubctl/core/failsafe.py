"""The fail-safe: what the controller does when a grid meter is stale, and the devices' own fallback.

What it is: `failsafe_decision` (batteries to 0 kW, PV limited so that export stays within every
cap even at zero load), the PV limits of that rule (`failsafe_pv_limits`) and the same rule at the
tightest export cap the configuration can put in force (`fallback_pv_limits`, written to the
devices by the gateway service). Pure, no I/O (the rules of `hubctl.core`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from hubctl.core.types import NO_OVERRIDES, Decision, Overrides, cap_less_margin

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hubctl.core.limits import LimitsInForce
    from hubctl.core.types import Params, Snapshot, State


def failsafe_pv_limits(
    params: Params, park_export_kw: float | None, company_export_kw: Mapping[str, float | None]
) -> tuple[float | None, ...]:
    """PV limits (kW; None: none needed) that keep export within the caps even at zero load.

    The park's export cap (less its margin) is shared over the companies' PV in proportion to
    their peaks; a company's own export cap (less its margin) bounds its own PV. With the
    batteries at 0 kW, export then cannot pass any of these caps, whatever the load does.
    """
    peaks = [c.pv_peak_kw for c in params.companies]
    total_peak = sum(peaks)
    park_room = cap_less_margin(park_export_kw, params)
    limits: list[float | None] = []
    for c, peak in zip(params.companies, peaks, strict=True):
        if peak <= 0:
            limits.append(None)
            continue
        lim = peak * min(1.0, park_room / total_peak) if math.isfinite(park_room) else peak
        own = company_export_kw.get(c.id)
        if own is not None:
            lim = min(lim, cap_less_margin(own, params))
        limits.append(lim if lim < peak else None)
    return tuple(limits)


def fallback_pv_limits(
    params: Params, ts_utc: float, overrides: Overrides = NO_OVERRIDES
) -> tuple[float | None, ...]:
    """Each company's PV limit for its inverters' own fallback (kW; None: no limit needed).

    A device falls back when no controller writes to it any more, and stays there until one
    comes back, possibly days later; so the fallback must be safe at any time. This is the
    fail-safe rule (`failsafe_pv_limits`) applied to the tightest export cap the limits can put
    in force from the local date of `ts_utc` on (`LimitClock.tightest_export`: the contracted
    cap, the daily windows, the day schedules of today or later, each company's own caps),
    lowered by the operator's export limits in force at `ts_utc` (they only lower a cap).
    The batteries' fallback is 0 kW, as in the fail-safe.
    """
    park, companies = params.limits.tightest_export(ts_utc)
    park = _lowest(park, overrides.park_export_kw)
    own = dict(companies)
    for cid, kw in overrides.company_export_kw.items():
        own[cid] = _lowest(own.get(cid), kw)
    return failsafe_pv_limits(params, park, own)


def _lowest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def failsafe_decision(
    snap: Snapshot,
    state: State,
    params: Params,
    park: LimitsInForce,
    comp: dict[str, LimitsInForce],
    why: str,
) -> tuple[Decision, State]:
    """Batteries to 0 kW, PV limited so that export stays within every cap even at zero load."""
    limits = failsafe_pv_limits(params, park.export_kw, {cid: lim.export_kw for cid, lim in comp.items()})
    setpoints = tuple(0.0 if c.battery else None for c in params.companies)
    decision = Decision(setpoints, limits, "failsafe", park, comp, 0.0, 0.0, why)
    new_state = replace(
        state,
        battery_kw=(0.0,) * len(params.companies),
        pv_limit_kw=limits,
        last_ts=snap.ts_utc,
    )
    return decision, new_state
