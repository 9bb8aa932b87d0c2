# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Huawei SUN2000 with a LUNA2000 battery: the battery setpoint as a forcible charge/discharge.

The map (`drivers/huawei-sun2000.yaml`) has the registers; what data cannot say is the sequence
("Solar Inverter Modbus Interface Definitions", Issue 05, [Energy storage] registers 47083,
47100, 47246, 47247, 47249; the order is huawei-solar-lib's `forcible_charge` service): the power
(47247 to charge, 47249 to discharge, W), the period (47083, minutes), the setting mode 0 (by
duration, 47246), then the command (47100: 1 charge, 2 discharge, 0 stop).

Decisions:

- **The period is the revert timer.** hubctl writes `service.revert_s` rounded up to whole
  minutes (at least 1) with every setpoint and re-writes the command after a third of it, so the
  period never runs out while hubctl lives; once it dies, the forced mode ends by itself within
  the period and the battery returns to its working mode (47086, the installer's: e.g. maximise
  self-consumption). There is no register for another fallback, so `configure_fallback` writes
  nothing and says so (the map's `fallback.battery.note`).
- **0 kW is a forcible discharge at 0 W** for the period (the battery held idle, as hubctl means
  0 kW), not the stop command, which would hand the battery back to its working mode at once.
  Not confirmed on hardware: whether the LUNA2000 holds 0 W or idles in its working mode.
- **Read-back**: the command and the power register written; the power in force (47084) is not
  used (its sign is not confirmed).
- **Bounds**: -47247's write_max .. +47249's write_max (the map's codec guards; the site config
  narrows them).
- `release()` writes the stop command (0).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hubctl.codec.registers import encode
from hubctl.config.devices import DeviceRole
from hubctl.devices.base import SetpointResult, confirmed
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.errors import CommandNotConfirmedError

if TYPE_CHECKING:
    from hubctl.codec.regmap import Point

__all__ = ["HuaweiSun2000Device"]

COMMAND = "forcible_command_code"
PERIOD = "forcible_period_min"
SETTING_MODE = "forcible_setting_mode_code"
CHARGE_POWER = "forcible_charge_power_kw"
DISCHARGE_POWER = "forcible_discharge_power_kw"
CHARGE, DISCHARGE, STOP = 1, 2, 0


class HuaweiSun2000Device(ModbusMapDevice):
    """The huawei-sun2000 map; as a battery, setpoints are forcible charge/discharge for a period."""

    async def start(self) -> None:
        if self._started:
            return
        await super().start()
        if self.role is DeviceRole.BATTERY:
            charge, discharge = self.map.point(CHARGE_POWER), self.map.point(DISCHARGE_POWER)
            self._bounds["battery"] = (-(charge.write_max or 0.0), discharge.write_max or 0.0)

    @property
    def period_min(self) -> int:
        """The forcible period hubctl writes: service.revert_s in whole minutes, at least 1."""
        return max(1, math.ceil(self.revert_s / 60))

    def _lapse_text(self) -> str:
        if self.role is DeviceRole.BATTERY:
            return f"the forcible charge/discharge ends {self.period_min} min after hubctl's last write"
        return super()._lapse_text()

    async def _set_battery(self, kw: float) -> SetpointResult:
        await self.start()
        low, high = self._bounds["battery"]
        self._check_bounds("battery", kw, low, high, " (forcible charge/discharge power)")
        command = CHARGE if kw < 0 else DISCHARGE
        power = self.map.point(CHARGE_POWER if command == CHARGE else DISCHARGE_POWER)
        await self._write(power, abs(kw))
        await self._write(self.map.point(PERIOD), self.period_min)
        await self._write(self.map.point(SETTING_MODE), 0)
        await self._write(self.map.point(COMMAND), command)
        command_back = await self._read_point(self.map.point(COMMAND))
        power_back = await self._read_point(power)
        if command_back != command or power_back is None or not confirmed(abs(kw), power_back, power.scale):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote {COMMAND} {command} with {power.name} {abs(kw):g} kW,"
                f" reads back {command_back} and {power_back}"
            )
        signed = -power_back if command == CHARGE else power_back
        return SetpointResult(
            device_id=self.id,
            kind="battery",
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=signed,
            refresh_every_s=self.period_min * 60 / 3,
        )

    async def _write(self, point: Point, value: float) -> None:
        words = encode(point, value)
        await self.connection.write(point.address, words, self.unit_id, timeout_s=self.timeout_s)

    async def release(self) -> None:
        held = set(self._held)
        await super().release()
        if "battery" in held:
            await self._write(self.map.point(COMMAND), STOP)
