"""Stale is not measured (#13 item 7): `hubctl run` against `hubctl simulate`, a grid meter silent
for 60 s of the quarter-hour 12:15-12:30, the ledger and the journal's quarter line.

Before: the store handed the silent meter's last value on with a growing age, and the ledger and
the quarter meter counted every cycle as measured (81 s "covered" of 90 s with the meter silent 60
s). Now a step with any meter older than `control.stale_after_s` is not covered: the ledger's
quarter row and every company's allocation row, and the journal's coverage, show the gap.
Accelerated, as test_service_e2e.py, whose helpers this reuses.
"""

from __future__ import annotations

import signal
import sqlite3
from typing import TYPE_CHECKING

import yaml
from test_service_e2e import (  # pytest puts tests/ on sys.path
    STEP_PROFILES,
    Park,
    Service,
    _cycle,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)

if TYPE_CHECKING:
    from pathlib import Path

QUARTER = 1782123300.0  # 12:15 CEST
SILENT_S = 60.0


def test_a_silent_meter_s_last_value_is_not_counted_as_measured(tmp_path: Path) -> None:
    park = Park(tmp_path, STEP_PROFILES, (100, 40))
    state_dir = tmp_path / "state"
    data = yaml.safe_load(park.config_path.read_text(encoding="utf-8"))
    data["storage"] = {"dir": str(state_dir)}
    park.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    service = Service(tmp_path, park)
    try:
        service.wait_for("12:20", lambda r: _cycle(r) and r["ts_utc"] >= QUARTER + 300, 40)
        park.request(op="inject", device="beta-grid", fault="silent")
        silent_from = park.now_utc()
        service.wait_for("silent 60 s", lambda r: _cycle(r) and r["ts_utc"] >= silent_from + SILENT_S, 20)
        park.request(op="clear", device="beta-grid")
        back = park.now_utc()
        failsafe = [c for c in service.cycles() if c["mode"] == "failsafe" and c["ts_utc"] >= silent_from]
        assert failsafe  # the meter went stale during the gap: the test shows a real gap
        quarter = service.wait_for(
            "the quarter 12:15-12:30", lambda r: r["kind"] == "quarter" and r["start_utc"] == QUARTER, 40
        )
        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
        assert service.proc.returncode == 0, err.decode()
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
        service.close()
        park.stop()
    gap = back - silent_from
    stale_after = park.config.control.stale_after_s
    uncovered_at_least = gap - stale_after - 3.0  # stale after 5 s; a few seconds of read timing
    db = sqlite3.connect(state_dir / "ledger.sqlite")
    try:
        covered = db.execute("SELECT covered_s FROM quarters WHERE start_utc = ?", (QUARTER,)).fetchone()[0]
        rows = db.execute(
            "SELECT company, covered_s FROM allocations WHERE start_utc = ?", (QUARTER,)
        ).fetchall()
    finally:
        db.close()
    assert covered <= 900.0 - uncovered_at_least, (covered, gap)
    # the rest of the quarter was measured (the meter answers again after its reconnect, whose
    # backoff in real seconds is 20 times as long in the park's accelerated time)
    assert covered >= 900.0 - gap - 90.0
    assert {c for c, _ in rows} == {"alpha", "beta", "gamma"}
    assert all(s <= 900.0 - uncovered_at_least for _, s in rows), rows
    assert quarter["coverage"] * 900.0 <= 900.0 - uncovered_at_least  # the journal's evidence agrees
