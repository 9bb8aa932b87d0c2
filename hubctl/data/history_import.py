"""Quarter-hour history from files: the contract's `history.csv` and a metering company's export.

Pure: text in, `DayRecord`s out (`hubctl.history`), or `HistoryImportError` with one
line per problem. No I/O, no clock, no logging; `hubctl history import` (`hubctl.cli_history`)
reads the file and writes the store, `hubctl sim` gives a scenario's history to the controller.
Nothing is half-imported: either every record of the file or an error.

Formats
    **contract** (`parse_contract`, SCENARIOS.md "history.csv"): header
    `t_s,<id>.load_kw,<id>.pv_kw,...`; `t_s` counts seconds before `t0`, an absolute UTC time
    the caller passes (a scenario's `start`), so every `t_s` must be negative; one row per
    900 s on a local quarter-hour; each value the mean kW over `[t_s, t_s + 900)`. Every
    company of the site config must have its `load_kw` column, and a company with PV its
    `pv_kw` too; a company without PV in the config has no PV whatever its column says (as in
    profiles.csv). Negative values are implausible (an error).

    **metering** (`parse_metering`): a metering company's per-company quarter-hour export in
    long format, header `timestamp,company,import_kwh,export_kwh` plus an optional `pv_kwh`
    column (a PV production meter), any column order; `timestamp` ISO 8601 with a UTC offset
    (or `Z`) at the *start* of the quarter, energies in kWh per quarter-hour. Other columns
    are ignored unless their name carries a unit (`import_kw`, `energy_wh`, ...): those are
    an error naming the unit expected. A company of the config may be absent (another file
    may bring it): its quarters stay unmeasured, which the merge rule of the store keeps.

Load recovery (metering)
    A grid meter sees the net, `(import - export) * 4` kW, and the PV behind the meter hides
    in it: `load = net + pv`. PV is the `pv_kwh` column (times 4) where the file has it for
    the company; otherwise an estimate of a clear sky, `peak_kw * pv_clear_sky_ratio *
    max(0, sin(solar elevation))` at the middle of the quarter (`hubctl.solar.clear_sky_shape`,
    the same prior the controller's PV forecast starts from). A clear sky over-estimates PV,
    and so the load, on cloudy days: the profile then expects more load than there was,
    which makes the plan keep more energy for the import caps (the floor) -- the side where
    a wrong forecast costs an overshoot. The estimate is not stored as a measurement: the
    record's PV stays NaN (not measured) for those companies. A company without PV: load
    = net. A negative load (a meter's rounding, PV above the estimate) is clipped to 0 and
    counted.

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
from hubctl.core.solar import clear_sky_shape
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from zoneinfo import ZoneInfo

    from hubctl.core.control import Params
    from hubctl.core.history import FloatArray

Format = Literal["contract", "metering"]
FORMATS: tuple[Format, ...] = ("contract", "metering")
PV_PLAUSIBLE_FRAC = 1.5  # PV above this share of the configured peak (+1 kW) is a unit error
_METERING_REQUIRED = ("timestamp", "company", "import_kwh", "export_kwh")
_UNIT_COLUMN = re.compile(r"^(?P<base>[a-z0-9]+(?:_[a-z0-9]+)*?)_(?P<unit>[kmg]?w|[kmg]?wh|[km]?j|kva|kvar)$")
_CONTRACT_UNITS = {"load": "load_kw", "pv": "pv_kw"}
_METERING_UNITS = {"import": "import_kwh", "export": "export_kwh", "pv": "pv_kwh"}


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


# --- helpers -----------------------------------------------------------------------------------------------


def _strip_bom(text: str) -> str:
    return text.removeprefix("\ufeff")


def _rows(text: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank CSV row."""
    reader = csv.reader(io.StringIO(_strip_bom(text)))
    for cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        yield reader.line_num, [c.strip() for c in cells]


def detect_format(text: str, source: str = "<history>") -> Format:
    """The format from the header: `t_s,...` is the contract, `timestamp,company,...` metering."""
    header = next(iter(_rows(text)), None)
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
    problems = [f"line {line}: not a history header: expected {expected}", *_separator_problem(cells, line)]
    raise HistoryImportError(source, problems)


