"""The control core: one pure decision per cycle, `step(snapshot, state, params) -> (decision, state)`.

No I/O, no clock reads, no logging: the caller passes a frozen `Snapshot` of
what the gateway measured (possibly delayed) and the wall-clock time, and
gets back battery setpoints and PV limits. `hubctl sim` and `hubctl run` call
this same function. The data it works on is in `hubctl.core.types`.

Sign convention (SCENARIOS.md): grid + import, battery + discharge, PV >= 0.

`step` runs these stages in order; each is a pure function of the snapshot, the
last state, the parameters and the values of the stages before it, and returns
a small frozen value:

1. **Limits in force** (`limits_now`): the configured limits for the park and
   each company (`hubctl.core.limits`), lowered (never raised) by operators.
2. **Stale meter = unsafe** (`stale_meters`). A company grid reading (or the
   park meter of a shared connection, where the caps are held: `Snapshot.park_meter`)
   that is missing or older than `stale_after_s` puts the controller in fail-safe
   (`hubctl.core.failsafe`): batteries hold 0 kW (no charging from the grid,
   no export of stored energy) and PV is limited so that export cannot pass
   any cap even with zero load. The same rule, applied to the tightest export
   cap the configuration can put in force, gives the PV limit the devices fall
   back to when no controller writes (`fallback_pv_limits`).
3. **Observe** (`observe`): the measured operating point, and from it the
   learned sky (`PvIndex`), the history and the park's recent load.
4. **Caps** (`quarter_caps`): the park's limits less a safety margin
   (`margin_pct`, at least `margin_min_kw`). A quarter-hour budget tightens the
   target for the rest of the quarter after an excursion, so that the
   quarter-hour mean (what the grid operator bills) stays inside the cap while
   the per-second guard keeps excursions short.
5. **Forecast and plan** (`current_plan`): every `plan_every_s` the
   controller's own forecasts (`forecast_ahead`, `hubctl.core.forecast`) renew
   the rolling-horizon plan (`plan_ahead`, `hubctl.core.plan`): the energy band
   [floor, ceiling] of the batteries.
6. **Dispatch**, the park's battery power (`hubctl.core.park`): the
   uncontrolled net `N = load - available PV` is predicted for the next step
   (`predict_net`: the measured operating point, with the battery at its
   previous setpoint, which the device is ramping to: this compensates the
   measurement delay and the ramp, and avoids the classic PID overshoot); what
   the batteries can give (`battery_room`); the band's preference
   (`band_preference`: charge towards the floor, drain towards the ceiling,
   otherwise self-consumption with a soft deadband and no sign flipping on
   small imbalances), clipped to the interval the caps allow `[N - I, N + E]`,
   then to what the batteries can give (`park_total`).
7. **Split** over the companies (`hubctl.core.dispatch.split_park`): battery
   power is spread over the batteries so that their states of charge converge
   (fair use of every company's battery); what the batteries cannot absorb is
   curtailed, shared over the inverters in proportion to their output.
8. **Own caps** (`hubctl.core.dispatch.own_caps`): a company with its own caps
   is corrected with its own battery and PV, operators' manual battery modes
   are applied, and the park total is then re-balanced over the others. (It
   corrects the split, so it runs after it.)
9. **Outcome** (`outcome`): the absolute PV limits, the decision and the next
   state. A limit is set as an absolute power, so it is right even when the
   available PV is unknown (a curtailed inverter does not show what it could
   give). The decision also reports the available PV as the controller sees it
   (`hubctl.core.park.pv_available`: the readings, the learned clear-sky model
   where a limit holds an inverter) and the PV curtailed by that estimate, which
   the gateway's ledger records as an estimate (docs/reports.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubctl.core.dispatch import curtail_reach, own_caps, pv_limits_of, split_park
from hubctl.core.failsafe import failsafe_decision
from hubctl.core.forecast import forecast, with_common_load
from hubctl.core.limits import NO_LIMITS, LimitsInForce, with_operator
from hubctl.core.park import (
    CURTAILED_TOL_FRAC,
    band_preference,
    battery_room,
    park_total,
    predict_net,
    pv_available,
)
from hubctl.core.plan import BatteryPool, Plan, make_plan
from hubctl.core.quarters import QUARTER_S
from hubctl.core.solar import clear_sky_shape_minute
from hubctl.core.types import NO_OVERRIDES, Decision, QuarterBudget, State, cap_less_margin

if TYPE_CHECKING:
    from hubctl.core.dispatch import OwnCaps
    from hubctl.core.forecast import Forecast, PvIndex, RecentLoad
    from hubctl.core.history import History
    from hubctl.core.park import BatteryRoom, NetPrediction, Preference
    from hubctl.core.types import CompanyParams, CompanyReading, Overrides, Params, PvAvailable, Snapshot


def step(snap: Snapshot, state: State, params: Params) -> tuple[Decision, State]:
    """One control decision. Pure: same inputs, same outputs. The stages: see the module docstring."""
    ts = snap.ts_utc
    park_lim, comp_lim = limits_now(params, ts, snap.overrides)
    stale = stale_meters(snap, params)
    if stale:
        return failsafe_decision(
            snap, state, params, park_lim, comp_lim, "grid meter stale: " + ", ".join(stale)
        )
    obs = observe(snap, state, params)
    caps = quarter_caps(params, park_lim, sum(obs.grid) + obs.common_kw, state.budget, ts, obs.dt_s)
    plan = current_plan(snap, state, obs, params)
    pred = predict_net(obs, state, params)
    room = battery_room(snap, state, obs, params)
    pref = band_preference(state, params, comp_lim, pred, room, plan.floor_kwh, plan.ceiling_kwh)
    total = park_total(pref, pred, room, caps.import_kw, caps.export_kw)
    shares = split_park(params.companies, total, pred, room, caps.export_kw)
    ramps = (curtail_reach(params.companies, pred.avail, obs.pv, obs.dt_s), state.battery_kw)
    held = own_caps(
        params, snap.overrides, comp_lim, pred, room, shares, caps.import_kw, caps.export_kw, ramps
    )
    available = pv_available(obs, [r.pv_kw for r in snap.companies], state, params)
    return outcome(
        snap, params, obs, pred, room, pref, held, caps.budget, plan, (park_lim, comp_lim), available
    )


def limits_now(params: Params, ts: float, ov: Overrides) -> tuple[LimitsInForce, dict[str, LimitsInForce]]:
    """Limits in force: the configured ones, lowered (never raised) by operator limits."""
    park_lim, comp_lim = params.limits.at(ts)
    if ov.park_import_kw is not None or ov.park_export_kw is not None:
        park_lim = with_operator(park_lim, ov.park_import_kw, ov.park_export_kw)
    if ov.company_import_kw or ov.company_export_kw:
        comp_lim = dict(comp_lim)
        for cid in set(ov.company_import_kw) | set(ov.company_export_kw):
            comp_lim[cid] = with_operator(
                comp_lim.get(cid, NO_LIMITS), ov.company_import_kw.get(cid), ov.company_export_kw.get(cid)
            )
    return park_lim, comp_lim


def stale_meters(snap: Snapshot, params: Params) -> tuple[str, ...]:
    """The companies whose grid meter is missing, not finite or older than `stale_after_s`, and "park
    meter" for a shared connection's meter in that state: the caps are held on it, so without it the
    park is as unsafe as without a company's meter (the common loads it shows are not seen otherwise)."""
    stale = tuple(
        c.id
        for c, r in zip(params.companies, snap.companies, strict=True)
        if r.grid_kw is None or r.grid_age_s > params.stale_after_s or not math.isfinite(r.grid_kw)
    )
    pm = snap.park_meter
    if pm is not None and (snap.park_grid_kw() is None or pm.age_s > params.stale_after_s):
        stale += ("park meter",)
    return stale


