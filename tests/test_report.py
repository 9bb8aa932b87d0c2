"""`hubctl report` on a `hubctl sim` run of a shared scenario, and on a ledger fed the same run."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hubctl.cli.main import main as cli_main
from hubctl.config.scenario import load_scenario
from hubctl.core.limits import LimitClock
from hubctl.core.quarters import CURTAILED_ESTIMATED, CURTAILED_MEASURED, ParkStep, QuarterRow
from hubctl.data.ledger import Ledger
from hubctl.data.report import Prices, ReportInput, build
from hubctl.data.report_load import _read_timeseries
from hubctl.data.report_render import write

SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
SCENARIO = SHARED / "scenarios" / "summer-small" / "scenario.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sim_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SCENARIO.is_file():
        pytest.skip(f"shared scenario not found: {SCENARIO}")
    out = tmp_path_factory.mktemp("sim")
    assert cli_main(["sim", "--scenario", str(SCENARIO), "--out", str(out)]) == 0
    return out


def _allocation_sums(path: Path) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    with path.open() as f:
        for row in csv.DictReader(f):
            for k in ("import_kwh", "export_kwh", "shared_in_kwh", "shared_out_kwh"):
                sums[row["company"]][k] += float(row[k])
    return sums


def _statements(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["company"]: row for row in csv.DictReader(f)}


def _check_pngs(out: Path) -> None:
    for name in ("park-2026-06-22.png", "shares-2026-06.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name  # a real plot, not an empty canvas


def test_report_on_a_sim_run_matches_its_allocations(sim_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    rc = cli_main(
        ["report", "--sim", str(sim_out), "--scenario", str(SCENARIO), "--format", "csv", "--out", str(out)]
    )
    assert rc == 0
    _check_pngs(out)
    want = _allocation_sums(sim_out / "allocations.csv")
    got = _statements(out / "statements.csv")
    assert set(got) == set(want)
    shared = 0.0
    for company, row in got.items():
        assert row["month"] == "2026-06"
        for k, v in want[company].items():
            assert float(row[k]) == pytest.approx(v, abs=1e-5), (company, k)
        s_in, s_out = float(row["shared_in_kwh"]), float(row["shared_out_kwh"])
        assert float(row["charged_eur"]) == pytest.approx(s_in * 0.12, abs=1e-4)  # 12 ct per kWh received
        assert float(row["paid_eur"]) == pytest.approx(s_out * 0.10, abs=1e-4)  # 10 ct per kWh given
        assert float(row["supplier_kwh"]) == pytest.approx(float(row["import_kwh"]) - s_in, abs=1e-5)
        shared += s_in
    summary = json.loads((sim_out / "summary.json").read_text())
    with (out / "kpis.csv").open() as f:
        (kpi,) = list(csv.DictReader(f))
    assert float(kpi["shared_kwh"]) == pytest.approx(summary["shared_kwh"], abs=1e-4)
    assert float(kpi["community_eur"]) == pytest.approx(shared * 0.02, abs=1e-4)
    assert int(kpi["quarters"]) == 96
    assert int(kpi["quarters_over"]) == summary["cap_quarters_over"]
    assert float(kpi["completeness"]) == pytest.approx(1.0)
    for k in ("self_consumption", "self_sufficiency", "curtailed_kwh", "pv_kwh", "load_kwh"):
        assert float(kpi[k]) == pytest.approx(summary[k], rel=1e-6, abs=1e-6), k
    # the simulator knows its available PV: the figure is measured, in the summary and the report
    assert summary["curtailed_basis"] == kpi["curtailed_basis"] == "measured"
    assert float(kpi["import_kwh"]) == pytest.approx(summary["park_import_kwh"], rel=1e-6)
    assert float(kpi["co2_avoided_kg"]) == pytest.approx(
        (summary["pv_kwh"] - summary["park_export_kwh"]) * 0.374, rel=1e-6
    )
    assert float(kpi["kwmax_kw"]) <= float(kpi["contracted_import_kw"])

    md = tmp_path / "md"
    assert (
        cli_main(
            ["report", "--sim", str(sim_out), "--scenario", str(SCENARIO), "--out", str(md), "--no-plots"]
        )
        == 0
    )
    text = (md / "report.md").read_text()
    for company in want:
        assert f"| {company} |" in text
    assert "kWmax" in text
    assert "data completeness | 100.0% |" in text
    assert "| PV curtailed | " in text  # measured: no "(est.)"
    assert "(est.)" not in text


def test_html_report_embeds_the_plots(sim_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "html"
    rc = cli_main(
        ["report", "--sim", str(sim_out), "--scenario", str(SCENARIO), "--format", "html", "--out", str(out),
         "--from", "2026-06-22", "--to", "2026-06-22", "--price-in", "15"]
    )  # fmt: skip
    assert rc == 0
    text = (out / "report.html").read_text()
    assert "<img src='park-2026-06-22.png'" in text
    assert "consumers pay 15 ct/kWh" in text
    _check_pngs(out)


def test_report_without_the_scenario_says_what_is_missing(
    sim_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["report", "--sim", str(sim_out), "--out", str(tmp_path)]) == 1
    assert "--scenario" in capsys.readouterr().err


def test_the_ledger_fed_the_sim_run_gives_the_same_allocations_and_report(
    sim_out: Path, tmp_path: Path
) -> None:
    """The gateway path: the ledger takes each 1 s step of the run; its rows and report match the sim's."""
    scenario = load_scenario(SCENARIO)
    cfg = scenario.config
    ids = [c.id for c in cfg.companies]
    head, data = _read_timeseries(sim_out / "timeseries.csv")
    col = {name: i for i, name in enumerate(head)}
    grid_cols = [col[f"{c}.grid_kw"] for c in ids]
    clock = LimitClock(cfg.park, {}, cfg.tz)
    store = tmp_path / "state"
    led = Ledger.from_config(store / "ledger.sqlite", cfg)
    for row in data:
        ts = scenario.start_utc + row[col["t_s"]]
        lim, _ = clock.at(ts)
        park = ParkStep(
            load_kw=sum(row[col[f"{c}.load_kw"]] for c in ids),
            pv_kw=sum(row[col[f"{c}.pv_kw"]] for c in ids),
            pv_available_kw=sum(row[col[f"{c}.pv_available_kw"]] for c in ids),
            import_limit_kw=lim.import_kw,
            import_source=lim.import_source,
            export_limit_kw=lim.export_kw,
            export_source=lim.export_source,
        )
        led.add_step(ts, [float(row[i]) for i in grid_cols], scenario.step_s, park)
    led.close_due(scenario.start_utc + scenario.duration_s)
    rows = led.rows()
    led.close()
    with (sim_out / "allocations.csv").open() as f:
        sim_rows = list(csv.DictReader(f))
    assert len(rows) == len(sim_rows) == 96 * len(ids)
    for r, s in zip(rows, sim_rows, strict=True):
        assert r.start_utc == scenario.start_utc + float(s["interval_start_s"])
        assert r.company == s["company"]
        for k in ("import_kwh", "export_kwh", "shared_in_kwh", "shared_out_kwh"):
            # timeseries.csv holds 4 decimals of kW: at most 0.00005 kW x 900 s off per step sum
            assert getattr(r, k) == pytest.approx(float(s[k]), abs=2e-5), (r.start_utc, r.company, k)

    data_cfg = cfg.model_dump(mode="json", exclude_none=True)
    data_cfg["storage"] = {"dir": str(store)}
    config_path = tmp_path / "site.yaml"
    config_path.write_text(yaml.safe_dump(data_cfg))
    out = tmp_path / "ledger-report"
    assert cli_main(["check-config", str(config_path)]) == 0
    assert cli_main(["report", "--config", str(config_path), "--format", "csv", "--out", str(out)]) == 0
    _check_pngs(out)
    got = _statements(out / "statements.csv")
    want = _allocation_sums(sim_out / "allocations.csv")
    for company, row in got.items():
        for k, v in want[company].items():
            assert float(row[k]) == pytest.approx(v, abs=1e-3), (company, k)
    with (out / "kpis.csv").open() as f:
        (kpi,) = list(csv.DictReader(f))
    summary = json.loads((sim_out / "summary.json").read_text())
    assert float(kpi["completeness"]) == pytest.approx(1.0)
    assert float(kpi["curtailed_kwh"]) == pytest.approx(summary["curtailed_kwh"], abs=1e-2)
    assert kpi["curtailed_basis"] == "measured"  # the ledger was given the available PV
    assert float(kpi["self_consumption"]) == pytest.approx(summary["self_consumption"], abs=1e-5)


