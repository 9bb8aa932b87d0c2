"""The control loop: snapshot, step, write, then the after-cycle steps in their order.

What it is:

- `Controller`: what the core decides from, cycle after cycle: `params` (rebuilt when the
  operator's schedules change), `state` (what `hubctl.core.control.step` carries forward) and the
  operator API whose overrides every snapshot carries.
- `OperatorSync`: when the operator API's revision moves, the params' LimitClock is rebuilt from
  `api.limit_clock(now)` (operator day schedules), the ledger takes the operator's sharing key and
  the devices' fallback limits are renewed.
- `ControlLoop`: on the monotonic clock every `control.cycle_s`: snapshot the store, call `step`
  (the very function `hubctl sim` runs), write the setpoints that changed and re-write those whose
  revert timers are due; then the **after-cycle steps**, an ordered list of `AfterStep`s (the
  gateway composes it: quarter meter, ledger, history, the accelerated jobs, the operator's state,
  mode, readiness, watchdog, the cycle record). Each step is isolated with its own failure
  handling: it names the errors it survives (logged once, the other steps still run); an error
  it does not name stops the service, as before the steps were split out.
- `LedgerFeed`, `OperatorView`, `CycleRecords`: three of those steps.
- `MeterCheck`: on a shared connection, the park meter against the companies' meters summed; a
  difference beyond `park.meter_tolerance_kw` for `MeterCheck.persist_s` is logged (once, and once
  when they agree again) and published with every cycle (the park point's `common_kw`, the operator
  state's `park.meter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hubctl.core.control import stale_meters, step
from hubctl.core.quarters import ParkStep
from hubctl.core.types import NO_OVERRIDES, CompanyReading, Snapshot
from hubctl.data.ledger import rule_from_config
from hubctl.service.sinks import CycleRecord, total
from hubctl.service.tasks import raise_if_cancelled

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from hubctl.config.site import SiteConfig
    from hubctl.core.types import Decision, Overrides, Params, State
    from hubctl.data.ledger import Ledger
    from hubctl.devices.health import Health
    from hubctl.service.clock import Clock
    from hubctl.service.fallbacks import FallbackTargets
    from hubctl.service.operator_api import OperatorApi
    from hubctl.service.sinks import TelemetrySink
    from hubctl.service.store import ReadingStore
    from hubctl.service.writer import SetpointWriter

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


# --- what the core decides from ----------------------------------------------------------------------------


class Controller:
    """The core's params and state, carried from cycle to cycle, and the operator API (once it runs)."""

    def __init__(self, params: Params, state: State) -> None:
        self.params = params
        self.state = state
        self.api: OperatorApi | None = None

    def overrides(self, ts: float) -> Overrides:
        """The operator's overrides in force at `ts` (none without an operator API)."""
        return self.api.current_overrides(ts) if self.api is not None else NO_OVERRIDES

    def decide(self, snap: Snapshot) -> Decision:
        """One step of the core; the state moves on."""
        decision, self.state = step(snap, self.state, self.params)
        return decision

    def failsafe(self, ts_utc: float, companies: int) -> Decision:
        """The decision with no reading at all (the shutdown's fail-safe setpoints); the state stays."""
        snap = Snapshot(ts_utc, tuple(CompanyReading(grid_kw=None) for _ in range(companies)))
        decision, _ = step(snap, self.state, self.params)
        return decision


