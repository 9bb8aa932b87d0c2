"""The devices' own fallbacks: what each battery and PV inverter does once no controller writes.

What it is: `FallbackKeeper`, which writes the wanted fallback (batteries 0 kW, PV the fail-safe
limit of the tightest export cap: `hubctl.core.failsafe.fallback_pv_limits`) to every device that
answers and does not hold it yet, and keeps doing so (`run`); and `FallbackTargets`, which
computes those limits from the limits in force (config and operator settings) whenever they may
have changed: at start, when the operator's settings change, and once a day.

The keeper is the one place that configures fallbacks (#12): every battery and PV inverter gets
`configure_fallback` once it answers, whatever its driver. What is written is the driver's: SunSpec
704 reversion values; a register map's `fallback:` block (fallback value, its enable switch, the
communication watchdog); nothing for SunSpec 123/124, maps without a block, Huawei's forcible
period and MQTT devices, whose result says what the device does instead (logged once per device
at start, and shown by `hubctl read`: `Device.fallback_summary`). docs/failsafe.md has the table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from typing import TYPE_CHECKING

from hubctl.config.devices import DeviceRole
from hubctl.core.failsafe import fallback_pv_limits
from hubctl.devices.health import State as HealthState
from hubctl.errors import DeviceError
from hubctl.service.tasks import raise_if_cancelled

if TYPE_CHECKING:
    from collections.abc import Sequence
    from zoneinfo import ZoneInfo

    from hubctl.config.site import SiteConfig
    from hubctl.devices.base import Device
    from hubctl.devices.health import Health
    from hubctl.service.clock import Clock
    from hubctl.service.cycle import Controller

log = logging.getLogger("hubctl.service")  # the name the journal has always shown

_UNSET = object()


class FallbackKeeper:
    """Configures what each battery and PV inverter falls back to once no controller writes, and keeps it so.

    `update(pv_limits_kw)` sets what is wanted (`hubctl.core.failsafe.fallback_pv_limits`, per company,
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

    async def run(self) -> None:
        """Configure the devices' fallbacks as they answer; an error here never stops control."""
        failed = False
        while True:
            try:
                await self.step()
            except Exception:
                if not failed:
                    log.exception("configuring the devices' fallbacks failed (logged once); trying again")
                failed = True
            raise_if_cancelled()
            await asyncio.sleep(min(0.5, self.clock.real_s(1.0)))


class FallbackTargets:
    """The fallback PV limits as the limits stand at a moment (config, operator settings), for a keeper."""

    def __init__(self, keeper: FallbackKeeper, controller: Controller, tz: ZoneInfo) -> None:
        self.keeper = keeper
        self.controller = controller
        self.tz = tz
        self.day: dt.date | None = None  # the local date of the last update

    def update(self, ts: float) -> None:
        """The fallback PV limits from the limits as they stand at `ts` (config, operator settings)."""
        overrides = self.controller.overrides(ts)
        try:
            limits = fallback_pv_limits(self.controller.params, ts, overrides)
        except Exception:
            log.exception("the fallback PV limits could not be computed; keeping the previous ones")
            return
        self.keeper.update(limits)
        self.day = self._local_date(ts)

    def new_day(self, ts: float) -> bool:
        """A local day has begun since the last update (the daily job's renewal is due)."""
        return self.day is not None and self._local_date(ts) != self.day

    def _local_date(self, ts: float) -> dt.date:
        return dt.datetime.fromtimestamp(ts, self.tz).date()
