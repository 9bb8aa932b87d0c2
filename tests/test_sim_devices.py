"""Simulated devices over loopback: real pymodbus, pysunspec2 and aiomqtt clients against the simulator.

What is checked: register maps and SunSpec images decode back to the physics'
values in hubctl's signs; setpoint writes move the devices at the scenario's
ramps; revert timers and the communication-loss watchdog fall back; bad writes
are refused with the right exception; every fault gives the client-side effect
it promises; the control channel; the MQTT meter against a real mosquitto;
the driver plan. An autouse fixture fails a test that leaves a socket open or
an asyncio task running (`arun` collects the tasks, the fixture checks both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP
from support import MOSQUITTO, Mosquitto, assert_no_new_sockets, free_port, open_sockets

from hubctl.codec.registers import decode_reads
from hubctl.codec.regmap import RegisterMap, role_values
from simulators.faults import ControlServer, Fault, FaultControl, FaultError, control_request
from simulators.live_park import Park, ParkClock
from simulators.modbus_sim import DeviceOptions, MapUnit, ModbusEndpoint, ModbusUnit, load_driver
from simulators.mqtt_sim import MqttMeter
from simulators.physics import BatterySpec, CompanySpec, Profiles, PvSpec
from simulators.sunspec_image import BASE_ADDRESS, END_MODEL_ID, MARKER
from simulators.sunspec_sim import (
    MODELS,
    SunSpecInverter,
    SunSpecInverter704,
    SunSpecKind,
    SunSpecMeter,
    SunSpecUnit,
)
from simulators.sunspec_storage import SunSpecStorage124, SunSpecStorage802

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
    from pathlib import Path

T = TypeVar("T")

# ------------------------------------------------------------------------------------------ harness

_LEAKED_TASKS: list[str] = []


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves sockets (servers, clients) open or asyncio tasks running."""
    before = open_sockets()
    _LEAKED_TASKS.clear()
    yield
    leaked_tasks = list(_LEAKED_TASKS)
    _LEAKED_TASKS.clear()
    assert not leaked_tasks, f"tasks still running at the end of the test: {leaked_tasks}"
    assert_no_new_sockets(before)


