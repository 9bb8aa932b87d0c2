"""The park's battery power for one cycle: the dispatch stages of `hubctl.core.control.step`.

What it is, in the order `step` runs it:
- `predict_net`: the uncontrolled net `N = load - available PV` per company and for the park,
  predicted for the next step, and where it is heading (the trend over the meters' age);
- `pv_available` and `curtailed_pv_kw`: the available PV as the decision reports it (the
  inverters' readings, the learned clear-sky model where a limit holds them) and the PV that
  was curtailed by that estimate, for the ledger and the time series (docs/reports.md);
- `battery_room`: what each battery can give and take this step (energy-limited near the SoC
  limits, held to what it gives when it does not follow its setpoint, above operators' reserves);
- `band_preference`: what the plan's energy band prefers (charge towards the floor, drain towards
  the ceiling, otherwise self-consumption), with hysteresis;
- `park_total`: that preference clipped to what the park caps allow, then to what the batteries
  can give.
Each is a pure function returning a small frozen value. No I/O (the rules of `hubctl.core`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubctl.core.dispatch import FOLLOW_CYCLES, FOLLOW_TOL_FRAC, follow_check
from hubctl.core.types import BandMode, PvAvailable, cap_less_margin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.core.control import Observation
    from hubctl.core.limits import LimitsInForce
    from hubctl.core.types import Params, Snapshot, State

CURTAILED_TOL_FRAC = 0.01  # PV within 1 % of peak of its limit counts as held by the limit
_HYSTERESIS_FRAC = 0.01  # of the pool's energy span, around floor and ceiling
_FLIP_FRAC = 0.05  # a sign change of the park battery power needs at least this share of its power
_SELF_CONSUMPTION_GAIN = 0.5  # share of the self-consumption error corrected per cycle (caps: always all)
_CATCH_UP_S = 7200.0  # a battery above its ceiling drains the excess within this time at least
_DRAIN_HEADROOM_FRAC = 0.05  # of the export cap: discharging into export stops this much short of it
_FREE_SPEND_S = 3600.0  # self-consumption spends the energy above the floor no faster than over this long


@dataclass(frozen=True, slots=True)
class NetPrediction:
    """The uncontrolled net (kW, + import) per company and for the park, and where it is heading."""

    avail: tuple[float, ...]  # available PV per company (a curtailed inverter: the model's estimate)
    net: tuple[float, ...]  # load - available PV per company
    park_net: float  # the companies' nets and the common load at a shared connection (`common_kw`)
    trend_net: tuple[float, ...]  # load - PV where the output shows the sun (for the next cycle's slope)
    slope: float  # kW/s of the park's net over the last cycle
    net_hi: float  # the park net extrapolated over the meters' age: where the import cap is guarded
    net_lo: float  # ... and the export cap
    common_kw: float = 0.0  # the park meter less the companies' meters (0 on a group contract)

    @property
    def companies_net(self) -> float:
        """The companies' nets alone: what the per-company stages sum (the common load is not theirs)."""
        return self.park_net - self.common_kw


def _clear_sky_kw(obs: Observation, params: Params, i: int) -> float:
    """What company `i`'s PV gives under the learned clear sky now: `peak * shape * k_clear`."""
    return params.companies[i].pv_peak_kw * obs.shape * obs.pv_index.k_clear[i]


def _available_pv(obs: Observation, params: Params) -> list[float]:
    """Available PV per company: as read, or for an inverter held by its limit the clear-sky model
    (at least a step above what it gives, at most its peak); never less than the meter shows."""
    avail = []
    for i, c in enumerate(params.companies):
        if c.pv_peak_kw <= 0:
            avail.append(0.0)
        elif obs.curtailed[i]:
            model = _clear_sky_kw(obs, params, i)
            avail.append(min(c.pv_peak_kw, max(obs.pv[i] + CURTAILED_TOL_FRAC * c.pv_peak_kw, model)))
        else:
            avail.append(obs.pv[i])
    return [
        max(a, p) if c.pv_peak_kw > 0 else a
        for a, p, c in zip(avail, obs.pv_net, params.companies, strict=True)
    ]


