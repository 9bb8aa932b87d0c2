"""A damaged `operator.json` never keeps `hubctl run` from starting (issue #13 item 3).

Random bytes in it made `hubctl run` exit 78 with a misleading "site config: mqtt" message (the
UnicodeDecodeError of reading it is a ValueError, which the gateway took for a bad broker
setting), and under the unit 78 means systemd does not restart it: the park had no control at
all. Here `hubctl run` starts against `hubctl simulate` and a private mosquitto on a state
directory holding such a file: it becomes ready with the configured caps, the file is moved
aside (kept byte for byte), the journal says so at ERROR, the retained `state` publishes it, and
the next operator command is saved to a new `operator.json`.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from support import MOSQUITTO, free_port
from test_service_e2e import (  # pytest puts tests/ on sys.path
    STEP_PROFILES,
    Park,
    Service,
    _cycle,
    _start_broker,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)
from test_service_wiring import _command, _stop, _with_state_dir

if TYPE_CHECKING:
    from pathlib import Path


async def _state(port: int, site: str) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"hubctl/{site}/state", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                doc: dict[str, Any] = json.loads(bytes(message.payload))
                if "operator_file" in doc or message.retain:
                    return doc
    raise AssertionError("unreachable")


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_a_damaged_operator_file_never_keeps_the_service_from_starting(tmp_path: Path) -> None:
    park = Park(tmp_path, STEP_PROFILES, battery_kw=(100, 40))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    damaged = random.Random(3).randbytes(2048)
    (state_dir / "operator.json").write_bytes(damaged)
    _with_state_dir(park, state_dir)
    site = park.config.site.id
    port = free_port()
    broker = _start_broker(port)
    service = Service(tmp_path, park, "--mqtt-url", f"mqtt://127.0.0.1:{port}")
    try:
        ready = service.wait_for("ready", lambda r: r.get("event") == "ready", 30)
        assert ready
        first = next(c for c in service.cycles())
        assert first["import_cap_kw"] == park.config.park.import_limit_kw  # the configured cap
        aside = sorted(state_dir.glob("operator.json.damaged-*"))
        assert len(aside) == 1
        assert aside[0].read_bytes() == damaged
        assert not (state_dir / "operator.json").exists()
        state = asyncio.run(_state(port, site))
        assert "not UTF-8 text" in state["operator_file"]["damaged"]
        assert state["operator_file"]["moved_to"] == str(aside[0])
        assert state["operator"] == {}
        replies = asyncio.run(_command(port, site, "import_limit_kw", {"value": 120, "id": "after"}))
        assert [r["ok"] for r in replies] == [True], replies
        saved = json.loads((state_dir / "operator.json").read_text(encoding="utf-8"))
        assert saved["settings"][0]["value"] == 120
        service.wait_for("the operator's cap", lambda r: _cycle(r) and r["import_cap_kw"] == 120, 5)
        err = _stop(service)
        assert f"{state_dir / 'operator.json'} is damaged (not UTF-8 text" in err
        assert f"moved aside to {aside[0].name}" in err
        assert "ERROR hubctl.operator_api" in err
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=5)
        service.close()
        park.stop()
        broker.terminate()
        broker.wait(timeout=5)
