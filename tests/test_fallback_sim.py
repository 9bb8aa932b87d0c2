"""hubctl's `configure_fallback` against the project's simulated SunSpec battery, over Modbus TCP.

The simulated 802 + 704 battery is given an installer's fallback power of +20 kW (discharge, what
`hubctl simulate --battery-fallback-kw 20` sets): without hubctl's fallback a lapsed setpoint
leaves it discharging; with it, the battery falls back to 0 kW.
"""

from __future__ import annotations

import pytest
from test_sim_devices import (  # pytest puts tests/ on sys.path
    arun,
    make_park,
    no_leaks,  # noqa: F401 - autouse fixture: no socket or task left behind
    served,
)

from hubctl.device_config import Device as DeviceConfig
from hubctl.devices import FallbackResult, SunSpecDevice
from hubctl.modbus import ConnectionPool
from simulators.modbus_sim import DeviceOptions
from simulators.sunspec_sim import SunSpecStorage802

INSTALLER_FALLBACK_KW = 20.0
REVERT_S = 5.0


def battery_config(port: int) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": "alpha-battery",
            "company": "alpha",
            "role": "battery",
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
                battery_config(endpoint.port), pool.get("127.0.0.1", endpoint.port), revert_s=REVERT_S
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