def curtailed_pv_kw(available_kw: float | None, pv_kw: float | None, *, limited: bool) -> float | None:
    """The PV an inverter did not give (kW): `max(available - reading, 0)` while a limit holds it back.

    An inverter no limit holds back gives what it can, so it curtailed nothing, whatever an
    estimate says (0, by definition: an estimate must not invent curtailment). Limited, with its
    reading or the estimate unknown: None (not known, never a guess).
    """
    if not limited:
        return 0.0
    if available_kw is None or pv_kw is None:
        return None
    return max(available_kw - pv_kw, 0.0)


def pv_available(
    obs: Observation, pv_read: Sequence[float | None], state: State, params: Params
) -> PvAvailable:
    """The available PV as the decision reports it (`PvAvailable`), from this cycle's observation.

    `pv_read`: the inverters' readings as the snapshot has them. An inverter is *held back* while
    a limit is in force (the last decision's, `State.pv_limit_kw`) and it gives that limit
    (`obs.curtailed`), or it gave its limit the cycle before (`State.pv_at_limit`) and is now below
    a limit that is below what the learned clear sky says it could give: it is climbing out of a
    limit just raised (an inverter ramps; a cycle is a second). Only one cycle counts so: an
    inverter that stays below a raised limit is taken as giving what the sky gives (a dull sky
    must not read as curtailment for as long as the controller raises the limit step by step).
    Held back, its available PV is the controller's estimate, the clear-sky model kept between
    the reading and the peak (without the step above the reading that `_available_pv` adds:
    that step makes the dispatch try for more sun each cycle, it is not a belief about the
    sky). Free: its reading. Not read: available and curtailed PV unknown (None; the
    observation takes a missing reading as 0 kW, which says nothing about a limit). Pure.
    """
    avail: list[float | None] = []
    limited: list[bool] = []
    curtailed: list[float | None] = []
    was_at_limit = state.pv_at_limit or (False,) * len(params.companies)
    for i, c in enumerate(params.companies):
        read, lim = pv_read[i], state.pv_limit_kw[i]
        a: float | None
        held_back = False
        if c.pv_peak_kw <= 0:
            a = 0.0
        elif read is None:
            a = None
        else:
            model = min(c.pv_peak_kw, _clear_sky_kw(obs, params, i))
            climbing = was_at_limit[i] and lim is not None and lim < model - CURTAILED_TOL_FRAC * c.pv_peak_kw
            held_back = lim is not None and (obs.curtailed[i] or climbing)
            a = max(read, model) if held_back else read
        avail.append(a)
        limited.append(held_back)
        curtailed.append(None if a is None else curtailed_pv_kw(a, read, limited=held_back))
    return PvAvailable(tuple(avail), tuple(limited), tuple(curtailed))


def predict_net(obs: Observation, state: State, params: Params) -> NetPrediction:
    """The net for the next step, at the measured operating point with the battery taken out."""
    avail = _available_pv(obs, params)
    net = [min(ld - a, g + b) for ld, a, g, b in zip(obs.load, avail, obs.grid, obs.bat_meas, strict=True)]
    # on a shared connection the park meter also shows loads and losses no company meter sees: the
    # caps are on that meter, so the park's net includes them (taken as they are now: not controlled)
    park_net = sum(net) + obs.common_kw
    # the trend over the last cycle, for inverters whose output shows the sun (not held by a limit):
    # the meters are `lag` seconds old, so the caps are guarded against where the net is heading
    trend_net = tuple(
        ld - (0.0 if cut else p) for ld, p, cut in zip(obs.load, obs.pv, obs.curtailed, strict=True)
    )
    slope = 0.0
    if state.last_net_kw is not None and state.last_ts is not None:
        slope = (
            sum(
                (a - b)
                for a, b, cut, was in zip(
                    trend_net, state.last_net_kw, obs.curtailed, state.pv_limit_kw, strict=True
                )
                if not cut or was is not None
            )
            / obs.dt_s
        )
    # a ramp shows in two cycles running; a single jump (a machine switching) is not extrapolated
    trend = math.copysign(min(abs(slope), abs(state.last_slope_kw_per_s)), slope)
    if slope * state.last_slope_kw_per_s <= 0:
        trend = 0.0
    # extrapolated over the meters' age only: over the two more cycles a battery takes to show its
    # answer the live demo's ramps were met sooner, but noise in the slope (meters and batteries read
    # at different moments) was tripled too and set the batteries swinging (docs/control.md)
    # a battery reading behind its meter (`CompanyReading.battery_behind`): the net is only known to
    # lie within the reading and the last setpoint, so each cap is guarded at its own end. Taking
    # the reading alone, a full-gain cap guard on such snapshots swings from cycle to cycle and the
    # swing grows (each step corrects the last one and its echo); guarded at the ends, an error
    # errs on the cap's safe side and is gone the cycle the setpoint stops moving (docs/control.md)
    net_hi = park_net + max(0.0, trend) * obs.lag_s + math.fsum(obs.bat_unseen_up)
    net_lo = park_net + min(0.0, trend) * obs.lag_s - math.fsum(obs.bat_unseen_down)
    return NetPrediction(tuple(avail), tuple(net), park_net, trend_net, slope, net_hi, net_lo, obs.common_kw)


