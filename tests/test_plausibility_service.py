"""`hubctl run` with lying MQTT meters, through a real mosquitto: the test is the meters.

The site has two companies, each with an MQTT grid meter the test publishes to every 0.25 s (with
noise in the last digit, as real meters have), and in the second run a park meter on a shared
connection. At speed 1, on the OS clock; each run about 12 s.

- Group contract (no witness): a meter that reads +10^9 kW on a 100 kW park is out of range: never
  taken, so the meter goes stale and the service is in fail-safe within `stale_after_s` (2 s
  here), and normal again once the meter is plausible. (A single spike, shorter than a poll, is
  tested on the reading store in test_plausibility.py: over MQTT a poll may or may not see it.)
- Shared connection: a company meter that jumps by +300 kW while the park meter shows nothing of
  it is contradicted for as long as it lasts: never taken; once it is stale the park meter stands
  in for it (no fail-safe: the caps are the park meter's); a real step, which the park meter shows
  too, is taken.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
import yaml
from support import MOSQUITTO, Children, Mosquitto, leak_fixture

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
_CHILDREN = Children()
no_leaks = leak_fixture(_CHILDREN)


def meter(device_id: str, topic: str, company: str | None) -> dict[str, Any]:
    role = "park_meter" if company is None else "grid_meter"
    entry: dict[str, Any] = {
        "id": device_id,
        "role": role,
        "driver": "mqtt",
        "mqtt": {"points": {"power_kw": {"topic": topic, "json_path": "power_w", "scale": 0.001}}},
    }
    if company is not None:
        entry["company"] = company
    return entry


def site(tmp: Path, *, park_meter: bool) -> Path:
    devices = [meter("a-meter", "p1/a", "a"), meter("b-meter", "p1/b", "b")]
    if park_meter:
        devices.append(meter("park-meter", "p1/park", None))
    data = {
        "site": {"id": "lying"},
        "park": {"import_limit_kw": 100, "export_limit_kw": 50},
        "companies": [{"id": "a"}, {"id": "b"}],
        "control": {"stale_after_s": 2},
        "devices": devices,
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


async def publish(port: int, plan: Callable[[float], dict[str, float]], seconds: float) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="lying-meters") as client:
        t0 = time.monotonic()
        k = 0
        while (t := time.monotonic() - t0) < seconds:
            for topic, kw in plan(t).items():
                noise = 0.001 * (k % 7)  # a meter's last digit
                await client.publish(topic, json.dumps({"power_w": (kw + noise) * 1000}))
            k += 1
            await asyncio.sleep(0.25)


def run_service(
    tmp: Path, config: Path, url: str, plan: Callable[[float], dict[str, float]], seconds: float
) -> tuple[list[dict[str, Any]], str]:
    trace = tmp / "trace.jsonl"
    proc = _CHILDREN.hubctl("run", "--config", str(config), "--mqtt-url", url, "--trace", str(trace))
    try:
        asyncio.run(publish(int(url.rsplit(":", 1)[1]), plan, seconds))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    records = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    return [r for r in records if r["kind"] == "cycle"], err.decode()


def test_an_absurd_reading_is_never_taken_and_the_meter_goes_stale(tmp_path: Path, broker: Mosquitto) -> None:
    def plan(t: float) -> dict[str, float]:
        return {"p1/a": 1e9 if 4.0 <= t < 8.0 else 30.0, "p1/b": 20.0}

    cycles, journal = run_service(tmp_path, site(tmp_path, park_meter=False), broker.url, plan, 11.0)
    assert len(cycles) >= 8
    seen = [c["grid_kw"][0] for c in cycles if c["grid_kw"][0] is not None]
    assert seen
    assert max(seen) < 35  # 10^9 never reached the controller
    modes = [c["mode"] for c in cycles]
    failsafe = [i for i, m in enumerate(modes) if m == "failsafe"]
    assert failsafe, "the absurd meter never made the service fail-safe: it was taken as zero or as true"
    assert "a" in cycles[failsafe[0]]["reason"]
    assert modes[-1] == "normal"  # plausible again at the end
    assert re.search(r"a-meter: reading 1e\+09 kW is implausible \(out of range", journal), journal
    assert "a-meter: its readings are plausible again" in journal


def test_a_jump_the_park_meter_does_not_show_is_never_taken(tmp_path: Path, broker: Mosquitto) -> None:
    def plan(t: float) -> dict[str, float]:
        a, b, park = 30.0, 20.0, 60.0  # a 10 kW common load
        if 4.0 <= t < 8.0:
            a = 330.0  # a lie: the park meter shows nothing of it
        elif t >= 10.0:
            a, park = 90.0, 120.0  # a real step of 60 kW (beyond the 50 kW step): both meters show it
        return {"p1/a": a, "p1/b": b, "p1/park": park}

    cycles, journal = run_service(tmp_path, site(tmp_path, park_meter=True), broker.url, plan, 13.0)
    seen = [c["grid_kw"][0] for c in cycles if c["grid_kw"][0] is not None]
    assert max(seen) < 100  # 330 never taken
    # a-meter goes stale; the park meter stands in for it (60 - 20 - the 10 kW common load): no
    # fail-safe, the caps stay held on the park meter
    stood = [c for c in cycles if c["grid_from_park_meter"][0]]
    assert stood, "the park meter never stood in for the lying meter"
    assert all(c["mode"] == "normal" and abs(c["grid_kw"][0] - 30.0) < 1 for c in stood)
    normal_from = next(i for i, c in enumerate(cycles) if c["mode"] == "normal")  # every meter read
    assert all(c["mode"] == "normal" for c in cycles[normal_from:])
    assert any(abs(g - 90.0) < 1 for g in seen)  # the real step was taken
    assert cycles[-1]["mode"] == "normal"
    assert "implausible (contradicted" in journal
    assert "a: its grid meter is stale; its grid is taken as the park meter" in journal
    assert "a: its grid meter reads again" in journal