def arun(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a test coroutine; tasks still pending when it returns are recorded as leaks (then cancelled)."""

    async def main() -> T:
        result = await factory()
        for _ in range(5):
            await asyncio.sleep(0)
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        _LEAKED_TASKS.extend(repr(t) for t in pending)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return result

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------ park

ALPHA_BATTERY = BatterySpec(
    capacity_kwh=200.0,
    max_charge_kw=50.0,
    max_discharge_kw=50.0,
    soc_pct=50.0,
    min_soc_pct=5.0,
    max_soc_pct=95.0,
    efficiency=1.0,
    ramp_pct_per_s=20.0,  # 10 kW per 1 s step
)
BETA_BATTERY = BatterySpec(20.0, 20.0, 20.0, 50.0, 5.0, 95.0, 1.0, ramp_pct_per_s=20.0)  # 4 kW per step
COMPANIES = [
    CompanySpec("alpha", PvSpec(peak_kw=100.0, ramp_pct_per_s=10.0), ALPHA_BATTERY),  # PV ramp 10 kW per step
    CompanySpec("beta", PvSpec(peak_kw=60.0, ramp_pct_per_s=10.0), BETA_BATTERY),
]


def make_park(*, start_s: float = 0.0) -> Park:
    """alpha: load 40 kW rising 0.01 kW/s, 80 kW PV available; beta: load 30 kW, 50 kW PV."""
    profiles = Profiles([0.0, 10_000.0], [[40.0, 30.0], [140.0, 30.0]], [[80.0, 50.0], [80.0, 50.0]])
    return Park(COMPANIES, profiles, 1.0, start_s=start_s)


# ------------------------------------------------------------------------------------------ clients


@contextlib.asynccontextmanager
async def modbus(port: int, *, timeout_s: float = 1.0) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    try:
        assert await client.connect(), f"cannot connect to port {port}"
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def served(*units: ModbusUnit) -> AsyncIterator[ModbusEndpoint]:
    endpoint = ModbusEndpoint("test", list(units))
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


async def read_map(
    client: AsyncModbusTcpClient, register_map: RegisterMap, unit_id: int
) -> dict[str, float | None]:
    answered = []
    for block in register_map.read_plan():
        if block.function.value == "input":
            rr = await client.read_input_registers(block.address, count=block.count, device_id=unit_id)
        else:
            rr = await client.read_holding_registers(block.address, count=block.count, device_id=unit_id)
        assert not rr.isError(), f"read {block} answered {rr}"
        answered.append((block, rr.registers))
    return decode_reads(answered)


async def sunspec_read(
    client: AsyncModbusTcpClient, unit: SunSpecUnit, model_id: int, name: str
) -> float | None:
    p = unit.image.point(model_id, name)
    rr = await client.read_holding_registers(p.address, count=p.size, device_id=unit.unit_id)
    assert not rr.isError(), rr
    words = list(rr.registers)
    if p.scale_factor is None or isinstance(p.scale_factor, int):
        return unit.image.decode_value(p, words)
    sf = unit.image.point(model_id, p.scale_factor)
    rs = await client.read_holding_registers(sf.address, count=1, device_id=unit.unit_id)
    exponent = unit.image.decode_raw(sf, list(rs.registers))
    raw = unit.image.decode_raw(p, words)
    assert raw is not None
    assert exponent is not None
    return raw * 10.0**exponent


async def sunspec_write(
    client: AsyncModbusTcpClient, unit: SunSpecUnit, model_id: int, name: str, raw: list[int]
) -> Any:
    p = unit.image.point(model_id, name)
    return await client.write_registers(p.address, raw, device_id=unit.unit_id)


def s16(value: int) -> int:
    return value & 0xFFFF


def u32(value: int) -> list[int]:
    value &= 0xFFFF_FFFF
    return [value >> 16, value & 0xFFFF]


# ------------------------------------------------------------------------------------------ meters from maps

GRID_MAPS = ["eastron-sdm630", "janitza-umg96rm", "carlo-gavazzi-em24", "victron-gx-grid", "huawei-sun2000"]


def test_map_meters_behind_one_gateway_decode_to_the_physics() -> None:
    park = make_park(start_s=100)
    maps = {name: load_driver(name) for name in GRID_MAPS}
    units = [
        MapUnit(f"m{k}", k + 1, park, maps[name], "grid_meter", "alpha", driver=name)
        for k, name in enumerate(GRID_MAPS)
    ]

    async def main() -> None:
        async with served(*units) as gateway, modbus(gateway.port) as client:
            for k, name in enumerate(GRID_MAPS):
                values = await read_map(client, maps[name], k + 1)
                role = role_values(maps[name], "grid_meter", values)
                grid = float(park.record.grid_kw[0])
                assert grid == pytest.approx(-40.0 + 1.0, abs=0.02)  # 40 + 0.01 * 100 - 80
                assert role["power_kw"] == pytest.approx(grid, abs=0.01), name
                counters = park.counters[0]
                if "energy_import_kwh" in role:
                    assert role["energy_import_kwh"] == pytest.approx(counters.import_kwh, abs=0.1)
                    assert role["energy_export_kwh"] == pytest.approx(counters.export_kwh, abs=0.1)
            # a role the device does not serve reads "not implemented": the Huawei's battery and PV
            huawei = await read_map(client, maps["huawei-sun2000"], len(GRID_MAPS))
            assert huawei["battery_power_kw"] is None
            assert huawei["pv_input_power_kw"] is None
            assert huawei["soc_pct"] is None

    arun(main)


def test_gateway_answers_unknown_units_and_functions_with_exceptions() -> None:
    park = make_park()
    unit = MapUnit(
        "m", 3, park, load_driver("eastron-sdm630"), "grid_meter", "alpha", driver="eastron-sdm630"
    )

    async def main() -> None:
        async with served(unit) as gateway, modbus(gateway.port) as client:
            rr = await client.read_input_registers(52, count=2, device_id=7)
            assert rr.isError()
            assert rr.exception_code == 0x0B  # gateway target failed to respond
            rr = await client.read_coils(0, count=8, device_id=3)
            assert rr.isError()
            assert rr.exception_code == 1
            rr = await client.read_input_registers(
                20, count=2, device_id=3
            )  # between two points, beyond the gap
            assert rr.isError()
            assert rr.exception_code == 2

    arun(main)


def test_huawei_habits_one_client_and_quiet_after_connect() -> None:
    park = make_park()
    huawei_map = load_driver("huawei-sun2000")
    unit = MapUnit("hw", 1, park, huawei_map, "pv", "alpha", driver="huawei-sun2000")
    address = huawei_map.point("pv_input_power_kw").address

    async def main() -> None:
        endpoint = ModbusEndpoint("hw", [unit], single_client=True, quiet_after_connect_s=0.3)
        await endpoint.start()
        try:
            async with modbus(endpoint.port, timeout_s=0.2) as first:
                with pytest.raises(ModbusException):  # swallowed: too soon after the connect
                    await first.read_holding_registers(address, count=2, device_id=1)
                await asyncio.sleep(0.3)
                assert not (await first.read_holding_registers(address, count=2, device_id=1)).isError()
                async with modbus(endpoint.port, timeout_s=0.2) as second:
                    await asyncio.sleep(0.35)
                    assert not (await second.read_holding_registers(address, count=2, device_id=1)).isError()
                    with pytest.raises(ModbusException):  # the second client pushed the first one out
                        await first.read_holding_registers(address, count=2, device_id=1)
        finally:
            await endpoint.stop()

    arun(main)


def test_park_meter_from_a_map_reads_the_park_sum() -> None:
    park = make_park(start_s=20)
    register_map = load_driver("janitza-umg96rm")
    unit = MapUnit("park", 1, park, register_map, "park_meter", None, driver="janitza-umg96rm")

    async def main() -> None:
        async with served(unit) as endpoint, modbus(endpoint.port) as client:
            role = role_values(register_map, "park_meter", await read_map(client, register_map, 1))
            assert role["power_kw"] == pytest.approx(park.record.park_grid_kw, abs=0.01)
            assert role["energy_export_kwh"] == pytest.approx(park.park_counters.export_kwh, abs=0.01)

    arun(main)


# ------------------------------------------------------------------------------------------ SunSpec images


def _scan(port: int, unit_id: int) -> dict[int, dict[str, Any]]:
    """pysunspec2's own (blocking) client walks the chain and decodes every model."""
    device = SunSpecModbusClientDeviceTCP(slave_id=unit_id, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        device.scan()
        return {
            mid: {k: p.cvalue for k, p in models[0].points.items()}
            for mid, models in device.models.items()
            if isinstance(mid, int)
        }
    finally:
        device.close()


@pytest.mark.parametrize("kind", list(SunSpecKind))
def test_sunspec_images_scan_with_pysunspec2(kind: SunSpecKind) -> None:
    park = make_park(start_s=10)
    unit: SunSpecUnit
    if kind is SunSpecKind.INVERTER:
        unit = SunSpecInverter("inv", 1, park, "alpha")
    elif kind is SunSpecKind.INVERTER_704:
        unit = SunSpecInverter704("inv", 1, park, "alpha")
    elif kind is SunSpecKind.STORAGE_124:
        unit = SunSpecStorage124("bat", 1, park, "alpha")
    elif kind is SunSpecKind.STORAGE_802:
        unit = SunSpecStorage802("bat", 1, park, "alpha")
    else:
        unit = SunSpecMeter("meter", 1, park, "alpha", range_kw=200.0)

    async def main() -> None:
        async with served(unit) as endpoint:
            models = await asyncio.to_thread(_scan, endpoint.port, 1)
            async with modbus(endpoint.port) as client:
                rr = await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
                assert list(rr.registers) == list(MARKER)
                end = unit.image.end_address - 2
                rr = await client.read_holding_registers(end, count=2, device_id=1)
                assert list(rr.registers) == [END_MODEL_ID, 0]
        assert sorted(models) == sorted(MODELS[kind])
        assert models[1]["Mn"] == "hubctl"
        r = park.record
        if kind is SunSpecKind.INVERTER:
            assert models[103]["W"] == pytest.approx(float(r.pv_kw[0]) * 1000, abs=10)
            assert models[121]["WMax"] == pytest.approx(100_000)
            assert models[123]["WMaxLim_Ena"] == 0
        elif kind is SunSpecKind.INVERTER_704:
            assert models[103]["W"] == pytest.approx(float(r.pv_kw[0]) * 1000, abs=10)
            assert models[121]["WMax"] == pytest.approx(100_000)
            control = models[704]
            assert (control["WMaxLimPctEna"], control["WMaxLimPct"]) == (0, pytest.approx(100.0))
            assert (control["WMaxLimPctEnaRvrt"], control["WMaxLimPctRvrt"]) == (0, pytest.approx(100.0))
            assert (control["WMaxLimPctRvrtTms"], control["WMaxLimPctRvrtRem"]) == (0, 0)
            assert control["WSetEna"] is None  # not a battery: 704's other controls are not implemented
        elif kind is SunSpecKind.METER:
            assert models[203]["W"] == pytest.approx(float(r.grid_kw[0]) * 1000, abs=100)
            assert models[203]["W"] < 0  # + import / - export: alpha exports
            assert models[203]["TotWhExp"] == pytest.approx(park.counters[0].export_kwh * 1000, abs=1)
        elif kind is SunSpecKind.STORAGE_124:
            assert models[124]["ChaState"] == pytest.approx(50.0)
            assert models[124]["StorCtl_Mod"] == 0
        else:
            assert models[802]["SoC"] == pytest.approx(50.0)
            assert models[704]["WSetEna"] == 0

    arun(main)


# ------------------------------------------------------------------------------------------ setpoints


def test_inverter_limit_moves_output_at_the_pv_ramp_and_reverts() -> None:
    park = make_park()
    inverter = SunSpecInverter("inv", 1, park, "alpha")

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            # WMaxLimPct (sf -2) = 50 %, WinTms 0, RvrtTms 5 s, RmpTms 0, Ena 1: one write, as clients do
            rr = await sunspec_write(client, inverter, 123, "WMaxLimPct", [5000, 0, 5, 0, 1])
            assert not rr.isError(), rr
            seen = []
            for _ in range(4):
                park.step()
                seen.append(await sunspec_read(client, inverter, 103, "W"))
            assert seen == pytest.approx([70_000, 60_000, 50_000, 50_000], abs=10)  # 10 kW per step
            assert await sunspec_read(client, inverter, 123, "WMaxLim_Ena") == 1
            park.advance(1)  # the step starting 5 s after the write runs without the limit
            assert await sunspec_read(client, inverter, 123, "WMaxLim_Ena") == 0
            up = [float(park.record.pv_kw[0])]
            for _ in range(3):
                park.step()
                up.append(float(park.record.pv_kw[0]))
            assert up == pytest.approx([60.0, 70.0, 80.0, 80.0])  # back up at the ramp

    arun(main)


def test_inverter_rewrites_keep_the_limit_and_a_fallback_limit_holds_after_a_lapse() -> None:
    park = make_park()
    inverter = SunSpecInverter("inv", 1, park, "alpha", DeviceOptions(pv_fallback_limit_pct=30.0))

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            await sunspec_write(client, inverter, 123, "WMaxLimPct", [5000, 0, 3, 0, 1])
            for _ in range(4):  # re-written every 2 s with a 3 s timer: never lapses
                park.advance(2)
                rr = await sunspec_write(client, inverter, 123, "WMaxLimPct", [5000])
                assert not rr.isError()
                assert await sunspec_read(client, inverter, 123, "WMaxLim_Ena") == 1
            park.advance(10)
            assert await sunspec_read(client, inverter, 123, "WMaxLim_Ena") == 0
            assert float(park.record.pv_kw[0]) == pytest.approx(30.0)  # the fallback, not full output

    arun(main)


def test_inverter_704_follows_wmaxlimpct_at_the_pv_ramp_and_reverts_to_wmaxlimpctrvrt() -> None:
    park = make_park()
    inverter = SunSpecInverter704("inv", 1, park, "alpha", DeviceOptions(pv_fallback_limit_pct=60.0))

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            # reversion first (what hubctl configures at start): WMaxLimPctRvrt 25 % (sf -2), EnaRvrt 1
            rr = await sunspec_write(client, inverter, 704, "WMaxLimPctRvrt", [2500, 1])
            assert not rr.isError(), rr
            assert float(park.record.pv_kw[0]) == pytest.approx(80.0)  # no limit yet: nothing to revert
            # RvrtTms 5 s, then WMaxLimPctEna 1 with WMaxLimPct 50 %: as hubctl writes them
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPctRvrtTms", u32(5))).isError()
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPctEna", [1, 5000])).isError()
            seen = []
            for _ in range(4):
                park.step()
                seen.append(await sunspec_read(client, inverter, 103, "W"))
            assert seen == pytest.approx([70_000, 60_000, 50_000, 50_000], abs=10)  # 10 kW per step
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 1
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctRvrtRem") == 1
            park.advance(1)  # the step starting 5 s after the write runs at the reversion limit
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 0
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctRvrtRem") == 0
            down = [float(park.record.pv_kw[0])]
            for _ in range(3):
                park.step()
                down.append(float(park.record.pv_kw[0]))
            assert down == pytest.approx([40.0, 30.0, 25.0, 25.0])  # to 25 % of 100 kW at the ramp
            assert await sunspec_read(client, inverter, 103, "W") == pytest.approx(25_000, abs=10)
            # a write of the limit alone while it is off only stores it: the reversion holds
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPct", [9000])).isError()
            park.advance(3)
            assert float(park.record.pv_kw[0]) == pytest.approx(25.0)
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 0
            # the reversion limit is read when it applies: EnaRvrt 0 leaves the installer's 60 %
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPctEnaRvrt", [0])).isError()
            park.advance(5)
            assert float(park.record.pv_kw[0]) == pytest.approx(60.0)
            # Ena 1 again: the limit (90 %, stored above) is back; Ena 0 switches it off: no limit
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPctEna", [1])).isError()
            park.advance(3)
            assert float(park.record.pv_kw[0]) == pytest.approx(80.0)  # 90 kW allowed, 80 kW of sun
            assert not (await sunspec_write(client, inverter, 704, "WMaxLimPctEna", [0])).isError()
            park.advance(10)
            assert float(park.record.pv_kw[0]) == pytest.approx(80.0)

    arun(main)


@pytest.mark.parametrize(("installer_pct", "falls_back_to_kw"), [(30.0, 30.0), (None, 80.0)])
def test_inverter_704_without_enarvrt_falls_back_to_the_installers_limit_or_none(
    installer_pct: float | None, falls_back_to_kw: float
) -> None:
    park = make_park()
    inverter = SunSpecInverter704("inv", 1, park, "alpha", DeviceOptions(pv_fallback_limit_pct=installer_pct))

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            # WMaxLimPctEna 1, WMaxLimPct 50 %, WMaxLimPctRvrt 20 % (not enabled: EnaRvrt 0), RvrtTms 3 s
            rr = await sunspec_write(client, inverter, 704, "WMaxLimPctEna", [1, 5000, 2000, 0, *u32(3)])
            assert not rr.isError(), rr
            for _ in range(4):  # re-written every 2 s with a 3 s timer: never lapses
                park.advance(2)
                assert not (await sunspec_write(client, inverter, 704, "WMaxLimPct", [5000])).isError()
                assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 1
            assert float(park.record.pv_kw[0]) == pytest.approx(50.0)
            park.advance(10)
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 0
            assert float(park.record.pv_kw[0]) == pytest.approx(falls_back_to_kw)
            # out of bounds: exception 3, nothing applied; the countdown is read-only: exception 2
            rr = await sunspec_write(client, inverter, 704, "WMaxLimPctEna", [1, 10100])
            assert rr.exception_code == 3
            assert await sunspec_read(client, inverter, 704, "WMaxLimPctEna") == 0
            rr = await sunspec_write(client, inverter, 704, "WMaxLimPctEnaRvrt", [2])
            assert rr.exception_code == 3
            rr = await sunspec_write(client, inverter, 704, "WMaxLimPctRvrtRem", u32(5))
            assert rr.exception_code == 2

    arun(main)


def test_storage_802_follows_wset_at_the_battery_ramp_then_reverts_to_wsetrvrt() -> None:
    park = make_park()
    battery = SunSpecStorage802("bat", 1, park, "alpha")

    async def main() -> None:
        async with served(battery) as endpoint, modbus(endpoint.port) as client:
            # reversion first: +20 kW after 6 s without a write
            assert not (await sunspec_write(client, battery, 704, "WSetRvrt", u32(20_000))).isError()
            rr = await sunspec_write(client, battery, 704, "WSetEnaRvrt", [1, *u32(6)])
            assert not rr.isError(), rr
            # WSetEna 1, WSetMod 1 (watts), WSet -40 kW (charge)
            assert not (await sunspec_write(client, battery, 704, "WSetEna", [1, 1, *u32(-40_000)])).isError()
            seen = []
            for _ in range(5):
                park.step()
                seen.append(await sunspec_read(client, battery, 802, "W"))
            assert seen == pytest.approx([-10_000, -20_000, -30_000, -40_000, -40_000], abs=10)
            assert await sunspec_read(client, battery, 704, "WSetRvrtRem") == 1
            park.advance(1)
            assert await sunspec_read(client, battery, 704, "WSetEna") == 0
            park.advance(6)
            assert float(park.record.battery_kw[0]) == pytest.approx(20.0)

    arun(main)


def test_storage_124_rates_force_a_discharge_and_revert_to_the_fallback_power() -> None:
    park = make_park()
    battery = SunSpecStorage124("bat", 1, park, "alpha", DeviceOptions(battery_fallback_kw=-5.0))

    async def main() -> None:
        async with served(battery) as endpoint, modbus(endpoint.port) as client:
            # OutWRte 60 %, InWRte -60 % (sf -2): at least and at most 30 kW discharge; RvrtTms 4 s
            rr = await sunspec_write(client, battery, 124, "OutWRte", [6000, s16(-6000), 0, 4, 0])
            assert not rr.isError(), rr
            assert not (await sunspec_write(client, battery, 124, "StorCtl_Mod", [3])).isError()
            park.advance(3)
            assert float(park.record.battery_kw[0]) == pytest.approx(30.0)
            assert await sunspec_read(client, battery, 103, "W") == pytest.approx(30_000, abs=10)
            park.advance(2)
            assert await sunspec_read(client, battery, 124, "StorCtl_Mod") == 0
            park.advance(5)
            assert float(park.record.battery_kw[0]) == pytest.approx(-5.0)

    arun(main)


def test_huawei_derating_limits_pv_and_victron_ess_regulates_the_grid() -> None:
    park = make_park()
    huawei_map, victron_map = load_driver("huawei-sun2000"), load_driver("victron-gx-ess")
    huawei = MapUnit("hw", 1, park, huawei_map, "pv", "alpha", driver="huawei-sun2000")
    victron = MapUnit("gx", 100, park, victron_map, "battery", "beta", driver="victron-gx-ess")

    async def main() -> None:
        async with served(huawei, victron) as endpoint, modbus(endpoint.port) as client:
            derating = huawei_map.point("active_power_derating_pct")
            assert not (
                await client.write_registers(derating.address, [250], device_id=1)
            ).isError()  # 25.0 %
            setpoint = victron_map.point("grid_setpoint_kw")
            assert not (await client.write_registers(setpoint.address, u32(-2_000), device_id=100)).isError()
            park.advance(6)
            assert float(park.record.pv_kw[0]) == pytest.approx(25.0)  # 80 -> 25 at 10 kW per step
            pv = role_values(huawei_map, "pv", await read_map(client, huawei_map, 1))
            assert pv["power_kw"] == pytest.approx(25.0)
            # beta: load 30, PV 50; the ESS drives the grid to -2 kW: battery -18 kW (charging)
            assert float(park.record.battery_kw[1]) == pytest.approx(-18.0)
            assert float(park.record.grid_kw[1]) == pytest.approx(-2.0)
            battery = role_values(victron_map, "battery", await read_map(client, victron_map, 100))
            assert battery["power_kw"] == pytest.approx(-18.0)
            assert battery["soc_pct"] == pytest.approx(float(park.record.soc_pct[1]), abs=1)

    arun(main)


def test_huawei_forcible_discharge_runs_for_its_period() -> None:
    park = make_park()
    huawei_map = load_driver("huawei-sun2000")
    unit = MapUnit("hw", 1, park, huawei_map, "battery", "alpha", driver="huawei-sun2000")

    def at(name: str) -> int:
        return huawei_map.point(name).address

    async def main() -> None:
        async with served(unit) as endpoint, modbus(endpoint.port) as client:
            for name, words in (
                ("forcible_setting_mode_code", [0]),  # by duration
                ("forcible_discharge_power_kw", u32(15_000)),
                ("forcible_period_min", [1]),
                ("forcible_command_code", [2]),  # discharge
            ):
                rr = await client.write_registers(at(name), words, device_id=1)
                assert not rr.isError(), (name, rr)
            park.advance(2)
            assert float(park.record.battery_kw[0]) == pytest.approx(15.0)  # 10 kW per step
            battery = role_values(huawei_map, "battery", await read_map(client, huawei_map, 1))
            assert battery["power_kw"] == pytest.approx(15.0)
            park.advance(60)
            values = await read_map(client, huawei_map, 1)
            assert values["forcible_command_code"] == 0
            assert float(park.record.battery_kw[0]) == pytest.approx(0.0)

    arun(main)


def test_bad_writes_are_refused_and_change_nothing() -> None:
    park = make_park()
    inverter = SunSpecInverter("inv", 1, park, "alpha")
    battery = SunSpecStorage802("bat", 2, park, "beta")
    huawei_map = load_driver("huawei-sun2000")
    huawei = MapUnit("hw", 3, park, huawei_map, "pv", "beta", driver="huawei-sun2000")
    meter = MapUnit(
        "m", 4, park, load_driver("eastron-sdm630"), "grid_meter", "alpha", driver="eastron-sdm630"
    )

    async def main() -> None:
        async with served(inverter, battery, huawei, meter) as endpoint, modbus(endpoint.port) as client:
            # out of bounds: exception 3, nothing applied (the Ena in the same request neither)
            rr = await sunspec_write(client, inverter, 123, "WMaxLimPct", [15000, 0, 0, 0, 1])
            assert rr.isError()
            assert rr.exception_code == 3
            assert await sunspec_read(client, inverter, 123, "WMaxLim_Ena") == 0
            rr = await sunspec_write(
                client, battery, 704, "WSet", u32(25_000)
            )  # beta discharges at most 20 kW
            assert rr.exception_code == 3
            rr = await sunspec_write(client, inverter, 123, "WMaxLim_Ena", [2])
            assert rr.exception_code == 3
            rr = await client.write_registers(
                huawei_map.point("active_power_derating_pct").address, [1200], device_id=3
            )
            assert rr.exception_code == 3
            # read-only registers, a cut 32-bit point, a meter without writable points: exception 2
            rr = await sunspec_write(client, inverter, 103, "W", [100])
            assert rr.exception_code == 2
            rr = await sunspec_write(client, battery, 704, "WSet", [0])
            assert rr.exception_code == 2
            rr = await client.write_registers(52, [0, 0], device_id=4)
            assert rr.exception_code == 2  # the meter has input registers only: no holding register 52
            rr = await client.write_registers(huawei_map.point("soc_pct").address, [10], device_id=3)
            assert rr.exception_code == 2
        park.advance(3)
        assert float(park.record.pv_kw[0]) == pytest.approx(80.0)
        assert float(park.record.pv_kw[1]) == pytest.approx(50.0)
        assert float(park.record.battery_kw[1]) == 0.0

    arun(main)


def test_comm_loss_watchdog_falls_back_when_nobody_asks() -> None:
    park = make_park()
    battery = SunSpecStorage802(
        "bat", 1, park, "alpha", DeviceOptions(battery_fallback_kw=0.0, comm_loss_s=5.0)
    )

    async def main() -> None:
        async with served(battery) as endpoint, modbus(endpoint.port) as client:
            await sunspec_write(client, battery, 704, "WSetEna", [1, 1, *u32(30_000)])  # no revert timer
            for _ in range(3):
                park.advance(3)
                await sunspec_read(client, battery, 802, "SoC")  # polled: the controller is alive
            assert float(park.record.battery_kw[0]) == pytest.approx(30.0)
            park.advance(10)  # no request for 10 s
            assert float(park.record.battery_kw[0]) == pytest.approx(0.0)

    arun(main)


@pytest.mark.parametrize(
    ("kind", "falls_back_to_kw"),
    [(SunSpecKind.INVERTER, 30.0), (SunSpecKind.INVERTER_704, 20.0)],  # installer's 30 %; 704's own 20 %
)
def test_inverter_comm_loss_watchdog_falls_back_like_a_lapse(
    kind: SunSpecKind, falls_back_to_kw: float
) -> None:
    park = make_park()
    options = DeviceOptions(pv_fallback_limit_pct=30.0, comm_loss_s=5.0)
    inverter: SunSpecInverter | SunSpecInverter704
    if kind is SunSpecKind.INVERTER:
        inverter = SunSpecInverter("inv", 1, park, "alpha", options)
        limit = (123, "WMaxLimPct", [5000, 0, 0, 0, 1])  # 50 %, no revert timer
    else:
        inverter = SunSpecInverter704("inv", 1, park, "alpha", options)
        limit = (704, "WMaxLimPctEna", [1, 5000, 2000, 1])  # 50 %, reversion 20 % enabled, no timer

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            assert not (await sunspec_write(client, inverter, *limit)).isError()
            for _ in range(3):
                park.advance(3)
                await sunspec_read(client, inverter, 103, "W")  # polled: the controller is alive
            assert float(park.record.pv_kw[0]) == pytest.approx(50.0)
            park.advance(10)  # no request for 10 s
            assert float(park.record.pv_kw[0]) == pytest.approx(falls_back_to_kw)

    arun(main)


# ------------------------------------------------------------------------------------------ faults


def test_fault_refuse_closes_the_port_until_cleared() -> None:
    park = make_park()
    meter = SunSpecMeter("meter", 1, park, "alpha", range_kw=200.0)
    control = FaultControl()
    control.register(meter)

    async def main() -> None:
        async with served(meter) as endpoint:
            port = endpoint.port
            await control.inject("meter", "refuse")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0, reconnect_delay=0)
            assert not await client.connect()
            client.close()
            await control.clear("meter", "refuse")
            async with modbus(port) as client2:
                rr = await client2.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
                assert list(rr.registers) == list(MARKER)

    arun(main)


def test_fault_drop_closes_connections_on_their_next_request() -> None:
    park = make_park()
    meter = SunSpecMeter("meter", 1, park, "alpha", range_kw=200.0)

    async def main() -> None:
        async with served(meter) as endpoint:
            async with modbus(endpoint.port) as client:
                assert not (await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)).isError()
                await meter.inject(Fault.DROP, None)
                with pytest.raises(ModbusException):
                    await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
                assert not client.connected
            async with modbus(endpoint.port) as client:  # connecting works, the first request is dropped
                with pytest.raises(ModbusException):
                    await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
            await meter.clear(Fault.DROP)
            async with modbus(endpoint.port) as client:
                assert not (await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)).isError()

    arun(main)


