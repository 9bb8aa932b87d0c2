"""The setpoint writer: a decision of the core written to the devices.

What it is: `SetpointWriter`, which splits each company's battery setpoint and PV limit evenly
over its devices (a PV inverter that is down or refuses limits counts at its full share), writes
only what changed by more than a deadband or whose revert timer is due, all devices at once
within a time budget, and skips a device while a write to it is still running. A device that is
down is skipped (its setpoint is written again when it answers); a device that refuses a kind of
setpoint (`CommandRejectedError`) is no longer dispatched (`uncontrollable`, shared with the
reading store, which then hides its state of charge from the core).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubctl.config.devices import DeviceRole
from hubctl.devices.health import State as HealthState
from hubctl.errors import CommandRejectedError, DeviceError

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from hubctl.config.site import SiteConfig
    from hubctl.core.types import Decision
    from hubctl.devices.base import Device
    from hubctl.devices.health import Health
    from hubctl.service.clock import Clock

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


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
