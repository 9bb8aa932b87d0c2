# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Devices that publish readings over MQTT (P1/DSMR readers, Shelly, Tasmota, batteries with an MQTT API).

Config (`hubctl.config.devices.MqttDevice`): per point a topic, where the number
is in the payload (`json_path`, dotted into a JSON object, digits index a
list: "ENERGY.Power", "emeters.0.power"; none: the payload is a bare number),
a `scale` to the point's unit (negative to flip a sign) and `stale_after_s`.

Decisions:

- **One connection per broker** (`MqttHub`, aiomqtt 2.5) for every MQTT device,
  in one named task. The connection is `hubctl.transport.mqtt.MqttSession`, the
  one the operator API runs too: it **resubscribes after every reconnect**
  (subscriptions are lost with the session) and reconnects with the same capped,
  jittered backoff as Modbus (`hubctl.transport.backoff`). With `status_topic` it
  publishes a retained "online" on connect and "offline" itself before a clean
  disconnect (the last will covers only an unclean one). **MQTT 3.1.1** (what
  P1 readers, Shelly and Tasmota speak; the operator API uses v5). **The same
  broker configuration as the operator API** (`MqttHub.from_broker`,
  `hubctl.config.resolve.mqtt_broker`): TLS with an mqtts:// URL or
  `mqtt.ca_file` (CA file, optional client certificate and key), user and
  password from the same variables; the remaining differences from the
  operator API are listed in `hubctl.transport.mqtt`.
- **Staleness per point**: a point whose last good value is older than its
  `stale_after_s` reads as None and is listed in `Reading.stale`. A read with
  no fresh point at all raises DeviceUnavailableError naming when each point
  was last seen, and the last payload that could not be parsed (users who
  publish to the wrong topic or in the wrong shape find out here).
- **Role values from point names**: a point named after a semantic key
  (`power_kw`, `soc_pct`, `energy_import_kwh`, `energy_export_kwh`) is that
  value; `active_power_kw` also gives `power_kw`. The point's unit is its name's
  suffix (`hubctl.codec.regmap.UNIT_SUFFIXES`).
- **Setpoints** are published (QoS 1, not retained: a retained setpoint would
  outlive hubctl) to `setpoint_topic` with `{value}` in the template replaced by
  kW. **With `setpoint_ttl_s`** (#12: a setpoint with an expiry the device side
  can see) the template also takes `{expires_at}` (UTC ISO 8601, required then)
  and `{ttl_s}`; the setpoint is published retained, so that a device that
  (re)connects gets the one in force, and re-published every third of the TTL
  (`refresh_every_s`), so that it never expires while hubctl lives; a dead
  controller's retained setpoint carries an `expires_at` in the past, which the
  device must honour (docs/mqtt.md, "MQTT devices"; `simulators.mqtt_sim.MqttBattery`
  does). `release()` (a clean stop) clears the retained message. Where the hub
  speaks MQTT v5 (the gateway connects it so when a device has a TTL) the publish
  also carries v5's message expiry interval, so that the broker itself drops an
  expired retained setpoint and a device that ignores `expires_at` never gets a
  dead controller's setpoint; a 3.1.1 hub (the default: `hubctl.transport.mqtt`)
  relies on the payload alone. If the
  device echoes its setpoint in a point named `setpoint_kw` (battery) or
  `limit_kw` (PV), the command waits for the echo and raises
  CommandNotConfirmedError without it; otherwise the result is unconfirmed
  (`confirmed_kw` None). **Bounds** are the device config's `setpoint_min_kw`
  / `setpoint_max_kw` (`setpoint_bounds_kw`; PV limits are >= 0 whatever they
  say): a value outside, or not finite, raises SetpointOutOfBoundsError; no
  `setpoint_topic` raises SetpointUnsupportedError. Without a TTL nothing is
  refreshed: the device keeps the last setpoint (`fallback_summary` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hubctl.codec.regmap import UNIT_SUFFIXES
from hubctl.devices.base import Device, FallbackResult, Reading, SetpointResult
from hubctl.errors import (
    CommandNotConfirmedError,
    DeviceUnavailableError,
    SetpointOutOfBoundsError,
    SetpointUnsupportedError,
)
from hubctl.transport.mqtt import (
    ClientOptions,
    MqttSession,
    SessionUser,
    parse_broker_url,
    parse_url,
    payload_bytes,
    tls_parameters,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.config.resolve import BrokerSettings
    from hubctl.transport.mqtt import Subscription

log = logging.getLogger("hubctl.mqtt_devices")  # the name the journal has always shown

_SEMANTIC = ("power_kw", "soc_pct", "energy_import_kwh", "energy_export_kwh", "limit_kw", "setpoint_kw")
_ALIASES = {"power_kw": ("active_power_kw",)}


def extract_value(payload: bytes, json_path: str | None) -> float:
    """The number in `payload`: the whole payload, or the value at a dotted path into its JSON.

    Raises ValueError (with a reason) when there is none: not UTF-8, not JSON,
    the path missing, or the value not a number (booleans are not numbers).
    """
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8 text") from None
    if json_path is None:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"payload {text[:40]!r} is not a number") from None
    else:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"payload {text[:40]!r} is not JSON") from None
        for part in json_path.split("."):
            if isinstance(data, dict) and part in data:
                data = data[part]
            elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
                data = data[int(part)]
            else:
                raise ValueError(f"no {json_path!r} in the payload (stopped at {part!r})")
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"{json_path!r} is {data!r}, not a number")
        value = float(data)
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