class OperatorSync:
    """Applies the operator API's settings to the controller, the ledger and the fallbacks on a change."""

    def __init__(
        self,
        cfg: SiteConfig,
        api: OperatorApi,
        controller: Controller,
        ledger: Ledger | None,
        fallbacks: FallbackTargets,
    ) -> None:
        self.cfg = cfg
        self.api = api
        self.controller = controller
        self.ledger = ledger
        self.fallbacks = fallbacks
        self.revision = -1

    def apply(self, ts: float) -> None:
        """Rebuild the LimitClock (operator schedules) and the ledger's sharing key when the API changed."""
        api = self.api
        if api.revision == self.revision:
            return
        try:
            self.controller.params = replace(self.controller.params, limits=api.limit_clock(ts))
            if self.ledger is not None:
                self.ledger.rule = api.sharing(ts) or rule_from_config(self.cfg)
        except Exception:
            log.exception("the operator settings could not be applied; keeping the previous caps")
        else:
            if self.revision >= 0 or api.revision:
                log.info("operator settings applied (revision %d)", api.revision)
            self.fallbacks.update(ts)  # an operator's export limit or schedule may lower them
        self.revision = api.revision


# --- the loop and its after-cycle steps --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterVerdict:
    """A shared connection's park meter against the companies' meters, in one cycle (kW, + import)."""

    device: str
    park_kw: float | None
    companies_kw: float | None  # None: a company meter not read
    common_kw: float | None  # park - companies: common loads and losses at the connection
    tolerance_kw: float
    disagree: bool  # beyond the tolerance for `MeterCheck.persist_s`, until back within it as long


class MeterCheck:
    """The park meter against the companies' sum, cycle after cycle (module docstring)."""

    persist_s = 10.0  # the meters are read at slightly different moments: a step shows for a cycle or two

    def __init__(self, device: str, tolerance_kw: float) -> None:
        self.device = device
        self.tolerance_kw = tolerance_kw
        self.disagree = False
        self._since: float | None = None  # when the reading last crossed to the other side

    def check(self, snap: Snapshot) -> MeterVerdict:
        park = snap.park_grid_kw()
        common = snap.common_kw()
        companies = None if park is None or common is None else park - common
        if common is not None:
            beyond = abs(common) > self.tolerance_kw
            if beyond == self.disagree:
                self._since = None
            elif self._since is None:
                self._since = snap.ts_utc
            elif snap.ts_utc - self._since >= self.persist_s:
                self.disagree, self._since = beyond, None
                self._log(park, companies, common)
        return MeterVerdict(self.device, park, companies, common, self.tolerance_kw, self.disagree)

    def _log(self, park: float | None, companies: float | None, common: float) -> None:
        if self.disagree:
            log.warning(
                "park meter %s reads %.1f kW, the companies' meters sum to %.1f kW: %.1f kW apart, more "
                "than the %.1f kW tolerance for %.0f s (common loads, or a meter wired or scaled wrong); "
                "the caps are held on the park meter",
                self.device,
                park,
                companies,
                common,
                self.tolerance_kw,
                self.persist_s,
            )
        else:
            log.info(
                "park meter %s and the companies' meters agree again (%.1f kW apart, tolerance %.1f kW)",
                self.device,
                common,
                self.tolerance_kw,
            )


@dataclass(frozen=True, slots=True)
class FillStep:
    """A gap in the readings filled from the meters' energy counters: the step ``[ts, ts + dt_s)`` at
    each company's mean grid power over it (and the park meter's, on a shared connection)."""

    ts: float
    dt_s: float
    grid_kw: tuple[float, ...]
    park_kw: float | None  # None: the companies' sum (a group contract)


Counters = tuple[tuple[tuple[float, float] | None, ...], tuple[float, float] | None]


