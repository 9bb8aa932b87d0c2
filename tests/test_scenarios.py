"""Acceptance: every shared scenario day, simulated by `hubctl sim` and scored by the contract's score.py.

The days are those in `../shared/scenarios/` and the single days of `../shared/scenarios-extra/`
(the week runs in bench/controller_days.py and bench/sim_speed.py: minutes, not CI). A scenario's
history.csv reaches the controller as `hubctl history import` gives it to the gateway.

The figures come from score.py's JSON (its own recomputation from the run's files, and its
perfect-foresight LP bound), never from hubctl's summary. Targets (issue #10): no failed check,
no quarter-hour over a cap, no run over a cap longer than 5 s (`test_caps_hold`); curtailment
<= 1.10 x LP + 2 % of the day's PV energy and park import <= 1.05 x LP (`test_energy_near_the_bound`).
Where a day misses the energy targets for a known reason (docs/control.md, "Measured"), its
energy test is a strict xfail: it fails the suite the day it starts to pass, so the list stays true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SCORE = SHARED / "tools" / "score.py"


def _single_day(path: Path) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return float(data["duration_s"]) <= 90000  # a DST day has 25 h


SCENARIOS = sorted(
    p
    for p in [
        *(SHARED / "scenarios").glob("*/scenario.yaml"),
        *(SHARED / "scenarios-extra").glob("*/scenario.yaml"),
    ]
    if _single_day(p)
)
# days that miss an energy target, and why (docs/control.md, "Measured")
ENERGY_MISSES: dict[str, str] = {
    "first-day-morning-peak": "a first day: the batteries are filled for a ramp not seen yet and ready for "
    "an overcast tomorrow at midnight; import 1.22 x LP, 1.15 x it ending with the run's energy, 1.08 x "
    "it holding the ramp hours' energy too (bench/lp_same_end.py; docs/control.md, Measured)",
    "summer-small": "a first day: the ramp-hours prior buys energy the morning does not need; "
    "import 1.08 x LP, 1.01 x it holding the run's energy in the ramp hours (bench/lp_same_end.py; "
    "docs/control.md, Measured)",
}

needs_shared = pytest.mark.skipif(
    not SCENARIOS or not SCORE.exists(), reason="../shared with scenarios and score.py not found"
)


_SCORED: dict[Path, dict[str, Any]] = {}


def scored(scenario: Path, tmp: pytest.TempPathFactory) -> dict[str, Any]:
    """Simulate the day once per test session and score it with score.py --lp --json."""
    if scenario in _SCORED:
        return _SCORED[scenario]
    out = tmp.mktemp(scenario.parent.name) / "run"
    sim = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "sim", "--scenario", str(scenario), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sim.returncode == 0, sim.stderr
    score = subprocess.run(
        [sys.executable, str(SCORE), str(scenario), str(out), "--lp", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    res: dict[str, Any] = json.loads(next(line for line in score.stdout.splitlines() if line.startswith("{")))
    _SCORED[scenario] = res
    return res


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.parent.name)
def test_caps_hold(scenario: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = scored(scenario, tmp_path_factory)
    failed = [c for c in res["checks"] if not c["ok"]]
    assert not failed, failed
    m = res["metrics"]
    assert m["cap_quarters_over"] == 0
    assert m["longest_over_s"] <= 5


def _energy_params() -> list[Any]:
    params = []
    for p in SCENARIOS:
        why = ENERGY_MISSES.get(p.parent.name)
        marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
        params.append(pytest.param(p, marks=marks, id=p.parent.name))
    return params


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("scenario", _energy_params())
def test_energy_near_the_bound(scenario: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = scored(scenario, tmp_path_factory)
    m, lp = res["metrics"], res["lp"]
    curt_allowed = 1.10 * lp["curtailed_kwh"] + 0.02 * m["pv_kwh"]
    assert m["curtailed_kwh"] <= curt_allowed, (m["curtailed_kwh"], curt_allowed)
    imp_allowed = 1.05 * lp["park_import_kwh"]
    assert m["park_import_kwh"] <= imp_allowed, (m["park_import_kwh"], imp_allowed)
