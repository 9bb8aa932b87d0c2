"""The operator MQTT API: state out, answered commands in (docs/mqtt.md).

An `OperatorApi` owns one MQTT v5 connection (aiomqtt 2.5) under
`<prefix>/<site>/` (prefix "hubctl" by default) and is embedded by the gateway
service: `run()` in a named task, `current_overrides(now)` into every control
`Snapshot`, `notify_state()` after every cycle. Validation lives in the pure
`hubctl.commands`; this module does the I/O around it.

Decisions:

- **status**: retained "online" after every connect; the last will says
  "offline" for an unclean loss, and a clean shutdown (cancelling `run()`)
  publishes "offline" itself (a clean disconnect does not send the will).
- **Reconnect** with capped, jittered backoff (0.25 s doubling to 2 s, so a
  restarted broker sees the service again within a few seconds); after every
  connect the subscriptions are renewed (the broker forgot them), status,
  discovery and the full state are published again. The operator settings are
  held locally meanwhile: the controller keeps applying them without a broker.
- **Commands** are handled one at a time in arrival order; every one gets
  exactly one reply on `result` and, if the sender gave an MQTT v5 response
  topic, one on that topic too, with its correlation data. An accepted change
  is written to the state file (temporary file, fsync, rename, fsync of the
  directory) before the reply goes out, so an acknowledged setting survives a
  crash.
- **State** is published retained at most once per `min_interval_s` (1 s):
  `state` (the whole document), `company/<id>` and `device/<id>` (only when
  their content changed since the last connect). Retained `company/`,
  `device/` and discovery topics of ids that left the config are cleared
  (an empty retained message) when the broker hands them over on subscribe.
- **Audit**: every command, accepted or not, is logged on "hubctl.audit" and
  passed to the optional `audit_sink` (the time-series store), with the
  sender's client id when it gave one (MQTT v5 user property `client_id`:
  a broker does not tell subscribers who published).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hubctl.core.commands import OperatorState, Reply, apply_command, dump_state, load_state
from hubctl.transport.backoff import backoff_s

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from hubctl.config.site import SiteConfig
    from hubctl.core.control import CompanyReading, Decision, Overrides
    from hubctl.core.limits import LimitClock
    from hubctl.core.sharing import SharingRule

log = logging.getLogger("hubctl.operator_api")  # the name the journal has always shown
audit_log = logging.getLogger("hubctl.audit")

_AUDIT_PAYLOAD_CHARS: Final = 512
# Small packets out at once: with Nagle's algorithm a reply waits for the broker's delayed ACK (~40 ms)
_NODELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One command as received and answered (for the journal and the time-series store)."""

    ts_utc: float
    topic: str
    key: str
    client_id: str | None  # from the MQTT v5 user property "client_id", when the sender set one
    payload: str  # as received, decoded leniently and cut to 512 characters
    ok: bool
    error: str | None
    value: Any  # as applied
    command_id: str | None


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    tls: bool


def parse_url(url: str) -> Broker:
    """mqtt://host[:1883], mqtts://host[:8883] (TLS) or host[:port]."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"} or not parts.hostname:
        raise ValueError(f"not an MQTT broker URL: {url!r} (expected mqtt://host:port or mqtts://host:port)")
    tls = parts.scheme in {"mqtts", "ssl"}
    return Broker(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def state_document(
    cfg: SiteConfig,
    ts_utc: float,
    decision: Decision,
    readings: Sequence[CompanyReading],
    devices: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The state a service publishes, from one control cycle (a pure helper for the `state_source`).

    Units in names, + import / + discharge, None where not available.
    """

    def lim(li: Any) -> dict[str, Any]:
        return {
            "import_limit_kw": li.import_kw,
            "import_source": li.import_source,
            "export_limit_kw": li.export_kw,
            "export_source": li.export_source,
        }

    grid = [r.grid_kw for r in readings]
    park_kw = None if any(g is None for g in grid) else sum(g for g in grid if g is not None)
    companies: dict[str, Any] = {}
    for i, (c, r) in enumerate(zip(cfg.companies, readings, strict=True)):
        own = decision.company_limits.get(c.id)
        companies[c.id] = {
            "power_kw": r.grid_kw,
            "pv_kw": r.pv_kw,
            "battery_kw": r.battery_kw,
            "soc_pct": r.soc_pct,
            "grid_age_s": r.grid_age_s,
            "battery_setpoint_kw": decision.battery_setpoint_kw[i],
            "pv_limit_kw": decision.pv_limit_kw[i],
            "limits": lim(own) if own is not None else None,
        }
    return {
        "ts": ts_utc,
        "site": cfg.site.id,
        "mode": decision.mode,
        "reason": decision.reason,
        "park": {"power_kw": park_kw, "limits": lim(decision.park_limits)},
        "companies": companies,
        "devices": {k: dict(v) for k, v in (devices or {}).items()},
    }


