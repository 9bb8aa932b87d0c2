"""Park KPIs of a run, as SCENARIOS.md ("Metrics") defines them. Pure functions over arrays.

Quarter-hours are aligned to local :00/:15/:30/:45. Every real UTC offset is a
whole number of quarter-hours, so local quarter-hours are UTC quarter-hours:
`floor(ts_utc / 900)`. A quarter is judged by the one verdict of `hubctl.core.quarters`
(`mean_cap`, `over_direction`): numpy only sums each quarter's power and caps here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hubctl.core.quarters import EPS_OVER_KW, QUARTER_S, mean_cap, quarter_over_cap

Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CapSeries:
    """Grid power of one connection with its limits per step (inf: no cap)."""

    name: str
    grid_kw: Array
    import_limit_kw: Array
    export_limit_kw: Array


def _longest_run(mask: npt.NDArray[np.bool_]) -> int:
    if not mask.any():
        return 0
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).max())


def quarters_over(ts_utc: Array, cap: CapSeries) -> int:
    """Quarter-hours over the cap by the one verdict (`hubctl.core.quarters`); steps are equally long."""
    q = np.floor(ts_utc / QUARTER_S).astype(np.int64)
    _, inv = np.unique(q, return_inverse=True)
    steps = np.bincount(inv).astype(np.float64)

    def sums(a: Array) -> tuple[Array, Array]:
        """Per quarter: the sum of the finite values (a cap in force) and how many there are."""
        finite = np.isfinite(a)
        total = np.bincount(inv, np.where(finite, a, 0.0))
        count = np.bincount(inv, finite.astype(np.float64))
        return total.astype(np.float64), count.astype(np.float64)

    grid = np.bincount(inv, cap.grid_kw)
    imp_sum, imp_n = sums(cap.import_limit_kw)
    exp_sum, exp_n = sums(cap.export_limit_kw)
    over = 0
    for k, n in enumerate(steps):
        imp = mean_cap(float(imp_sum[k]), float(imp_n[k]), float(n))
        exp = mean_cap(float(exp_sum[k]), float(exp_n[k]), float(n))
        over += quarter_over_cap(float(grid[k] / n), imp, exp)
    return over


def summarize(
    ts_utc: Array,
    step_s: float,
    park: CapSeries,
    company_caps: list[CapSeries],
    load_kw: Array,
    pv_available_kw: Array,
    pv_kw: Array,
    battery_kw: Array,
    shared_kwh: float,
) -> dict[str, float | int | None]:
    """The contract metrics. Company arrays are (steps, companies)."""
    h = step_s / 3600.0
    with np.errstate(invalid="ignore"):
        beyond = np.maximum(park.grid_kw - park.import_limit_kw, -park.export_limit_kw - park.grid_kw)
    beyond = np.nan_to_num(beyond, nan=-np.inf, neginf=-np.inf)
    over = beyond > EPS_OVER_KW
    pv_kwh = float(pv_kw.sum() * h)
    load_kwh = float(load_kw.sum() * h)
    imp = float(np.maximum(park.grid_kw, 0).sum() * h)
    exp = float(np.maximum(-park.grid_kw, 0).sum() * h)
    return {
        "cap_quarters_over": quarters_over(ts_utc, park)
        + sum(quarters_over(ts_utc, c) for c in company_caps),
        "cap_seconds_over": float(over.sum() * step_s),
        "cap_kwh_over": float(np.maximum(beyond, 0).sum() * h),
        "longest_over_s": float(_longest_run(over) * step_s),
        "curtailed_kwh": float((pv_available_kw - pv_kw).sum() * h),
        "park_import_kwh": imp,
        "park_export_kwh": exp,
        "self_consumption": None if pv_kwh <= 0 else 1.0 - exp / pv_kwh,
        "self_sufficiency": None if load_kwh <= 0 else 1.0 - imp / load_kwh,
        "shared_kwh": shared_kwh,
        "battery_throughput_kwh": float(np.abs(battery_kw).sum() * h),
        "pv_kwh": pv_kwh,
        "load_kwh": load_kwh,
    }
