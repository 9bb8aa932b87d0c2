# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Every register map in drivers/, read over loopback from a pymodbus server serving its registers.

Two kinds of checks: every point of every map round-trips (values encoded with
hubctl's codec into the server's image come back through plan, transport and
decode), and a table of raw register contents in each VENDOR's own convention
(packed here with struct, not with hubctl's codec) that must come out with
hubctl's values and signs: grid + import, battery + discharge, PV >= 0.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

import pytest
from test_modbus_harness import (  # pytest puts tests/ on sys.path
    DRIVERS,
    RegisterImage,
    ServerThread,
    leak_check,  # noqa: F401 - autouse fixture
    run,
    server_thread,  # noqa: F401 - fixture
    unit_for,
)

from hubctl.codec.registers import DataType, Function
from hubctl.codec.regmap import Access, RegisterMap, load_map, role_point_values, role_values
from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.devices import DeviceRole
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from pathlib import Path

    from hubctl.codec.regmap import Point
    from hubctl.devices.base import Reading

MAP_FILES = sorted(DRIVERS.glob("*.yaml"))
ROLES = (DeviceRole.GRID_METER, DeviceRole.PV, DeviceRole.BATTERY)


def config_for(driver: str, role: DeviceRole, port: int, **modbus: object) -> DeviceConfig:
    company = None if role is DeviceRole.PARK_METER else "bakery"
    return DeviceConfig.model_validate(
        {
            "id": f"{driver}-{role.value}".replace("_", "-"),
            "company": company,
            "role": role.value,
            "driver": driver,
            "modbus": {"host": "127.0.0.1", "port": port, **modbus},
        }
    )


def without_quirks(register_map: RegisterMap) -> RegisterMap:
    """The map with its delays (Huawei: 1 s after connect, 50 ms between requests) off, for speed.

    The round-trip test keeps them: the maps are read once as the device wants.
    """
    quick = register_map.transport.model_copy(
        update={"delay_after_connect_s": 0.0, "delay_between_requests_s": 0.0}
    )
    return register_map.model_copy(update={"transport": quick})


def read_once(register_map: RegisterMap, config: DeviceConfig) -> Reading:
    async def main() -> Reading:
        async with ConnectionPool() as pool:
            connection = pool.get(
                "127.0.0.1", config.modbus.port if config.modbus else 0, register_map.transport
            )
            device = ModbusMapDevice(config, register_map, connection)
            return await device.read()

    return run(main)


def sample_value(point: Point, index: int) -> float:
    """A value the point can hold, distinct per point, never a "not implemented" pattern."""
    if point.access is Access.RW and point.write_min is not None and point.write_max is not None:
        return point.write_min + (point.write_max - point.write_min) * 0.37
    if point.type is DataType.FLOAT32:
        return (index + 1) * 1.25 * point.sign
    raw = 1000 + 7 * index
    return raw * point.scale * point.sign


def test_every_map_offers_a_role() -> None:
    assert MAP_FILES
    for path in MAP_FILES:
        assert load_map(path).roles.offered(), f"{path.name} has no roles block"


@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.name)
def test_every_point_round_trips_over_modbus(servers: ServerThread, path: Path) -> None:
    register_map = load_map(path)
    image = RegisterImage()
    expected = {}
    for index, point in enumerate(register_map.points):
        value = sample_value(point, index)
        image.put(point, value)
        expected[point.name] = value
    port = servers.serve([unit_for(image, register_map.default_unit_id)])
    role = next(r for r in ROLES if register_map.roles.keys(r.value) is not None)
    reading = read_once(register_map, config_for(path.stem, role, port))
    for point in register_map.points:
        got = reading.points[point.name]
        assert got.unit == point.unit
        assert got.value is not None
        assert math.isclose(got.value, expected[point.name], rel_tol=1e-6, abs_tol=abs(point.scale) / 2), (
            point.name
        )
    assert reading.values == role_values(
        register_map, role.value, {k: q.value for k, q in reading.points.items()}
    )


@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.name)
def test_role_values_come_back_with_hubctl_signs(servers: ServerThread, path: Path) -> None:
    """Physical values put in through the role (as a simulator does) read back through the role."""
    register_map = load_map(path)
    semantic = {
        "grid_meter": {"power_kw": -12.5, "energy_import_kwh": 1234.5, "energy_export_kwh": 678.9},
        "pv": {"power_kw": 9.3},
        "battery": {"power_kw": -4.2, "soc_pct": 61.0},
    }
    for role in ROLES:
        if register_map.roles.keys(role.value) is None:
            continue
        image = RegisterImage()
        for index, point in enumerate(register_map.points):
            image.put(point, sample_value(point, index))
        for name, value in role_point_values(register_map, role.value, semantic[role.value]).items():
            image.put(register_map.point(name), value)
        port = servers.serve([unit_for(image, register_map.default_unit_id)])
        reading = read_once(without_quirks(register_map), config_for(path.stem, role, port))
        for key, value in semantic[role.value].items():
            if key in reading.values:
                got = reading.values[key]
                assert got is not None
                assert math.isclose(got, value, abs_tol=0.01), (role, key, got)