class CounterFill:
    """Fills the steps a stale meter left uncovered from the meters' energy counters (#13 item 7).

    While any meter is stale the steps are not measured (`CycleFacts.measured`). When every meter is
    fresh again, the gap since the last measured step is filled, per company, from its meters' energy
    counters (import and export kWh before and after: the mean power over the gap), or, for a company
    whose meters have none but stayed fresh through the gap, from its power as read each cycle. A
    company with neither (or a counter that went backwards: a meter replaced or reset) leaves the
    gap unfilled. The step is marked filled (`ParkStep.filled`: the ledger's `filled_s`, the journal's
    quarter line). Within the gap import and export are netted to the mean; a quarter or a
    settlement interval that closed during the gap is not reopened.
    """

    def __init__(self, counters: Callable[[], Counters], stale_after_s: float) -> None:
        self.counters = counters
        self.stale_after_s = stale_after_s
        self._last: tuple[float, Counters] | None = None  # the last measured step's end, its counters
        self._gap: list[float | None] | None = None  # kWh read per company while fresh; None: stale once
        self._park_gap: float | None = None
        self._unfilled_logged = False

    def step(self, facts: CycleFacts) -> FillStep | None:
        """The fill due with this cycle (before its own step), if any."""
        if not facts.measured:
            self._in_gap(facts)
            return None
        counters = self.counters()
        fill = None
        if self._gap is not None and self._last is not None:
            fill = self._fill(facts.ts, counters, shared=facts.snap.park_meter is not None)
        self._last = (facts.ts + facts.dt_s, counters)
        self._gap = None
        return fill

    def _in_gap(self, facts: CycleFacts) -> None:
        """An unmeasured cycle: what the fresh meters read is kept for the companies without counters."""
        if self._last is None:
            return  # nothing measured yet: no gap to fill
        snap = facts.snap
        if self._gap is None:
            self._gap = [0.0] * len(snap.companies)
            self._park_gap = 0.0
        h = facts.dt_s / 3600.0
        for i, r in enumerate(snap.companies):
            done = self._gap[i]
            fresh = r.grid_kw is not None and r.grid_age_s <= self.stale_after_s
            self._gap[i] = None if done is None or not fresh else done + (r.grid_kw or 0.0) * h
        pm = snap.park_meter
        if (
            self._park_gap is not None
            and pm is not None
            and pm.grid_kw is not None
            and pm.age_s <= self.stale_after_s
        ):
            self._park_gap += pm.grid_kw * h
        else:
            self._park_gap = None

    def _fill(self, now: float, after: Counters, *, shared: bool) -> FillStep | None:
        assert self._last is not None
        assert self._gap is not None
        start, before = self._last
        dt = now - start
        if dt <= 0:
            return None
        h = dt / 3600.0
        means: list[float] = []
        for i, (b, a) in enumerate(zip(before[0], after[0], strict=True)):
            kwh = _delta(b, a)
            if kwh is None:
                kwh = self._gap[i]
            if kwh is None:
                self._say_unfilled(f"company {i + 1} has no energy counters and its meter was stale")
                return None
            means.append(kwh / h)
        park_kw = None
        if shared:  # the park meter's own figure: it shows the common loads too
            park_kwh = _delta(before[1], after[1])
            if park_kwh is None:
                park_kwh = self._park_gap
            if park_kwh is None:
                self._say_unfilled("the park meter's counters are not usable and it was stale")
                return None
            park_kw = park_kwh / h
        return FillStep(start, dt, tuple(means), park_kw)

    def _say_unfilled(self, why: str) -> None:
        if not self._unfilled_logged:
            log.info("a gap in the readings is left uncovered (logged once): %s", why)
        self._unfilled_logged = True


