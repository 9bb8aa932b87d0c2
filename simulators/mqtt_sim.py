"""A simulated MQTT meter: publishes a company's (or the park's) grid meter as JSON to a broker.

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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import aiomqtt

from simulators.faults import Fault, FaultSet

if TYPE_CHECKING:
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