def words_of(fmt: str, value: float, *, low_word_first: bool = False) -> list[int]:
    data = struct.pack(">" + fmt, value)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if low_word_first else words


# (map, function, address, words in the vendor's own convention, point, hubctl value)
VENDOR_CASES = [
    # Eastron: float32 W, "Total system power" negative on export.
    ("eastron-sdm630", Function.INPUT, 52, words_of("f", -2500.0), "active_power_kw", -2.5),
    ("eastron-sdm630", Function.INPUT, 72, words_of("f", 1520.25), "energy_import_kwh", 1520.25),
    # Janitza: float32 W from 19026, consumption positive.
    ("janitza-umg96rm", Function.HOLDING, 19026, words_of("f", 1500.0), "active_power_kw", 1.5),
    # Carlo Gavazzi: INT32 low word first, Watt*10; export negative.
    (
        "carlo-gavazzi-em24",
        Function.INPUT,
        0x28,
        words_of("i", -12345, low_word_first=True),
        "active_power_kw",
        -1.2345,
    ),
    (
        "carlo-gavazzi-em24",
        Function.INPUT,
        0x34,
        words_of("i", 98765, low_word_first=True),
        "energy_import_kwh",
        9876.5,
    ),
    # Victron system: grid L1 int16 W, 65102 = -434 W on export.
    ("victron-gx-grid", Function.HOLDING, 820, [65102], "grid_l1_power_kw", -0.434),
    # Victron battery: + charging in Victron's convention -> hubctl - (charge).
    ("victron-gx-ess", Function.HOLDING, 842, words_of("h", 1000), "battery_power_kw", -1.0),
    ("victron-gx-ess", Function.HOLDING, 843, [87], "soc_pct", 87.0),
    # Huawei: meter active power > 0 = feed-in -> hubctl export (-); battery > 0 = charging -> hubctl -.
    ("huawei-sun2000", Function.HOLDING, 37113, words_of("i", 5000), "grid_power_kw", -5.0),
    ("huawei-sun2000", Function.HOLDING, 37765, words_of("i", 2000), "battery_power_kw", -2.0),
    ("huawei-sun2000", Function.HOLDING, 37760, [755], "soc_pct", 75.5),
    ("huawei-sun2000", Function.HOLDING, 32064, words_of("i", 3000), "pv_input_power_kw", 3.0),
    ("huawei-sun2000", Function.HOLDING, 32080, words_of("i", 0x7FFFFFFF), "inverter_active_power_kw", None),
]


@pytest.mark.parametrize(
    ("driver", "function", "address", "words", "point", "value"),
    VENDOR_CASES,
    ids=[f"{case[0]}:{case[4]}" for case in VENDOR_CASES],
)
def test_vendor_raw_registers_decode_to_hubctl_values_and_signs(
    servers: ServerThread,
    driver: str,
    function: Function,
    address: int,
    words: list[int],
    point: str,
    value: float | None,
) -> None:
    register_map = load_map(DRIVERS / f"{driver}.yaml")
    image = RegisterImage()
    for p in register_map.points:  # every other point: an implemented value, so the reads succeed
        image.put(p, sample_value(p, 0))
    assert register_map.point(point).function is function
    image.set_words(function, address, words)
    port = servers.serve([unit_for(image, register_map.default_unit_id)])
    role = next(r for r in ROLES if register_map.roles.keys(r.value) is not None)
    got = read_once(without_quirks(register_map), config_for(driver, role, port)).points[point].value
    if value is None:
        assert got is None
    else:
        assert got is not None
        assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9)


def test_victron_grid_sums_phases_and_skips_missing_ones(servers: ServerThread) -> None:
    register_map = load_map(DRIVERS / "victron-gx-grid.yaml")
    image = RegisterImage()
    for p in register_map.points:
        image.put(p, 0.0)
    image.set_words(Function.HOLDING, 820, words_of("h", 1200))
    image.set_words(Function.HOLDING, 821, words_of("h", -300))
    image.set_words(Function.HOLDING, 822, [0x8000])  # L3 not implemented (single/two-phase system)
    port = servers.serve([unit_for(image, 100)])
    reading = read_once(register_map, config_for("victron-gx-grid", DeviceRole.GRID_METER, port))
    assert reading.points["grid_l3_power_kw"].value is None
    assert reading.power_kw == pytest.approx(0.9)


def test_site_config_unit_id_overrides_the_maps(servers: ServerThread) -> None:
    register_map = load_map(DRIVERS / "eastron-sdm630.yaml")
    image = RegisterImage()
    for p in register_map.points:
        image.put(p, 1.0)
    port = servers.serve([unit_for(image, 7)])
    config = config_for("eastron-sdm630", DeviceRole.PARK_METER, port, unit_id=7)
    reading = read_once(register_map, config)
    assert reading.power_kw == pytest.approx(1.0)
    assert reading.role is DeviceRole.PARK_METER
