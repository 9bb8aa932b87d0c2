"""`hubctl run` on a shared connection, against `hubctl simulate --park-meter --common-load-kw 40`.

The simulated park meter (SunSpec, over real Modbus TCP) reads the companies' grid plus a 40 kW
load no company meter sees (street lighting, a gatehouse, losses). After the load step at
t = 60 s the companies' meters sum to about 170 kW and the park meter to about 210 kW against
the 150 kW cap: the service must hold the cap on the park meter (the batteries give about 40 kW
more than the sum alone asks for), log the disagreement once and publish it with every cycle,
stand the park meter in for a company meter that freezes (control goes on, the cap held), and go
to fail-safe when the park meter freezes. Accelerated, as test_service_e2e.py, whose
helpers this reuses. The same park without a park meter (a group contract) holds the cap on the
companies' sum: that run is test_service_e2e.py's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from test_service_e2e import (  # pytest puts tests/ on sys.path
    IMPORT_CAP_KW,
    STEP_PROFILES,
    Park,
    Service,
    _cycle,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)

if TYPE_CHECKING:
    from pathlib import Path

COMMON_KW = 40.0
STEP_UTC = 1782123295.0 + 60  # the scenario's start + the load step


def test_the_cap_is_held_on_the_park_meter_and_a_disagreement_is_published(tmp_path: Path) -> None:
    park = Park(tmp_path, STEP_PROFILES, (100, 40), "--park-meter", "--common-load-kw", str(COMMON_KW))
    assert park.config.connection.value == "shared"  # inferred from the park meter the simulator wrote
    service = Service(tmp_path, park)
    try:
        service.wait_for("the load step", lambda r: _cycle(r) and r["ts_utc"] > STEP_UTC + 20, 40)
        service.wait_for("60 s after it", lambda r: _cycle(r) and r["ts_utc"] > STEP_UTC + 80, 20)
        held = [c for c in service.cycles() if STEP_UTC + 20 <= c["ts_utc"] <= STEP_UTC + 80]
        assert len(held) >= 40
        park_kw = [c["park_grid_kw"] for c in held]
        summed = [sum(c["grid_kw"]) for c in held]
        # the park meter, the grid operator's, inside the cap; the companies' sum well below it
        assert sum(park_kw) / len(park_kw) <= IMPORT_CAP_KW
        assert max(park_kw) <= IMPORT_CAP_KW + 5
        assert max(summed) <= IMPORT_CAP_KW - COMMON_KW + 5
        assert all(c["mode"] == "normal" for c in held)
        # without the batteries the park meter would read about 210 kW: they give what the common
        # load needs too (the sum alone would ask for 20 kW)
        batteries = [sum(b or 0.0 for b in c["battery_kw"]) for c in held]
        assert min(batteries) > 170 + COMMON_KW - IMPORT_CAP_KW - 10
        # published: the common load with every cycle, the disagreement once it lasted 10 s
        assert all(abs(c["common_kw"] - COMMON_KW) < 3 for c in held)
        assert all(c["meters_disagree"] for c in held)
        assert not any(c["grid_from_park_meter"][2] for c in held)  # gamma's real step was taken

        # gamma's meter freezes: the park meter stands in for it (the park meter less the others
        # and the common load), control goes on and the cap stays held on the park meter
        park.request(op="inject", device="gamma-grid", fault="frozen")
        first = service.wait_for("the stand-in", lambda r: _cycle(r) and r["grid_from_park_meter"][2], 20)
        stood = service.wait_for("20 s of it", lambda r: _cycle(r) and r["ts_utc"] > first["ts_utc"] + 20, 20)
        during = [c for c in service.cycles() if first["ts_utc"] <= c["ts_utc"] <= stood["ts_utc"]]
        assert all(c["mode"] == "normal" for c in during)
        assert all(c["grid_from_park_meter"] == [False, False, True] for c in during)
        assert sum(c["park_grid_kw"] for c in during) / len(during) <= IMPORT_CAP_KW
        assert all(abs(c["grid_kw"][2] - 231.0) < 8 for c in during)  # gamma's load 230-231 kW, no PV
        park.request(op="clear", device="gamma-grid")
        service.wait_for("gamma's own meter", lambda r: _cycle(r) and not r["grid_from_park_meter"][2], 20)

        # the park meter freezes: its reading goes stale, the park is in fail-safe
        park.request(op="inject", device="park-meter", fault="frozen")
        frozen = service.wait_for("fail-safe", lambda r: _cycle(r) and r["mode"] == "failsafe", 20)
        assert "park meter" in frozen["reason"]
        park.request(op="clear", device="park-meter")
        service.wait_for("normal again", lambda r: _cycle(r) and r["mode"] == "normal", 20)

        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
        assert service.proc.returncode == 0, err.decode()
        journal = err.decode()
        assert journal.count("the companies' meters sum to") == 1, journal
        assert "park meter park-meter reads" in journal
        # the freeze's episode only: the load step, read by gamma's meter before the park meter's,
        # may be contradicted for one reading, never for the stale time
        assert journal.count("gamma: its grid meter is stale") == 1, journal
        assert "gamma: its grid meter reads again" in journal
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
        service.close()
        park.stop()


def test_a_common_load_without_a_park_meter_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "simulate", "--scenario", "x.yaml", "--common-load-kw", "40"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "give --park-meter too" in proc.stderr
