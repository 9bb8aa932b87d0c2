"""Register maps with a `fallback:` block, against the Modbus simulator over real TCP (#12 item 3).

A map (`hubctl.codec.regmap`, "Fallbacks") may name a fallback value register, its enable switch
and a communication watchdog. hubctl (`ModbusMapDevice.configure_fallback`, which the service's
`FallbackKeeper` calls) writes them; the simulated device (`simulators.modbus_sim.MapUnit`) starts
with the installer's fallback (`DeviceOptions`) in its value register and honours the registers as
a device would. The controller "dies" here by no longer talking to the device: the park runs on.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from test_sim_devices import (  # pytest puts tests/ on sys.path
    arun,
    make_park,
    no_leaks,  # noqa: F401 - autouse fixture: no socket or task left behind
    served,
)

from hubctl.codec.regmap import parse_map
from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.site import parse_config
from hubctl.devices import build_device
from hubctl.devices.health import Health
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.errors import RegisterMapError
from hubctl.service.clock import Clock
from hubctl.service.fallbacks import FallbackKeeper
from hubctl.transport.modbus import ConnectionPool
from simulators.modbus_sim import DeviceOptions, MapUnit

if TYPE_CHECKING:
    from pathlib import Path

    from hubctl.codec.regmap import RegisterMap
    from hubctl.devices.base import FallbackResult

INSTALLER_FALLBACK_KW = 20.0  # discharging: what an installer might have left
REVERT_S = 5.0


def acme_map(*, fallback: dict[str, Any] | None, battery_revert: bool = True) -> dict[str, Any]:
    """A battery + PV inverter with a revert timer, a fallback value, its switch and a watchdog."""
    setpoint: dict[str, Any] = {
        "name": "battery_setpoint_kw",
        "unit": "kW",
        "function": "holding",
        "address": 10,
        "type": "int16",
        "scale": 0.1,
        "access": "rw",
        "write_min": -100.0,
        "write_max": 100.0,
    }
    if battery_revert:
        setpoint["revert_point"] = "setpoint_timeout_s"
    data: dict[str, Any] = {
        "device": {"vendor": "Acme", "model": "Test", "document": {"title": "test", "version": "1"}},
        "default_unit_id": 1,
        "points": [
            {
                "name": "battery_power_kw",
                "unit": "kW",
                "function": "holding",
                "address": 0,
                "type": "int16",
                "scale": 0.1,
            },
            {"name": "soc_pct", "unit": "%", "function": "holding", "address": 1, "type": "uint16"},
            {
                "name": "pv_power_kw",
                "unit": "kW",
                "function": "holding",
                "address": 2,
                "type": "int16",
                "scale": 0.1,
            },
            setpoint,
            {
                "name": "setpoint_timeout_s",
                "unit": "s",
                "function": "holding",
                "address": 11,
                "type": "uint16",
                "access": "rw",
                "write_min": 0,
                "write_max": 3600,
            },
            {
                "name": "battery_fallback_kw",
                "unit": "kW",
                "function": "holding",
                "address": 12,
                "type": "int16",
                "scale": 0.1,
                "access": "rw",
                "write_min": -100.0,
                "write_max": 100.0,
            },
            {
                "name": "fallback_enable_code",
                "unit": "",
                "function": "holding",
                "address": 13,
                "type": "uint16",
                "access": "rw",
                "write_min": 0,
                "write_max": 1,
            },
            {
                "name": "comm_timeout_s",
                "unit": "s",
                "function": "holding",
                "address": 14,
                "type": "uint16",
                "access": "rw",
                "write_min": 0,
                "write_max": 3600,
            },
            {
                "name": "pv_limit_pct",
                "unit": "%",
                "function": "holding",
                "address": 20,
                "type": "uint16",
                "scale": 0.1,
                "access": "rw",
                "write_min": 0.0,
                "write_max": 100.0,
                "revert_point": "pv_limit_timeout_s",
            },
            {
                "name": "pv_limit_timeout_s",
                "unit": "s",
                "function": "holding",
                "address": 21,
                "type": "uint16",
                "access": "rw",
                "write_min": 0,
                "write_max": 3600,
            },
            {
                "name": "pv_fallback_pct",
                "unit": "%",
                "function": "holding",
                "address": 22,
                "type": "uint16",
                "scale": 0.1,
                "access": "rw",
                "write_min": 0.0,
                "write_max": 100.0,
            },
        ],
        "roles": {
            "battery": {
                "power_kw": "battery_power_kw",
                "soc_pct": "soc_pct",
                "setpoint_kw": "battery_setpoint_kw",
            },
            "pv": {"power_kw": "pv_power_kw", "limit_pct": "pv_limit_pct"},
        },
    }
    if fallback is not None:
        data["fallback"] = fallback
    return data


FULL = {
    "battery": {
        "value": "battery_fallback_kw",
        "enable": "fallback_enable_code",
        "watchdog": "comm_timeout_s",
    },
    "pv": {"value": "pv_fallback_pct"},
}


def config(port: int, role: str) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": f"alpha-{role}",
            "company": "alpha",
            "role": role,
            "driver": "acme",
            "modbus": {"host": "127.0.0.1", "port": port, "timeout_s": 2},
        }
    )


def run_battery(
    register_map: RegisterMap, *, configure: bool, silent_s: int
) -> tuple[float, FallbackResult | None, str | None]:
    """Set -30 kW (charging), then no controller for `silent_s`: the battery's kW, the result, the summary."""
    park = make_park()
    options = DeviceOptions(battery_fallback_kw=INSTALLER_FALLBACK_KW)
    unit = MapUnit("alpha-battery", 1, park, register_map, "battery", "alpha", driver="acme", options=options)

    async def main() -> tuple[FallbackResult | None, str | None]:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device = ModbusMapDevice(
                config(endpoint.port, "battery"),
                register_map,
                pool.get("127.0.0.1", endpoint.port),
                revert_s=REVERT_S,
            )
            result = await device.configure_fallback() if configure else None
            await device.set_battery_kw(-30.0)
            park.advance(4)  # the battery ramps 10 kW per step
            assert float(park.record.battery_kw[0]) == pytest.approx(-30.0)
            summary = device.fallback_summary(await device.read())
            park.advance(silent_s)  # the controller is gone: no write, no request
            return result, summary

    result, summary = arun(main)
    return float(park.record.battery_kw[0]), result, summary


