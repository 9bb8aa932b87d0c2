"""The park, live: the physics model stepped in (scaled) real time, driven by what devices were told.

`Park` wraps `ParkPhysics` (the reference semantics of SCENARIOS.md) for the
device simulators: it holds the latest `StepRecord` (the values every device
reports until the next step), energy counters per company, and asks each
company's controllable devices for the PV limit and battery setpoint in force
before every step. `ParkClock` advances it at `speed` times real time.

`Setpoint` is what a device remembers of a written setpoint or limit: its
value, when it was written (in simulated seconds) and its revert time. A
setpoint not re-written within its revert time lapses, and the device falls
back to its configured fallback (PV: no limit unless a fallback limit is
configured; battery: the fallback power, 0 kW by default) until the next
write. A device can also have a communication-loss timeout: no request at all
for that long and it falls back the same way (`CommWatchdog`).

Decisions:
- Time is simulated seconds everywhere below the clock, and "now" for a device
  is the start of the current step (`Park.t_s`): a write during step k counts
  as written at t_k, and a revert time of r s lapses at the first step that
  starts r s or more after it. Deterministic, and exact to one step.
- Before `start_s` the park is fast-forwarded with no commands (batteries
  idle, PV unlimited), so a simulation can start at noon without a controller
  having run the morning.
- Energy counters start at `energy_base_kwh` (default 1000 kWh), not 0: a
  SunSpec accumulator that reads 0 means "not implemented".
- Devices push nothing into the park; the park pulls each company's PV limit
  and battery setpoint from the units registered for it.
- A company's PV or battery may be split over several devices (units), as on
  a park where a roof has two or three inverters: `pv_unit(company, share)`
  and `battery_unit(company, share)` hand out a unit for `share` of the
  company's peak (battery: of its capacity and powers); the shares of a
  company add up to at most 1. The physics still has one PV plant and one
  battery per company, so the units' commands are combined before each step:
  - PV: the plant's limit is the sum over units of what each may give,
    `min(own limit, share * available)` (available: the last step's, so one
    step old); no unit limited: no limit. Each unit then reports the plant's
    output in proportion to what it may give, and counts its own energy.
  - Battery: the setpoints add up (a unit without one counts 0 kW); each
    unit reports the battery's power in proportion to its setpoint (in
    proportion to its share when they sum to 0) and the battery's state of
    charge. Units commanded alike (what `hubctl run` does: it splits a
    company's power evenly over its devices) are exact; units commanded
    differently are an approximation that keeps the company's totals right.
  Two devices claiming more than the whole plant is a set-up error.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from simulators.physics import CompanySpec, ParkPhysics, Profiles, StepRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from simulators.physics import BatterySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompanyInfo:
    index: int
    id: str
    pv_peak_kw: float | None
    battery: BatterySpec | None


@dataclass(slots=True)
class Counters:
    """Energy counters of one company, in kWh, increasing only."""

    import_kwh: float
    export_kwh: float
    pv_kwh: float
    charge_kwh: float
    discharge_kwh: float
    # what the sun offered (from 0): no device reports it, the control port does (`status`), so a
    # test can hold a gateway's estimate of curtailed PV against the truth
    pv_available_kwh: float = 0.0


@dataclass(slots=True)
class Setpoint:
    """A setpoint or limit as a device holds it: value, time written, revert time, lapsed or not."""

    value: float | None = None
    written_s: float = 0.0
    revert_s: float | None = None
    lapsed: bool = False

    def write(self, value: float, now_s: float, revert_s: float | None) -> None:
        """A client wrote `value`; `revert_s` None or 0: it never lapses."""
        self.value = value
        self.written_s = now_s
        self.revert_s = revert_s or None
        self.lapsed = False

    def refresh(self, now_s: float) -> None:
        """A write that re-arms the timer without changing the value (e.g. SunSpec's enable point)."""
        if self.value is not None:
            self.written_s = now_s

    def cancel(self) -> None:
        """The client switched the control off: no setpoint, and not lapsed either."""
        self.value = None
        self.lapsed = False

    def update(self, now_s: float) -> None:
        if self.value is not None and self.revert_s is not None and now_s - self.written_s >= self.revert_s:
            self.value = None
            self.lapsed = True

    def remaining_s(self, now_s: float) -> float:
        """Seconds until the setpoint lapses (0 when none is active or it never lapses)."""
        self.update(now_s)
        if self.value is None or self.revert_s is None:
            return 0.0
        return max(self.revert_s - (now_s - self.written_s), 0.0)

    def effective(self, now_s: float, fallback: float | None) -> float | None:
        """The value in force: the setpoint, the fallback once it lapsed, None when never set or cancelled."""
        self.update(now_s)
        if self.value is not None:
            return self.value
        return fallback if self.lapsed else None


@dataclass(slots=True)
class CommWatchdog:
    """Communication-loss timer: `timeout_s` None disables it."""

    timeout_s: float | None = None
    last_seen_s: float = 0.0

    def seen(self, now_s: float) -> None:
        self.last_seen_s = now_s

    def expired(self, now_s: float) -> bool:
        return self.timeout_s is not None and now_s - self.last_seen_s > self.timeout_s


@dataclass(slots=True)
class PvUnit:
    """One inverter of a company's PV plant: `share` of its peak, with its own limit."""

    company: CompanyInfo
    share: float
    peak_kw: float
    limit_kw: Callable[[float], float | None] | None = None
    kw: float = 0.0  # output over the current step
    available_kw: float = 0.0  # what the sun offers this unit over the current step
    energy_kwh: float = 0.0
    may_kw: float = 0.0  # what the unit may give in the current step (for the split)


@dataclass(slots=True)
class BatteryUnit:
    """One battery system of a company: `share` of its battery (capacity, powers), with its own setpoint."""

    company: CompanyInfo
    share: float
    spec: BatterySpec  # the unit's own ratings
    setpoint_kw: Callable[[float], float | None] | None = None
    kw: float = 0.0  # + discharge, over the current step
    soc_pct: float = 0.0
    charge_kwh: float = 0.0
    discharge_kwh: float = 0.0
    asked_kw: float | None = None


class Park:
    """The park's physics with device commands and energy counters; stepped by `step()` or a `ParkClock`."""

    def __init__(
        self,
        specs: Sequence[CompanySpec],
        profiles: Profiles,
        step_s: float = 1.0,
        *,
        start_s: float = 0.0,
        energy_base_kwh: float = 1000.0,
    ) -> None:
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"start_s must be finite and >= 0, got {start_s}")
        self._physics = ParkPhysics(specs, profiles, step_s)
        self._step_s = step_s
        self.companies = tuple(
            CompanyInfo(j, c.id, None if c.pv is None else c.pv.peak_kw, c.battery)
            for j, c in enumerate(specs)
        )
        self._index = {c.id: c.index for c in self.companies}
        n = len(specs)
        self._pv_units: list[list[PvUnit]] = [[] for _ in range(n)]
        self._battery_units: list[list[BatteryUnit]] = [[] for _ in range(n)]
        self.counters = [
            Counters(energy_base_kwh, energy_base_kwh, energy_base_kwh, energy_base_kwh, energy_base_kwh)
            for _ in specs
        ]
        self.park_counters = Counters(energy_base_kwh, energy_base_kwh, 0.0, 0.0, 0.0)
        # loads and losses at a shared connection that no company meter sees (street lighting, a
        # gatehouse, transformer losses; + import): the park meter shows them, the companies' do not
        self.common_load_kw = 0.0
        self._next_t_s = 0.0
        self._steps = 0
        nones: list[float | None] = [None] * n
        self.record = self._physics.step(0.0, nones, nones)
        self._advance_time()
        while self._next_t_s <= start_s + 1e-9 * step_s:
            self._count(self.record)
            self.record = self._physics.step(self._next_t_s, nones, nones)
            self._advance_time()

    def _advance_time(self) -> None:
        self._steps += 1
        self._next_t_s = self._steps * self._step_s

    @property
    def step_s(self) -> float:
        return self._step_s

    @property
    def t_s(self) -> float:
        """Start of the current step: "now" for every device."""
        return self.record.t_s

    def company(self, company_id: str) -> CompanyInfo:
        try:
            return self.companies[self._index[company_id]]
        except KeyError:
            raise ValueError(f"no company {company_id!r} in this park") from None

    def pv_unit(
        self,
        company_id: str,
        *,
        share: float = 1.0,
        limit_kw: Callable[[float], float | None] | None = None,
    ) -> PvUnit:
        """An inverter for `share` of the company's PV; `limit_kw(t)` its own limit (kW, None = none)."""
        info = self.company(company_id)
        if info.pv_peak_kw is None:
            raise ValueError(f"{company_id}: no PV")
        units = self._pv_units[info.index]
        _check_share(company_id, "PV", share, [u.share for u in units])
        unit = PvUnit(info, share, info.pv_peak_kw * share, limit_kw)
        unit.energy_kwh = self.counters[info.index].pv_kwh * share
        units.append(unit)
        self._split_pv(info.index)
        return unit

    def battery_unit(
        self,
        company_id: str,
        *,
        share: float = 1.0,
        setpoint_kw: Callable[[float], float | None] | None = None,
    ) -> BatteryUnit:
        """A battery system for `share` of the company's battery; `setpoint_kw(t)` its own (+ discharge)."""
        info = self.company(company_id)
        if info.battery is None:
            raise ValueError(f"{company_id}: no battery")
        units = self._battery_units[info.index]
        _check_share(company_id, "battery", share, [u.share for u in units])
        b = info.battery
        spec = replace(
            b,
            capacity_kwh=b.capacity_kwh * share,
            max_charge_kw=b.max_charge_kw * share,
            max_discharge_kw=b.max_discharge_kw * share,
        )
        c = self.counters[info.index]
        unit = BatteryUnit(info, share, spec, setpoint_kw)
        unit.charge_kwh, unit.discharge_kwh = c.charge_kwh * share, c.discharge_kwh * share
        units.append(unit)
        self._split_battery(info.index)
        return unit

    def _pv_limit(self, j: int, t: float) -> float | None:
        units = self._pv_units[j]
        if not units:
            return None
        available = float(self.record.pv_available_kw[j])
        limited = False
        total = 0.0
        for u in units:
            own = None if u.limit_kw is None else u.limit_kw(t)
            offer = u.share * available
            if own is not None and math.isfinite(own):
                limited = True
                u.may_kw = max(min(own, offer), 0.0)
            else:
                u.may_kw = offer
            total += u.may_kw
        unclaimed = 1.0 - sum(u.share for u in units)  # a plant only partly modelled by devices runs free
        return total + unclaimed * available if limited else None

    def _battery_setpoint(self, j: int, t: float) -> float | None:
        units = self._battery_units[j]
        asked = [None if u.setpoint_kw is None else u.setpoint_kw(t) for u in units]
        for u, a in zip(units, asked, strict=True):
            u.asked_kw = a
        given = [a for a in asked if a is not None and math.isfinite(a)]
        return math.fsum(given) if given else None

    def _split_pv(self, j: int) -> None:
        units = self._pv_units[j]
        if not units:
            return
        pv = float(self.record.pv_kw[j])
        available = float(self.record.pv_available_kw[j])
        weights = [u.may_kw for u in units]
        if sum(weights) <= 0:
            weights = [u.share for u in units]
        total = sum(weights)
        claimed = sum(u.share for u in units)
        for u, w in zip(units, weights, strict=True):
            u.kw = pv * claimed * w / total
            u.available_kw = available * u.share

    def _split_battery(self, j: int) -> None:
        units = self._battery_units[j]
        if not units:
            return
        p = float(self.record.battery_kw[j])
        soc = float(self.record.soc_pct[j])
        asked = [u.asked_kw or 0.0 for u in units]
        total = math.fsum(asked)
        claimed = sum(u.share for u in units)
        weights = asked if abs(total) > 1e-9 and all(a * total >= 0 for a in asked) else None
        for i, u in enumerate(units):
            w = u.share / claimed if weights is None else weights[i] / total
            u.kw = p * claimed * w
            u.soc_pct = soc

    def _count(self, r: StepRecord) -> None:
        h = self._step_s / 3600.0
        for c, grid, pv, avail, bat in zip(
            self.counters,
            r.grid_kw.tolist(),
            r.pv_kw.tolist(),
            r.pv_available_kw.tolist(),
            r.battery_kw.tolist(),
            strict=True,
        ):
            c.import_kwh += max(grid, 0.0) * h
            c.export_kwh += max(-grid, 0.0) * h
            c.pv_kwh += pv * h
            c.pv_available_kwh += avail * h
            c.charge_kwh += max(-bat, 0.0) * h
            c.discharge_kwh += max(bat, 0.0) * h
        for units in self._pv_units:
            for u in units:
                u.energy_kwh += u.kw * h
        for bunits in self._battery_units:
            for b in bunits:
                b.charge_kwh += max(-b.kw, 0.0) * h
                b.discharge_kwh += max(b.kw, 0.0) * h
        park = r.park_grid_kw + self.common_load_kw
        self.park_counters.import_kwh += max(park, 0.0) * h
        self.park_counters.export_kwh += max(-park, 0.0) * h

    @property
    def park_meter_kw(self) -> float:
        """What a meter at the park's connection reads: the companies' grid and the common load."""
        return self.record.park_grid_kw + self.common_load_kw

    def step(self) -> StepRecord:
        """Advance one step with the commands in force at its start."""
        t = self._next_t_s
        n = len(self.companies)
        limits = [self._pv_limit(j, t) for j in range(n)]
        setpoints = [self._battery_setpoint(j, t) for j in range(n)]
        self._count(self.record)
        self.record = self._physics.step(t, setpoints, limits)
        self._advance_time()
        for j in range(n):
            self._split_pv(j)
            self._split_battery(j)
        return self.record

    def advance(self, seconds: float) -> StepRecord:
        """Step until `seconds` more simulated time has passed (tests drive the park this way)."""
        end = self.t_s + seconds
        while self._next_t_s <= end + 1e-9 * self._step_s:
            self.step()
        return self.record


