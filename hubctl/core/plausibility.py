"""Is a grid meter's reading plausible? Bounds from the connection and the devices behind it, a step
check, and the park meter as a witness. Pure: plain functions over plain data (the rules of
`hubctl.core`); the reading store (`hubctl.service.store`) applies them to every meter reading.

Why: the caps are held on the meters, so a meter that lies steers the batteries and the PV limits
against the cap (a grid meter reading +400 kW while the park exported 590 kW made the batteries
discharge and the PV limits lift). A reading judged implausible is not taken: the meter's reading
keeps its age, so after `control.stale_after_s` it is stale and the core is in fail-safe (a meter
that keeps lying is a meter hubctl cannot see through; "unsafe", not "zero").

The rules, per meter (`MeterBounds`, from `meter_bounds(cfg)`):

- **Range.** A company's meter cannot show more than five times its connection's rating either
  way (`rating_kw`: the largest cap that applies to it, its own or the park's, or what its PV and
  battery can move, whichever is larger), and on the export side not more than the PV and battery
  behind it can give beyond that. Five, not two: on a full grid the contracted capacity can be far
  below the physical connection (a company on a group contract may draw more than the whole
  group's cap for a while: that is an excursion to hold, not a lie), and twice the cap rejected
  true readings in such a case. Generous on purpose: generation hubctl is not told about (a CHP,
  unmanaged PV) must not make a true reading implausible, and a rejected true reading ends in
  fail-safe; the range catches the absurd (+10^9 kW, a wrong scale factor, a sign or word-order
  error on a large value).
  The park meter: the same over the whole park. Non-finite readings are out of range. A meter
  whose connection has no cap and no device behind it has no size to judge by: not screened.
- **Step.** A reading that moved more than half the rating from the last one taken, in one
  reading, is held as a suspect: not taken until the next reading shows the same level (within a
  tenth of the rating: `CONFIRM_READINGS` in a row), then taken. A glitch, a register read half-way
  through an update or a wrong byte order shows once; a real step that large (a hall switching on)
  costs one poll of delay, well inside `stale_after_s`, so it never makes the controller fail-safe
  by itself. Longer confirmation was weighed and not taken: the delay is paid on every real step,
  and a step towards import met late is a cap breach.
- **Witness.** Where a shared connection's park meter is fresh, it settles a suspect at once: the
  witness is what the other side says this meter should read now (for a company's meter: the park
  meter less the other companies' meters less the common load last seen; for the park meter: the
  companies' meters plus that common load). A suspect within `tolerance_kw` of its witness is
  taken; one the witness contradicts is never taken, however long it persists. The witness is
  made of meters read at other moments than this one, so while they move it is uncertain by as
  much: the service widens the tolerance by how far the witness moved since the meter's last
  reading (batteries answering a hall's step at 50 kW/s moved the other meters by more than the
  tolerance between two polls, and the hall's real step was contradicted for seconds). A lie
  against a steady park still meets the bare tolerance; a lie that begins in the very reading in
  which the witness moves by as much is taken (and then followed), a gap accepted for now. Without
  a witness a
  plausible lie that persists cannot be told from the truth; `hubctl.service.cycle.MeterCheck`
  publishes the disagreement where there is a park meter.
- **The common load the witness subtracts** (`follow_common`). The park meter less the companies'
  meters, measured while every meter is believed. The meters are polled one by one, so one
  measurement can straddle a step: the park meter read after a hall switched on, the hall's own
  meter just before. Adopted at once, that measurement put the step into the common load; the
  hall's meter, read a moment later, was then contradicted by the witness for good (and a
  contradicted meter keeps the common load from being measured again), so the meter went stale and
  the park to fail-safe in about one start in four of the shared-connection test. A measurement
  within `tolerance_kw` of the common load in use is adopted at once (a common load drifts:
  losses, lighting); a jump beyond it is adopted once it has held for `hold_s` of believed
  measurements (the service: `control.stale_after_s`: by then every meter that is not stale has
  been read after the jump). A measurement that straddled a step is gone by the next cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from hubctl.config.devices import DeviceRole

if TYPE_CHECKING:
    from hubctl.config.site import Caps, Company, SiteConfig

CONFIRM_READINGS = 2  # a large step is taken once this many readings in a row show it
_STEP_SHARE = 0.5  # of the rating: a larger move in one reading is a suspect
_SETTLE_SHARE = 0.1  # of the rating: a suspect's readings agree within this
_RANGE_FACTOR = 5.0  # beyond this many times the rating (plus the devices behind it) is out of range


class Verdict(StrEnum):
    TAKEN = "taken"
    OUT_OF_RANGE = "out of range"
    SUSPECT = "suspect"  # a large step, not confirmed yet
    CONTRADICTED = "contradicted"  # the park meter says otherwise


@dataclass(frozen=True, slots=True)
class MeterBounds:
    """What a meter can plausibly show (kW, + import)."""

    low_kw: float  # the most export
    high_kw: float  # the most import
    rating_kw: float  # the connection's size, for the step check

    @property
    def step_kw(self) -> float:
        """The largest move from the last reading taken that is taken at once."""
        return _STEP_SHARE * self.rating_kw


@dataclass(frozen=True, slots=True)
class Screen:
    """A meter's screening state: the last reading taken and a suspect being confirmed."""

    taken_kw: float | None = None
    suspect_kw: float | None = None
    suspect_readings: int = 0


