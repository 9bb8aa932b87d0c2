"""The operator API survives any payload and any client (issue #13 item 10), against a real mosquitto.

- Hostile payloads through the shipped ACL (test_operator_api's broker): nested 1,000 deep (once
  an uncaught RecursionError that killed the API's task: commands sent meanwhile were never
  answered while `status` stayed `online`), too large, not UTF-8, numbers too long, through every
  command key: each gets an error reply and the API goes on answering.
- A retained `set/` message is refused and then cleared, so it is not refused again at every
  reconnect.
- A damaged `operator.json` (random bytes, not JSON, the wrong version or shape, nested too deep)
  never stops the API from being built: it starts without operator settings, the file is moved
  aside and the retained `state` says so (`tests/test_operator_file.py` runs it in `hubctl run`).
- The shipped broker config, deploy/mosquitto/ as it is (paths and ports moved into a temporary
  directory, persistence off) with password files made by the shipped make-passwords.sh: a
  viewer reusing hubctl's client id 12 times does not knock the service off (client ids are
  bound to users on the network listener; the loopback listener knows hubctl alone), and run as
  root, mosquitto reads the password files after dropping to its own user.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from support import MOSQUITTO, free_port, make_tls, wait_for_port
from test_modbus_harness import leak_check, run  # noqa: F401 - autouse fixture
from test_operator_api import (
    BASE,
    CFG,
    PASSWD,
    USERS,
    Broker,
    Clock,
    broker,  # noqa: F401 - fixture
    client,
    command,
    make_api,
    next_message,
    retained,
    serving,
)

from hubctl.core.commands import MAX_PAYLOAD_BYTES
from hubctl.service.operator_api import OperatorApi

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
DEEP = 990  # deep enough for a RecursionError, small enough for 16 KiB
# where `json.loads` still parses a value but `json.dumps` of it (the reply's sentence) runs out of
# stack depends on how deep the handler already is: a sweep covers the window in any stack
SWEEP: list[tuple[str, bytes, str]] = [
    ("import_limit_kw", b'{"value": ' + b"[" * depth + b"]" * depth + b"}", "nested too deeply")
    for depth in range(800, 1000)
]

HOSTILE: list[tuple[str, bytes, str]] = [
    ("import_limit_kw", b'{"value": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested too deeply"),
    ("import_limit_kw", b'{"value": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}", "nested too deeply"),
    (
        "schedule",
        b'{"value": {"date": "2026-05-04", "windows": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
        "nested",
    ),
    ("battery/bakery/mode", b"[" * DEEP + b"]" * DEEP, "nested too deeply"),
    ("sharing/key", b'{"value": {"key": ' + b"[" * DEEP + b"]" * DEEP + b"}}", "nested too deeply"),
    ("get/state", b"[" * DEEP + b"]" * DEEP, ""),  # get/state is always answered, ok
    ("import_limit_kw", b"1" * 5000, "not usable JSON"),
    ("import_limit_kw", b" " * (MAX_PAYLOAD_BYTES + 1), "more than 16384"),
    ("import_limit_kw", b"\xff\xfe{", "not UTF-8"),
    ("import_limit_kw", b'{"value": 1e999}', "finite"),
    ("import_limit_kw", b'{"value": NaN}', "not a number"),
    ("company/bakery/import_limit_kw", b'{"value": 10, "ttl_s": 1' + b"0" * 400 + b"}", ""),
]


def test_hostile_payloads_are_answered_and_the_api_goes_on(broker: Broker) -> None:  # noqa: F811
    clock = Clock()
    api = make_api(broker, None, clock)

    async def main() -> None:
        async with serving(api) as task, client(broker, "operator", f"{BASE}/result") as op:
            for key, body, reason in SWEEP + HOSTILE:
                topic = f"{BASE}/{key}" if key.startswith("get/") else f"{BASE}/set/{key}"
                await op.publish(topic, body, qos=1)
                reply = json.loads(bytes((await next_message(op, f"{BASE}/result")).payload))
                assert reply["key"] == key, reply
                if key == "get/state":
                    assert reply["ok"] is True
                    continue
                assert reply["ok"] is False, (key, reply)
                assert reason in reply["error"], (key, reply)
                assert not task.done()
            assert (await command(op, "import_limit_kw", {"value": 640}, "after"))["ok"]
            seen = await retained(broker, f"{BASE}/status")
            assert seen[f"{BASE}/status"] == b"online"
        assert api.current_overrides(clock.now).park_import_kw == 640
        assert api.connects == 1  # never lost its connection

    run(main)


def test_a_retained_command_is_refused_once_and_cleared(broker: Broker) -> None:  # noqa: F811
    clock = Clock()

    async def main() -> None:
        async with client(broker, "operator", f"{BASE}/result") as op:
            await op.publish(
                f"{BASE}/set/import_limit_kw", b'{"value": 100, "id": "kept"}', qos=1, retain=True
            )
            await op.publish(f"{BASE}/get/state", b'{"id": "kept-get"}', qos=1, retain=True)
            async with serving(make_api(broker, None, clock)):
                replies = [
                    json.loads(bytes((await next_message(op, f"{BASE}/result")).payload)) for _ in "ab"
                ]
                assert sorted(r["id"] for r in replies) == ["kept", "kept-get"]
                assert all(not r["ok"] and "retained" in r["error"] for r in replies), replies
                await asyncio.sleep(0.2)
                assert await retained(broker, f"{BASE}/set/#") == {}  # cleared by the service
                assert await retained(broker, f"{BASE}/get/#") == {}
            # a reconnect (a restart of the API) finds nothing to refuse again
            async with serving(make_api(broker, None, clock)):
                with pytest.raises(TimeoutError):
                    await next_message(op, f"{BASE}/result", timeout_s=1.0)

    run(main)


DAMAGED: dict[str, bytes] = {
    "random bytes": random.Random(13).randbytes(4096),
    "cut in half": b'{"version": 1, "settings": [{"key": "import_limit_kw", "val',
    "the wrong version": b'{"version": 99, "settings": []}',
    "not an object": b"[1, 2, 3]",
    "settings not a list": b'{"version": 1, "settings": "import_limit_kw"}',
    "nested 5000 deep": b'{"version": 1, "settings": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "NaN": b'{"version": 1, "settings": [NaN]}',
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_state_file_is_moved_aside(tmp_path: Path, name: str) -> None:
    path = tmp_path / "operator.json"
    path.write_bytes(DAMAGED[name])
    api = OperatorApi(CFG, "127.0.0.1", 1, state_source=dict, state_file=path, clock=Clock())
    assert api.operator_state.settings == {}
    assert not path.exists()
    aside = list(tmp_path.glob("operator.json.damaged-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == DAMAGED[name]  # kept for whoever looks into it
    assert api.file_problem is not None
    assert api.file_problem["moved_to"] == str(aside[0])


def test_single_unusable_entries_are_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "operator.json"
    entries: list[Any] = [
        {"key": "import_limit_kw", "value": 640.0, "set_at": 1, "expires_at": None, "id": "kept"},
        {"key": "export_limit_kw", "value": 100.0, "expires_at": 10**400},  # too large for a float
        {"key": "company/bakery/import_limit_kw", "value": [[[]]]},
        "not an entry",
    ]
    path.write_text(json.dumps({"version": 1, "settings": entries}), encoding="utf-8")
    api = OperatorApi(CFG, "127.0.0.1", 1, state_source=dict, state_file=path, clock=Clock())
    assert set(api.operator_state.settings) == {"import_limit_kw"}
    assert api.file_problem is None
    assert path.exists()


def test_the_damaged_file_is_published_in_the_retained_state(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "operator.json"
    path.write_bytes(DAMAGED["random bytes"])
    api = make_api(broker, path, Clock())

    async def main() -> None:
        async with serving(api), client(broker, "operator", f"{BASE}/result") as op:
            await asyncio.sleep(0.3)
            state = json.loads((await retained(broker, f"{BASE}/state"))[f"{BASE}/state"])
            assert "not UTF-8 text" in state["operator_file"]["damaged"]
            assert state["operator_file"]["moved_to"].startswith(str(path) + ".damaged-")
            assert state["operator"] == {}
            assert (await command(op, "import_limit_kw", {"value": 640}, "new"))["ok"]
        assert json.loads(path.read_text(encoding="utf-8"))["settings"][0]["value"] == 640

    run(main)


# --- the shipped broker config ------------------------------------------------------------------------------

SHIPPED = ROOT / "deploy/mosquitto"
_BROKER_USER = "mosquitto"


class ShippedBroker:
    """deploy/mosquitto/ in a temporary directory mosquitto's own user can read: the shipped
    mosquitto.conf with its paths and ports moved there (and persistence off), the shipped acl, the
    password files from the shipped make-passwords.sh, certificates from the test PKI."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, self.tls_port = free_port(), free_port()
        shutil.copy(SHIPPED / "acl", directory / "acl")
        tls = make_tls(directory / "pki")
        certs = directory / "certs"
        certs.mkdir()
        for source, name in (
            (tls.ca, "ca.crt"),
            (tls.server_cert, "server.crt"),
            (tls.server_key, "server.key"),
        ):
            shutil.copy(source, certs / name)
        self.ca = certs / "ca.crt"
        env = {
            **os.environ,
            "HUBCTL_MQTT_PASSWORD": USERS["hubctl"],
            "OPERATOR_PASSWORD": USERS["operator"],
            "VIEWER_PASSWORD": USERS["viewer"],
        }
        subprocess.run(
            ["sh", str(SHIPPED / "make-passwords.sh"), str(directory)],
            env=env,
            check=True,
            capture_output=True,
        )
        text = (SHIPPED / "mosquitto.conf").read_text(encoding="utf-8")
        text = text.replace("/etc/mosquitto/hubctl/", f"{directory}/")
        text = text.replace("persistence true", "persistence false")
        text = text.replace("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1")
        text = text.replace("listener 8883", f"listener {self.tls_port} 127.0.0.1")
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(text, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "mosquitto.log"

    def start(self) -> None:
        assert MOSQUITTO is not None
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.port, "mosquitto")
            wait_for_port(self.tls_port, "mosquitto (TLS)")
        except RuntimeError:
            self.stop()
            raise AssertionError(self.log.read_text(errors="replace")) from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None

    def tls_client(self, user: str, identifier: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.tls_port,
            username=user,
            password=USERS[user],
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=aiomqtt.TLSParameters(ca_certs=str(self.ca)),
        )


