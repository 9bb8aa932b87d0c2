"""Stale is not measured (#13 item 7): `hubctl run` against `hubctl simulate`, a grid meter silent
for 60 s of the quarter-hour 12:15-12:30, the ledger and the journal's quarter line.

Before: the store handed the silent meter's last value on with a growing age, and the ledger and
the quarter meter counted every cycle as measured (81 s "covered" of 90 s with the meter silent 60
s, at the meter's last power). Now a step with any meter older than `control.stale_after_s` is
not measured; once the meter answers again the gap is filled from its energy counters (the
simulated Janitza UMG 96RM has import and export kWh registers) and marked as filled: the
ledger's quarter row (`filled_s`) and the journal's line say how much. The rules without
counters are tested on `CounterFill` itself (test_counter_fill.py). Accelerated, as
test_service_e2e.py, whose helpers this reuses.
"""

from __future__ import annotations

import signal
import sqlite3
from typing import TYPE_CHECKING

import pytest
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


def test_a_silent_meter_s_gap_is_filled_from_its_counters_not_its_last_value(tmp_path: Path) -> None:
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
    filled_at_least = gap - stale_after - 3.0  # stale after 5 s; a few seconds of read timing
    db = sqlite3.connect(state_dir / "ledger.sqlite")
    try:
        covered, filled = db.execute(
            "SELECT covered_s, filled_s FROM quarters WHERE start_utc = ?", (QUARTER,)
        ).fetchone()
        rows = db.execute(
            "SELECT company, covered_s FROM allocations WHERE start_utc = ?", (QUARTER,)
        ).fetchall()
    finally:
        db.close()
    assert filled >= filled_at_least, (filled, gap)  # the gap, from the counters
    assert filled <= gap + 90.0  # ... and its reconnect (its backoff in real s is 20x longer in park time)
    assert (
        covered >= 880.0
    )  # the rest measured, the gap filled (unfilled: 775 s; the start of the run takes a few)
    assert {c for c, _ in rows} == {"alpha", "beta", "gamma"}
    assert all(s >= 880.0 for _, s in rows), rows
    assert quarter["coverage"] >= 880.0 / 900.0  # the journal's evidence agrees
    assert quarter["filled_s"] == pytest.approx(filled, abs=1.0)
    assert "s filled from energy counters)" in err.decode()
