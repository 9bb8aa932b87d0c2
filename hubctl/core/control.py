"""The control core: one pure decision per cycle, `step(snapshot, state, params) -> (decision, state)`.

No I/O, no clock reads, no logging: the caller passes a frozen `Snapshot` of
what the gateway measured (possibly delayed) and the wall-clock time, and
gets back battery setpoints and PV limits. `hubctl sim` and `hubctl run` call
this same function.

Sign convention (SCENARIOS.md): grid + import, battery + discharge, PV >= 0.

Each cycle
1. **Limits** in force now for the park and each company (`hubctl.limits`),
   less a safety margin (`margin_pct`, at least `margin_min_kw`). A quarter-hour
   budget tightens the target for the rest of the quarter after an excursion,
   so that the quarter-hour mean (what the grid operator bills) stays inside
   the cap while the per-second guard keeps excursions short.
2. **Stale meter = unsafe.** A company grid reading that is missing or older
   than `stale_after_s` puts the controller in fail-safe: batteries hold
   0 kW (no charging from the grid, no export of stored energy) and PV is
   limited so that export cannot pass any cap even with zero load. The same
   rule, applied to the tightest export cap the configuration can put in
   force, gives the PV limit the devices fall back to when no controller
   writes (`fallback_pv_limits`, written to the devices by `hubctl.service`).
3. **Plan**: every `plan_every_s` the rolling-horizon plan (`hubctl.plan`)
   renews the energy band [floor, ceiling] of the batteries from the
   controller's own forecasts (`hubctl.forecast`).
4. **Batteries first**: the uncontrolled net `N = load - available PV` is
   predicted for the next step (the measured operating point, with the
   battery at its previous setpoint, which the device is ramping to: this
   compensates the measurement delay and the ramp, and avoids the classic PID
   overshoot). The park battery power `B` is the band's preference (charge
   towards the floor, drain towards the ceiling, otherwise self-consumption
   with a soft deadband and no sign flipping on small imbalances), clipped
   to the interval the caps allow `[N - I, N + E]`, then to what the batteries
   can give.
5. **Then PV**: what the batteries cannot absorb is curtailed, shared over the
   inverters in proportion to their output. A limit is set as an absolute
   power, so it is right even when the available PV is unknown (a curtailed
   inverter does not show what it could give).
6. **Own caps**: a company with its own caps is corrected with its own
   battery and PV; the park total is then re-balanced over the others.
7. Battery power is spread over the batteries so that their states of charge
   converge (fair use of every company's battery).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from hubctl.core.forecast import PvIndex, RecentLoad, forecast
from hubctl.core.history import Calendar, History
from hubctl.core.limits import NO_LIMITS, LimitClock, LimitsInForce, with_operator
from hubctl.core.plan import BatteryPool, Plan, make_plan
from hubctl.core.solar import clear_sky_shape_minute

if TYPE_CHECKING:
    from collections.abc import Mapping
    from zoneinfo import ZoneInfo

    from hubctl.config.site import SiteConfig

_HYSTERESIS_FRAC = 0.01  # of the pool's energy span, around floor and ceiling
_FLIP_FRAC = 0.05  # a sign change of the park battery power needs at least this share of its power
_CURTAILED_TOL_FRAC = 0.01  # PV within 1 % of peak of its limit counts as held by the limit
_QUARTER_S = 900.0
_FOLLOW_TOL_FRAC = 0.02  # a battery more than 2 % of its power (+1 kW) short of its setpoint ...
_FOLLOW_CYCLES = 3  # ... this many cycles in a row is held to what it gives
_SELF_CONSUMPTION_GAIN = 0.5  # share of the self-consumption error corrected per cycle (caps: always all)
_CATCH_UP_S = 7200.0  # a battery above its ceiling drains the excess within this time at least
_DRAIN_HEADROOM_FRAC = 0.05  # of the export cap: discharging into export stops this much short of it
_FREE_SPEND_S = 3600.0  # self-consumption spends the energy above the floor no faster than over this long


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    min_soc_pct: float
    max_soc_pct: float
    efficiency: float
    reserve_soc_pct: float
    e_min_kwh: float = field(init=False)  # at min_soc_pct (kept as fields: read every cycle)
    e_max_kwh: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "e_min_kwh", self.capacity_kwh * self.min_soc_pct / 100.0)
        object.__setattr__(self, "e_max_kwh", self.capacity_kwh * self.max_soc_pct / 100.0)


@dataclass(frozen=True, slots=True)
class CompanyParams:
    id: str
    pv_peak_kw: float  # 0: no PV
    battery: BatteryParams | None
    has_caps: bool


@dataclass(frozen=True)
class Params:
    companies: tuple[CompanyParams, ...]
    limits: LimitClock = field(compare=False)
    lat: float
    lon: float
    margin_pct: float
    margin_min_kw: float
    stale_after_s: float
    plan_every_s: float
    plan_step_s: float
    horizon_h: float
    deadband_kw: float
    pv_prior_k: float
    contract_import_kw: float | None
    tz: ZoneInfo = field(compare=False)
    calendar: Calendar = field(compare=False)
    ramp_windows: tuple[tuple[int, int], ...] = ()  # local [start, end) s of day; see hubctl.forecast
    history_half_life_days: float = 21.0
    history_max_days: int = 400
    pv_peaks_kw: tuple[float, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pv_peaks_kw", tuple(c.pv_peak_kw for c in self.companies))

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Params:
        ctl = cfg.control
        companies = []
        for c in cfg.companies:
            bat = None
            if c.battery is not None:
                b = c.battery
                reserve = b.reserve_soc_pct if b.reserve_soc_pct is not None else ctl.default_reserve_soc_pct
                reserve = min(max(reserve, b.min_soc_pct), b.max_soc_pct)
                bat = BatteryParams(
                    b.capacity_kwh,
                    b.max_charge_kw,
                    b.max_discharge_kw,
                    b.min_soc_pct,
                    b.max_soc_pct,
                    b.efficiency,
                    reserve,
                )
            companies.append(CompanyParams(c.id, c.pv.peak_kw if c.pv else 0.0, bat, c.has_caps))
        limits = LimitClock(cfg.park, {c.id: c for c in cfg.companies}, cfg.tz)
        return cls(
            tuple(companies),
            limits,
            cfg.site.location.lat,
            cfg.site.location.lon,
            ctl.margin_pct,
            ctl.margin_min_kw,
            ctl.stale_after_s,
            ctl.plan_every_s,
            ctl.plan_step_s,
            ctl.horizon_h,
            ctl.deadband_kw,
            ctl.pv_clear_sky_ratio,
            cfg.park.import_limit_kw,
            cfg.tz,
            Calendar(ctl.holidays_country, ctl.holidays_subdivision, ctl.closed_dates),
            tuple((w.start_s, w.end_s) for w in ctl.ramp_windows),
            ctl.history_half_life_days,
            ctl.history_max_days,
        )

    def empty_history(self) -> History:
        return History.empty(
            [c.id for c in self.companies],
            self.tz,
            self.calendar,
            half_life_days=self.history_half_life_days,
            max_days=self.history_max_days,
        )

    def margin(self, cap_kw: float) -> float:
        return max(cap_kw * self.margin_pct / 100.0, self.margin_min_kw)


@dataclass(frozen=True, slots=True)
class CompanyReading:
    """What the gateway knows of one company; None = not available (never 0)."""

    grid_kw: float | None
    pv_kw: float | None = None
    battery_kw: float | None = None
    soc_pct: float | None = None
    grid_age_s: float = 0.0


class BatteryMode(StrEnum):
    AUTO = "auto"
    HOLD = "hold"
    CHARGE = "charge"
    DISCHARGE = "discharge"


@dataclass(frozen=True, slots=True)
class BatteryOverride:
    """An operator's manual battery mode. The caps still win: a manual charge that would take the
    park or the company over an import cap is reduced, a manual discharge over an export cap too."""

    mode: BatteryMode
    power_kw: float = 0.0  # >= 0, for charge and discharge


@dataclass(frozen=True, slots=True)
class Overrides:
    """What operators set (over MQTT), already validated and not expired. Limits may only lower a cap."""

    park_import_kw: float | None = None
    park_export_kw: float | None = None
    company_import_kw: Mapping[str, float] = field(default_factory=dict)
    company_export_kw: Mapping[str, float] = field(default_factory=dict)
    battery: Mapping[str, BatteryOverride] = field(default_factory=dict)  # by company id
    reserve_soc_pct: Mapping[str, float] = field(default_factory=dict)  # by company id


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class Snapshot:
    ts_utc: float  # wall-clock time of the cycle (limits, sun, quarter-hours)
    companies: tuple[CompanyReading, ...]  # in config order
    overrides: Overrides = NO_OVERRIDES


@dataclass(frozen=True, slots=True)
class Decision:
    battery_setpoint_kw: tuple[float | None, ...]  # None: company has no battery
    pv_limit_kw: tuple[float | None, ...]  # None: no limit
    mode: str  # "normal" | "failsafe"
    park_limits: LimitsInForce
    company_limits: dict[str, LimitsInForce]
    floor_kwh: float
    ceiling_kwh: float
    reason: str  # why the batteries/PV do what they do, for operators


@dataclass(frozen=True, slots=True)
class QuarterBudget:
    quarter: int  # UTC quarter number (ts // 900); real UTC offsets are whole quarters
    import_excess_kwh: float  # integral of (grid - import cap) so far, may be negative
    export_excess_kwh: float  # integral of (-grid - export cap) so far


@dataclass(frozen=True, slots=True)
class State:
    battery_kw: tuple[float, ...]  # last setpoints (0 where no battery)
    pv_limit_kw: tuple[float | None, ...]
    history: History  # quarter-hours per company and local day (persisted by the gateway)
    recent: RecentLoad  # the park's last day in 5-minute buckets
    pv_index: PvIndex
    plan: Plan | None
    budget: QuarterBudget
    last_ts: float | None
    band_mode: str  # "charge" | "drain" | "free"
    last_net_kw: tuple[float, ...] | None  # per company load - uncurtailed PV, last cycle (for the trend)
    last_slope_kw_per_s: float = 0.0
    # cycles in a row a battery gave clearly less than its setpoint (charging, discharging): a device-side
    # limit (a BMS SoC window, a derating) that the configuration does not know
    short_charge: tuple[int, ...] = ()
    short_discharge: tuple[int, ...] = ()

    @classmethod
    def initial(cls, params: Params, history: History | None = None) -> State:
        """The state of a controller that starts now, knowing `history` (an import, a reload)."""
        n = len(params.companies)
        return cls(
            (0.0,) * n,
            (None,) * n,
            history if history is not None else params.empty_history(),
            RecentLoad.empty(),
            PvIndex.prior(n, params.pv_prior_k),
            None,
            QuarterBudget(-1, 0.0, 0.0),
            None,
            "free",
            None,
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


def _cap(v: float | None, params: Params) -> float:
    return math.inf if v is None else max(0.0, v - params.margin(v))


def _limits_now(params: Params, ts: float, ov: Overrides) -> tuple[LimitsInForce, dict[str, LimitsInForce]]:
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


def _renew_plan(
    ts: float,
    state: State,
    params: Params,
    ov: Overrides = NO_OVERRIDES,
    stored_kwh: float | None = None,
) -> Plan:
    steps = max(1, int(params.horizon_h * 3600 / params.plan_step_s))
    peaks = params.pv_peaks_kw
    fc = forecast(
        ts,
        steps,
        params.plan_step_s,
        state.recent,
        state.history,
        state.pv_index,
        peaks,
        params.lat,
        params.lon,
        params.ramp_windows,
    )
    imp, exp, reduced = [], [], []
    for j in range(steps):
        park, _ = _limits_now(params, ts + (j + 0.5) * params.plan_step_s, ov)  # operator limits held
        imp.append(_cap(park.import_kw, params))
        exp.append(_cap(park.export_kw, params))
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
    park_room = _cap(park_export_kw, params)
    limits: list[float | None] = []
    for c, peak in zip(params.companies, peaks, strict=True):
        if peak <= 0:
            limits.append(None)
            continue
        lim = peak * min(1.0, park_room / total_peak) if math.isfinite(park_room) else peak
        own = company_export_kw.get(c.id)
        if own is not None:
            lim = min(lim, _cap(own, params))
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


def _failsafe(
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


def _split(total: float, caps: list[float], weights: list[float]) -> list[float]:
    """Share `total` (>= 0) over items with capacities `caps` in proportion to `weights` (water filling)."""
    out = [0.0] * len(caps)
    left = total
    active = [i for i, c in enumerate(caps) if c > 1e-9]
    while left > 1e-9 and active:
        wsum = sum(max(weights[i], 1e-6) for i in active)
        nxt = []
        given = 0.0
        for i in active:
            share = left * max(weights[i], 1e-6) / wsum
            room = caps[i] - out[i]
            take = min(share, room)
            out[i] += take
            given += take
            if caps[i] - out[i] > 1e-9:
                nxt.append(i)
        left -= given
        if given <= 1e-12:
            break
        active = nxt
    return out


def step(snap: Snapshot, state: State, params: Params) -> tuple[Decision, State]:
    """One control decision. Pure: same inputs, same outputs."""
    ts = snap.ts_utc
    comps = params.companies
    n = len(comps)
    park_lim, comp_lim = _limits_now(params, ts, snap.overrides)
    dt_s = 1.0 if state.last_ts is None else max(1e-3, min(ts - state.last_ts, 60.0))

    # 2. stale or missing grid meters: unsafe
    stale = [
        c.id
        for c, r in zip(comps, snap.companies, strict=True)
        if r.grid_kw is None or r.grid_age_s > params.stale_after_s or not math.isfinite(r.grid_kw)
    ]
    if stale:
        return _failsafe(snap, state, params, park_lim, comp_lim, "grid meter stale: " + ", ".join(stale))

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
    # the grid meter is the truth for the caps: a PV reading that is missing (an inverter that has
    # not answered yet) or lags the meter must not hide export. Where the meter shows more export
    # than the readings explain, take the least PV that explains it (load 0), so that the net below
    # is never above the meter's grid with the battery taken out (a company without PV: the net
    # alone). `pv` stays as read for learning the sky.
    pv_net = [max(p, -(g + b)) for g, p, b in zip(grid, pv, bat_meas, strict=True)]
    park_grid = sum(grid)

    # which inverters are held by their limit (their available power is unknown)
    curtailed = tuple(
        lim is not None and c.pv_peak_kw > 0 and p >= lim - _CURTAILED_TOL_FRAC * c.pv_peak_kw
        for c, p, lim in zip(comps, pv, state.pv_limit_kw, strict=True)
    )
    shape = clear_sky_shape_minute(int(ts // 60), params.lat, params.lon)
    peaks = params.pv_peaks_kw
    pv_index = state.pv_index.update(shape, tuple(pv), peaks, curtailed, dt_s)
    history = state.history.observe(ts, tuple(load), tuple(pv), dt_s)
    recent = state.recent.add(ts, sum(load))

    # 1. limits less margin, with the quarter-hour budget
    imp_cap = _cap(park_lim.import_kw, params)
    exp_cap = _cap(park_lim.export_kw, params)
    quarter = int(ts // _QUARTER_S)
    budget = state.budget if state.budget.quarter == quarter else QuarterBudget(quarter, 0.0, 0.0)
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
    remaining_s = max(_QUARTER_S - (ts - quarter * _QUARTER_S), 30.0)
    if budget.import_excess_kwh > 0 and math.isfinite(imp_cap):
        imp_cap = max(0.5 * imp_cap, imp_cap - budget.import_excess_kwh * 3600 / remaining_s)
    if budget.export_excess_kwh > 0 and math.isfinite(exp_cap):
        exp_cap = max(0.5 * exp_cap, exp_cap - budget.export_excess_kwh * 3600 / remaining_s)

    # 3. the plan
    plan = state.plan
    if plan is None or ts - plan.ts_utc >= params.plan_every_s:
        plan = _renew_plan(
            ts,
            replace(state, history=history, recent=recent, pv_index=pv_index),
            params,
            snap.overrides,
            _stored_kwh(comps, snap.companies),
        )
    floor_kwh, ceiling_kwh = plan.band_at(ts)

    # 4. predicted uncontrolled net for the next step
    avail = []
    for i, c in enumerate(comps):
        if c.pv_peak_kw <= 0:
            avail.append(0.0)
        elif curtailed[i]:
            model = c.pv_peak_kw * shape * pv_index.k_clear[i]
            avail.append(min(c.pv_peak_kw, max(pv[i] + _CURTAILED_TOL_FRAC * c.pv_peak_kw, model)))
        else:
            avail.append(pv[i])
    avail = [max(a, p) if c.pv_peak_kw > 0 else a for a, p, c in zip(avail, pv_net, comps, strict=True)]
    net = [min(ld - a, g + b) for ld, a, g, b in zip(load, avail, grid, bat_meas, strict=True)]
    park_net = sum(net)
    # the trend over the last cycle, for inverters whose output shows the sun (not held by a limit):
    # the meters are `lag` seconds old, so the caps are guarded against where the net is heading
    trend_net = tuple(ld - (0.0 if cut else p) for ld, p, cut in zip(load, pv, curtailed, strict=True))
    slope = 0.0
    if state.last_net_kw is not None and state.last_ts is not None:
        slope = (
            sum(
                (a - b)
                for a, b, cut, was in zip(
                    trend_net, state.last_net_kw, curtailed, state.pv_limit_kw, strict=True
                )
                if not cut or was is not None
            )
            / dt_s
        )
    # a ramp shows in two cycles running; a single jump (a machine switching) is not extrapolated
    trend = math.copysign(min(abs(slope), abs(state.last_slope_kw_per_s)), slope)
    if slope * state.last_slope_kw_per_s <= 0:
        trend = 0.0
    # extrapolated over the meters' age only: over the two more cycles a battery takes to show its
    # answer the live demo's ramps were met sooner, but noise in the slope (meters and batteries read
    # at different moments) was tripled too and set the batteries swinging (docs/control.md)
    lag_s = max(r.grid_age_s for r in snap.companies)
    net_hi = park_net + max(0.0, trend) * lag_s
    net_lo = park_net + min(0.0, trend) * lag_s

    # battery capabilities this step (energy-limited near the SoC limits)
    dis_cap = [0.0] * n
    ch_cap = [0.0] * n
    energy = [0.0] * n
    span = [0.0] * n
    for i, c in enumerate(comps):
        b = c.battery
        r = snap.companies[i]
        if b is None or r.soc_pct is None:
            continue
        e = b.capacity_kwh * r.soc_pct / 100.0
        energy[i] = e
        span[i] = b.e_max_kwh - b.e_min_kwh
        hours = max(dt_s, 1.0) / 3600.0
        dis_cap[i] = max(0.0, min(b.max_discharge_kw, (e - b.e_min_kwh) * b.efficiency / hours))
        ch_cap[i] = max(0.0, min(b.max_charge_kw, (b.e_max_kwh - e) / b.efficiency / hours))
    # a battery that does not follow its setpoint is taken at what it gives (plus a probe, so that
    # it is asked for more again): the caps are then held with the others and with PV
    short_ch, short_dis = _follow_check(comps, state, bat_meas)
    for i, c in enumerate(comps):
        if c.battery is None:
            continue
        probe = _FOLLOW_TOL_FRAC * max(c.battery.max_charge_kw, c.battery.max_discharge_kw) + 1.0
        if short_ch[i] >= _FOLLOW_CYCLES:
            ch_cap[i] = min(ch_cap[i], max(0.0, -bat_meas[i]) + probe)
        if short_dis[i] >= _FOLLOW_CYCLES:
            dis_cap[i] = min(dis_cap[i], max(0.0, bat_meas[i]) + probe)
    # an operator's reserve: discharge below it only when a cap calls for it
    dis_free = list(dis_cap)
    for i, c in enumerate(comps):
        res_pct = snap.overrides.reserve_soc_pct.get(c.id)
        if res_pct is not None and c.battery is not None:
            above = energy[i] - c.battery.capacity_kwh * res_pct / 100.0
            dis_free[i] = max(0.0, min(dis_cap[i], above * c.battery.efficiency * 3600.0 / max(dt_s, 1.0)))
    total_dis, total_ch = sum(dis_cap), sum(ch_cap)
    total_dis_free = sum(dis_free)
    stored = sum(energy)
    pool_span = sum(span)
    hyst = _HYSTERESIS_FRAC * pool_span
    # the band is planned for every battery; while one is not seen (down, no state of charge) the
    # others are held to their share of it, not to all of it: a battery that drops out of view
    # must not make the rest look empty and switch them from discharging to charging at once
    seen_cap = sum(
        c.battery.capacity_kwh
        for c, r in zip(comps, snap.companies, strict=True)
        if c.battery is not None and r.soc_pct is not None
    )
    all_cap = sum(c.battery.capacity_kwh for c in comps if c.battery is not None)
    seen_share = seen_cap / all_cap if all_cap > 0 else 1.0
    band_floor, band_ceiling = floor_kwh * seen_share, ceiling_kwh * seen_share

    # what own export caps will curtail anyway changes the park's surplus for self-consumption
    forced_curt = 0.0
    for i, c in enumerate(comps):
        own = comp_lim.get(c.id)
        if own is not None and own.export_kw is not None:
            forced_curt += max(0.0, -net[i] - _cap(own.export_kw, params) - ch_cap[i])
    park_net_sc = park_net + forced_curt

    # band preference with hysteresis
    mode = state.band_mode
    if stored < band_floor - hyst:
        mode = "charge"
    elif stored > band_ceiling + hyst:
        mode = "drain"
    elif (mode == "charge" and stored >= band_floor + hyst) or (mode == "drain" and stored <= band_ceiling):
        mode = "free"
    if mode == "charge":
        pref = -total_ch
        reason = "charging towards the floor for the caps ahead"
    elif mode == "drain":
        # behind the plan: catch up within `_CATCH_UP_S`, covering the park's own import first
        catch_up = (stored - band_ceiling) * 3600.0 / _CATCH_UP_S
        pref = min(total_dis, max(park_net_sc, catch_up))
        reason = "making room for the solar excess ahead"
    else:
        excess = max(0.0, abs(park_net_sc) - params.deadband_kw)
        pref = math.copysign(excess, park_net_sc)
        if pref > 0:
            # energy above the floor is free, but spent no faster than over `_FREE_SPEND_S`: a kWh
            # saves the same import now or later, and a forecast that was too kind finds some left
            pref = min(pref, max(0.0, stored - band_floor) * 3600.0 / _FREE_SPEND_S)
        if pref < 0 and stored >= band_ceiling:
            pref = 0.0
        # move half way each cycle: on a gateway the meters and batteries are read at slightly
        # different moments, and a full step on such a snapshot sets up a cycle-to-cycle swing
        prev = sum(state.battery_kw)
        pref = prev + _SELF_CONSUMPTION_GAIN * (pref - prev)
        reason = "self-consumption"
    pref = min(pref, total_dis_free)
    prev_total = sum(state.battery_kw)
    flip = _FLIP_FRAC * max(total_dis + total_ch, 1e-9) / 2
    if prev_total * pref < 0 and abs(pref) < flip:
        pref = 0.0

    # caps: N - B <= I  and  N - B >= -E
    b_lo = net_hi - imp_cap
    b_hi = net_lo + exp_cap
    # discharging while the park exports (draining for the sun ahead, covering a company's load) is
    # a choice: it stops a headroom short of the export cap, for the loads that fall and the clouds
    # that clear while the meters lag and the batteries follow. Holding a cap uses all of it.
    if pref > 0 and math.isfinite(exp_cap):
        pref = min(pref, max(0.0, b_hi - _DRAIN_HEADROOM_FRAC * exp_cap))
    total = min(max(pref, b_lo), b_hi)
    if total != pref:
        reason = "holding the park import cap" if total == b_lo else "holding the park export cap"
    total = min(max(total, -total_ch), total_dis)

    # 7. spread over batteries, SoC-fair; 5. curtail what the batteries cannot absorb
    bat = _spread(min(total, total_dis_free), comps, energy, dis_free, ch_cap)
    if total > total_dis_free:  # a cap calls for energy below operators' reserves
        below = [d - f for d, f in zip(dis_cap, dis_free, strict=True)]
        for i, x in enumerate(_split(total - total_dis_free, below, below)):
            bat[i] += x
    curt = [0.0] * n
    export_over = -(net_lo - total) - exp_cap
    if export_over > 1e-6:
        curt = _split(export_over, avail, avail)
        reason = "curtailing PV: export cap with batteries full or at full power"
    # 6. own caps of companies and manual battery modes, then the park total again over the others
    trend_imp_cap = imp_cap - (net_hi - park_net)  # the caps narrowed by where the net is heading
    trend_exp_cap = exp_cap + (net_lo - park_net)
    manual: list[str] = []
    if comp_lim:
        _hold_own_caps(params, comp_lim, net, avail, dis_cap, ch_cap, bat, curt)
    if snap.overrides.battery:
        manual = _apply_manual_modes(params, snap.overrides, comp_lim, net, dis_cap, ch_cap, bat, curt)
        if manual:
            reason += "; manual battery mode: " + ", ".join(manual)
    if comp_lim or manual:
        fixed = frozenset(manual)
        _rebalance_park(
            comps, comp_lim, net, avail, dis_cap, ch_cap, bat, curt, trend_imp_cap, trend_exp_cap, fixed
        )
        _yield_manual_to_caps(comps, manual, net, bat, curt, trend_imp_cap)
    pv_limits = _pv_limits(comps, avail, curt, curtailed)

    setpoints = tuple(bat[i] if comps[i].battery else None for i in range(n))
    decision = Decision(
        setpoints, tuple(pv_limits), "normal", park_lim, comp_lim, floor_kwh, ceiling_kwh, reason
    )
    new_state = State(
        tuple(bat),
        tuple(pv_limits),
        history,
        recent,
        pv_index,
        plan,
        budget,
        ts,
        mode,
        trend_net,
        slope,
        short_ch,
        short_dis,
    )
    return decision, new_state


def _stored_kwh(comps: tuple[CompanyParams, ...], readings: tuple[CompanyReading, ...]) -> float | None:
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


def _spread(
    total: float,
    comps: tuple[CompanyParams, ...],
    energy: list[float],
    dis_cap: list[float],
    ch_cap: list[float],
) -> list[float]:
    """Share the park battery power over the batteries so that their states of charge converge."""
    n = len(comps)
    if total == 0:
        return [0.0] * n
    weights = [0.0] * n
    for i, c in enumerate(comps):
        b = c.battery
        if b is None or b.e_max_kwh <= b.e_min_kwh:
            continue
        span = b.e_max_kwh - b.e_min_kwh
        if total > 0:
            weights[i] = (energy[i] - b.e_min_kwh) / span * dis_cap[i]
        else:
            weights[i] = (b.e_max_kwh - energy[i]) / span * ch_cap[i]
    if total > 0:
        return _split(total, dis_cap, weights)
    return [-x for x in _split(-total, ch_cap, weights)]


def _hold_own_caps(
    params: Params,
    comp_lim: dict[str, LimitsInForce],
    net: list[float],
    avail: list[float],
    dis_cap: list[float],
    ch_cap: list[float],
    bat: list[float],
    curt: list[float],
) -> None:
    """Correct companies with own caps with their own battery and PV (in place)."""
    for i, c in enumerate(params.companies):
        lim = comp_lim.get(c.id)
        if lim is None:
            continue
        g = net[i] + curt[i] - bat[i]
        imp, exp = _cap(lim.import_kw, params), _cap(lim.export_kw, params)
        if g > imp:
            more = max(0.0, min(g - imp, dis_cap[i] - bat[i]))
            bat[i] += more
            g -= more
            if g > imp and curt[i] > 0:
                curt[i] -= min(curt[i], g - imp)
        elif g < -exp:
            need = -exp - g
            more = max(0.0, min(need, ch_cap[i] + bat[i]))
            bat[i] -= more
            need -= more
            if need > 0:
                curt[i] = min(avail[i], curt[i] + need)


def _rebalance_park(
    comps: tuple[CompanyParams, ...],
    comp_lim: dict[str, LimitsInForce],
    net: list[float],
    avail: list[float],
    dis_cap: list[float],
    ch_cap: list[float],
    bat: list[float],
    curt: list[float],
    imp_cap: float,
    exp_cap: float,
    fixed: frozenset[str] = frozenset(),
) -> None:
    """After own-cap corrections, hold the park caps with the companies that have no own caps (in place).

    The caps passed in are already narrowed by the trend the park's net is following."""
    n = len(comps)
    free = [c.id not in comp_lim and c.id not in fixed for c in comps]
    g_park = sum(net[i] + curt[i] - bat[i] for i in range(n))
    if g_park > imp_cap + 1e-6:
        room = [max(0.0, dis_cap[i] - bat[i]) if free[i] else 0.0 for i in range(n)]
        for i, x in enumerate(_split(g_park - imp_cap, room, room)):
            bat[i] += x
    elif g_park < -exp_cap - 1e-6:
        need = -exp_cap - g_park
        room = [max(0.0, ch_cap[i] + bat[i]) if free[i] else 0.0 for i in range(n)]
        extra = _split(need, room, room)
        for i, x in enumerate(extra):
            bat[i] -= x
        need -= sum(extra)
        if need > 1e-6:
            left = [avail[i] - curt[i] if free[i] else 0.0 for i in range(n)]
            for i, x in enumerate(_split(need, left, left)):
                curt[i] += x


