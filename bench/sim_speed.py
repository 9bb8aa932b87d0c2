"""Wall time of a simulated week for a 15-company park: the physics and the controller at a 1 s step.

    .venv/bin/python bench/sim_speed.py [--companies 15] [--days 7] [--runs 1] [--seed 7]

Generates a synthetic park (simulators.scenario_gen, seeded): a week from Monday
15 June 2026 with an evening import window, mixed skies and 14 days of history,
runs `hubctl sim` on it `--runs` times in this process (the controller knowing the
history, as the gateway would after `hubctl history import`) and reports the fastest
and median wall times: the simulation loop alone, and the whole run including
timeseries.csv (604,800 rows, formatted by a child process while the simulation runs).
Target (issue #10): a week in <= 90 s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
from pathlib import Path

from hubctl.config.scenario import load_scenario
from hubctl.sim.run import run
from simulators.scenario_gen import GenOptions, write_scenario


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--companies", type=int, default=15)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        opts = GenOptions(
            seed=args.seed,
            date=dt.date(2026, 6, 15),
            companies=args.companies,
            battery_share=0.5,
            import_window=("16:00", "20:00"),
            days=args.days,
            sky="mixed",
            history_days=14,
        )
        scenario = load_scenario(write_scenario(opts, Path(tmp) / "park"))
        loop, total = [], []
        for k in range(args.runs):
            summary = run(scenario, Path(tmp) / f"out{k}")
            loop.append(float(str(summary["sim_wall_s"])))
            total.append(float(str(summary["wall_s"])))
        steps = scenario.steps
    print(f"machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"park: {args.companies} companies, {steps} steps of 1 s ({args.days} days), {args.runs} runs")
    print(f"{'':24s} {'fastest':>9s} {'median':>9s}")
    print(f"{'simulation loop (s)':24s} {min(loop):9.1f} {statistics.median(loop):9.1f}")
    print(f"{'whole run incl. CSV (s)':24s} {min(total):9.1f} {statistics.median(total):9.1f}")
    print(
        f"{'per step (us)':24s} {min(loop) / steps * 1e6:9.0f} {statistics.median(loop) / steps * 1e6:9.0f}"
    )


if __name__ == "__main__":
    main()
