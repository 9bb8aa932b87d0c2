"""Command line: `hubctl sim | check-config | schema`.

Exit codes: 0 success, 1 a run failed, 2 usage, 78 (EX_CONFIG) bad configuration.

`hubctl check-config FILE [--env-file FILE] [--mqtt-url URL] [--influx-url URL] [--web HOST:PORT]`
rejects all that `hubctl run` rejects (issue #13): the file as `hubctl run` reads it (`config.base.load_yaml`:
duplicate keys, encoding, nesting, booleans for numbers), then for a site config every start
check of the service (`hubctl.service.preflight.start_problems`: settings without effect, the
broker URL and TLS files, every device entry built as the gateway builds it, the state directory)
in this process's environment plus the variables of `--env-file` (the unit's EnvironmentFile,
`KEY=VALUE` lines, where the broker URL and the secrets live). It creates nothing: a state
directory that does not exist yet must be creatable. A scenario (SCENARIOS.md) is checked as a
config only (it has no devices and is never run as a service).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hubctl.cli import data as cli_data
from hubctl.cli import devices as cli_devices
from hubctl.cli import history as cli_history
from hubctl.cli import service as cli_service
from hubctl.cli import simulate as cli_simulate
from hubctl.config.base import load_yaml
from hubctl.config.site import SiteConfig, parse_config, report_problems
from hubctl.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence


def _env_file(path: str) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile (`KEY=VALUE`, `#` comments, optional quotes)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(path, [f"(file): cannot read: {reason}"]) from exc
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(path, [f"line {number}: not KEY=VALUE"])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = load_yaml(path, ConfigError)
        scenario = isinstance(data, dict) and "duration_s" in data and "start" in data
        if scenario:  # a scenario (SCENARIOS.md) carries a site config too
            from hubctl.config.scenario import load_scenario

            cfg = load_scenario(path).config
        else:
            cfg = parse_config(data, str(path))
        env = {**os.environ, **(_env_file(args.env_file) if args.env_file else {})}
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    if not scenario:
        from hubctl.service.options import Options
        from hubctl.service.preflight import start_problems

        options = Options(mqtt_url=args.mqtt_url, influx_url=args.influx_url, web=args.web, env=env)
        problems = start_problems(cfg, options, create=False)
        if problems:  # what `hubctl run` would refuse to start with, in the same words
            code = report_problems(args.file, problems)
            if not args.env_file:  # the service's broker URL and secrets live in its EnvironmentFile
                print(
                    "  (judged in this shell's environment; the service also reads its EnvironmentFile, "
                    "/etc/hubctl/hubctl.env in deploy/hubctl.service: give --env-file FILE to judge with it)",
                    file=sys.stderr,
                )
            return code
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
    p = sub.add_parser(
        "check-config", help="validate a site config as `hubctl run` would; exit 78 listing every problem"
    )
    p.add_argument("file")
    p.add_argument(
        "--env-file",
        metavar="FILE",
        help="the unit's EnvironmentFile (e.g. /etc/hubctl/hubctl.env): its variables are checked too",
    )
    p.add_argument("--mqtt-url", metavar="URL", help="as `hubctl run --mqtt-url`")
    p.add_argument("--influx-url", metavar="URL", help="as `hubctl run --influx-url`")
    p.add_argument(
        "--web",
        metavar="HOST:PORT",
        type=cli_service.listen_arg,
        help="as `hubctl run --web` (the park page)",
    )
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
