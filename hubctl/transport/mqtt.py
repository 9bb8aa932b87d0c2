"""MQTT transport: the broker URL parser and the one reconnect loop both MQTT users of hubctl run.

What it is: `parse_url` (a broker URL to host, port and TLS), `tls_parameters`, `payload_bytes`
and `MqttSession`, one broker connection kept up over aiomqtt 2.5: connect with the last will,
subscribe (again after every reconnect: the broker forgot the subscriptions with the session),
publish a retained "online", serve, and on an `aiomqtt.MqttError` reconnect with the capped,
jittered backoff every connection shares (`hubctl.transport.backoff`). The connection
transitions are logged once each, on the caller's logger. Its users: the MQTT device hub
(`hubctl.devices.mqtt.MqttHub`) and the operator API (`hubctl.service.operator_api.OperatorApi`);
each keeps its own connection (one shared connection is a later step).

One broker configuration for both (`hubctl.config.resolve.mqtt_broker`: URL, TLS files,
credentials). Where the two users still differ, passed in as a parameter (`ClientOptions`, the
session's arguments):

- **protocol**: the device hub speaks MQTT 3.1.1 (`protocol=None`, paho's default: devices such
  as Shelly and Tasmota speak nothing newer), v5 only when the gateway has an MQTT device with a
  `setpoint_ttl_s` (its setpoints carry v5's message expiry; the devices, separate clients, may
  still speak 3.1.1: the broker drops an expired message for every subscriber); the operator API
  MQTT v5 (response topics, correlation data, user properties, no-local and retain-as-published
  subscriptions).
- **TLS** is the same for both: with an mqtts:// (ssl://) URL (port 8883 by default) or whenever
  `mqtt.ca_file` is set (`tls_parameters`), verifying the broker's certificate against the CA
  file (the system's CAs without one) and its host name; a client certificate with `cert_file`
  and `key_file`. `tls_file_problems` checks the files at start (a missing or unreadable one
  is a config error, exit 78); a broker whose certificate the CA did not sign is a connection
  error like any other: logged once, retried with backoff.
- **client ids**: the device hub `hubctl-<12 random hex digits>` unless given one (the gateway
  gives `hubctl-<site>`); the operator API `hubctl-<site>-api`.
- **keepalive and timeout**: 30 s and 5 s on both by default; both can be set on the device hub
  (`MqttHub(keepalive_s=, timeout_s=)`) and on the operator API's constructor, but not through
  its `from_config`.
- **backoff**: the device hub 0.5 s doubling to 30 s; the operator API 0.25 s doubling to 2 s.
- **TCP_NODELAY**: the operator API only (`socket_options`), so that a reply does not wait for
  the broker's delayed ACK; the device hub uses the system default.
- **the status topic and the last will**: the device hub only with a `status_topic` (the gateway
  gives `hubctl/<site>/status` when no operator API runs); the operator API always,
  `<prefix>/<site>/status`.
- **"offline" on a clean shutdown**: the device hub publishes it from `stop()` before it cancels
  its task, with its `timeout_s`; the operator API when its `run()` is cancelled in the message
  loop, with a 2 s timeout. Both through `MqttSession.publish_offline`.
- **subscriptions**: the device hub QoS 1 on each handler's topic (sorted); the operator API with
  v5 subscribe options (`Subscription`).
- **the log line on a reconnect**: the device hub counts the renewed subscriptions
  (`count_renewed`); the operator API does not.
- **a connect timeout** (`wait_connected`) raises TimeoutError here; the device hub makes it a
  DeviceUnavailableError, the operator API passes it on.

May import: `hubctl.errors`, `hubctl.codec`, aiomqtt and paho (see the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

import aiomqtt

from hubctl.transport.backoff import backoff_s

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable, Sequence

    from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "Broker",
    "ClientOptions",
    "MqttSession",
    "SessionUser",
    "Subscription",
    "parse_broker_url",
    "parse_url",
    "payload_bytes",
    "tls_file_problems",
    "tls_parameters",
]

# (topic, v5 subscribe options); None: a plain QoS 1 subscription
Subscription: TypeAlias = "tuple[str, SubscribeOptions | None]"


@dataclass(frozen=True, slots=True)
class Broker:
    """Where a broker URL points: host, port and whether to speak TLS."""

    host: str
    port: int
    tls: bool


def parse_url(url: str, *, tls: bool = True) -> Broker:
    """mqtt://host[:1883], tcp://host[:1883], host[:port]; with `tls` also mqtts:// and ssl://
    (TLS, port 8883 by default). Raises ValueError for anything else."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    schemes = {"mqtt", "mqtts", "tcp", "ssl"} if tls else {"mqtt", "tcp"}
    if parts.scheme not in schemes or not parts.hostname:
        expected = "mqtt://host:port or mqtts://host:port" if tls else "mqtt://host:port"
        raise ValueError(f"not an MQTT broker URL: {url!r} (expected {expected})")
    secure = parts.scheme in {"mqtts", "ssl"}
    return Broker(parts.hostname, parts.port or (8883 if secure else 1883), secure)