@dataclass(frozen=True, slots=True)
class Observation:
    """The measured operating point of one cycle (kW, per company in config order) and what is learned
    from it."""

    dt_s: float  # since the last cycle, within [1 ms, 60 s]; 1 s on the first
    grid: tuple[float, ...]
    pv: tuple[float, ...]  # as read (0 where missing or no PV); the sky is learned from the readings only
    bat_meas: tuple[float, ...]
    load: tuple[float, ...]
    pv_net: tuple[float, ...]  # the least PV that explains the export the grid meter shows
    curtailed: tuple[bool, ...]  # inverters held by their limit (their available power is unknown)
    shape: float  # clear-sky shape of the sun this minute
    lag_s: float  # age of the oldest grid reading (the park meter's too)
    pv_index: PvIndex
    history: History
    recent: RecentLoad
    # the park meter less the companies' meters (common loads and losses at a shared connection, +
    # import); 0 on a group contract. Not a company's: it is added to the park's net, not learned
    common_kw: float = 0.0
    # per company, how far the battery power the grid meter saw may lie above (+) and below (-) the
    # battery reading (kW >= 0 each): the last setpoint less the reading where the reading is
    # behind the meter (`CompanyReading.battery_behind`), else 0
    bat_unseen_up: tuple[float, ...] = ()
    bat_unseen_down: tuple[float, ...] = ()


