"""One quarter-hour verdict (issue #12, item 8): a cap that changes inside a quarter, judged alike by the
journal's quarter line, the ledger, `hubctl report` and the sim's metrics (and the contract's scorer).

The park: one company that only draws (no PV, no battery: nothing the controller can change), import
cap 500 kW, a window of 400 kW from 16:10 to 16:20 local. Both quarters 16:00-16:15 and 16:15-16:30
then have a mean cap of (10 min x 500 + 5 min x 400) / 15 min = 466.7 kW. The park draws 450 kW in the
first (inside the mean cap, over the window's 400: the old journal said over) and 470 kW in the second
(over the mean cap though under the contract's 500 kW for ten minutes). Everything runs for real: `hubctl
sim` on the scenario, then its 1 s series through the real control core, the quarter meter and the
wall-clock jobs of `hubctl run` (driven as the accelerated control loop drives them) and the ledger,
then `hubctl report` on the ledger and on the sim output. The host's time zone is set to New York to
show that the quarter lines use the site's (Europe/Amsterdam).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from typing import TYPE_CHECKING

import pytest
from support import score_module

from hubctl.cli.main import main as cli_main
from hubctl.config.scenario import load_scenario
from hubctl.core.quarters import ParkStep, QuarterMeter
from hubctl.core.types import CompanyReading, Params, Snapshot, State
from hubctl.data.ledger import Ledger
from hubctl.data.report import Prices, build
from hubctl.data.report_load import _read_timeseries, load_ledger
from hubctl.devices.health import Health
from hubctl.service.clock import Clock
from hubctl.service.cycle import Controller
from hubctl.service.fallbacks import FallbackKeeper, FallbackTargets
from hubctl.service.jobs import Jobs
from hubctl.service.sinks import JsonLinesSink

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SCENARIO = """\
name: cap-change-mid-quarter
start: "2026-06-22T16:00:00+02:00"
timezone: Europe/Amsterdam
duration_s: 1800
step_s: 1
profiles: profiles.csv
measurement_delay_s: 1
park:
  import_limit_kw: 500
  export_limit_kw: 300
  windows:
    - {start: "16:10", end: "16:20", import_limit_kw: 400}
companies:
  - id: works
sharing:
  key: pro_rata
  interval_s: 900