def test_an_estimated_curtailment_is_marked_in_every_format(tmp_path: Path) -> None:
    """A month with one quarter from the gateway's estimate: "PV curtailed (est.)", ``curtailed_basis``."""
    cfg = load_scenario(SCENARIO).config
    t0 = load_scenario(SCENARIO).start_utc

    def quarter(k: int, curtailed: float | None, basis: str | None) -> QuarterRow:
        return QuarterRow(
            t0 + 900 * k, 1.0, 0.5, 2.0, None, None, "none", "none", 3.0, 4.0, curtailed, 900.0,
            over_cap=False, curtailed_basis=basis,
        )  # fmt: skip

    quarters = [
        quarter(0, 1.25, CURTAILED_MEASURED),
        quarter(1, 2.0, CURTAILED_ESTIMATED),
        quarter(2, None, None),
    ]
    inp = ReportInput(
        cfg.site.id, cfg.site.id, cfg.tz, tuple(c.id for c in cfg.companies), [], quarters, None, None,
        Prices(), "test", (t0, t0 + 2700),
    )  # fmt: skip
    (month,) = build(inp)
    assert month.kpis.curtailed_kwh == pytest.approx(3.25)
    assert month.kpis.curtailed_basis == CURTAILED_ESTIMATED
    write(inp, [month], tmp_path, "md", plots=False)
    assert "| PV curtailed (est.) | 3.2 kWh |" in (tmp_path / "report.md").read_text()
    write(inp, [month], tmp_path, "html", plots=False)
    assert "PV curtailed (est.)" in (tmp_path / "report.html").read_text()
    write(inp, [month], tmp_path, "csv", plots=False)
    with (tmp_path / "kpis.csv").open() as f:
        (kpi,) = list(csv.DictReader(f))
    assert (kpi["curtailed_kwh"], kpi["curtailed_basis"]) == ("3.25", "estimated")
    (measured,) = build(replace(inp, quarters=quarters[:1]))
    assert measured.kpis.curtailed_basis == CURTAILED_MEASURED
    (none,) = build(replace(inp, quarters=quarters[2:]))
    assert (none.kpis.curtailed_kwh, none.kpis.curtailed_basis) == (None, None)