def test_a_lapsed_battery_setpoint_falls_back_to_hubctls_0_kw_not_the_installers_20() -> None:
    register_map = parse_map(acme_map(fallback=FULL))
    kw, result, summary = run_battery(register_map, configure=True, silent_s=12)
    assert kw == pytest.approx(0.0)
    assert result is not None
    assert result.configured
    assert result.confirmed_kw == 0.0
    assert "battery falls back to 0 kW (battery_fallback_kw, fallback_enable_code 1)" in result.detail
    assert "watchdog comm_timeout_s 5 s" in result.detail
    assert summary is not None
    assert summary.startswith(
        "falls back to 0 kW (battery_fallback_kw, enabled); watchdog 5 s (comm_timeout_s)"
    )


def test_without_hubctls_fallback_the_lapsed_setpoint_gives_the_installers_power() -> None:
    register_map = parse_map(acme_map(fallback=FULL))
    kw, _, summary = run_battery(register_map, configure=False, silent_s=12)
    assert kw == pytest.approx(INSTALLER_FALLBACK_KW)
    assert summary is not None
    assert summary.startswith("falls back to 20 kW (battery_fallback_kw, not enabled); watchdog 0 s")


def test_the_watchdog_alone_ends_a_setpoint_that_never_lapses() -> None:
    """A persistent setpoint (no revert timer): only the watchdog hubctl set brings the battery to 0 kW."""
    register_map = parse_map(acme_map(fallback=FULL, battery_revert=False))
    kw, result, _ = run_battery(register_map, configure=True, silent_s=12)
    assert result is not None
    assert "watchdog comm_timeout_s 5 s" in result.detail
    assert kw == pytest.approx(0.0)


def test_a_map_without_fallback_keeps_the_last_setpoint_and_says_so() -> None:
    register_map = parse_map(acme_map(fallback=None, battery_revert=False))
    kw, _, summary = run_battery(register_map, configure=False, silent_s=12)
    assert kw == pytest.approx(-30.0)  # the dead controller's last setpoint, for good
    assert summary == "none: keeps the last setpoint"

    park = make_park()
    unit = MapUnit("alpha-battery", 1, park, register_map, "battery", "alpha", driver="acme")

    async def main() -> FallbackResult:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device = ModbusMapDevice(
                config(endpoint.port, "battery"), register_map, pool.get("127.0.0.1", endpoint.port)
            )
            return await device.configure_fallback()

    result = arun(main)
    assert not result.configured
    assert result.detail == "none: keeps the last setpoint (map 'acme' has no fallback block)"


