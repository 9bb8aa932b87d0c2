"""The split of the park's decision over the companies: batteries, PV curtailment, own caps, manual modes.

What it is: the last dispatch stages of `hubctl.core.control.step`, in the order it runs them:
- `split_park`: the park battery power spread over the batteries so that their states of charge
  converge (`spread`, on water filling: `split`), and what the batteries cannot absorb curtailed
  over the inverters in proportion to their output;
- `own_caps`: the corrections for companies' own caps (`hold_own_caps`) and operators' manual
  battery modes (`apply_manual_modes`), then the park caps held again over the other companies
  (`rebalance_park`), manual charging giving way to the park's import cap (`yield_manual_to_caps`);
and the absolute PV limits (`pv_limits_of`) and the count of cycles a battery did not follow its
setpoint (`follow_check`). Each returns new values; none changes what it is given. Pure, no I/O
(the rules of `hubctl.core`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubctl.core.types import BatteryMode, cap_less_margin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.core.limits import LimitsInForce
    from hubctl.core.park import BatteryRoom, NetPrediction, ParkTotal
    from hubctl.core.types import CompanyParams, Overrides, Params, State

FOLLOW_TOL_FRAC = 0.02  # a battery more than 2 % of its power (+1 kW) short of its setpoint ...
FOLLOW_CYCLES = 3  # ... this many cycles in a row is held to what it gives


@dataclass(frozen=True, slots=True)
class CompanyShares:
    """The park's decision per company: battery power (kW, + discharge) and PV to curtail (kW >= 0)."""

    battery_kw: tuple[float, ...]
    curtail_kw: tuple[float, ...]
    reason: str


def split_park(
    comps: tuple[CompanyParams, ...], total: ParkTotal, pred: NetPrediction, room: BatteryRoom, exp_cap: float
) -> CompanyShares:
    """Spread the park battery power over the batteries (SoC-fair; below operators' reserves only what a
    cap calls for), and curtail what the batteries cannot absorb of the export over the cap."""
    n = len(comps)
    reason = total.reason
    bat = spread(min(total.battery_kw, room.total_dis_free), comps, room.energy, room.dis_free, room.ch_cap)
    if total.battery_kw > room.total_dis_free:  # a cap calls for energy below operators' reserves
        below = [d - f for d, f in zip(room.dis_cap, room.dis_free, strict=True)]
        for i, x in enumerate(split(total.battery_kw - room.total_dis_free, below, below)):
            bat[i] += x
    curt = [0.0] * n
    export_over = -(pred.net_lo - total.battery_kw) - exp_cap
    if export_over > 1e-6:
        curt = split(export_over, pred.avail, pred.avail)
        reason = "curtailing PV: export cap with batteries full or at full power"
    return CompanyShares(tuple(bat), tuple(curt), reason)


@dataclass(frozen=True, slots=True)
class OwnCaps:
    """The shares corrected for companies' own caps and manual battery modes, the park caps held again."""

    battery_kw: tuple[float, ...]
    curtail_kw: tuple[float, ...]
    manual: tuple[str, ...]  # companies whose battery is in a manual mode
    reason: str


def own_caps(
    params: Params,
    ov: Overrides,
    comp_lim: dict[str, LimitsInForce],
    pred: NetPrediction,
    room: BatteryRoom,
    shares: CompanyShares,
    imp_cap: float,
    exp_cap: float,
    ramps: tuple[Sequence[float], Sequence[float]] | None = None,
) -> OwnCaps:
    """Own caps of companies and manual battery modes, then the park total again over the others.
    `ramps`: the curtailment each company's PV can reach by the next cycle (`curtail_reach`) and the
    batteries' last setpoints; a manual battery waits for PV (`yield_manual_to_ramps`)."""
    comps = params.companies
    # the caps narrowed by where the net is heading, and by the common load at a shared connection:
    # the stages below sum the companies' nets alone
    trend_imp_cap = imp_cap - (pred.net_hi - pred.companies_net)
    trend_exp_cap = exp_cap + (pred.net_lo - pred.companies_net)
    bat, curt, reason = shares.battery_kw, shares.curtail_kw, shares.reason
    manual: tuple[str, ...] = ()
    if comp_lim:
        bat, curt = hold_own_caps(
            params, comp_lim, pred.net, pred.avail, room.dis_cap, room.ch_cap, bat, curt
        )
    if ov.battery:
        bat, manual = apply_manual_modes(params, ov, comp_lim, pred.net, room.dis_cap, room.ch_cap, bat, curt)
        if manual:
            reason += "; manual battery mode: " + ", ".join(manual)
    if comp_lim or manual:
        fixed = frozenset(manual)
        bat, curt = rebalance_park(
            comps,
            comp_lim,
            pred.net,
            pred.avail,
            room.dis_cap,
            room.ch_cap,
            bat,
            curt,
            trend_imp_cap,
            trend_exp_cap,
            fixed,
        )
        bat = yield_manual_to_caps(comps, manual, pred.net, bat, curt, trend_imp_cap)
        if manual:
            bat, curt = yield_manual_to_export_cap(
                comps, manual, pred.net, pred.avail, bat, curt, trend_exp_cap
            )
        if manual and ramps is not None:
            wanted, bat = bat, yield_manual_to_ramps(comps, manual, bat, curt, *ramps)
            if bat != wanted:
                reason += " (held back while PV ramps down to the export cap)"
    return OwnCaps(bat, curt, manual, reason)


