"""`hubctl sim` end to end on small synthetic parks: output contract, causality, determinism."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hubctl.cli.main import main
from hubctl.config.scenario import load_scenario
from hubctl.sim.run import run
from simulators.contract import load_score

SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SCORE = SHARED / "tools" / "score.py"
START = "2026-06-22T06:00:00+02:00"


def write_park(
    directory: Path,
    *,
    hours: float = 3.0,
    change_after_s: float | None = None,
    seed: int = 1,
    sharing: dict[str, Any] | None = None,
) -> Path:
    """A small park from 06:00 local: three companies, one battery, export congestion towards noon.
    With `change_after_s`, the profiles after that time are replaced by other random values."""
    directory.mkdir(parents=True, exist_ok=True)
    t = np.arange(0, hours * 3600 + 1, 10.0)
    rng = np.random.default_rng(seed)
    sun = np.clip(np.sin(np.pi * (t / 3600 + 6 - 5.5) / 16), 0, None)
    cols = {
        "office.load_kw": 40 + 60 * (t > 7200) + rng.normal(0, 3, t.size),
        "office.pv_kw": 180 * sun,
        "works.load_kw": 80 + 120 * (rng.random(t.size) > 0.7),
        "works.pv_kw": 250 * sun,
        "store.load_kw": 60 + rng.normal(0, 5, t.size),
        "store.pv_kw": 120 * sun,
    }
    if change_after_s is not None:
        other = np.random.default_rng(seed + 100)
        late = t > change_after_s
        for values in cols.values():
            values[late] = other.uniform(0, 300, late.sum())
    with (directory / "profiles.csv").open("w", encoding="utf-8") as f:
        f.write("t_s," + ",".join(cols) + "\n")
        for k, tk in enumerate(t):
            f.write(f"{tk:g}," + ",".join(f"{max(v[k], 0):.2f}" for v in cols.values()) + "\n")
    scenario = {
        "name": "tiny-park",
        "start": START,
        "timezone": "Europe/Amsterdam",
        "duration_s": hours * 3600,
        "step_s": 1,
        "profiles": "profiles.csv",
        "measurement_delay_s": 1,
        "park": {"import_limit_kw": 300, "export_limit_kw": 150},
        "companies": [
            {"id": "office", "pv": {"peak_kw": 200, "ramp_pct_per_s": 10}},
            {"id": "works", "pv": {"peak_kw": 300, "ramp_pct_per_s": 10}, "export_limit_kw": 120},
            {
                "id": "store",
                "pv": {"peak_kw": 150, "ramp_pct_per_s": 10},
                "battery": {
                    "capacity_kwh": 200,
                    "max_charge_kw": 100,
                    "max_discharge_kw": 100,
                    "soc_pct": 60,
                    "min_soc_pct": 5,
                    "max_soc_pct": 95,
                    "efficiency": 0.95,
                    "ramp_pct_per_s": 50,
                },
            },
        ],
        "sharing": sharing or {"key": "pro_rata", "interval_s": 900},
    }
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return path


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "timeseries.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_outputs_follow_the_contract(tmp_path: Path) -> None:
    scenario = write_park(tmp_path / "park", hours=1.0)
    summary = run(load_scenario(scenario), tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 3600
    assert rows[0]["t_s"] == "0"
    assert rows[0]["office.import_limit_kw"] == ""  # no own cap: empty cell
    assert rows[0]["works.export_limit_kw"] == "120.0000"
    assert rows[0]["office.battery_kw"] == "0.0000"
    with (tmp_path / "out" / "allocations.csv").open(encoding="utf-8") as f:
        alloc = list(csv.DictReader(f))
    assert len(alloc) == 4 * 3  # four quarter-hours, three companies
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("cap_quarters_over", "curtailed_kwh", "park_import_kwh", "self_sufficiency", "wall_s"):
        assert key in saved
    assert saved["cap_quarters_over"] == summary["cap_quarters_over"]


@pytest.mark.skipif(not SCORE.exists(), reason="../shared/tools/score.py not found")
@pytest.mark.parametrize("key", ["pro_rata", "static", "equal", "priority"])
def test_score_finds_no_failed_check(tmp_path: Path, key: str) -> None:
    sharing: dict[str, Any] = {"key": key, "interval_s": 900}
    if key == "static":
        sharing["shares"] = {"office": 0.5, "store": 0.3}
    if key == "priority":
        sharing["order"] = ["store", "office"]
    scenario = write_park(tmp_path / "park", hours=1.0, sharing=sharing)
    run(load_scenario(scenario), tmp_path / "out")
    score = load_score()
    sc = score.load_scenario(str(scenario))
    ck = score.Checks()
    ts = score.read_timeseries(str(tmp_path / "out" / "timeseries.csv"))
    res = score.validate(sc, score.read_profiles(sc), ts, ck)
    assert res is not None
    score.compare_allocations(sc, res, str(tmp_path / "out" / "allocations.csv"), ck)
    m = score.metrics(sc, sc["step_s"], res["q"], res["G"], res["lim"], res["comp"])

    def counts(eps: float) -> Any:
        return score.over_counts(sc, sc["step_s"], res["q"], res["G"], res["lim"], res["comp"], eps)

    score.compare_summary(m, str(tmp_path / "out" / "summary.json"), ck, counts)
    assert not ck.failed, ck.failed
    assert m["cap_quarters_over"] == 0


def test_decisions_before_a_change_do_not_depend_on_it(tmp_path: Path) -> None:
    """Causality: two parks identical until t = 1.5 h and different after give identical runs until then."""
    change = 5400.0
    a = write_park(tmp_path / "a", hours=2.0)
    b = write_park(tmp_path / "b", hours=2.0, change_after_s=change)
    run(load_scenario(a), tmp_path / "out-a")
    run(load_scenario(b), tmp_path / "out-b")
    rows_a, rows_b = read_rows(tmp_path / "out-a"), read_rows(tmp_path / "out-b")
    n_same = int(change) + 1  # rows at t <= change see identical profile values
    assert rows_a[:n_same] == rows_b[:n_same]
    assert rows_a[n_same + 5 :] != rows_b[n_same + 5 :]  # the change did reach the run


def test_runs_are_deterministic(tmp_path: Path) -> None:
    scenario = write_park(tmp_path / "park", hours=0.5)
    run(load_scenario(scenario), tmp_path / "one")
    run(load_scenario(scenario), tmp_path / "two")
    for name in ("timeseries.csv", "allocations.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_cli_sim_prints_kpis_and_bad_scenario_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_park(tmp_path / "park", hours=0.25)
    assert main(["sim", "--scenario", str(scenario), "--out", str(tmp_path / "out")]) == 0
    assert "PV curtailed" in capsys.readouterr().out
    bad = yaml.safe_load(scenario.read_text())
    bad["companies"][2]["battery"]["max_charge_kw"] = -1
    scenario.write_text(yaml.safe_dump(bad))
    assert main(["sim", "--scenario", str(scenario), "--out", str(tmp_path / "out2")]) == 78
    assert "companies.2.battery.max_charge_kw" in capsys.readouterr().err


def write_history(scenario: Path, days: int, seed: int = 5) -> None:
    """A history.csv of `days` days before the scenario's start (SCENARIOS.md), working-day shaped."""
    data = yaml.safe_load(scenario.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    t = np.arange(-days * 86400, 0, 900.0)
    hour = ((t / 3600) % 24 + 24) % 24
    day = np.clip(np.sin(np.pi * (hour - 6) / 12), 0, None)
    cols = {
        "office.load_kw": 40 + 60 * (hour > 7) * (hour < 18) + rng.normal(0, 3, t.size),
        "office.pv_kw": 150 * day,
        "works.load_kw": 80 + 100 * (hour > 6) * (hour < 22) + rng.normal(0, 5, t.size),
        "works.pv_kw": 220 * day,
        "store.load_kw": 60 + rng.normal(0, 5, t.size),
        "store.pv_kw": 100 * day,
    }
    with (scenario.parent / "history.csv").open("w", encoding="utf-8") as f:
        f.write("t_s," + ",".join(cols) + "\n")
        for k, tk in enumerate(t):
            f.write(f"{tk:g}," + ",".join(f"{max(v[k], 0):.2f}" for v in cols.values()) + "\n")
    data["history"] = "history.csv"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.mark.slow
def test_causal_over_several_days_with_history(tmp_path: Path) -> None:
    """Causality with history and across midnight: two 2-day runs (the controller knowing a week of
    history) identical until noon of the second day give identical decisions until then, and the
    history does change what the controller does (against the same days without it)."""
    change = 36 * 3600.0
    a = write_park(tmp_path / "a", hours=40.0)
    b = write_park(tmp_path / "b", hours=40.0, change_after_s=change)
    for scenario in (a, b):
        write_history(scenario, days=7)
    assert load_scenario(a).history_path is not None
    run(load_scenario(a), tmp_path / "out-a")
    run(load_scenario(b), tmp_path / "out-b")
    rows_a, rows_b = read_rows(tmp_path / "out-a"), read_rows(tmp_path / "out-b")
    n_same = int(change) + 1
    assert rows_a[:n_same] == rows_b[:n_same]
    assert rows_a[n_same + 5 :] != rows_b[n_same + 5 :]
    assert main(["sim", "--scenario", str(a), "--out", str(tmp_path / "no-history"), "--no-history"]) == 0
    assert read_rows(tmp_path / "no-history") != rows_a