def test_a_lapsed_pv_limit_falls_back_to_hubctls_limit_not_full_output() -> None:
    register_map = parse_map(acme_map(fallback=FULL))
    park = make_park()  # alpha: 100 kW peak, 80 kW of sun
    unit = MapUnit("alpha-pv", 1, park, register_map, "pv", "alpha", driver="acme")

    async def main() -> FallbackResult:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            device = ModbusMapDevice(
                config(endpoint.port, "pv"),
                register_map,
                pool.get("127.0.0.1", endpoint.port),
                rated_kw=100.0,
                revert_s=REVERT_S,
            )
            result = await device.configure_fallback(12.34)
            await device.set_pv_limit_kw(40.0)
            park.advance(4)
            assert float(park.record.pv_kw[0]) == pytest.approx(40.0)
            park.advance(12)
            return result

    result = arun(main)
    assert result.configured
    assert result.fallback_kw == pytest.approx(12.3)  # a register step (0.1 %) down, never up
    assert float(park.record.pv_kw[0]) == pytest.approx(12.3)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda m: m["fallback"]["battery"].update(value="soc_pct"),
            "fallback.battery.value: soc_pct must be an rw",
        ),
        (lambda m: m["fallback"]["battery"].update(value="comm_timeout_s"), "is in 's', expected 'kW'"),
        (lambda m: m["fallback"]["battery"].update(watchdog="battery_fallback_kw"), "not a time"),
        (lambda m: m["fallback"]["battery"].update(enable="comm_timeout_s"), "must be a *_code point"),
        (
            lambda m: m["fallback"]["battery"].update(value=None, note="x"),
            "enable switches a fallback value on",
        ),
        (lambda m: m["fallback"].update(battery={"watchdog": "comm_timeout_s"}), "needs a note"),
        (lambda m: m["fallback"]["pv"].update(value="nothing_kw"), "'nothing_kw' is not a point"),
        (lambda m: m["roles"].pop("pv"), "fallback.pv: the map offers no pv role"),
    ],
)
def test_a_wrong_fallback_block_is_refused_naming_the_field(change: Any, problem: str) -> None:
    data = acme_map(fallback=copy.deepcopy(FULL))
    change(data)
    with pytest.raises(RegisterMapError) as caught:
        parse_map(data, "acme.yaml")
    assert problem in str(caught.value)


def test_the_services_fallback_keeper_configures_a_map_device_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`hubctl run`'s FallbackKeeper, the map device from `build_device` (drivers dir with the map)."""
    (tmp_path / "acme.yaml").write_text(yaml.safe_dump(acme_map(fallback=FULL)), encoding="utf-8")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "acme.yaml").write_text(
        yaml.safe_dump(acme_map(fallback=None, battery_revert=False)), encoding="utf-8"
    )
    park = make_park()
    options = DeviceOptions(battery_fallback_kw=INSTALLER_FALLBACK_KW)
    unit = MapUnit(
        "alpha-battery",
        1,
        park,
        parse_map(acme_map(fallback=FULL)),
        "battery",
        "alpha",
        driver="acme",
        options=options,
    )
    caplog.set_level(logging.INFO)

    async def main() -> list[str]:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            site = parse_config(
                {
                    "park": {"import_limit_kw": 900, "export_limit_kw": 500},
                    "companies": [
                        {
                            "id": "alpha",
                            "battery": {"capacity_kwh": 200, "max_charge_kw": 50, "max_discharge_kw": 50},
                        }
                    ],
                    "devices": [
                        {
                            "id": "alpha-battery",
                            "company": "alpha",
                            "role": "battery",
                            "driver": "acme",
                            "modbus": {"host": "127.0.0.1", "port": endpoint.port},
                        },
                    ],
                }
            )
            summaries = []
            for drivers_dir in (tmp_path, plain):
                devices = {
                    d.id: build_device(d, pool=pool, drivers_dir=drivers_dir, revert_s=REVERT_S)
                    for d in site.devices
                }
                health = Health(list(devices), fail_after=1, recover_after=1)
                health.ok("alpha-battery", 0.0)
                keeper = FallbackKeeper(site, devices, health, Clock())
                await keeper.step()
                await keeper.step()  # held: not written again
                assert keeper.pending() == []
                summaries.append(
                    devices["alpha-battery"].fallback_summary(await devices["alpha-battery"].read()) or ""
                )
            return summaries

    summaries = arun(main)
    assert summaries[0].startswith("falls back to 0 kW (battery_fallback_kw, enabled); watchdog 5 s")
    assert summaries[1] == "none: keeps the last setpoint"
    lines = [r.getMessage() for r in caplog.records if r.name in {"hubctl.service", "hubctl.devices"}]
    assert (
        lines.count(
            "alpha-battery: battery falls back to 0 kW (battery_fallback_kw, fallback_enable_code 1);"
            " watchdog comm_timeout_s 5 s (no request that long: the fallback)"
        )
        == 1
    )
    assert (
        lines.count(
            "alpha-battery: no fallback configured: keeps the last setpoint"
            " (map 'acme' has no fallback block)"
        )
        == 1
    )
    assert unit.stored("battery_fallback_kw") == 0.0
    assert unit.stored("comm_timeout_s") == REVERT_S
