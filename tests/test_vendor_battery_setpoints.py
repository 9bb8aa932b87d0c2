"""The vendor maps' battery setpoints against the Modbus simulator over real TCP (#12 item 3).

- Huawei SUN2000 + LUNA2000 (`drivers/huawei-sun2000.yaml`, `hubctl/devices/huawei.py`): the
  setpoint is a forcible charge/discharge for a period (47083) that hubctl renews; once nobody
  renews it the battery returns to its working mode, here the simulator's installer fallback.
- Victron VE.Bus in ESS Mode 3 (`drivers/victron-vebus-ess3.yaml`): the AC-input power setpoint
  (register 37), which no documented watchdog ends: a dead controller leaves it in force.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_sim_devices import (  # pytest puts tests/ on sys.path
    arun,
    make_park,
    no_leaks,  # noqa: F401 - autouse fixture: no socket or task left behind
    served,
)

from hubctl.config.devices import Device as DeviceConfig
from hubctl.devices import build_device
from hubctl.devices.huawei import HuaweiSun2000Device
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.transport.modbus import ConnectionPool
from simulators.modbus_sim import DeviceOptions, MapUnit, load_driver

if TYPE_CHECKING:
    from hubctl.devices.base import Device, FallbackResult

WORKING_MODE_KW = 5.0  # what the simulated battery does on its own (the installer's working mode)


def config(port: int, driver: str, unit_id: int) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": "alpha-battery",
            "company": "alpha",
            "role": "battery",
            "driver": driver,
            "modbus": {"host": "127.0.0.1", "port": port, "unit_id": unit_id, "timeout_s": 2},
        }
    )


def test_huawei_forcible_charge_is_renewed_while_hubctl_lives_and_ends_with_its_period() -> None:
    park = make_park()
    options = DeviceOptions(battery_fallback_kw=WORKING_MODE_KW)
    unit = MapUnit(
        "alpha-battery",
        1,
        park,
        load_driver("huawei-sun2000"),
        "battery",
        "alpha",
        driver="huawei-sun2000",
        options=options,
    )

    async def main() -> tuple[FallbackResult, str | None, list[float]]:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device: Device = build_device(
                config(endpoint.port, "huawei-sun2000", 1), pool=pool, revert_s=60.0
            )
            assert isinstance(device, HuaweiSun2000Device)
            fallback = await device.configure_fallback()
            await device.start()
            assert device.setpoint_bounds_kw("battery") == (-250.0, 250.0)
            result = await device.set_battery_kw(-20.0)
            assert result.confirmed_kw == pytest.approx(-20.0)
            assert result.refresh_every_s == pytest.approx(20.0)  # a third of the 1 min period
            seen = []
            for _ in range(6):  # 3 minutes with hubctl alive: it renews the period when due
                park.advance(30)
                if device.refresh_due(device.clock() + 30):
                    await device.refresh(device.clock() + 30)
                seen.append(float(park.record.battery_kw[0]))
            summary = device.fallback_summary(await device.read())
            park.advance(90)  # hubctl dead: the period (1 min) runs out
            seen.append(float(park.record.battery_kw[0]))
            return fallback, summary, seen

    fallback, summary, seen = arun(main)
    assert seen[:6] == pytest.approx([-20.0] * 6)
    assert seen[6] == pytest.approx(WORKING_MODE_KW)
    assert not fallback.configured
    assert fallback.detail == (
        "none configurable: after the forcible period the battery returns to its working mode (47086,"
        " the installer's) (the forcible charge/discharge ends 1 min after hubctl's last write)"
    )
    assert summary == (
        "after the forcible period the battery returns to its working mode (47086, the installer's);"
        " the forcible charge/discharge ends 1 min after hubctl's last write"
    )


def test_huawei_0_kw_holds_the_battery_idle_not_in_its_working_mode() -> None:
    park = make_park()
    unit = MapUnit(
        "alpha-battery",
        1,
        park,
        load_driver("huawei-sun2000"),
        "battery",
        "alpha",
        driver="huawei-sun2000",
        options=DeviceOptions(battery_fallback_kw=WORKING_MODE_KW),
    )

    async def main() -> float:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device = build_device(config(endpoint.port, "huawei-sun2000", 1), pool=pool, revert_s=60.0)
            await device.set_battery_kw(15.0)
            park.advance(5)
            assert float(park.record.battery_kw[0]) == pytest.approx(15.0)
            result = await device.set_battery_kw(0.0)
            park.advance(5)
            assert unit.stored("forcible_command_code") == 2  # a discharge at 0 W, not the stop command
            await device.release()
            assert unit.stored("forcible_command_code") == 0
            return result.confirmed_kw or 0.0

    assert arun(main) == 0.0
    park.advance(3)
    assert float(park.record.battery_kw[0]) == pytest.approx(0.0)


def test_victron_mode_3_setpoint_is_taken_and_outlives_a_dead_controller_as_documented() -> None:
    park = make_park()
    unit = MapUnit(
        "alpha-battery",
        227,
        park,
        load_driver("victron-vebus-ess3"),
        "battery",
        "alpha",
        driver="victron-vebus-ess3",
        options=DeviceOptions(battery_fallback_kw=WORKING_MODE_KW),
    )

    async def main() -> tuple[FallbackResult, str | None, float | None]:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device = build_device(config(endpoint.port, "victron-vebus-ess3", 227), pool=pool)
            assert isinstance(device, ModbusMapDevice)
            fallback = await device.configure_fallback()
            result = await device.set_battery_kw(-12.0)  # charge: + 12 kW into the Multi's AC input
            assert result.confirmed_kw == pytest.approx(-12.0)
            assert result.refresh_every_s == 10.0
            assert unit.stored("ess_setpoint_l1_kw") == pytest.approx(-12.0)
            park.advance(3)
            reading = await device.read()
            return fallback, device.fallback_summary(reading), reading.power_kw

    fallback, summary, power_kw = arun(main)
    assert power_kw == pytest.approx(-12.0, abs=0.03)  # three phases in 10 W steps
    park.advance(300)  # hubctl dead for 5 minutes
    assert float(park.record.battery_kw[0]) == pytest.approx(-12.0)  # the last setpoint, still
    assert not fallback.configured
    assert fallback.detail == (
        "none configurable: no documented watchdog: the Multi keeps the last Mode 3 setpoint until a"
        " restart (keeps the last setpoint)"
    )
    assert (
        summary == "no documented watchdog: the Multi keeps the last Mode 3 setpoint until a restart;"
        " keeps the last setpoint"
    )
