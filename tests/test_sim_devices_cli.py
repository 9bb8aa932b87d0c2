"""`hubctl simulate` as a subprocess, and the driver plan behind it.

The subprocess test starts a park of four companies (with an MQTT meter when
mosquitto is installed), waits for `ready`, checks that the written config
validates and points at devices that answer, injects a fault over the control
port, and stops it with SIGTERM (exit 0, ports closed). An autouse fixture
fails a test that leaves a socket open or a child process running.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from pymodbus.client import AsyncModbusTcpClient
from support import MOSQUITTO, Children, Mosquitto, leak_fixture, read_until

from hubctl.codec.registers import decode_reads
from hubctl.codec.regmap import role_values
from hubctl.config.scenario import load_scenario
from hubctl.config.site import load_config
from simulators.faults import control_request
from simulators.modbus_sim import load_driver
from simulators.park_sim import SimulatedPark, plan_devices
from simulators.physics import Profiles
from simulators.sunspec_image import BASE_ADDRESS, MARKER
from simulators.sunspec_sim import SunSpecKind

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]
SCENARIO = """\
name: sim-devices-cli
start: "2026-06-22T12:00:00+02:00"
timezone: Europe/Amsterdam
duration_s: 3600
step_s: 1
profiles: profiles.csv
park: {import_limit_kw: 400, export_limit_kw: 200}
companies:
  - id: alpha
    pv: {peak_kw: 100, ramp_pct_per_s: 10}
    battery: {capacity_kwh: 200, max_charge_kw: 50, max_discharge_kw: 50, soc_pct: 50, ramp_pct_per_s: 20}
  - id: beta
    pv: {peak_kw: 60, ramp_pct_per_s: 10}
    battery: {capacity_kwh: 60, max_charge_kw: 30, max_discharge_kw: 30, soc_pct: 60}
  - id: gamma
    battery: {capacity_kwh: 40, max_charge_kw: 20, max_discharge_kw: 20, soc_pct: 70}
  - id: delta
    pv: {peak_kw: 40}