@pytest.fixture
def shipped() -> Iterator[ShippedBroker]:
    if MOSQUITTO is None or PASSWD is None:
        pytest.skip("mosquitto is not installed")
    directory = Path(tempfile.mkdtemp(prefix="hubctl-broker-", dir="/tmp"))  # not tmp_path: mode 0700
    directory.chmod(0o755)
    try:
        b = ShippedBroker(directory)
        if os.geteuid() == 0:  # mosquitto drops to its own user: its server key must be readable to it
            key = directory / "certs" / "server.key"
            shutil.chown(key, group=_BROKER_USER)
            key.chmod(0o640)
        b.start()
        yield b
        b.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_password_files_are_for_the_brokers_user(shipped: ShippedBroker) -> None:
    """mosquitto 2.0 reads them after dropping to its user: root:mosquitto 0640 (as root here)."""
    if os.geteuid() != 0:
        pytest.skip("mosquitto drops to its own user only when started as root")
    for name in ("passwd-hubctl", "passwd"):
        stat = (shipped.dir / name).stat()
        assert stat.st_mode & 0o777 == 0o640, name
        assert stat.st_gid == grp.getgrnam(_BROKER_USER).gr_gid, name
    assert shipped.process is not None
    assert shipped.process.poll() is None  # the broker started with them


