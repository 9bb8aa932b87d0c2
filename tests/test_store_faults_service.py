"""`hubctl run` on a state directory with a damaged spool or ledger records and forwards (issue #13 item 2).

The state directory is the one a previous run left: a spool holding 20,000 points the database
never got (400 chunks) and a ledger with three hours of settled quarters, both written by the
real code, then damaged as a bad SD card or a power cut leaves them: the spool cut in half, its
header overwritten, its last 1000 bytes missing (a torn last page: rows with NULL in them), or
the ledger's header overwritten beside an intact spool. `hubctl run` then runs against `hubctl
simulate` and a VictoriaMetrics (the helpers of test_service_e2e.py). Each time: one journal line
names the damaged file and where it went, the file is beside the new one, the service's points
reach the database, the ledger takes the run's steps, what could be read of the old spool is
delivered, each point once, and nothing raised.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from test_service_e2e import (  # pytest puts tests/ on sys.path
    STEP_PROFILES,
    Park,
    Service,
    _cycle,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)
from test_service_wiring import START_UTC, _with_state_dir
from test_store_faults import _damage

from hubctl.config.site import load_config
from hubctl.data.ledger import Ledger
from hubctl.data.points import Point
from hubctl.data.spool import Spool

if TYPE_CHECKING:
    from pathlib import Path

    from test_influx import VictoriaMetrics

OLD_POINTS = 20_000


def _previous_run(state: Path, config: Path) -> None:
    """What a previous run left: a spool with points the database never got, a ledger with quarters."""
    cfg = load_config(config)
    base_ms = round((time.time() - 7200) * 1000)
    spool = Spool(state / "spool.sqlite", chunk_points=50)
    for c in range(OLD_POINTS // 50):
        spool.append(
            Point("company", {"site": cfg.site.id, "company": "before"}, {"seq": float(i)}, base_ms + i)
            for i in range(50 * c, 50 * (c + 1))
        )
        spool.commit()
    ledger = Ledger.from_config(state / "ledger.sqlite", cfg)  # its rows are not what this test follows
    t = START_UTC - START_UTC % 900 - 3 * 3600
    for k in range(3 * 3600 // 10):
        ledger.add_step(t + 10 * k, [20.0, -5.0, 1.0], 10.0)
    ledger.close_due(START_UTC - START_UTC % 900)
    ledger.close()
    spool.close()


CASES = {  # file damaged, how, at least this many of the old points readable
    "spool-half": ("spool.sqlite", "half", 4000),
    "spool-header": ("spool.sqlite", "header", 0),
    "spool-tail": ("spool.sqlite", "tail", 19_000),
    "ledger-header": ("ledger.sqlite", "header", OLD_POINTS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hubctl_run_records_and_forwards_beside_a_damaged_file(
    tmp_path: Path, vm: VictoriaMetrics, case: str
) -> None:
    name, how, readable = CASES[case]
    park = Park(tmp_path, STEP_PROFILES, battery_kw=(100, 40))
    state = tmp_path / "state"
    _with_state_dir(park, state)
    site = park.config.site.id
    _previous_run(state, park.config_path)
    _damage(state / name, how)
    service = Service(tmp_path, park, "--influx-url", vm.url)
    try:
        ready = service.wait_for("ready", lambda r: r.get("event") == "ready", 30)
        service.wait_for("30 s of cycles", lambda r: _cycle(r) and r["ts_utc"] > ready["ts_utc"] + 30, 10)
        deadline = time.monotonic() + 15
        while True:
            got = vm.export(f'{{site="{site}"}}')
            park_points = [v for (n, _), values in got.items() if n == "park_grid_kw" for _, v in values]
            old = [v for (n, labels), values in got.items() if n == "company_seq" for _, v in values]
            if len(park_points) >= 30 and len(old) >= readable:
                break
            assert time.monotonic() < deadline, f"{len(park_points)} park points, {len(old)} old ones"
            time.sleep(0.2)
        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=5)
        service.close()
        park.stop()
    journal = err.decode()
    assert service.proc.returncode == 0, journal
    assert "Traceback" not in journal
    assert "running without the spool" not in journal
    assert "running without it" not in journal
    damaged = [line for line in journal.splitlines() if "is damaged" in line]
    assert len(damaged) == 1, damaged
    (aside,) = state.glob(f"{name}.damaged-*")
    assert aside.name in damaged[0]
    assert (state / name).is_file()
    # each old point once (VictoriaMetrics keeps a duplicate as a second sample)
    assert max(Counter(old).values(), default=1) == 1
    # the ledger took this run's steps (its open interval is from this run)
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    (text,) = db.execute("SELECT state FROM open_state WHERE id = 1").fetchone()
    db.close()
    assert json.loads(text)["last_end"] > START_UTC
