"""MQTT setpoints with an expiry the device side can see (#12 item 3), against a real mosquitto.

With `setpoint_ttl_s` hubctl publishes each setpoint retained with `expires_at` in its payload and
re-publishes it every third of the TTL. The simulated MQTT battery (`simulators.mqtt_sim.MqttBattery`)
runs at a setpoint until its `expires_at` and ignores one that arrives expired, as a device that
connects after the controller died gets it from the broker. Both clocks are the test's (`wall`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

import aiomqtt
import pytest
from test_mqtt_devices import eventually, mqtt_config
from test_sim_devices import make_park

from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.site import parse_config
from hubctl.devices.mqtt import MqttDevice, MqttHub, expiry_text
from hubctl.service.gateway import Gateway
from hubctl.service.options import Options
from simulators.mqtt_sim import MqttBattery

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from support import Mosquitto

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
INSTALLER_KW = 7.0


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def running(battery: MqttBattery) -> AsyncIterator[MqttBattery]:
    task = asyncio.create_task(battery.run())
    try:
        async with asyncio.timeout(5):
            await battery.connected.wait()
        yield battery
    finally:
        battery.stop()
        await task


async def retained(broker: Mosquitto, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(3):
            async for message in client.messages:
                assert message.retain
                return bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
    raise AssertionError("no retained message")


def test_a_setpoint_carries_its_expiry_and_a_late_device_ignores_the_dead_controllers(
    broker: Mosquitto,
) -> None:
    park = make_park()
    wall = Wall()

    async def main() -> None:
        battery = MqttBattery(
            "alpha-bat", park, "alpha", "127.0.0.1", broker.port, fallback_kw=INSTALLER_KW, wall=wall
        )
        cfg = DeviceConfig.model_validate(
            {
                "id": "alpha-bat",
                "company": "alpha",
                "role": "battery",
                "driver": "mqtt",
                "mqtt": battery.device_config(),
            }
        )
        async with MqttHub.from_url(broker.url) as hub, running(battery):
            device = MqttDevice(cfg, hub, wall=wall)
            await hub.wait_connected(5)
            assert device.fallback_summary() == (
                "the setpoint expires 30 s after hubctl's last publish (expires_at in the retained payload);"
                " then the device's own fallback"
            )
            start = await device.configure_fallback()  # what FallbackKeeper logs at start
            assert not start.configured
            assert start.detail == device.fallback_summary()
            result = await device.set_battery_kw(-10.0)
            assert result.refresh_every_s == pytest.approx(10.0)  # the writer re-publishes every third
            await eventually(lambda: asyncio.sleep(0, battery.setpoint_kw == -10.0))
            assert battery.effective_kw(0) == -10.0
            payload = json.loads(await retained(broker, battery.setpoint_topic))
            assert payload == {"power_kw": -10, "expires_at": expiry_text(T0 + 30)}
            assert payload["expires_at"] == "2026-05-28T20:27:10Z"

            wall.now += 25  # hubctl lives: it re-publishes before the expiry
            await device.set_battery_kw(-10.0)
            await eventually(lambda: asyncio.sleep(0, battery.expires_at_s == T0 + 55))
            wall.now += 25
            assert battery.effective_kw(0) == -10.0

            wall.now += 40  # hubctl died after its last publish: the setpoint expires on the device
            assert battery.effective_kw(0) == INSTALLER_KW

        # a device that connects now gets the dead controller's retained setpoint: expired, ignored
        late = MqttBattery(
            "alpha-bat", make_park(), "alpha", "127.0.0.1", broker.port, fallback_kw=INSTALLER_KW, wall=wall
        )
        async with running(late):
            await eventually(lambda: asyncio.sleep(0, bool(late.ignored)))
        assert late.ignored[0].endswith(": expired")
        assert late.setpoint_kw is None
        assert late.effective_kw(0) == INSTALLER_KW

    asyncio.run(main())


def test_a_clean_stop_clears_the_retained_setpoint(broker: Mosquitto) -> None:
    wall = Wall()

    async def main() -> None:
        cfg = mqtt_config(
            {"power_kw": {"topic": "bat/power"}},
            role="battery",
            setpoint_topic="bat/set",
            setpoint_template='{"power_kw": {value}, "expires_at": "{expires_at}", "ttl_s": {ttl_s}}',
            setpoint_ttl_s=60,
        )
        async with MqttHub.from_url(broker.url) as hub:
            await hub.wait_connected(5)
            device = MqttDevice(cfg, hub, wall=wall)
            await device.set_battery_kw(5.0)
            assert json.loads(await retained(broker, "bat/set"))["ttl_s"] == 60
            await device.release()
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("bat/set", qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(client.messages))  # nothing retained any more

    asyncio.run(main())


def test_without_a_ttl_the_setpoint_is_not_retained_and_the_summary_says_it_is_kept() -> None:
    cfg = mqtt_config({"power_kw": {"topic": "bat/power"}}, role="battery", setpoint_topic="bat/set")
    assert cfg.mqtt is not None
    assert cfg.mqtt.setpoint_ttl_s is None
    device = MqttDevice(cfg, MqttHub("127.0.0.1"))
    assert (
        device.fallback_summary()
        == "none: keeps the last setpoint (no setpoint_ttl_s: the payload carries no expiry)"
    )


@pytest.mark.parametrize(
    ("mqtt", "problem"),
    [
        ({"setpoint_ttl_s": 30}, "setpoint_ttl_s needs {expires_at} in setpoint_template"),
        ({"setpoint_template": '{"p": {value}, "until": "{expires_at}"}'}, "need setpoint_ttl_s"),
        ({"setpoint_ttl_s": 0, "setpoint_template": '"{expires_at}"'}, "setpoint_ttl_s"),
    ],
)
def test_a_ttl_without_an_expiry_in_the_payload_is_refused(mqtt: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match="setpoint_ttl_s") as caught:
        mqtt_config({"power_kw": {"topic": "bat/power"}}, role="battery", setpoint_topic="bat/set", **mqtt)
    assert problem in str(caught.value)


def test_over_mqtt_v5_the_broker_drops_an_expired_retained_setpoint(broker: Mosquitto) -> None:
    """A hub speaking v5 (the gateway's, with a TTL device) adds the message expiry interval: a device
    that ignores `expires_at` still never gets a dead controller's setpoint from the broker."""
    wall = Wall()
    cfg = mqtt_config(
        {"power_kw": {"topic": "bat/power"}},
        role="battery",
        setpoint_topic="bat/set",
        setpoint_template='{"power_kw": {value}, "expires_at": "{expires_at}"}',
        setpoint_ttl_s=1,
    )

    async def main() -> None:
        async with MqttHub.from_url(broker.url, protocol=aiomqtt.ProtocolVersion.V5) as hub:
            await hub.wait_connected(5)
            await MqttDevice(cfg, hub, wall=wall).set_battery_kw(-4.0)
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe("bat/set", qos=1)
            async with asyncio.timeout(3):
                message = await anext(aiter(client.messages))
            assert json.loads(bytes(message.payload))["power_kw"] == -4
            assert 0 <= getattr(message.properties, "MessageExpiryInterval", -1) <= 1
        await asyncio.sleep(2.1)  # the broker's own clock: past the 1 s expiry (whole seconds)
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:  # a 3.1.1 device, connecting late
            await client.subscribe("bat/set", qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(client.messages))

    asyncio.run(main())


@pytest.mark.parametrize(("ttl", "v5"), [(None, False), (30, True)])
def test_the_gateways_device_hub_speaks_v5_only_with_a_ttl_device(ttl: int | None, v5: bool) -> None:
    mqtt: dict[str, object] = {"points": {"power_kw": {"topic": "bat/power"}}, "setpoint_topic": "bat/set"}
    if ttl is not None:
        mqtt |= {
            "setpoint_ttl_s": ttl,
            "setpoint_template": '{"power_kw": {value}, "expires_at": "{expires_at}"}',
        }
    cfg = parse_config(
        {
            "park": {"import_limit_kw": 900, "export_limit_kw": 500},
            "companies": [
                {"id": "bakery", "battery": {"capacity_kwh": 20, "max_charge_kw": 5, "max_discharge_kw": 5}}
            ],
            "devices": [
                {
                    "id": "bakery-battery",
                    "company": "bakery",
                    "role": "battery",
                    "driver": "mqtt",
                    "mqtt": mqtt,
                }
            ],
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
        }
    )
    hub = Gateway(cfg, Options(env={}))._make_hub()  # the one place that picks the protocol
    assert hub is not None
    assert hub.v5 is v5
