"""A metering company's quarter-hour export parsed into history days (`parse_metering`); pure, as
`history_common`.

Format: a per-company quarter-hour export in long format, header
`timestamp,company,import_kwh,export_kwh` plus an optional `pv_kwh` column (a PV production
meter), any column order; `timestamp` ISO 8601 with a UTC offset (or `Z`) at the *start* of the
quarter, energies in kWh per quarter-hour. Other columns are ignored unless their name carries a
unit (`import_kw`, `energy_wh`, ...): those are an error naming the unit expected. A company of
the config may be absent (another file may bring it): its quarters stay unmeasured, which the
merge rule of the store keeps. The problems reported, the days and the merge rule:
`history_common`.

Load recovery
    A grid meter sees the net, `(import - export) * 4` kW, and the PV behind the meter hides
    in it: `load = net + pv`. PV is the `pv_kwh` column (times 4) where the file has it for
    the company; otherwise an estimate of a clear sky, `peak_kw * pv_clear_sky_ratio *
    max(0, sin(solar elevation))` at the middle of the quarter (`hubctl.core.solar.clear_sky_shape`,
    the same prior the controller's PV forecast starts from). A clear sky over-estimates PV,
    and so the load, on cloudy days: the profile then expects more load than there was,
    which makes the plan keep more energy for the import caps (the floor) -- the side where
    a wrong forecast costs an overshoot. The estimate is not stored as a measurement: the
    record's PV stays NaN (not measured) for those companies. A company without PV: load
    = net. A negative load (a meter's rounding, PV above the estimate) is clipped to 0 and
    counted.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubctl.core.history import QUARTER_S
from hubctl.core.solar import clear_sky_shape
from hubctl.data import history_common as common
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hubctl.core.types import Params

__all__ = ["parse_metering"]

_METERING_REQUIRED = ("timestamp", "company", "import_kwh", "export_kwh")
_METERING_UNITS = {"import": "import_kwh", "export": "export_kwh", "pv": "pv_kwh"}


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
        m = common.UNIT_COLUMN.match(name)
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


@dataclass(slots=True)
class _Rows:
    """The file's rows checked one by one, before any is used (every problem noted in `problems`)."""

    header: list[str]
    col: dict[str, int]
    params: Params
    t0_utc: float | None
    problems: list[str]
    unknown: dict[str, list[int]] = field(default_factory=dict)  # id -> [first line, rows]
    # (line, company index, quarter, net kW, measured PV kW or NaN)
    parsed: list[tuple[int, int, int, float, float]] = field(default_factory=list)
    lines_by_company: list[dict[int, int]] = field(default_factory=list)
    bad_quarters: list[set[int]] = field(default_factory=list)
    all_lines: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.params.companies)
        self.lines_by_company = [{} for _ in range(n)]
        self.bad_quarters = [set() for _ in range(n)]

    def read(self, rows: Iterable[tuple[int, list[str]]]) -> None:
        index = {c.id: i for i, c in enumerate(self.params.companies)}
        for line, cells in rows:
            at = self._where(line, cells, index)
            if at is not None:
                self._energies(line, cells, *at)

    def _where(  # noqa: PLR0911 - one return per problem, in the order they are reported
        self, line: int, cells: list[str], index: dict[str, int]
    ) -> tuple[int, int] | None:
        """(company index, quarter) of a row whose company and time are good and new, else None."""
        header, col, problems = self.header, self.col, self.problems
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            return None
        cid = cells[col["company"]]
        if not cid:
            problems.append(f"line {line}: no company")
            return None
        ts = _timestamp(cells[col["timestamp"]], line, problems)
        if ts is None:
            return None
        i = index.get(cid)
        if i is None:
            hit = self.unknown.setdefault(cid, [line, 0])
            hit[1] += 1
            return None
        if not common.on_quarter(ts):
            problems.append(
                f"line {line}: timestamp {cells[col['timestamp']]} is not the start of a local quarter-hour "
                "(:00, :15, :30, :45)"
            )
            return None
        if self.t0_utc is not None and ts + QUARTER_S > self.t0_utc + 1e-6:
            problems.append(
                f"line {line}: the quarter from {cells[col['timestamp']]} ends after t0 "
                f"({common.local_time(self.t0_utc, self.params.tz)}): it cannot have been measured yet"
            )
            return None
        q = round(ts / QUARTER_S)
        if q in self.lines_by_company[i]:
            problems.append(
                f"line {line}: {cid} {cells[col['timestamp']]} repeats line {self.lines_by_company[i][q]}"
            )
            return None
        self.lines_by_company[i][q] = line
        self.all_lines.setdefault(q, line)
        return i, q

    def _energies(self, line: int, cells: list[str], i: int, q: int) -> None:
        """The row's net and PV kW, kept in `parsed` when every value is good."""
        col, problems = self.col, self.problems
        pv_col = col.get("pv_kwh")
        energies: list[float] = []
        bad = False
        names = ["import_kwh", "export_kwh"] + (["pv_kwh"] if pv_col is not None else [])
        for name in names:
            cell = cells[col[name]]
            value = common.parse_number(cell)
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
            self.bad_quarters[i].add(q)  # reported already: not a gap as well
            return
        pv_kw = energies[2] * 4.0 if pv_col is not None else math.nan
        peak = self.params.companies[i].pv_peak_kw
        if pv_col is not None and peak > 0 and pv_kw > common.pv_limit_kw(peak):
            problems.append(
                f"line {line}: pv_kwh = {cells[pv_col]} in a quarter-hour is {pv_kw:g} kW, above "
                f"{common.PV_PLAUSIBLE_FRAC:g} x the configured PV peak ({peak:g} kW): Wh instead of kWh?"
            )
            return
        net_kw = (energies[0] - energies[1]) * 4.0
        self.parsed.append((line, i, q, net_kw, pv_kw))