def split(total: float, caps: Sequence[float], weights: Sequence[float]) -> list[float]:
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


def spread(
    total: float,
    comps: tuple[CompanyParams, ...],
    energy: Sequence[float],
    dis_cap: Sequence[float],
    ch_cap: Sequence[float],
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
        return split(total, dis_cap, weights)
    return [-x for x in split(-total, ch_cap, weights)]


def hold_own_caps(
    params: Params,
    comp_lim: dict[str, LimitsInForce],
    net: Sequence[float],
    avail: Sequence[float],
    dis_cap: Sequence[float],
    ch_cap: Sequence[float],
    bat_in: Sequence[float],
    curt_in: Sequence[float],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Correct companies with own caps with their own battery and PV: the new battery powers and
    curtailments."""
    bat, curt = list(bat_in), list(curt_in)
    for i, c in enumerate(params.companies):
        lim = comp_lim.get(c.id)
        if lim is None:
            continue
        g = net[i] + curt[i] - bat[i]
        imp, exp = cap_less_margin(lim.import_kw, params), cap_less_margin(lim.export_kw, params)
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
    return tuple(bat), tuple(curt)


def rebalance_park(
    comps: tuple[CompanyParams, ...],
    comp_lim: dict[str, LimitsInForce],
    net: Sequence[float],
    avail: Sequence[float],
    dis_cap: Sequence[float],
    ch_cap: Sequence[float],
    bat_in: Sequence[float],
    curt_in: Sequence[float],
    imp_cap: float,
    exp_cap: float,
    fixed: frozenset[str] = frozenset(),
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """After own-cap corrections, hold the park caps with the companies that have no own caps: the
    new battery powers and curtailments.

    The caps passed in are already narrowed by the trend the park's net is following."""
    n = len(comps)
    bat, curt = list(bat_in), list(curt_in)
    free = [c.id not in comp_lim and c.id not in fixed for c in comps]
    g_park = sum(net[i] + curt[i] - bat[i] for i in range(n))
    if g_park > imp_cap + 1e-6:
        room = [max(0.0, dis_cap[i] - bat[i]) if free[i] else 0.0 for i in range(n)]
        for i, x in enumerate(split(g_park - imp_cap, room, room)):
            bat[i] += x
    elif g_park < -exp_cap - 1e-6:
        need = -exp_cap - g_park
        room = [max(0.0, ch_cap[i] + bat[i]) if free[i] else 0.0 for i in range(n)]
        extra = split(need, room, room)
        for i, x in enumerate(extra):
            bat[i] -= x
        need -= sum(extra)
        if need > 1e-6:
            left = [avail[i] - curt[i] if free[i] else 0.0 for i in range(n)]
            for i, x in enumerate(split(need, left, left)):
                curt[i] += x
    return tuple(bat), tuple(curt)


def pv_limits_of(
    comps: tuple[CompanyParams, ...],
    avail: Sequence[float],
    curt: Sequence[float],
    curtailed: tuple[bool, ...],
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


def apply_manual_modes(
    params: Params,
    ov: Overrides,
    comp_lim: dict[str, LimitsInForce],
    net: Sequence[float],
    dis_cap: Sequence[float],
    ch_cap: Sequence[float],
    bat_in: Sequence[float],
    curt: Sequence[float],
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Set batteries in a manual mode, within what the device and its company's own caps allow.
    Returns the new battery powers and the ids of the companies whose battery is in a manual mode."""
    bat = list(bat_in)
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
            imp, exp = cap_less_margin(own.import_kw, params), cap_less_margin(own.export_kw, params)
            if g > imp:
                want = min(dis_cap[i], want + (g - imp))
            elif g < -exp:
                want = max(-ch_cap[i], want - (-exp - g))
        bat[i] = want
        manual.append(c.id)
    return tuple(bat), tuple(manual)


def curtail_reach(
    comps: tuple[CompanyParams, ...], avail: Sequence[float], pv_meas: Sequence[float], dt_s: float
) -> tuple[float, ...]:
    """How much each company's PV can be curtailed by the next cycle (kW): what it gives up now (its
    available power less what it gives) and what its inverters ramp down in one more step."""
    return tuple(
        max(0.0, a - p) + c.pv_ramp_kw_per_s * dt_s for c, a, p in zip(comps, avail, pv_meas, strict=True)
    )


def yield_manual_to_ramps(
    comps: tuple[CompanyParams, ...],
    manual: Sequence[str],
    bat_in: Sequence[float],
    curt: Sequence[float],
    reach: Sequence[float],
    prev_kw: Sequence[float],
) -> tuple[float, ...]:
    """A manual battery moves towards export no faster than PV can make room for it: the
    curtailment the inverters cannot reach by the next cycle (`curtail_reach`) would be export over
    the cap, so the manual batteries give that much less, never going further back than where they
    were (`prev_kw`: a battery that charged to hold the cap keeps charging until PV is down). As the
    inverters come down the manual power follows them, cycle by cycle: it is ramped at the pace PV
    follows (10 %/s of peak by default), never ahead of it. Returns the new battery powers."""
    bat = list(bat_in)
    short = sum(max(0.0, c - r) for c, r in zip(curt, reach, strict=True))
    for i, c in enumerate(comps):
        if short <= 1e-6:
            break
        if c.id in manual:
            back = min(max(0.0, bat[i] - min(prev_kw[i], bat[i])), short)
            bat[i] -= back
            short -= back
    return tuple(bat)


def yield_manual_to_export_cap(
    comps: tuple[CompanyParams, ...],
    manual: Sequence[str],
    net: Sequence[float],
    avail: Sequence[float],
    bat_in: Sequence[float],
    curt_in: Sequence[float],
    exp_cap: float,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """If the park still exports over its cap once the other companies are curtailed, the manual
    companies' own PV is curtailed and then their manual discharge gives way: the cap wins. Returns
    the new battery powers and curtailments."""
    bat, curt = list(bat_in), list(curt_in)
    over = -exp_cap - sum(net[i] + curt[i] - bat[i] for i in range(len(comps)))
    for i, c in enumerate(comps):
        if over > 1e-6 and c.id in manual:
            more = min(max(0.0, avail[i] - curt[i]), over)
            curt[i] += more
            over -= more
    for i, c in enumerate(comps):
        if over > 1e-6 and c.id in manual and bat[i] > 0:
            back = min(bat[i], over)
            bat[i] -= back
            over -= back
    return tuple(bat), tuple(curt)


def yield_manual_to_caps(
    comps: tuple[CompanyParams, ...],
    manual: Sequence[str],
    net: Sequence[float],
    bat_in: Sequence[float],
    curt: Sequence[float],
    imp_cap: float,
) -> tuple[float, ...]:
    """If the park still imports over its cap, manual charging gives way: the cap wins. Returns the
    new battery powers."""
    bat = list(bat_in)
    over = sum(net[i] + curt[i] - bat[i] for i in range(len(comps))) - imp_cap
    for i, c in enumerate(comps):
        if over <= 1e-6:
            break
        if c.id in manual and bat[i] < 0:
            back = min(-bat[i], over)
            bat[i] += back
            over -= back
    return tuple(bat)


def follow_check(
    comps: tuple[CompanyParams, ...], state: State, bat_meas: Sequence[float]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Count the cycles in a row each battery gave clearly less than asked, per direction."""
    n = len(comps)
    prev_ch = state.short_charge or (0,) * n
    prev_dis = state.short_discharge or (0,) * n
    short_ch, short_dis = [0] * n, [0] * n
    for i, c in enumerate(comps):
        if c.battery is None:
            continue
        tol = FOLLOW_TOL_FRAC * max(c.battery.max_charge_kw, c.battery.max_discharge_kw) + 1.0
        asked = state.battery_kw[i]
        # once held, a battery stays held until it follows the probe above what it gave
        gap_ch = tol / 2 if prev_ch[i] >= FOLLOW_CYCLES else tol
        gap_dis = tol / 2 if prev_dis[i] >= FOLLOW_CYCLES else tol
        if asked < -tol / 2 and bat_meas[i] > asked + gap_ch:
            short_ch[i] = prev_ch[i] + 1
        if asked > tol / 2 and bat_meas[i] < asked - gap_dis:
            short_dis[i] = prev_dis[i] + 1
    return tuple(short_ch), tuple(short_dis)
