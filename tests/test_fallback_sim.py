"""hubctl's `configure_fallback` against the project's simulated SunSpec devices, over Modbus TCP.

The simulated 802 + 704 battery is given an installer's fallback power of +20 kW (discharge, what
`hubctl simulate --battery-fallback-kw 20` sets): without hubctl's fallback a lapsed setpoint
leaves it discharging; with it, the battery falls back to 0 kW.

The simulated PV inverter with 704 (no 123) is given an installer's fallback of 100 % (what
`hubctl simulate --pv-fallback-pct 100` sets: no effective limit): without hubctl's fallback a
lapsed limit leaves it at full output; with it, the inverter falls back to hubctl's limit.
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
from hubctl.devices.sunspec import SunSpecDevice
from hubctl.transport.modbus import ConnectionPool
from simulators.modbus_sim import DeviceOptions
from simulators.sunspec_sim import SunSpecInverter, SunSpecInverter704
from simulators.sunspec_storage import SunSpecStorage124, SunSpecStorage802

if TYPE_CHECKING:
    from hubctl.devices.base import FallbackResult

INSTALLER_FALLBACK_KW = 20.0
REVERT_S = 5.0


def device_config(port: int, role: str = "battery") -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": f"alpha-{role}",
            "company": "alpha",
            "role": role,
            "driver": "sunspec",
            "modbus": {"host": "127.0.0.1", "port": port, "timeout_s": 2},
        }
    )


@pytest.mark.parametrize(("configure", "falls_back_to_kw"), [(True, 0.0), (False, INSTALLER_FALLBACK_KW)])
def test_a_lapsed_setpoint_falls_back_to_hubctls_0_kw_not_the_installers_power(
    configure: bool,
    falls_back_to_kw: float,
) -> None:
    park = make_park()
    battery = SunSpecStorage802(
        "alpha-battery", 1, park, "alpha", DeviceOptions(battery_fallback_kw=INSTALLER_FALLBACK_KW)
    )

    async def main() -> FallbackResult | None:
        async with served(battery) as endpoint, ConnectionPool() as pool:
            device = SunSpecDevice(
                device_config(endpoint.port), pool.get("127.0.0.1", endpoint.port), revert_s=REVERT_S
            )
            result = await device.configure_fallback() if configure else None
            await device.set_battery_kw(-30.0)  # charging, with hubctl's 5 s revert timer
            park.advance(4)  # the battery ramps 10 kW per step
            assert float(park.record.battery_kw[0]) == pytest.approx(-30.0)
            assert (await device.read()).values["setpoint_kw"] == pytest.approx(-30.0)
            park.advance(12)  # no controller re-writes: the setpoint lapses after 5 s, then the ramp
            assert (await device.read()).values["setpoint_kw"] is None  # WSetEna reads 0 again
            return result

    result = arun(main)
    assert float(park.record.battery_kw[0]) == pytest.approx(falls_back_to_kw)
    if result is not None:
        assert result.configured
        assert result.confirmed_kw == 0.0


@pytest.mark.parametrize(("configure", "falls_back_to_kw"), [(True, 12.0), (False, 80.0)])
def test_a_lapsed_704_pv_limit_falls_back_to_hubctls_limit_not_full_output(
    configure: bool,
    falls_back_to_kw: float,
) -> None:
    park = make_park()  # alpha: 100 kW peak, 80 kW of sun, 10 kW per step
    inverter = SunSpecInverter704("alpha-pv", 1, park, "alpha", DeviceOptions(pv_fallback_limit_pct=100.0))

    async def main() -> FallbackResult | None:
        async with served(inverter) as endpoint, ConnectionPool() as pool:
            device = SunSpecDevice(
                device_config(endpoint.port, "pv"), pool.get("127.0.0.1", endpoint.port), revert_s=REVERT_S
            )
            result = await device.configure_fallback(12.0) if configure else None
            limit = await device.set_pv_limit_kw(40.0)  # with hubctl's 5 s revert timer
            assert limit.confirmed_kw == pytest.approx(40.0)
            park.advance(4)
            assert float(park.record.pv_kw[0]) == pytest.approx(40.0)
            reading = await device.read()
            assert reading.values["power_kw"] == pytest.approx(40.0)
            assert reading.values["limit_pct"] == pytest.approx(40.0)
            park.advance(12)  # no controller re-writes: the limit lapses after 5 s, then the ramp
            reading = await device.read()
            assert reading.values["limit_pct"] == 100.0  # WMaxLimPctEna reads 0 again
            assert reading.point_values["704.WMaxLimPctEnaRvrt"] == (1 if configure else 0)
            return result

    result = arun(main)
    assert float(park.record.pv_kw[0]) == pytest.approx(falls_back_to_kw)
    if result is not None:
        assert result.configured
        assert result.fallback_kw == pytest.approx(12.0)
        assert result.confirmed_kw == pytest.approx(12.0)


def test_what_each_sunspec_device_does_without_a_controller_is_said_from_its_models() -> None:
    """`fallback_summary` (`hubctl read`) from the simulated devices' registers, before and after hubctl
    configured what it can: 704 its reversion values; 123 and 124 nothing (a lapse is no limit, or the
    battery's own mode), with the revert timer hubctl writes."""
    park = make_park()
    units = {
        "802": SunSpecStorage802("alpha-battery", 1, park, "alpha"),
        "124": SunSpecStorage124("beta-battery", 1, park, "beta"),
        "704": SunSpecInverter704("alpha-pv", 1, park, "alpha"),
        "123": SunSpecInverter("beta-pv", 1, park, "beta"),
    }
    roles = {"802": "battery", "124": "battery", "704": "pv", "123": "pv"}

    async def main() -> dict[str, tuple[str | None, str | None, str]]:
        out = {}
        async with ConnectionPool() as pool:
            for name, unit in units.items():
                async with served(unit) as endpoint:
                    device = SunSpecDevice(
                        device_config(endpoint.port, roles[name]),
                        pool.get("127.0.0.1", endpoint.port),
                        revert_s=REVERT_S,
                    )
                    before = device.fallback_summary(await device.read())
                    result = await device.configure_fallback(20.0 if roles[name] == "pv" else None)
                    out[name] = (before, device.fallback_summary(await device.read()), result.detail)
        return out

    said = arun(main)
    assert said["802"][0] == (
        "704 reversion not enabled (hubctl sets 0 kW at start): the setpoint lapses 5 s after hubctl's last"
        " write, then the battery's own"
    )
    assert (
        said["802"][1]
        == "falls back to 0 kW (704 WSetRvrt, enabled); the setpoint lapses 5 s after hubctl's last write"
    )
    assert (said["704"][1] or "").startswith("falls back to 20 % (704 WMaxLimPctRvrt, enabled)")
    none_124 = (
        "none configurable (124 has no reversion power): the setpoint lapses 5 s after hubctl's last write,"
        " then the battery's own mode and power"
    )
    assert said["124"][:2] == (none_124, none_124)
    assert said["124"][2] == (
        "model 124 has no reversion power: once hubctl stops, its setpoint lapses 5 s after the last write"
        " (InOutWRte_RvrtTms, re-written every 1.66667 s) and the battery returns to its own mode and power"
    )
    assert said["123"][1] == (
        "none configurable (123 has no reversion limit): the limit lapses 5 s after hubctl's last write,"
        " then no limit (full export)"
    )
    assert "full export) 5 s after hubctl's last write (WMaxLimPct_RvrtTms" in said["123"][2]
