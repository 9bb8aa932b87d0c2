"""`hubctl history import` and `hubctl history show`: the load history the controller starts from.

    hubctl history import FILE [--config SITE.yaml] [--format contract|metering] [--t0 ISO]
                               [--allow-gaps] [--dry-run] [--state-dir DIR]
    hubctl history show --config SITE.yaml [--state-dir DIR]

`import` reads a contract `history.csv` (SCENARIOS.md), a metering company's quarter-hour
export, or a scenario.yaml (its `history:` file, with its `start` as t0 and, without
--config, its own companies), checks all of it (`hubctl.data.history_import`) and merges it into
`<state dir>/history.sqlite` (`hubctl.data.history_store`): per slot, company and quantity the
file's value where it has one, else what was stored. Nothing is written unless the whole
file is good; a failed import leaves the store byte for byte as it was. The state
directory is the service's (`hubctl.config.resolve`: storage.dir, service.state_dir,
$STATE_DIRECTORY), or --state-dir. The gateway reads the history at start: restart it
after an import (an import while it runs is kept, but the service may rewrite today).

`show` summarises what the controller will know: the date range, days per day type
(overall, and per company: a company counts a day with at least half of its quarter-hours),
the last complete day, quarter-hours missing, and the file's size. It only reads.

Exit codes: 0 done, 1 the store could not be read or written, 2 usage, 65 (EX_DATAERR) a
history file with problems (each listed, with its line), 78 (EX_CONFIG) a bad config or no
state directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hubctl.config.resolve import SOURCES, resolve_state_dir
from hubctl.config.site import load_config, report_problems
from hubctl.errors import EX_CONFIG, EX_DATAERR, ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hubctl.config.site import SiteConfig
    from hubctl.core.history import DayType, History
    from hubctl.data.history_common import Format, ImportedHistory

# the parser is built for every hubctl command: numpy, holidays and the parsers load when one runs
EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
_FORMATS = ("contract", "metering")

_IMPORT_HELP = """\
Formats (detected from the header unless --format is given):
  contract  t_s,<id>.load_kw,<id>.pv_kw,...  t_s seconds before t0 (negative), one row per
            local quarter-hour, mean kW over [t_s, t_s + 900); needs --t0 or a scenario.yaml
  metering  timestamp,company,import_kwh,export_kwh[,pv_kwh]  a row per company and
            quarter-hour, timestamp ISO 8601 with offset at the start of the quarter, kWh

A grid meter sees the net: load = (import - export) x 4 kW + PV. PV is pv_kwh where the
file has it; otherwise a clear-sky estimate (PV peak x control.pv_clear_sky_ratio x
max(0, sin(solar elevation))). A clear sky over-estimates the load on cloudy days: that
errs on the side of the import caps, where a forecast that is too low costs an overshoot.

Merge: the file's values replace the stored ones where the file has a value (per
quarter-hour and company); elsewhere the stored values stay. All or nothing: a file with
any problem changes nothing (exit 65, every problem listed with its line).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `history import` and `history show` to hubctl's parser."""
    p = sub.add_parser("history", help="the load history the controller starts from: import, show")
    hs = p.add_subparsers(dest="history_command", required=True)
    imp = hs.add_parser(
        "import",
        help="import quarter-hour history (contract history.csv, a metering export, a scenario.yaml)",
        description="Import quarter-hour load history into the state directory's history.sqlite.",
        epilog=_IMPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", metavar="FILE", help="history.csv, a metering export (CSV) or a scenario.yaml")
    imp.add_argument("--config", metavar="SITE.yaml", help="site config (default with a scenario: its own)")
    imp.add_argument("--format", choices=_FORMATS, default=None, help="default: from the header")
    imp.add_argument(
        "--t0",
        metavar="ISO",
        default=None,
        help="contract: the time of t_s = 0 (default with a scenario: its start); metering: quarters "
        "that end after it are refused (default: now)",
    )
    imp.add_argument(
        "--allow-gaps", action="store_true", help="import around missing quarter-hours (left unmeasured)"
    )
    imp.add_argument("--dry-run", action="store_true", help="check and summarise, write nothing")
    imp.add_argument("--state-dir", metavar="DIR", default=None, help=f"default: {SOURCES} of the config")
    imp.set_defaults(func=_cmd_import)
    show = hs.add_parser("show", help="summarise the stored history: days per day type, gaps, size")
    show.add_argument("--config", metavar="SITE.yaml", required=True, help="site config")
    show.add_argument("--state-dir", metavar="DIR", default=None, help=f"default: {SOURCES} of the config")
    show.set_defaults(func=_cmd_show)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _no_state_dir(command: str) -> int:
    _err(
        f"hubctl history {command}: no state directory: set storage.dir (or service.state_dir) in the site "
        "config, or $STATE_DIRECTORY, or give --state-dir DIR"
    )
    return EX_CONFIG


def _state_dir(args: argparse.Namespace, cfg: SiteConfig) -> Path | None:
    if args.state_dir:
        return Path(args.state_dir)
    return resolve_state_dir(cfg, os.environ)


def _iso_utc(text: str) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _scenario(path: Path) -> dict[str, Any] | None:
    """The scenario's YAML when `path` is a scenario (SCENARIOS.md), else None."""
    if path.suffix.lower() not in {".yaml", ".yml"}:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) and "start" in data and "duration_s" in data else None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} kB"
    return f"{n / 1024 / 1024:.1f} MB"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _types(counts: Mapping[DayType, int]) -> str:
    from hubctl.core.history import DayType  # noqa: PLC0415

    return ", ".join(f"{t.value} {counts.get(t, 0)}" for t in DayType)