def test_fault_silent_times_out_one_unit_while_the_gateway_answers_for_the_others() -> None:
    park = make_park()
    drivers = ("eastron-sdm630", "janitza-umg96rm")
    units = [
        MapUnit(f"m{k}", k + 1, park, load_driver(d), "grid_meter", "alpha", driver=d)
        for k, d in enumerate(drivers)
    ]

    async def main() -> None:
        async with served(*units) as gateway:
            await units[0].inject(Fault.SILENT, None)
            async with modbus(gateway.port, timeout_s=0.3) as client:
                started = time.monotonic()
                with pytest.raises(ModbusException):
                    await client.read_input_registers(52, count=2, device_id=1)
                assert time.monotonic() - started >= 0.25
            async with modbus(gateway.port, timeout_s=0.3) as client:
                rr = await client.read_holding_registers(19026, count=2, device_id=2)
                assert not rr.isError()
            await units[0].clear(None)
            async with modbus(gateway.port, timeout_s=0.3) as client:
                assert not (await client.read_input_registers(52, count=2, device_id=1)).isError()

    arun(main)


def test_fault_slow_delays_answers() -> None:
    park = make_park()
    meter = SunSpecMeter("meter", 1, park, "alpha", range_kw=200.0)

    async def main() -> None:
        async with served(meter) as endpoint, modbus(endpoint.port, timeout_s=2.0) as client:
            await meter.inject(Fault.SLOW, 0.4)
            started = time.monotonic()
            rr = await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
            assert not rr.isError()
            assert time.monotonic() - started >= 0.35
            await meter.clear(Fault.SLOW)
            started = time.monotonic()
            await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
            assert time.monotonic() - started < 0.3

    arun(main)


