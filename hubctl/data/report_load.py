"""The two sources of a report read into its one model (``report.ReportInput``).

What it is: :func:`load_ledger` reads the gateway's ledger (``hubctl.data.ledger``: allocations
and park quarter-hours, read-only); :func:`load_sim` reads ``allocations.csv`` and
``timeseries.csv`` of ``hubctl sim`` and builds the same quarter-hour rows from the 1 s data
(the one quarter-hour verdict, ``hubctl.core.quarters``: ``mean_cap``, ``quarter_over_cap``).
The computation and the rendering come after, in ``report.py`` and ``report_render.py``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from hubctl.core.quarters import (
    CURTAILED_MEASURED,
    QUARTER_S,
    QuarterRow,
    mean_cap,
    quarter_over_cap,
    sources_in_force,
)
from hubctl.data.ledger import IntervalRow, open_readonly, read_allocations
from hubctl.data.ledger import read_quarters as _read_quarters
from hubctl.data.report import ReportInput

if TYPE_CHECKING:
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from hubctl.config.site import Caps, SiteConfig
    from hubctl.data.report import Prices

__all__ = ["load_ledger", "load_sim"]

_FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def _report_input(
    cfg: SiteConfig,
    allocations: list[IntervalRow],
    quarters: list[QuarterRow],
    prices: Prices,
    source: str,
    period: tuple[float, float],
) -> ReportInput:
    """The model of either source: the site, its companies and contracted caps from ``cfg``."""
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
        source=source,
        period=period,
    )


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
    return _report_input(cfg, allocations, quarters, prices, f"ledger {ledger_path}", (lo, hi))


# --- a hubctl sim output directory --------------------------------------------------------------------------


def _float_or_nan(text: str) -> float:
    return float(text) if text else math.nan


def _read_timeseries(path: Path) -> tuple[list[str], _FloatArray]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        head = next(reader)
        rows = [[_float_or_nan(x) for x in row] for row in reader if row]
    return head, np.asarray(rows, dtype=np.float64).reshape(len(rows), len(head))


def _sources(caps: Caps | None, tz: ZoneInfo, start_utc: float, direction: str) -> str:
    """Every source of the park cap in force in the quarter, as the ledger names them (caps change on
    whole minutes)."""
    if caps is None:
        return "timeseries"
    from hubctl.core.limits import LocalTime, limits_in_force  # noqa: PLC0415 - only for sim reports with a config

    seconds: dict[str, float] = defaultdict(float)
    for m in range(QUARTER_S // 60):
        lim = limits_in_force(caps, LocalTime.of(start_utc + 60 * m, tz))
        seconds[lim.import_source if direction == "import" else lim.export_source] += 60
    return sources_in_force(seconds)


def _sim_allocations(
    path: Path, cfg: SiteConfig, start_utc: float, from_utc: float | None, to_utc: float | None
) -> list[IntervalRow]:
    """The rows of ``allocations.csv`` whose interval starts in ``[from_utc, to_utc)``."""
    allocations: list[IntervalRow] = []
    with path.open(encoding="utf-8", newline="") as f:
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
    return allocations


def _mean_cap(cap: _FloatArray, step_s: float, covered_s: float) -> float | None:
    """The quarter's mean cap by the one rule (an empty cell: no cap in force in that step)."""
    finite = np.isfinite(cap)
    return mean_cap(float(cap[finite].sum() * step_s), float(finite.sum() * step_s), covered_s)


def _sim_quarters(
    col: dict[str, int], data: _FloatArray, ts: _FloatArray, step_s: float, cfg: SiteConfig
) -> list[QuarterRow]:
    """The park's quarter-hour rows from the 1 s rows of ``timeseries.csv`` (already cut to the period;
    ``col``: column name -> index)."""
    ids = tuple(c.id for c in cfg.companies)
    grid = data[:, col["park.grid_kw"]]
    imp = data[:, col["park.import_limit_kw"]]
    exp = data[:, col["park.export_limit_kw"]]

    def company_sum(field_name: str) -> _FloatArray:
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
        covered = len(seg) * step_s
        mean_imp = _mean_cap(imp[seg], step_s, covered)
        mean_exp = _mean_cap(exp[seg], step_s, covered)
        mean_grid = float(g.mean())
        quarters.append(
            QuarterRow(
                start_utc=q_start,
                import_kwh=float(np.maximum(g, 0).sum() * h),
                export_kwh=float(np.maximum(-g, 0).sum() * h),
                grid_kw=mean_grid,
                import_limit_kw=mean_imp,
                export_limit_kw=mean_exp,
                import_source=_sources(cfg.park, cfg.tz, q_start, "import"),
                export_source=_sources(cfg.park, cfg.tz, q_start, "export"),
                pv_kwh=float(pv[seg].sum() * h),
                load_kwh=float(load[seg].sum() * h),
                curtailed_kwh=float((pav[seg] - pv[seg]).sum() * h),
                covered_s=covered,
                over_cap=quarter_over_cap(mean_grid, mean_imp, mean_exp),
                curtailed_basis=CURTAILED_MEASURED,  # the simulator's own available PV
            )
        )
    return quarters


def load_sim(
    sim_dir: Path,
    cfg: SiteConfig,
    start_utc: float,
    from_utc: float | None,
    to_utc: float | None,
    prices: Prices,
) -> ReportInput:
    """A ``hubctl sim`` output directory; ``cfg`` and ``start_utc`` come from its scenario.yaml."""
    allocations = _sim_allocations(sim_dir / "allocations.csv", cfg, start_utc, from_utc, to_utc)
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
    quarters = _sim_quarters(col, data, ts, step_s, cfg)
    lo = from_utc if from_utc is not None else start_utc
    hi = to_utc if to_utc is not None else (float(ts[-1]) + step_s if len(ts) else lo)
    return _report_input(cfg, allocations, quarters, prices, f"hubctl sim output {sim_dir}", (lo, hi))
