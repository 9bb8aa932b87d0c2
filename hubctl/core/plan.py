"""The rolling-horizon plan: how much energy the batteries must hold, and how much room they must keep.

Every `plan_every_s` the controller looks `horizon_h` ahead over its own
forecasts (`hubctl.core.forecast`) and the limits that will be in force (windows,
day-ahead schedules), and computes two energy bands for the park's batteries
taken together:

* **floor** `F(t)`: the least stored energy that still lets the batteries
  hold every import cap ahead. Backward over the horizon:
  `F_j = max(E_min, F_{j+1} + need_j/eta*h - charge_j*eta*h)` with
  `need_j = min(P_dis, max(0, net_hi_j - I_j))` the discharge an import cap
  will call for and `charge_j` the charging the caps leave room for, counted
  at `_CHARGE_CREDIT` of its possible rate so that the batteries are charged
  early rather than just in time.
* **ceiling** `C(t)`: the most stored energy that still leaves room to absorb
  every export excess ahead. Backward:
  `R_j = max(0, R_{j+1} + absorb_j*eta*h - discharge_j/eta*h)`, `C = E_max - R`,
  with `absorb_j = min(P_ch, max(0, -net_lo_j - E_j))` and `discharge_j` the
  discharge the export cap leaves room for, again credited at
  `_DISCHARGE_CREDIT`.

These recursions are the exact solution of the single-battery feasibility LP
(least energy that keeps the future feasible), computed in O(horizon) with no
solver, so the plan cannot fail to solve on the gateway. They are deliberately
one-sided: the floor uses a high load and a dull sky (`net_hi`), the ceiling a
low load and a clear sky (`net_lo`). Where they conflict the floor wins: an
export excess can always be curtailed, an import excess cannot.

Without a load history for the coming hours the controller cannot see import
peaks coming; it then keeps `reserve` (the battery's `reserve_soc_pct`) as a
floor, but yields it to the ceiling: room for a forecast solar excess is worth
more than a guess.

The real-time law (`hubctl.core.control`) then works inside the band: it absorbs
surplus only below the ceiling, covers import only above the floor, charges
towards the floor and drains towards the ceiling, and always holds the caps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubctl.core.forecast import Forecast

_CHARGE_CREDIT = 1.0  # of the headroom a cap leaves under the high load: a forecast, so not all of it
_DISCHARGE_CREDIT = 0.5
_EXCESS_CREDIT = 0.5  # of the forecast clear-sky excess above the export cap: it fills the batteries anyway
_POWER_CREDIT = 0.9  # of the batteries' rated power: known, so counted almost whole
_RAMP_RESERVE_H = 0.25  # in the ramp hours the floor keeps this long of the batteries' full power


@dataclass(frozen=True, slots=True)
class BatteryPool:
    """The park's batteries taken together (energy in kWh, power in kW)."""

    e_min_kwh: float
    e_max_kwh: float
    charge_kw: float
    discharge_kw: float
    efficiency: float
    reserve_kwh: float