def render_setpoint(template: str, kw: float) -> str:
    """The setpoint payload: `{value}` in the template replaced by kW (plain decimal, no exponent)."""
    text = f"{kw:.3f}".rstrip("0").rstrip(".")
    return template.replace("{value}", "0" if text in {"", "-0"} else text)


def expiry_text(wall_s: float) -> str:
    """UTC ISO 8601 with a Z, whole seconds rounded down: the form a device compares with its clock."""
    return dt.datetime.fromtimestamp(math.floor(wall_s), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unit_of(name: str) -> str:
    return UNIT_SUFFIXES.get(name.rsplit("_", 1)[-1], "")


class MqttHub(SessionUser):
    """One MQTT connection for all MQTT devices on a broker: subscribe, dispatch, publish, reconnect.

    The connection is a `hubctl.transport.mqtt.MqttSession` (MQTT 3.1.1, TLS when given; where
    this differs from the operator API is listed there).
    """

    _running: ClassVar[set[MqttHub]] = set()

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        identifier: str | None = None,
        username: str | None = None,
        password: str | None = None,
        status_topic: str | None = None,
        timeout_s: float = 5.0,
        keepalive_s: int = 30,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        tls: aiomqtt.TLSParameters | None = None,
        protocol: aiomqtt.ProtocolVersion | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.v5 = protocol is aiomqtt.ProtocolVersion.V5
        self.port = port
        self.identifier = identifier or f"hubctl-{uuid.uuid4().hex[:12]}"
        self.status_topic = status_topic
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.clock = clock
        self._handlers: dict[str, list[Callable[[bytes, float], None]]] = {}
        credentials, backoff = (username, password), (backoff_initial_s, backoff_max_s)
        options = ClientOptions(
            self.identifier,
            credentials,
            timeout_s,
            keepalive_s,
            backoff,
            protocol=protocol,
            tls=tls,
            count_renewed=True,
        )
        self._session = MqttSession(
            host, port, options, log=log, subscriptions=self._subscriptions, status_topic=status_topic
        )
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MqttHub:
        """A hub on a plain broker URL (mqtt://host:port); raises ValueError for any other."""
        host, port = parse_broker_url(url)
        return cls(host, port, **options)

    @classmethod
    def from_broker(cls, broker: BrokerSettings, **options: Any) -> MqttHub:
        """A hub on the site's broker (`hubctl.config.resolve.mqtt_broker`): its URL, TLS and
        credentials. Raises ValueError for a URL that is not an MQTT broker's."""
        parsed = parse_url(broker.url)
        tls = tls_parameters(
            parsed, ca_file=broker.ca_file, cert_file=broker.cert_file, key_file=broker.key_file
        )
        return cls(
            parsed.host,
            parsed.port,
            username=broker.username,
            password=broker.password,
            tls=tls,
            **options,
        )

    @classmethod
    def running(cls) -> tuple[MqttHub, ...]:
        """Hubs started and not yet stopped (tests assert this is empty after each test)."""
        return tuple(cls._running)

    @property
    def label(self) -> str:
        return self._session.label

    def subscribe(self, topic: str, handler: Callable[[bytes, float], None]) -> None:
        """Call `handler(payload, monotonic time)` for every message on `topic` (wildcards allowed).

        Subscriptions made while connected take effect at the next (re)connect;
        register them before `start()`.
        """
        self._handlers.setdefault(topic, []).append(handler)

    def _subscriptions(self) -> list[Subscription]:
        return [(topic, None) for topic in sorted(self._handlers)]

    async def start(self, *, wait_s: float | None = None) -> None:
        """Start the connection task; with `wait_s`, wait that long for the first connect."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._session.run(self._serve), name=f"mqtt-hub {self.label}"
            )
            MqttHub._running.add(self)
        if wait_s is not None:
            await self.wait_connected(wait_s)

    async def wait_connected(self, timeout_s: float) -> None:
        try:
            await self._session.wait_connected(timeout_s)
        except TimeoutError:
            error = self._session.last_error
            why = "" if error is None else f" ({error})"
            raise DeviceUnavailableError(f"{self.label}: not connected within {timeout_s:g} s{why}") from None

    async def stop(self) -> None:
        """Publish "offline" (with a status topic), disconnect cleanly and end the task."""
        task, self._task = self._task, None
        MqttHub._running.discard(self)
        if task is None:
            return
        await self._session.publish_offline(self.timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def publish(
        self, topic: str, payload: str, *, qos: int = 1, retain: bool = False, expiry_s: float | None = None
    ) -> None:
        """Publish; `expiry_s` sets MQTT v5's message expiry interval (whole seconds, rounded up) when
        this hub speaks v5, so that the broker drops the message (retained too) once it expired."""
        client = self._session.client
        if client is None or not self.connected:
            raise DeviceUnavailableError(f"{self.label}: not connected, cannot publish to {topic}")
        properties = None
        if expiry_s is not None and self.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=self.timeout_s
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise DeviceUnavailableError(f"{self.label}: publish to {topic} failed: {exc}") from None

    async def _serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        data = payload_bytes(message.payload)
        at = self.clock()
        for pattern, handlers in self._handlers.items():
            if message.topic.matches(pattern):
                for handler in handlers:
                    handler(data, at)


@dataclass(slots=True)
class _Latest:
    value: float | None = None
    received_at_s: float | None = None
    problem: str | None = None  # the last payload that could not be used


class MqttDevice(Device):
    """A device whose readings arrive over MQTT; setpoints are published."""

    def __init__(
        self,
        config: DeviceConfig,
        hub: MqttHub,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, clock=clock)
        self.wall = wall  # UTC seconds, for {expires_at}
        if config.mqtt is None:
            raise ValueError(f"{config.id}: an mqtt block is required")
        self.spec = config.mqtt
        self.hub = hub
        self.confirm_timeout_s = 5.0
        self._latest = {name: _Latest() for name in self.spec.points}
        self._units = {name: unit_of(name) for name in self.spec.points}
        self._changed = asyncio.Event()
        low, high = self.spec.setpoint_min_kw, self.spec.setpoint_max_kw
        kind = self.setpoint_kind
        if kind is not None and (low is not None or high is not None):
            floor = 0.0 if kind == "pv_limit" else -math.inf
            self._bounds[kind] = (
                max(floor, -math.inf if low is None else low),
                math.inf if high is None else high,
            )
        for name, point in self.spec.points.items():
            hub.subscribe(point.topic, self._handler(name))

    def _handler(self, name: str) -> Callable[[bytes, float], None]:
        point = self.spec.points[name]
        latest = self._latest[name]

        def handle(payload: bytes, at: float) -> None:
            try:
                value = extract_value(payload, point.json_path) * point.scale + 0.0
            except ValueError as exc:
                if latest.problem is None:
                    log.warning("%s: %s on %s: %s", self.id, name, point.topic, exc)
                latest.problem = str(exc)
                return
            latest.value, latest.received_at_s, latest.problem = value, at, None
            self._changed.set()

        return handle

    def _fresh(self, now: float) -> tuple[dict[str, float | None], list[str]]:
        values: dict[str, float | None] = {}
        stale: list[str] = []
        for name, latest in self._latest.items():
            age_ok = (
                latest.received_at_s is not None
                and now - latest.received_at_s <= self.spec.points[name].stale_after_s
            )
            values[name] = latest.value if age_ok else None
            if not age_ok:
                stale.append(name)
        return values, stale

    async def _read(self) -> Reading:
        now = self.clock()
        values, stale = self._fresh(now)
        if len(stale) == len(values):
            raise DeviceUnavailableError(
                f"{self.id}: no fresh data: " + "; ".join(self._describe(n, now) for n in stale)
            )
        semantic: dict[str, float | None] = {}
        for key in _SEMANTIC:
            for name in (key, *_ALIASES.get(key, ())):
                if name in values:
                    semantic[key] = values[name]
                    break
        return Reading(
            device_id=self.id,
            role=self.role,
            read_at_s=now,
            values=semantic,
            point_values=values,
            units=self._units,
            stale=tuple(stale),
        )

    def _describe(self, name: str, now: float) -> str:
        latest = self._latest[name]
        topic = self.spec.points[name].topic
        if latest.received_at_s is None:
            seen = f"nothing usable received on {topic}"
        else:
            seen = f"last value {now - latest.received_at_s:.0f} s ago on {topic}"
        return f"{name}: {seen}" + (f" (last payload: {latest.problem})" if latest.problem else "")

    async def wait_for_data(self, timeout_s: float) -> None:
        """Wait until every point has a value (retained messages arrive on subscribing), up to `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while any(latest.received_at_s is None for latest in self._latest.values()):
                    self._changed.clear()
                    await self._changed.wait()

    async def _set_pv_limit(self, kw: float) -> SetpointResult:
        if not math.isfinite(kw) or kw < 0:
            raise SetpointOutOfBoundsError(f"{self.id}: a PV limit must be a finite kW >= 0, got {kw!r}")
        return await self._publish("pv_limit", kw, echo="limit_kw")

    async def _set_battery(self, kw: float) -> SetpointResult:
        if not math.isfinite(kw):
            raise SetpointOutOfBoundsError(f"{self.id}: a battery setpoint must be finite, got {kw!r}")
        return await self._publish("battery", kw, echo="setpoint_kw")

    async def _publish(self, kind: str, kw: float, *, echo: str) -> SetpointResult:
        topic = self.spec.setpoint_topic
        if topic is None:
            raise SetpointUnsupportedError(f"{self.id}: no setpoint_topic configured")
        bounds = self._bounds.get(kind)
        if bounds is not None:
            self._check_bounds(kind, kw, *bounds, " (setpoint_min_kw..setpoint_max_kw)")
        sent_at = self.clock()
        payload = render_setpoint(self.spec.setpoint_template, kw)
        ttl = self.spec.setpoint_ttl_s
        if ttl is not None:
            payload = payload.replace("{expires_at}", expiry_text(self.wall() + ttl))
            payload = payload.replace("{ttl_s}", f"{ttl:g}")
        await self.hub.publish(topic, payload, retain=ttl is not None, expiry_s=ttl)
        confirmed: float | None = None
        if echo in self._latest:
            confirmed = await self._await_echo(echo, kw, sent_at)
        return SetpointResult(
            device_id=self.id,
            kind=kind,
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=confirmed,
            refresh_every_s=None if ttl is None else ttl / 3,
        )

    def fallback_summary(self, reading: Reading | None = None) -> str | None:
        del reading
        if self.setpoint_kind is None:
            return None
        if self.spec.setpoint_topic is None:
            return "none: takes no setpoint from hubctl (no setpoint_topic)"
        ttl = self.spec.setpoint_ttl_s
        if ttl is None:
            return "none: keeps the last setpoint (no setpoint_ttl_s: the payload carries no expiry)"
        return (
            f"the setpoint expires {ttl:g} s after hubctl's last publish (expires_at in the retained"
            " payload); then the device's own fallback"
        )

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:
        """Nothing to write: the expiry travels with every setpoint (`setpoint_ttl_s`); said at start."""
        del pv_limit_kw
        return self._no_fallback(self.fallback_summary() or "")

    async def release(self) -> None:
        held = bool(self._held)
        await super().release()
        topic = self.spec.setpoint_topic
        if held and topic is not None and self.spec.setpoint_ttl_s is not None:
            await self.hub.publish(topic, "", retain=True)  # an empty retained message clears it

    async def _await_echo(self, name: str, kw: float, sent_at: float) -> float:
        latest = self._latest[name]
        try:
            async with asyncio.timeout(self.confirm_timeout_s):
                while True:
                    at = latest.received_at_s
                    if (
                        at is not None
                        and at >= sent_at
                        and latest.value is not None
                        and abs(latest.value - kw) <= 1e-3 * max(1.0, abs(kw))
                    ):
                        return latest.value
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise CommandNotConfirmedError(
                f"{self.id}: published {kw:g} kW to {self.spec.setpoint_topic}; {name} did not echo it "
                f"within {self.confirm_timeout_s:g} s (last: {latest.value})"
            ) from None
