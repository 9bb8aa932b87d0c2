"""Command line for the stored data: ``hubctl export`` (the local spool) and ``hubctl report``.

Dates on the command line are the site's local time: ``--from 2026-06-01``
is local midnight; ``--to 2026-06-30`` as a date includes that whole day (it
means up to local midnight after it), while a time (``2026-06-30T12:00``,
with or without an offset) is an exclusive end.

Exit codes as in ``hubctl.cli``: 0 success, 1 a run failed (no data, a file
missing; ``hubctl export`` whose reader closed the pipe early, as ``| head`` does: quietly, no
traceback), 2 usage, 78 a bad configuration.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from hubctl.config.site import SiteConfig, load_config, report_problems
from hubctl.errors import ConfigError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

_CSV_TAGS = ("site", "company", "device")


def parse_when(text: str | None, tz: ZoneInfo, *, end: bool = False) -> float | None:
    """UTC epoch seconds of a local date or ISO time; a date as ``end`` means the following midnight."""
    if text is None:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        moment = dt.datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
        return moment.timestamp()
    if end:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).timestamp()


def _config_error(exc: ConfigError) -> int:
    return report_problems(exc.source, exc.problems)


# --- export -------------------------------------------------------------------------------------------------


def _csv_rows(lines: Iterable[str]) -> Iterable[list[str]]:
    """Long format, a row per field: time, measurement, site, company, device, other tags, field, value."""
    from hubctl.data.points import parse_line  # noqa: PLC0415

    for line in lines:
        p = parse_line(line)
        when = dt.datetime.fromtimestamp(p.ts_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
        other = ";".join(f"{k}={v}" for k, v in sorted(p.tags.items()) if k not in _CSV_TAGS)
        fixed = [p.tags.get(k, "") for k in _CSV_TAGS]
        for name, value in sorted(p.fields.items()):
            yield [when, p.measurement, *fixed, other, name, repr(value)]


def _cmd_export(args: argparse.Namespace) -> int:
    from hubctl.data.spool import export_lines, storage_dir  # noqa: PLC0415

    tz = ZoneInfo("UTC")
    spool_path = Path(args.spool) if args.spool else None
    if args.config:
        try:
            cfg = load_config(Path(args.config))
        except ConfigError as exc:
            return _config_error(exc)
        tz = cfg.tz
        spool_path = spool_path or storage_dir(cfg) / "spool.sqlite"
    if spool_path is None:
        print("hubctl export: give --config FILE or --spool FILE", file=sys.stderr)
        return 2
    lo = parse_when(args.from_, tz)
    hi = parse_when(args.to, tz, end=True)
    out: TextIO = Path(args.out).open("w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115
    count = 0
    try:
        lines = export_lines(
            spool_path, None if lo is None else round(lo * 1000), None if hi is None else round(hi * 1000)
        )
        if args.format == "lp":
            for line in lines:
                out.write(line + "\n")
                count += 1
        else:
            w = csv.writer(out)
            w.writerow(["time_utc", "measurement", *_CSV_TAGS, "tags", "field", "value"])
            for row in _csv_rows(lines):
                w.writerow(row)
                count += 1
        out.flush()  # here, not at exit: a reader that went away is answered below
    except BrokenPipeError:
        if out is not sys.stdout:
            raise
        _stdout_gone()
        return 1
    except FileNotFoundError as exc:
        print(f"hubctl export: {exc}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"hubctl export: {count} {'lines' if args.format == 'lp' else 'rows'} from {spool_path}",
        file=sys.stderr,
    )
    return 0


def _stdout_gone() -> None:
    """The reader of standard output closed it (`hubctl export | head`): Python's documented answer
    (the `signal` module, "Note on SIGPIPE"): point stdout at /dev/null so that the flush at exit
    raises no second BrokenPipeError, and end quietly with exit 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# --- report -------------------------------------------------------------------------------------------------