def test_the_shipped_broker_binds_client_ids_to_users(shipped: ShippedBroker) -> None:
    clock = Clock()
    api = OperatorApi(
        CFG,
        "127.0.0.1",
        shipped.port,
        state_source=dict,
        username="hubctl",
        password=USERS["hubctl"],
        clock=clock,
    )

    async def main() -> None:
        async with serving(api):
            for _ in range(12):  # a viewer on the network reusing the service's client id
                async with shipped.tls_client("viewer", api.identifier) as viewer:
                    await viewer.subscribe(f"{BASE}/status", qos=1)
                    async with asyncio.timeout(3):
                        async for message in viewer.messages:
                            assert bytes(message.payload) == b"online"
                            break
            await asyncio.sleep(0.5)
            assert api.connected
            assert api.connects == 1  # never knocked off
            # the loopback listener knows the service alone
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    shipped.port,
                    username="viewer",
                    password=USERS["viewer"],
                    identifier=api.identifier,
                ):
                    pass
            await asyncio.sleep(0.5)
            assert api.connects == 1
            # an operator on the network still commands: its reply comes back as before
            async with shipped.tls_client("operator", "dashboard") as op:
                await op.subscribe(f"{BASE}/result", qos=1)
                assert (await command(op, "import_limit_kw", {"value": 600}, "net"))["ok"]

    run(main)