def test_fault_busy_answers_exception_6_to_reads_and_writes() -> None:
    park = make_park()
    inverter = SunSpecInverter("inv", 1, park, "alpha")

    async def main() -> None:
        async with served(inverter) as endpoint, modbus(endpoint.port) as client:
            await inverter.inject(Fault.BUSY, None)
            rr = await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
            assert rr.isError()
            assert rr.exception_code == 6
            rr = await sunspec_write(client, inverter, 123, "WMaxLimPct", [1000])
            assert rr.exception_code == 6
            await inverter.clear(None)
            assert not (await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)).isError()

    arun(main)


def test_fault_frozen_holds_the_readings_while_the_park_moves() -> None:
    park = make_park()
    meter_map = load_driver("eastron-sdm630")
    meter = MapUnit("m", 1, park, meter_map, "grid_meter", "alpha", driver="eastron-sdm630")

    async def power(client: AsyncModbusTcpClient) -> float | None:
        return role_values(meter_map, "grid_meter", await read_map(client, meter_map, 1))["power_kw"]

    async def main() -> None:
        async with served(meter) as endpoint, modbus(endpoint.port) as client:
            before = await power(client)
            await meter.inject(Fault.FROZEN, None)
            park.advance(500)  # the load rises 5 kW
            assert await power(client) == before
            await meter.clear(Fault.FROZEN)
            assert await power(client) == pytest.approx(float(park.record.grid_kw[0]), abs=0.01)
            assert before is not None
            assert float(park.record.grid_kw[0]) - before == pytest.approx(5.0, abs=0.02)

    arun(main)


