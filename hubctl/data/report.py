"""Park reports: a monthly statement per company and the park's KPIs, from the ledger or a sim run.

``hubctl report [--config FILE | --sim DIR] [--from DATE --to DATE] [--format md|csv|html] [--out DIR]``.
Formulas and file layout: docs/reports.md.

Decisions:

- **Two sources, one model**: :func:`load_ledger` reads the gateway's ledger
  (``hubctl.ledger``: allocations and park quarter-hours), :func:`load_sim`
  reads ``allocations.csv`` and ``timeseries.csv`` of ``hubctl sim`` and
  builds the same quarter-hour rows from the 1 s data. Everything after that
  (:func:`build`, :func:`write`) is shared, so a report of a simulated day and
  of a real one are computed alike.
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
  compare each quarter's mean with its mean cap (SCENARIOS.md), listed with
  the source of the cap (``contract``, ``window 16:00-20:00``, a day-ahead
  schedule); self-consumption ``1 − export / PV``; self-sufficiency
  ``1 − import / load``; CO₂ avoided is the PV energy used inside the park
  (``PV − export``) times the grid factor (the exported part is the buyer's
  to claim); data completeness is the measured share of the period's seconds.
- **Plots** (matplotlib, Agg backend, imported only when plotting): one PNG
  per day with the quarter-hour mean park power against the import and
  export caps, and one per month with each company's shared kWh.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hubctl.data.ledger import (
    QUARTER_S,
    IntervalRow,
    QuarterRow,
    open_readonly,
    quarter_over_cap,
    read_allocations,
)
from hubctl.data.ledger import read_quarters as _read_quarters

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from hubctl.config.site import Caps, SiteConfig

__all__ = ["MonthReport", "Prices", "ReportInput", "build", "load_ledger", "load_sim", "write"]


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


# --- loading ------------------------------------------------------------------------------------------------


def load_ledger(
    cfg: SiteConfig, ledger_path: Path, from_utc: float | None, to_utc: float | None, prices: Prices
) -> ReportInput:
    """The gateway's ledger, read-only (the gateway may be writing to it)."""
    db = open_readonly(ledger_path)
    try:
        allocations = read_allocations(db, from_utc, to_utc)
        quarters = _read_quarters(db, from_utc, to_utc)
    finally:
        db.close()
    starts = [q.start_utc for q in quarters] + [a.start_utc for a in allocations]
    lo = from_utc if from_utc is not None else (min(starts) if starts else 0.0)
    hi = to_utc if to_utc is not None else (max(starts) + QUARTER_S if starts else lo)
    return ReportInput(
        site=cfg.site.id,
        site_name=cfg.site.name or cfg.site.id,
        tz=cfg.tz,
        companies=tuple(c.id for c in cfg.companies),
        allocations=allocations,
        quarters=quarters,
        contracted_import_kw=cfg.park.import_limit_kw,
        contracted_export_kw=cfg.park.export_limit_kw,
        prices=prices,
        source=f"ledger {ledger_path}",
        period=(lo, hi),
    )


def _float_or_nan(text: str) -> float:
    return float(text) if text else math.nan