def _separator_problem(cells: list[str], line: int) -> list[str]:
    if len(cells) == 1 and ";" in cells[0]:
        return [f"line {line}: the columns are separated by ';': expected ','"]
    return []


def _header(text: str, source: str) -> tuple[Iterator[tuple[int, list[str]]], int, list[str]]:
    """The file's rows after its header, the header's line number and its cells; an empty file or a
    header that is not comma-separated is an error."""
    rows = iter(_rows(text))
    first = next(rows, None)
    if first is None:
        raise HistoryImportError(source, ["empty file: no header"])
    header_line, header = first
    problems = _separator_problem(header, header_line)
    if problems:
        raise HistoryImportError(source, problems)
    return rows, header_line, header


def _local(ts: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts, tz).isoformat(sep=" ", timespec="minutes")


def _number(text: str) -> float | None:
    """A float, NaN for an empty or `nan` cell (not measured), None when unparseable or infinite."""
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _runs(quarters: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted quarter numbers as inclusive runs [(first, last), ...]."""
    out: list[tuple[int, int]] = []
    for q in quarters:
        if out and q == out[-1][1] + 1:
            out[-1] = (out[-1][0], q)
        else:
            out.append((q, q))
    return out


def _on_quarter(ts: float) -> bool:
    return abs(ts - round(ts / QUARTER_S) * QUARTER_S) < 1e-6


def _pv_limit_kw(peak_kw: float) -> float:
    return PV_PLAUSIBLE_FRAC * peak_kw + 1.0


def _unknown_company(line: int, cid: str, count: int, known: Sequence[str]) -> str:
    rows = "" if count <= 1 else f" ({count} rows)"
    return f"line {line}: unknown company {cid!r}{rows}: not in the site config ({', '.join(known)})"


class _Days:
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


# --- the contract's history.csv ----------------------------------------------------------------------------


def _contract_columns(
    header: list[str], line: int, params: Params, problems: list[str]
) -> dict[int, tuple[int, str]]:
    """Column index -> (company index, "load" | "pv") for the columns used."""
    ids = [c.id for c in params.companies]
    index = {cid: i for i, cid in enumerate(ids)}
    if header[0] != "t_s":
        problems.append(f"line {line}: the first column is {header[0]!r}, expected t_s (seconds before t0)")
    columns: dict[int, tuple[int, str]] = {}
    seen: dict[str, int] = {}
    unknown: list[str] = []
    for k, name in enumerate(header[1:], start=1):
        if name in seen:
            problems.append(
                f"line {line}: column {name!r} appears twice (columns {seen[name] + 1} and {k + 1})"
            )
            continue
        seen[name] = k
        cid, dot, quantity = name.rpartition(".")
        if not dot:
            problems.append(f"line {line}: column {name!r}: expected <company>.load_kw or <company>.pv_kw")
            continue
        if quantity not in {"load_kw", "pv_kw"}:
            m = _UNIT_COLUMN.match(quantity)
            if m is not None and m["base"] in _CONTRACT_UNITS:
                expected = f"{cid}.{_CONTRACT_UNITS[m['base']]}"
                problems.append(
                    f"line {line}: column {name!r}: wrong unit {m['unit']!r}, expected {expected} "
                    "(mean power in kW over the quarter-hour)"
                )
            else:
                problems.append(
                    f"line {line}: column {name!r}: unknown quantity {quantity!r}: a history has "
                    "<company>.load_kw and <company>.pv_kw"
                )
            continue
        if cid not in index:
            if cid not in unknown:
                unknown.append(cid)
            continue
        columns[k] = (index[cid], quantity.removesuffix("_kw"))
    problems.extend(
        f"line {line}: unknown company {cid!r}: not in the site config ({', '.join(ids)})" for cid in unknown
    )
    have = {(i, q) for i, q in columns.values()}
    for i, c in enumerate(params.companies):
        if (i, "load") not in have and f"{c.id}.load_kw" not in seen:
            problems.append(f"company {c.id!r} of the site config has no column {c.id}.load_kw")
        if c.pv_peak_kw > 0 and (i, "pv") not in have and f"{c.id}.pv_kw" not in seen:
            problems.append(f"company {c.id!r} has PV ({c.pv_peak_kw:g} kW peak) but no column {c.id}.pv_kw")
    return columns


def parse_contract(
    text: str,
    t0_utc: float,
    params: Params,
    *,
    allow_gaps: bool = False,
    source: str = "history.csv",
) -> ImportedHistory:
    """The contract's history.csv (SCENARIOS.md) as day records; `t0_utc` is the scenario's start
    (t_s = 0). Raises HistoryImportError listing every problem (module docstring)."""
    tz = params.tz
    rows, header_line, header = _header(text, source)
    problems: list[str] = []
    if header[0].lower() == "timestamp" or "company" in (h.lower() for h in header):
        raise HistoryImportError(
            source,
            [f"line {header_line}: a metering export (timestamp,company,...), not a contract history.csv"],
        )
    columns = _contract_columns(header, header_line, params, problems)
    if problems:
        raise HistoryImportError(source, problems)
    if not _on_quarter(t0_utc):
        raise HistoryImportError(source, [f"t0 {_local(t0_utc, tz)} is not on a quarter-hour"])
    companies = params.companies
    n = len(companies)
    days = _Days(tz, n)
    line_of: dict[int, int] = {}  # quarter -> line
    present: list[set[int]] = [set() for _ in range(n)]  # quarters with a load value, per company
    t0_q = round(t0_utc / QUARTER_S)
    for line, cells in rows:
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        t_s = _number(cells[0])
        if t_s is None or math.isnan(t_s):
            problems.append(f"line {line}: t_s {cells[0]!r} is not a number")
            continue
        if t_s >= 0:
            problems.append(
                f"line {line}: t_s = {cells[0]} is not before t0 (a history is the past: t_s <= -900)"
            )
            continue
        if not _on_quarter(t_s):
            problems.append(
                f"line {line}: t_s = {cells[0]} is not on a local quarter-hour "
                f"(t0 + t_s = {dt.datetime.fromtimestamp(t0_utc + t_s, tz).isoformat(sep=' ')})"
            )
            continue
        q = t0_q + round(t_s / QUARTER_S)
        if q in line_of:
            problems.append(f"line {line}: t_s = {cells[0]} repeats line {line_of[q]}")
            continue
        line_of[q] = line
        values: dict[tuple[int, str], float] = {}
        bad = False
        for k, (i, quantity) in columns.items():
            value = _number(cells[k])
            name = header[k]
            if value is None:
                problems.append(f"line {line}: {name} {cells[k]!r} is not a number")
                bad = True
            elif value < 0:
                problems.append(f"line {line}: {name} = {cells[k]} kW is negative (loads and PV are >= 0 kW)")
                bad = True
            elif (
                quantity == "pv"
                and companies[i].pv_peak_kw > 0
                and value > _pv_limit_kw(companies[i].pv_peak_kw)
            ):
                problems.append(
                    f"line {line}: {name} = {cells[k]} kW is above {PV_PLAUSIBLE_FRAC:g} x the configured "
                    f"PV peak ({companies[i].pv_peak_kw:g} kW): W instead of kW?"
                )
                bad = True
            else:
                values[i, quantity] = value
        if bad:
            for seen in present:
                seen.add(q)  # reported already: not a gap as well
            continue
        for i, c in enumerate(companies):
            load = values.get((i, "load"), math.nan)
            if math.isnan(load):
                continue  # not measured: a gap, unless the whole span is allowed to have them
            pv = values.get((i, "pv"), math.nan) if c.pv_peak_kw > 0 else 0.0
            days.add(q, i, load, pv)
            present[i].add(q)
    if not line_of and not problems:
        problems.append(f"empty file: a header (line {header_line}) but no rows")
    unmeasured = 0
    if line_of:
        gap_problems, unmeasured = _gaps(
            line_of, present, [c.id for c in companies], tz, t_s_of=lambda q: (q - t0_q) * QUARTER_S
        )
        if not allow_gaps:
            problems.extend(gap_problems)
    if problems:
        raise HistoryImportError(source, problems)
    return ImportedHistory(
        "contract",
        days.records(params),
        tuple(c.id for i, c in enumerate(companies) if present[i]),
        len(line_of),
        unmeasured,
    )


def _gaps(
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
        text = f"{_local(a * QUARTER_S, tz)} to {_local((b + 1) * QUARTER_S, tz)} ({count} quarter-hour"
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


# --- a metering company's export ---------------------------------------------------------------------------


def _metering_columns(header: list[str], line: int, problems: list[str]) -> dict[str, int]:
    names = [h.lower() for h in header]
    where: dict[str, int] = {}
    wrong_unit: set[str] = set()
    for k, name in enumerate(names):
        if name in where:
            problems.append(f"line {line}: column {name!r} appears twice")
            continue
        if name in (*_METERING_REQUIRED, "pv_kwh"):
            where[name] = k
            continue
        m = _UNIT_COLUMN.match(name)
        if m is None:
            continue  # another column (a meter number, a quality flag): not used
        base = m["base"]
        if base in _METERING_UNITS:
            wrong_unit.add(_METERING_UNITS[base])
            problems.append(
                f"line {line}: column {header[k]!r}: wrong unit {m['unit']!r}, expected "
                f"{_METERING_UNITS[base]} (energy in kWh per quarter-hour)"
            )
        else:
            problems.append(
                f"line {line}: column {header[k]!r}: expected import_kwh and export_kwh (energy in kWh "
                "per quarter-hour, one column per direction) and optionally pv_kwh"
            )
    problems.extend(
        f"line {line}: no column {name}"
        for name in _METERING_REQUIRED
        if name not in where and name not in wrong_unit
    )
    return where


def _timestamp(text: str, line: int, problems: list[str]) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"line {line}: timestamp {text!r} is not ISO 8601 (e.g. 2026-03-01T00:15:00+01:00)")
        return None
    if moment.tzinfo is None:
        problems.append(f"line {line}: timestamp {text!r} has no UTC offset (add e.g. +01:00 or Z)")
        return None
    return moment.timestamp()


def parse_metering(
    text: str,
    params: Params,
    *,
    t0_utc: float | None = None,
    allow_gaps: bool = False,
    source: str = "metering.csv",
) -> ImportedHistory:
    """A metering company's quarter-hour export (long format) as day records, the load recovered from
    the net (module docstring). With `t0_utc`, quarters that end after it are an error."""
    tz = params.tz
    rows, header_line, header = _header(text, source)
    problems: list[str] = []
    if header[0].lower() == "t_s":
        raise HistoryImportError(
            source, [f"line {header_line}: a contract history.csv (t_s,...), not a metering export"]
        )
    col = _metering_columns(header, header_line, problems)
    if problems:
        raise HistoryImportError(source, problems)
    companies = params.companies
    ids = [c.id for c in companies]
    index = {cid: i for i, cid in enumerate(ids)}
    n = len(companies)
    pv_col = col.get("pv_kwh")
    unknown: dict[str, list[int]] = {}  # id -> [first line, rows]
    # (line, company index, quarter, net kW, measured PV kW or NaN), checked before any is used
    parsed: list[tuple[int, int, int, float, float]] = []
    lines_by_company: list[dict[int, int]] = [{} for _ in range(n)]
    bad_quarters: list[set[int]] = [set() for _ in range(n)]
    all_lines: dict[int, int] = {}
    for line, cells in rows:
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        cid = cells[col["company"]]
        if not cid:
            problems.append(f"line {line}: no company")
            continue
        ts = _timestamp(cells[col["timestamp"]], line, problems)
        if ts is None:
            continue
        i = index.get(cid)
        if i is None:
            hit = unknown.setdefault(cid, [line, 0])
            hit[1] += 1
            continue
        if not _on_quarter(ts):
            problems.append(
                f"line {line}: timestamp {cells[col['timestamp']]} is not the start of a local quarter-hour "
                "(:00, :15, :30, :45)"
            )
            continue
        if t0_utc is not None and ts + QUARTER_S > t0_utc + 1e-6:
            problems.append(
                f"line {line}: the quarter from {cells[col['timestamp']]} ends after t0 "
                f"({_local(t0_utc, tz)}): it cannot have been measured yet"
            )
            continue
        q = round(ts / QUARTER_S)
        if q in lines_by_company[i]:
            problems.append(
                f"line {line}: {cid} {cells[col['timestamp']]} repeats line {lines_by_company[i][q]}"
            )
            continue
        lines_by_company[i][q] = line
        all_lines.setdefault(q, line)
        energies: list[float] = []
        bad = False
        names = ["import_kwh", "export_kwh"] + (["pv_kwh"] if pv_col is not None else [])
        for name in names:
            cell = cells[col[name]]
            value = _number(cell)
            if value is None:
                problems.append(f"line {line}: {name} {cell!r} is not a number")
                bad = True
            elif value < 0:
                problems.append(
                    f"line {line}: {name} = {cell} is negative: energy per direction is >= 0 kWh "
                    "(a net series goes into import_kwh and export_kwh)"
                )
                bad = True
            energies.append(math.nan if value is None else value)
        if bad:
            bad_quarters[i].add(q)  # reported already: not a gap as well
            continue
        pv_kw = energies[2] * 4.0 if pv_col is not None else math.nan
        peak = companies[i].pv_peak_kw
        if pv_col is not None and peak > 0 and pv_kw > _pv_limit_kw(peak):
            problems.append(
                f"line {line}: pv_kwh = {cells[pv_col]} in a quarter-hour is {pv_kw:g} kW, above "
                f"{PV_PLAUSIBLE_FRAC:g} x the configured PV peak ({peak:g} kW): Wh instead of kWh?"
            )
            continue
        net_kw = (energies[0] - energies[1]) * 4.0
        parsed.append((line, i, q, net_kw, pv_kw))
    problems.extend(_unknown_company(at, cid, count, ids) for cid, (at, count) in unknown.items())
    if not all_lines and not problems:
        problems.append(f"empty file: a header (line {header_line}) but no rows")
    # PV per company: measured where the file has a pv_kwh value for it, else the clear-sky estimate
    measured_pv = [False] * n
    for _, i, _, _, pv_kw in parsed:
        if not math.isnan(pv_kw):
            measured_pv[i] = True
    days = _Days(tz, n)
    present: list[set[int]] = [set(b) for b in bad_quarters]
    clipped = 0
    for _, i, q, net_kw, pv_kw in parsed:
        if math.isnan(net_kw):
            continue  # import or export not measured
        c = companies[i]
        if measured_pv[i]:
            if math.isnan(pv_kw):
                continue  # the company's PV meter has no value here: a gap
            pv = pv_kw
            load = net_kw + pv_kw
        elif c.pv_peak_kw > 0:
            pv = math.nan  # an estimate, not a measurement
            load = net_kw + c.pv_peak_kw * params.pv_prior_k * clear_sky_shape(
                (q + 0.5) * QUARTER_S, params.lat, params.lon
            )
        else:
            pv = 0.0
            load = net_kw
        if load < 0:
            clipped += 1
            load = 0.0
        days.add(q, i, load, pv)
        present[i].add(q)
    unmeasured = 0
    if all_lines:
        gap_problems, unmeasured = _gaps(all_lines, present, ids, tz, lines_by_company=lines_by_company)
        if not allow_gaps:
            problems.extend(gap_problems)
    if problems:
        raise HistoryImportError(source, problems)
    in_file = [i for i in range(n) if lines_by_company[i]]
    notes = []
    absent = [ids[i] for i in range(n) if not lines_by_company[i]]
    if absent:
        notes.append(f"not in the file (left unmeasured): {', '.join(absent)}")
    estimated = tuple(ids[i] for i in in_file if not measured_pv[i] and companies[i].pv_peak_kw > 0)
    if estimated:
        notes.append(
            f"PV estimated as a clear sky (no pv_kwh) for {', '.join(estimated)}: their load is "
            "over-estimated on cloudy days, which errs on the side of the import caps"
        )
    if clipped:
        notes.append(f"{clipped} negative load(s) clipped to 0 kW")
    return ImportedHistory(
        "metering",
        days.records(params),
        tuple(ids[i] for i in in_file),
        len(all_lines),
        unmeasured,
        clipped,
        estimated,
        tuple(notes),
    )


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
