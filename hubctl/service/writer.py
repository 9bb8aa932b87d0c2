"""The setpoint writer: a decision of the core written to the devices.

What it is: `SetpointWriter`, which splits each company's battery setpoint and PV limit evenly
over its devices (a PV inverter that is down or refuses limits counts at its full share), writes
only what changed by more than a deadband or whose revert timer is due, all devices at once
within a time budget, and skips a device while a write to it is still running. A device that is
down is skipped (its setpoint is written again when it answers).

Refused setpoints: before its first setpoint each device is started (`Device.start`, which reads
its own bounds) and a site config that promises more than the device takes is logged once, as a
warning naming the device, the config value and the device's bound. From then on every setpoint is
clamped to the device's bounds (`setpoint_bounds_kw`) and the device stays controlled: a value it
refuses (`SetpointOutOfBoundsError`) is tried again clamped to the bounds the error names, and
never stops dispatching. Only a device that takes no such setpoint at all
(`SetpointUnsupportedError`: no setpoint point, no control model) is reported once and no longer
dispatched for that kind; the writer tells its `WriteReports` (the reading store, which
then hides that battery's state of charge from the core). It also tells the store when each
battery setpoint was sent, so that a battery reading taken before it is known to be behind a grid
meter read after it (`CompanyReading.battery_behind`).

A restart releases what the previous run left (#13 item 5): until a device has taken its first
setpoint from this run (`_Target.settled`), a decision of "no limit" is written to it as a
release (`Device.release`: a kept limit back to the installer's value, a SunSpec limit switched
off, which ends a 704's fallback to its reversion limit), not skipped as "nothing held". A
battery always gets a number (no setpoint is 0 kW), so its first decision is written anyway. A
device that goes down is unsettled again: after an outage longer than its revert timer it sits
on its fallback, and the first decision after it answers again lifts that too.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hubctl.config.devices import DeviceRole
from hubctl.devices.health import State as HealthState
from hubctl.errors import (
    CommandRejectedError,
    DeviceError,
    SetpointOutOfBoundsError,
    SetpointUnsupportedError,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from hubctl.config.site import SiteConfig
    from hubctl.core.types import Decision
    from hubctl.devices.base import Device
    from hubctl.devices.health import Health
    from hubctl.service.clock import Clock

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


class WriteReports(Protocol):
    """Who is told what the writer did (the reading store): a device that takes no setpoint of a
    kind at all, and when a setpoint was sent (monotonic clock) that the device took."""

    def setpoint_unsupported(self, device_id: str, kind: str) -> None: ...

    def setpoint_written(self, device_id: str, kind: str, sent_at_s: float) -> None: ...


@dataclass(slots=True)
class _Target:
    device: Device
    kind: str  # "battery" | "pv_limit"
    deadband_kw: float
    promised: tuple[tuple[str, float], tuple[str, float]]  # the site config's (field, kW) low and high
    rated_kw: float = 0.0  # PV: this inverter's share of its company's peak
    written_kw: float | None = None  # the last value confirmed; None: nothing held
    held: bool = False
    started: bool = False  # Device.start done (its bounds read) and the config checked against them
    unsupported: str | None = None  # why the device takes no such setpoint: no longer dispatched
    clamped: bool = False  # the last value was clamped to the device's bounds (logged on the change)
    refused: bool = False  # the last value was refused (logged on the change)
    settled: bool = False  # took a setpoint or a release from this run since it last answered


class SetpointWriter:
    """Writes a decision to the devices: only what changed (or whose revert timer is due), all at once."""

    def __init__(
        self,
        cfg: SiteConfig,
        devices: dict[str, Device],
        health: Health,
        clock: Clock,
        reports: WriteReports | None = None,
    ) -> None:
        self.health = health
        self.reports = reports
        self.clock = clock
        self.batteries: list[list[_Target]] = []
        self.inverters: list[list[_Target]] = []
        for c in cfg.companies:
            bats = [devices[d.id] for d in cfg.devices if d.company == c.id and d.role is DeviceRole.BATTERY]
            pvs = [devices[d.id] for d in cfg.devices if d.company == c.id and d.role is DeviceRole.PV]
            charge, discharge = (
                (c.battery.max_charge_kw, c.battery.max_discharge_kw) if c.battery else (1.0, 1.0)
            )
            peak = c.pv.peak_kw if c.pv else 1.0
            n_bat, n_pv, where = max(len(bats), 1), max(len(pvs), 1), f"companies.{c.id}"
            bat_promise = (
                (f"{where}.battery.max_charge_kw", -charge / n_bat),
                (f"{where}.battery.max_discharge_kw", discharge / n_bat),
            )
            pv_promise = ((f"{where}.pv", 0.0), (f"{where}.pv.peak_kw", peak / n_pv))
            self.batteries.append(
                [_Target(d, "battery", max(0.01 * max(charge, discharge), 0.05), bat_promise) for d in bats]
            )
            self.inverters.append(
                [_Target(d, "pv_limit", max(0.01 * peak, 0.05), pv_promise, peak / n_pv) for d in pvs]
            )
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._starting: dict[str, asyncio.Task[bool]] = {}  # starts without a write (not counted)

    def targets(self) -> list[_Target]:
        return [t for group in (*self.batteries, *self.inverters) for t in group]

    async def apply(
        self, decision: Decision, *, budget_s: float | None = None, force: bool = False
    ) -> tuple[int, int]:
        """Write `decision`; returns (writes that succeeded, writes that failed) within `budget_s` (real
        seconds); a write still running after it is in neither count.

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
                    if target.unsupported is not None:
                        continue
                    running = self._inflight.get(device_id) or self._starting.get(device_id)
                    if running is not None and not running.done():
                        continue
                    if not force and self.health.state(device_id) is HealthState.DOWN:
                        # re-written (or released) when it answers again
                        target.written_kw, target.held, target.settled = None, False, False
                        continue
                    job = self._job(target, share, now, force=force)
                    if job is None and not target.started:  # nothing to write yet: read its bounds
                        start = self._start(target)
                        self._starting[device_id] = asyncio.get_running_loop().create_task(
                            start, name=f"start {device_id}"
                        )
                    elif job is not None:
                        task = asyncio.get_running_loop().create_task(job, name=f"write {device_id}")
                        self._inflight[device_id] = task
                        jobs.append(task)
        if not jobs:
            return 0, 0
        done, _ = await asyncio.wait(jobs, timeout=budget_s)
        failed = sum(1 for t in done if t.cancelled() or t.exception() or not t.result())
        return len(done) - failed, failed

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
            if t.unsupported is not None or self.health.state(t.device.id) is HealthState.DOWN
        ]
        if not lost or len(lost) == len(group):
            return value / len(group)
        return max(0.0, value - sum(t.rated_kw for t in lost)) / (len(group) - len(lost))

    def pending(self) -> list[str]:
        """Devices with a write (or the start before it) still running: `apply` skips them."""
        running = (*self._inflight.items(), *self._starting.items())
        return sorted({d for d, t in running if not t.done()})

    def not_dispatched(self) -> dict[str, str]:
        """`device id: kind` of every device that takes no setpoint of its kind (reported once)."""
        return {t.device.id: t.kind for t in self.targets() if t.unsupported is not None}

    async def drain(self, timeout_s: float) -> None:
        """Wait for the writes still running (shutdown), at most `timeout_s`."""
        running = [t for t in (*self._inflight.values(), *self._starting.values()) if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout_s)

    def _job(
        self, target: _Target, kw: float | None, now: float, *, force: bool
    ) -> Coroutine[Any, Any, bool] | None:
        if kw is None:
            if target.kind == "battery":
                kw = 0.0
            elif target.held or force or not target.settled:  # unsettled: lift what was left
                return self._release(target)
            else:
                return None
        kw = self._clamp(target, kw)
        changed = target.written_kw is None or abs(kw - target.written_kw) >= target.deadband_kw
        if force or changed:
            return self._write(target, kw)
        if target.device.refresh_due(now):
            return self._refresh(target, now)
        return None

    def _clamp(self, target: _Target, kw: float) -> float:
        """`kw` within the device's own bounds (as far as known); the start of clamping is logged."""
        bounds = target.device.setpoint_bounds_kw(target.kind)
        value = kw if bounds is None else min(max(kw, bounds[0]), bounds[1])
        clamped = value != kw
        if clamped and not target.clamped and bounds is not None:
            log.info(
                "%s: %g kW asked, %g kW written: the device takes %g..%g kW",
                target.device.id,
                kw,
                value,
                *bounds,
            )
        target.clamped = clamped
        return value

    async def _start(self, target: _Target) -> bool:
        """Start the device (it reads its bounds) and warn once if the site config promises more."""
        device = target.device
        try:
            await device.start()
        except CommandRejectedError as exc:
            self._refused(target, exc)
            return False
        except DeviceError as exc:
            self.health.failed(device.id, exc, self.clock.mono())
            return False
        target.started = True
        bounds = device.setpoint_bounds_kw(target.kind)
        if bounds is None:
            return True
        (low_field, low_kw), (high_field, high_kw) = target.promised
        for field, promised, bound, over in (
            (low_field, low_kw, bounds[0], low_kw < bounds[0] - 1e-6),
            (high_field, high_kw, bounds[1], high_kw > bounds[1] + 1e-6),
        ):
            if over:
                log.warning(
                    "%s: the site config promises %g kW (%s, this device's share), beyond the device's"
                    " own bound of %g kW; hubctl writes no more than the device takes",
                    device.id,
                    promised,
                    field,
                    bound,
                )
        return True

    async def _write(self, target: _Target, kw: float) -> bool:
        device = target.device
        if not target.started and not await self._start(target):
            target.written_kw, target.held = None, False
            return False
        kw = self._clamp(target, kw)
        for _ in range(2):  # a value refused for its bounds is tried once more within them
            sent_at = self.clock.mono()
            try:
                if target.kind == "battery":
                    result = await device.set_battery_kw(kw)
                else:
                    result = await device.set_pv_limit_kw(kw)
            except SetpointOutOfBoundsError as exc:
                bounded = _within(kw, exc.low_kw, exc.high_kw)
                if bounded is None or bounded == kw:
                    self._refused(target, exc)
                    return False
                kw = bounded
                continue
            except CommandRejectedError as exc:
                self._refused(target, exc)
                return False
            except DeviceError as exc:
                target.written_kw, target.held = None, False
                self.health.failed(device.id, exc, self.clock.mono())
                return False
            if target.refused:
                log.info("%s: takes its setpoints again (%g kW)", device.id, kw)
            target.written_kw, target.held, target.refused = result.requested_kw, True, False
            target.settled = True
            if self.reports is not None:
                self.reports.setpoint_written(device.id, target.kind, sent_at)
            return True
        return False

    def _refused(self, target: _Target, exc: CommandRejectedError) -> None:
        """A setpoint refused before it was written. Unsupported: reported once and never dispatched
        again (and the reading store told); any other value: logged once, tried again next cycle."""
        device_id = target.device.id
        target.written_kw, target.held = None, False
        if isinstance(exc, SetpointUnsupportedError):
            log.warning("%s: %s; hubctl no longer dispatches its %s", device_id, exc, _WHAT[target.kind])
            target.unsupported = str(exc)
            if self.reports is not None:
                self.reports.setpoint_unsupported(device_id, target.kind)
            return
        if not target.refused:
            log.warning("%s: %s; tried again within the device's bounds next cycle", device_id, exc)
        target.refused = True

    async def _refresh(self, target: _Target, now: float) -> bool:
        try:
            await target.device.refresh(now)
        except CommandRejectedError as exc:
            self._refused(target, exc)
            return False
        except DeviceError as exc:
            target.written_kw, target.held = None, False
            self.health.failed(target.device.id, exc, self.clock.mono())
            return False
        return True

    async def _release(self, target: _Target) -> bool:
        if not target.started and not await self._start(target):
            return False
        try:
            await target.device.release()
        except CommandRejectedError as exc:
            self._refused(target, exc)
            return False
        except DeviceError as exc:
            self.health.failed(target.device.id, exc, self.clock.mono())
            return False
        target.written_kw, target.held, target.settled = None, False, True
        return True


_WHAT = {"battery": "battery setpoint", "pv_limit": "PV limit"}


def _within(kw: float, low: float | None, high: float | None) -> float | None:
    """`kw` clamped to low..high (a refusal's bounds); None without bounds or for a value not finite."""
    if low is None or high is None or math.isnan(kw):
        return None
    return min(max(kw, low), high)
