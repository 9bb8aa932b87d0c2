"""What both history file formats share: the result, CSV rows, numbers, gaps, days and the merge rule.

Pure, as the parsers that use it (`history_contract.py`, `history_metering.py`; the entry is
`history_import.py`): text in, `DayRecord`s out (`hubctl.core.history`), or `HistoryImportError`
with one line per problem. No I/O, no clock, no logging.

Problems reported (line numbers where there is a line), at most 20 lines plus "... N more"
    an empty file; unparseable numbers and times; wrong units (by column name, and PV above
    1.5 x the configured peak: W or Wh instead of kW or kWh); negative energies or powers;
    timestamps not on a local quarter-hour; duplicates (a company's quarter twice); unknown
    companies (not in the site config); for the contract, config companies without their
    columns and rows at or after `t0`; for metering with a `t0`, quarters that end after it
    (not measured yet); gaps, a company's quarters missing inside the span the file covers
    (first to last quarter of the whole file). `allow_gaps=True` imports the rest and
    leaves the gaps unmeasured (NaN); every other problem stays an error.

Days: quarters go to their local date and slot (`LocalQuarters`); the autumn DST day's
repeated hour is averaged per slot, the spring day's missing hour is no gap (those local
quarters do not exist). Day types come from the configured calendar (`params.calendar`).
Peaks are NaN: quarter-hour data has no peaks.

The merge rule (`merge_day`, used by the store for an import): per slot, company and
quantity (load, PV), the file's value where the file has one, else the stored one; the
stored day keeps its day type and its peaks. The metering company's meter is the billing
meter, so where both exist the file wins; where it has nothing the gateway's own readings
stay.

Exit code of `hubctl history import` for a bad file: `HistoryImportError.exit_code`, 65
(EX_DATAERR of sysexits.h), apart from 78 for a bad configuration and 1 for a store that
cannot be written.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from hubctl.core.history import QUARTER_S, SLOTS, DayRecord, DayType, LocalQuarters
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from zoneinfo import ZoneInfo

    from hubctl.core.history import FloatArray
    from hubctl.core.types import Params

__all__ = [
    "FORMATS",
    "PV_PLAUSIBLE_FRAC",
    "UNIT_COLUMN",
    "Days",
    "Format",
    "ImportedHistory",
    "csv_rows",
    "gaps",
    "local_time",
    "merge_day",
    "on_quarter",
    "parse_number",
    "pv_limit_kw",
    "read_header",
    "separator_problem",
    "unknown_company",
]

Format = Literal["contract", "metering"]
FORMATS: tuple[Format, ...] = ("contract", "metering")
PV_PLAUSIBLE_FRAC = 1.5  # PV above this share of the configured peak (+1 kW) is a unit error
UNIT_COLUMN = re.compile(r"^(?P<base>[a-z0-9]+(?:_[a-z0-9]+)*?)_(?P<unit>[kmg]?w|[kmg]?wh|[km]?j|kva|kvar)$")


@dataclass(frozen=True, slots=True)
class ImportedHistory:
    """What a file gave: whole-day records (every company of the config as a column, NaN where the
    file has nothing) and what the import had to decide."""

    format: Format
    records: tuple[DayRecord, ...]  # sorted by date
    companies: tuple[str, ...]  # the companies the file has values for, in config order
    quarters: int  # distinct UTC quarter-hours with at least one value
    unmeasured: int  # company quarter-hours inside the span left unmeasured (allow_gaps)
    clipped: int = 0  # negative loads clipped to 0 (metering)
    pv_estimated: tuple[str, ...] = ()  # companies whose PV is the clear-sky estimate (metering)
    notes: tuple[str, ...] = field(default=())

    @property
    def first_date(self) -> dt.date | None:
        return self.records[0].date if self.records else None

    @property
    def last_date(self) -> dt.date | None:
        return self.records[-1].date if self.records else None


# --- reading the text --------------------------------------------------------------------------------------


def _strip_bom(text: str) -> str:
    return text.removeprefix("\ufeff")


def csv_rows(text: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank CSV row."""
    reader = csv.reader(io.StringIO(_strip_bom(text)))
    for cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        yield reader.line_num, [c.strip() for c in cells]


def separator_problem(cells: list[str], line: int) -> list[str]:
    if len(cells) == 1 and ";" in cells[0]:
        return [f"line {line}: the columns are separated by ';': expected ','"]
    return []


def read_header(text: str, source: str) -> tuple[Iterator[tuple[int, list[str]]], int, list[str]]:
    """The file's rows after its header, the header's line number and its cells; an empty file or a
    header that is not comma-separated is an error."""
    it = iter(csv_rows(text))
    first = next(it, None)
    if first is None:
        raise HistoryImportError(source, ["empty file: no header"])
    header_line, cells = first
    problems = separator_problem(cells, header_line)
    if problems:
        raise HistoryImportError(source, problems)
    return it, header_line, cells


def local_time(ts: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts, tz).isoformat(sep=" ", timespec="minutes")


def parse_number(text: str) -> float | None:
    """A float, NaN for an empty or `nan` cell (not measured), None when unparseable or infinite."""
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def on_quarter(ts: float) -> bool:
    return abs(ts - round(ts / QUARTER_S) * QUARTER_S) < 1e-6