def _caps_kw(caps: Caps) -> list[float]:
    values = [caps.import_limit_kw, caps.export_limit_kw]
    for w in caps.windows:
        values += [w.import_limit_kw, w.export_limit_kw]
    for s in caps.schedules:
        for w in s.windows:
            values += [w.import_limit_kw, w.export_limit_kw]
    return [v for v in values if v is not None]


def _devices_kw(companies: list[Company]) -> tuple[float, float]:
    """What the PV and batteries of `companies` can give (export side) and take (import side)."""
    give = sum(
        (c.pv.peak_kw if c.pv else 0.0) + (c.battery.max_discharge_kw if c.battery else 0.0)
        for c in companies
    )
    take = sum(c.battery.max_charge_kw if c.battery else 0.0 for c in companies)
    return give, take


def bounds_for(caps_kw: list[float], give_kw: float, take_kw: float) -> MeterBounds | None:
    """A meter's bounds from the caps that apply to its connection and the devices behind it; None
    when nothing tells the connection's size (no cap, no device): such a meter is not screened."""
    rating = max([*caps_kw, give_kw + take_kw])
    if rating <= 0:
        return None
    return MeterBounds(-(_RANGE_FACTOR * rating + give_kw), _RANGE_FACTOR * rating + take_kw, rating)


def meter_bounds(cfg: SiteConfig) -> dict[str, MeterBounds]:
    """Every grid and park meter's bounds, by device id."""
    park_caps = _caps_kw(cfg.park)
    companies = {c.id: c for c in cfg.companies}
    out: dict[str, MeterBounds] = {}
    for d in cfg.devices:
        bounds = None
        if d.role is DeviceRole.PARK_METER:
            bounds = bounds_for(park_caps, *_devices_kw(list(cfg.companies)))
        elif d.role is DeviceRole.GRID_METER and d.company in companies:
            c = companies[d.company]
            bounds = bounds_for(_caps_kw(c) + park_caps, *_devices_kw([c]))
        if bounds is not None:
            out[d.id] = bounds
    return out


@dataclass(frozen=True, slots=True)
class CommonLoad:
    """The common load the park meter witness subtracts (kW): the level in use (None: not measured
    yet), and a different level being confirmed since `since_s`."""

    kw: float | None = None
    candidate_kw: float | None = None
    since_s: float = 0.0


def follow_common(
    state: CommonLoad, measured_kw: float | None, now_s: float, tolerance_kw: float, hold_s: float
) -> CommonLoad:
    """The common load in use after one measurement `measured_kw` at `now_s` (None: not measured,
    a meter missing or doubted: any level being confirmed is dropped; see the module docstring)."""
    if measured_kw is None or not math.isfinite(measured_kw):
        return CommonLoad(state.kw)
    if state.kw is None or abs(measured_kw - state.kw) <= tolerance_kw:
        return CommonLoad(measured_kw)
    if state.candidate_kw is None or abs(measured_kw - state.candidate_kw) > tolerance_kw:
        return CommonLoad(state.kw, measured_kw, now_s)
    if now_s - state.since_s >= hold_s:
        return CommonLoad(measured_kw)
    return CommonLoad(state.kw, state.candidate_kw, state.since_s)


def screen(
    bounds: MeterBounds,
    state: Screen,
    value_kw: float,
    witness_kw: float | None = None,
    tolerance_kw: float = 0.0,
) -> tuple[Verdict, Screen]:
    """Judge one reading `value_kw` of a meter in `state`. `witness_kw`: what the park meter says
    this meter should read (None: no witness), within `tolerance_kw`."""
    if not math.isfinite(value_kw) or not bounds.low_kw <= value_kw <= bounds.high_kw:
        return Verdict.OUT_OF_RANGE, state
    if witness_kw is not None and math.isfinite(witness_kw):
        agrees = abs(value_kw - witness_kw) <= tolerance_kw
    else:
        agrees = None
    last = state.taken_kw
    if last is None or abs(value_kw - last) <= bounds.step_kw or agrees is True:
        return Verdict.TAKEN, Screen(value_kw)
    if agrees is False:
        return Verdict.CONTRADICTED, Screen(last)
    settle = _SETTLE_SHARE * bounds.rating_kw
    if state.suspect_kw is None or abs(value_kw - state.suspect_kw) > settle:
        seen = 1
    else:
        seen = state.suspect_readings + 1
    if seen >= CONFIRM_READINGS:
        return Verdict.TAKEN, Screen(value_kw)
    return Verdict.SUSPECT, Screen(last, value_kw, seen)