def parse_broker_url(url: str) -> tuple[str, int]:
    """(host, port) of a plain broker URL: "mqtt://host:port", "host:port" or "host" (port 1883);
    no TLS schemes (`parse_url(url, tls=False)`)."""
    broker = parse_url(url, tls=False)
    return broker.host, broker.port


def tls_parameters(
    broker: Broker, *, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> aiomqtt.TLSParameters | None:
    """TLS of both users: with an mqtts:// (ssl://) URL or a CA file; else None (plain TCP)."""
    if not broker.tls and ca_file is None:
        return None
    return aiomqtt.TLSParameters(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)


def tls_file_problems(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> list[tuple[str, str]]:
    """What is wrong with the TLS files, as (field, reason): "ca_file", "cert_file" or "key_file"
    and why it cannot be used (missing, unreadable, not PEM, a key that does not fit). Empty: fine.

    Loads them as the connection will, so that a bad file is refused at start instead of failing
    inside every reconnect.
    """
    problems: list[tuple[str, str]] = []
    for field, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):  # noqa: PTH123 - only whether it opens
                pass
        except OSError as exc:
            problems.append((field, f"{path}: {exc.strerror}"))
    if problems:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as exc:
            problems.append(("ca_file", f"{ca_file}: not a PEM CA certificate ({exc.reason or exc})"))
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            problems.append(
                (
                    "cert_file",
                    f"{cert_file} with {key_file}: not a PEM certificate and its key ({exc.reason or exc})",
                )
            )
    return problems


def payload_bytes(payload: Any) -> bytes:
    """A received message's payload as bytes (None: empty)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How one user connects: the settings the two users choose differently (module docstring)."""

    identifier: str
    credentials: tuple[str | None, str | None] = (None, None)  # user name, password
    timeout_s: float = 5.0
    keepalive_s: int = 30
    backoff: tuple[float, float] = (0.5, 30.0)  # initial and largest delay (`backoff_s`)
    protocol: aiomqtt.ProtocolVersion | None = None  # None: paho's default, MQTT 3.1.1
    tls: aiomqtt.TLSParameters | None = None
    socket_options: tuple[tuple[int, int, int], ...] | None = None
    count_renewed: bool = False  # the reconnect log line counts the renewed subscriptions


class MqttSession:
    """One broker connection kept up until cancelled: will, subscriptions, "online", reconnect."""

    def __init__(
        self,
        host: str,
        port: int,
        options: ClientOptions,
        *,
        log: logging.Logger,
        subscriptions: Callable[[], Sequence[Subscription]],
        status_topic: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.options = options
        self.label = f"{'mqtts' if options.tls is not None else 'mqtt'}://{host}:{port}"
        self.status_topic = status_topic
        self.client: aiomqtt.Client | None = None  # while connected
        self.connects = 0
        self.last_error: str | None = None  # why the last attempt failed (None: connected)
        self._log = log
        self._subscriptions = subscriptions
        self._connected = asyncio.Event()
        self._rng = random.Random()  # noqa: S311 - jitter

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a connection; raises TimeoutError."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def run(
        self,
        serve: Callable[[aiomqtt.Client], Awaitable[None]],
        *,
        on_connect: Callable[[aiomqtt.Client], Awaitable[None]] | None = None,
    ) -> None:
        """Connect, serve and reconnect with backoff until cancelled.

        After every connect: the subscriptions, a retained "online" (with a status topic), then
        `on_connect(client)`; then the session counts as connected and `serve(client)` runs (the
        message loop) until the connection is lost.
        """
        initial_s, max_s = self.options.backoff
        failures = 0
        while True:
            try:
                await self._session(serve, on_connect)
            except aiomqtt.MqttError as exc:
                self.client = None
                self._connected.clear()
                failures += 1
                self.last_error = f"{exc}{self._hint(exc)}"
                if failures == 1:
                    self._log.warning("%s: %s; reconnecting with backoff", self.label, self.last_error)
                await asyncio.sleep(backoff_s(failures, self._rng.random(), initial_s=initial_s, max_s=max_s))
            else:  # pragma: no cover - the message loop only ends with an error or cancellation
                failures = 0

    def _hint(self, exc: aiomqtt.MqttError) -> str:
        """What a TLS failure means for the installer ("" for any other error).

        A TLS file that went missing or bad after the start (checked then: `tls_file_problems`)
        fails every connect with the bare OS or SSL error ("[Errno 2] No such file or
        directory"): the hint names the setting and the file."""
        text = str(exc)
        tls = self.options.tls
        if tls is None:
            return ""
        files = tls_file_problems(tls.ca_certs, tls.certfile, tls.keyfile)
        if files:
            return " (TLS: " + "; ".join(f"mqtt.{field}: {reason}" for field, reason in files) + ")"
        if "CERTIFICATE_VERIFY_FAILED" not in text:
            return ""
        if "mismatch" in text:  # "Hostname mismatch", "IP address mismatch"
            return " (TLS: the broker's certificate does not name the host of the broker URL)"
        return " (TLS: the broker's certificate is not signed by the CA in mqtt.ca_file)"

    def _client(self) -> aiomqtt.Client:
        options = self.options
        will = None
        if self.status_topic is not None:
            will = aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=options.identifier,
            username=options.credentials[0],
            password=options.credentials[1],
            protocol=options.protocol,
            will=will,
            tls_params=options.tls,
            timeout=options.timeout_s,
            keepalive=options.keepalive_s,
            socket_options=options.socket_options,
        )

    async def _session(
        self,
        serve: Callable[[aiomqtt.Client], Awaitable[None]],
        on_connect: Callable[[aiomqtt.Client], Awaitable[None]] | None,
    ) -> None:
        client = self._client()
        try:
            async with client:
                subscriptions = self._subscriptions()
                for topic, subscribe_options in subscriptions:  # after every (re)connect
                    if subscribe_options is None:
                        await client.subscribe(topic, qos=1)
                    else:
                        await client.subscribe(topic, options=subscribe_options)
                if self.status_topic is not None:
                    await client.publish(self.status_topic, "online", qos=1, retain=True)
                if on_connect is not None:
                    await on_connect(client)
                self.client = client
                self.connects += 1
                self.last_error = None
                if self.connects > 1:
                    self._renewed(len(subscriptions))
                else:
                    self._log.info("%s: connected", self.label)
                self._connected.set()
                await serve(client)
        finally:
            self.client = None
            self._connected.clear()

    def _renewed(self, count: int) -> None:
        if self.options.count_renewed:
            self._log.info("%s: connected again, %d subscriptions renewed", self.label, count)
        else:
            self._log.info("%s: connected again, subscriptions renewed", self.label)

    async def publish_offline(self, timeout_s: float) -> None:
        """A retained "offline" on the status topic before a clean disconnect (which sends no will).

        Only while connected and with a status topic; a failure is ignored (the will covers it).
        """
        client = self.client
        if client is None or self.status_topic is None or not self._connected.is_set():
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(self.status_topic, "offline", qos=1, retain=True, timeout=timeout_s)


class SessionUser:
    """What both users show of their `MqttSession` (held as `_session`): connected, connects so far."""

    _session: MqttSession

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def connects(self) -> int:
        return self._session.connects
