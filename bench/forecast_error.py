"""How wrong the controller's load forecast was, per day: the park's load against what it expected.

    .venv/bin/python bench/forecast_error.py [SCENARIO.yaml ...] [--shared ../shared] [--no-history]

Runs `hubctl sim` in this process on each scenario (default: every scenario in ../shared/scenarios
and ../shared/scenarios-extra, with its history.csv where it has one) and looks inside the run
(`hubctl.sim.run(observer=...)`): at every local midnight it takes the controller's forecast of the
park's load for the 96 quarter-hours of the day ahead, and at every quarter-hour its forecast for
the next hour, exactly as the plan gets them (`hubctl.core.forecast.forecast`, from the controller's
state at that moment). Against the load the physics then drew it reports per local day:

* **day-ahead MAE**: mean absolute error of the expected load over the day's quarter-hours, in %
  of the day's mean load (what a forecast made at midnight knew of the day);
* **hour-ahead MAE**: the same for the forecast of the next hour, made every quarter-hour (this
  includes today's deviation from its profile);
* **high covers** / **low covers**: share of quarter-hours whose load stayed at or below the high
  variant (what the floor is planned for) / at or above the low variant of the day-ahead forecast.

Quarter-hours the forecast had no history for (a first day) count with the forecast it made from
persistence; "covered" says how many had a profile behind them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from hubctl.config.scenario import load_scenario
from hubctl.core.forecast import forecast
from hubctl.core.types import Params
from hubctl.sim.run import run, scenario_history

if TYPE_CHECKING:
    from hubctl.core.types import State
    from simulators.physics import StepRecord

QUARTER_S = 900


def day_errors(path: Path, *, with_history: bool) -> list[dict[str, float | str]]:
    scenario = load_scenario(path)
    params = Params.from_config(scenario.config)
    history = scenario_history(scenario, params) if with_history else None
    actual: dict[int, float] = defaultdict(float)  # UTC quarter -> kWh of park load
    day_ahead: dict[int, tuple[float, float, float, bool]] = {}  # quarter -> (expected, high, low, covered)
    hour_ahead: dict[int, list[float]] = defaultdict(list)  # quarter -> expected loads forecast for it
    tz = scenario.config.tz
    step_s = scenario.step_s

    def observe(t: float, state: State, out: StepRecord) -> None:
        ts = scenario.start_utc + t
        actual[int(ts // QUARTER_S)] += float(out.load_kw.sum()) * step_s / 3600.0
        if ts % QUARTER_S:
            return
        args = (state.recent, state.history, state.pv_index, params.pv_peaks_kw, params.lat, params.lon)
        q0 = int(ts // QUARTER_S)
        fc = forecast(ts, 4, QUARTER_S, *args, params.ramp_windows)
        for j in range(4):
            hour_ahead[q0 + j].append(fc.load_kw[j])
        local = dt.datetime.fromtimestamp(ts, tz)
        if local.hour == 0 and local.minute == 0:
            fc = forecast(ts, 96, QUARTER_S, *args, params.ramp_windows)
            for j in range(96):
                day_ahead[q0 + j] = (fc.load_kw[j], fc.load_high_kw[j], fc.load_low_kw[j], fc.covered[j])

    with tempfile.TemporaryDirectory() as tmp:
        run(scenario, Path(tmp), history=history, observer=observe)
    by_day: dict[dt.date, list[int]] = defaultdict(list)
    for q in sorted(actual):
        if q * QUARTER_S + QUARTER_S <= scenario.start_utc + scenario.duration_s:
            by_day[dt.datetime.fromtimestamp(q * QUARTER_S, tz).date()].append(q)
    rows: list[dict[str, float | str]] = []
    for date, quarters in sorted(by_day.items()):
        load = {q: actual[q] * 4 for q in quarters}  # kWh per quarter -> mean kW
        mean = sum(load.values()) / len(load)
        da = [q for q in quarters if q in day_ahead]
        ha = [q for q in quarters if hour_ahead.get(q)]
        rows.append(
            {
                "day": f"{date} {date.strftime('%a')}",
                "mean_kw": mean,
                "day_ahead_mae_pct": 100 * sum(abs(day_ahead[q][0] - load[q]) for q in da) / len(da) / mean
                if da
                else math.nan,
                "hour_ahead_mae_pct": 100 * sum(abs(hour_ahead[q][0] - load[q]) for q in ha) / len(ha) / mean
                if ha
                else math.nan,
                "high_covers_pct": 100 * sum(load[q] <= day_ahead[q][1] for q in da) / len(da)
                if da
                else math.nan,
                "low_covers_pct": 100 * sum(load[q] >= day_ahead[q][2] for q in da) / len(da)
                if da
                else math.nan,
                "covered": f"{sum(day_ahead[q][3] for q in da)}/{len(da)}",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--no-history", action="store_true", help="ignore the scenarios' history.csv")
    args = ap.parse_args()
    paths = args.scenarios or sorted(
        [
            *(args.shared / "scenarios").glob("*/scenario.yaml"),
            *(args.shared / "scenarios-extra").glob("*/scenario.yaml"),
        ]
    )
    print(
        f"{'scenario':26s} {'day':15s} {'mean kW':>8s} {'day-ahead':>9s} {'hour-ahead':>10s} "
        f"{'high covers':>11s} {'low covers':>10s} {'profile':>8s}"
    )
    for path in paths:
        for row in day_errors(path, with_history=not args.no_history):
            print(
                f"{path.parent.name:26s} {row['day']!s:15s} {row['mean_kw']:8.0f} "
                f"{row['day_ahead_mae_pct']:8.1f}% {row['hour_ahead_mae_pct']:9.1f}% "
                f"{row['high_covers_pct']:10.0f}% {row['low_covers_pct']:9.0f}% {row['covered']!s:>8s}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
