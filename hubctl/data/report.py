"""Park reports: a monthly statement per company and the park's KPIs, from the ledger or a sim run.

``hubctl report [--config FILE | --sim DIR] [--from DATE --to DATE] [--format md|csv|html] [--out DIR]``.
Formulas and file layout: docs/reports.md.

What it is: this module holds the report's model (:class:`ReportInput`, :class:`MonthReport`)
and its computation (:func:`build`), pure. The reading of the two sources is
``report_load.py``, the rendering (Markdown, HTML, CSV, the plots) ``report_render.py``; both
import this module, never each other.

Decisions:

- **Two sources, one model**: :func:`hubctl.data.report_load.load_ledger` reads the gateway's
  ledger (``hubctl.data.ledger``: allocations and park quarter-hours),
  :func:`hubctl.data.report_load.load_sim` reads ``allocations.csv`` and ``timeseries.csv`` of
  ``hubctl sim`` and builds the same quarter-hour rows from the 1 s data. Everything after that
  (:func:`build`, :func:`hubctl.data.report_render.write`) is shared, so a report of a simulated
  day and of a real one are computed alike.
- **Months and days are local** (the site's time zone): an interval belongs
  to the month and day of its local start. Quarter-hours are aligned to local
  :00/:15/:30/:45 (so a DST day has 92 or 100 of them).
- **Statements**: per company and month, import, export, shared in and out
  (kWh, from the allocation rows: the ledger's own figures, never
  recomputed), what is left for the supplier (``import − shared in``) and the
  grid (``export − shared out``), and the internal settlement: a consumer pays
  ``shared_in × shared_in_ct_per_kwh``, a producer is paid ``shared_out ×
  shared_out_ct_per_kwh``; the difference funds the community.
- **KPIs**: kWmax is the highest quarter-hour mean import of the month (what
  the DSO bills) against the contracted import cap; quarter-hours over a cap
  are judged by the one verdict of :mod:`hubctl.core.quarters` (each quarter's
  mean power against its mean cap, beyond it by more than 1 W: SCENARIOS.md),
  the verdict the ledger stored and the journal logged, listed with the mean
  cap and every source in force during the quarter (``contract``,
  ``contract + window 16:10-20:00``, a day-ahead schedule); self-consumption
  ``1 − export / PV``; self-sufficiency ``1 − import / load``; CO₂ avoided is
  the PV energy used inside the park (``PV − export``) times the grid factor
  (the exported part is the buyer's to claim); data completeness is the
  measured share of the period's seconds. Curtailed PV is the quarters' sum with
  how it was got (``curtailed_basis``): ``estimated`` when any quarter's figure is the
  gateway controller's estimate (the report then says "PV curtailed (est.)"),
  ``measured`` when every one knew the available PV (``hubctl sim``).
- **Plots** (matplotlib, Agg backend, imported only when plotting): one PNG
  per day with the quarter-hour mean park power against the import and
  export caps, and one per month with each company's shared kWh.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubctl.core.quarters import CURTAILED_ESTIMATED, CURTAILED_MEASURED, local_label, over_direction

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from zoneinfo import ZoneInfo

    from hubctl.core.quarters import QuarterRow
    from hubctl.data.ledger import IntervalRow

__all__ = [
    "MonthKpis",
    "MonthReport",
    "OverQuarter",
    "Prices",
    "ReportInput",
    "Statement",
    "build",
    "kpis",
    "statements",
]


@dataclass(frozen=True, slots=True)
class Prices:
    shared_in_ct_per_kwh: float = 12.0
    shared_out_ct_per_kwh: float = 10.0
    co2_kg_per_kwh: float = 0.374


@dataclass(frozen=True, slots=True)
class ReportInput:
    site: str
    site_name: str
    tz: ZoneInfo
    companies: tuple[str, ...]
    allocations: list[IntervalRow]
    quarters: list[QuarterRow]
    contracted_import_kw: float | None
    contracted_export_kw: float | None
    prices: Prices
    source: str  # where the figures come from, for the report's header
    period: tuple[float, float]  # [from, to) UTC: the seconds completeness is measured against


@dataclass(frozen=True, slots=True)
class Statement:
    month: str
    company: str
    import_kwh: float
    export_kwh: float
    shared_in_kwh: float
    shared_out_kwh: float
    supplier_kwh: float  # import - shared in: bought from the energy supplier
    grid_export_kwh: float  # export - shared out: sold to the grid
    charged_eur: float  # for shared energy received
    paid_eur: float  # for shared energy given
    net_eur: float  # paid - charged


@dataclass(frozen=True, slots=True)
class OverQuarter:
    start_local: str
    grid_kw: float
    import_limit_kw: float | None
    export_limit_kw: float | None
    direction: str  # "import" | "export"
    source: str


@dataclass(slots=True)
class MonthKpis:
    month: str
    kwmax_kw: float | None = None
    kwmax_at: str | None = None
    export_peak_kw: float | None = None
    contracted_import_kw: float | None = None
    contracted_export_kw: float | None = None
    quarters: int = 0
    quarters_over: list[OverQuarter] = field(default_factory=list)
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    pv_kwh: float | None = None
    load_kwh: float | None = None
    curtailed_kwh: float | None = None
    curtailed_basis: str | None = None  # "estimated" if any quarter's figure is, else "measured"
    self_consumption: float | None = None
    self_sufficiency: float | None = None
    co2_avoided_kg: float | None = None
    shared_kwh: float = 0.0
    community_eur: float = 0.0
    completeness: float | None = None


@dataclass(slots=True)
class MonthReport:
    month: str
    statements: list[Statement]
    kpis: MonthKpis
    days: list[dt.date]


# --- computing ----------------------------------------------------------------------------------------------


def _month(ts_utc: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts_utc, tz).strftime("%Y-%m")


def _local(ts_utc: float, tz: ZoneInfo) -> str:
    return local_label(ts_utc, tz)


def _month_bounds(month: str, tz: ZoneInfo) -> tuple[float, float]:
    y, m = (int(x) for x in month.split("-"))
    first = dt.datetime(y, m, 1, tzinfo=tz)
    nxt = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=tz)
    return first.timestamp(), nxt.timestamp()


def _ratio_left(part: float, whole: float | None) -> float | None:
    return None if whole is None or whole <= 0 else 1.0 - part / whole


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return math.fsum(vals) if vals else None


def _basis(bases: Iterable[str | None]) -> str | None:
    """How a sum of curtailed figures was got: one estimated part makes it an estimate."""
    seen = set(bases)
    if not seen:
        return None
    return CURTAILED_ESTIMATED if CURTAILED_ESTIMATED in seen else CURTAILED_MEASURED


def statements(inp: ReportInput, month: str, rows: Sequence[IntervalRow]) -> list[Statement]:
    by_company: dict[str, list[IntervalRow]] = defaultdict(list)
    for r in rows:
        by_company[r.company].append(r)
    order = list(inp.companies) + sorted(set(by_company) - set(inp.companies))
    out = []
    p = inp.prices
    for cid in order:
        rs = by_company.get(cid, [])
        imp = math.fsum(r.import_kwh for r in rs)
        exp = math.fsum(r.export_kwh for r in rs)
        s_in = math.fsum(r.shared_in_kwh for r in rs)
        s_out = math.fsum(r.shared_out_kwh for r in rs)
        charged = s_in * p.shared_in_ct_per_kwh / 100
        paid = s_out * p.shared_out_ct_per_kwh / 100
        out.append(
            Statement(
                month, cid, imp, exp, s_in, s_out, imp - s_in, exp - s_out, charged, paid, paid - charged
            )
        )
    return out


def kpis(
    inp: ReportInput, month: str, quarters: Sequence[QuarterRow], stmts: Sequence[Statement]
) -> MonthKpis:
    k = MonthKpis(
        month, contracted_import_kw=inp.contracted_import_kw, contracted_export_kw=inp.contracted_export_kw
    )
    k.quarters = len(quarters)
    measured = [q for q in quarters if q.grid_kw is not None]
    if measured:
        top = max(measured, key=lambda q: q.grid_kw or 0.0)
        k.kwmax_kw = max(top.grid_kw or 0.0, 0.0)
        k.kwmax_at = _local(top.start_utc, inp.tz)
        k.export_peak_kw = max(0.0, *(-(q.grid_kw or 0.0) for q in measured))
    for q in quarters:
        direction = over_direction(q.grid_kw, q.import_limit_kw, q.export_limit_kw)
        if not q.over_cap or q.grid_kw is None or direction is None:
            continue
        k.quarters_over.append(
            OverQuarter(
                _local(q.start_utc, inp.tz),
                q.grid_kw,
                q.import_limit_kw,
                q.export_limit_kw,
                direction,
                q.import_source if direction == "import" else q.export_source,
            )
        )
    k.import_kwh = math.fsum(q.import_kwh for q in quarters)
    k.export_kwh = math.fsum(q.export_kwh for q in quarters)
    k.pv_kwh = _sum_or_none(q.pv_kwh for q in quarters)
    k.load_kwh = _sum_or_none(q.load_kwh for q in quarters)
    k.curtailed_kwh = _sum_or_none(q.curtailed_kwh for q in quarters)
    k.curtailed_basis = _basis(q.curtailed_basis for q in quarters if q.curtailed_kwh is not None)
    k.self_consumption = _ratio_left(k.export_kwh, k.pv_kwh)
    k.self_sufficiency = _ratio_left(k.import_kwh, k.load_kwh)
    if k.pv_kwh is not None:
        k.co2_avoided_kg = max(k.pv_kwh - k.export_kwh, 0.0) * inp.prices.co2_kg_per_kwh
    k.shared_kwh = math.fsum(s.shared_in_kwh for s in stmts)
    k.community_eur = math.fsum(s.charged_eur for s in stmts) - math.fsum(s.paid_eur for s in stmts)
    lo, hi = _month_bounds(month, inp.tz)
    expected = min(hi, inp.period[1]) - max(lo, inp.period[0])
    if expected > 0:
        k.completeness = min(math.fsum(q.covered_s for q in quarters) / expected, 1.0)
    return k


def build(inp: ReportInput) -> list[MonthReport]:
    """One report per local month that has data, in order."""
    rows_by_month: dict[str, list[IntervalRow]] = defaultdict(list)
    for r in inp.allocations:
        rows_by_month[_month(r.start_utc, inp.tz)].append(r)
    quarters_by_month: dict[str, list[QuarterRow]] = defaultdict(list)
    for q in inp.quarters:
        quarters_by_month[_month(q.start_utc, inp.tz)].append(q)
    months = sorted(set(rows_by_month) | set(quarters_by_month))
    out = []
    for m in months:
        stmts = statements(inp, m, rows_by_month.get(m, []))
        qs = quarters_by_month.get(m, [])
        days = sorted({dt.datetime.fromtimestamp(q.start_utc, inp.tz).date() for q in qs})
        out.append(MonthReport(m, stmts, kpis(inp, m, qs, stmts), days))
    return out
