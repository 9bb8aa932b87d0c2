"""Command-to-reply latency of the operator MQTT API through a real mosquitto (target p99 <= 50 ms).

Starts a private mosquitto on a free loopback port with deploy/mosquitto/acl and a password file,
an OperatorApi with a state file (so every accepted command is fsynced), and an operator client
that sends N commands one after the other (alternating park import limits), each timed from
publish to its reply on `result`.

    .venv/bin/python bench/mqtt_latency.py [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt

from hubctl.config.site import parse_config
from hubctl.service.operator_api import OperatorApi

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "site": {"id": "bench"},
    "park": {"import_limit_kw": 800, "export_limit_kw": 500},
    "companies": [{"id": f"c{i}", "import_limit_kw": 100} for i in range(20)],
}


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = directory / "passwd"
    passwd.touch(mode=0o600)
    for user in ("hubctl", "operator"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, user], check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\npassword_file {passwd}\n"
        f"acl_file {ROOT / 'deploy/mosquitto/acl'}\nuser {getpass.getuser()}\nset_tcp_nodelay true\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return proc, port
        time.sleep(0.02)
    proc.terminate()
    raise RuntimeError("mosquitto did not start")


async def measure(port: int, directory: Path, count: int) -> list[float]:
    cfg = parse_config(CONFIG)
    api = OperatorApi(
        cfg,
        "127.0.0.1",
        port,
        state_source=lambda: {"park": {"power_kw": 1.0}},
        state_file=directory / "operator.json",
        username="hubctl",
        password="hubctl",
    )
    task = asyncio.create_task(api.run(), name="operator-api")
    try:
        await api.wait_connected(5)
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            username="operator",
            password="operator",
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ) as op:
            await op.subscribe("hubctl/bench/result", qos=1)
            latencies = []
            for i in range(count):
                body = json.dumps({"value": 500 + i % 2, "id": str(i)})
                t0 = time.perf_counter()
                await op.publish("hubctl/bench/set/import_limit_kw", body, qos=1)
                async for m in op.messages:
                    if json.loads(bytes(m.payload))["id"] == str(i):
                        break
                latencies.append((time.perf_counter() - t0) * 1000)
            return latencies
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("hubctl.audit").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        proc, port = start_broker(directory)
        try:
            lat = asyncio.run(measure(port, directory, args.count))
        finally:
            proc.terminate()
            proc.wait(5)
    lat.sort()
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"{len(lat)} commands through mosquitto: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")
    print("target p99 <= 50 ms:", "met" if p99 <= 50 else "MISSED")


if __name__ == "__main__":
    main()