def test_control_channel_injects_clears_and_reports() -> None:
    park = make_park()
    inverter = SunSpecInverter("inv", 1, park, "alpha")
    mqtt_meter = MqttMeter("mq", park, "beta", "127.0.0.1", free_port())
    control = FaultControl()
    control.register(inverter)
    control.register(mqtt_meter)
    server = ControlServer(control)

    async def main() -> None:
        async with served(inverter) as endpoint:
            await server.start()
            try:
                host, port = server.address
                answer = await control_request(host, port, {"op": "inject", "device": "inv", "fault": "busy"})
                assert answer == {"ok": True}
                async with modbus(endpoint.port) as client:
                    rr = await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
                    assert rr.exception_code == 6
                status = await control_request(host, port, {"op": "status"})
                assert status["faults"] == {"inv": ["busy"], "mq": []}
                answer = await control_request(
                    host, port, {"op": "inject", "device": "mq", "fault": "refuse"}
                )
                assert answer["ok"] is False
                assert "does not support" in answer["error"]
                answer = await control_request(
                    host, port, {"op": "inject", "device": "nope", "fault": "busy"}
                )
                assert "unknown device" in answer["error"]
                answer = await control_request(host, port, {"op": "inject", "device": "inv", "fault": "melt"})
                assert "unknown fault" in answer["error"]
                answer = await control_request(host, port, {"op": "reboot"})
                assert answer["ok"] is False
                assert (await control_request(host, port, {"op": "clear", "device": "inv"}))["ok"]
                assert (await control_request(host, port, {"op": "status"}))["faults"]["inv"] == []
            finally:
                await server.stop()
        with pytest.raises(FaultError):
            await control.inject("inv", Fault.SLOW, -1.0)

    arun(main)