def _delta(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Net import (kWh) between two counter readings; None without both, or if one went backwards."""
    if before is None or after is None:
        return None
    d_imp, d_exp = after[0] - before[0], after[1] - before[1]
    if d_imp < 0 or d_exp < 0:
        return None
    return d_imp - d_exp


@dataclass(frozen=True, slots=True)
class CycleFacts:
    """What one cycle saw and did, as every after-cycle step gets it."""

    snap: Snapshot
    decision: Decision
    ts: float  # wall clock (UTC) of the snapshot
    dt_s: float  # the step just measured: since the last cycle, at most 60 s
    park_kw: float | None  # the park's grid power as the caps judge it (`Snapshot.park_grid_kw`)
    writes: int
    failed_writes: int
    latency_ms: float
    started: float  # the loop's start on the monotonic clock
    meter: MeterVerdict | None = None  # a shared connection's park meter against the companies' sum
    # every grid meter (and park meter) fresh (`hubctl.core.control.stale_meters`): only then is the
    # step measured, for the ledger and the quarter-hour evidence; a stale meter's last value is not
    measured: bool = True
    fill: FillStep | None = None  # a gap before this step, filled from energy counters (`CounterFill`)

    @property
    def measured_park_kw(self) -> float | None:
        """The park's grid power where the step was measured, else None (not covered)."""
        return self.park_kw if self.measured else None


@dataclass(frozen=True, slots=True)
class AfterStep:
    """One after-cycle step: `run` with the errors it survives (`survives`, logged once as `failure`)."""

    name: str
    run: Callable[[CycleFacts], None]
    survives: tuple[type[Exception], ...] = ()
    failure: str = ""


class ControlLoop:
    """The control cycle (module docstring); runs until cancelled."""

    def __init__(
        self,
        cfg: SiteConfig,
        clock: Clock,
        store: ReadingStore,
        controller: Controller,
        writer: SetpointWriter,
        after: Sequence[AfterStep],
        operator: OperatorSync | None = None,
        meter_check: MeterCheck | None = None,
    ) -> None:
        self.cfg = cfg
        self.meter_check = meter_check
        self.filler = CounterFill(store.counters, cfg.control.stale_after_s)
        self.clock = clock
        self.store = store
        self.controller = controller
        self.writer = writer
        self.after = tuple(after)
        self.operator = operator
        self.last_decision: Decision | None = None
        self.cycles = 0
        self._failed: set[str] = set()  # the steps whose failure was logged

    async def run(self, first_pass: Sequence[asyncio.Event]) -> None:
        cycle_s = self.cfg.control.cycle_s
        # the first decision waits for one round of polls (or until a reading would be stale anyway)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.clock.real_s(self.cfg.control.stale_after_s)):
                await asyncio.gather(*(e.wait() for e in first_pass))
        started = self.clock.mono()
        next_t = started
        last_ts: float | None = None
        late = False
        while True:
            t0 = time.perf_counter()
            now = self.clock.mono()
            ts = self.clock.utc()
            snap = self.store.snapshot(ts, now)
            if self.operator is not None:
                self.operator.apply(ts)
                snap = replace(snap, overrides=self.operator.api.current_overrides(ts))
            decision = self.controller.decide(snap)
            writes, failed = await self.writer.apply(decision, budget_s=self.clock.real_s(0.8 * cycle_s))
            raise_if_cancelled()
            latency_ms = (time.perf_counter() - t0) * 1000
            self.last_decision = decision
            self.cycles += 1
            dt_s = cycle_s if last_ts is None else min(max(ts - last_ts, 0.0), 60.0)
            meter = None if self.meter_check is None else self.meter_check.check(snap)
            measured = not stale_meters(snap, self.controller.params)
            facts = CycleFacts(
                snap,
                decision,
                ts,
                dt_s,
                snap.park_grid_kw(),
                writes,
                failed,
                latency_ms,
                started,
                meter,
                measured,
            )
            fill = self.filler.step(facts)
            self.after_cycle(replace(facts, fill=fill) if fill is not None else facts)
            last_ts = ts
            next_t += cycle_s
            now = self.clock.mono()
            if next_t < now:
                if not late:
                    log.warning("control cycle overran by %.0f ms; skipping to now", (now - next_t) * 1000)
                late = True
                next_t = now
            else:
                late = False
            await asyncio.sleep(self.clock.real_s(next_t - now))

    def after_cycle(self, facts: CycleFacts) -> None:
        """The after-cycle steps in order, each isolated (module docstring)."""
        for after in self.after:
            try:
                after.run(facts)
            except after.survives:
                if after.name not in self._failed:
                    log.exception(after.failure)
                self._failed.add(after.name)


class LedgerFeed:
    """The ledger step: the step just measured (only with every grid meter fresh: uncovered otherwise;
    a silent or frozen meter's last value is not a measurement).

    Curtailed PV is the controller's estimate the decision carries (`Decision.pv_available`, the
    rule of `hubctl.core.park.curtailed_pv_kw`), marked as an estimate: no device tells the
    gateway its available PV. A fail-safe decision carries none (it decides without observing),
    so its seconds add no curtailed energy. In accelerated mode it also settles the intervals
    that ended (the quarter-hour job's part).
    """

    def __init__(self, ledger: Ledger, *, accelerated: bool) -> None:
        self.ledger = ledger
        self.accelerated = accelerated

    def __call__(self, facts: CycleFacts) -> None:
        companies = facts.snap.companies
        fill = facts.fill
        if fill is not None:
            step_info = ParkStep.under(facts.decision.park_limits, filled=True)
            self.ledger.add_step(fill.ts, fill.grid_kw, fill.dt_s, step_info, park_kw=fill.park_kw)
        park_kw = facts.measured_park_kw
        if park_kw is not None:
            pv = total([r.pv_kw for r in companies])
            bat = total([r.battery_kw for r in companies])
            available = facts.decision.pv_available
            step_info = ParkStep.under(
                facts.decision.park_limits,
                load_kw=None if pv is None or bat is None else park_kw + pv + bat,
                pv_kw=pv,
                curtailed_kw=None if available is None else available.park_curtailed_kw,
                curtailed_estimated=True,
            )
            grids = [r.grid_kw for r in companies]
            if all(g is not None for g in grids):  # else not covered: a company's share is unknown
                self.ledger.add_step(
                    facts.ts,
                    [g for g in grids if g is not None],
                    facts.dt_s,
                    step_info,
                    park_kw=park_kw,
                )
        if self.accelerated:
            self.ledger.close_due(facts.ts)


class OperatorView:
    """The operator API's step: keeps the last cycle for its state document and offers the document."""

    def __init__(self, api: OperatorApi) -> None:
        self.api = api
        self.last: tuple[float, Decision, tuple[CompanyReading, ...], MeterVerdict | None] | None = None

    def __call__(self, facts: CycleFacts) -> None:
        self.last = (facts.ts, facts.decision, facts.snap.companies, facts.meter)
        self.api.notify_state()


class CycleRecords:
    """The last step: the cycle as a `CycleRecord` to every sink."""

    def __init__(self, sinks: Sequence[TelemetrySink], health: Health) -> None:
        self.sinks = sinks
        self.health = health

    def __call__(self, facts: CycleFacts) -> None:
        if not self.sinks:
            return
        snap, decision = facts.snap, facts.decision
        lim = decision.park_limits
        available = decision.pv_available
        record = CycleRecord(
            ts_utc=facts.ts,
            mode=decision.mode,
            reason=decision.reason,
            park_grid_kw=facts.park_kw,
            common_kw=None if facts.meter is None else facts.meter.common_kw,
            meters_disagree=facts.meter is not None and facts.meter.disagree,
            import_cap_kw=lim.import_kw,
            export_cap_kw=lim.export_kw,
            cap_source=f"import {lim.import_source}, export {lim.export_source}",
            grid_kw=tuple(r.grid_kw for r in snap.companies),
            pv_kw=tuple(r.pv_kw for r in snap.companies),
            battery_kw=tuple(r.battery_kw for r in snap.companies),
            soc_pct=tuple(r.soc_pct for r in snap.companies),
            setpoint_kw=decision.battery_setpoint_kw,
            pv_limit_kw=decision.pv_limit_kw,
            latency_ms=facts.latency_ms,
            writes=facts.writes,
            failed_writes=facts.failed_writes,
            down=tuple(self.health.down()),
            import_source=lim.import_source,
            export_source=lim.export_source,
            pv_available_kw=() if available is None else available.available_kw,
            pv_available_estimated=() if available is None else available.estimated,
            grid_from_park_meter=tuple(r.grid_from_park_meter for r in snap.companies),
        )
        for sink in self.sinks:
            sink.cycle(record)
