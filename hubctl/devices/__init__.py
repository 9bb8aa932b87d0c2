"""Devices: what hubctl reads from and writes to on the park.

What it is: the `Device` interface and the readings it returns (`base.py`), register-map devices
(`mapped.py`) and SunSpec devices (`sunspec.py`) over Modbus TCP, MQTT devices (`mqtt.py`), device
health (`health.py`) and, here, `build_device`: the one factory from a config entry to a driver,
through the driver registry `DRIVERS` ("mqtt", "sunspec"; any other name is a register map in
drivers/, driven by `ModbusMapDevice` or, where the map needs a sequence of writes, by the module
`MAP_DRIVERS` names: `huawei.py` for huawei-sun2000's forcible charge/discharge). The drivers
import `base` and nothing of each other (but `huawei.py`, which extends `mapped`'s map device);
only this module imports them all.

May import: `hubctl.errors`, `hubctl.config`, `hubctl.codec`, `hubctl.transport`, `hubctl.drivers`
and the core's plain types. Never the service, the data layer, the simulators or the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from hubctl.codec.regmap import load_map
from hubctl.devices.base import DEFAULT_REVERT_S, modbus_endpoint
from hubctl.devices.huawei import HuaweiSun2000Device
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.devices.mqtt import MqttDevice
from hubctl.devices.sunspec import SunSpecDevice
from hubctl.drivers import DRIVERS_DIR
from hubctl.errors import DeviceConfigError, RegisterMapError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from hubctl.codec.regmap import RegisterMap
    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.devices.base import Device
    from hubctl.devices.mqtt import MqttHub
    from hubctl.transport.modbus import ConnectionPool

__all__ = ["DEFAULT_DRIVERS", "DRIVERS", "MAP_DRIVERS", "build_device"]

DEFAULT_DRIVERS = DRIVERS_DIR


@dataclass(frozen=True, slots=True)
class _Wiring:
    """What `build_device` was given besides the config entry: connections, maps, settings."""

    pool: ConnectionPool
    mqtt: MqttHub | None
    drivers_dir: Path
    rated_kw: float | None
    revert_s: float
    clock: Callable[[], float]


def _mqtt_device(config: DeviceConfig, wiring: _Wiring) -> Device:
    if wiring.mqtt is None:
        raise DeviceConfigError(f"{config.id}: an MQTT device needs a broker (MqttHub)")
    return MqttDevice(config, wiring.mqtt, clock=wiring.clock)


def _sunspec_device(config: DeviceConfig, wiring: _Wiring) -> Device:
    endpoint = modbus_endpoint(config)
    connection = wiring.pool.get(endpoint.host, endpoint.port)
    return SunSpecDevice(config, connection, revert_s=wiring.revert_s, clock=wiring.clock)


@cache
def _load_map(path: Path) -> RegisterMap:
    return load_map(path)


def _map_device(config: DeviceConfig, wiring: _Wiring) -> Device:
    endpoint = modbus_endpoint(config)
    drivers_dir = wiring.drivers_dir
    path = drivers_dir / f"{config.driver}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in drivers_dir.glob("*.yaml")))
        raise DeviceConfigError(f"{config.id}: no map {config.driver!r} in {drivers_dir} (known: {known})")
    try:
        register_map = _load_map(path)
    except RegisterMapError as exc:
        raise DeviceConfigError(f"{config.id}: {exc}") from None
    connection = wiring.pool.get(endpoint.host, endpoint.port, register_map.transport)
    return MAP_DRIVERS.get(config.driver, ModbusMapDevice)(
        config,
        register_map,
        connection,
        rated_kw=wiring.rated_kw,
        revert_s=wiring.revert_s,
        clock=wiring.clock,
    )


# Maps whose device needs logic a map cannot express (a sequence of writes): their driver module.
MAP_DRIVERS: dict[str, type[ModbusMapDevice]] = {"huawei-sun2000": HuaweiSun2000Device}

# The drivers by the name a config entry gives; any other name is a register map in drivers/.
DRIVERS: dict[str, Callable[[DeviceConfig, _Wiring], Device]] = {
    "mqtt": _mqtt_device,
    "sunspec": _sunspec_device,
}


def build_device(
    config: DeviceConfig,
    *,
    pool: ConnectionPool,
    mqtt: MqttHub | None = None,
    drivers_dir: Path = DEFAULT_DRIVERS,
    rated_kw: float | None = None,
    revert_s: float = DEFAULT_REVERT_S,
    clock: Callable[[], float] = time.monotonic,
) -> Device:
    """The driver for one configured device. Raises DeviceConfigError when it cannot be driven."""
    wiring = _Wiring(pool, mqtt, drivers_dir, rated_kw, revert_s, clock)
    return DRIVERS.get(config.driver, _map_device)(config, wiring)