def observe(snap: Snapshot, state: State, params: Params) -> Observation:
    """The operating point from the snapshot; the sky, the history and the recent load updated with it."""
    ts = snap.ts_utc
    comps = params.companies
    dt_s = 1.0 if state.last_ts is None else max(1e-3, min(ts - state.last_ts, 60.0))
    grid = [r.grid_kw or 0.0 for r in snap.companies]
    pv = [
        r.pv_kw if (r.pv_kw is not None and c.pv_peak_kw > 0) else 0.0
        for c, r in zip(comps, snap.companies, strict=True)
    ]
    bat_meas = [
        r.battery_kw if (r.battery_kw is not None and c.battery) else 0.0
        for c, r in zip(comps, snap.companies, strict=True)
    ]
    load = [max(0.0, g + p + b) for g, p, b in zip(grid, pv, bat_meas, strict=True)]
    # a battery reading behind the meter: the meter saw the battery somewhere between the reading
    # and the setpoint written since (the first cycle has written none)
    unseen = [
        (s - b) if (r.battery_behind and c.battery and state.last_ts is not None) else 0.0
        for c, r, s, b in zip(comps, snap.companies, state.battery_kw, bat_meas, strict=True)
    ]
    # the grid meter is the truth for the caps: a PV reading that is missing (an inverter that has
    # not answered yet) or lags the meter must not hide export. Where the meter shows more export
    # than the readings explain, take the least PV that explains it (load 0), so that the net
    # (`hubctl.core.park.predict_net`) is never above the meter's grid with the battery taken out (a
    # company without PV: the net alone). `pv` stays as read for learning the sky.
    pv_net = [max(p, -(g + b)) for g, p, b in zip(grid, pv, bat_meas, strict=True)]
    curtailed = tuple(
        lim is not None and c.pv_peak_kw > 0 and p >= lim - CURTAILED_TOL_FRAC * c.pv_peak_kw
        for c, p, lim in zip(comps, pv, state.pv_limit_kw, strict=True)
    )
    shape = clear_sky_shape_minute(int(ts // 60), params.lat, params.lon)
    return Observation(
        dt_s,
        tuple(grid),
        tuple(pv),
        tuple(bat_meas),
        tuple(load),
        tuple(pv_net),
        curtailed,
        shape,
        max([r.grid_age_s for r in snap.companies] + ([snap.park_meter.age_s] if snap.park_meter else [])),
        # the sky is learned from the readings there are: a missing one is no reading of a dark sky
        state.pv_index.update(
            shape, tuple(r.pv_kw for r in snap.companies), params.pv_peaks_kw, curtailed, dt_s
        ),
        state.history.observe(ts, tuple(load), tuple(pv), dt_s),
        state.recent.add(ts, sum(load)),
        snap.common_kw() or 0.0,  # not None here: a stale park meter is fail-safe before this
        tuple(max(0.0, u) for u in unseen),
        tuple(max(0.0, -u) for u in unseen),
    )


@dataclass(frozen=True, slots=True)
class Caps:
    """The park's caps this cycle (kW, less the margin, tightened by the quarter-hour budget)."""

    budget: QuarterBudget
    import_kw: float  # inf: none
    export_kw: float


def quarter_caps(
    params: Params, park_lim: LimitsInForce, park_grid: float, budget: QuarterBudget, ts: float, dt_s: float
) -> Caps:
    """The park caps less margin; after an excursion, tightened so that the quarter-hour mean stays
    inside the cap (the excess so far is made up over what is left of the quarter, at most half the cap).

    Consistent with the one quarter-hour verdict (`hubctl.core.quarters`: mean power against mean cap,
    over beyond 1 W): the budget integrates `grid - cap in force`, which at the quarter's end is
    `(mean power - mean cap) * 900 s`, the verdict's own quantity; it tightens as soon as that is above
    0 (stricter than the verdict's 1 W). A cycle without a cap resets it: a quarter whose cap was not in
    force throughout has no mean cap and is not judged on it."""
    imp_cap = cap_less_margin(park_lim.import_kw, params)
    exp_cap = cap_less_margin(park_lim.export_kw, params)
    quarter = int(ts // QUARTER_S)
    budget = budget if budget.quarter == quarter else QuarterBudget(quarter, 0.0, 0.0)
    h = dt_s / 3600.0
    budget = QuarterBudget(
        quarter,
        budget.import_excess_kwh + (park_grid - park_lim.import_kw) * h
        if park_lim.import_kw is not None
        else 0.0,
        budget.export_excess_kwh + (-park_grid - park_lim.export_kw) * h
        if park_lim.export_kw is not None
        else 0.0,
    )
    remaining_s = max(QUARTER_S - (ts - quarter * QUARTER_S), 30.0)
    if budget.import_excess_kwh > 0 and math.isfinite(imp_cap):
        imp_cap = max(0.5 * imp_cap, imp_cap - budget.import_excess_kwh * 3600 / remaining_s)
    if budget.export_excess_kwh > 0 and math.isfinite(exp_cap):
        exp_cap = max(0.5 * exp_cap, exp_cap - budget.export_excess_kwh * 3600 / remaining_s)
    return Caps(budget, imp_cap, exp_cap)


@dataclass(frozen=True, slots=True)
class PlanNow:
    """The plan in force and its energy band for the batteries now (kWh)."""

    plan: Plan
    floor_kwh: float
    ceiling_kwh: float


def current_plan(snap: Snapshot, state: State, obs: Observation, params: Params) -> PlanNow:
    """The last plan, or a new one from a new forecast every `plan_every_s` (and on the first cycle)."""
    plan = state.plan
    ts = snap.ts_utc
    if plan is None or ts - plan.ts_utc >= params.plan_every_s:
        fc = forecast_ahead(ts, obs, params)
        plan = plan_ahead(ts, fc, params, snap.overrides, stored_kwh(params.companies, snap.companies))
    floor_kwh, ceiling_kwh = plan.band_at(ts)
    return PlanNow(plan, floor_kwh, ceiling_kwh)


def _plan_steps(params: Params) -> int:
    return max(1, int(params.horizon_h * 3600 / params.plan_step_s))


def forecast_ahead(ts: float, obs: Observation, params: Params) -> Forecast:
    """The load and PV forecast over the plan's horizon, from what this cycle's observation knows (and
    the common load at a shared connection, `with_common_load`)."""
    fc = forecast(
        ts,
        _plan_steps(params),
        params.plan_step_s,
        obs.recent,
        obs.history,
        obs.pv_index,
        params.pv_peaks_kw,
        params.lat,
        params.lon,
        params.ramp_windows,
    )
    return with_common_load(fc, obs.common_kw)


def plan_ahead(
    ts: float,
    fc: Forecast,
    params: Params,
    ov: Overrides = NO_OVERRIDES,
    stored_kwh: float | None = None,
) -> Plan:
    """The plan over the forecast's steps, with the park caps each step will have (operator limits held)."""
    steps = _plan_steps(params)
    imp, exp, reduced = [], [], []
    for j in range(steps):
        park, _ = limits_now(params, ts + (j + 0.5) * params.plan_step_s, ov)  # operator limits held
        imp.append(cap_less_margin(park.import_kw, params))
        exp.append(cap_less_margin(park.export_kw, params))
        reduced.append(park.import_source not in {"contract", "none", "operator"})
    contract = params.contract_import_kw
    return make_plan(
        ts,
        params.plan_step_s,
        fc,
        imp,
        exp,
        reduced,
        math.inf if contract is None else contract,
        _pool(params),
        stored_kwh=stored_kwh,
    )


def _pool(params: Params, reserve: bool = True) -> BatteryPool:
    bats = [c.battery for c in params.companies if c.battery is not None]
    if not bats:
        return BatteryPool(0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    cap = sum(b.capacity_kwh for b in bats)
    eff = sum(b.efficiency * b.capacity_kwh for b in bats) / cap
    return BatteryPool(
        sum(b.e_min_kwh for b in bats),
        sum(b.e_max_kwh for b in bats),
        sum(b.max_charge_kw for b in bats),
        sum(b.max_discharge_kw for b in bats),
        eff,
        sum(b.capacity_kwh * b.reserve_soc_pct / 100.0 for b in bats) if reserve else 0.0,
    )


def stored_kwh(comps: tuple[CompanyParams, ...], readings: tuple[CompanyReading, ...]) -> float | None:
    """Energy the park's batteries hold (kWh); a battery without a state of charge counts at its minimum."""
    total, seen = 0.0, False
    for c, r in zip(comps, readings, strict=True):
        b = c.battery
        if b is None:
            continue
        if r.soc_pct is None or not math.isfinite(r.soc_pct):
            total += b.e_min_kwh
        else:
            total += b.capacity_kwh * r.soc_pct / 100.0
            seen = True
    return total if seen else None


def outcome(
    snap: Snapshot,
    params: Params,
    obs: Observation,
    pred: NetPrediction,
    room: BatteryRoom,
    pref: Preference,
    held: OwnCaps,
    budget: QuarterBudget,
    plan: PlanNow,
    limits: tuple[LimitsInForce, dict[str, LimitsInForce]],
    available: PvAvailable,
) -> tuple[Decision, State]:
    """The absolute PV limits, the decision (with the available PV as the controller sees it,
    `hubctl.core.park.pv_available`) and the state the next cycle starts from."""
    comps = params.companies
    bat = held.battery_kw
    park_lim, comp_lim = limits
    pv_limits = tuple(pv_limits_of(comps, pred.avail, held.curtail_kw, obs.curtailed))
    setpoints = tuple(bat[i] if comps[i].battery else None for i in range(len(comps)))
    decision = Decision(
        setpoints,
        pv_limits,
        "normal",
        park_lim,
        comp_lim,
        plan.floor_kwh,
        plan.ceiling_kwh,
        held.reason,
        available,
    )
    new_state = State(
        bat,
        pv_limits,
        obs.history,
        obs.recent,
        obs.pv_index,
        plan.plan,
        budget,
        snap.ts_utc,
        pref.mode,
        pred.trend_net,
        pred.slope,
        room.short_ch,
        room.short_dis,
        obs.curtailed,
    )
    return decision, new_state
