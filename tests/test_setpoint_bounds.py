"""A refused setpoint never drops a device: the setpoint writer against the simulated devices (Modbus TCP).

The park's alpha battery (the simulator's SunSpec 802 + 704 storage) takes -50..50 kW (its 802
WChaRteMax / WDisChaRteMax); the site config promises 60 kW. Beta's battery is a Victron GX behind
the `victron-gx-ess` map, which has no battery setpoint point at all (ESS regulates the grid).
Real `SunSpecDevice` / `ModbusMapDevice` drivers, the real `SetpointWriter`, `ReadingStore` and
`Health`; nothing is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
import yaml
from test_sim_devices import (  # pytest puts tests/ on sys.path
    arun,
    make_park,
    no_leaks,  # noqa: F401 - autouse fixture: no socket or task left behind
    served,
)

from hubctl.cli.main import main as cli_main
from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.site import parse_config
from hubctl.core.limits import NO_LIMITS
from hubctl.core.types import Decision
from hubctl.devices import build_device
from hubctl.devices.health import Health
from hubctl.devices.mqtt import MqttHub
from hubctl.errors import SetpointOutOfBoundsError, SetpointUnsupportedError
from hubctl.service.clock import Clock
from hubctl.service.store import Layout, ReadingStore
from hubctl.service.writer import SetpointWriter
from hubctl.transport.modbus import ConnectionPool
from simulators.modbus_sim import MapUnit, load_driver
from simulators.sunspec_sim import SunSpecInverter
from simulators.sunspec_storage import SunSpecStorage802

if TYPE_CHECKING:
    from pathlib import Path

    from support import Mosquitto

    from hubctl.config.site import SiteConfig
    from hubctl.devices.base import Device

ALPHA_UNIT, BETA_UNIT = 1, 100


def site(port: int) -> SiteConfig:
    battery = {"capacity_kwh": 200, "max_charge_kw": 60, "max_discharge_kw": 60}  # the device: 50 kW
    data: dict[str, Any] = {
        "park": {"import_limit_kw": 500, "export_limit_kw": 200},
        "companies": [
            {"id": "alpha", "battery": battery},
            {"id": "beta", "battery": {"capacity_kwh": 20, "max_charge_kw": 20, "max_discharge_kw": 20}},
        ],
        "devices": [
            {
                "id": "alpha-battery",
                "company": "alpha",
                "role": "battery",
                "driver": "sunspec",
                "modbus": {"host": "127.0.0.1", "port": port, "unit_id": ALPHA_UNIT},
            },
            {
                "id": "beta-battery",
                "company": "beta",
                "role": "battery",
                "driver": "victron-gx-ess",
                "modbus": {"host": "127.0.0.1", "port": port, "unit_id": BETA_UNIT},
            },
        ],
    }
    return parse_config(data)


def battery_decision(alpha_kw: float, beta_kw: float = 0.0) -> Decision:
    return Decision((alpha_kw, beta_kw), (None, None), "normal", NO_LIMITS, {}, 0.0, 0.0, "test")


class Rig:
    """The writer and the store as `hubctl run` wires them, on the real drivers."""

    def __init__(self, cfg: SiteConfig, pool: ConnectionPool) -> None:
        self.devices: dict[str, Device] = {d.id: build_device(d, pool=pool) for d in cfg.devices}
        self.health = Health(list(self.devices), fail_after=3, recover_after=2)
        self.store = ReadingStore(Layout.from_config(cfg), stale_after_s=30.0)
        self.writer = SetpointWriter(cfg, self.devices, self.health, Clock(), self.store)

    async def poll(self) -> None:
        for device in self.devices.values():
            reading = await device.read()
            self.store.put(reading)
            self.health.ok(device.id, reading.read_at_s)

    async def setpoint_kw(self, device_id: str) -> float | None:
        return (await self.devices[device_id].read()).values["setpoint_kw"]


def service_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "hubctl.service" and r.levelno >= logging.WARNING
    ]


def test_a_setpoint_beyond_the_devices_bounds_is_clamped_and_the_battery_stays_controlled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    park = make_park()
    alpha = SunSpecStorage802("alpha-battery", ALPHA_UNIT, park, "alpha")
    beta = MapUnit("beta-battery", BETA_UNIT, park, load_driver("victron-gx-ess"), "battery", "beta")
    written: list[float | None] = []
    moved: list[float] = []

    async def main() -> None:
        async with served(alpha, beta) as endpoint, ConnectionPool() as pool:
            rig = Rig(site(endpoint.port), pool)
            await rig.poll()
            for asked in (55.0, 20.0, 30.0):
                await rig.writer.apply(battery_decision(asked))
                written.append(await rig.setpoint_kw("alpha-battery"))
                park.advance(8)  # 10 kW per step
                moved.append(float(park.record.battery_kw[0]))
            await rig.poll()
            assert rig.devices["alpha-battery"].setpoint_bounds_kw("battery") == (-50.0, 50.0)
            # the driver itself still refuses what is outside, with the bounds named
            with pytest.raises(SetpointOutOfBoundsError, match=r"outside -50\.\.50 kW") as refused:
                await rig.devices["alpha-battery"].set_battery_kw(55.0)
            assert (refused.value.low_kw, refused.value.high_kw) == (-50.0, 50.0)
            assert "alpha-battery" not in rig.writer.not_dispatched()
            assert "alpha-battery" not in rig.store.batteries_without_setpoint
            assert rig.store.snapshot(0.0, Clock().mono()).companies[0].soc_pct is not None
            await rig.writer.drain(2.0)

    arun(main)
    assert written == [50.0, 20.0, 30.0]  # 55 asked: 50 written; then as asked
    assert moved == [pytest.approx(50.0), pytest.approx(20.0), pytest.approx(30.0)]
    promised = [m for m in service_warnings(caplog) if m.startswith("alpha-battery: the site config")]
    assert len(promised) == 2, promised  # at start, once per side, never again
    (discharge,) = [m for m in promised if "max_discharge_kw" in m]
    (charge,) = [m for m in promised if "max_charge_kw" in m]
    assert "60 kW (companies.alpha.battery.max_discharge_kw" in discharge
    assert "beyond the device's own bound of 50 kW" in discharge
    assert "-60 kW (companies.alpha.battery.max_charge_kw" in charge
    assert "bound of -50 kW" in charge
    clamped = [r.getMessage() for r in caplog.records if "55 kW asked, 50 kW written" in r.getMessage()]
    assert len(clamped) == 1


class Reports:
    """What the writer reports (`WriteReports`), as it reports it."""

    def __init__(self) -> None:
        self.unsupported: list[tuple[str, str]] = []
        self.written: list[tuple[str, str, float]] = []

    def setpoint_unsupported(self, device_id: str, kind: str) -> None:
        self.unsupported.append((device_id, kind))

    def setpoint_written(self, device_id: str, kind: str, sent_at_s: float) -> None:
        self.written.append((device_id, kind, sent_at_s))


def test_the_writer_reports_when_each_battery_setpoint_was_sent() -> None:
    """The store flags a battery reading taken before the last write (`battery_behind`): the writer
    reports the moment each setpoint that a battery took was sent, and only those (beta's Victron
    map in this site has no setpoint point)."""
    park = make_park()
    alpha = SunSpecStorage802("alpha-battery", ALPHA_UNIT, park, "alpha")
    beta = MapUnit("beta-battery", BETA_UNIT, park, load_driver("victron-gx-ess"), "battery", "beta")
    reports = Reports()

    async def main() -> None:
        async with served(alpha, beta) as endpoint, ConnectionPool() as pool:
            rig = Rig(site(endpoint.port), pool)
            rig.writer.reports = reports
            await rig.poll()
            clock = Clock()
            before = clock.mono()
            await rig.writer.apply(battery_decision(20.0, 5.0))
            after = clock.mono()
            sent = {d: at for d, kind, at in reports.written if kind == "battery"}
            assert set(sent) == {"alpha-battery"}  # beta's map has no setpoint: it took none
            assert all(before <= at <= after for at in sent.values())
            await rig.writer.apply(battery_decision(20.0, 5.0))  # unchanged: nothing written
            assert len(reports.written) == 1
            await rig.writer.drain(2.0)

    arun(main)
    assert reports.unsupported == [("beta-battery", "battery")]


def test_a_device_that_takes_no_setpoint_is_reported_once_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    park = make_park()
    alpha = SunSpecStorage802("alpha-battery", ALPHA_UNIT, park, "alpha")
    beta = MapUnit("beta-battery", BETA_UNIT, park, load_driver("victron-gx-ess"), "battery", "beta")

    async def main() -> None:
        async with served(alpha, beta) as endpoint, ConnectionPool() as pool:
            rig = Rig(site(endpoint.port), pool)
            await rig.poll()
            with pytest.raises(SetpointUnsupportedError, match="no battery setpoint point"):
                await rig.devices["beta-battery"].set_battery_kw(5.0)
            await rig.writer.apply(battery_decision(10.0, 5.0))
            assert rig.writer.not_dispatched() == {"beta-battery": "battery"}
            for _ in range(3):  # alpha holds its 10 kW; beta is not tried again
                assert await rig.writer.apply(battery_decision(10.0, 5.0)) == (0, 0)
            assert await rig.setpoint_kw("alpha-battery") == 10.0
            await rig.poll()
            assert rig.store.batteries_without_setpoint == {"beta-battery"}
            alpha_reading, beta_reading = rig.store.snapshot(0.0, Clock().mono()).companies
            assert alpha_reading.soc_pct is not None
            assert beta_reading.soc_pct is None  # not counted on by the core ...
            assert beta_reading.battery_kw is not None  # ... its power still counts
            await rig.writer.drain(2.0)

    arun(main)
    reported = [m for m in service_warnings(caplog) if m.startswith("beta-battery:")]
    assert len(reported) == 1, reported
    assert "no battery setpoint point" in reported[0]
    assert "no longer dispatches its battery setpoint" in reported[0]


def test_an_inverter_rated_below_its_config_is_reported_before_any_limit_and_limited_at_its_rating(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    park = make_park()  # alpha's PV: 100 kW (121 WMax)
    inverter = SunSpecInverter("alpha-pv", 1, park, "alpha")

    async def main() -> None:
        async with served(inverter) as endpoint, ConnectionPool() as pool:
            device = {
                "id": "alpha-pv",
                "company": "alpha",
                "role": "pv",
                "driver": "sunspec",
                "modbus": {"host": "127.0.0.1", "port": endpoint.port},
            }
            cfg = parse_config(
                {
                    "park": {"import_limit_kw": 500, "export_limit_kw": 200},
                    "companies": [{"id": "alpha", "pv": {"peak_kw": 120}}, {"id": "beta"}],
                    "devices": [device],
                }
            )
            rig = Rig(cfg, pool)
            await rig.poll()
            no_limit = Decision((None, None), (None, None), "normal", NO_LIMITS, {}, 0.0, 0.0, "t")
            # the first decision of the run lifts whatever limit a previous run left (#13 item 5): a
            # release, which starts the inverter first (its bounds read, the config checked) ...
            assert await rig.writer.apply(no_limit) == (1, 0)
            assert rig.devices["alpha-pv"].setpoint_bounds_kw("pv_limit") == (0.0, 100.0)
            assert await rig.writer.apply(no_limit) == (0, 0)  # ... and then nothing to write
            limit = Decision((None, None), (110.0, None), "normal", NO_LIMITS, {}, 0.0, 0.0, "t")
            await rig.writer.apply(limit)
            reading = await rig.devices["alpha-pv"].read()
            assert reading.values["limit_pct"] == 100.0  # 110 kW asked: its rating, 100 % of 100 kW
            await rig.writer.drain(2.0)

    arun(main)
    promised = [m for m in service_warnings(caplog) if m.startswith("alpha-pv: the site config")]
    assert len(promised) == 1, promised
    assert "120 kW (companies.alpha.pv.peak_kw" in promised[0]
    assert "bound of 100 kW" in promised[0]
    assert not [m for m in service_warnings(caplog) if "no longer dispatches" in m]


def test_a_map_device_reads_its_bounds_at_start_and_tells_unsupported_from_out_of_bounds() -> None:
    park = make_park()
    unit = MapUnit("hw", 1, park, load_driver("huawei-sun2000"), "pv", "alpha", driver="huawei-sun2000")

    async def main() -> None:
        async with served(unit) as endpoint, ConnectionPool() as pool:
            config = DeviceConfig.model_validate(
                {
                    "id": "hw",
                    "company": "alpha",
                    "role": "pv",
                    "driver": "huawei-sun2000",
                    "modbus": {"host": "127.0.0.1", "port": endpoint.port, "unit_id": 1},
                }
            )
            rated = build_device(config, pool=pool, rated_kw=40.0)
            assert rated.setpoint_bounds_kw("pv_limit") is None  # not read yet
            await rated.start()
            assert rated.setpoint_bounds_kw("pv_limit") == (0.0, 40.0)  # 0..100 % of its 40 kW
            with pytest.raises(SetpointOutOfBoundsError, match=r"45 kW is outside 0\.\.40 kW"):
                await rated.set_pv_limit_kw(45.0)
            with pytest.raises(SetpointUnsupportedError, match="a pv takes no battery setpoint"):
                await rated.set_battery_kw(1.0)
            unrated = build_device(config, pool=pool)  # a limit in % without the rating
            await unrated.start()
            assert unrated.setpoint_bounds_kw("pv_limit") is None
            with pytest.raises(SetpointUnsupportedError, match="needs the inverter's rating"):
                await unrated.set_pv_limit_kw(10.0)

    arun(main)


# --- an MQTT battery: its bounds are its device config's ---------------------------------------------------


def test_an_mqtt_battery_is_clamped_to_its_configured_bounds(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    device = {
        "id": "bat",
        "company": "alpha",
        "role": "battery",
        "driver": "mqtt",
        "mqtt": {
            "points": {"power_kw": {"topic": "bat/power"}, "setpoint_kw": {"topic": "bat/state"}},
            "setpoint_topic": "bat/set",
            "setpoint_min_kw": -5,
            "setpoint_max_kw": 5,
        },
    }
    battery = {"capacity_kwh": 20, "max_charge_kw": 8, "max_discharge_kw": 8}
    cfg = parse_config(
        {
            "park": {"import_limit_kw": 100},
            "companies": [{"id": "alpha", "battery": battery}],
            "devices": [device],
        }
    )
    received: list[float] = []

    async def battery_api(ready: asyncio.Event) -> None:
        """A battery with an MQTT API that echoes the setpoint it took."""
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("bat/set", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                kw = json.loads(payload)["power_kw"]
                received.append(kw)
                await client.publish("bat/state", str(kw), qos=1)

    async def main() -> None:
        async with MqttHub.from_url(broker.url, backoff_initial_s=0.05) as hub:
            devices: dict[str, Device] = {
                "bat": build_device(cfg.devices[0], pool=ConnectionPool(), mqtt=hub)
            }
            health = Health(["bat"], fail_after=3, recover_after=2)
            writer = SetpointWriter(cfg, devices, health, Clock())
            await hub.wait_connected(3)
            ready = asyncio.Event()
            api = asyncio.get_running_loop().create_task(battery_api(ready), name="battery api")
            try:
                await ready.wait()
                for asked in (8.0, -8.0, 3.0):
                    await writer.apply(Decision((asked,), (None,), "normal", NO_LIMITS, {}, 0.0, 0.0, "t"))
                await writer.drain(2.0)
            finally:
                api.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await api

    arun(main)
    assert received == [5, -5, 3]
    promised = [m for m in service_warnings(caplog) if m.startswith("bat: the site config")]
    assert len(promised) == 2, promised
    assert any(
        "8 kW (companies.alpha.battery.max_discharge_kw" in m and "bound of 5 kW" in m for m in promised
    )


def test_mqtt_bounds_the_wrong_way_round_exit_78_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = {
        "id": "bat",
        "company": "alpha",
        "role": "battery",
        "driver": "mqtt",
        "mqtt": {"points": {"power_kw": {"topic": "bat/power"}}, "setpoint_min_kw": 5, "setpoint_max_kw": -5},
    }
    data = {"park": {"import_limit_kw": 100}, "companies": [{"id": "alpha"}], "devices": [device]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli_main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "devices.0.mqtt" in err
    assert "setpoint_min_kw (5) is above setpoint_max_kw (-5)" in err
    assert "Traceback" not in err
