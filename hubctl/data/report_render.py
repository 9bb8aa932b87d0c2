"""A report rendered: Markdown, HTML or CSV files and the PNG plots (``write``).

What it is: the rendering of ``report.MonthReport``s computed by ``report.build`` (formulas and
file layout: docs/reports.md). Plots use matplotlib with the Agg backend, imported only when
plotting: one PNG per day with the quarter-hour mean park power against the import and export
caps, and one per month with each company's shared kWh.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from hubctl.core.quarters import CURTAILED_ESTIMATED, QUARTER_S

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from hubctl.data.report import MonthKpis, MonthReport, OverQuarter, Prices, ReportInput, Statement

__all__ = ["plot_day", "plot_shares", "statements_csv", "write"]


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


def _shown_cap(o: OverQuarter) -> float | None:
    """The cap a quarter was over, as the Markdown and HTML tables show it (an export cap negative)."""
    return o.import_limit_kw if o.direction == "import" else -(o.export_limit_kw or 0.0)


def _curtailed_label(k: MonthKpis) -> str:
    """The curtailed row's label: an estimate says so (docs/reports.md)."""
    if k.curtailed_basis == CURTAILED_ESTIMATED:
        return "PV curtailed (est.)"
    return "PV curtailed"


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
        (_curtailed_label(k), _fmt(k.curtailed_kwh, ".1f", " kWh")),
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
                lines.append(f"| {o.start_local} | {o.grid_kw:.1f} | {_shown_cap(o):.1f} | {o.source} |")
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
                parts.append(
                    f"<tr><td>{esc(o.start_local)}</td><td class='n'>{o.grid_kw:.1f}</td>"
                    f"<td class='n'>{_shown_cap(o):.1f}</td><td>{esc(o.source)}</td></tr>"
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


def statements_csv(statements: Iterable[Statement]) -> str:
    """Statements as `statements.csv` of ``--format csv`` has them (header, then a row each): the park
    page's CSV download is this, so the two cannot differ."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(_STATEMENT_COLUMNS)
    w.writerows(_statement_values(s) for s in statements)
    return buf.getvalue()


def _write_csv(out: Path, inp: ReportInput, months: Sequence[MonthReport]) -> list[Path]:
    paths = [out / "statements.csv", out / "kpis.csv", out / "quarters_over.csv"]
    paths[0].write_text(statements_csv(s for m in months for s in m.statements), encoding="utf-8", newline="")
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
        "curtailed_basis",
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