@dataclass(slots=True)
class _Loads:
    """The recovered loads (module docstring) as days, with what it took."""

    days: common.Days
    present: list[set[int]]  # quarters with a value (or a problem reported), per company
    measured_pv: list[bool]  # per company: the file has a pv_kwh value for it
    clipped: int


def _recover_loads(read: _Rows) -> _Loads:
    """PV per company: measured where the file has a pv_kwh value for it, else the clear-sky estimate."""
    params = read.params
    companies = params.companies
    n = len(companies)
    measured_pv = [False] * n
    for _, i, _, _, pv_kw in read.parsed:
        if not math.isnan(pv_kw):
            measured_pv[i] = True
    days = common.Days(params.tz, n)
    present: list[set[int]] = [set(b) for b in read.bad_quarters]
    clipped = 0
    for _, i, q, net_kw, pv_kw in read.parsed:
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
    return _Loads(days, present, measured_pv, clipped)


def parse_metering(
    text: str,
    params: Params,
    *,
    t0_utc: float | None = None,
    allow_gaps: bool = False,
    source: str = "metering.csv",
) -> common.ImportedHistory:
    """A metering company's quarter-hour export (long format) as day records, the load recovered from
    the net (module docstring). With `t0_utc`, quarters that end after it are an error."""
    rows, header_line, header = common.read_header(text, source)
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
    n = len(companies)
    read = _Rows(header, col, params, t0_utc, problems)
    read.read(rows)
    problems.extend(common.unknown_company(at, cid, count, ids) for cid, (at, count) in read.unknown.items())
    if not read.all_lines and not problems:
        problems.append(f"empty file: a header (line {header_line}) but no rows")
    loads = _recover_loads(read)
    unmeasured = 0
    if read.all_lines:
        gap_problems, unmeasured = common.gaps(
            read.all_lines, loads.present, ids, params.tz, lines_by_company=read.lines_by_company
        )
        if not allow_gaps:
            problems.extend(gap_problems)
    if problems:
        raise HistoryImportError(source, problems)
    in_file = [i for i in range(n) if read.lines_by_company[i]]
    notes = []
    absent = [ids[i] for i in range(n) if not read.lines_by_company[i]]
    if absent:
        notes.append(f"not in the file (left unmeasured): {', '.join(absent)}")
    estimated = tuple(ids[i] for i in in_file if not loads.measured_pv[i] and companies[i].pv_peak_kw > 0)
    if estimated:
        notes.append(
            f"PV estimated as a clear sky (no pv_kwh) for {', '.join(estimated)}: their load is "
            "over-estimated on cloudy days, which errs on the side of the import caps"
        )
    if loads.clipped:
        notes.append(f"{loads.clipped} negative load(s) clipped to 0 kW")
    return common.ImportedHistory(
        "metering",
        loads.days.records(params),
        tuple(ids[i] for i in in_file),
        len(read.all_lines),
        unmeasured,
        loads.clipped,
        estimated,
        tuple(notes),
    )
