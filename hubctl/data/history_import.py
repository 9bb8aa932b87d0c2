"""Quarter-hour history from files: the contract's `history.csv` and a metering company's export.

Pure: text in, `DayRecord`s out (`hubctl.core.history`), or `HistoryImportError` with one
line per problem. No I/O, no clock, no logging; `hubctl history import` (`hubctl.cli.history`)
reads the file and writes the store, `hubctl sim` gives a scenario's history to the controller.
Nothing is half-imported: either every record of the file or an error.

This module is the entry: `detect_format` (from the header) and `parse_history` (either format).
The formats have a module each: **contract** (`history_contract.parse_contract`, SCENARIOS.md
"history.csv") and **metering** (`history_metering.parse_metering`, with the recovery of the
load from the net). What both share -- the result (`ImportedHistory`), the problems reported,
the days, the merge rule (`merge_day`) and the exit code -- is `history_common`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubctl.data.history_common import csv_rows, separator_problem
from hubctl.data.history_contract import parse_contract
from hubctl.data.history_metering import parse_metering
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from hubctl.core.types import Params
    from hubctl.data.history_common import Format, ImportedHistory

__all__ = ["detect_format", "parse_history"]


def detect_format(text: str, source: str = "<history>") -> Format:
    """The format from the header: `t_s,...` is the contract, `timestamp,company,...` metering."""
    header = next(iter(csv_rows(text)), None)
    if header is None:
        raise HistoryImportError(source, ["empty file: no header"])
    line, cells = header
    names = [c.lower() for c in cells]
    if names[0] == "t_s":
        return "contract"
    if "timestamp" in names and "company" in names:
        return "metering"
    expected = (
        "t_s,<id>.load_kw,<id>.pv_kw,... (contract) or timestamp,company,import_kwh,export_kwh[,pv_kwh] "
        "(metering)"
    )
    problems = [f"line {line}: not a history header: expected {expected}", *separator_problem(cells, line)]
    raise HistoryImportError(source, problems)


def parse_history(
    text: str,
    params: Params,
    *,
    fmt: Format | None = None,
    t0_utc: float | None = None,
    allow_gaps: bool = False,
    source: str = "<history>",
) -> ImportedHistory:
    """Either format (detected from the header when `fmt` is None). The contract needs `t0_utc`."""
    fmt = fmt or detect_format(text, source)
    if fmt == "contract":
        if t0_utc is None:
            raise HistoryImportError(source, ["a contract history.csv counts t_s from t0: t0 is needed"])
        return parse_contract(text, t0_utc, params, allow_gaps=allow_gaps, source=source)
    return parse_metering(text, params, t0_utc=t0_utc, allow_gaps=allow_gaps, source=source)