# ------------------------------------------------------------------------------------------ MQTT


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    mosquitto = Mosquitto(tmp_path)
    mosquitto.start()
    try:
        yield mosquitto.port
    finally:
        mosquitto.stop()


def test_mqtt_meter_publishes_the_grid_and_honours_faults(broker: int) -> None:
    park = make_park(start_s=50)
    meter = MqttMeter("beta-grid", park, "beta", "127.0.0.1", broker, publish_s=0.1)

    async def next_payload(
        messages: AsyncIterator[aiomqtt.Message], timeout_s: float
    ) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(timeout_s):
                async for message in messages:
                    if str(message.topic) == meter.topic:
                        payload = json.loads(bytes(message.payload))
                        assert isinstance(payload, dict)
                        return payload
        except TimeoutError:
            return None
        return None

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", broker) as sub:
            await sub.subscribe("hubctl-sim/#")
            task = asyncio.create_task(meter.run())
            try:
                first = await next_payload(sub.messages, 5.0)
                assert first is not None
                assert first["ENERGY"]["Power"] == pytest.approx(
                    float(park.record.grid_kw[1]) * 1000, abs=0.1
                )
                assert first["ENERGY"]["Power"] < 0  # beta exports 20 kW
                assert first["ENERGY"]["Export"] == pytest.approx(park.counters[1].export_kwh, abs=0.001)
                await meter.inject(Fault.FROZEN, None)
                frozen = await next_payload(sub.messages, 2.0)
                park.advance(100)
                assert (await next_payload(sub.messages, 2.0) or {}).get("ENERGY") == (frozen or {}).get(
                    "ENERGY"
                )
                await meter.clear(None)
                await meter.inject(Fault.SILENT, None)
                await asyncio.sleep(0.3)  # let one already on its way arrive
                while await next_payload(sub.messages, 0.05) is not None:
                    pass
                assert await next_payload(sub.messages, 0.5) is None
                await meter.clear(Fault.SILENT)
                assert await next_payload(sub.messages, 2.0) is not None
            finally:
                meter.stop()
                await asyncio.wait_for(task, 5)
        points = meter.device_config()["points"]
        assert points["power_kw"] == {
            "topic": "hubctl-sim/beta-grid/SENSOR",
            "json_path": "ENERGY.Power",
            "scale": 0.001,
            "stale_after_s": 10.0,
        }

    arun(main)