def pv_limit_kw(peak_kw: float) -> float:
    return PV_PLAUSIBLE_FRAC * peak_kw + 1.0


def unknown_company(line: int, cid: str, count: int, known: Sequence[str]) -> str:
    rows_text = "" if count <= 1 else f" ({count} rows)"
    return f"line {line}: unknown company {cid!r}{rows_text}: not in the site config ({', '.join(known)})"


# --- days --------------------------------------------------------------------------------------------------


class Days:
    """Sums and counts per local date, slot and company, for load and PV."""

    def __init__(self, tz: ZoneInfo, n: int) -> None:
        self.quarters = LocalQuarters(tz)
        self.n = n
        self._sums: dict[dt.date, list[FloatArray]] = {}

    def add(self, quarter: int, i: int, load_kw: float, pv_kw: float) -> None:
        date, slot = self.quarters.of(quarter)
        acc = self._sums.get(date)
        if acc is None:
            acc = self._sums[date] = [np.zeros((SLOTS, self.n)) for _ in range(4)]
        load_sum, load_count, pv_sum, pv_count = acc
        load_sum[slot, i] += load_kw
        load_count[slot, i] += 1
        if not math.isnan(pv_kw):
            pv_sum[slot, i] += pv_kw
            pv_count[slot, i] += 1

    def records(self, params: Params) -> tuple[DayRecord, ...]:
        out = []
        for date in sorted(self._sums):
            load_sum, load_count, pv_sum, pv_count = self._sums[date]
            with np.errstate(invalid="ignore", divide="ignore"):
                load = np.where(load_count > 0, load_sum / load_count, np.nan)
                pv = np.where(pv_count > 0, pv_sum / pv_count, np.nan)
            out.append(_record(date, params.calendar.day_type(date), load, pv))
        return tuple(out)


def _record(date: dt.date, day_type: DayType, load: FloatArray, pv: FloatArray) -> DayRecord:
    peak = np.full(SLOTS, np.nan)
    for a in (load, pv, peak):
        a.flags.writeable = False
    return DayRecord(date, day_type, load, pv, peak)


def merge_day(stored: DayRecord | None, imported: DayRecord) -> DayRecord:
    """The merge rule of an import (module docstring): the file's values where it has them, else the
    stored ones; the stored day type and peaks. Both records have the same company columns."""
    if stored is None:
        return imported
    load = np.where(np.isnan(imported.load_kw), stored.load_kw, imported.load_kw)
    pv = np.where(np.isnan(imported.pv_kw), stored.pv_kw, imported.pv_kw)
    peak = stored.peak_kw.copy()
    for a in (load, pv, peak):
        a.flags.writeable = False
    return DayRecord(stored.date, stored.day_type, load, pv, peak)


# --- gaps --------------------------------------------------------------------------------------------------


def _runs(quarters: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted quarter numbers as inclusive runs [(first, last), ...]."""
    out: list[tuple[int, int]] = []
    for q in quarters:
        if out and q == out[-1][1] + 1:
            out[-1] = (out[-1][0], q)
        else:
            out.append((q, q))
    return out


def gaps(
    line_of: dict[int, int],
    present: Sequence[set[int]],
    ids: Sequence[str],
    tz: ZoneInfo,
    *,
    t_s_of: Callable[[int], int] | None = None,
    lines_by_company: Sequence[dict[int, int]] | None = None,
) -> tuple[list[str], int]:
    """Problems for the quarters missing inside [first, last] of the whole file, and how many company
    quarter-hours that leaves unmeasured. Quarters without a row are reported once (the contract has
    a row for every company); with `lines_by_company` (metering: a row per company) per company."""
    lo, hi = min(line_of), max(line_of)
    span = range(lo, hi + 1)
    problems: list[str] = []

    def when(a: int, b: int) -> str:
        count = b - a + 1
        text = (
            f"{local_time(a * QUARTER_S, tz)} to {local_time((b + 1) * QUARTER_S, tz)} ({count} quarter-hour"
        )
        text += "s)" if count > 1 else ")"
        if t_s_of is not None:
            text += f", t_s {t_s_of(a)}" + ("" if a == b else f" to {t_s_of(b)}")
        return text

    def around(lines: dict[int, int], a: int, b: int) -> str:
        before = lines.get(a - 1)
        after = lines.get(b + 1)
        if before is not None and after is not None:
            return f"between line {before} and line {after}: "
        if before is not None:
            return f"after line {before}: "
        if after is not None:
            return f"before line {after}: "
        return ""

    no_row = [q for q in span if q not in line_of] if lines_by_company is None else []
    no_row_set = set(no_row)
    problems.extend(f"{around(line_of, a, b)}no rows for {when(a, b)}" for a, b in _runs(no_row))
    unmeasured = 0
    for i, cid in enumerate(ids):
        if lines_by_company is not None and not lines_by_company[i]:
            continue  # not in the file at all (metering): noted, not a gap
        missing = [q for q in span if q not in present[i]]
        unmeasured += len(missing)
        own = [q for q in missing if q not in no_row_set]
        lines = line_of if lines_by_company is None else lines_by_company[i]
        problems.extend(f"{around(lines, a, b)}{cid}: no value for {when(a, b)}" for a, b in _runs(own))
    return problems, unmeasured
