"""The pollers: one per connection, each reading its devices into the reading store.

What it is: `poll_groups` (one poller per Modbus host:port, one for every MQTT device, so that
one slow connection never delays the others) and `poll`, the loop of one poller: every device
when its `poll_s` is due, each result into the `ReadingStore` and reported to the debounced
`Health`. A poller sets its `first_pass` event after one round, so that the first decision can
wait for one reading of everything.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from hubctl.errors import DeviceError
from hubctl.service.tasks import raise_if_cancelled

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.config.site import SiteConfig
    from hubctl.devices.base import Device
    from hubctl.devices.health import Health
    from hubctl.service.clock import Clock
    from hubctl.service.store import ReadingStore


def poll_groups(cfg: SiteConfig, devices: dict[str, Device]) -> dict[str, list[Device]]:
    """Pollers: one per Modbus host:port, one for every MQTT device."""
    groups: dict[str, list[Device]] = {}
    for config in cfg.devices:
        key = "mqtt" if config.modbus is None else f"{config.modbus.host}:{config.modbus.port}"
        groups.setdefault(key, []).append(devices[config.id])
    return groups


async def poll(
    devices: Sequence[Device],
    first_pass: asyncio.Event,
    *,
    clock: Clock,
    store: ReadingStore,
    health: Health,
) -> None:
    """Read `devices` as they are due, for ever; a failure is reported to `health`, never raised."""
    due = dict.fromkeys((d.id for d in devices), 0.0)
    while True:
        for device in devices:
            now = clock.mono()
            if now < due[device.id]:
                continue
            due[device.id] = max(due[device.id] + device.config.poll_s, now)
            try:
                reading = await device.read()
            except DeviceError as exc:
                raise_if_cancelled()
                health.failed(device.id, exc, clock.mono())
            else:
                raise_if_cancelled()
                store.put(reading)
                health.ok(device.id, reading.read_at_s)
        first_pass.set()
        wait = min(due.values()) - clock.mono()
        await asyncio.sleep(max(clock.real_s(wait), 0.0))
