"""bench/lp_same_end.py: the perfect-foresight bound with the batteries' energy held at given times.

The bench's own formulation must give score.py's bound when nothing is held (else its second
figure compares the run with something else), and holding energy can only cost import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import score_module

from simulators.contract import SHARED

if TYPE_CHECKING:
    from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench" / "lp_same_end.py"
DAY = SHARED / "scenarios" / "summer-small" / "scenario.yaml"
RES_S = 300.0


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lp_same_end", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lp_same_end"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def day() -> tuple[Any, dict[str, Any], Any]:
    score = score_module()
    if not DAY.exists():
        pytest.skip(f"{DAY} not found")
    sc = score.load_scenario(str(DAY))
    return score, sc, score.read_profiles(sc)


def _pool(sc: dict[str, Any]) -> tuple[float, float]:
    bats = [c["bat"] for c in sc["companies"] if c["bat"]]
    lo = sum(float(b["capacity_kwh"]) * float(b.get("min_soc_pct", 0)) / 100 for b in bats)
    hi = sum(float(b["capacity_kwh"]) * float(b.get("max_soc_pct", 100)) / 100 for b in bats)
    return lo, hi


def test_with_nothing_held_it_is_score_py_s_bound(day: tuple[Any, dict[str, Any], Any]) -> None:
    score, sc, prof = day
    ours = _bench().bound(score, sc, prof, RES_S, {})
    theirs = score.lp_bound(sc, prof, res_s=RES_S)["park_import_kwh"]
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-3)


def test_energy_held_costs_import_and_more_costs_more(day: tuple[Any, dict[str, Any], Any]) -> None:
    score, sc, prof = day
    bench = _bench()
    lo, hi = _pool(sc)
    end = float(sc["duration_s"])
    free = bench.bound(score, sc, prof, RES_S, {})
    half = bench.bound(score, sc, prof, RES_S, {end: (lo + hi) / 2})
    full = bench.bound(score, sc, prof, RES_S, {end: hi})
    # ending full costs at least the energy above the minimum the free bound ends with, bought at
    # the grid (it ends with what it cannot use: at its minimum on a day like this one)
    assert free < half < full
    assert full - free >= (hi - lo) * 0.9
    # holding the batteries full at 06:00 as well (a first day's ramp-hours prior) means buying at
    # night what they lack and spending it in the morning: the round trip's losses
    start = sum(
        float(c["bat"]["capacity_kwh"]) * float(c["bat"]["soc_pct"]) / 100
        for c in sc["companies"]
        if c["bat"]
    )
    eta = min(float(c["bat"].get("efficiency", 1)) for c in sc["companies"] if c["bat"])
    morning = bench.bound(score, sc, prof, RES_S, {6 * 3600.0: hi, end: hi})
    assert morning - full >= 0.5 * (hi - start) * (1 / eta - eta) > 0
