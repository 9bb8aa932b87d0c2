"""Simulated MQTT devices: a grid meter (`MqttMeter`) and a battery that takes setpoints (`MqttBattery`).

`MqttMeter` publishes a company's (or the park's) grid meter as JSON to a broker.

The payload follows the shape of a Tasmota energy sensor, the most common
MQTT meter on the market, so the config exercises `json_path` and `scale`:

    topic   <prefix>/<device id>/SENSOR
    payload {"Time": "2026-06-22T12:00:05+02:00",
             "ENERGY": {"Power": -81100.0, "Import": 1977.507, "Export": 1108.555}}

`Power` is in W, + import / - export (hubctl's sign); `Import` / `Export` in
kWh. Availability goes to `<prefix>/<device id>/LWT` (retained): "Online" on
connect, "Offline" as the last will and on a clean stop.

Decisions:
- One message per `publish_s` real seconds (default 1 s; the park may advance
  several simulated seconds in between at --speed > 1), and at once after a
  fault is cleared.
- Own the reconnect: a lost or refused broker connection is retried with a
  capped exponential backoff (0.5 s to 10 s), logged once when it starts and
  once when it recovers.
- Faults: `drop` disconnects from the broker (cleanly, so no last will) and
  stays away until cleared; `silent` stays connected but stops publishing;
  `slow` publishes `delay_s` late; `frozen` keeps publishing the same values
  with a fresh time stamp. `refuse` and `busy` have no meaning here.

`MqttBattery` is a company's battery with an MQTT API, as hubctl's `setpoint_ttl_s` expects
(docs/mqtt.md, "MQTT devices"): it publishes `{"power_kw": ..., "soc_pct": ...}` to
`<prefix>/<device id>/state` and takes `{"power_kw": kW, "expires_at": "<UTC ISO 8601>"}` on
`<prefix>/<device id>/set` (retained or not). A setpoint is in force until its `expires_at` by the
device's own clock (`wall`, UTC seconds); one that arrives already expired (a dead controller's
retained setpoint, delivered on a reconnect) is ignored; once it expires, or without one, the
battery runs at its installer's `fallback_kw`. An empty payload clears the setpoint. A payload
without `expires_at` is taken without expiry, as a device that ignores it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiomqtt

from simulators.faults import Fault, FaultSet

if TYPE_CHECKING:
    from collections.abc import Callable
    from zoneinfo import ZoneInfo

    from simulators.live_park import Park

log = logging.getLogger(__name__)


class MqttMeter:
    """Grid meter over MQTT for one company (or the park, company None)."""

    supported_faults = frozenset({Fault.DROP, Fault.SILENT, Fault.SLOW, Fault.FROZEN})

    def __init__(
        self,
        device_id: str,
        park: Park,
        company: str | None,
        host: str,
        port: int,
        *,
        prefix: str = "hubctl-sim",
        publish_s: float = 1.0,
        start_utc: float = 0.0,
        tz: ZoneInfo | None = None,
    ) -> None:
        self.device_id = device_id
        self.park = park
        self.company = None if company is None else park.company(company)
        self.host = host
        self.port = port
        self.topic = f"{prefix}/{device_id}/SENSOR"
        self.availability_topic = f"{prefix}/{device_id}/LWT"
        self.publish_s = publish_s
        self.start_utc = start_utc
        self.tz = tz
        self.faults = FaultSet()
        self.published = 0
        self._last: dict[str, float] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # -- the config a hubctl site needs to read it
    def device_config(self) -> dict[str, Any]:
        stale_s = max(10.0, 5 * self.publish_s)
        return {
            "points": {
                "power_kw": {
                    "topic": self.topic,
                    "json_path": "ENERGY.Power",
                    "scale": 0.001,
                    "stale_after_s": stale_s,
                },
                "energy_import_kwh": {
                    "topic": self.topic,
                    "json_path": "ENERGY.Import",
                    "stale_after_s": stale_s,
                },
                "energy_export_kwh": {
                    "topic": self.topic,
                    "json_path": "ENERGY.Export",
                    "stale_after_s": stale_s,
                },
            }
        }

    # -- what is published
    def readings(self) -> dict[str, float]:
        if self.company is None:
            grid = self.park.park_meter_kw
            c = self.park.park_counters
        else:
            grid = float(self.park.record.grid_kw[self.company.index])
            c = self.park.counters[self.company.index]
        return {
            "Power": round(grid * 1000.0, 1),
            "Import": round(c.import_kwh, 3),
            "Export": round(c.export_kwh, 3),
        }

    def payload(self) -> bytes:
        if Fault.FROZEN not in self.faults or self._last is None:
            self._last = self.readings()
        stamp = dt.datetime.fromtimestamp(self.start_utc + self.park.t_s, tz=self.tz or dt.UTC)
        return json.dumps({"Time": stamp.isoformat(timespec="seconds"), "ENERGY": self._last}).encode()

    # -- faults (the FaultTarget protocol)
    async def inject(self, fault: Fault, delay_s: float | None) -> None:
        self.faults.add(fault, delay_s)
        self._wake.set()

    async def clear(self, fault: Fault | None) -> None:
        self.faults.discard(fault)
        self._wake.set()

    def fault_names(self) -> list[str]:
        return self.faults.names()

    # -- running
    async def run(self) -> None:
        """Publish until `stop()`; reconnects on its own."""
        backoff = 0.5
        failing = False
        while not self._stopping:
            if Fault.DROP in self.faults:
                await self._nap(1.0)
                continue
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"hubctl-sim-{self.device_id}",
                    will=aiomqtt.Will(self.availability_topic, b"Offline", qos=1, retain=True),
                    timeout=5.0,
                ) as client:
                    await client.publish(self.availability_topic, b"Online", qos=1, retain=True)
                    if failing:
                        log.info("%s: connected to the broker again", self.device_id)
                    failing, backoff = False, 0.5
                    await self._publish_loop(client)
                    if self._stopping:
                        await client.publish(self.availability_topic, b"Offline", qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                if not failing:
                    log.warning("%s: broker %s:%d: %s; retrying", self.device_id, self.host, self.port, exc)
                failing = True
                await self._nap(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while not self._stopping and Fault.DROP not in self.faults:
            if Fault.SILENT not in self.faults:
                if Fault.SLOW in self.faults:
                    await asyncio.sleep(self.faults.delay_s)
                await client.publish(self.topic, self.payload(), qos=0)
                self.published += 1
            await self._nap(self.publish_s)

    async def _nap(self, seconds: float) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def stop(self) -> None:
        """Ask `run()` to publish "Offline" and return."""
        self._stopping = True
        self._wake.set()


def _parse_utc(text: str) -> float:
    """UTC seconds of an ISO 8601 time ("...Z" or with an offset); ValueError otherwise."""
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return stamp.timestamp()


class MqttBattery:
    """A company's battery over MQTT: publishes its state, takes setpoints with an expiry."""

    def __init__(
        self,
        device_id: str,
        park: Park,
        company: str,
        host: str,
        port: int,
        *,
        prefix: str = "hubctl-sim",
        fallback_kw: float = 0.0,
        publish_s: float = 1.0,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.device_id = device_id
        self.park = park
        self.host = host
        self.port = port
        self.state_topic = f"{prefix}/{device_id}/state"
        self.setpoint_topic = f"{prefix}/{device_id}/set"
        self.fallback_kw = fallback_kw
        self.publish_s = publish_s
        self.wall = wall or time.time
        self.setpoint_kw: float | None = None
        self.expires_at_s: float | None = None
        self.ignored: list[str] = []  # payloads not taken, and why
        self.connected = asyncio.Event()
        self.unit = park.battery_unit(company, setpoint_kw=self.effective_kw)
        self._stopping = False
        self._wake = asyncio.Event()

    def device_config(self) -> dict[str, object]:
        """The `mqtt:` block a hubctl site needs for this battery (with a 30 s setpoint TTL)."""
        return {
            "points": {
                "power_kw": {"topic": self.state_topic, "json_path": "power_kw"},
                "soc_pct": {"topic": self.state_topic, "json_path": "soc_pct"},
            },
            "setpoint_topic": self.setpoint_topic,
            "setpoint_template": '{"power_kw": {value}, "expires_at": "{expires_at}"}',
            "setpoint_ttl_s": 30,
        }

    def effective_kw(self, now_s: float) -> float:
        """The power in force: the setpoint until it expires, else the installer's fallback."""
        del now_s  # the expiry runs on the device's own (wall) clock
        if self.setpoint_kw is None:
            return self.fallback_kw
        if self.expires_at_s is not None and self.wall() >= self.expires_at_s:
            return self.fallback_kw
        return self.setpoint_kw

    def take(self, payload: bytes) -> None:
        """One message on the setpoint topic."""
        if not payload:
            self.setpoint_kw, self.expires_at_s = None, None
            return
        try:
            data = json.loads(payload)
            kw = float(data["power_kw"])
            expires = None if "expires_at" not in data else _parse_utc(str(data["expires_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            self.ignored.append(f"{payload!r}: {exc}")
            return
        if expires is not None and expires <= self.wall():
            self.ignored.append(f"{payload!r}: expired")
            return
        self.setpoint_kw, self.expires_at_s = kw, expires

    def state(self) -> bytes:
        j = self.unit.company.index
        return json.dumps(
            {"power_kw": round(self.unit.kw, 3), "soc_pct": round(float(self.park.record.soc_pct[j]), 2)}
        ).encode()

    async def run(self) -> None:
        """Subscribe, publish the state every `publish_s`, take setpoints, until `stop()`."""
        async with aiomqtt.Client(self.host, self.port, identifier=f"hubctl-sim-{self.device_id}") as client:
            await client.subscribe(self.setpoint_topic, qos=1)
            self.connected.set()
            listener = asyncio.create_task(self._listen(client))
            try:
                while not self._stopping:
                    await client.publish(self.state_topic, self.state(), qos=0)
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(self.publish_s):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            self.take(payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode())

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
