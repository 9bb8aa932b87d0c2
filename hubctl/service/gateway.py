"""The gateway service, `hubctl run`: the composition of its parts, their lifecycle and the shutdown.

One asyncio `TaskGroup` holds

- one **poller per connection** (one per Modbus host:port, one for all MQTT
  devices, `pollers.py`): it reads its devices every `poll_s` into the
  `ReadingStore` and reports each result to the debounced `Health`;
- the **control loop** (`cycle.py`), on the monotonic clock every
  `control.cycle_s`: snapshot the store, call `hubctl.core.control.step` (the
  very function `hubctl sim` runs), write the setpoints that changed and
  re-write those whose revert timers are due (`writer.py`), then the
  after-cycle steps in their order (quarter meter, ledger, history, the
  accelerated jobs, the operator's state, mode, readiness, the systemd
  watchdog, the cycle record);
- the **fallback keeper** (`fallbacks.py`).

APScheduler runs the wall-clock jobs (`jobs.py`): the quarter-hour close
(evidence: the mean, the cap in force and its source, per quarter), the
limit-change log at window boundaries, and the daily job (summary; the
devices' fallback limits renewed, since the day schedules that count change).
The control loop is not a scheduler job.

Fail-safe (docs/failsafe.md): the core itself answers a stale or missing grid
meter with batteries at 0 kW and PV limited so that export cannot pass the
cap. A device that is down is skipped by the writer (its setpoint is
re-written when it answers again); it never stops the cycle for the others.
Every write carries the device's revert timer (`service.revert_s`), so after
a SIGKILL each device falls back on its own, to the value `FallbackKeeper`
configured where the device has a register for it (batteries 0 kW, PV the
fail-safe limit for the tightest export cap the configuration and the
operator can put in force: `hubctl.core.failsafe.fallback_pv_limits`); it is
written to every battery and inverter once it answers (a device down at start
gets it when it recovers), renewed by the daily job and whenever the operator
settings change. SIGTERM/SIGINT: write the fail-safe setpoints, publish
`offline`, exit 0, all within 5 s.

Accelerated clock (`--speed`, `--start-utc`; for `hubctl demo` and the tests
against `hubctl simulate --speed`; `clock.py`): the service's monotonic clock
and wall clock both run `speed` times faster from `start-utc`, so cycles, poll
intervals, staleness, revert timers and quarter-hours are all in simulated
seconds. The scheduler needs the real wall clock, so in accelerated mode the
control loop closes quarters itself.

Telemetry (`sinks.py`, `TelemetrySink`): a sink gets every cycle and every
closed quarter and must only enqueue (never block the cycle). `--trace FILE`
is one such sink (JSON lines), used by the demo and the tests.

Embedded components, each in its own task beside the TaskGroup (a failure
there is logged and the task restarted after 5 s; it never stops control),
and stopped only after the fail-safe setpoints are written:

- **Operator API** (`hubctl.service.operator_api.OperatorApi`, client id
  `hubctl-<site>-api`) whenever an MQTT broker is configured: every cycle's
  `Snapshot` carries `api.current_overrides(now)`; when `api.revision` moves,
  the params' LimitClock is rebuilt from `api.limit_clock(now)` (operator day
  schedules) and the ledger takes the operator's sharing key
  (`cycle.OperatorSync`); the state document (`operator_api.state_document`)
  is offered after every cycle. The API owns `hubctl/<site>/status`; the MQTT
  device hub then connects without a status topic (and only when there are
  MQTT devices). Operator settings persist in `<state dir>/operator.json`.
- **Storage** (`storage.py`) when a state directory is known (`storage.dir`,
  `service.state_dir` or `$STATE_DIRECTORY`; an InfluxDB URL or spool bounds without one, or
  one that cannot be written, are refused at start with exit 78: `config.resolve.gateway_problems`):
  `SpoolSink` appends every cycle's park/company/limit/setpoint points (and the API's command audit) to
  `<state dir>/spool.sqlite` (in memory; the spool's own task commits), the
  `Forwarder` drains it to InfluxDB when an InfluxDB URL is set, and the
  `Ledger` (`<state dir>/ledger.sqlite`) takes every cycle with all grid
  meters read (`add_step`) and settles its intervals from the quarter-hour
  job (from the control loop in accelerated mode).
- **Device limits** (`limit_record.py`, `<state dir>/device-limits.json`): what hubctl wrote to
  the limits a device keeps (Huawei's derating, a SunSpec 123 limit under an installer's static
  one) and the installer's value, so that a restart never takes hubctl's own fail-safe for the
  installer's limit (#13 item 4).
- **The park page** (`hubctl.web`, docs/web.md) when the config has a `web:` section or `--web
  HOST:PORT` is given: its after-cycle step ("web page") keeps the cycle and calls `Live.cycle`
  (only stores); its own task (`_run_web`, after the first cycle: aiohttp is imported in a worker
  thread then) serves the page, the event stream and `/metrics` from the state document
  (`_state_doc`, the operator API's), once a second at most. A port that cannot be bound is
  logged once and retried; control never waits for the page.
- **Load history** (`history.py`, `<state dir>/history.sqlite`): loaded at
  start into the controller's first state (`State.initial(params, history)`;
  the log says how many days of which type), saved whenever the history's
  revision moves (a quarter-hour completed) and at stop. Without a state
  directory the history lives in memory only. The quarter in progress at a
  stop is not kept (it is not complete). The state document carries its
  summary (`history`).

Which broker, InfluxDB target and state directory are used is decided in
`hubctl.config.resolve`. The operator API and the MQTT device hub share one broker configuration
(`mqtt_broker`: URL, TLS, credentials); a TLS file that cannot be used is refused at start
(exit 78, `preflight.broker_problems`), a broker that refuses the connection (its certificate not signed
by the CA, say) is logged and retried with backoff while control goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import signal
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from hubctl.config.devices import DeviceRole
from hubctl.config.resolve import (
    influx_settings,
    mqtt_broker,
    resolve_state_dir,
    web_settings,
)
from hubctl.core.quarters import QuarterMeter
from hubctl.core.types import Params, State
from hubctl.devices import build_device
from hubctl.devices.health import Health
from hubctl.errors import EX_CONFIG, ConfigError, DeviceConfigError
from hubctl.service.clock import Clock
from hubctl.service.cycle import (
    AfterStep,
    Controller,
    ControlLoop,
    CycleFacts,
    CycleRecords,
    LedgerFeed,
    MeterCheck,
    OperatorSync,
    OperatorView,
)
from hubctl.service.fallbacks import FallbackKeeper, FallbackTargets
from hubctl.service.history import HistoryKeeper
from hubctl.service.jobs import Jobs
from hubctl.service.limit_record import FILE_NAME as LIMITS_FILE
from hubctl.service.limit_record import LimitFile
from hubctl.service.notify import Notifier
from hubctl.service.pollers import poll, poll_groups
from hubctl.service.preflight import start_problems
from hubctl.service.sinks import JsonLinesSink
from hubctl.service.status import Status
from hubctl.service.storage import Storage
from hubctl.service.store import Layout, ReadingStore
from hubctl.service.tasks import guarded
from hubctl.service.writer import SetpointWriter
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from pathlib import Path

    from hubctl.config.resolve import WebSettings
    from hubctl.config.site import SiteConfig
    from hubctl.data.history_store import HistoryStore
    from hubctl.devices.base import Device
    from hubctl.devices.mqtt import MqttHub
    from hubctl.service.cycle import CycleFacts
    from hubctl.service.operator_api import OperatorApi
    from hubctl.service.options import Options
    from hubctl.service.sinks import TelemetrySink
    from hubctl.web.live import Live
    from hubctl.web.server import WebPage

log = logging.getLogger("hubctl.service")  # the name the journal has always shown

EX_OK = 0
EX_FAILURE = 1
SHUTDOWN_BUDGET_S = 4.0  # fail-safe writes + offline within this; systemd's TimeoutStopSec is 5 s


class Gateway:
    """`hubctl run`: build the devices of a site config, control them until told to stop."""

    def __init__(self, cfg: SiteConfig, options: Options, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.options = options
        self.notifier = notifier or Notifier(None)
        self.clock = Clock(options.speed, options.start_utc)
        params = Params.from_config(cfg)
        self.controller = Controller(params, State.initial(params))
        self.layout = Layout.from_config(cfg)
        self.store = ReadingStore(self.layout, cfg.control.stale_after_s, answer_s=2 * cfg.control.cycle_s)
        self.health = Health(
            [d.id for d in cfg.devices],
            fail_after=cfg.service.fail_after,
            recover_after=cfg.service.recover_after,
        )
        self.quarters = QuarterMeter()
        self.sinks: list[TelemetrySink] = []
        self.status = Status(cfg, self.clock, self.notifier, self.sinks)
        self.history = HistoryKeeper(self.state_dir(), self.controller.state.history.revision)
        self._stop = asyncio.Event()
        # embedded components (set up in run())
        self.api: OperatorApi | None = None
        self.view: OperatorView | None = None
        self.storage: Storage | None = None
        self.live: Live | None = None
        self.web: WebPage | None = None
        self._web_settings: WebSettings | None = None
        self._first_cycle = asyncio.Event()  # set by the park page's after-cycle step
        self._last_cycle: tuple[float, Any, Any, Any] | None = None  # for the page without the API

    @property
    def state(self) -> State:
        """The controller's state (what `step` carries from cycle to cycle)."""
        return self.controller.state

    @property
    def params(self) -> Params:
        return self.controller.params

    @property
    def history_store(self) -> HistoryStore | None:
        """The load history on disk; None: memory only (no state directory, or it could not be opened)."""
        return self.history.store

    def state_dir(self) -> Path | None:
        """`storage.dir`, else `service.state_dir`, else `$STATE_DIRECTORY`; None: no durable state."""
        return resolve_state_dir(self.cfg, self.options.env)

    def stop(self) -> None:
        self._stop.set()

    # -- set-up
    def _open_storage(self) -> None:
        """Spool, ledger and (with an InfluxDB URL) forwarder in the state directory."""
        influx = influx_settings(self.cfg, self.options.influx_url, self.options.env)
        self.storage = Storage.open(self.cfg, self.state_dir(), influx, self.clock)
        if self.storage is not None:
            self.sinks.append(self.storage.sink)

    def _close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None

    def _open_history(self) -> None:
        """Start the controller with the history stored in the state directory (none: memory only)."""
        history = self.history.open(self.controller.params)
        if history is not None:
            self.controller.state = State.initial(self.controller.params, history)

    def _close_history(self) -> None:
        """The last save (with the quarter in progress, if it was seen for at least half), then close."""
        self.controller.state = self.history.close(self.controller.state)

    def _history_summary(self) -> dict[str, Any]:
        """What the controller knows of the park's load, for the state document (cached per revision)."""
        return self.history.summary(self.controller.state.history)

    def _make_api(self) -> OperatorApi | None:
        broker = mqtt_broker(self.cfg, self.options.mqtt_url, self.options.env)
        if broker is None:
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
                broker=broker,
                audit_sink=None if self.storage is None else self.storage.sink.audit,
                identifier=f"hubctl-{self.cfg.site.id}-api",
                clock=self.clock.utc,
            )
        except ValueError as exc:
            raise ConfigError("site config", [f"mqtt: {exc}"]) from exc

    def _state_doc(self) -> dict[str, Any] | None:
        """The operator API's `state_source` and the park page's: the state of the last cycle."""
        from hubctl.service.operator_document import state_document  # noqa: PLC0415 - loaded with the API

        last = self.view.last if self.view is not None else self._last_cycle
        if last is None:
            return None
        ts, decision, readings, meter = last
        devices = {d: {"health": h} for d, h in self.health.summary().items()}
        doc = state_document(self.cfg, ts, decision, readings, devices, meter)
        doc["history"] = self._history_summary()
        return doc

    def _make_web(self) -> Live | None:
        """The park page's after-cycle store when `web:` is configured or `--web` given; None: off.

        The page itself (aiohttp, prometheus_client: about 0.3 s of imports) is built by its task
        after the first control cycle (`_run_web`), so that it never delays or shifts the start of
        control (the pollers' phase against the cycle is set by their first pass)."""
        settings = web_settings(self.cfg, self.options.web, self.options.env)
        if settings is None:
            return None
        from hubctl.web.live import Live  # noqa: PLC0415 - only with the page

        self._web_settings = settings
        return Live([c.id for c in self.cfg.companies], self.quarters)

    async def _run_web(self) -> None:
        """The park page's task: after the first cycle, import and build the page, then serve it."""
        live, settings = self.live, self._web_settings
        assert live is not None
        assert settings is not None
        await self._first_cycle.wait()
        if self.web is None:
            # imported in a worker thread: the event loop (pollers, control) runs on meanwhile
            module = await asyncio.to_thread(importlib.import_module, "hubctl.web.server")
            storage, directory = self.storage, self.state_dir()
            kept = storage is not None and directory is not None
            sources = module.Sources(
                state=self._state_doc,
                devices=self.health.summary,
                spool_stats=lambda: None if storage is None else storage.spool.stats(),
                now_utc=self.clock.utc,
                ledger_path=directory / "ledger.sqlite" if kept and directory is not None else None,
                spool_path=directory / "spool.sqlite" if kept and directory is not None else None,
            )
            self.web = module.WebPage(self.cfg, settings, live, sources)
        await self.web.run()

    def _web_step(self, facts: CycleFacts) -> None:
        """The park page's after-cycle step: only stores (the page's task does the rest)."""
        if self.view is None:
            self._last_cycle = (facts.ts, facts.decision, facts.snap.companies, facts.meter)
        self._first_cycle.set()
        if self.live is not None:
            self.live.cycle(
                facts.ts,
                facts.park_kw,
                facts.decision,
                [r.grid_kw for r in facts.snap.companies],
                facts.latency_ms,
            )

    def _make_hub(self) -> MqttHub | None:
        broker = mqtt_broker(self.cfg, self.options.mqtt_url, self.options.env)
        needs = any(d.driver == "mqtt" for d in self.cfg.devices)
        if broker is None:
            if needs:
                raise ConfigError(
                    "site config",
                    ["devices: MQTT devices need a broker: set mqtt.url (or service.mqtt_url, --mqtt-url)"],
                )
            log.info("no MQTT broker configured: running without MQTT")
            return None
        if self.api is not None and not needs:
            return None  # the operator API owns the connection for status and state
        import aiomqtt  # noqa: PLC0415 - only with a broker

        from hubctl.devices.mqtt import MqttHub  # noqa: PLC0415 - only with a broker

        # MQTT v5 where a device takes setpoints with a TTL: the broker then drops an expired one
        expiring = any(d.mqtt is not None and d.mqtt.setpoint_ttl_s is not None for d in self.cfg.devices)
        try:
            return MqttHub.from_broker(
                broker,
                protocol=aiomqtt.ProtocolVersion.V5 if expiring else None,
                identifier=f"hubctl-{self.cfg.site.id}",
                # one owner of the status topic: the operator API when it runs
                status_topic=None if self.api is not None else f"hubctl/{self.cfg.site.id}/status",
            )
        except ValueError as exc:
            raise ConfigError("site config", [f"{broker.source}: {exc}"]) from exc

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

    def _record_limits(self, devices: Mapping[str, Device]) -> None:
        """Give the drivers the record of what hubctl wrote to the limits a device keeps (limit_record.py)."""
        inverters = [d for d in devices.values() if d.role is DeviceRole.PV]
        if not inverters:
            return
        directory = self.state_dir()
        if directory is None:
            log.info(
                "no state directory: a PV limit a device keeps is taken as the installer's at start"
                " (hubctl cannot tell one it wrote itself before a restart)"
            )
            return
        directory.mkdir(parents=True, exist_ok=True)
        record = LimitFile(directory / LIMITS_FILE)
        for device in inverters:
            device.limit_record = record

    def _quarter_step(self, f: CycleFacts) -> None:
        """The journal's quarter meter takes the step as the ledger does: a gap filled from energy
        counters first, then the step if it was measured."""
        if f.fill is not None:
            park_kw = f.fill.park_kw if f.fill.park_kw is not None else math.fsum(f.fill.grid_kw)
            self.quarters.add(f.fill.ts, park_kw, f.fill.dt_s, f.decision, filled=True)
        self.quarters.add(f.ts, f.measured_park_kw, f.dt_s, f.decision)

    def _control_loop(self, writer: SetpointWriter, fallbacks: FallbackTargets, jobs: Jobs) -> ControlLoop:
        """The control loop with its after-cycle steps, in their order."""
        ctl, ledger = self.controller, None if self.storage is None else self.storage.ledger
        steps = [AfterStep("quarter meter", self._quarter_step)]
        if ledger is not None:
            feed = LedgerFeed(ledger, accelerated=self.clock.accelerated)
            failure = "the ledger could not take a step (logged once)"
            steps.append(AfterStep("ledger", feed, (ValueError, sqlite3.Error), failure))
        steps.append(AfterStep("load history", lambda _: self.history.after_cycle(ctl.state.history)))
        if self.clock.accelerated:
            steps.append(AfterStep("wall-clock jobs", lambda f: jobs.accelerated(f.ts)))
        operator = None
        if self.api is not None:
            self.view = OperatorView(self.api)
            steps.append(AfterStep("operator state", self.view))
            operator = OperatorSync(self.cfg, self.api, ctl, ledger, fallbacks)
        if self.live is not None:
            failure = "the park page's after-cycle step failed (logged once); control goes on"
            steps.append(AfterStep("web page", self._web_step, (Exception,), failure))
        steps += [
            AfterStep("mode", self.status.mode_step),
            AfterStep("ready", self.status.ready_step),
            AfterStep("watchdog", self.status.watchdog_step),
            AfterStep("cycle record", CycleRecords(self.sinks, self.health)),
        ]
        park_meter = self.layout.park_meter
        check = None if park_meter is None else MeterCheck(park_meter, self.cfg.park.meter_tolerance())
        return ControlLoop(self.cfg, self.clock, self.store, ctl, writer, steps, operator, check)

    # -- run
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `stop()`); returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.options.trace is not None:
            self.sinks.append(JsonLinesSink(self.options.trace))
        log.info("%s", self.cfg.connection_summary())
        unmetered = self.layout.unmetered()
        if unmetered:
            log.warning("no grid meter for %s: the controller stays in fail-safe", ", ".join(unmetered))
        code = EX_OK
        try:
            self._open_storage()
            self._open_history()
            self.api = self.controller.api = self._make_api()
            self.live = self._make_web()
            hub = self._make_hub()
            async with ConnectionPool() as pool:
                devices = self._build(pool, hub)
                self._record_limits(devices)
                writer = SetpointWriter(self.cfg, devices, self.health, self.clock, self.store)
                keeper = FallbackKeeper(self.cfg, devices, self.health, self.clock)
                fallbacks = FallbackTargets(keeper, self.controller, self.cfg.tz)
                fallbacks.update(self.clock.utc())
                if hub is not None:
                    await hub.start()  # no wait: a broker that is down must not hold the cap hostage
                ledger = None if self.storage is None else self.storage.ledger
                jobs = Jobs(
                    self.cfg, self.clock, self.controller, self.quarters, self.sinks, ledger, fallbacks
                )
                control = self._control_loop(writer, fallbacks, jobs)
                aux: dict[str, asyncio.Task[None]] = {}
                scheduler = None
                try:
                    aux = self._start_aux()
                    scheduler = jobs.scheduler()
                    code = await self._supervise(devices, control, keeper)
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
        if self.storage is not None:
            jobs.update(self.storage.jobs())
        if self.api is not None:
            jobs["operator-api"] = self.api.run
        if self.live is not None:
            jobs["web"] = self._run_web
        loop = asyncio.get_running_loop()
        return {name: loop.create_task(guarded(name, job), name=name) for name, job in jobs.items()}

    async def _supervise(
        self, devices: dict[str, Device], control: ControlLoop, keeper: FallbackKeeper
    ) -> int:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = []
                first_pass: list[asyncio.Event] = []
                for label, group in poll_groups(self.cfg, devices).items():
                    done = asyncio.Event()
                    first_pass.append(done)
                    job = poll(group, done, clock=self.clock, store=self.store, health=self.health)
                    tasks.append(tg.create_task(job, name=f"poll {label}"))
                tasks.append(tg.create_task(control.run(first_pass), name="control"))
                tasks.append(tg.create_task(keeper.run(), name="fallbacks"))
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

    # -- shutdown
    async def _shutdown(
        self, writer: SetpointWriter, hub: MqttHub | None, aux: dict[str, asyncio.Task[None]]
    ) -> None:
        """Fail-safe setpoints to every device, then the components and `offline`, in SHUTDOWN_BUDGET_S."""
        self.notifier.stopping()
        t0 = time.perf_counter()
        decision = self.controller.failsafe(self.clock.utc(), len(self.cfg.companies))
        await writer.drain(1.0)
        writes, failed = await writer.apply(decision, budget_s=SHUTDOWN_BUDGET_S - 2.0, force=True)
        pending = writer.pending()
        if pending:
            log.warning(
                "fail-safe writes to %s did not finish in time; they fall back by their revert timers",
                ", ".join(pending),
            )
        log.info(
            "stopped: fail-safe setpoints written to %d device(s), %d failed, %d still running, in %.0f ms",
            writes,
            failed,
            len(pending),
            (time.perf_counter() - t0) * 1000,
        )
        for sink in self.sinks:
            sink.event(
                "shutdown", writes=writes, failed=failed, running=len(pending), ts_utc=self.clock.utc()
            )
        await self._stop_aux(aux)
        if hub is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await hub.stop()

    async def _stop_aux(self, aux: dict[str, asyncio.Task[None]]) -> None:
        """The forwarder after its batch in flight (at most 1 s), the spool's last commit, `offline`."""
        forwarder = aux.pop("forwarder", None)
        if forwarder is not None and self.storage is not None and self.storage.forwarder is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self.storage.forwarder.stop()
            except TimeoutError:  # a database that never answers must not hold up the exit
                log.warning("the database did not answer within 1 s of the stop; its batch stays spooled")
                self.storage.abandon_forwarding()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self.storage.forwarder.stop()
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
    # every refusal is `preflight.start_problems`, the checks `hubctl check-config` runs too
    problems = start_problems(cfg, options, create=True)
    for problem in problems:  # one journal line each, naming the setting and what to set
        log.error("site config: %s", problem)
    if problems:
        return EX_CONFIG
    notifier = Notifier.from_env(options.env or dict(os.environ))
    try:
        return asyncio.run(Gateway(cfg, options, notifier).run())
    except ConfigError as exc:
        log.error("%s: %s", exc.source, "; ".join(exc.problems))  # noqa: TRY400 - the problems are the message
        return EX_CONFIG