def _pv_limits(
    comps: tuple[CompanyParams, ...], avail: list[float], curt: list[float], curtailed: tuple[bool, ...]
) -> list[float | None]:
    """Absolute PV limits. A limit is kept while the inverter is held by it and raised step by step
    (never a jump to no limit, which would let the output ramp past the cap); released once the
    inverter runs below it."""
    out: list[float | None] = []
    for i, c in enumerate(comps):
        if c.pv_peak_kw <= 0:
            out.append(None)
        elif curt[i] > 1e-6:
            out.append(max(0.0, avail[i] - curt[i]))
        elif curtailed[i]:
            out.append(min(c.pv_peak_kw, avail[i]))
        else:
            out.append(None)
    return out


def _apply_manual_modes(
    params: Params,
    ov: Overrides,
    comp_lim: dict[str, LimitsInForce],
    net: list[float],
    dis_cap: list[float],
    ch_cap: list[float],
    bat: list[float],
    curt: list[float],
) -> list[str]:
    """Set batteries in a manual mode (in place), within what the device and its company's own caps allow.
    Returns the ids of the companies whose battery is in a manual mode."""
    manual = []
    for i, c in enumerate(params.companies):
        mode = ov.battery.get(c.id)
        if c.battery is None or mode is None or mode.mode is BatteryMode.AUTO:
            continue
        want = {
            BatteryMode.HOLD: 0.0,
            BatteryMode.CHARGE: -mode.power_kw,
            BatteryMode.DISCHARGE: mode.power_kw,
        }[mode.mode]
        want = min(max(want, -ch_cap[i]), dis_cap[i])
        own = comp_lim.get(c.id)
        if own is not None:  # the company's own connection stays within its caps
            g = net[i] + curt[i] - want
            imp, exp = _cap(own.import_kw, params), _cap(own.export_kw, params)
            if g > imp:
                want = min(dis_cap[i], want + (g - imp))
            elif g < -exp:
                want = max(-ch_cap[i], want - (-exp - g))
        bat[i] = want
        manual.append(c.id)
    return manual