def _check_share(company_id: str, what: str, share: float, taken: list[float]) -> None:
    if not (math.isfinite(share) and 0 < share <= 1):
        raise ValueError(f"{company_id}: a {what} unit's share must be in (0, 1], got {share}")
    if sum(taken) + share > 1 + 1e-9:
        raise ValueError(f"{company_id}: its {what} units would claim more than the whole {what}")


class ParkClock:
    """Steps a `Park` at `speed` times real time until cancelled."""

    max_steps_per_tick = 2000  # then yield, so that devices keep answering while the clock catches up

    def __init__(self, park: Park, speed: float = 1.0) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be finite and > 0, got {speed}")
        self._park = park
        self._speed = speed

    @property
    def speed(self) -> float:
        return self._speed

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        park = self._park
        t0 = loop.time()
        sim0 = park.t_s
        lagging = False
        while True:
            target = sim0 + (loop.time() - t0) * self._speed
            n = 0
            while park.t_s + park.step_s <= target and n < self.max_steps_per_tick:
                park.step()
                n += 1
            if n == self.max_steps_per_tick:
                if not lagging:
                    log.warning("the park clock cannot keep up with speed %gx; it runs slower", self._speed)
                    lagging = True
                t0, sim0 = loop.time(), park.t_s  # drop the backlog instead of racing through it
                await asyncio.sleep(0)
                continue
            due = t0 + (park.t_s + park.step_s - sim0) / self._speed
            await asyncio.sleep(max(due - loop.time(), 0.0))