# ------------------------------------------------------------------------------------------ clock


def test_park_clock_runs_at_speed() -> None:
    park = make_park()
    clock = ParkClock(park, speed=200.0)

    async def main() -> None:
        task = asyncio.create_task(clock.run())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    arun(main)
    assert 40 <= park.t_s <= 80  # 0.3 s x 200, give or take the scheduler
    assert math.isclose(park.record.t_s, park.t_s)


# ------------------------------------------------------------------------------------------ units


def test_pv_units_split_the_plant_and_their_limits_add_up() -> None:
    """Two inverters of alpha's 100 kW roof (80 kW available): each reports its part, limits add up."""
    park = make_park()
    a = SunSpecInverter("inv-a", 1, park, "alpha", share=0.5)
    b = SunSpecInverter("inv-b", 1, park, "alpha", share=0.5)
    park.step()
    assert (a.unit.kw, b.unit.kw) == pytest.approx((40.0, 40.0))
    assert (a.peak_kw, b.peak_kw) == (50.0, 50.0)
    a.limit_pct.write(20.0, park.t_s, None)  # 10 kW of its 40
    park.advance(10)  # PV ramps 10 kW per step: settled
    assert float(park.record.pv_kw[0]) == pytest.approx(50.0)  # 10 + 40, not min(80, 10 + 50)
    assert (a.unit.kw, b.unit.kw) == pytest.approx((10.0, 40.0))
    b.limit_pct.write(20.0, park.t_s, None)
    park.advance(10)
    assert float(park.record.pv_kw[0]) == pytest.approx(20.0)
    assert (a.unit.kw, b.unit.kw) == pytest.approx((10.0, 10.0))


