"""The gateway service, `hubctl run`: pollers, the control loop, setpoint writes, fail-safe and shutdown.

One asyncio `TaskGroup` holds

- one **poller per connection** (one per Modbus host:port, one for all MQTT
  devices): it reads its devices every `poll_s` into the `ReadingStore` and
  reports each result to the debounced `Health`;
- the **control loop**, on the monotonic clock every `control.cycle_s`:
  snapshot the store, call `hubctl.control.step` (the very function `hubctl
  sim` runs), write the setpoints that changed and re-write those whose
  revert timers are due, then ping the systemd watchdog.

APScheduler (`AsyncIOScheduler`, explicit `misfire_grace_time`, `coalesce`,
`max_instances`: its default grace of 1 s would skip a late job silently)
runs the wall-clock jobs: the quarter-hour close (evidence: the mean, the cap
in force and its source, per quarter), the limit-change log at window
boundaries, and the daily job (summary; the devices' fallback limits renewed,
since the day schedules that count change). The control loop is not a
scheduler job.

Fail-safe (docs/failsafe.md): the core itself answers a stale or missing grid
meter with batteries at 0 kW and PV limited so that export cannot pass the
cap. A device that is down is skipped by the writer (its setpoint is
re-written when it answers again); it never stops the cycle for the others.
Every write carries the device's revert timer (`service.revert_s`), so after
a SIGKILL each device falls back on its own, to the value `FallbackKeeper`
configured where the device has a register for it (batteries 0 kW, PV the
fail-safe limit for the tightest export cap the configuration and the
operator can put in force: `hubctl.control.fallback_pv_limits`); it is
written to every battery and inverter once it answers (a device down at start
gets it when it recovers), renewed by the daily job and whenever the operator
settings change. SIGTERM/SIGINT: write the fail-safe setpoints, publish
`offline`, exit 0, all within 5 s.

Accelerated clock (`--speed`, `--start-utc`; for `hubctl demo` and the tests
against `hubctl simulate --speed`): the service's monotonic clock and wall
clock both run `speed` times faster from `start-utc`, so cycles, poll
intervals, staleness, revert timers and quarter-hours are all in simulated
seconds. The scheduler needs the real wall clock, so in accelerated mode the
control loop closes quarters itself.

Telemetry (`TelemetrySink`): a sink gets every cycle and every closed
quarter and must only enqueue (never block the cycle). `--trace FILE` is one
such sink (JSON lines), used by the demo and the tests.

Embedded components, each in its own task beside the TaskGroup (a failure
there is logged and the task restarted after 5 s; it never stops control),
and stopped only after the fail-safe setpoints are written:

- **Operator API** (`hubctl.operator_api.OperatorApi`, client id
  `hubctl-<site>-api`) whenever an MQTT broker is configured: every cycle's
  `Snapshot` carries `api.current_overrides(now)`; when `api.revision` moves,
  the params' LimitClock is rebuilt from `api.limit_clock(now)` (operator day
  schedules) and the ledger takes the operator's sharing key; the state
  document (`operator_api.state_document`) is offered after every cycle. The
  API owns `hubctl/<site>/status`; the MQTT device hub then connects without
  a status topic (and only when there are MQTT devices). Operator settings
  persist in `<state dir>/operator.json`.
- **Storage** when a state directory is known (`storage.dir`,
  `service.state_dir` or `$STATE_DIRECTORY`): `SpoolSink` appends every
  cycle's park/company/limit/setpoint points (and the API's command audit) to
  `<state dir>/spool.sqlite` (in memory; the spool's own task commits), the
  `Forwarder` drains it to InfluxDB when an InfluxDB URL is set, and the
  `Ledger` (`<state dir>/ledger.sqlite`) takes every cycle with all grid
  meters read (`add_step`) and settles its intervals from the quarter-hour
  job (from the control loop in accelerated mode).
- **Load history** (`hubctl.history_store`, `<state dir>/history.sqlite`): loaded
  at start into the controller's first state (`State.initial(params, history)`;
  the log says how many days of which type), saved whenever the history's
  revision moves (a quarter-hour completed: one day's row, a few ms, in the
  control loop) and at stop. A damaged file is moved aside and the service
  starts empty; a failed save is logged once and the days are written with the
  next quarter-hour. Without a state directory the history lives in memory only.
  The quarter in progress at a stop is not kept (it is not complete). The state
  document carries its summary (`history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import sqlite3
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from hubctl.config.devices import DeviceRole
from hubctl.config.paths import resolve_state_dir
from hubctl.core.control import (
    NO_OVERRIDES,
    CompanyReading,
    Decision,
    Params,
    Snapshot,
    State,
    fallback_pv_limits,
    step,
)
from hubctl.data.history_store import FILE_NAME as HISTORY_FILE
from hubctl.data.history_store import HistoryStore, summarize
from hubctl.data.influx import (
    Forwarder,
    InfluxWriter,
    command_point,
    company_point,
    health_point,
    limit_point,
    park_point,
    setpoint_point,
)
from hubctl.data.ledger import Ledger, ParkStep, rule_from_config
from hubctl.data.spool import Spool, bounds_from_config
from hubctl.devices.base import build_device
from hubctl.devices.health import Health
from hubctl.devices.health import State as HealthState
from hubctl.errors import EX_CONFIG, CommandRejectedError, ConfigError, DeviceConfigError, DeviceError
from hubctl.service.notify import Notifier
from hubctl.service.store import Layout, ReadingStore
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Sequence
    from pathlib import Path

    from hubctl.config.site import SiteConfig
    from hubctl.data.influx import Point
    from hubctl.devices.base import Device
    from hubctl.devices.mqtt import MqttHub
    from hubctl.service.operator_api import AuditRecord, OperatorApi

log = logging.getLogger("hubctl.service")  # the name the journal has always shown

EX_OK = 0
EX_FAILURE = 1
SHUTDOWN_BUDGET_S = 4.0  # fail-safe writes + offline within this; systemd's TimeoutStopSec is 5 s
QUARTER_S = 900.0


# --- Clock -------------------------------------------------------------------------------------------------


class Clock:
    """Monotonic and wall-clock time, optionally accelerated (`speed`) from `start_utc`."""

    def __init__(self, speed: float = 1.0, start_utc: float | None = None) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._m0 = time.monotonic()
        self._u0 = start_utc
        self.accelerated = speed != 1.0 or start_utc is not None

    def mono(self) -> float:
        """Seconds on the service's monotonic clock (simulated seconds when accelerated)."""
        return self._m0 + (time.monotonic() - self._m0) * self.speed

    def utc(self) -> float:
        if self._u0 is None and self.speed == 1.0:
            return time.time()
        start = time.time() if self._u0 is None else self._u0
        return start + (time.monotonic() - self._m0) * self.speed

    def real_s(self, seconds: float) -> float:
        """Real seconds for `seconds` on this clock."""
        return seconds / self.speed