"""
PROFILES = "t_s,works.load_kw,works.pv_kw\n0,450,0\n899,450,0\n900,470,0\n1799,470,0\n"
MEAN_CAP_KW = (600 * 500 + 300 * 400) / 900  # 466.7 kW in both quarters
Q1, Q2 = "2026-06-22 16:00 CEST", "2026-06-22 16:15 CEST"
WINDOW = "window 16:10-16:20"


@pytest.fixture
def host_in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's zone (TZ in the environment) is not the site's."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _scenario(tmp_path: Path) -> Path:
    folder = tmp_path / "scenario"
    folder.mkdir()
    (folder / "scenario.yaml").write_text(SCENARIO)
    (folder / "profiles.csv").write_text(PROFILES)
    return folder / "scenario.yaml"


@pytest.mark.usefixtures("host_in_new_york")
def test_a_cap_change_inside_a_quarter_gets_one_verdict_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path)
    scenario = load_scenario(path)
    cfg = scenario.config
    sim_out = tmp_path / "sim"

    # 1. the sim's metrics, and the contract's scorer on the same run
    assert cli_main(["sim", "--scenario", str(path), "--out", str(sim_out)]) == 0
    summary = json.loads((sim_out / "summary.json").read_text())
    assert summary["cap_quarters_over"] == 1
    capsys.readouterr()
    assert score_module().main([str(path), str(sim_out), "--json"]) in (0, None)
    scored = json.loads(capsys.readouterr().out.splitlines()[0])  # the JSON line, then the verdict
    assert scored["metrics"]["cap_quarters_over"] == 1

    # 2. the gateway: the run's park power through the real core, the quarter meter, the jobs and the ledger
    head, data = _read_timeseries(sim_out / "timeseries.csv")
    col = {name: i for i, name in enumerate(head)}
    params = Params.from_config(cfg)
    controller = Controller(params, State.initial(params))
    clock = Clock()
    keeper = FallbackKeeper(cfg, {}, Health([]), clock)
    meter = QuarterMeter()
    trace = tmp_path / "trace.jsonl"
    sink = JsonLinesSink(trace)
    jobs = Jobs(cfg, clock, controller, meter, [sink], None, FallbackTargets(keeper, controller, cfg.tz))
    ledger = Ledger.from_config(tmp_path / "state" / "ledger.sqlite", cfg)
    caplog.set_level(logging.INFO)
    for row in data:
        ts = scenario.start_utc + row[col["t_s"]]
        grid = float(row[col["works.grid_kw"]])
        decision = controller.decide(Snapshot(ts, (CompanyReading(grid_kw=grid),)))
        meter.add(ts, grid, 1.0, decision)  # the after-cycle steps, in the gateway's order
        lim = decision.park_limits
        step = ParkStep(
            import_limit_kw=lim.import_kw,
            import_source=lim.import_source,
            export_limit_kw=lim.export_kw,
            export_source=lim.export_source,
        )
        ledger.add_step(ts, [grid], 1.0, step)
        ledger.close_due(ts)
        jobs.accelerated(ts)
    end = scenario.start_utc + scenario.duration_s
    ledger.close_due(end)
    jobs.close_quarters(end)
    sink.close()

    # the journal: the site's clock, the mean cap and every source in force; one OVER THE CAP
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quarter ")]
    assert lines == [
        (
            f"quarter {Q1}: mean 450.0 kW, mean import cap 466.667 kW (contract + {WINDOW}), "
            "mean export cap 300 kW (contract), coverage 100 %"
        ),
        (
            f"quarter {Q2}: mean 470.0 kW, mean import cap 466.667 kW ({WINDOW} + contract), "
            "mean export cap 300 kW (contract), coverage 100 %: OVER THE CAP"
        ),
    ]
    over_levels = [r.levelno for r in caplog.records if "OVER THE CAP" in r.getMessage()]
    assert over_levels == [logging.WARNING]
    # the ledger's own warning names the quarter on the site's clock too
    assert any(f"quarter-hour {Q2} over the cap" in r.getMessage() for r in caplog.records)
    records = [json.loads(x) for x in trace.read_text().splitlines()]
    quarters = [r for r in records if r["kind"] == "quarter"]
    assert [(q["over"], q["import_source"]) for q in quarters] == [
        (False, f"contract + {WINDOW}"),
        (True, f"{WINDOW} + contract"),
    ]
    assert [q["import_cap_kw"] for q in quarters] == pytest.approx([MEAN_CAP_KW] * 2)

    # the ledger: the same means, sources and verdicts
    rows = ledger.quarters()
    ledger.close()
    assert [(r.over_cap, r.import_source) for r in rows] == [
        (q["over"], q["import_source"]) for q in quarters
    ]
    assert [r.import_limit_kw for r in rows] == pytest.approx([MEAN_CAP_KW] * 2)
    assert [r.grid_kw for r in rows] == pytest.approx([450.0, 470.0])

    # 3. `hubctl report` on the ledger (its computation) and on the sim output (the command)
    (month,) = build(load_ledger(cfg, tmp_path / "state" / "ledger.sqlite", None, None, Prices()))
    assert [(o.start_local, o.direction, o.source) for o in month.kpis.quarters_over] == [
        (Q2, "import", f"{WINDOW} + contract")
    ]
    assert month.kpis.quarters_over[0].import_limit_kw == pytest.approx(MEAN_CAP_KW)
    report = tmp_path / "report"
    argv = ["report", "--sim", str(sim_out), "--scenario", str(path), "--format", "csv", "--out", str(report)]
    assert cli_main([*argv, "--no-plots"]) == 0
    with (report / "quarters_over.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert [(q["quarter_start"], q["direction"], q["source"]) for q in listed] == [
        (Q2, "import", f"{WINDOW} + contract")
    ]
    assert float(listed[0]["grid_kw"]) == pytest.approx(470.0)
    assert float(listed[0]["import_limit_kw"]) == pytest.approx(MEAN_CAP_KW)
