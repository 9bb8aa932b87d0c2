"""Command line: `hubctl sim | check-config | schema`.

Exit codes: 0 success, 1 a run failed, 2 usage, 78 (EX_CONFIG) bad configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hubctl.cli import data as cli_data
from hubctl.cli import devices as cli_devices
from hubctl.cli import history as cli_history
from hubctl.cli import service as cli_service
from hubctl.cli import simulate as cli_simulate
from hubctl.config.site import SiteConfig, load_config, report_problems
from hubctl.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence


def _looks_like_scenario(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "duration_s" in data and "start" in data


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if _looks_like_scenario(path):  # a scenario (SCENARIOS.md) carries a site config too
            from hubctl.config.scenario import load_scenario

            cfg = load_scenario(path).config
        else:
            cfg = load_config(path)
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    bats = sum(1 for c in cfg.companies if c.battery)
    pvs = sum(1 for c in cfg.companies if c.pv)
    print(f"{args.file}: ok: site {cfg.site.id}, {len(cfg.companies)} companies, {pvs} PV, {bats} batteries")
    print(f"  {cfg.connection_summary()}")
    return 0


def _cmd_schema(_: argparse.Namespace) -> int:
    print(json.dumps(SiteConfig.model_json_schema(), indent=2))
    return 0


def _kpi_table(summary: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [
        ("quarter-hours over a cap", "cap_quarters_over", "{:d}"),
        ("seconds over the park cap", "cap_seconds_over", "{:.0f} s"),
        ("energy over the park cap", "cap_kwh_over", "{:.2f} kWh"),
        ("longest excursion", "longest_over_s", "{:.0f} s"),
        ("PV produced", "pv_kwh", "{:.1f} kWh"),
        ("PV curtailed", "curtailed_kwh", "{:.1f} kWh"),
        ("park import", "park_import_kwh", "{:.1f} kWh"),
        ("park export", "park_export_kwh", "{:.1f} kWh"),
        ("self-consumption", "self_consumption", "{:.1%}"),
        ("self-sufficiency", "self_sufficiency", "{:.1%}"),
        ("shared between companies", "shared_kwh", "{:.1f} kWh"),
        ("battery throughput", "battery_throughput_kwh", "{:.1f} kWh"),
        ("wall time", "wall_s", "{:.1f} s"),
    ]
    table = Table(title=f"hubctl sim: {summary.get('scenario', '')}")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for label, key, fmt in rows:
        v = summary.get(key)
        table.add_row(label, "-" if v is None else fmt.format(v))
    Console().print(table)


def _cmd_sim(args: argparse.Namespace) -> int:
    from hubctl.config.scenario import load_scenario
    from hubctl.core.types import Params
    from hubctl.errors import HistoryImportError
    from hubctl.sim import run as sim

    try:
        scenario = load_scenario(Path(args.scenario))
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    history = None
    if not args.no_history:
        try:
            history = sim.scenario_history(scenario, Params.from_config(scenario.config))
        except OSError as exc:
            return report_problems(args.scenario, [f"history: cannot read {exc.filename}: {exc.strerror}"])
        except HistoryImportError as exc:
            print(f"{exc.source}: the scenario's history is not usable:", file=sys.stderr)
            for line in exc.lines():
                print(f"  {line}", file=sys.stderr)
            return HistoryImportError.exit_code
    if history is None:
        history = Params.from_config(scenario.config).empty_history()
    out = Path(args.out)
    if args.progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        day_steps = 86400.0 / scenario.step_s
        days = max(1, math.ceil(scenario.steps / day_steps))
        with Progress(
            TextColumn(f"[bold]{scenario.name}"),
            TextColumn("day {task.fields[day]}/" + str(days)),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(),
        ) as bar:
            task = bar.add_task("sim", total=scenario.steps, day=1)
            summary = sim.run(
                scenario,
                out,
                lambda done, _total: bar.update(
                    task, completed=done, day=min(days, int((done - 1) // day_steps) + 1)
                ),
                history=history,
            )
    else:
        summary = sim.run(scenario, out, history=history)
    _kpi_table(summary)
    print(f"wrote {out / 'timeseries.csv'}, {out / 'allocations.csv'}, {out / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hubctl", description="Energy-hub controller for business parks")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sim", help="run the controller against a scenario's physics in simulated time")
    p.add_argument("--scenario", required=True, help="scenario.yaml (SCENARIOS.md)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--progress", action="store_true", help="show a progress bar (with the day)")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="start the controller knowing nothing, even where the scenario has a history.csv",
    )
    p.set_defaults(func=_cmd_sim)
    p = sub.add_parser("check-config", help="validate a site config; exit 78 listing every problem")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check_config)
    p = sub.add_parser("schema", help="print the site config JSON schema")
    p.set_defaults(func=_cmd_schema)
    cli_simulate.register(sub)
    cli_devices.register(sub)
    cli_data.register(sub)
    cli_service.register(sub)
    cli_history.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