@dataclass(frozen=True, slots=True)
class BatteryRoom:
    """What each battery can give (+) and take this step (kW), per company, and the pool's totals."""

    dis_cap: tuple[float, ...]  # discharge
    ch_cap: tuple[float, ...]  # charge (>= 0)
    dis_free: tuple[float, ...]  # discharge above operators' reserves (a cap may call for more)
    energy: tuple[float, ...]  # kWh held (0 where no battery or no state of charge)
    short_ch: tuple[int, ...]  # cycles in a row the battery gave clearly less than asked, charging
    short_dis: tuple[int, ...]  # ... discharging
    total_dis: float
    total_ch: float
    total_dis_free: float
    stored: float  # kWh, of the batteries seen
    hyst: float  # kWh around floor and ceiling
    seen_share: float  # share of the pool's capacity whose state of charge is known


def _energy_limited(
    snap: Snapshot, params: Params, dt_s: float
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per battery: discharge and charge power within the SoC limits this step, energy held, energy span."""
    n = len(params.companies)
    dis_cap = [0.0] * n
    ch_cap = [0.0] * n
    energy = [0.0] * n
    span = [0.0] * n
    for i, c in enumerate(params.companies):
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
    return dis_cap, ch_cap, energy, span


def battery_room(snap: Snapshot, state: State, obs: Observation, params: Params) -> BatteryRoom:
    """What the batteries can give and take this step."""
    comps = params.companies
    dis_cap, ch_cap, energy, span = _energy_limited(snap, params, obs.dt_s)
    # a battery that does not follow its setpoint is taken at what it gives (plus a probe, so that
    # it is asked for more again): the caps are then held with the others and with PV
    short_ch, short_dis = follow_check(comps, state, obs.bat_meas)
    for i, c in enumerate(comps):
        if c.battery is None:
            continue
        probe = FOLLOW_TOL_FRAC * max(c.battery.max_charge_kw, c.battery.max_discharge_kw) + 1.0
        if short_ch[i] >= FOLLOW_CYCLES:
            ch_cap[i] = min(ch_cap[i], max(0.0, -obs.bat_meas[i]) + probe)
        if short_dis[i] >= FOLLOW_CYCLES:
            dis_cap[i] = min(dis_cap[i], max(0.0, obs.bat_meas[i]) + probe)
    # an operator's reserve: discharge below it only when a cap calls for it
    dis_free = list(dis_cap)
    for i, c in enumerate(comps):
        res_pct = snap.overrides.reserve_soc_pct.get(c.id)
        if res_pct is not None and c.battery is not None:
            above = energy[i] - c.battery.capacity_kwh * res_pct / 100.0
            dis_free[i] = max(
                0.0, min(dis_cap[i], above * c.battery.efficiency * 3600.0 / max(obs.dt_s, 1.0))
            )
    # the band is planned for every battery; while one is not seen (down, no state of charge) the
    # others are held to their share of it, not to all of it: a battery that drops out of view
    # must not make the rest look empty and switch them from discharging to charging at once
    seen_cap = sum(
        c.battery.capacity_kwh
        for c, r in zip(comps, snap.companies, strict=True)
        if c.battery is not None and r.soc_pct is not None
    )
    all_cap = sum(c.battery.capacity_kwh for c in comps if c.battery is not None)
    return BatteryRoom(
        tuple(dis_cap),
        tuple(ch_cap),
        tuple(dis_free),
        tuple(energy),
        short_ch,
        short_dis,
        sum(dis_cap),
        sum(ch_cap),
        sum(dis_free),
        sum(energy),
        _HYSTERESIS_FRAC * sum(span),
        seen_cap / all_cap if all_cap > 0 else 1.0,
    )


@dataclass(frozen=True, slots=True)
class Preference:
    """What the energy band prefers for the park battery power (kW, + discharge), before the caps."""

    mode: BandMode
    pref_kw: float
    reason: str


def _band_mode(prev: BandMode, stored: float, floor: float, ceiling: float, hyst: float) -> BandMode:
    """Charge below the floor, drain above the ceiling, free once back inside (with hysteresis)."""
    mode = prev
    if stored < floor - hyst:
        mode = BandMode.CHARGE
    elif stored > ceiling + hyst:
        mode = BandMode.DRAIN
    elif (mode == BandMode.CHARGE and stored >= floor + hyst) or (
        mode == BandMode.DRAIN and stored <= ceiling
    ):
        mode = BandMode.FREE
    return mode


def _forced_curtailment(
    params: Params, comp_lim: dict[str, LimitsInForce], net: tuple[float, ...], ch_cap: tuple[float, ...]
) -> float:
    """What companies' own export caps will curtail anyway (kW): it changes the park's surplus."""
    forced_curt = 0.0
    for i, c in enumerate(params.companies):
        own = comp_lim.get(c.id)
        if own is not None and own.export_kw is not None:
            forced_curt += max(0.0, -net[i] - cap_less_margin(own.export_kw, params) - ch_cap[i])
    return forced_curt


def band_preference(
    state: State,
    params: Params,
    comp_lim: dict[str, LimitsInForce],
    pred: NetPrediction,
    room: BatteryRoom,
    floor_kwh: float,
    ceiling_kwh: float,
) -> Preference:
    """The band's preference with hysteresis, within operators' reserves, with no small sign flips."""
    band_floor, band_ceiling = floor_kwh * room.seen_share, ceiling_kwh * room.seen_share
    park_net_sc = pred.park_net + _forced_curtailment(params, comp_lim, pred.net, room.ch_cap)
    stored = room.stored
    mode = _band_mode(state.band_mode, stored, band_floor, band_ceiling, room.hyst)
    if mode == BandMode.CHARGE:
        pref = -room.total_ch
        reason = "charging towards the floor for the caps ahead"
    elif mode == BandMode.DRAIN:
        # behind the plan: catch up within `_CATCH_UP_S`, covering the park's own import first
        catch_up = (stored - band_ceiling) * 3600.0 / _CATCH_UP_S
        pref = min(room.total_dis, max(park_net_sc, catch_up))
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
    pref = min(pref, room.total_dis_free)
    prev_total = sum(state.battery_kw)
    flip = _FLIP_FRAC * max(room.total_dis + room.total_ch, 1e-9) / 2
    if prev_total * pref < 0 and abs(pref) < flip:
        pref = 0.0
    return Preference(mode, pref, reason)


@dataclass(frozen=True, slots=True)
class ParkTotal:
    """The park battery power (kW, + discharge) within the caps and the batteries, and why."""

    battery_kw: float
    reason: str


def park_total(
    pref: Preference, pred: NetPrediction, room: BatteryRoom, imp_cap: float, exp_cap: float
) -> ParkTotal:
    """The preference clipped to what the park caps allow, `N - B <= I` and `N - B >= -E`, then to
    what the batteries can give."""
    b_lo = pred.net_hi - imp_cap
    b_hi = pred.net_lo + exp_cap
    want = pref.pref_kw
    reason = pref.reason
    # discharging while the park exports (draining for the sun ahead, covering a company's load) is
    # a choice: it stops a headroom short of the export cap, for the loads that fall and the clouds
    # that clear while the meters lag and the batteries follow. Holding a cap uses all of it.
    if want > 0 and math.isfinite(exp_cap):
        want = min(want, max(0.0, b_hi - _DRAIN_HEADROOM_FRAC * exp_cap))
    total = min(max(want, b_lo), b_hi)
    if total != want:
        reason = "holding the park import cap" if total == b_lo else "holding the park export cap"
    total = min(max(total, -room.total_ch), room.total_dis)
    return ParkTotal(total, reason)