def _read_timeseries(path: Path) -> tuple[list[str], np.ndarray[Any, np.dtype[np.float64]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        head = next(reader)
        rows = [[_float_or_nan(x) for x in row] for row in reader if row]
    return head, np.asarray(rows, dtype=np.float64).reshape(len(rows), len(head))


def _dominant_source(caps: Caps | None, tz: ZoneInfo, start_utc: float, direction: str) -> str:
    """The source of the park cap that held longest in the quarter (caps change on whole minutes)."""
    if caps is None:
        return "timeseries"
    from hubctl.core.limits import LocalTime, limits_in_force  # noqa: PLC0415 - only for sim reports with a config

    seconds: dict[str, int] = defaultdict(int)
    for m in range(QUARTER_S // 60):
        lim = limits_in_force(caps, LocalTime.of(start_utc + 60 * m, tz))
        seconds[lim.import_source if direction == "import" else lim.export_source] += 60
    return max(seconds, key=seconds.__getitem__)


def load_sim(
    sim_dir: Path,
    cfg: SiteConfig,
    start_utc: float,
    from_utc: float | None,
    to_utc: float | None,
    prices: Prices,
) -> ReportInput:
    """A ``hubctl sim`` output directory; ``cfg`` and ``start_utc`` come from its scenario.yaml."""
    ids = tuple(c.id for c in cfg.companies)
    allocations: list[IntervalRow] = []
    with (sim_dir / "allocations.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            start = start_utc + float(row["interval_start_s"])
            if (from_utc is not None and start < from_utc) or (to_utc is not None and start >= to_utc):
                continue
            allocations.append(
                IntervalRow(
                    start,
                    row["company"],
                    float(row["import_kwh"]),
                    float(row["export_kwh"]),
                    float(row["shared_in_kwh"]),
                    float(row["shared_out_kwh"]),
                    float(cfg.sharing.interval_s),
                    float(cfg.sharing.interval_s),
                )
            )
    head, data = _read_timeseries(sim_dir / "timeseries.csv")
    col = {name: i for i, name in enumerate(head)}
    t = data[:, col["t_s"]]
    step_s = float(t[1] - t[0]) if len(t) > 1 else 1.0
    ts = start_utc + t
    keep = np.ones(len(ts), dtype=bool)
    if from_utc is not None:
        keep &= ts >= from_utc
    if to_utc is not None:
        keep &= ts < to_utc
    data, ts = data[keep], ts[keep]
    grid = data[:, col["park.grid_kw"]]
    imp = data[:, col["park.import_limit_kw"]]
    exp = data[:, col["park.export_limit_kw"]]

    def company_sum(field_name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray(data[:, [col[f"{c}.{field_name}"] for c in ids]].sum(axis=1), dtype=np.float64)

    load, pv, pav = company_sum("load_kw"), company_sum("pv_kw"), company_sum("pv_available_kw")
    qkey = np.floor(ts / QUARTER_S).astype(np.int64)
    quarters: list[QuarterRow] = []
    h = step_s / 3600
    bounds = np.flatnonzero(np.diff(qkey)) + 1
    for seg in np.split(np.arange(len(ts)), bounds):
        if not len(seg):
            continue
        q_start = float(qkey[seg[0]] * QUARTER_S)
        g = grid[seg]
        mean_imp = float(np.nanmean(imp[seg])) if np.isfinite(imp[seg]).any() else None
        mean_exp = float(np.nanmean(exp[seg])) if np.isfinite(exp[seg]).any() else None
        mean_grid = float(g.mean())
        quarters.append(
            QuarterRow(
                start_utc=q_start,
                import_kwh=float(np.maximum(g, 0).sum() * h),
                export_kwh=float(np.maximum(-g, 0).sum() * h),
                grid_kw=mean_grid,
                import_limit_kw=mean_imp,
                export_limit_kw=mean_exp,
                import_source=_dominant_source(cfg.park, cfg.tz, q_start, "import")
                if mean_imp is not None
                else "none",
                export_source=_dominant_source(cfg.park, cfg.tz, q_start, "export")
                if mean_exp is not None
                else "none",
                pv_kwh=float(pv[seg].sum() * h),
                load_kwh=float(load[seg].sum() * h),
                curtailed_kwh=float((pav[seg] - pv[seg]).sum() * h),
                covered_s=len(seg) * step_s,
                over_cap=quarter_over_cap(mean_grid, mean_imp, mean_exp),
            )
        )
    lo = from_utc if from_utc is not None else start_utc
    hi = to_utc if to_utc is not None else (float(ts[-1]) + step_s if len(ts) else lo)
    return ReportInput(
        site=cfg.site.id,
        site_name=cfg.site.name or cfg.site.id,
        tz=cfg.tz,
        companies=ids,
        allocations=allocations,
        quarters=quarters,
        contracted_import_kw=cfg.park.import_limit_kw,
        contracted_export_kw=cfg.park.export_limit_kw,
        prices=prices,
        source=f"hubctl sim output {sim_dir}",
        period=(lo, hi),
    )


# --- computing ----------------------------------------------------------------------------------------------


def _month(ts_utc: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts_utc, tz).strftime("%Y-%m")


def _local(ts_utc: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts_utc, tz).strftime("%Y-%m-%d %H:%M %Z")


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
        if not q.over_cap or q.grid_kw is None:
            continue
        over_import = q.import_limit_kw is not None and q.grid_kw > q.import_limit_kw
        k.quarters_over.append(
            OverQuarter(
                _local(q.start_utc, inp.tz),
                q.grid_kw,
                q.import_limit_kw,
                q.export_limit_kw,
                "import" if over_import else "export",
                q.import_source if over_import else q.export_source,
            )
        )
    k.import_kwh = math.fsum(q.import_kwh for q in quarters)
    k.export_kwh = math.fsum(q.export_kwh for q in quarters)
    k.pv_kwh = _sum_or_none(q.pv_kwh for q in quarters)
    k.load_kwh = _sum_or_none(q.load_kwh for q in quarters)
    k.curtailed_kwh = _sum_or_none(q.curtailed_kwh for q in quarters)
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


# --- plots --------------------------------------------------------------------------------------------------


def plot_day(inp: ReportInput, day: dt.date, path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - plotting is optional and slow to import

    mpl.use("Agg")
    import matplotlib.dates as mdates  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415

    qs = [q for q in inp.quarters if dt.datetime.fromtimestamp(q.start_utc, inp.tz).date() == day]
    x = [dt.datetime.fromtimestamp(q.start_utc, inp.tz) for q in qs]
    nan = math.nan
    grid = [q.grid_kw if q.grid_kw is not None else nan for q in qs]
    imp = [q.import_limit_kw if q.import_limit_kw is not None else nan for q in qs]
    exp = [-q.export_limit_kw if q.export_limit_kw is not None else nan for q in qs]
    over = [(xi, g) for xi, g, q in zip(x, grid, qs, strict=True) if q.over_cap]
    if qs:  # close the last step at the end of its quarter
        x.append(dt.datetime.fromtimestamp(qs[-1].start_utc + QUARTER_S, inp.tz))
        grid.append(grid[-1])
        imp.append(imp[-1])
        exp.append(exp[-1])
    xs = mdates.date2num(x)  # type: ignore[no-untyped-call]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.step(xs, grid, where="post", label="park grid, quarter-hour mean (kW, + import)", color="tab:blue")
    ax.step(xs, imp, where="post", label="import cap (kW)", color="tab:red", linestyle="--")
    ax.step(
        xs, exp, where="post", label="export cap (kW, shown negative)", color="tab:orange", linestyle="--"
    )
    if over:
        over_x = mdates.date2num([o[0] for o in over])  # type: ignore[no-untyped-call]
        ax.scatter(over_x, [o[1] for o in over], color="red", zorder=5, label="over a cap")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_title(f"{inp.site_name}: park power against the cap, {day.isoformat()} ({len(qs)} quarter-hours)")
    ax.set_ylabel("kW")
    ax.xaxis_date(inp.tz)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=inp.tz))  # type: ignore[no-untyped-call]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=4, fontsize="small", frameon=False)
    ax.grid(visible=True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_shares(inp: ReportInput, month: MonthReport, path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [s.company for s in month.statements]
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 3), 4), dpi=100)
    ax.bar(pos - 0.2, [s.shared_in_kwh for s in month.statements], 0.4, label="shared in (received) kWh")
    ax.bar(pos + 0.2, [s.shared_out_kwh for s in month.statements], 0.4, label="shared out (given) kWh")
    ax.set_xticks(pos, names, rotation=30, ha="right")
    ax.set_ylabel("kWh")
    ax.set_title(f"{inp.site_name}: shared energy per company, {month.month}")
    ax.legend(fontsize="small")
    ax.grid(visible=True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- writing ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


_STATEMENT_COLUMNS = (
    "month",
    "company",
    "import_kwh",
    "export_kwh",
    "shared_in_kwh",
    "shared_out_kwh",
    "supplier_kwh",
    "grid_export_kwh",
    "charged_eur",
    "paid_eur",
    "net_eur",
)


def _kpi_rows(k: MonthKpis, prices: Prices) -> list[tuple[str, str]]:
    cap = k.contracted_import_kw
    return [
        ("kWmax (highest quarter-hour mean import)", f"{_fmt(k.kwmax_kw)} kW at {k.kwmax_at or 'n/a'}"),
        ("contracted import cap", _fmt(cap, ".1f", " kW")),
        ("kWmax / contracted cap", _pct(None if not cap or k.kwmax_kw is None else k.kwmax_kw / cap)),
        ("highest quarter-hour mean export", _fmt(k.export_peak_kw, ".1f", " kW")),
        ("contracted export cap", _fmt(k.contracted_export_kw, ".1f", " kW")),
        ("quarter-hours over a park cap", f"{len(k.quarters_over)} of {k.quarters}"),
        ("park import", _fmt(k.import_kwh, ".1f", " kWh")),
        ("park export", _fmt(k.export_kwh, ".1f", " kWh")),
        ("PV produced", _fmt(k.pv_kwh, ".1f", " kWh")),
        ("PV curtailed", _fmt(k.curtailed_kwh, ".1f", " kWh")),
        ("load", _fmt(k.load_kwh, ".1f", " kWh")),
        ("self-consumption (1 - export/PV)", _pct(k.self_consumption)),
        ("self-sufficiency (1 - import/load)", _pct(k.self_sufficiency)),
        (
            f"CO2 avoided ({prices.co2_kg_per_kwh} kg/kWh x PV used in the park)",
            _fmt(k.co2_avoided_kg, ".0f", " kg"),
        ),
        ("shared between companies", _fmt(k.shared_kwh, ".1f", " kWh")),
        ("community margin (charged - paid)", _fmt(k.community_eur, ".2f", " EUR")),
        ("data completeness", _pct(k.completeness)),
    ]


def _md(inp: ReportInput, months: Sequence[MonthReport], pngs: dict[str, list[str]]) -> str:
    p = inp.prices
    lines = [
        f"# {inp.site_name}: park report",
        "",
        (
            f"Source: {inp.source}. Times in {inp.tz}. Shared energy: consumers pay "
            f"{p.shared_in_ct_per_kwh:g} ct/kWh, producers are paid {p.shared_out_ct_per_kwh:g} ct/kWh."
        ),
        "",
    ]
    for m in months:
        lines += [f"## {m.month}", "", "### Statements per company", ""]
        lines.append(
            "| company | import kWh | export kWh | shared in kWh | shared out kWh | from supplier kWh "
            "| to grid kWh | charged EUR | paid EUR | net EUR |"
        )
        lines.append("|---|" + "---:|" * 9)
        for s in m.statements:
            lines.append(
                f"| {s.company} | {s.import_kwh:.3f} | {s.export_kwh:.3f} | {s.shared_in_kwh:.3f} | "
                f"{s.shared_out_kwh:.3f} | {s.supplier_kwh:.3f} | {s.grid_export_kwh:.3f} | "
                f"{s.charged_eur:.2f} | {s.paid_eur:.2f} | {s.net_eur:+.2f} |"
            )
        lines += ["", "### Park KPIs", "", "| KPI | value |", "|---|---:|"]
        lines += [f"| {label} | {value} |" for label, value in _kpi_rows(m.kpis, p)]
        if m.kpis.quarters_over:
            lines += [
                "",
                "### Quarter-hours over a park cap",
                "",
                "| quarter | mean kW | cap kW | source |",
                "|---|---:|---:|---|",
            ]
            for o in m.kpis.quarters_over:
                cap = o.import_limit_kw if o.direction == "import" else -(o.export_limit_kw or 0.0)
                lines.append(f"| {o.start_local} | {o.grid_kw:.1f} | {cap:.1f} | {o.source} |")
        lines += ["", "### Plots", ""]
        lines += [f"![{name}]({name})" for name in pngs.get(m.month, [])]
        lines.append("")
    return "\n".join(lines)


def _html(inp: ReportInput, months: Sequence[MonthReport], pngs: dict[str, list[str]]) -> str:
    esc = html.escape
    p = inp.prices
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(inp.site_name)}: park report</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px}td.n{text-align:right}img{max-width:100%}</style>"
        ),
        "</head><body>",
        f"<h1>{esc(inp.site_name)}: park report</h1>",
        (
            f"<p>Source: {esc(inp.source)}. Times in {esc(str(inp.tz))}. Shared energy: consumers pay "
            f"{p.shared_in_ct_per_kwh:g} ct/kWh, producers are paid {p.shared_out_ct_per_kwh:g} ct/kWh.</p>"
        ),
    ]
    for m in months:
        parts.append(f"<h2>{esc(m.month)}</h2><h3>Statements per company</h3><table><tr>")
        parts += [f"<th>{esc(c)}</th>" for c in _STATEMENT_COLUMNS[1:]]
        parts.append("</tr>")
        for s in m.statements:
            vals = _statement_values(s)[1:]
            parts.append(
                "<tr><td>"
                + esc(str(vals[0]))
                + "</td>"
                + "".join(f"<td class='n'>{v}</td>" for v in vals[1:])
                + "</tr>"
            )
        parts.append("</table><h3>Park KPIs</h3><table>")
        parts += [f"<tr><td>{esc(a)}</td><td class='n'>{esc(b)}</td></tr>" for a, b in _kpi_rows(m.kpis, p)]
        parts.append("</table>")
        if m.kpis.quarters_over:
            parts.append("<h3>Quarter-hours over a park cap</h3><table><tr><th>quarter</th><th>mean kW</th>")
            parts.append("<th>cap kW</th><th>source</th></tr>")
            for o in m.kpis.quarters_over:
                cap = o.import_limit_kw if o.direction == "import" else -(o.export_limit_kw or 0.0)
                parts.append(
                    f"<tr><td>{esc(o.start_local)}</td><td class='n'>{o.grid_kw:.1f}</td>"
                    f"<td class='n'>{cap:.1f}</td><td>{esc(o.source)}</td></tr>"
                )
            parts.append("</table>")
        parts += [f"<p><img src='{esc(name)}' alt='{esc(name)}'></p>" for name in pngs.get(m.month, [])]
    parts.append("</body></html>")
    return "\n".join(parts)