def _print_imported(file: Path, imported: ImportedHistory, *, dry_run: bool, met: int | None) -> None:
    import numpy as np  # noqa: PLC0415

    from hubctl.core.history import SLOTS, DayType  # noqa: PLC0415

    records = imported.records
    counts = dict.fromkeys(DayType, 0)
    partial = 0
    for r in records:
        counts[r.day_type] += 1
        partial += int(int((~np.isnan(r.load_kw)).any(axis=1).sum()) < SLOTS // 2)
    verb = "would import" if dry_run else "imported"
    print(
        f"{verb} {file} ({imported.format}): {_days(len(records))}, {imported.first_date} to "
        f"{imported.last_date} ({_types(counts)})"
    )
    if partial:
        print(f"  {partial} of them with fewer than half of the quarter-hours")
    print(f"  companies: {', '.join(imported.companies)}")
    line = f"  {imported.quarters} quarter-hours"
    if imported.unmeasured:
        line += f"; {imported.unmeasured} company quarter-hours missing, left unmeasured (--allow-gaps)"
    print(line)
    if met is not None:
        merged = "would be merged" if dry_run else "merged"
        print(f"  {met} of the days {merged} with stored days (the file's values win where it has them)")
    for note in imported.notes:
        print(f"  note: {note}")


def _cmd_import(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one exit per documented outcome
    from hubctl.core.types import Params  # noqa: PLC0415
    from hubctl.data.history_import import detect_format, parse_history  # noqa: PLC0415
    from hubctl.data.history_store import FILE_NAME, HistoryStore, read_history, store_size_bytes  # noqa: PLC0415
    from hubctl.errors import HistoryImportError  # noqa: PLC0415

    file = Path(args.file)
    scenario = _scenario(file)
    t0 = None
    if args.t0 is not None:
        t0 = _iso_utc(args.t0)
        if t0 is None:
            _err(f"hubctl history import: --t0 {args.t0}: not an ISO 8601 time with a UTC offset")
            return EX_USAGE
    try:
        if args.config:
            cfg = load_config(Path(args.config))
        elif scenario is not None:
            from hubctl.config.scenario import load_scenario  # noqa: PLC0415

            cfg = load_scenario(file).config
        else:
            _err("hubctl history import: give --config SITE.yaml (the companies the history belongs to)")
            return EX_USAGE
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    if scenario is not None:
        name = scenario.get("history")
        if not isinstance(name, str):
            _err(f"{file}: the scenario names no history file (history: history.csv)")
            return EX_DATAERR
        if t0 is None:
            start = scenario["start"]
            t0 = _iso_utc(start.isoformat() if isinstance(start, dt.datetime) else str(start))
            if t0 is None:
                _err(f"{file}: start {start!r} is not an ISO time with a UTC offset")
                return EX_DATAERR
        file = file.parent / name
    directory = _state_dir(args, cfg)
    if directory is None and not args.dry_run:
        return _no_state_dir("import")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        _err(f"{file}: cannot read: {exc.strerror}")
        return EX_DATAERR
    except UnicodeDecodeError:
        _err(f"{file}: not UTF-8 text")
        return EX_DATAERR
    params = Params.from_config(cfg)
    try:
        fmt: Format = args.format or detect_format(text, str(file))
        if fmt == "contract" and t0 is None:
            _err("hubctl history import: a contract history.csv counts t_s from t0: give --t0 ISO")
            return EX_USAGE
        imported = parse_history(
            text,
            params,
            fmt=fmt,
            t0_utc=t0 if t0 is not None else time.time(),
            allow_gaps=args.allow_gaps,
            source=str(file),
        )
    except HistoryImportError as exc:
        _err(f"{exc.source}: {len(exc.problems)} problem(s), nothing imported")
        for line in exc.lines():
            _err(f"  {line}")
        return EX_DATAERR
    if directory is None:
        _print_imported(file, imported, dry_run=True, met=None)
        print(f"no state directory ({SOURCES}): nothing would be written")
        return EX_OK
    path = directory / FILE_NAME
    if args.dry_run:
        met = None
        if path.exists():
            try:
                stored, _ = read_history(path, params)
                met = sum(r.date in stored.days for r in imported.records)
            except (sqlite3.Error, OSError, ValueError) as exc:
                print(f"  (the store {path} cannot be read: {exc})")
        _print_imported(file, imported, dry_run=True, met=met if met is not None else 0)
        print(f"nothing written to {path} (--dry-run)")
        return EX_OK
    try:
        store = HistoryStore(path, params)
        try:
            history, met = store.merge(imported.records)
        finally:
            store.close()
    except (sqlite3.Error, OSError) as exc:
        _err(f"{path}: cannot write the history: {exc}")
        return EX_FAILURE
    if store.moved_to is not None:
        print(f"warning: {path} was damaged and is moved aside to {store.moved_to.name}")
    _print_imported(file, imported, dry_run=False, met=met)
    first, last = min(history.days, default=None), max(history.days, default=None)
    print(f"{path}: {_days(len(history.days))}, {first} to {last}, {_size(store_size_bytes(path))}")
    print("a running service reads the history at start: restart it to use these days")
    return EX_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from hubctl.core.types import Params  # noqa: PLC0415
    from hubctl.data.history_store import FILE_NAME, read_history, store_size_bytes  # noqa: PLC0415
    from hubctl.errors import HistoryStoreError  # noqa: PLC0415

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    directory = _state_dir(args, cfg)
    if directory is None:
        return _no_state_dir("show")
    path = directory / FILE_NAME
    params = Params.from_config(cfg)
    try:
        history, stale = read_history(path, params)
    except FileNotFoundError:
        print(f"no history in {directory} yet: the controller starts knowing nothing (it learns as it runs)")
        return EX_OK
    except HistoryStoreError as exc:
        _err(f"{path}: damaged ({exc}); the service moves it aside at its next start")
        return EX_FAILURE
    except (sqlite3.Error, OSError) as exc:
        _err(f"{path}: cannot read: {exc}")
        return EX_FAILURE
    _print_summary(path, history, stale, store_size_bytes(path), cfg.site.timezone)
    return EX_OK


def _print_summary(path: Path, history: History, stale: tuple[str, ...], size: int, tz: str) -> None:
    from hubctl.core.history import DayType  # noqa: PLC0415
    from hubctl.data.history_store import summarize  # noqa: PLC0415

    s = summarize(history)
    print(f"history in {path} ({_size(size)} on disk)")
    if not s.days:
        print("  no days stored")
        return
    print(f"  {_days(s.days)}, {s.first_date} to {s.last_date} (local dates, {tz})")
    print(f"  last complete day: {s.last_complete or 'none'}")
    print(f"  {s.quarters} quarter-hours measured, {s.missing} missing between the first and the last")
    print(f"  days stored: {_types(s.stored_by_type)}")
    print("  days with at least half of the quarter-hours:")
    width = max(len("park"), *(len(c) for c in history.companies))
    print("    " + " " * width + "".join(f"{t.value:>10}" for t in DayType))
    rows = [("park", s.by_type), *s.company_by_type.items()]
    for name, counts in rows:
        print(f"    {name:<{width}}" + "".join(f"{counts.get(t, 0):>10}" for t in DayType))
    if stale:
        print(f"  stored for companies not in the config (not used): {', '.join(stale)}")