def _yield_manual_to_caps(
    comps: tuple[CompanyParams, ...],
    manual: list[str],
    net: list[float],
    bat: list[float],
    curt: list[float],
    imp_cap: float,
) -> None:
    """If the park still imports over its cap, manual charging gives way (in place): the cap wins."""
    over = sum(net[i] + curt[i] - bat[i] for i in range(len(comps))) - imp_cap
    for i, c in enumerate(comps):
        if over <= 1e-6:
            break
        if c.id in manual and bat[i] < 0:
            back = min(-bat[i], over)
            bat[i] += back
            over -= back


def _follow_check(
    comps: tuple[CompanyParams, ...], state: State, bat_meas: list[float]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Count the cycles in a row each battery gave clearly less than asked, per direction."""
    n = len(comps)
    prev_ch = state.short_charge or (0,) * n
    prev_dis = state.short_discharge or (0,) * n
    short_ch, short_dis = [0] * n, [0] * n
    for i, c in enumerate(comps):
        if c.battery is None:
            continue
        tol = _FOLLOW_TOL_FRAC * max(c.battery.max_charge_kw, c.battery.max_discharge_kw) + 1.0
        asked = state.battery_kw[i]
        # once held, a battery stays held until it follows the probe above what it gave
        gap_ch = tol / 2 if prev_ch[i] >= _FOLLOW_CYCLES else tol
        gap_dis = tol / 2 if prev_dis[i] >= _FOLLOW_CYCLES else tol
        if asked < -tol / 2 and bat_meas[i] > asked + gap_ch:
            short_ch[i] = prev_ch[i] + 1
        if asked > tol / 2 and bat_meas[i] < asked - gap_dis:
            short_dis[i] = prev_dis[i] + 1
    return tuple(short_ch), tuple(short_dis)
