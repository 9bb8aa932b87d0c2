"""The operator MQTT API against a real mosquitto on a free loopback port, with the shipped ACL.

deploy/mosquitto/acl is used as is; the password file is made with mosquitto_passwd for the test
users. The `state_source` below stands in for the gateway service: it returns a fixed document.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import MOSQUITTO, Mosquitto
from test_commands import CONFIG, KEYS, _within_rules, payloads
from test_modbus_harness import leak_check, run  # noqa: F401 - autouse fixture

from hubctl.config.site import parse_config
from hubctl.core.commands import DEFAULT_MODE_TTL_S
from hubctl.core.types import BatteryMode
from hubctl.service.operator_api import OperatorApi
from hubctl.transport.mqtt import parse_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from hubctl.service.operator_document import AuditRecord

ROOT = Path(__file__).resolve().parents[1]

PASSWD = shutil.which("mosquitto_passwd")
USERS = {"hubctl": "hub-secret", "operator": "op-secret", "viewer": "view-secret"}
CFG = parse_config(CONFIG)
BASE = "hubctl/de-hoek"
STATE_DOC = {
    "mode": "normal",
    "park": {"power_kw": 420.0, "limits": {"import_limit_kw": 800, "import_source": "contract"}},
    "companies": {"bakery": {"power_kw": 100.0, "soc_pct": 50.0}, "offices": {"power_kw": 20.0}},
    "devices": {},
}


class Broker(Mosquitto):
    """mosquitto with a password file and deploy/mosquitto/acl on a free port; restartable on that port."""

    def __init__(self, directory: Path) -> None:
        assert PASSWD is not None
        passwd = directory / "passwd"
        passwd.touch(mode=0o600)
        for user, password in USERS.items():
            subprocess.run([PASSWD, "-b", str(passwd), user, password], check=True, capture_output=True)
        super().__init__(
            directory,
            f"allow_anonymous false\npassword_file {passwd}\nacl_file {ROOT / 'deploy/mosquitto/acl'}\n"
            # as root, mosquitto would switch to user "mosquitto", which cannot read the test's files
            f"user {getpass.getuser()}\n",
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None or PASSWD is None:
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_777_881_600.0  # 2026-05-04 10:00 at the site

    def __call__(self) -> float:
        return self.now


def make_api(broker: Broker, state_file: Path | None, clock: Clock, **kw: Any) -> OperatorApi:
    return OperatorApi(
        kw.pop("cfg", CFG),
        "127.0.0.1",
        broker.port,
        state_source=lambda: STATE_DOC,
        state_file=state_file,
        username="hubctl",
        password=USERS["hubctl"],
        clock=clock,
        **kw,
    )


@contextlib.asynccontextmanager
async def serving(api: OperatorApi) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(api.run(), name="operator-api")
    try:
        await api.wait_connected(5)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def client(broker: Broker, user: str, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    c = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=USERS[user],
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"test-{user}",
    )
    async with c:
        for t in topics:
            await c.subscribe(t, qos=1)
        yield c


def props(
    response_topic: str | None = None, corr: bytes | None = None, client_id: str | None = None
) -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic:
        p.ResponseTopic = response_topic
    if corr is not None:
        p.CorrelationData = corr
    if client_id:
        p.UserProperty = ("client_id", client_id)
    return p


async def next_message(c: aiomqtt.Client, topic: str, timeout_s: float = 3.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout_s):
        async for m in c.messages:
            if m.topic.matches(topic):
                return m
    raise AssertionError("unreachable")


async def command(c: aiomqtt.Client, key: str, payload: Any, cid: str) -> dict[str, Any]:
    body = json.dumps(payload if not isinstance(payload, dict) else {**payload, "id": cid})
    await c.publish(f"{BASE}/set/{key}", body, qos=1)
    while True:
        m = await next_message(c, f"{BASE}/result")
        reply: dict[str, Any] = json.loads(bytes(m.payload))
        if reply["id"] == cid or not isinstance(payload, dict):
            return reply


async def retained(broker: Broker, topic: str, wait_s: float = 0.5) -> dict[str, bytes]:
    """The retained messages on `topic` (a wildcard) now."""
    out: dict[str, bytes] = {}
    async with client(broker, "viewer", topic) as c:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for m in c.messages:
                    if m.retain:
                        out[m.topic.value] = bytes(m.payload)
    return out


# --- tests --------------------------------------------------------------------------------------------------

GOOD = [
    ("import_limit_kw", {"value": 600}, 600.0),
    ("export_limit_kw", {"value": 300}, 300.0),
    ("company/bakery/import_limit_kw", {"value": 150}, 150.0),
    ("company/offices/export_limit_kw", {"value": 25}, 25.0),
    (
        "battery/bakery/mode",
        {"value": {"mode": "discharge", "power_kw": 30}},
        {"mode": "discharge", "power_kw": 30.0},
    ),
    ("battery/cold-store/reserve_soc_pct", {"value": 60}, 60.0),
    ("sharing/key", {"value": "equal"}, {"key": "equal", "shares": {}, "order": []}),
    (
        "schedule",
        {
            "value": {
                "date": "2026-05-05",
                "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400}],
            }
        },
        {"date": "2026-05-05", "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400.0}]},
    ),
]


def test_every_command_kind_is_applied_and_answered(broker: Broker, tmp_path: Path) -> None:
    clock = Clock()
    audits: list[AuditRecord] = []
    api = make_api(broker, tmp_path / "operator.json", clock, audit_sink=audits.append)

    async def main() -> None:
        async with serving(api), client(broker, "operator", f"{BASE}/result", f"{BASE}/reply/#") as op:
            for i, (key, payload, applied) in enumerate(GOOD):
                reply = await command(op, key, payload, f"c{i}")
                assert reply == {
                    "id": f"c{i}",
                    "key": key,
                    "ok": True,
                    "value": applied,
                    "error": None,
                    "expires_at": reply["expires_at"],
                }
            # a bare number, the v5 response topic with its correlation data, and the client id
            await op.publish(
                f"{BASE}/set/import_limit_kw",
                "550",
                qos=1,
                properties=props(f"{BASE}/reply/me", b"\x01corr", "console-7"),
            )
            got = {}
            for _ in range(2):
                m = await next_message(op, f"{BASE}/#")
                got[m.topic.value] = m
            assert set(got) == {f"{BASE}/result", f"{BASE}/reply/me"}
            assert got[f"{BASE}/reply/me"].properties.CorrelationData == b"\x01corr"  # type: ignore[union-attr]
            assert json.loads(bytes(got[f"{BASE}/reply/me"].payload))["value"] == 550
            # get/state republishes the state and answers
            await op.publish(f"{BASE}/get/state", '{"id": "g1"}', qos=1)
            reply = json.loads(bytes((await next_message(op, f"{BASE}/result")).payload))
            assert (reply["id"], reply["ok"]) == ("g1", True)
            await asyncio.sleep(1.1)  # the state publisher's interval
        ov = api.current_overrides(clock.now)
        assert ov.park_import_kw == 550
        assert ov.park_export_kw == 300
        assert ov.company_import_kw == {"bakery": 150}
        assert ov.company_export_kw == {"offices": 25}
        assert ov.battery["bakery"].mode is BatteryMode.DISCHARGE
        assert ov.reserve_soc_pct == {"cold-store": 60}
        assert api.sharing(clock.now) is not None
        park, _ = api.limit_clock(clock.now).at(1_777_993_200.0)  # 2026-05-05 17:00 local
        assert park.import_kw == 400
        assert len(audits) == len(GOOD) + 2
        assert audits[len(GOOD)].client_id == "console-7"

    run(main, timeout_s=20)

    async def after() -> None:
        seen = await retained(broker, f"{BASE}/#")
        assert seen[f"{BASE}/status"] == b"offline"  # a clean shutdown says so itself
        state = json.loads(seen[f"{BASE}/state"])
        assert state["park"]["power_kw"] == 420.0
        assert state["operator"]["import_limit_kw"]["value"] == 550
        assert json.loads(seen[f"{BASE}/company/bakery"]) == {"power_kw": 100.0, "soc_pct": 50.0}
        disc = await retained(broker, "homeassistant/sensor/#")
        park = json.loads(disc["homeassistant/sensor/hubctl_de_hoek/park_power_kw/config"])
        assert park["state_topic"] == f"{BASE}/state"
        assert park["availability_topic"] == f"{BASE}/status"
        assert "homeassistant/sensor/hubctl_de_hoek/bakery_soc_pct/config" in disc

    run(after)


BAD = [
    ("import_limit_kw", b"{", "not valid JSON"),
    ("import_limit_kw", b'{"value": "a lot"}', "must be a number"),
    ("import_limit_kw", b'{"value": 801}', "never raise"),
    ("company/bakery/import_limit_kw", b'{"value": -5}', ">= 0"),
    ("battery/bakery/mode", b'{"value": {"mode": "charge", "power_kw": 1000}}', "at most 100"),
    ("battery/offices/mode", b'{"value": "hold"}', "has no battery"),
    ("company/nobody/import_limit_kw", b'{"value": 1}', "unknown company"),
    ("peak_shaving", b'{"value": 1}', "unknown key"),
    ("import_limit_kw", b'{"value": 600, "ts": 1777881000}', "expired"),
    ("schedule", b'{"value": {"date": "2026-05-01", "windows": []}}', "has passed"),
    ("sharing/key", b'{"value": {"key": "static", "shares": {"x": 1}}}', "unknown company"),
]


def test_bad_commands_are_answered_with_an_error_and_change_nothing(broker: Broker, tmp_path: Path) -> None:
    clock = Clock()
    api = make_api(broker, tmp_path / "operator.json", clock)

    async def main() -> None:
        async with serving(api), client(broker, "operator", f"{BASE}/result") as op:
            assert (await command(op, "import_limit_kw", {"value": 700}, "base"))["ok"]
            before = api.operator_state
            saved = (tmp_path / "operator.json").read_text()
            for key, body, reason in BAD:
                await op.publish(f"{BASE}/set/{key}", body, qos=1)
                reply = json.loads(bytes((await next_message(op, f"{BASE}/result")).payload))
                assert reply["ok"] is False
                assert reply["key"] == key
                assert reason in reply["error"], reply
                assert api.operator_state is before
            # a retained command is refused (it would be applied again after every reconnect)
            await op.publish(f"{BASE}/set/import_limit_kw", b"100", qos=1, retain=True)
            reply = json.loads(bytes((await next_message(op, f"{BASE}/result")).payload))
            assert "retained" in reply["error"]
            await op.publish(f"{BASE}/set/import_limit_kw", b"", qos=1, retain=True)  # clear it
            await next_message(op, f"{BASE}/result")
            assert api.operator_state is before
            assert (tmp_path / "operator.json").read_text() == saved

    run(main)


def test_a_viewers_command_is_never_applied(broker: Broker) -> None:
    clock = Clock()
    api = make_api(broker, None, clock)

    async def main() -> None:
        async with serving(api), client(broker, "operator", f"{BASE}/result") as op:
            async with client(broker, "viewer") as viewer:
                await viewer.publish(f"{BASE}/set/import_limit_kw", '{"value": 10, "id": "v"}', qos=1)
                await viewer.publish(f"{BASE}/get/state", '{"id": "v2"}', qos=1)
            await op.publish(f"{BASE}/get/state", '{"id": "after"}', qos=1)
            reply = json.loads(bytes((await next_message(op, f"{BASE}/result")).payload))
            assert reply["id"] == "after"  # the viewer's messages never reached the service
        assert api.current_overrides(clock.now).park_import_kw is None

    run(main)


def test_manual_mode_expires_and_persistence_across_a_restart(broker: Broker, tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "operator.json"

    async def first() -> None:
        api = make_api(broker, path, clock)
        async with serving(api), client(broker, "operator", f"{BASE}/result") as op:
            assert (await command(op, "import_limit_kw", {"value": 650}, "a"))["ok"]
            assert (await command(op, "battery/bakery/mode", {"value": "hold"}, "b"))["ok"]
            assert (await command(op, "battery/cold-store/mode", {"value": "hold", "ttl_s": 3600}, "c"))["ok"]
        assert api.current_overrides(clock.now).battery.keys() == {"bakery", "cold-store"}
        assert not api.current_overrides(clock.now + DEFAULT_MODE_TTL_S).battery.get("bakery")

    run(first)
    clock.now += 60
    restarted = make_api(broker, path, clock)  # a restart within the TTL: everything is back
    ov = restarted.current_overrides(clock.now)
    assert ov.park_import_kw == 650
    assert ov.battery.keys() == {"bakery", "cold-store"}
    clock.now += DEFAULT_MODE_TTL_S  # a restart after the bakery's mode expired: it does not come back
    later = make_api(broker, path, clock)
    ov = later.current_overrides(clock.now)
    assert ov.park_import_kw == 650
    assert ov.battery.keys() == {"cold-store"}


def test_broker_restart_reconnects_resubscribes_republishes_and_holds_the_cap(broker: Broker) -> None:
    clock = Clock()
    api = make_api(broker, None, clock)

    async def main() -> None:
        async with serving(api) as task:
            async with client(broker, "operator", f"{BASE}/result") as op:
                assert (await command(op, "import_limit_kw", {"value": 500}, "a"))["ok"]
            broker.stop()
            await asyncio.sleep(0.5)
            assert not api.connected
            assert api.current_overrides(clock.now).park_import_kw == 500  # held without a broker
            broker.start()
            t0 = time.monotonic()
            await api.wait_connected(5)
            seen: dict[str, bytes] = {}
            while time.monotonic() - t0 < 5 and not {f"{BASE}/status", f"{BASE}/state"} <= seen.keys():
                seen.update(await retained(broker, f"{BASE}/#", wait_s=0.2))
            assert seen[f"{BASE}/status"] == b"online"
            assert json.loads(seen[f"{BASE}/state"])["operator"]["import_limit_kw"]["value"] == 500
            assert time.monotonic() - t0 < 5
            async with client(broker, "operator", f"{BASE}/result") as op:  # subscriptions renewed
                assert (await command(op, "import_limit_kw", {"value": 450}, "b"))["ok"]
            assert not task.done()
        assert api.connects == 2

    run(main, timeout_s=30)


def test_retained_topics_of_ids_that_left_the_config_are_cleared(broker: Broker) -> None:
    clock = Clock()
    stale = [
        f"{BASE}/company/closed-down",
        f"{BASE}/device/old-meter",
        "homeassistant/sensor/hubctl_de_hoek/closed_down_power_kw/config",
    ]

    async def main() -> None:
        async with client(broker, "hubctl") as c:
            for t in stale:
                await c.publish(t, b'{"power_kw": 1}', qos=1, retain=True)
        api = make_api(broker, None, clock)
        async with serving(api):
            await asyncio.sleep(0.5)
            left = await retained(broker, "#")
        for t in stale:
            assert t not in left
        assert f"{BASE}/company/bakery" in left

    run(main)


def test_tls_and_credentials_from_config() -> None:
    data = {**CONFIG, "mqtt": {"url": "mqtts://broker.park", "ca_file": "/etc/ca.crt", "password_env": "PW"}}
    api = OperatorApi.from_config(
        parse_config(data),
        state_source=dict,
        state_file=None,
        env={"HUBCTL_MQTT_USERNAME": "hubctl", "PW": "s"},
    )
    assert (api.host, api.port) == ("broker.park", 8883)
    assert api._credentials == ("hubctl", "s")
    assert api._tls is not None
    assert api._tls.ca_certs == "/etc/ca.crt"
    assert parse_url("mqtt://10.0.0.2").port == 1883
    with pytest.raises(ValueError, match="not an MQTT broker URL"):
        parse_url("http://x")


# --- fuzz through the broker --------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from([*KEYS, "battery/cold-store/mode"]), payloads), min_size=10, max_size=30
    )
)
def test_fuzz_every_message_gets_exactly_one_reply(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    clock = Clock()
    api = make_api(broker, None, clock)
    logging.getLogger("hubctl.audit").setLevel(logging.ERROR)

    async def main() -> None:
        async with serving(api) as task, client(broker, "operator", f"{BASE}/reply/fuzz") as op:
            for i, (key, body) in enumerate(messages):
                await op.publish(
                    f"{BASE}/set/{key}", body, qos=1, properties=props(f"{BASE}/reply/fuzz", str(i).encode())
                )
            counts: dict[bytes, int] = {}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5):
                    async for m in op.messages:
                        corr = m.properties.CorrelationData  # type: ignore[union-attr]
                        counts[corr] = counts.get(corr, 0) + 1
                        if len(counts) == len(messages):
                            await asyncio.sleep(0.2)  # any duplicate would arrive now
            assert counts == {str(i).encode(): 1 for i in range(len(messages))}
            assert not task.done()
            _within_rules(api.operator_state, CFG, clock.now)

    run(main, timeout_s=20)