sharing: {key: pro_rata, interval_s: 900}
"""
PROFILES = """\
t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw,gamma.load_kw,gamma.pv_kw,delta.load_kw,delta.pv_kw
0,40,80,30,50,15,0,20,30
3600,60,70,30,40,15,0,25,35
"""


_CHILDREN = Children()
no_leaks = leak_fixture(_CHILDREN)


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    (tmp_path / "profiles.csv").write_text(PROFILES, encoding="utf-8")
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int | None]:
    if MOSQUITTO is None:
        yield None
        return
    mosquitto = Mosquitto(tmp_path)
    mosquitto.start()
    try:
        yield mosquitto.port
    finally:
        mosquitto.stop()


def _start(*args: str) -> subprocess.Popen[bytes]:
    return _CHILDREN.hubctl("simulate", *args)


async def _one_mqtt_message(port: int, topic: str) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = json.loads(bytes(message.payload))
                assert isinstance(payload, dict)
                return payload
    raise AssertionError("unreachable")


async def _check_devices(control_port: int, driver: str, port: int, unit_id: int, inverter_port: int) -> None:
    """A meter behind the gateway answers with its map; the clock runs; a fault over the control port."""
    register_map = load_driver(driver)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        answered = []
        for block in register_map.read_plan():
            rr = await client.read_input_registers(block.address, count=block.count, device_id=unit_id)
            answered.append((block, rr.registers))
        power = role_values(register_map, "grid_meter", decode_reads(answered))["power_kw"]
        assert power == pytest.approx(-40.0, abs=1.0)  # alpha: 40 kW load, 80 kW PV, battery idle

        t0 = (await control_request("127.0.0.1", control_port, {"op": "status"}))["t_s"]
        await asyncio.sleep(0.3)
        status = await control_request("127.0.0.1", control_port, {"op": "status"})
        assert status["t_s"] - t0 >= 3  # 0.3 s x 20
        assert status["endpoints"]["gateway"]["port"] == port

        inject = {"op": "inject", "device": "alpha-grid", "fault": "busy"}
        assert (await control_request("127.0.0.1", control_port, inject))["ok"]
        rr = await client.read_input_registers(52, count=2, device_id=unit_id)
        assert rr.isError()
        assert rr.exception_code == 6
        assert (await control_request("127.0.0.1", control_port, {"op": "clear", "device": "alpha-grid"}))[
            "ok"
        ]
    finally:
        client.close()
    client = AsyncModbusTcpClient("127.0.0.1", port=inverter_port, timeout=2, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        rr = await client.read_holding_registers(BASE_ADDRESS, count=2, device_id=1)
        assert list(rr.registers) == list(MARKER)
    finally:
        client.close()


def _hubctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubctl.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_simulate_serves_writes_a_valid_config_and_stops_on_sigterm(
    scenario_file: Path, tmp_path: Path, broker: int | None
) -> None:
    config_path = tmp_path / "out" / "site.yaml"
    args = ["--scenario", str(scenario_file), "--speed", "20", "--write-config", str(config_path)]
    if broker is not None:
        args += ["--mqtt-url", f"mqtt://127.0.0.1:{broker}"]
    proc = _start(*args)
    lines = read_until(proc, "ready", 20)
    control_port = int(
        next(line for line in lines if line.startswith("control")).split()[1].rsplit(":", 1)[1]
    )

    config = load_config(config_path)  # the same validation as `hubctl check-config`
    devices = {d.id: d for d in config.devices}
    assert {c.id for c in config.companies} == {"alpha", "beta", "gamma", "delta"}
    assert {(d.role.value, d.driver) for d in devices.values()} >= {
        ("grid_meter", "eastron-sdm630"),
        ("grid_meter", "janitza-umg96rm"),
        ("grid_meter", "carlo-gavazzi-em24"),
        ("pv", "sunspec"),
        ("pv", "huawei-sun2000"),
        ("battery", "sunspec"),
        ("battery", "victron-gx-ess"),
    }
    gateway_ports = {
        d.modbus.port for d in devices.values() if d.modbus is not None and d.role.value == "grid_meter"
    }
    assert len(gateway_ports) == 1  # the RS485 meters share one gateway port

    meter = devices["alpha-grid"]
    inverter = devices["alpha-pv"]
    assert meter.modbus is not None
    assert inverter.modbus is not None
    asyncio.run(
        _check_devices(
            control_port, meter.driver, meter.modbus.port, meter.modbus.unit_id, inverter.modbus.port
        )
    )

    if broker is not None:
        mqtt_device = devices["delta-grid"]
        assert mqtt_device.driver == "mqtt"
        assert mqtt_device.mqtt is not None
        payload = asyncio.run(_one_mqtt_message(broker, mqtt_device.mqtt.points["power_kw"].topic))
        assert payload["ENERGY"]["Power"] == pytest.approx(-10_000, abs=1_000)  # delta: 20 kW load, 30 kW PV

    # commissioning: `hubctl read` against the written config reads every device
    read_args = ["read", "--config", str(config_path), "--json"]
    if broker is not None:
        read_args += ["--mqtt-url", f"mqtt://127.0.0.1:{broker}"]
    read = _hubctl(*read_args)
    assert read.returncode == 0, read.stderr
    report = json.loads(read.stdout)["devices"]
    assert set(report) == set(devices)
    for device_id, entry in report.items():
        assert entry["ok"], (device_id, entry)
        assert entry["values"]["power_kw"]["value"] is not None
        assert entry["values"]["power_kw"]["unit"] == "kW"
    assert report["alpha-battery"]["values"]["soc_pct"]["value"] == pytest.approx(50, abs=5)
    for device_id, entry in report.items():  # what each device does once no controller writes
        controllable = devices[device_id].role.value in {"pv", "battery"}
        assert (entry["fallback"] is not None) == controllable, (device_id, entry["fallback"])
    assert "123 has no reversion limit" in report["alpha-pv"]["fallback"]

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert b"stopping" in out
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", meter.modbus.port)) != 0  # the ports are closed

    # the park is gone: a clear error per device, and a non-zero exit
    dead = _hubctl("read", "--config", str(config_path), "--device", "alpha-grid", "--device", "alpha-pv")
    assert dead.returncode != 0
    assert "alpha-grid" in dead.stdout + dead.stderr
    assert "2 of 2 device(s) failed" in dead.stderr


def test_simulate_rejects_a_bad_scenario_with_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "scenario.yaml"
    bad.write_text("name: x\nstart: 2026-06-22T12:00:00\nduration_s: -1\ncompanies: []\n", encoding="utf-8")
    proc = _start("--scenario", str(bad))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 78
    assert b"duration_s" in err


def test_plan_rotates_models_and_skips_registers_too_small(scenario_file: Path) -> None:
    scenario = load_scenario(scenario_file)
    profiles = Profiles.from_csv(scenario.profiles_path, [c.id for c in scenario.config.companies])
    plans = {p.device_id: p for p in plan_devices(scenario, profiles, park_meter=True)}
    assert plans["alpha-pv"].sunspec_kind is SunSpecKind.INVERTER
    assert plans["beta-pv"].driver == "huawei-sun2000"
    assert plans["delta-pv"].sunspec_kind is SunSpecKind.INVERTER_704  # the third PV company
    assert plans["alpha-battery"].sunspec_kind is SunSpecKind.STORAGE_124
    assert plans["beta-battery"].sunspec_kind is SunSpecKind.STORAGE_802
    assert plans["gamma-battery"].driver == "victron-gx-ess"  # 20 kW fits its int16 W register
    assert plans["delta-grid"].sunspec_kind is SunSpecKind.METER
    assert [plans[f"{c}-grid"].unit_id for c in ("alpha", "beta", "gamma")] == [1, 2, 3]
    assert all(plans[f"{c}-grid"].gateway for c in ("alpha", "beta", "gamma"))
    assert plans["park-meter"].role == "park_meter"

    big = scenario_file.read_text(encoding="utf-8").replace(
        "capacity_kwh: 40, max_charge_kw: 20, max_discharge_kw: 20",
        "capacity_kwh: 400, max_charge_kw: 200, max_discharge_kw: 200",
    )
    scenario_file.write_text(big, encoding="utf-8")
    scenario = load_scenario(scenario_file)
    plans = {p.device_id: p for p in plan_devices(scenario, profiles)}
    # 200 kW would saturate the Victron's int16 W; the next candidate that takes a setpoint (not Huawei)
    assert plans["gamma-battery"].sunspec_kind is SunSpecKind.STORAGE_124
    assert all(p.driver != "huawei-sun2000" for p in plans.values() if p.role == "battery")


def test_site_config_of_a_park_in_process_validates(scenario_file: Path) -> None:
    scenario = load_scenario(scenario_file)

    async def main() -> dict[str, Any]:
        async with SimulatedPark(scenario, speed=50, park_meter=True) as sim:
            return sim.site_config_data()

    data = asyncio.run(main())
    assert [d["id"] for d in data["devices"]][-1] == "park-meter"
    assert all(d["modbus"]["port"] > 0 for d in data["devices"])


def test_plan_splits_pv_and_batteries_over_several_devices(scenario_file: Path) -> None:
    scenario = load_scenario(scenario_file)
    profiles = Profiles.from_csv(scenario.profiles_path, [c.id for c in scenario.config.companies])
    single = {p.device_id: p for p in plan_devices(scenario, profiles)}
    plans = {p.device_id: p for p in plan_devices(scenario, profiles, pv_units=2, battery_units=3)}
    assert "alpha-pv" not in plans
    assert {p.device_id for p in plans.values() if p.company == "alpha" and p.role == "pv"} == {
        "alpha-pv1",
        "alpha-pv2",
    }
    assert plans["alpha-pv2"].share == 0.5
    assert plans["alpha-pv1"].range_kw == pytest.approx(single["alpha-pv"].range_kw / 2)
    batteries = [p for p in plans.values() if p.company == "alpha" and p.role == "battery"]
    assert [p.share for p in batteries] == pytest.approx([1 / 3] * 3)
    assert (
        len({p.driver if p.sunspec_kind is None else p.sunspec_kind for p in batteries}) > 1
    )  # models rotate
    with pytest.raises(ValueError, match="at least 1"):
        plan_devices(scenario, profiles, pv_units=0)


def test_a_park_with_split_plants_serves_every_unit_and_sums_to_the_plant(scenario_file: Path) -> None:
    """In process, over Modbus TCP: hubctl's own device layer reads both inverters of a company,
    and the two add up to the company's PV in the physics."""
    from hubctl.config.site import parse_config  # noqa: PLC0415
    from hubctl.devices import build_device  # noqa: PLC0415
    from hubctl.transport.modbus import ConnectionPool  # noqa: PLC0415

    scenario = load_scenario(scenario_file)

    async def main() -> tuple[float, float]:
        async with SimulatedPark(scenario, speed=1, start_s=12 * 3600, pv_units=2) as sim:
            cfg = parse_config(sim.site_config_data(), "<test>")
            configs = {d.id: d for d in cfg.devices}
            async with ConnectionPool() as pool:
                readings = [await build_device(configs[f"alpha-pv{k}"], pool=pool).read() for k in (1, 2)]
            total = sum(r.values["power_kw"] or 0.0 for r in readings)
            return total, float(sim.park.record.pv_kw[0])

    total, physics = asyncio.run(main())
    assert physics > 0
    assert total == pytest.approx(physics, rel=0.02)