def test_battery_units_add_their_setpoints_share_the_soc_and_count_their_energy() -> None:
    park = make_park()
    units = [SunSpecStorage802(f"bat-{k}", 1, park, "alpha", share=0.5) for k in range(2)]
    assert [u.battery.max_charge_kw for u in units] == [25.0, 25.0]
    assert [u.battery.capacity_kwh for u in units] == [100.0, 100.0]
    start = [(u.unit.charge_kwh, u.unit.discharge_kwh) for u in units]
    counter0 = park.counters[0].charge_kwh
    for u in units:
        u.setpoint.write(-20.0, park.t_s, None)
    park.advance(3600)
    assert float(park.record.battery_kw[0]) == pytest.approx(-40.0)
    assert [u.unit.kw for u in units] == pytest.approx([-20.0, -20.0])
    assert units[0].unit.soc_pct == units[1].unit.soc_pct == float(park.record.soc_pct[0])
    charged = [u.unit.charge_kwh - s[0] for u, s in zip(units, start, strict=True)]
    assert sum(charged) == pytest.approx(park.counters[0].charge_kwh - counter0, rel=1e-9)
    assert all(u.unit.discharge_kwh == s[1] for u, s in zip(units, start, strict=True))


def test_units_may_not_claim_more_than_the_plant() -> None:
    park = make_park()
    SunSpecInverter("inv-a", 1, park, "alpha", share=0.6)
    with pytest.raises(ValueError, match="more than the whole PV"):
        SunSpecInverter("inv-b", 1, park, "alpha", share=0.6)
    with pytest.raises(ValueError, match="share must be in"):
        SunSpecStorage802("bat", 1, park, "alpha", share=0.0)


@settings(max_examples=60, deadline=None)
@given(
    limits=st.lists(st.one_of(st.none(), st.floats(0.0, 60.0)), min_size=1, max_size=4),
    steps=st.integers(1, 30),
)
def test_pv_units_never_give_more_than_their_limits_or_the_sun(
    limits: list[float | None], steps: int
) -> None:
    """Property: whatever the units' limits, the plant gives at most the sum of what each may give,
    never more than the sun offers, and the units' reports add up to the plant's output."""
    park = make_park()
    n = len(limits)
    inverters = [SunSpecInverter(f"inv-{k}", 1, park, "alpha", share=1 / n) for k in range(n)]
    for inv, limit in zip(inverters, limits, strict=True):
        if limit is not None:
            inv.limit_pct.write(min(limit / inv.peak_kw * 100, 100.0), park.t_s, None)
    park.advance(steps)
    total = float(park.record.pv_kw[0])
    available = float(park.record.pv_available_kw[0])
    assert total <= available + 1e-9
    assert sum(u.unit.kw for u in inverters) == pytest.approx(total, abs=1e-9)
    if steps >= 10:  # the ramp (10 kW per step) has settled
        may = sum(
            available / n if limit is None else min(limit, inv.peak_kw, available / n)
            for inv, limit in zip(inverters, limits, strict=True)
        )
        assert total == pytest.approx(may, abs=1e-6)
        for inv, limit in zip(inverters, limits, strict=True):
            if limit is not None:
                assert inv.unit.kw <= limit + 1e-6
