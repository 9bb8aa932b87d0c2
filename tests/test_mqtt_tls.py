"""MQTT on a secured broker (#12 item 2): a real mosquitto 2.0 with a TLS listener, its certificates
made at test time by openssl (`support.make_tls`: a throwaway CA, a server certificate for
127.0.0.1, a client certificate, and a second CA that signed nothing here).

One broker configuration (`hubctl.config.resolve.mqtt_broker`) for the operator API, the MQTT
device hub and `hubctl read`: each is shown working over TLS; a wrong CA is a clear connection
error that is retried (never a crash), a missing CA file is refused at start (exit 78, naming
`mqtt.ca_file`), a listener that requires a client certificate takes the configured one, and
`hubctl run` with an mqtts:// URL and MQTT devices runs and controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import MOSQUITTO, OPENSSL, REPO, TlsFiles, TlsMosquitto, make_tls
from test_modbus_harness import leak_check, run  # noqa: F401 - autouse fixture

from hubctl.cli.main import main as cli_main
from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.resolve import BrokerSettings, mqtt_broker
from hubctl.config.site import parse_config
from hubctl.devices.mqtt import MqttDevice, MqttHub
from hubctl.errors import EX_CONFIG, DeviceUnavailableError
from hubctl.service.gateway import run_service
from hubctl.service.operator_api import OperatorApi
from hubctl.service.options import Options
from hubctl.transport.mqtt import payload_bytes

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or not Path(OPENSSL).is_file(), reason="needs mosquitto and openssl"
)

SITE: dict[str, Any] = {
    "site": {"id": "tls-park"},
    "park": {"import_limit_kw": 900},
    "companies": [{"id": "bakery"}],
}
METER: dict[str, Any] = {
    "id": "p1",
    "company": "bakery",
    "role": "grid_meter",
    "driver": "mqtt",
    "mqtt": {"points": {"power_kw": {"topic": "p1/power", "json_path": "power_delivered"}}},
}
BATTERY: dict[str, Any] = {
    "id": "bat",
    "company": "bakery",
    "role": "battery",
    "driver": "mqtt",
    "mqtt": {
        "points": {"power_kw": {"topic": "bat/power"}, "soc_pct": {"topic": "bat/soc"}},
        "setpoint_topic": "bat/set",
    },
}
_SETTINGS_ENV = ("STATE_DIRECTORY", "HUBCTL_INFLUX_URL", "HUBCTL_MQTT_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC")


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """The throwaway PKI of one test (`support.make_tls`)."""
    return make_tls(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[TlsMosquitto]:
    instance = TlsMosquitto(tmp_path, tls_files)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def cert_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[TlsMosquitto]:
    """A listener that takes only clients with a certificate the test CA signed."""
    instance = TlsMosquitto(tmp_path, tls_files, require_certificate=True)
    instance.start()
    yield instance
    instance.stop()


def site(
    url: str, *, ca: Path | None, client_cert: TlsFiles | None = None, **sections: Any
) -> dict[str, Any]:
    mqtt: dict[str, Any] = {"url": url}
    if ca is not None:
        mqtt["ca_file"] = str(ca)
    if client_cert is not None:
        mqtt |= {"cert_file": str(client_cert.client_cert), "key_file": str(client_cert.client_key)}
    return {**SITE, "mqtt": mqtt, **sections}


def settings(data: dict[str, Any]) -> BrokerSettings:
    broker = mqtt_broker(parse_config(data), None, {})
    assert broker is not None
    return broker


async def publish(broker: TlsMosquitto, topic: str, payload: str, *, retain: bool = False) -> None:
    async with broker.client(client_cert=True) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}, **extra}


# --- one broker configuration ----------------------------------------------------------------------------


def test_one_broker_configuration_in_the_documented_order() -> None:
    both = {**SITE, "service": {"mqtt_url": "mqtt://service:1883"}}
    full = {**both, "mqtt": {"url": "mqtts://section", "ca_file": "/ca.crt", "username_env": "U"}}
    env = {"HUBCTL_MQTT_URL": "mqtt://env:1883", "U": "dev", "HUBCTL_MQTT_PASSWORD": "pw"}
    cfg = parse_config(full)
    assert mqtt_broker(cfg, "mqtt://flag", env) == BrokerSettings(
        "mqtt://flag", "--mqtt-url", "/ca.crt", None, None, "dev", "pw"
    )
    from_env = mqtt_broker(cfg, None, env)
    assert from_env is not None
    assert (from_env.url, from_env.source) == ("mqtt://env:1883", "$HUBCTL_MQTT_URL")
    assert settings(full).url == "mqtts://section"
    assert settings(both) == BrokerSettings("mqtt://service:1883", "service.mqtt_url")
    assert mqtt_broker(parse_config(SITE), None, {}) is None  # the gateway: no broker
    read = mqtt_broker(parse_config(SITE), None, {"HUBCTL_MQTT_USERNAME": "u"}, "mqtt://127.0.0.1:1883")
    assert read == BrokerSettings("mqtt://127.0.0.1:1883", "default", username="u")


# --- the operator API -------------------------------------------------------------------------------------


def test_the_operator_api_answers_a_command_over_tls(broker: TlsMosquitto) -> None:
    cfg = parse_config(site(broker.url, ca=broker.tls.ca))
    api = OperatorApi.from_config(cfg, state_source=dict, state_file=None, env={})

    async def main() -> dict[str, Any]:
        task = asyncio.create_task(api.run(), name="operator-api")
        try:
            await api.wait_connected(5)
            async with broker.client() as c:
                await c.subscribe("hubctl/tls-park/result", qos=1)
                await c.publish("hubctl/tls-park/set/import_limit_kw", '{"value": 600, "id": "c1"}', qos=1)
                async with asyncio.timeout(5):
                    async for message in c.messages:
                        reply: dict[str, Any] = json.loads(payload_bytes(message.payload))
                        return reply
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        raise AssertionError("unreachable")

    reply = run(main)
    assert api._session.label == f"mqtts://127.0.0.1:{broker.port}"
    assert reply == {
        "id": "c1",
        "key": "import_limit_kw",
        "ok": True,
        "value": 600.0,
        "error": None,
        "expires_at": None,
    }


# --- MQTT devices -----------------------------------------------------------------------------------------


def test_an_mqtt_device_over_tls_is_read_and_takes_a_setpoint(broker: TlsMosquitto) -> None:
    config = DeviceConfig.model_validate(BATTERY)
    received: list[bytes] = []

    async def main() -> float | None:
        await publish(broker, "bat/power", "1.5", retain=True)
        await publish(broker, "bat/soc", "55", retain=True)
        async with broker.client() as battery:
            await battery.subscribe("bat/set", qos=1)
            async with MqttHub.from_broker(settings(site(broker.url, ca=broker.tls.ca))) as hub:
                device = MqttDevice(config, hub)
                await hub.wait_connected(5)
                await device.wait_for_data(3)
                reading = await device.read()
                await device.set_battery_kw(-2.5)
                async with asyncio.timeout(5):
                    async for message in battery.messages:
                        received.append(payload_bytes(message.payload))
                        break
                assert hub.label == f"mqtts://127.0.0.1:{broker.port}"
                return reading.power_kw

    assert run(main) == 1.5
    assert received == [b'{"power_kw": -2.5}']


def test_a_client_certificate_when_the_listener_requires_one(cert_broker: TlsMosquitto) -> None:
    config = DeviceConfig.model_validate(METER)

    async def main() -> tuple[float | None, str]:
        await publish(cert_broker, "p1/power", '{"power_delivered": 0.5}', retain=True)
        with_cert = settings(site(cert_broker.url, ca=cert_broker.tls.ca, client_cert=cert_broker.tls))
        async with MqttHub.from_broker(with_cert) as hub:
            device = MqttDevice(config, hub)
            await hub.wait_connected(5)
            await device.wait_for_data(3)
            power = (await device.read()).power_kw
        without = MqttHub.from_broker(settings(site(cert_broker.url, ca=cert_broker.tls.ca)), timeout_s=1.0)
        async with without:
            with pytest.raises(DeviceUnavailableError) as refused:
                await without.wait_connected(3)
        return power, str(refused.value)

    power, refused = run(main)
    assert power == 0.5
    assert "not connected within 3 s" in refused  # the broker let no client without a certificate in


def test_a_wrong_ca_is_a_clear_error_retried_with_backoff(
    broker: TlsMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = settings(site(broker.url, ca=broker.tls.other_ca))

    async def main() -> tuple[str, bool, int]:
        hub = MqttHub.from_broker(wrong, backoff_initial_s=0.05, backoff_max_s=0.2)
        async with hub:
            with pytest.raises(DeviceUnavailableError) as failed:
                await hub.wait_connected(2)
            running = hub._task is not None and not hub._task.done()  # still trying, not crashed
            return str(failed.value), running, hub.connects

    with caplog.at_level(logging.INFO, logger="hubctl.mqtt_devices"):
        message, running, connects = run(main)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "not signed by the CA in mqtt.ca_file" in message
    assert running
    assert connects == 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "hubctl.mqtt_devices" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, warnings  # logged once, then retried quietly
    assert warnings[0].startswith(f"mqtts://127.0.0.1:{broker.port}: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert "reconnecting with backoff" in warnings[0]


def test_a_missing_ca_file_is_refused_at_start_naming_the_field(
    tmp_path: Path, broker: TlsMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    cfg = parse_config(site(broker.url, ca=missing, devices=[METER]))
    assert run_service(cfg, Options(env=_env())) == EX_CONFIG  # hubctl run: exit 78, before connecting
    refusals = [r.getMessage() for r in caplog.records if r.name == "hubctl.service"]
    assert refusals == [f"site config: mqtt.ca_file: {missing}: No such file or directory"]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site(broker.url, ca=missing, devices=[METER])), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "read", "--config", str(path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == EX_CONFIG, result.stderr
    assert f"mqtt.ca_file: {missing}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


# --- hubctl read and hubctl run ----------------------------------------------------------------------------


def test_hubctl_read_over_tls(
    broker: TlsMosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(lambda: publish(broker, "p1/power", '{"power_delivered": 0.75}', retain=True))
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site(broker.url, ca=broker.tls.ca, devices=[METER])), encoding="utf-8")
    assert cli_main(["read", "--config", str(path), "--json"]) == 0  # the broker from mqtt.url
    out = json.loads(capsys.readouterr().out)
    assert out["devices"]["p1"]["values"]["power_kw"]["value"] == 0.75


def _spawn_run(tmp_path: Path, data: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    config, journal, trace = tmp_path / "site.yaml", tmp_path / "journal.log", tmp_path / "trace.jsonl"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    with journal.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubctl.cli", "run", "--config", str(config), "--trace", str(trace)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, journal, trace


def _wait_for(
    proc: subprocess.Popen[bytes], journal: Path, trace: Path, lines: list[str], cycles: int
) -> str:
    """The journal once it holds every one of `lines` and the trace `cycles` cycle records; fails if
    the service ends first (or after 30 s, a bound, not a measurement)."""
    deadline = time.monotonic() + 30
    while True:
        text = journal.read_text(encoding="utf-8")
        done = trace.read_text(encoding="utf-8").count('"kind":"cycle"') if trace.exists() else 0
        if all(line in text for line in lines) and done >= cycles:
            return text
        assert proc.poll() is None, f"hubctl run ended with {proc.returncode}:\n{text}"
        assert time.monotonic() < deadline, text
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], journal: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, journal.read_text(encoding="utf-8")
    return journal.read_text(encoding="utf-8")


def test_hubctl_run_with_mqtts_devices_connects_and_controls(broker: TlsMosquitto, tmp_path: Path) -> None:
    run(lambda: publish(broker, "p1/power", '{"power_delivered": 40}', retain=True))
    proc, journal, trace = _spawn_run(tmp_path, site(broker.url, ca=broker.tls.ca, devices=[METER]))
    try:
        label = f"mqtts://127.0.0.1:{broker.port}: connected"
        text = _wait_for(proc, journal, trace, [f"hubctl.mqtt_devices: {label}", "ready: "], cycles=2)
    finally:
        text = _stop(proc, journal)
    assert "Traceback" not in text
    cycles = [json.loads(x) for x in trace.read_text(encoding="utf-8").splitlines() if '"kind":"cycle"' in x]
    assert any(c["park_grid_kw"] == 40 for c in cycles)  # the meter read over TLS drives control


def test_hubctl_run_with_a_wrong_ca_logs_it_and_keeps_controlling(
    broker: TlsMosquitto, tmp_path: Path
) -> None:
    proc, journal, trace = _spawn_run(tmp_path, site(broker.url, ca=broker.tls.other_ca, devices=[METER]))
    try:
        hint = "not signed by the CA in mqtt.ca_file"
        _wait_for(proc, journal, trace, ["CERTIFICATE_VERIFY_FAILED", hint], cycles=3)
    finally:
        text = _stop(proc, journal)
    assert "Traceback" not in text
    assert f"mqtts://127.0.0.1:{broker.port}: connected" not in text