@dataclass(frozen=True, slots=True)
class Plan:
    ts_utc: float
    step_s: float
    floor_kwh: tuple[float, ...]  # at the start of each plan step
    ceiling_kwh: tuple[float, ...]
    reserve_used: bool

    def band_at(self, ts_utc: float) -> tuple[float, float]:
        j = int(max(0.0, ts_utc - self.ts_utc) // self.step_s)
        j = min(j, len(self.floor_kwh) - 1)
        return self.floor_kwh[j], self.ceiling_kwh[j]


def make_plan(
    ts_utc: float,
    step_s: float,
    fc: Forecast,
    import_limit_kw: list[float],
    export_limit_kw: list[float],
    reduced_import: list[bool],
    contract_import_kw: float,
    pool: BatteryPool,
    *,
    reserve_coverage: float = 0.5,
    stored_kwh: float | None = None,
) -> Plan:
    """Energy bands over the horizon.

    Limits are per plan step, already less the safety margin (inf: none).
    `reduced_import` marks steps where a window or schedule lowers the import cap
    below the contract: without a history for such a step the floor is planned
    for the highest load of the last 24 h (a lower cap announced ahead must find
    the batteries charged). `stored_kwh` is what the batteries hold now: the floor keeps up to
    that much for the needs a stand-in day type forecasts (`Forecast.load_soft_need_kw`).
    """
    steps = len(import_limit_kw)
    h = step_s / 3600.0
    eta = pool.efficiency
    floor = [pool.e_min_kwh] * (steps + 1)
    soft = [pool.e_min_kwh] * (steps + 1)
    room = [0.0] * (steps + 1)
    span = pool.e_max_kwh - pool.e_min_kwh
    contract = contract_import_kw if contract_import_kw < math.inf else 0.0
    ramp_reserve = min(pool.e_max_kwh, pool.e_min_kwh + pool.discharge_kw * _RAMP_RESERVE_H / eta)
    for j in range(steps - 1, -1, -1):
        imp, exp = import_limit_kw[j], export_limit_kw[j]
        pv_low = fc.pv_low_kw[j]
        net_hi = fc.load_high_kw[j] - pv_low
        net_need = fc.need_kw(j) - pv_low
        net_soft = fc.soft_need_kw(j) - pv_low
        if not fc.covered[j] and reduced_import[j]:
            # an announced lower cap with no history behind it: plan for the load the park
            # has shown or is contracted for, whichever is higher
            load = max(fc.load_high_kw[j], fc.load_peak_kw, contract)
            net_hi = net_need = net_soft = load - pv_low
        # the solar excess above the export cap charges the batteries whatever else happens
        net_lo = fc.room_kw(j) - fc.pv_clear_kw[j]
        absorb = min(pool.charge_kw, max(0.0, -net_lo - exp))
        excess_charge = absorb * _EXCESS_CREDIT
        headroom_charge = max(0.0, imp - net_hi) * _CHARGE_CREDIT
        floor[j] = _floor_step(floor[j + 1], net_need - imp, excess_charge, headroom_charge, pool, h)
        soft[j] = _floor_step(soft[j + 1], net_soft - imp, excess_charge, headroom_charge, pool, h)
        if fc.ramp_hours and fc.ramp_hours[j] and math.isfinite(imp):
            # peaks hide in quarter-hour means: in the ramp hours a quarter-hour of full power is kept
            floor[j] = max(floor[j], ramp_reserve)
            soft[j] = max(soft[j], ramp_reserve)
        discharge = (
            0.0
            if absorb > 0
            else min(pool.discharge_kw * _POWER_CREDIT, max(0.0, net_lo + exp) * _DISCHARGE_CREDIT)
        )
        room[j] = min(span, max(0.0, room[j + 1] + absorb * eta * h - discharge / eta * h))
    if stored_kwh is not None:  # energy kept for a stand-in day type's needs, never bought for them
        floor = [max(f, min(sf, stored_kwh)) for f, sf in zip(floor, soft, strict=True)]
    ceiling = [pool.e_max_kwh - r for r in room[:steps]]
    reserve_used = fc.coverage < reserve_coverage and pool.reserve_kwh > pool.e_min_kwh
    floors = []
    ceilings = []
    for j in range(steps):
        f = floor[j]
        if reserve_used:
            f = max(f, min(pool.reserve_kwh, ceiling[j]))
        floors.append(f)
        ceilings.append(max(ceiling[j], f))
    return Plan(ts_utc, step_s, tuple(floors), tuple(ceilings), reserve_used)


def _floor_step(
    after_kwh: float, over_kw: float, excess_kw: float, headroom_kw: float, pool: BatteryPool, h: float
) -> float:
    """One step of the backward floor recursion: the energy needed at the start of a step whose net
    is `over_kw` above the import cap, given the energy needed after it and the charging it allows."""
    need = min(pool.discharge_kw, max(0.0, over_kw))
    charge = 0.0 if need > 0 else min(pool.charge_kw * _POWER_CREDIT, max(excess_kw, headroom_kw))
    f = after_kwh + need / pool.efficiency * h - charge * pool.efficiency * h
    return min(pool.e_max_kwh, max(pool.e_min_kwh, f))
