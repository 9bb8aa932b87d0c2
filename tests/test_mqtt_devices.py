# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""MQTT devices against a real mosquitto on a free loopback port (skipped when mosquitto is missing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
import yaml
from test_modbus_harness import leak_check, run  # noqa: F401 - autouse fixture

from hubctl.cli.main import main as cli_main
from hubctl.config.devices import Device as DeviceConfig
from hubctl.devices.mqtt import MqttDevice, MqttHub, extract_value, render_setpoint
from hubctl.errors import CommandNotConfirmedError, CommandRejectedError, DeviceUnavailableError
from hubctl.transport.mqtt import parse_broker_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from support import Mosquitto


# --- Pure parts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "value"),
    [
        (b"1234.5", None, 1234.5),
        (b" -7 \n", None, -7.0),
        (b'{"ENERGY": {"Power": 812}}', "ENERGY.Power", 812.0),  # Tasmota
        (b'{"emeters": [{"power": 1.5}, {"power": 2.5}]}', "emeters.1.power", 2.5),  # Shelly 3EM
        (b'{"power_delivered": 0.42}', "power_delivered", 0.42),  # P1 / DSMR reader
    ],
)
def test_extract_value(payload: bytes, path: str | None, value: float) -> None:
    assert extract_value(payload, path) == value