def _prices(cfg: SiteConfig, args: argparse.Namespace) -> object:
    from hubctl.data.report import Prices  # noqa: PLC0415

    r = cfg.report
    return Prices(
        shared_in_ct_per_kwh=args.price_in if args.price_in is not None else r.shared_in_ct_per_kwh,
        shared_out_ct_per_kwh=args.price_out if args.price_out is not None else r.shared_out_ct_per_kwh,
        co2_kg_per_kwh=args.co2 if args.co2 is not None else r.co2_kg_per_kwh,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from hubctl.config.scenario import load_scenario  # noqa: PLC0415
    from hubctl.data import report, report_load, report_render  # noqa: PLC0415
    from hubctl.data.spool import storage_dir  # noqa: PLC0415

    try:
        if args.sim:
            sim_dir = Path(args.sim)
            scenario_path = Path(args.scenario) if args.scenario else sim_dir / "scenario.yaml"
            if not scenario_path.is_file():
                print(
                    f"hubctl report: {scenario_path} not found; give --scenario FILE (the scenario the run "
                    "was made from: its start time, time zone and caps)",
                    file=sys.stderr,
                )
                return 1
            scenario = load_scenario(scenario_path)
            cfg = scenario.config
            prices = _prices(cfg, args)
            assert isinstance(prices, report.Prices)
            inp = report_load.load_sim(
                sim_dir,
                cfg,
                scenario.start_utc,
                parse_when(args.from_, cfg.tz),
                parse_when(args.to, cfg.tz, end=True),
                prices,
            )
        else:
            cfg = load_config(Path(args.config))
            prices = _prices(cfg, args)
            assert isinstance(prices, report.Prices)
            ledger_path = Path(args.ledger) if args.ledger else storage_dir(cfg) / "ledger.sqlite"
            inp = report_load.load_ledger(
                cfg,
                ledger_path,
                parse_when(args.from_, cfg.tz),
                parse_when(args.to, cfg.tz, end=True),
                prices,
            )
    except ConfigError as exc:
        return _config_error(exc)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"hubctl report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    months = report.build(inp)
    if not months:
        print("hubctl report: no data in that period", file=sys.stderr)
        return 1
    written = report_render.write(inp, months, Path(args.out), args.format, plots=not args.no_plots)
    for m in months:
        k = m.kpis
        print(
            f"{m.month}: {len(m.statements)} statements, shared {k.shared_kwh:.1f} kWh, "
            f"kWmax {k.kwmax_kw or 0:.1f} kW, {len(k.quarters_over)} quarter-hours over a cap"
        )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``report`` to hubctl's subcommands."""
    p = sub.add_parser("export", help="dump the local spool (line protocol or CSV)")
    p.add_argument("--config", help="site config: the spool is <storage dir>/spool.sqlite")
    p.add_argument("--spool", help="the spool file itself")
    p.add_argument("--from", dest="from_", metavar="DATE", help="local date or ISO time (inclusive)")
    p.add_argument("--to", metavar="DATE", help="local date (inclusive) or ISO time (exclusive)")
    p.add_argument("--format", choices=("lp", "csv"), default="lp")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="monthly statements per company and park KPIs, with plots")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="site config: report on the gateway's ledger")
    src.add_argument("--sim", metavar="DIR", help="report on a hubctl sim output directory")
    p.add_argument("--scenario", help="with --sim: the scenario.yaml of the run (default DIR/scenario.yaml)")
    p.add_argument("--ledger", help="with --config: the ledger file (default <storage dir>/ledger.sqlite)")
    p.add_argument("--from", dest="from_", metavar="DATE", help="local date or ISO time (inclusive)")
    p.add_argument("--to", metavar="DATE", help="local date (inclusive) or ISO time (exclusive)")
    p.add_argument("--format", choices=("md", "csv", "html"), default="md")
    p.add_argument("--out", default="report", metavar="DIR", help="output directory (default ./report)")
    p.add_argument(
        "--price-in", type=float, help="ct per shared kWh a consumer pays (default report.* or 12)"
    )
    p.add_argument("--price-out", type=float, help="ct per shared kWh a producer gets (default 10)")
    p.add_argument("--co2", type=float, help="kg CO2 per kWh from the grid (default 0.374)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=_cmd_report)
