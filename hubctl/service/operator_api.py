"""The operator MQTT API: state out, answered commands in (docs/mqtt.md).

An `OperatorApi` owns one MQTT v5 connection (aiomqtt 2.5) under
`<prefix>/<site>/` (prefix "hubctl" by default) and is embedded by the gateway
service: `run()` in a named task, `current_overrides(now)` into every control
`Snapshot`, `notify_state()` after every cycle. Validation lives in the pure
`hubctl.core.commands`, the documents it publishes (state, audit records, Home
Assistant discovery) are built in `hubctl.service.operator_document`, and the
connection (URL, reconnect, last will, resubscribe) is
`hubctl.transport.mqtt.MqttSession`, the one the MQTT device hub runs too (the
differences between the two are listed there). This module is the shell:
commands in, replies and state out.

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
- **Hostile payloads** (issue #13): the parse is bounded in `hubctl.core.commands` (size,
  depth); whatever still goes wrong while one command is handled is logged with its traceback
  and answered with an error reply, so the message loop, `status` and the other commands go on.
  A retained `set/` or `get/` message is refused and then cleared (an empty retained message on
  its topic), so it is not refused again at every reconnect; the command subscriptions are
  no-local, so the clearing does not come back as a command.
- **A damaged state file** (not UTF-8, not JSON, not a version-1 state: `DamagedStateError`)
  never keeps the service from starting: the API starts with the configured defaults (no
  operator settings), moves the file aside to `operator.json.damaged-<UTC time>`, logs it at
  ERROR and publishes it in the retained `state` document as `operator_file` (`damaged`: why,
  `moved_to`, `at`) until the next restart. A file that cannot be read at all (permissions) is
  logged and left where it is.
- **Audit**: every command, accepted or not, is logged on "hubctl.audit" and
  passed to the optional `audit_sink` (the time-series store), with the
  sender's client id when it gave one (MQTT v5 user property `client_id`:
  a broker does not tell subscribers who published).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hubctl.config.resolve import mqtt_broker
from hubctl.core.commands import (
    DamagedStateError,
    OperatorState,
    Outcome,
    Reply,
    apply_command,
    dump_state,
    load_state,
)
from hubctl.service.operator_document import (
    audit_record,
    compact_json,
    discovery_messages,
    discovery_node,
    known_ids,
    retained_is_stale,
    section_messages,
    write_atomic,
)
from hubctl.transport.mqtt import (
    ClientOptions,
    MqttSession,
    SessionUser,
    parse_url,
    payload_bytes,
    tls_parameters,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from hubctl.config.resolve import BrokerSettings
    from hubctl.config.site import SiteConfig
    from hubctl.core.limits import LimitClock
    from hubctl.core.sharing import SharingRule
    from hubctl.core.types import Overrides
    from hubctl.service.operator_document import AuditRecord
    from hubctl.transport.mqtt import Subscription

log = logging.getLogger("hubctl.operator_api")  # the name the journal has always shown
audit_log = logging.getLogger("hubctl.audit")
# Small packets out at once: with Nagle's algorithm a reply waits for the broker's delayed ACK (~40 ms)
_NODELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def _user_property(props: Properties | None, name: str) -> str | None:
    for k, v in getattr(props, "UserProperty", None) or []:
        if k == name:
            return str(v)[:128]
    return None


class OperatorApi(SessionUser):
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
        backoff, status = (backoff_initial_s, backoff_max_s), f"{self.base}/status"
        options = ClientOptions(
            self.identifier,
            self._credentials,
            timeout_s,
            keepalive_s,
            backoff,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls=tls,
            socket_options=_NODELAY,
        )
        self._session = MqttSession(
            host, port, options, log=log, subscriptions=self._subscriptions, status_topic=status
        )
        self._dirty = asyncio.Event()
        self._published: dict[str, bytes] = {}
        self._last_publish = -1e9
        self.revision = 0  # +1 per accepted change: the service rebuilds its LimitClock when it moves
        self._state = OperatorState()
        self.file_problem: dict[str, Any] | None = None  # a damaged state file, for `state`
        if state_file is not None:
            self._state = self._load(state_file)
        self._known = known_ids(cfg)

    @classmethod
    def from_config(
        cls,
        cfg: SiteConfig,
        *,
        state_source: Callable[[], Mapping[str, Any] | None],
        state_file: Path | None,
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        broker: BrokerSettings | None = None,
        audit_sink: Callable[[AuditRecord], None] | None = None,
        identifier: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> OperatorApi:
        """On the site's broker: `broker`, else `hubctl.config.resolve.mqtt_broker(cfg, url, env)`
        (the one broker configuration of the service: URL, TLS files, credentials).

        `clock`: the wall clock that TTLs and command ages are judged by (the
        service passes its own, which runs faster under `--speed`).
        """
        env = os.environ if env is None else env
        mq = cfg.mqtt
        settings = broker or mqtt_broker(cfg, url, env)
        if settings is None:
            raise ValueError("no MQTT broker configured: set mqtt.url or service.mqtt_url")
        parsed = parse_url(settings.url)
        tls = tls_parameters(
            parsed, ca_file=settings.ca_file, cert_file=settings.cert_file, key_file=settings.key_file
        )
        return cls(
            cfg,
            parsed.host,
            parsed.port,
            state_source=state_source,
            state_file=state_file,
            username=settings.username,
            password=settings.password,
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

    async def wait_connected(self, timeout_s: float) -> None:
        await self._session.wait_connected(timeout_s)

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

    # --- the connection (hubctl.transport.mqtt.MqttSession) -----------------------------------------------

    async def run(self) -> None:
        """Connect, serve and reconnect until cancelled; on cancellation publish "offline" and disconnect."""
        await self._session.run(self._serve, on_connect=self._on_connect)

    def _subscriptions(self) -> list[Subscription]:
        # renewed after every connect; with the retain flag as published, so that a retained command
        # is recognised (and refused) also when it arrives live
        # no-local: the empty retained message that clears a refused retained command is our own
        commands = SubscribeOptions(qos=1, retainAsPublished=True, noLocal=True)
        own = SubscribeOptions(qos=1, noLocal=True)  # retained leftovers only, not our own publishes
        out: list[Subscription] = [(f"{self.base}/set/#", commands), (f"{self.base}/get/#", commands)]
        out += [(f"{self.base}/company/+", own), (f"{self.base}/device/+", own)]
        if self.discovery_prefix is not None:
            out.append((f"{self.discovery_prefix}/sensor/{discovery_node(self.cfg)}/+/config", own))
        return out

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        """After the subscriptions and "online": discovery, and the state published in full again."""
        if self.discovery_prefix is not None:
            for topic, body in discovery_messages(self.cfg, self.base, self.discovery_prefix):
                await client.publish(topic, body, qos=1, retain=True)
        self._published.clear()

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._dirty.set()
        self._last_publish = -1e9
        publisher = asyncio.create_task(
            self._publisher(client), name=f"operator-api state {self.cfg.site.id}"
        )
        try:
            async for message in client.messages:
                await self._dispatch(client, message)
        except asyncio.CancelledError:
            await self._session.publish_offline(2.0)
            raise
        finally:
            publisher.cancel()
            await asyncio.wait([publisher])

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
        if self.file_problem is not None:
            doc["operator_file"] = self.file_problem
        await client.publish(f"{self.base}/state", compact_json(doc), qos=1, retain=True)
        for topic, body in section_messages(doc, self.base, self._known):
            if self._published.get(topic) != body:
                await client.publish(topic, body, qos=1, retain=True)
                self._published[topic] = body

    # --- messages -----------------------------------------------------------------------------------------

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = payload_bytes(message.payload)
        rel = topic.removeprefix(self.base + "/")
        if rel.startswith("set/"):
            await self._command(client, message, rel.removeprefix("set/"), payload)
        elif rel.startswith("get/"):
            await self._command(client, message, rel, payload)
        elif message.retain and payload:
            await self._clean(client, topic)

    async def _clean(self, client: aiomqtt.Client, topic: str) -> None:
        """Clear a retained topic of an id that left the config (or a discovery entry no longer made)."""
        if retained_is_stale(self.cfg, self.base, self.discovery_prefix, self._known, topic):
            log.info("clearing retained %s: no longer in the config", topic)
            await client.publish(topic, b"", qos=1, retain=True)

    async def _command(
        self, client: aiomqtt.Client, message: aiomqtt.Message, key: str, payload: bytes
    ) -> None:
        now = self.clock()
        try:
            outcome = apply_command(self.cfg, self._state, key, payload, now, retained=message.retain)
        except Exception as exc:  # whatever a check did not foresee: an error reply, never a dead API
            log.exception("command %s: not handled", key)
            error = f"not applied: the command could not be handled ({type(exc).__name__})"
            outcome = Outcome(Reply(None, key, ok=False, error=error), self._state, changed=False)
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
        client_id = _user_property(props, "client_id")
        self._audit(audit_record(now, message.topic.value, key, payload, reply, client_id))
        body = reply.to_json()
        await client.publish(f"{self.base}/result", body, qos=1)
        response_topic = getattr(props, "ResponseTopic", None)
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            corr = getattr(props, "CorrelationData", None)
            if corr is not None:
                out.CorrelationData = corr
            await client.publish(str(response_topic), body, qos=1, properties=out)
        if message.retain:  # refused; cleared so that it is not refused again at every reconnect
            log.info("clearing retained command %s", message.topic.value)
            await client.publish(message.topic.value, b"", qos=1, retain=True)
        if outcome.changed or (key == "get/state" and reply.ok):
            self._dirty.set()
            if key == "get/state":
                self._published.clear()

    def _audit(self, record: AuditRecord) -> None:
        sender = record.client_id or "?"
        if record.ok:
            audit_log.info(
                "command %s from %s id=%s accepted: %s", record.key, sender, record.command_id, record.payload
            )
        else:
            audit_log.warning(
                "command %s from %s id=%s rejected: %s (payload %r)",
                record.key,
                sender,
                record.command_id,
                record.error,
                record.payload,
            )
        if self.audit_sink is not None:
            try:
                self.audit_sink(record)
            except Exception:
                log.exception("audit sink failed")

    # --- persistence --------------------------------------------------------------------------------------

    def _load(self, path: Path) -> OperatorState:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return OperatorState()
        except OSError as exc:
            log.error("cannot read %s: %s; starting without operator settings", path, exc)  # noqa: TRY400
            return OperatorState()
        try:
            state, dropped = load_state(raw.decode("utf-8"), self.cfg, self.clock())
        except UnicodeDecodeError as exc:
            return self._damaged(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
        except DamagedStateError as exc:
            return self._damaged(path, str(exc))
        for line in dropped:
            log.info("operator setting not restored: %s", line)
        if state.settings:
            log.info("restored %d operator setting(s) from %s", len(state.settings), path)
        return state

    def _damaged(self, path: Path, why: str) -> OperatorState:
        """A damaged state file: moved aside, logged, published; the configured defaults hold."""
        now = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        try:
            path.replace(aside)
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is the message
                "%s is damaged (%s) and cannot be moved aside (%s); starting without operator settings",
                path,
                why,
                exc.strerror,
            )
            moved: str | None = None
        else:
            log.error(
                "%s is damaged (%s): moved aside to %s; starting without operator settings "
                "(the configured caps and modes hold)",
                path,
                why,
                aside.name,
            )
            moved = str(aside)
        self.file_problem = {"file": str(path), "damaged": why, "moved_to": moved, "at": now}
        return OperatorState()

    def _save(self, state: OperatorState) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, dump_state(state))