@pytest.mark.parametrize(
    ("payload", "path", "reason"),
    [
        (b"on", None, "not a number"),
        (b"nan", None, "not a finite number"),
        (b"{", "a", "not JSON"),
        (b'{"a": {"b": 1}}', "a.c", "no 'a.c'"),
        (b'{"a": true}', "a", "not a number"),
        (b'{"a": "12"}', "a", "not a number"),
        (b"\xff\xfe", None, "not UTF-8"),
    ],
)
def test_extract_value_explains_what_is_wrong(payload: bytes, path: str | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        extract_value(payload, path)


def test_render_setpoint_and_broker_urls() -> None:
    assert render_setpoint('{"power_kw": {value}}', 12.5) == '{"power_kw": 12.5}'
    assert render_setpoint("{value}", -3.0) == "-3"
    assert render_setpoint("{value}", 1e-5) == "0"
    assert render_setpoint("{value}", 1234567.0) == "1234567"
    assert parse_broker_url("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker_url("broker") == ("broker", 1883)
    with pytest.raises(ValueError, match="not an MQTT broker URL"):
        parse_broker_url("http://x")


# --- Against mosquitto --------------------------------------------------------------------------------------


def mqtt_config(points: dict[str, Any], **extra: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": "p1-meter",
            "company": "bakery",
            "role": extra.pop("role", "grid_meter"),
            "driver": "mqtt",
            "mqtt": {"points": points, **extra},
        }
    )


async def publish(broker: Mosquitto, topic: str, payload: str, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_readings_from_json_paths_and_bare_numbers(broker: Mosquitto) -> None:
    config = mqtt_config(
        {
            "active_power_kw": {"topic": "tasmota/SENSOR", "json_path": "ENERGY.Power", "scale": 0.001},
            "energy_import_kwh": {"topic": "p1/energy_import", "stale_after_s": 30},
            "voltage_l1_v": {"topic": "shelly/emeter/0/voltage"},
        }
    )

    async def main() -> Any:
        async with MqttHub.from_url(broker.url, backoff_initial_s=0.05) as hub:
            device = MqttDevice(config, hub)
            await hub.wait_connected(3)
            with pytest.raises(DeviceUnavailableError, match="nothing usable received on tasmota/SENSOR"):
                await device.read()
            await publish(broker, "tasmota/SENSOR", json.dumps({"ENERGY": {"Power": -812}}))
            await publish(broker, "p1/energy_import", "1520.25")
            await device.wait_for_data(0.5)  # the voltage never comes
            return await device.read()

    reading = run(main)
    assert reading.power_kw == pytest.approx(-0.812)
    assert reading.values["energy_import_kwh"] == 1520.25
    assert reading.points["active_power_kw"].unit == "kW"
    assert reading.points["voltage_l1_v"].value is None
    assert reading.stale == ("voltage_l1_v",)


def test_a_reading_goes_stale(broker: Mosquitto) -> None:
    config = mqtt_config({"power_kw": {"topic": "meter/power", "stale_after_s": 0.3}})

    async def main() -> None:
        async with MqttHub.from_url(broker.url) as hub:
            device = MqttDevice(config, hub)
            await hub.wait_connected(3)
            await publish(broker, "meter/power", "4.5")
            await device.wait_for_data(2)
            assert (await device.read()).power_kw == 4.5
            await asyncio.sleep(0.4)
            with pytest.raises(DeviceUnavailableError, match=r"power_kw: last value 0 s ago on meter/power"):
                await device.read()
            await publish(broker, "meter/power", "on")  # wrong shape: said so in the error
            await asyncio.sleep(0.1)
            with pytest.raises(DeviceUnavailableError, match="last payload: payload 'on' is not a number"):
                await device.read()

    run(main)


def test_retained_values_arrive_on_subscribe_and_subscriptions_survive_a_broker_restart(
    broker: Mosquitto,
) -> None:
    config = mqtt_config({"power_kw": {"topic": "meter/power"}})

    async def main() -> None:
        await publish(broker, "meter/power", "1.0", retain=True)
        async with MqttHub.from_url(
            broker.url, backoff_initial_s=0.05, backoff_max_s=0.2, keepalive_s=5
        ) as hub:
            device = MqttDevice(config, hub)
            await hub.wait_connected(3)
            await device.wait_for_data(2)
            assert (await device.read()).power_kw == 1.0
            await asyncio.to_thread(broker.stop)
            await eventually(lambda: asyncio.sleep(0, not hub.connected))
            await asyncio.to_thread(broker.start)
            await hub.wait_connected(5)
            assert hub.connects == 2
            await publish(broker, "meter/power", "2.0")  # only a renewed subscription gets this

            async def updated() -> bool:
                return (await device.read()).power_kw == 2.0

            await eventually(updated)

    run(main)


def test_setpoints_are_published_and_confirmed_by_the_echo(broker: Mosquitto) -> None:
    config = mqtt_config(
        {
            "battery_power_kw": {"topic": "bat/power"},
            "soc_pct": {"topic": "bat/soc"},
            "setpoint_kw": {"topic": "bat/state", "json_path": "setpoint_kw"},
        },
        role="battery",
        setpoint_topic="bat/set",
        setpoint_template='{"power_kw": {value}}',
    )
    received: list[str] = []

    async def battery(ready: asyncio.Event, *, echo: bool) -> None:
        """A battery with an MQTT API that reports the setpoint it took."""
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("bat/set", qos=1)
            ready.set()
            async for message in client.messages:
                payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                received.append(payload.decode())
                if echo:
                    kw = json.loads(payload)["power_kw"]
                    await client.publish("bat/state", json.dumps({"setpoint_kw": kw}), qos=1)

    async def main() -> None:
        async with MqttHub.from_url(broker.url) as hub:
            device = MqttDevice(config, hub)
            device.confirm_timeout_s = 0.5
            await hub.wait_connected(3)
            for echo in (True, False):
                ready = asyncio.Event()
                task = asyncio.get_running_loop().create_task(battery(ready, echo=echo), name="battery")
                try:
                    await ready.wait()
                    if echo:
                        result = await device.set_battery_kw(-2.5)
                        assert result.confirmed_kw == -2.5
                    else:
                        with pytest.raises(CommandNotConfirmedError, match="did not echo"):
                            await device.set_battery_kw(1.0)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with pytest.raises(CommandRejectedError, match="battery takes no PV limit"):
                await device.set_pv_limit_kw(1.0)

    run(main)
    assert received == ['{"power_kw": -2.5}', '{"power_kw": 1}']


def test_setpoint_without_topic_or_broker_is_refused(broker: Mosquitto) -> None:
    no_topic = mqtt_config({"power_kw": {"topic": "pv/power"}}, role="pv")
    with_topic = mqtt_config({"power_kw": {"topic": "pv/power"}}, role="pv", setpoint_topic="pv/limit")

    async def main() -> None:
        hub = MqttHub.from_url(broker.url)
        with pytest.raises(CommandRejectedError, match="no setpoint_topic"):
            await MqttDevice(no_topic, hub).set_pv_limit_kw(3.0)
        with pytest.raises(DeviceUnavailableError, match="not connected"):
            await MqttDevice(with_topic, hub).set_pv_limit_kw(3.0)
        with pytest.raises(CommandRejectedError, match=">= 0"):
            await MqttDevice(with_topic, hub).set_pv_limit_kw(-1.0)

    run(main)


def test_hubctl_read_with_an_mqtt_device(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(lambda: publish(broker, "p1/power", '{"power_delivered": 0.75}', retain=True))
    path = tmp_path / "site.yaml"
    device = {
        "id": "p1",
        "company": "bakery",
        "role": "grid_meter",
        "driver": "mqtt",
        "mqtt": {"points": {"power_kw": {"topic": "p1/power", "json_path": "power_delivered"}}},
    }
    data = {"park": {"import_limit_kw": 900}, "companies": [{"id": "bakery"}], "devices": [device]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli_main(["read", "--config", str(path), "--mqtt-url", broker.url]) == 0
    out = capsys.readouterr().out
    assert "p1 (grid_meter, mqtt)" in out
    assert "0.75 kW" in out