# --- Records and sinks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """What one control cycle saw and did (the trace, the demo's view, the future Influx points)."""

    ts_utc: float
    mode: str
    reason: str
    park_grid_kw: float | None
    import_cap_kw: float | None
    export_cap_kw: float | None
    cap_source: str
    grid_kw: tuple[float | None, ...]
    pv_kw: tuple[float | None, ...]
    battery_kw: tuple[float | None, ...]
    soc_pct: tuple[float | None, ...]
    setpoint_kw: tuple[float | None, ...]
    pv_limit_kw: tuple[float | None, ...]
    latency_ms: float
    writes: int
    failed_writes: int
    down: tuple[str, ...]
    import_source: str = "none"
    export_source: str = "none"


@dataclass(frozen=True, slots=True)
class QuarterRecord:
    """One closed quarter-hour of the park connection: the evidence a grid operator asks for."""

    start_utc: float
    mean_kw: float  # + import
    import_cap_kw: float | None
    export_cap_kw: float | None
    import_source: str
    export_source: str
    coverage: float  # share of the quarter with a park reading
    over: bool


class TelemetrySink(Protocol):
    """Receives cycles and quarters. Must not block: enqueue, and forward elsewhere (issue #6)."""

    def cycle(self, record: CycleRecord) -> None: ...

    def quarter(self, record: QuarterRecord) -> None: ...

    def event(self, name: str, **data: Any) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """Every record as one JSON line (`--trace FILE`); flushed per line so that a reader can follow it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        self._file.write(json.dumps({"kind": kind, **data}, separators=(",", ":")) + "\n")
        self._file.flush()

    def cycle(self, record: CycleRecord) -> None:
        self._write("cycle", asdict(record))

    def quarter(self, record: QuarterRecord) -> None:
        self._write("quarter", asdict(record))

    def event(self, name: str, **data: Any) -> None:
        self._write("event", {"event": name, **data})

    def close(self) -> None:
        self._file.close()


def _total(values: Sequence[float | None]) -> float | None:
    """The sum, or None when any part is unknown (a missing field, never a partial sum)."""
    return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)


def _known(**fields: float | None) -> bool:
    return any(v is not None and math.isfinite(v) for v in fields.values())


class SpoolSink:
    """Every cycle as points (docs/influxdb.md) into the durable spool: `Spool.append` only queues in memory.

    Quarter-hours reach the spool through the ledger (keyed, exactly once), so
    `quarter()` adds nothing here.
    """

    def __init__(self, spool: Spool, cfg: SiteConfig) -> None:
        self.spool = spool
        self.site = cfg.site.id
        self.companies = [c.id for c in cfg.companies]
        self._failed = False

    def append(self, points: Iterable[Point | None]) -> None:
        try:
            self.spool.append(p for p in points if p is not None)
        except ValueError:
            if not self._failed:
                log.exception("a point could not be encoded; dropped (logged once)")
            self._failed = True

    def cycle(self, record: CycleRecord) -> None:
        site, ts = self.site, record.ts_utc
        points: list[Point | None] = []
        park = {
            "grid_kw": record.park_grid_kw,
            "pv_kw": _total(record.pv_kw),
            "battery_kw": _total(record.battery_kw),
        }
        if _known(**park):
            points.append(park_point(site, ts, **park))
        points.append(
            limit_point(
                site,
                None,
                ts,
                record.import_cap_kw,
                record.import_source,
                record.export_cap_kw,
                record.export_source,
            )
        )
        for i, company in enumerate(self.companies):
            fields = {
                "grid_kw": record.grid_kw[i],
                "pv_kw": record.pv_kw[i],
                "battery_kw": record.battery_kw[i],
                "soc_pct": record.soc_pct[i],
            }
            if _known(**fields):
                points.append(company_point(site, company, ts, **fields))
            points.append(
                setpoint_point(
                    site, company, ts, record.setpoint_kw[i], record.pv_limit_kw[i], mode=record.mode
                )
            )
        self.append(points)

    def quarter(self, record: QuarterRecord) -> None:
        pass

    def event(self, name: str, **data: Any) -> None:
        if name == "mode" and isinstance(data.get("ts_utc"), float):
            state = 1.0 if data.get("mode") == "failsafe" else 0.0
            self.append([health_point(self.site, data["ts_utc"], "failsafe", state)])

    def audit(self, record: AuditRecord) -> None:
        """The operator API's `audit_sink`: every command, accepted or not, as a `command` point."""
        value = record.value
        number = (
            float(value)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            else None
        )
        result = "accepted" if record.ok else "rejected"
        self.append(
            [command_point(self.site, record.ts_utc, record.key, record.client_id or "mqtt", result, number)]
        )

    def close(self) -> None:
        pass


# --- Quarter-hours -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Quarter:
    index: int
    energy_kws: float = 0.0
    seen_s: float = 0.0
    import_cap_kw: float | None = None
    export_cap_kw: float | None = None
    import_source: str = "none"
    export_source: str = "none"