def write_atomic(path: Path, text: str) -> None:
    """Write `text` so that `path` holds either the old or the new content, even after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _user_property(props: Properties | None, name: str) -> str | None:
    for k, v in getattr(props, "UserProperty", None) or []:
        if k == name:
            return str(v)[:128]
    return None


class OperatorApi:
    """State publisher and command handler on one MQTT connection; see the module docstring."""

    def __init__(
        self,
        cfg: SiteConfig,
        host: str,
        port: int = 1883,
        *,
        state_source: Callable[[], Mapping[str, Any] | None],
        state_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: aiomqtt.TLSParameters | None = None,
        identifier: str | None = None,
        topic_prefix: str = "hubctl",
        discovery_prefix: str | None = "homeassistant",
        audit_sink: Callable[[AuditRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
        min_interval_s: float = 1.0,
        timeout_s: float = 5.0,
        keepalive_s: int = 30,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self.host, self.port = host, port
        self.base = f"{topic_prefix}/{cfg.site.id}"
        self.discovery_prefix = discovery_prefix
        self.state_source = state_source
        self.state_file = state_file
        self._credentials = (username, password)
        self._tls = tls
        self.identifier = identifier or f"hubctl-{cfg.site.id}-api"
        self.audit_sink = audit_sink
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = random.Random()  # noqa: S311 - jitter
        self._dirty = asyncio.Event()
        self._connected = asyncio.Event()
        self._published: dict[str, bytes] = {}
        self._last_publish = -1e9
        self.connects = 0
        self.revision = 0  # +1 per accepted change: the service rebuilds its LimitClock when it moves
        self._state = OperatorState()
        if state_file is not None:
            self._state = self._load(state_file)
        self._known = {
            "company": {c.id for c in cfg.companies},
            "device": {d.id for d in cfg.devices},
        }

    @classmethod
    def from_config(
        cls,
        cfg: SiteConfig,
        *,
        state_source: Callable[[], Mapping[str, Any] | None],
        state_file: Path | None,
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        audit_sink: Callable[[AuditRecord], None] | None = None,
        identifier: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> OperatorApi:
        """From the `mqtt:` section (URL default `service.mqtt_url`); user and password from `env`.

        `clock`: the wall clock that TTLs and command ages are judged by (the
        service passes its own, which runs faster under `--speed`).
        """
        env = os.environ if env is None else env
        mq = cfg.mqtt
        url = url or (mq.url if mq else None) or cfg.service.mqtt_url
        if url is None:
            raise ValueError("no MQTT broker configured: set mqtt.url or service.mqtt_url")
        broker = parse_url(url)
        tls = None
        if broker.tls or (mq is not None and mq.ca_file is not None):
            tls = aiomqtt.TLSParameters(
                ca_certs=mq.ca_file if mq else None,
                certfile=mq.cert_file if mq else None,
                keyfile=mq.key_file if mq else None,
            )
        user_env = mq.username_env if mq else "HUBCTL_MQTT_USERNAME"
        pass_env = mq.password_env if mq else "HUBCTL_MQTT_PASSWORD"
        return cls(
            cfg,
            broker.host,
            broker.port,
            state_source=state_source,
            state_file=state_file,
            username=env.get(user_env) or None,
            password=env.get(pass_env) or None,
            tls=tls,
            topic_prefix=mq.topic_prefix if mq else "hubctl",
            discovery_prefix=mq.discovery_prefix if mq else "homeassistant",
            audit_sink=audit_sink,
            identifier=identifier,
            clock=clock,
        )

    # --- what the service reads ---------------------------------------------------------------------------

    @property
    def operator_state(self) -> OperatorState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    def current_overrides(self, now: float) -> Overrides:
        """The operator settings in force at `now` (expired ones dropped), for the control `Snapshot`."""
        return self._state.overrides(now)

    def limit_clock(self, now: float) -> LimitClock:
        """The LimitClock with the operator's day schedules merged in (rebuild when `revision` moves)."""
        return self._state.limit_clock(self.cfg, now)

    def sharing(self, now: float) -> SharingRule | None:
        """The operator's sharing key, None: the configured one."""
        return self._state.sharing(now)

    def notify_state(self) -> None:
        """A new state is available: published within `min_interval_s`."""
        self._dirty.set()

    # --- the connection ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve and reconnect until cancelled; on cancellation publish "offline" and disconnect."""
        failures = 0
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                failures += 1
                if failures == 1:
                    log.warning("mqtt://%s:%d: %s; reconnecting with backoff", self.host, self.port, exc)
                await asyncio.sleep(
                    backoff_s(
                        failures, self._rng.random(), initial_s=self._backoff[0], max_s=self._backoff[1]
                    )
                )
            else:  # pragma: no cover - the message loop only ends with an error or cancellation
                failures = 0

    async def _session(self) -> None:
        status = f"{self.base}/status"
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self._credentials[0],
            password=self._credentials[1],
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(status, "offline", qos=1, retain=True),
            tls_params=self._tls,
            timeout=self.timeout_s,
            keepalive=self.keepalive_s,
            socket_options=_NODELAY,
        )
        try:
            async with client:
                await self._on_connect(client)
                publisher = asyncio.create_task(
                    self._publisher(client), name=f"operator-api state {self.cfg.site.id}"
                )
                try:
                    async for message in client.messages:
                        await self._dispatch(client, message)
                except asyncio.CancelledError:
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        await client.publish(status, "offline", qos=1, retain=True, timeout=2.0)
                    raise
                finally:
                    publisher.cancel()
                    await asyncio.wait([publisher])
        finally:
            self._connected.clear()

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # renewed after every connect; with the retain flag as published, so that a retained command
        # is recognised (and refused) also when it arrives live
        commands = SubscribeOptions(qos=1, retainAsPublished=True)
        for topic in (f"{self.base}/set/#", f"{self.base}/get/#"):
            await client.subscribe(topic, options=commands)
        own = SubscribeOptions(qos=1, noLocal=True)  # retained leftovers only, not our own publishes
        for topic in (f"{self.base}/company/+", f"{self.base}/device/+"):
            await client.subscribe(topic, options=own)
        if self.discovery_prefix is not None:
            await client.subscribe(f"{self.discovery_prefix}/sensor/{self._node}/+/config", options=own)
        await client.publish(f"{self.base}/status", "online", qos=1, retain=True)
        await self._publish_discovery(client)
        self._published.clear()
        self.connects += 1
        if self.connects > 1:
            log.info("mqtt://%s:%d: connected again, subscriptions renewed", self.host, self.port)
        self._connected.set()
        self._dirty.set()
        self._last_publish = -1e9

    async def _publisher(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            wait = self._last_publish + self.min_interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            self._last_publish = loop.time()
            await self._publish_state(client)

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        now = self.clock()
        try:
            doc = dict(self.state_source() or {})
        except Exception:
            log.exception("state_source failed: state not published")
            return
        doc.setdefault("ts", now)
        doc["operator"] = self._state.describe(now)
        full = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()
        await client.publish(f"{self.base}/state", full, qos=1, retain=True)
        for kind, name in (("company", "companies"), ("device", "devices")):
            section = doc.get(name) or {}
            for item_id, item in section.items():
                if item_id not in self._known[kind]:
                    continue
                topic = f"{self.base}/{kind}/{item_id}"
                body = json.dumps(item, separators=(",", ":"), allow_nan=False, default=str).encode()
                if self._published.get(topic) != body:
                    await client.publish(topic, body, qos=1, retain=True)
                    self._published[topic] = body

    # --- messages -----------------------------------------------------------------------------------------

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = _payload_bytes(message.payload)
        rel = topic.removeprefix(self.base + "/")
        if rel.startswith("set/"):
            await self._command(client, message, rel.removeprefix("set/"), payload)
        elif rel.startswith("get/"):
            await self._command(client, message, rel, payload)
        elif message.retain and payload:
            await self._clean(client, topic, rel)

    async def _clean(self, client: aiomqtt.Client, topic: str, rel: str) -> None:
        """Clear a retained topic of an id that left the config (or a discovery entry no longer made)."""
        parts = rel.split("/")
        stale = False
        if len(parts) == 2 and parts[0] in self._known:
            stale = parts[1] not in self._known[parts[0]]
        elif self.discovery_prefix is not None and topic.startswith(self.discovery_prefix + "/"):
            stale = topic not in self._discovery_topics()
        if stale:
            log.info("clearing retained %s: no longer in the config", topic)
            await client.publish(topic, b"", qos=1, retain=True)

    async def _command(
        self, client: aiomqtt.Client, message: aiomqtt.Message, key: str, payload: bytes
    ) -> None:
        now = self.clock()
        outcome = apply_command(self.cfg, self._state, key, payload, now, retained=message.retain)
        reply = outcome.reply
        if outcome.changed:
            try:
                self._save(outcome.state)
            except OSError as exc:
                log.exception("cannot write %s", self.state_file)
                reply = Reply(
                    reply.id, key, ok=False, error=f"not applied: the state could not be saved ({exc})"
                )
            else:
                self._state = outcome.state
                self.revision += 1
        props = message.properties
        self._audit(now, message.topic.value, key, payload, reply, _user_property(props, "client_id"))
        body = reply.to_json()
        await client.publish(f"{self.base}/result", body, qos=1)
        response_topic = getattr(props, "ResponseTopic", None)
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            corr = getattr(props, "CorrelationData", None)
            if corr is not None:
                out.CorrelationData = corr
            await client.publish(str(response_topic), body, qos=1, properties=out)
        if outcome.changed or key == "get/state":
            self._dirty.set()
            if key == "get/state":
                self._published.clear()

    def _audit(
        self, now: float, topic: str, key: str, payload: bytes, reply: Reply, client_id: str | None
    ) -> None:
        text = payload.decode("utf-8", errors="replace")[:_AUDIT_PAYLOAD_CHARS]
        record = AuditRecord(now, topic, key, client_id, text, reply.ok, reply.error, reply.value, reply.id)
        if reply.ok:
            audit_log.info("command %s from %s id=%s accepted: %s", key, client_id or "?", reply.id, text)
        else:
            audit_log.warning(
                "command %s from %s id=%s rejected: %s (payload %r)",
                key,
                client_id or "?",
                reply.id,
                reply.error,
                text,
            )
        if self.audit_sink is not None:
            try:
                self.audit_sink(record)
            except Exception:
                log.exception("audit sink failed")

    # --- persistence --------------------------------------------------------------------------------------

    def _load(self, path: Path) -> OperatorState:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return OperatorState()
        except OSError as exc:
            log.error("cannot read %s: %s; starting without operator settings", path, exc)  # noqa: TRY400
            return OperatorState()
        state, dropped = load_state(text, self.cfg, self.clock())
        for line in dropped:
            log.info("operator setting not restored: %s", line)
        if state.settings:
            log.info("restored %d operator setting(s) from %s", len(state.settings), path)
        return state

    def _save(self, state: OperatorState) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, dump_state(state))

    # --- Home Assistant discovery -------------------------------------------------------------------------

    @property
    def _node(self) -> str:
        return f"hubctl_{self.cfg.site.id.replace('-', '_')}"

    def _sensors(self) -> list[tuple[str, str, str, str, str | None]]:
        """(object id, name, state topic, value template, device class) per sensor."""
        state = f"{self.base}/state"
        out: list[tuple[str, str, str, str, str | None]] = [
            ("park_power_kw", "Park power", state, "{{ value_json.park.power_kw }}", "power"),
            (
                "park_import_limit_kw",
                "Park import limit",
                state,
                "{{ value_json.park.limits.import_limit_kw }}",
                "power",
            ),
        ]
        for c in self.cfg.companies:
            slug = c.id.replace("-", "_")
            topic = f"{self.base}/company/{c.id}"
            label = c.name or c.id
            out.append((f"{slug}_power_kw", f"{label} power", topic, "{{ value_json.power_kw }}", "power"))
            if c.pv is not None:
                out.append((f"{slug}_pv_kw", f"{label} PV", topic, "{{ value_json.pv_kw }}", "power"))
            if c.battery is not None:
                out.append(
                    (f"{slug}_battery_kw", f"{label} battery", topic, "{{ value_json.battery_kw }}", "power")
                )
                out.append((f"{slug}_soc_pct", f"{label} SoC", topic, "{{ value_json.soc_pct }}", "battery"))
        return out

    def _discovery_topics(self) -> set[str]:
        return {f"{self.discovery_prefix}/sensor/{self._node}/{oid}/config" for oid, *_ in self._sensors()}

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        if self.discovery_prefix is None:
            return
        device = {
            "identifiers": [self._node],
            "name": self.cfg.site.name or f"hubctl {self.cfg.site.id}",
            "manufacturer": "hubctl",
        }
        for oid, name, topic, template, dev_class in self._sensors():
            config = {
                "name": name,
                "unique_id": f"{self._node}_{oid}",
                "state_topic": topic,
                "value_template": template,
                "unit_of_measurement": "%" if dev_class == "battery" else "kW",
                "device_class": dev_class,
                "state_class": "measurement",
                "availability_topic": f"{self.base}/status",
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
            }
            body = json.dumps(config, separators=(",", ":")).encode()
            await client.publish(
                f"{self.discovery_prefix}/sensor/{self._node}/{oid}/config", body, qos=1, retain=True
            )
