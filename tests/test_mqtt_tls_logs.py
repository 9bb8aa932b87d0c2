"""TLS log lines that help (issue #13 item 12, the MQTT part), against a mosquitto TLS listener.

A certificate file that goes missing after the start (the start checks it: `tls_file_problems`,
exit 78) failed every reconnect with "[Errno 2] No such file or directory" and no file name; the
line now names the setting and the file, and the URL it is logged under is the TLS one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

import pytest
from support import MOSQUITTO, TlsMosquitto, make_tls
from test_modbus_harness import leak_check, run  # noqa: F401 - autouse fixture

from hubctl.transport.mqtt import ClientOptions, MqttSession, parse_url, tls_parameters

if TYPE_CHECKING:
    from pathlib import Path

    import aiomqtt

log = logging.getLogger("hubctl.test_tls_logs")


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
@pytest.mark.parametrize("url_scheme", ["mqtts", "mqtt"])  # mqtt:// with a CA file is TLS too
def test_a_certificate_gone_after_the_start_is_logged_with_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, url_scheme: str
) -> None:
    tls = make_tls(tmp_path / "pki")
    broker = TlsMosquitto(tmp_path, tls)
    ca = tmp_path / "ca.crt"
    shutil.copy(tls.ca, ca)
    broker.start()
    try:
        parsed = parse_url(f"{url_scheme}://127.0.0.1:{broker.port}")
        params = tls_parameters(parsed, ca_file=str(ca), cert_file=None, key_file=None)
        session = MqttSession(
            parsed.host, parsed.port, ClientOptions("tls-log", tls=params, backoff=(0.05, 0.1)),
            log=log, subscriptions=list,
        )  # fmt: skip

        async def serve(_client: aiomqtt.Client) -> None:
            raise AssertionError("connected without its CA file")

        async def main() -> None:
            ca.unlink()  # the certificate is removed after the start checked it (a renewal gone wrong)
            task = asyncio.create_task(session.run(serve))
            try:
                with pytest.raises(TimeoutError):
                    await session.wait_connected(1.0)
            finally:
                task.cancel()
                await asyncio.wait([task])

        with caplog.at_level(logging.INFO, logger=log.name):
            run(main)
    finally:
        broker.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, caplog.text
    assert warnings[0].startswith(f"mqtts://127.0.0.1:{broker.port}: "), warnings
    assert f"mqtt.ca_file: {ca}: No such file or directory" in warnings[0], warnings
