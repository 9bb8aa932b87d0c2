"""The contract's `history.csv` parsed into history days (`parse_contract`); pure, as `history_common`.

Format (SCENARIOS.md "history.csv"): header `t_s,<id>.load_kw,<id>.pv_kw,...`; `t_s` counts
seconds before `t0`, an absolute UTC time the caller passes (a scenario's `start`), so every
`t_s` must be negative; one row per 900 s on a local quarter-hour; each value the mean kW over
`[t_s, t_s + 900)`. Every company of the site config must have its `load_kw` column, and a
company with PV its `pv_kw` too; a company without PV in the config has no PV whatever its column
says (as in profiles.csv). Negative values are implausible (an error). The problems reported,
the days and the merge rule: `history_common`.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

from hubctl.core.history import QUARTER_S
from hubctl.data import history_common as common
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from hubctl.core.types import CompanyParams, Params

__all__ = ["parse_contract"]

_CONTRACT_UNITS = {"load": "load_kw", "pv": "pv_kw"}


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
            problems.append(_quantity_problem(line, name, cid, quantity))
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


def _quantity_problem(line: int, name: str, cid: str, quantity: str) -> str:
    """A column `<company>.<quantity>` whose quantity is neither load_kw nor pv_kw."""
    m = common.UNIT_COLUMN.match(quantity)
    if m is not None and m["base"] in _CONTRACT_UNITS:
        expected = f"{cid}.{_CONTRACT_UNITS[m['base']]}"
        return (
            f"line {line}: column {name!r}: wrong unit {m['unit']!r}, expected {expected} "
            "(mean power in kW over the quarter-hour)"
        )
    return (
        f"line {line}: column {name!r}: unknown quantity {quantity!r}: a history has "
        "<company>.load_kw and <company>.pv_kw"
    )


def _t_s(cell: str, line: int, t0_utc: float, tz: ZoneInfo, problems: list[str]) -> float | None:
    """The row's `t_s`: a number before t0 on a local quarter-hour, else None (the problem noted)."""
    t_s = common.parse_number(cell)
    if t_s is None or math.isnan(t_s):
        problems.append(f"line {line}: t_s {cell!r} is not a number")
        return None
    if t_s >= 0:
        problems.append(f"line {line}: t_s = {cell} is not before t0 (a history is the past: t_s <= -900)")
        return None
    if not common.on_quarter(t_s):
        problems.append(
            f"line {line}: t_s = {cell} is not on a local quarter-hour "
            f"(t0 + t_s = {dt.datetime.fromtimestamp(t0_utc + t_s, tz).isoformat(sep=' ')})"
        )
        return None
    return t_s


def _values(
    line: int,
    cells: list[str],
    header: list[str],
    columns: dict[int, tuple[int, str]],
    companies: tuple[CompanyParams, ...],
    problems: list[str],
) -> dict[tuple[int, str], float] | None:
    """(company index, "load" | "pv") -> kW of one row; None when a value is bad (every problem noted)."""
    values: dict[tuple[int, str], float] = {}
    bad = False
    for k, (i, quantity) in columns.items():
        value = common.parse_number(cells[k])
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
            and value > common.pv_limit_kw(companies[i].pv_peak_kw)
        ):
            problems.append(
                f"line {line}: {name} = {cells[k]} kW is above {common.PV_PLAUSIBLE_FRAC:g} x the configured "
                f"PV peak ({companies[i].pv_peak_kw:g} kW): W instead of kW?"
            )
            bad = True
        else:
            values[i, quantity] = value
    return None if bad else values


def parse_contract(
    text: str,
    t0_utc: float,
    params: Params,
    *,
    allow_gaps: bool = False,
    source: str = "history.csv",
) -> common.ImportedHistory:
    """The contract's history.csv (SCENARIOS.md) as day records; `t0_utc` is the scenario's start
    (t_s = 0). Raises HistoryImportError listing every problem (`history_common`)."""
    tz = params.tz
    rows, header_line, header = common.read_header(text, source)
    problems: list[str] = []
    if header[0].lower() == "timestamp" or "company" in (h.lower() for h in header):
        raise HistoryImportError(
            source,
            [f"line {header_line}: a metering export (timestamp,company,...), not a contract history.csv"],
        )
    columns = _contract_columns(header, header_line, params, problems)
    if problems:
        raise HistoryImportError(source, problems)
    if not common.on_quarter(t0_utc):
        raise HistoryImportError(source, [f"t0 {common.local_time(t0_utc, tz)} is not on a quarter-hour"])
    companies = params.companies
    n = len(companies)
    days = common.Days(tz, n)
    line_of: dict[int, int] = {}  # quarter -> line
    present: list[set[int]] = [set() for _ in range(n)]  # quarters with a load value, per company
    t0_q = round(t0_utc / QUARTER_S)
    for line, cells in rows:
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        t_s = _t_s(cells[0], line, t0_utc, tz, problems)
        if t_s is None:
            continue
        q = t0_q + round(t_s / QUARTER_S)
        if q in line_of:
            problems.append(f"line {line}: t_s = {cells[0]} repeats line {line_of[q]}")
            continue
        line_of[q] = line
        values = _values(line, cells, header, columns, companies, problems)
        if values is None:
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
        gap_problems, unmeasured = common.gaps(
            line_of, present, [c.id for c in companies], tz, t_s_of=lambda q: (q - t0_q) * QUARTER_S
        )
        if not allow_gaps:
            problems.extend(gap_problems)
    if problems:
        raise HistoryImportError(source, problems)
    return common.ImportedHistory(
        "contract",
        days.records(params),
        tuple(c.id for i, c in enumerate(companies) if present[i]),
        len(line_of),
        unmeasured,
    )
