"""The reading store: the latest reading of every device, and the control core's `Snapshot` built from it.

Pollers `put` readings as they arrive; the control loop takes a `snapshot`
once per cycle and never talks to a device (OpenEMS' cycle: read everything,
decide on a frozen picture, write).

How devices map onto the core's per-company readings (`Layout`):

- **grid**: the company's `grid_meter` devices, summed; the age is the oldest
  one's. A company without a grid meter gets the park meter's reading less
  every other company's, when there is a `park_meter` and exactly one company
  lacks a meter (the usual "the last tenant has no meter of its own"). Else
  its grid reading is missing, and the core goes to fail-safe: a cap cannot
  be held without seeing the connection.
- **park meter** (a shared connection, `park.connection: shared`): its reading
  goes to the core as `Snapshot.park_meter`, on which the park caps are held
  (the companies' meters split it); missing or stale, the core is in
  fail-safe. On a group contract there is none and the caps are on the
  companies' sum.
- **A stale company meter behind a fresh park meter** (a shared connection):
  when exactly one company's grid reading is stale (missing, frozen, or its
  readings not taken) and the park meter and every other company's meter are
  fresh, that company's grid becomes the park meter less the others and the
  common load in use (`_stand_in`; `CompanyReading.grid_from_park_meter`,
  published per company), and control goes on: the caps are the park meter's
  and it still sees the whole connection. Fail-safe there cut the PV to the
  zero-load export rule and let the import cap go (the shared-connection test:
  the park meter at 305 kW against 150 for a minute). The company's own caps
  are held on that figure; its error is the common load's drift since it was
  last measured. Two stale companies, or a stale park meter: fail-safe.
- **pv** / **battery**: the company's devices of that role, summed (state of
  charge: the mean). A reading older than `stale_after_s` is left out; with
  none left the value is None ("not available", never 0), so the core does
  not dispatch a battery it cannot see and control of the others goes on.
- **A battery that takes no setpoint at all** (the setpoint writer's report,
  `setpoint_unsupported`: a map without a setpoint point, no SunSpec control
  model): its state of charge is left out, so the core does not count on it;
  its power still counts. A setpoint refused for its value is not reported
  here: the writer clamps it and the battery stays controlled.

Ages are measured on the service's monotonic clock (`Reading.read_at_s`).

**A battery reading behind its meter.** The pollers read each connection on its own, so a
company's grid meter may already show hubctl's last setpoint write to its battery while the
battery's own reading does not (read before the write, or after it but before the battery took
it). The writer reports when it sent each battery setpoint (`setpoint_written`); the company's
reading then says `battery_behind` (a meter point changed after that write, the battery's power
reading has not moved since it, and the write is at most `answer_s` old), and the core guards
each cap at its own end of what the meter may have seen (docs/control.md, "Readings from different
moments").

**An implausible reading is not taken** (`hubctl.core.plausibility`: out of the range the
connection and its devices allow, a large step not confirmed, a step the park meter contradicts).
The meter's reading then keeps its age: a meter that keeps lying goes stale, and the core to
fail-safe. The first rejection of an episode is logged (warning), and its end (info); every
rejection is counted (`rejected`).

**A frozen meter is a stale meter.** A meter whose firmware hangs keeps
answering with the same registers; a reading is therefore as old as the last
time any of its points changed (power, energy counters, voltages), not as old
as the last answer. Real meters change every second (noise in the last digit,
energy counters); so does the simulator's. This applies to grid and park
meters only: an idle battery or PV at night may legitimately read the same.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubctl.config.devices import DeviceRole
from hubctl.core.plausibility import (
    CommonLoad,
    MeterBounds,
    Screen,
    Verdict,
    follow_common,
    meter_bounds,
    screen,
)
from hubctl.core.types import CompanyReading, ParkMeterReading, Snapshot

if TYPE_CHECKING:
    from hubctl.config.site import SiteConfig
    from hubctl.devices.base import Reading

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


@dataclass(frozen=True, slots=True)
class Layout:
    """Which devices feed which company of the core, in config order."""

    company_ids: tuple[str, ...]
    grid: tuple[tuple[str, ...], ...]
    pv: tuple[tuple[str, ...], ...]
    battery: tuple[tuple[str, ...], ...]
    park_meter: str | None  # a shared connection's meter (at most one: `SiteConfig` refuses more)
    residual: int | None  # the company whose grid reading is park meter minus the others
    bounds: dict[str, MeterBounds] = field(default_factory=dict)  # every meter's plausible readings
    tolerance_kw: float = 0.0  # the park meter witness's tolerance (`park.meter_tolerance_kw`)

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Layout:
        ids = tuple(c.id for c in cfg.companies)

        def of(role: DeviceRole) -> tuple[tuple[str, ...], ...]:
            return tuple(
                tuple(d.id for d in cfg.devices if d.role is role and d.company == cid) for cid in ids
            )

        grid = of(DeviceRole.GRID_METER)
        park = [d.id for d in cfg.devices if d.role is DeviceRole.PARK_METER]
        park_meter = park[0] if park else None
        lacking = [i for i, g in enumerate(grid) if not g]
        residual = lacking[0] if park_meter is not None and len(lacking) == 1 else None
        return cls(
            ids,
            grid,
            of(DeviceRole.PV),
            of(DeviceRole.BATTERY),
            park_meter,
            residual,
            meter_bounds(cfg),
            cfg.park.meter_tolerance(),
        )

    def unmetered(self) -> list[str]:
        """Companies with no grid reading at all: the service runs, but in fail-safe."""
        return [
            cid
            for i, (cid, g) in enumerate(zip(self.company_ids, self.grid, strict=True))
            if not g and i != self.residual
        ]


class ReadingStore:
    """Latest reading per device; `snapshot` turns them into the core's view."""

    def __init__(self, layout: Layout, stale_after_s: float, answer_s: float = 2.0) -> None:
        self.layout = layout
        self.stale_after_s = stale_after_s
        # how long after a setpoint write a battery reading that has not moved may still be behind
        # its meter (the gateway: two control cycles); after that the reading is taken as the truth
        self.answer_s = answer_s
        self.latest: dict[str, Reading] = {}
        self.changed_at: dict[str, float] = {}  # meters: when a point last changed
        self._no_setpoint: set[str] = set()  # batteries that take no setpoint: see setpoint_unsupported
        self._meters = {d for ids in layout.grid for d in ids} | (
            {layout.park_meter} if layout.park_meter else set()
        )
        self._company_of = {d: i for i, ids in enumerate(layout.grid) for d in ids}
        self._screens: dict[str, Screen] = {}
        self._doubted: dict[str, Verdict] = {}  # meters whose last reading was not taken, and why
        self.rejected: dict[str, int] = {}  # implausible readings per meter, since start
        self._raw: dict[str, tuple[float, float]] = {}  # meter -> its latest power as read, and when
        self._witnessed: dict[str, float] = {}  # meter -> the witness at its last reading
        self._seen: dict[str, tuple[dict[str, Any], bool]] = {}  # meter -> its last points, and if taken
        self._common = CommonLoad()  # the park meter less the companies, while every meter is believed
        self._standing_in: str | None = None  # the company whose stale meter the park meter stands in for
        self._battery_sent_at: dict[str, float] = {}  # battery -> when its last setpoint was sent
        self._battery_moved_at: dict[str, float] = {}  # battery -> when its power reading last changed

    def put(self, reading: Reading) -> None:
        device_id = reading.device_id
        if device_id in self.layout.bounds and not self._plausible(reading):
            return
        previous = self.latest.get(device_id)
        if reading.role is DeviceRole.BATTERY and (
            previous is None or previous.values.get("power_kw") != reading.values.get("power_kw")
        ):
            self._battery_moved_at[device_id] = reading.read_at_s
        if device_id in self._meters and (previous is None or previous.point_values != reading.point_values):
            self.changed_at[device_id] = reading.read_at_s
        self.latest[device_id] = reading

    def _plausible(self, reading: Reading) -> bool:
        """Screen a meter's reading (`hubctl.core.plausibility`): a step is confirmed only by a new
        measurement (other point values), not by the same one read twice."""
        device_id = reading.device_id
        value = reading.values.get("power_kw")
        if value is None:
            return True  # no power at all: the reading is missing, which the snapshot already sees
        seen = self._seen.get(device_id)
        if seen is not None and seen[0] == reading.point_values:
            return seen[1]  # the same measurement again (an MQTT meter between messages): no new evidence
        taken = self._screen(reading, value)
        self._seen[device_id] = (dict(reading.point_values), taken)
        return taken

    def _screen(self, reading: Reading, value: float) -> bool:
        """One new measurement through the screen; the log lines and counts of an episode."""
        device_id = reading.device_id
        bounds = self.layout.bounds[device_id]
        state = self._screens.get(device_id, Screen())
        witness = self._witness(device_id, reading.read_at_s)
        self._raw[device_id] = (value, reading.read_at_s)
        # the witness is made of meters read at other moments: while they move (a battery ramping
        # answers a step) it is as uncertain as it moved since this meter's last reading
        before = self._witnessed.pop(device_id, None)
        moved = 0.0 if witness is None or before is None else abs(witness - before)
        if witness is not None:
            self._witnessed[device_id] = witness
        tolerance = self.layout.tolerance_kw + moved
        verdict, self._screens[device_id] = screen(bounds, state, value, witness, tolerance)
        doubted = self._doubted.get(device_id)
        if verdict is Verdict.TAKEN:
            if doubted is not None:
                del self._doubted[device_id]
                log.info("%s: its readings are plausible again (%.1f kW)", device_id, value)
            return True
        self.rejected[device_id] = self.rejected.get(device_id, 0) + 1
        if doubted is None:
            log.warning(
                "%s: reading %.6g kW is implausible (%s; plausible %.0f to %.0f kW, steps up to %.0f kW "
                "unless the next reading confirms them): not taken, the meter counts as stale after %.0f s",
                device_id,
                value,
                verdict.value,
                bounds.low_kw,
                bounds.high_kw,
                bounds.step_kw,
                self.stale_after_s,
            )
        self._doubted[device_id] = verdict
        return False

    def _raw_kw(self, ids: tuple[str, ...], now_s: float) -> float | None:
        """The meters' latest powers as read (taken or not), summed; None when one is missing or old."""
        total = 0.0
        for device_id in ids:
            raw = self._raw.get(device_id)
            if raw is None or not math.isfinite(raw[0]) or now_s - raw[1] > self.stale_after_s:
                return None
            total += raw[0]
        return total

    def _witness(self, device_id: str, now_s: float) -> float | None:
        """What the other side of a shared connection says `device_id` should read now (None: no
        witness: no park meter, or a meter on the other side missing or not read lately).

        The other side's latest readings as read, taken or not: a real step shows on both sides,
        and each side's first reading of it is a suspect until the other confirms it."""
        lay = self.layout
        if lay.park_meter is None or lay.residual is not None:
            return None
        own = self._company_of.get(device_id)
        others = [self._raw_kw(ids, now_s) for i, ids in enumerate(lay.grid) if i != own]
        if any(g is None for g in others):
            return None
        summed = math.fsum(g for g in others if g is not None)
        if device_id == lay.park_meter:
            return summed + (self._common.kw or 0.0)
        park = self._raw_kw((lay.park_meter,), now_s)
        mine = [d for d in lay.grid[own] if d != device_id] if own is not None else []
        siblings = self._raw_kw(tuple(mine), now_s)  # the company's other meters, if it has several
        if park is None or siblings is None:
            return None
        return park - summed - siblings - (self._common.kw or 0.0)

    def _counters_of(self, ids: tuple[str, ...]) -> tuple[float, float] | None:
        """The meters' energy counters summed (import kWh, export kWh) as last taken; None when one
        has none (or no meter at all)."""
        if not ids:
            return None
        imp = exp = 0.0
        for device_id in ids:
            reading = self.latest.get(device_id)
            if reading is None:
                return None
            i, e = reading.values.get("energy_import_kwh"), reading.values.get("energy_export_kwh")
            if i is None or e is None or not (math.isfinite(i) and math.isfinite(e)):
                return None
            imp, exp = imp + i, exp + e
        return imp, exp

    def counters(self) -> tuple[tuple[tuple[float, float] | None, ...], tuple[float, float] | None]:
        """Every company's grid meters' energy counters (import, export kWh; None: not all have them)
        and the park meter's, from the readings taken (`CounterFill` fills gaps with them)."""
        lay = self.layout
        park = self._counters_of((lay.park_meter,)) if lay.park_meter is not None else None
        return tuple(self._counters_of(ids) for ids in lay.grid), park

    def setpoint_unsupported(self, device_id: str, kind: str) -> None:
        """The setpoint writer's report that `device_id` takes no `kind` setpoint at all: a battery's
        state of charge is then hidden from the core (its power still counts as load)."""
        if kind == "battery":
            self._no_setpoint.add(device_id)

    def setpoint_written(self, device_id: str, kind: str, sent_at_s: float) -> None:
        """The setpoint writer's report that `device_id` took a `kind` setpoint sent at `sent_at_s`."""
        if kind == "battery":
            self._battery_sent_at[device_id] = sent_at_s

    def _battery_behind(self, grid_ids: tuple[str, ...], bat_ids: tuple[str, ...], now_s: float) -> bool:
        """A battery of the company whose power reading has not moved since its last setpoint was
        sent (within `answer_s` of the write), and a meter of the company (the park meter for the
        company computed from it) that changed after the write.

        Not "read before the write": a battery read after the write may not have taken it yet (a
        device applies a setpoint at its next internal step, a real one after its response time),
        while a meter read a moment later already shows it; `bench/gateway.py` swung in exactly
        that order."""
        meters = grid_ids or ((self.layout.park_meter,) if self.layout.park_meter else ())
        seen = [self.changed_at[d] for d in meters if d in self.changed_at]
        if not seen:
            return False
        meter_at = max(seen)
        for device_id in bat_ids:
            sent = self._battery_sent_at.get(device_id)
            moved = self._battery_moved_at.get(device_id)
            if sent is None or moved is None or now_s - sent > self.answer_s:
                continue
            if moved < sent < meter_at:
                return True
        return False

    @property
    def batteries_without_setpoint(self) -> frozenset[str]:
        """The batteries reported by `setpoint_unsupported`: seen, not dispatched."""
        return frozenset(self._no_setpoint)

    def age_s(self, device_id: str, now_s: float) -> float | None:
        reading = self.latest.get(device_id)
        return None if reading is None else max(0.0, now_s - reading.read_at_s)

    def _grid(self, ids: tuple[str, ...], now_s: float) -> tuple[float | None, float]:
        total, age = 0.0, 0.0
        for device_id in ids:
            reading = self.latest.get(device_id)
            power = None if reading is None else reading.values.get("power_kw")
            if reading is None or power is None or not math.isfinite(power):
                return None, math.inf
            total += power
            age = max(age, now_s - self.changed_at.get(device_id, reading.read_at_s))
        return total, max(age, 0.0)

    def _fresh(self, ids: tuple[str, ...], key: str, now_s: float) -> list[float]:
        out = []
        for device_id in ids:
            if key == "soc_pct" and device_id in self._no_setpoint:
                continue
            reading = self.latest.get(device_id)
            if reading is None or now_s - reading.read_at_s > self.stale_after_s:
                continue
            value = reading.values.get(key)
            if value is not None and math.isfinite(value):
                out.append(value)
        return out

    def _stand_in(self, grids: list[tuple[float | None, float]], now_s: float) -> int | None:
        """The one company whose grid reading is stale on a shared connection whose park meter and
        other meters are fresh: its reading becomes the park meter less the others and the common
        load in use (`grids` updated; its index returned). Else None: with two or more stale, or the
        park meter stale, the core is in fail-safe. An episode's start and end are logged."""
        lay = self.layout
        index = None
        if lay.park_meter is not None and lay.residual is None:
            stale = [i for i, (g, age) in enumerate(grids) if g is None or age > self.stale_after_s]
            park, park_age = self._grid((lay.park_meter,), now_s)
            if len(stale) == 1 and park is not None and park_age <= self.stale_after_s:
                index = stale[0]
                others = [g for i, g in enumerate(grids) if i != index]
                rest = park - math.fsum(g for g, _ in others if g is not None) - (self._common.kw or 0.0)
                grids[index] = (rest, max([park_age, *(a for _, a in others)]))
        company = None if index is None else lay.company_ids[index]
        if company != self._standing_in:
            if company is not None:
                log.warning(
                    "%s: its grid meter is stale; its grid is taken as the park meter less the other "
                    "companies and the common load (%.1f kW) until the meter reads again: the caps stay "
                    "held on the park meter",
                    company,
                    self._common.kw or 0.0,
                )
            else:
                log.info("%s: its grid meter reads again", self._standing_in)
            self._standing_in = company
        return index

    def snapshot(self, ts_utc: float, now_s: float) -> Snapshot:
        lay = self.layout
        grids = [self._grid(ids, now_s) if ids else (None, math.inf) for ids in lay.grid]
        if lay.residual is not None and lay.park_meter is not None:
            park, park_age = self._grid((lay.park_meter,), now_s)
            others = [g for i, g in enumerate(grids) if i != lay.residual]
            if park is not None and all(g is not None for g, _ in others):
                rest = park - sum(g for g, _ in others if g is not None)
                grids[lay.residual] = (rest, max([park_age, *(a for _, a in others)]))
        stand_in = self._stand_in(grids, now_s)
        companies = []
        for i, ((grid, age), grid_ids, pv_ids, bat_ids) in enumerate(
            zip(grids, lay.grid, lay.pv, lay.battery, strict=True)
        ):
            meters = () if i == stand_in else grid_ids  # a stand-in's battery: against the park meter
            pv = self._fresh(pv_ids, "power_kw", now_s)
            bat = self._fresh(bat_ids, "power_kw", now_s)
            soc = self._fresh(bat_ids, "soc_pct", now_s)
            companies.append(
                CompanyReading(
                    grid_kw=grid,
                    pv_kw=math.fsum(pv) if pv else None,
                    battery_kw=math.fsum(bat) if bat else None,
                    soc_pct=math.fsum(soc) / len(soc) if soc else None,
                    grid_age_s=age if math.isfinite(age) else 1e9,
                    battery_behind=bool(bat) and self._battery_behind(meters, bat_ids, now_s),
                    grid_from_park_meter=i == stand_in,
                )
            )
        park_meter = None
        if lay.park_meter is not None:
            park, park_age = self._grid((lay.park_meter,), now_s)
            park_meter = ParkMeterReading(park, park_age if math.isfinite(park_age) else 1e9)
        snap = Snapshot(ts_utc, tuple(companies), park_meter=park_meter)
        common = snap.common_kw()
        believed = (
            stand_in is None
            and not self._doubted
            and all(c.grid_age_s <= self.stale_after_s for c in companies)
        )
        measured = (
            common if park_meter is not None and park_meter.age_s <= self.stale_after_s and believed else None
        )
        # the witness's offset: a jump is adopted once it held for stale_after_s (a measurement
        # that straddled a step is not: `hubctl.core.plausibility`, "The common load")
        self._common = follow_common(self._common, measured, now_s, lay.tolerance_kw, self.stale_after_s)
        return snap
