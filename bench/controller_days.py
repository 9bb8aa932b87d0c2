"""The controller on park days it was not tuned on: synthetic days, scored by the contract's score.py.

    .venv/bin/python bench/controller_days.py [--shared ../shared] [--out DIR]

Generates a fixed set of synthetic days (simulators.scenario_gen: summer and
winter, clear, broken and overcast skies, evening and morning time-block caps,
companies with own caps, a DST day, 5 to 15 companies), runs `hubctl sim` on
each and scores it with `../shared/tools/score.py --lp --json` (a separate
process: the figures are the scorer's, not hubctl's). Prints one row per day
against the targets of issue #2: no failed check, 0 quarter-hours over,
longest excursion <= 5 s, curtailment <= 1.10 x LP + 2 % of PV, import <= 1.05 x LP.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from simulators.scenario_gen import GenOptions, write_scenario

DAYS: dict[str, GenOptions] = {
    "summer-15": GenOptions(seed=7, date=dt.date(2026, 6, 10), companies=15),
    "summer-6": GenOptions(seed=22, date=dt.date(2026, 7, 2), companies=6),
    "summer-broken": GenOptions(seed=3, date=dt.date(2026, 7, 14), companies=8, sky="broken"),
    "summer-evening-cap": GenOptions(
        seed=21, date=dt.date(2026, 6, 16), companies=8, import_window=("16:00", "20:00")
    ),
    "spring-own-caps": GenOptions(
        seed=11, date=dt.date(2026, 5, 5), companies=6, company_caps=True, sharing_key="equal"
    ),
    "spring-overcast-morning-cap": GenOptions(
        seed=9, date=dt.date(2026, 4, 8), companies=10, sky="overcast", import_window=("06:00", "09:00")
    ),
    "autumn-dst": GenOptions(seed=2, date=dt.date(2026, 10, 25), companies=5, sharing_key="priority"),
    "winter-evening-cap": GenOptions(
        seed=5, date=dt.date(2026, 1, 20), companies=8, import_window=("16:00", "20:00")
    ),
    "winter-static": GenOptions(
        seed=23,
        date=dt.date(2026, 12, 3),
        companies=7,
        import_window=("16:00", "20:00"),
        sharing_key="static",
    ),
}


def score(scenario: Path, out: Path, shared: Path) -> dict[str, object]:
    sim = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "sim", "--scenario", str(scenario), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    del sim
    res = subprocess.run(
        [sys.executable, str(shared / "tools" / "score.py"), str(scenario), str(out), "--lp", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    parsed: dict[str, object] = json.loads(
        next(line for line in res.stdout.splitlines() if line.startswith("{"))
    )
    return parsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        head = f"{'day':30s} {'checks':>6s} {'q.over':>6s} {'longest':>7s} {'curt kWh':>9s} {'allowed':>8s} "
        head += f"{'import/LP':>9s} {'meets':>5s}"
        print(head)
        met = 0
        for name, opts in DAYS.items():
            scenario = write_scenario(opts, base / "days" / name)
            res = score(scenario, base / "runs" / name, args.shared)
            m = res["metrics"]
            lp = res["lp"]
            assert isinstance(m, dict)
            assert isinstance(lp, dict)
            checks = res["checks"]
            assert isinstance(checks, list)
            failed = [c for c in checks if not c["ok"]]
            allowed = 1.10 * lp["curtailed_kwh"] + 0.02 * m["pv_kwh"]
            ratio = m["park_import_kwh"] / lp["park_import_kwh"]
            ok = (
                not failed
                and m["cap_quarters_over"] == 0
                and m["longest_over_s"] <= 5
                and m["curtailed_kwh"] <= allowed
                and ratio <= 1.05
            )
            met += ok
            print(
                f"{name:30s} {len(failed) or 'ok':>6} {m['cap_quarters_over']:>6d} "
                f"{m['longest_over_s']:>6.0f}s {m['curtailed_kwh']:>9.1f} {allowed:>8.1f} "
                f"{ratio:>9.3f} {'yes' if ok else 'NO':>5s}"
            )
        print(f"{met} of {len(DAYS)} days meet every target")


if __name__ == "__main__":
    main()