def _statement_values(s: Statement) -> list[str]:
    return [
        s.month,
        s.company,
        f"{s.import_kwh:.6f}",
        f"{s.export_kwh:.6f}",
        f"{s.shared_in_kwh:.6f}",
        f"{s.shared_out_kwh:.6f}",
        f"{s.supplier_kwh:.6f}",
        f"{s.grid_export_kwh:.6f}",
        f"{s.charged_eur:.4f}",
        f"{s.paid_eur:.4f}",
        f"{s.net_eur:.4f}",
    ]


def _write_csv(out: Path, inp: ReportInput, months: Sequence[MonthReport]) -> list[Path]:
    paths = [out / "statements.csv", out / "kpis.csv", out / "quarters_over.csv"]
    with paths[0].open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(_STATEMENT_COLUMNS)
        for m in months:
            w.writerows(_statement_values(s) for s in m.statements)
    kpi_fields = [
        "kwmax_kw",
        "kwmax_at",
        "contracted_import_kw",
        "export_peak_kw",
        "contracted_export_kw",
        "quarters",
        "import_kwh",
        "export_kwh",
        "pv_kwh",
        "load_kwh",
        "curtailed_kwh",
        "self_consumption",
        "self_sufficiency",
        "co2_avoided_kg",
        "shared_kwh",
        "community_eur",
        "completeness",
    ]
    with paths[1].open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["month", *kpi_fields, "quarters_over"])
        for m in months:
            vals = [getattr(m.kpis, name) for name in kpi_fields]
            w.writerow([m.month, *("" if v is None else v for v in vals), len(m.kpis.quarters_over)])
    with paths[2].open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["quarter_start", "grid_kw", "import_limit_kw", "export_limit_kw", "direction", "source"])
        for m in months:
            for o in m.kpis.quarters_over:
                w.writerow(
                    [
                        o.start_local,
                        f"{o.grid_kw:.3f}",
                        o.import_limit_kw,
                        o.export_limit_kw,
                        o.direction,
                        o.source,
                    ]
                )
    del inp
    return paths


def write(
    inp: ReportInput, months: Sequence[MonthReport], out: Path, fmt: str, *, plots: bool = True
) -> list[Path]:
    """Write the report in ``fmt`` (md, csv or html) and the PNGs into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pngs: dict[str, list[str]] = defaultdict(list)
    if plots:
        for m in months:
            for day in m.days:
                name = f"park-{day.isoformat()}.png"
                plot_day(inp, day, out / name)
                pngs[m.month].append(name)
                written.append(out / name)
            name = f"shares-{m.month}.png"
            plot_shares(inp, m, out / name)
            pngs[m.month].append(name)
            written.append(out / name)
    if fmt == "md":
        path = out / "report.md"
        path.write_text(_md(inp, months, pngs), encoding="utf-8")
        written.append(path)
    elif fmt == "html":
        path = out / "report.html"
        path.write_text(_html(inp, months, pngs), encoding="utf-8")
        written.append(path)
    elif fmt == "csv":
        written += _write_csv(out, inp, months)
    else:
        raise ValueError(f"unknown report format {fmt!r}: md, csv or html")
    return written