class QuarterMeter:
    """Integrates the park's grid power per quarter-hour (UTC quarters, as the core counts them)."""

    def __init__(self) -> None:
        self._open: dict[int, _Quarter] = {}
        self.closed: list[QuarterRecord] = []

    def add(self, ts_utc: float, park_kw: float | None, dt_s: float, decision: Decision) -> None:
        index = int(ts_utc // QUARTER_S)
        q = self._open.get(index)
        if q is None:
            q = self._open[index] = _Quarter(index)
        lim = decision.park_limits
        # the lowest cap seen in the quarter is the one the quarter is judged against
        if lim.import_kw is not None and (q.import_cap_kw is None or lim.import_kw < q.import_cap_kw):
            q.import_cap_kw, q.import_source = lim.import_kw, lim.import_source
        if lim.export_kw is not None and (q.export_cap_kw is None or lim.export_kw < q.export_cap_kw):
            q.export_cap_kw, q.export_source = lim.export_kw, lim.export_source
        if park_kw is not None:
            q.energy_kws += park_kw * dt_s
            q.seen_s += dt_s

    def close_before(self, ts_utc: float) -> list[QuarterRecord]:
        """Close every quarter that ended before `ts_utc`."""
        current = int(ts_utc // QUARTER_S)
        out = []
        for index in sorted(i for i in self._open if i < current):
            q = self._open.pop(index)
            mean = q.energy_kws / q.seen_s if q.seen_s > 0 else math.nan
            over = bool(
                (q.import_cap_kw is not None and mean > q.import_cap_kw)
                or (q.export_cap_kw is not None and -mean > q.export_cap_kw)
            )
            out.append(
                QuarterRecord(
                    index * QUARTER_S,
                    mean,
                    q.import_cap_kw,
                    q.export_cap_kw,
                    q.import_source,
                    q.export_source,
                    min(1.0, q.seen_s / QUARTER_S),
                    over,
                )
            )
        self.closed.extend(out)
        return out


# --- Options -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    mqtt_url: str | None = None
    influx_url: str | None = None
    speed: float = 1.0
    start_utc: float | None = None
    trace: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


# --- Setpoint writer ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    device: Device
    kind: str  # "battery" | "pv_limit"
    deadband_kw: float
    rated_kw: float = 0.0  # PV: this inverter's share of its company's peak
    written_kw: float | None = None  # the last value confirmed; None: nothing held
    held: bool = False


class SetpointWriter:
    """Writes a decision to the devices: only what changed (or whose revert timer is due), all at once."""

    def __init__(
        self,
        cfg: SiteConfig,
        devices: dict[str, Device],
        health: Health,
        clock: Clock,
        uncontrollable: set[str] | None = None,
    ) -> None:
        self.health = health
        self.uncontrollable = set() if uncontrollable is None else uncontrollable
        self.clock = clock
        self.batteries: list[list[_Target]] = []
        self.inverters: list[list[_Target]] = []
        for c in cfg.companies:
            bats = [devices[d.id] for d in cfg.devices if d.company == c.id and d.role is DeviceRole.BATTERY]
            pvs = [devices[d.id] for d in cfg.devices if d.company == c.id and d.role is DeviceRole.PV]
            bat_kw = max(c.battery.max_charge_kw, c.battery.max_discharge_kw) if c.battery else 1.0
            peak = c.pv.peak_kw if c.pv else 1.0
            self.batteries.append([_Target(d, "battery", max(0.01 * bat_kw, 0.05)) for d in bats])
            self.inverters.append(
                [_Target(d, "pv_limit", max(0.01 * peak, 0.05), peak / max(len(pvs), 1)) for d in pvs]
            )
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    def targets(self) -> list[_Target]:
        return [t for group in (*self.batteries, *self.inverters) for t in group]

    async def apply(
        self, decision: Decision, *, budget_s: float | None = None, force: bool = False
    ) -> tuple[int, int]:
        """Write `decision`; returns (writes finished, writes failed) within `budget_s` (real seconds).

        A write still running after the budget goes on in the background and
        its device is skipped until it finishes: one slow device (a Huawei
        dongle's pauses between requests) never holds up the cycle of the
        others. `force`: every device, whatever it holds (the shutdown).
        """
        jobs: list[asyncio.Task[bool]] = []
        now = self.clock.mono()
        for groups, values in (
            (self.batteries, decision.battery_setpoint_kw),
            (self.inverters, decision.pv_limit_kw),
        ):
            for group, value in zip(groups, values, strict=True):
                if not group:
                    continue
                share = None if value is None else self._share(group, value)
                for target in group:
                    device_id = target.device.id
                    if device_id in self.uncontrollable:
                        continue
                    running = self._inflight.get(device_id)
                    if running is not None and not running.done():
                        continue
                    if not force and self.health.state(device_id) is HealthState.DOWN:
                        target.written_kw, target.held = None, False  # re-written when it answers again
                        continue
                    job = self._job(target, share, now, force=force)
                    if job is not None:
                        task = asyncio.get_running_loop().create_task(job, name=f"write {device_id}")
                        self._inflight[device_id] = task
                        jobs.append(task)
        if not jobs:
            return 0, 0
        done, _ = await asyncio.wait(jobs, timeout=budget_s)
        return len(done), sum(1 for t in done if t.cancelled() or t.exception() or not t.result())

    def _share(self, group: list[_Target], value: float) -> float:
        """Each device's part of its company's setpoint or limit: an even split.

        A PV inverter that is down or refuses limits runs at what it last had, up to its rating:
        while one is lost, the others hold the company's limit as if it gave its full share
        (safe for the export caps; more curtailment than needed until it is back).
        """
        if group[0].kind != "pv_limit":
            return value / len(group)
        lost = [
            t
            for t in group
            if t.device.id in self.uncontrollable or self.health.state(t.device.id) is HealthState.DOWN
        ]
        if not lost or len(lost) == len(group):
            return value / len(group)
        return max(0.0, value - sum(t.rated_kw for t in lost)) / (len(group) - len(lost))

    def pending(self) -> list[str]:
        """Devices with a write still running."""
        return sorted(d for d, t in self._inflight.items() if not t.done())

    async def drain(self, timeout_s: float) -> None:
        """Wait for the writes still running (shutdown), at most `timeout_s`."""
        running = [t for t in self._inflight.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout_s)

    def _job(
        self, target: _Target, kw: float | None, now: float, *, force: bool
    ) -> Coroutine[Any, Any, bool] | None:
        if kw is None:
            if target.kind == "battery":
                kw = 0.0
            elif target.held or force:
                return self._release(target)
            else:
                return None
        changed = target.written_kw is None or abs(kw - target.written_kw) >= target.deadband_kw
        if force or changed:
            return self._write(target, kw)
        if target.device.refresh_due(now):
            return self._refresh(target, now)
        return None

    async def _write(self, target: _Target, kw: float) -> bool:
        device = target.device
        try:
            if target.kind == "battery":
                result = await device.set_battery_kw(kw)
            else:
                result = await device.set_pv_limit_kw(kw)
        except CommandRejectedError as exc:
            # the device cannot take this kind of setpoint at all: stop counting on it
            log.warning("%s: %s; hubctl no longer dispatches it", device.id, exc)
            self.uncontrollable.add(device.id)
            return False
        except DeviceError as exc:
            target.written_kw, target.held = None, False
            self.health.failed(device.id, exc, self.clock.mono())
            return False
        target.written_kw, target.held = result.requested_kw, True
        return True

    async def _refresh(self, target: _Target, now: float) -> bool:
        try:
            await target.device.refresh(now)
        except DeviceError as exc:
            target.written_kw, target.held = None, False
            self.health.failed(target.device.id, exc, self.clock.mono())
            return False
        return True

    async def _release(self, target: _Target) -> bool:
        try:
            await target.device.release()
        except DeviceError as exc:
            self.health.failed(target.device.id, exc, self.clock.mono())
            return False
        target.written_kw, target.held = None, False
        return True


# --- Fallback values ---------------------------------------------------------------------------------------

_UNSET = object()


class FallbackKeeper:
    """Configures what each battery and PV inverter falls back to once no controller writes, and keeps it so.

    `update(pv_limits_kw)` sets what is wanted (`hubctl.control.fallback_pv_limits`, per company,
    shared over its inverters as the setpoints are; batteries 0 kW); `step()` writes it to every
    device that answers (health `ok`) and does not hold it yet. A device that is down gets it once
    it answers again (after an outage it is written again: a device that lost power may have lost
    it). A failure is logged once per device and tried again after `retry_s` (service seconds); it
    never stops the service or the control loop.
    """

    def __init__(
        self, cfg: SiteConfig, devices: dict[str, Device], health: Health, clock: Clock, retry_s: float = 60.0
    ) -> None:
        self.health = health
        self.clock = clock
        self.retry_s = retry_s
        self.devices: dict[str, Device] = {}
        self._inverters: list[list[str]] = []
        self.wanted: dict[str, float | None] = {}
        for c in cfg.companies:
            mine = [d for d in cfg.devices if d.company == c.id]
            for d in mine:
                if d.role in {DeviceRole.BATTERY, DeviceRole.PV}:
                    self.devices[d.id] = devices[d.id]
                if d.role is DeviceRole.BATTERY:
                    self.wanted[d.id] = 0.0
            self._inverters.append([d.id for d in mine if d.role is DeviceRole.PV])
        self.held: dict[str, object] = {}  # device id -> the value written (None: no limit), or nothing
        self._retry_at: dict[str, float] = {}
        self._failing: set[str] = set()

    def update(self, pv_limits_kw: Sequence[float | None]) -> None:
        """The companies' fallback PV limits (config order; None: no limit): shared over their inverters."""
        for group, kw in zip(self._inverters, pv_limits_kw, strict=True):
            for device_id in group:
                want = None if kw is None else kw / len(group)
                if self.wanted.get(device_id, _UNSET) != want:
                    self._retry_at.pop(device_id, None)  # a new value is tried at once
                self.wanted[device_id] = want

    def pending(self) -> list[str]:
        """Devices that do not hold their wanted fallback (yet)."""
        return sorted(d for d, want in self.wanted.items() if self.held.get(d, _UNSET) != want)

    async def step(self) -> None:
        """Write the fallbacks that are due, concurrently; failures are logged, never raised."""
        now = self.clock.mono()
        due = []
        for device_id, want in self.wanted.items():
            state = self.health.state(device_id)
            if state is HealthState.DOWN:
                self.held.pop(device_id, None)  # written again when it answers again
                continue
            if state is not HealthState.OK or self.held.get(device_id, _UNSET) == want:
                continue
            if now < self._retry_at.get(device_id, -math.inf):
                continue
            due.append(self._configure(device_id, want, now))
        if due:
            await asyncio.gather(*due)

    async def _configure(self, device_id: str, want: float | None, now: float) -> None:
        device = self.devices[device_id]
        try:  # a battery's fallback is always 0 kW: it takes no value
            result = await device.configure_fallback(want if device.role is DeviceRole.PV else None)
        except Exception as exc:  # a DeviceError, or a fault of ours: never let it stop the service
            if device_id not in self._failing:
                log.warning(
                    "%s: its fallback could not be configured: %s; trying again every %.0f s",
                    device_id,
                    exc,
                    self.retry_s,
                    exc_info=not isinstance(exc, DeviceError),
                )
            self._failing.add(device_id)
            self._retry_at[device_id] = now + self.retry_s
            return
        if device_id in self._failing:
            log.info("%s: fallback configured after all", device_id)
        self._failing.discard(device_id)
        self.held[device_id] = want
        if result.configured:
            log.info("%s: %s", device_id, result.detail)


async def _guarded(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an embedded component; if it fails, log it and start it again after 5 s (control goes on)."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed; restarting it in 5 s", name)
            await asyncio.sleep(5.0)
        else:
            return


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's `asyncio.wait_for` (which pymodbus uses for every request)
    returns the result instead of raising when the answer and the cancellation
    arrive in the same loop iteration; the task then stays "cancelling" but
    runs on, and the TaskGroup waits for it forever. Pollers and the control
    loop call this after every device call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# --- The service -------------------------------------------------------------------------------------------


def _failsafe_snapshot(ts_utc: float, n: int) -> Snapshot:
    return Snapshot(ts_utc, tuple(CompanyReading(grid_kw=None) for _ in range(n)))


def _cap_source(decision: Decision) -> str:
    lim = decision.park_limits
    return f"import {lim.import_source}, export {lim.export_source}"


class Gateway:
    """`hubctl run`: build the devices of a site config, control them until told to stop."""

    def __init__(self, cfg: SiteConfig, options: Options, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.options = options
        self.notifier = notifier or Notifier(None)
        self.clock = Clock(options.speed, options.start_utc)
        self.params = Params.from_config(cfg)
        self.layout = Layout.from_config(cfg)
        self.store = ReadingStore(self.layout, cfg.control.stale_after_s)
        self.health = Health(
            [d.id for d in cfg.devices],
            fail_after=cfg.service.fail_after,
            recover_after=cfg.service.recover_after,
        )
        self.quarters = QuarterMeter()
        self.sinks: list[TelemetrySink] = []
        self.state = State.initial(self.params)
        self.last_decision: Decision | None = None
        self.cycles = 0
        self.ready = False
        self._mode = "starting"
        self._stop = asyncio.Event()
        self._first_pass: list[asyncio.Event] = []
        self._limits_seen: tuple[float | None, float | None, str, str] | None = None
        # embedded components (set up in run())
        self.api: OperatorApi | None = None
        self._api_revision = -1
        self._cycle_view: tuple[float, Decision, tuple[CompanyReading, ...]] | None = None
        self.spool: Spool | None = None
        self.spool_sink: SpoolSink | None = None
        self.ledger: Ledger | None = None
        self.forwarder: Forwarder | None = None
        self._ledger_failed = False
        self.history_store: HistoryStore | None = None
        self._history_revision = self.state.history.revision
        self._history_failed = False
        self._history_doc: tuple[int, dict[str, Any]] | None = None  # (revision, summary) for the state
        self.fallbacks: FallbackKeeper | None = None
        self._fallback_day: dt.date | None = None

    # -- set-up
    def _mqtt_url(self) -> str | None:
        return self.options.mqtt_url or self.options.env.get("HUBCTL_MQTT_URL") or self.cfg.service.mqtt_url

    def _influx_url(self) -> str | None:
        target = self.cfg.storage.influx
        return (
            self.options.influx_url
            or self.options.env.get("HUBCTL_INFLUX_URL")
            or (target.url if target is not None else None)
            or self.cfg.service.influx_url
        )

    def state_dir(self) -> Path | None:
        """`storage.dir`, else `service.state_dir`, else `$STATE_DIRECTORY`; None: no durable state."""
        return resolve_state_dir(self.cfg, self.options.env)

    def _open_storage(self) -> None:
        """Spool, ledger and (with an InfluxDB URL) forwarder in the state directory."""
        influx = self._influx_url()
        directory = self.state_dir()
        if directory is None:
            if influx:
                log.warning(
                    "no state directory (storage.dir, service.state_dir or $STATE_DIRECTORY) for the spool: "
                    "%s is not written to",
                    influx,
                )
            else:
                log.info("no state directory: no spool and no ledger")
            return
        try:
            # the service's wall clock: under --start-utc the points' age is judged in simulated time
            spool = Spool(directory / "spool.sqlite", bounds_from_config(self.cfg), clock=self.clock.utc)
            self.ledger = Ledger.from_config(directory / "ledger.sqlite", self.cfg, spool=spool)
        except (OSError, sqlite3.Error):
            log.exception("cannot open the spool or the ledger in %s: running without them", directory)
            return
        self.spool = spool
        self.spool_sink = SpoolSink(spool, self.cfg)
        self.sinks.append(self.spool_sink)
        if influx:
            target = self.cfg.storage.influx
            writer = InfluxWriter(
                influx,
                target.bucket if target else "hubctl",
                target.org if target else "-",
                token=self.options.env.get(target.token_env if target else "HUBCTL_INFLUX_TOKEN", ""),
                timeout_s=target.timeout_s if target else 10.0,
            )
            self.forwarder = Forwarder(
                spool,
                writer,
                batch_points=target.batch_points if target else 5000,
                backoff_max_s=target.backoff_max_s if target else 30.0,
            )
            log.info("forwarding the spool %s to %s", spool.path, influx)

    def _api_url(self) -> str | None:
        env = self.options.env
        mq = self.cfg.mqtt
        return (
            self.options.mqtt_url
            or env.get("HUBCTL_MQTT_URL")
            or (mq.url if mq is not None else None)
            or self.cfg.service.mqtt_url
        )

    def _make_api(self) -> OperatorApi | None:
        url = self._api_url()
        if url is None:
            return None
        from hubctl.service.operator_api import OperatorApi  # noqa: PLC0415 - only with a broker

        directory = self.state_dir()
        if directory is None:
            log.warning("no state directory: operator settings will not survive a restart")
        else:
            directory.mkdir(parents=True, exist_ok=True)
        try:
            return OperatorApi.from_config(
                self.cfg,
                state_source=self._state_doc,
                state_file=None if directory is None else directory / "operator.json",
                env=self.options.env,
                url=url,
                audit_sink=None if self.spool_sink is None else self.spool_sink.audit,
                identifier=f"hubctl-{self.cfg.site.id}-api",
                clock=self.clock.utc,
            )
        except ValueError as exc:
            raise ConfigError("site config", [f"mqtt: {exc}"]) from exc

    def _state_doc(self) -> dict[str, Any] | None:
        """The operator API's `state_source`: the state of the last cycle."""
        from hubctl.service.operator_api import state_document  # noqa: PLC0415 - loaded with the API

        if self._cycle_view is None:
            return None
        ts, decision, readings = self._cycle_view
        devices = {d: {"health": h} for d, h in self.health.summary().items()}
        doc = state_document(self.cfg, ts, decision, readings, devices)
        doc["history"] = self._history_summary()
        return doc

    def _sync_operator(self, api: OperatorApi, ts: float) -> None:
        """Rebuild the LimitClock (operator schedules) and the ledger's sharing key when the API changed."""
        if api.revision == self._api_revision:
            return
        try:
            self.params = replace(self.params, limits=api.limit_clock(ts))
            if self.ledger is not None:
                self.ledger.rule = api.sharing(ts) or rule_from_config(self.cfg)
        except Exception:
            log.exception("the operator settings could not be applied; keeping the previous caps")
        else:
            if self._api_revision >= 0 or api.revision:
                log.info("operator settings applied (revision %d)", api.revision)
            self._update_fallbacks(ts)  # an operator's export limit or schedule may lower them
        self._api_revision = api.revision

    def _update_fallbacks(self, ts: float) -> None:
        """The fallback PV limits from the limits as they stand at `ts` (config, operator settings)."""
        if self.fallbacks is None:
            return
        overrides = self.api.current_overrides(ts) if self.api is not None else NO_OVERRIDES
        try:
            limits = fallback_pv_limits(self.params, ts, overrides)
        except Exception:
            log.exception("the fallback PV limits could not be computed; keeping the previous ones")
            return
        self.fallbacks.update(limits)
        self._fallback_day = self._local_date(ts)

    def _local_date(self, ts: float) -> dt.date:
        return dt.datetime.fromtimestamp(ts, self.cfg.tz).date()

    def _build(self, pool: ConnectionPool, hub: MqttHub | None) -> dict[str, Device]:
        rated = self.cfg.pv_rated_kw()
        devices: dict[str, Device] = {}
        problems = []
        for config in self.cfg.devices:
            try:
                devices[config.id] = build_device(
                    config,
                    pool=pool,
                    mqtt=hub,
                    rated_kw=rated.get(config.id),
                    revert_s=self.cfg.service.revert_s,
                    clock=self.clock.mono,
                )
            except DeviceConfigError as exc:
                problems.append(f"devices.{config.id}: {exc}")
        if problems:
            raise ConfigError("site config", problems)
        return devices

    def _groups(self, devices: dict[str, Device]) -> dict[str, list[Device]]:
        """Pollers: one per Modbus host:port, one for every MQTT device."""
        groups: dict[str, list[Device]] = {}
        for config in self.cfg.devices:
            key = "mqtt" if config.modbus is None else f"{config.modbus.host}:{config.modbus.port}"
            groups.setdefault(key, []).append(devices[config.id])
        return groups

    # -- run
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `stop()`); returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.options.trace is not None:
            self.sinks.append(JsonLinesSink(self.options.trace))
        unmetered = self.layout.unmetered()
        if unmetered:
            log.warning("no grid meter for %s: the controller stays in fail-safe", ", ".join(unmetered))
        code = EX_OK
        try:
            self._open_storage()
            self._open_history()
            self.api = self._make_api()
            hub = self._make_hub()
            async with ConnectionPool() as pool:
                devices = self._build(pool, hub)
                writer = SetpointWriter(self.cfg, devices, self.health, self.clock, self.store.uncontrollable)
                self.fallbacks = FallbackKeeper(self.cfg, devices, self.health, self.clock)
                self._update_fallbacks(self.clock.utc())
                if hub is not None:
                    await hub.start()  # no wait: a broker that is down must not hold the cap hostage
                aux: dict[str, asyncio.Task[None]] = {}
                scheduler = None
                try:
                    aux = self._start_aux()
                    scheduler = self._scheduler()
                    code = await self._supervise(devices, writer)
                finally:
                    if scheduler is not None:
                        scheduler.shutdown(wait=False)
                    await self._shutdown(writer, hub, aux)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for sink in self.sinks:
                sink.close()
            self._close_history()
            self._close_storage()
            self.notifier.close()
        return code

    def _start_aux(self) -> dict[str, asyncio.Task[None]]:
        """The embedded components' tasks: outside the TaskGroup, so that none of them can stop control."""
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        if self.spool is not None:
            jobs["spool"] = self.spool.run
        if self.forwarder is not None:
            jobs["forwarder"] = self.forwarder.run
        if self.api is not None:
            jobs["operator-api"] = self.api.run
        loop = asyncio.get_running_loop()
        return {name: loop.create_task(_guarded(name, job), name=name) for name, job in jobs.items()}

    def _close_storage(self) -> None:
        if self.ledger is not None:
            with contextlib.suppress(sqlite3.Error):
                self.ledger.close()
            self.ledger = None
        if self.spool is not None:
            try:
                self.spool.close()
            except sqlite3.Error:
                log.exception("the spool could not be closed cleanly")
            self.spool = None
        if self.forwarder is not None:
            self.forwarder.writer.close()
            self.forwarder = None

    # -- the load history (hubctl.history_store)
    def _open_history(self) -> None:
        """Start the controller with the history stored in the state directory (none: memory only)."""
        directory = self.state_dir()
        if directory is None:
            log.info("no state directory: the load history is kept in memory only (a restart forgets it)")
            return
        path = directory / HISTORY_FILE
        try:
            store = HistoryStore(path, self.params)
        except (OSError, sqlite3.Error):
            log.exception("cannot open the load history %s: keeping it in memory only", path)
            return
        try:
            history = store.load()
        except (OSError, sqlite3.Error):
            store.close()
            log.exception("cannot read the load history %s: keeping it in memory only", path)
            return
        self.history_store = store
        self.state = State.initial(self.params, history)
        self._history_revision = history.revision
        s = summarize(history)
        if s.days:
            log.info(
                "load history: %d day(s) loaded from %s, %s to %s, %d quarter-hours; days with at least half "
                "of them: %s",
                s.days,
                path,
                s.first_date,
                s.last_date,
                s.quarters,
                s.types_text(),
            )
        else:
            log.info("load history: nothing stored in %s yet; the controller learns it as it runs", path)

    def _save_history(self) -> None:
        """Write the days that changed (one row per completed quarter-hour). A failure is logged once and
        the same days are written with the next quarter-hour's save; it never stops control."""
        history = self.state.history
        self._history_revision = history.revision
        store = self.history_store
        if store is None:
            return
        try:
            store.save(history)
        except (OSError, sqlite3.Error):
            if not self._history_failed:
                log.exception(
                    "the load history could not be saved (logged once); trying again next quarter-hour"
                )
            self._history_failed = True
        else:
            if self._history_failed:
                log.info("the load history is saved again")
            self._history_failed = False

    def _close_history(self) -> None:
        """The last save (with the quarter in progress, if it was seen for at least half), then close."""
        store = self.history_store
        if store is None:
            return
        self.state = replace(self.state, history=self.state.history.complete_current())
        if self.state.history.revision != self._history_revision:
            self._save_history()
        try:
            store.close()
        except sqlite3.Error:
            log.exception("the load history could not be closed cleanly")
        self.history_store = None

    def _history_summary(self) -> dict[str, Any]:
        """What the controller knows of the park's load, for the state document (cached per revision)."""
        history = self.state.history
        cached = self._history_doc
        if cached is None or cached[0] != history.revision:
            doc = summarize(history).as_dict()
            doc["persisted"] = self.history_store is not None
            cached = self._history_doc = (history.revision, doc)
        return cached[1]

    def stop(self) -> None:
        self._stop.set()

    def _make_hub(self) -> MqttHub | None:
        url = self._mqtt_url()
        needs = any(d.driver == "mqtt" for d in self.cfg.devices)
        if url is None:
            if needs:
                raise ConfigError(
                    "site config", ["devices: MQTT devices need service.mqtt_url or --mqtt-url"]
                )
            log.info("no MQTT broker configured: running without MQTT")
            return None
        if self.api is not None and not needs:
            return None  # the operator API owns the connection for status and state
        from hubctl.devices.mqtt import MqttHub  # noqa: PLC0415 - only with a broker

        env = self.options.env
        return MqttHub.from_url(
            url,
            identifier=f"hubctl-{self.cfg.site.id}",
            username=env.get("HUBCTL_MQTT_USERNAME") or None,
            password=env.get("HUBCTL_MQTT_PASSWORD") or None,
            # one owner of the status topic: the operator API when it runs
            status_topic=None if self.api is not None else f"hubctl/{self.cfg.site.id}/status",
        )

    async def _supervise(self, devices: dict[str, Device], writer: SetpointWriter) -> int:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = []
                for label, group in self._groups(devices).items():
                    done = asyncio.Event()
                    self._first_pass.append(done)
                    tasks.append(tg.create_task(self._poll(group, done), name=f"poll {label}"))
                tasks.append(tg.create_task(self._control(writer), name="control"))
                if self.fallbacks is not None:
                    tasks.append(tg.create_task(self._keep_fallbacks(self.fallbacks), name="fallbacks"))
                stop = tg.create_task(self._stop.wait(), name="stop")
                await stop
                for task in tasks:
                    task.cancel()
        except* Exception as group:
            for exc in group.exceptions:
                log.exception("the service failed: %r; writing the fail-safe setpoints", exc, exc_info=exc)
            failed = True
        else:
            failed = False
        return EX_FAILURE if failed else EX_OK

    # -- pollers
    async def _poll(self, devices: Sequence[Device], first_pass: asyncio.Event) -> None:
        due = dict.fromkeys((d.id for d in devices), 0.0)
        while True:
            for device in devices:
                now = self.clock.mono()
                if now < due[device.id]:
                    continue
                due[device.id] = max(due[device.id] + device.config.poll_s, now)
                try:
                    reading = await device.read()
                except DeviceError as exc:
                    _raise_if_cancelled()
                    self.health.failed(device.id, exc, self.clock.mono())
                else:
                    _raise_if_cancelled()
                    self.store.put(reading)
                    self.health.ok(device.id, reading.read_at_s)
            first_pass.set()
            wait = min(due.values()) - self.clock.mono()
            await asyncio.sleep(max(self.clock.real_s(wait), 0.0))

    # -- the devices' fallback values
    async def _keep_fallbacks(self, keeper: FallbackKeeper) -> None:
        """Configure the devices' fallbacks as they answer; an error here never stops control."""
        failed = False
        while True:
            try:
                await keeper.step()
            except Exception:
                if not failed:
                    log.exception("configuring the devices' fallbacks failed (logged once); trying again")
                failed = True
            _raise_if_cancelled()
            await asyncio.sleep(min(0.5, self.clock.real_s(1.0)))

    # -- the control loop
    async def _control(self, writer: SetpointWriter) -> None:
        cycle_s = self.cfg.control.cycle_s
        # the first decision waits for one round of polls (or until a reading would be stale anyway)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.clock.real_s(self.cfg.control.stale_after_s)):
                await asyncio.gather(*(e.wait() for e in self._first_pass))
        started = self.clock.mono()
        next_t = started
        last_ts: float | None = None
        late = False
        while True:
            t0 = time.perf_counter()
            now = self.clock.mono()
            ts = self.clock.utc()
            snap = self.store.snapshot(ts, now)
            if self.api is not None:
                self._sync_operator(self.api, ts)
                snap = replace(snap, overrides=self.api.current_overrides(ts))
            decision, self.state = step(snap, self.state, self.params)
            writes, failed = await writer.apply(decision, budget_s=self.clock.real_s(0.8 * cycle_s))
            _raise_if_cancelled()
            latency_ms = (time.perf_counter() - t0) * 1000
            self.last_decision = decision
            self.cycles += 1
            self._after_cycle(snap, decision, ts, last_ts, writes, failed, latency_ms, started)
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

    def _after_cycle(
        self,
        snap: Snapshot,
        decision: Decision,
        ts: float,
        last_ts: float | None,
        writes: int,
        failed: int,
        latency_ms: float,
        started: float,
    ) -> None:
        grids = [r.grid_kw for r in snap.companies]
        park = None if any(g is None for g in grids) else math.fsum(g for g in grids if g is not None)
        dt_s = self.cfg.control.cycle_s if last_ts is None else min(max(ts - last_ts, 0.0), 60.0)
        self.quarters.add(ts, park, dt_s, decision)
        self._ledger_step(snap, decision, ts, dt_s)
        if self.state.history.revision != self._history_revision:
            self._save_history()  # a quarter-hour completed: one day's row
        if self.clock.accelerated:
            self._close_quarters(ts)
            self._check_limits(ts)
            if self._fallback_day is not None and self._local_date(ts) != self._fallback_day:
                self._update_fallbacks(ts)  # the daily job's part
        if self.api is not None:
            self._cycle_view = (ts, decision, snap.companies)
            self.api.notify_state()
        if decision.mode != self._mode:
            if decision.mode == "failsafe":
                log.warning("fail-safe: %s", decision.reason)
            elif self._mode == "failsafe":
                log.info("control resumed: every grid meter reads again")
            self.notifier.status(f"{decision.mode}: {decision.reason}")
            for sink in self.sinks:
                sink.event("mode", mode=decision.mode, reason=decision.reason, ts_utc=ts)
            self._mode = decision.mode
        if not self.ready and (
            decision.mode == "normal" or self.clock.mono() - started >= self.cfg.service.ready_grace_s
        ):
            self.ready = True
            status = "controlling" if decision.mode == "normal" else f"fail-safe: {decision.reason}"
            self.notifier.ready(status)
            log.info(
                "ready: %s (%d companies, %d devices)", status, len(snap.companies), len(self.cfg.devices)
            )
            for sink in self.sinks:
                sink.event("ready", mode=decision.mode, ts_utc=ts)
        self.notifier.watchdog()
        if self.sinks:
            lim = decision.park_limits
            record = CycleRecord(
                ts_utc=ts,
                mode=decision.mode,
                reason=decision.reason,
                park_grid_kw=park,
                import_cap_kw=lim.import_kw,
                export_cap_kw=lim.export_kw,
                cap_source=_cap_source(decision),
                grid_kw=tuple(grids),
                pv_kw=tuple(r.pv_kw for r in snap.companies),
                battery_kw=tuple(r.battery_kw for r in snap.companies),
                soc_pct=tuple(r.soc_pct for r in snap.companies),
                setpoint_kw=decision.battery_setpoint_kw,
                pv_limit_kw=decision.pv_limit_kw,
                latency_ms=latency_ms,
                writes=writes,
                failed_writes=failed,
                down=tuple(self.health.down()),
                import_source=lim.import_source,
                export_source=lim.export_source,
            )
            for sink in self.sinks:
                sink.cycle(record)

    def _ledger_step(self, snap: Snapshot, decision: Decision, ts: float, dt_s: float) -> None:
        """Feed the ledger the step just measured (only with every grid meter read: uncovered otherwise)."""
        if self.ledger is None:
            return
        grids = [r.grid_kw for r in snap.companies]
        try:
            if all(g is not None for g in grids):
                park = math.fsum(g for g in grids if g is not None)
                pv = _total([r.pv_kw for r in snap.companies])
                bat = _total([r.battery_kw for r in snap.companies])
                lim = decision.park_limits
                step_info = ParkStep(
                    load_kw=None if pv is None or bat is None else park + pv + bat,
                    pv_kw=pv,
                    import_limit_kw=lim.import_kw,
                    import_source=lim.import_source,
                    export_limit_kw=lim.export_kw,
                    export_source=lim.export_source,
                )
                self.ledger.add_step(ts, [g for g in grids if g is not None], dt_s, step_info)
            if self.clock.accelerated:
                self.ledger.close_due(ts)
        except (ValueError, sqlite3.Error):
            if not self._ledger_failed:
                log.exception("the ledger could not take a step (logged once)")
            self._ledger_failed = True

    # -- wall-clock jobs
    def _scheduler(self) -> Any:
        """APScheduler for the wall-clock jobs; None in accelerated mode (the control loop does them)."""
        if self.clock.accelerated:
            return None
        from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: PLC0415 - heavy import

        scheduler = AsyncIOScheduler(
            timezone=self.cfg.tz,
            job_defaults={"misfire_grace_time": 120, "coalesce": True, "max_instances": 1},
        )
        scheduler.add_job(self._quarter_job, "cron", minute="0,15,30,45", second=2, id="quarter-close")
        scheduler.add_job(self._limits_job, "cron", second=1, id="limits")
        scheduler.add_job(self._daily_job, "cron", hour=0, minute=0, second=30, id="daily")
        scheduler.start()
        return scheduler

    async def _quarter_job(self) -> None:
        now = self.clock.utc()
        self._close_quarters(now)
        if self.ledger is not None:
            try:
                self.ledger.close_due(now)
            except sqlite3.Error:
                log.exception("the ledger could not settle its interval")

    async def _limits_job(self) -> None:
        self._check_limits(self.clock.utc())

    async def _daily_job(self) -> None:
        self._update_fallbacks(self.clock.utc())  # schedules of past days no longer count
        quarters = self.quarters.closed
        if not quarters:
            return
        peak = max((q.mean_kw for q in quarters if math.isfinite(q.mean_kw)), default=math.nan)
        over = sum(q.over for q in quarters)
        log.info(
            "day closed: %d quarter-hours, highest mean %.1f kW, %d over a cap", len(quarters), peak, over
        )
        for sink in self.sinks:
            sink.event("day", quarters=len(quarters), kwmax=peak, over=over)
        self.quarters.closed = []

    def _close_quarters(self, ts: float) -> None:
        for q in self.quarters.close_before(ts):
            level = logging.WARNING if q.over else logging.INFO
            log.log(
                level,
                "quarter %s: mean %.1f kW, import cap %s (%s), export cap %s (%s), coverage %.0f %%%s",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(q.start_utc)),
                q.mean_kw,
                "-" if q.import_cap_kw is None else f"{q.import_cap_kw:g} kW",
                q.import_source,
                "-" if q.export_cap_kw is None else f"{q.export_cap_kw:g} kW",
                q.export_source,
                q.coverage * 100,
                ": OVER THE CAP" if q.over else "",
            )
            for sink in self.sinks:
                sink.quarter(q)

    def _check_limits(self, ts: float) -> None:
        park, _ = self.params.limits.at(ts)
        seen = (park.import_kw, park.export_kw, park.import_source, park.export_source)
        if seen != self._limits_seen:
            if self._limits_seen is not None:
                log.info(
                    "park caps now: import %s (%s), export %s (%s)",
                    park.import_kw,
                    park.import_source,
                    park.export_kw,
                    park.export_source,
                )
            self._limits_seen = seen

    # -- shutdown
    async def _shutdown(
        self, writer: SetpointWriter, hub: MqttHub | None, aux: dict[str, asyncio.Task[None]]
    ) -> None:
        """Fail-safe setpoints to every device, then the components and `offline`, in SHUTDOWN_BUDGET_S."""
        self.notifier.stopping()
        t0 = time.perf_counter()
        decision, _ = step(
            _failsafe_snapshot(self.clock.utc(), len(self.cfg.companies)), self.state, self.params
        )
        writes = failed = 0
        await writer.drain(1.0)
        writes, failed = await writer.apply(decision, budget_s=SHUTDOWN_BUDGET_S - 2.0, force=True)
        pending = writer.pending()
        if pending:
            log.warning(
                "fail-safe writes to %s did not finish in time; they fall back by their revert timers",
                ", ".join(pending),
            )
        log.info(
            "stopped: fail-safe setpoints written to %d device(s), %d failed, in %.0f ms",
            writes,
            failed,
            (time.perf_counter() - t0) * 1000,
        )
        for sink in self.sinks:
            sink.event("shutdown", writes=writes, failed=failed, ts_utc=self.clock.utc())
        await self._stop_aux(aux)
        if hub is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await hub.stop()

    async def _stop_aux(self, aux: dict[str, asyncio.Task[None]]) -> None:
        """The forwarder after its batch in flight (at most 1 s), the spool's last commit, `offline`."""
        forwarder = aux.pop("forwarder", None)
        if forwarder is not None and self.forwarder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.forwarder.stop()
        api = aux.pop("operator-api", None)
        tasks = [t for t in (forwarder, *aux.values(), api) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # the API publishes `offline` on cancellation; the spool commits what is queued
            _, pending = await asyncio.wait(tasks, timeout=1.5)
            if pending:
                log.warning("%s did not stop in time", ", ".join(t.get_name() for t in pending))


def run_service(cfg: SiteConfig, options: Options) -> int:
    """Entry point used by `hubctl run`: the exit code (0, 1, or 78 for a config the devices cannot use)."""
    notifier = Notifier.from_env(options.env or dict(os.environ))
    try:
        return asyncio.run(Gateway(cfg, options, notifier).run())
    except ConfigError as exc:
        log.error("%s: %s", exc.source, "; ".join(exc.problems))  # noqa: TRY400 - the problems are the message
        return EX_CONFIG
