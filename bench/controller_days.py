"""The controller on park days and weeks it was not tuned on, scored by the contract's score.py.

    .venv/bin/python bench/controller_days.py [--shared ../shared] [--out DIR] [--only NAME ...]
                                              [--jobs 2] [--no-weeks]

Generates a fixed set of synthetic runs (`simulators.scenario_gen`): 14 single days (summer and
winter, clear, broken, overcast and mixed skies, evening and morning time-block caps, companies
with own caps, a DST day, and six days whose working-morning ramp passes the import cap with the
batteries nearly empty at midnight) and 2 weeks (a Whit-Monday week in May and the Christmas
week, morning-ramp caps, mixed skies). Every run carries 14 days of history.csv and is simulated
twice with `hubctl sim`: as a first day (`--no-history`) and knowing the history. Each run is
scored by `../shared/tools/score.py --lp --json` in a separate process (weeks at `--lp-res 300`):
the figures are the scorer's, not hubctl's. Prints a row per run against the targets (issue #10:
no failed check, 0 quarter-hours over, longest run over <= 5 s, curtailment <= 1.10 x LP + 2 % of
PV, import <= 1.05 x LP) and, for weeks, a row per day (quarter-hours over, longest run, curtailed
and imported kWh, with the LP's own schedule cut at local midnight beside it: an attribution, the
LP moves energy between days). Each row also gives the energy the run's batteries ended with and
the import against the same bound made to end with that energy (`bench/lp_same_end.py`): score's
bound has no end-of-day value and ends every run empty, hubctl ends a day holding what tomorrow's
ramp needs; the second ratio is what is left when that energy is taken out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.contract import load_score
from simulators.scenario_gen import GenOptions, write_scenario

H = 14  # days of history every run carries

DAYS: dict[str, GenOptions] = {
    "summer-15": GenOptions(seed=7, date=dt.date(2026, 6, 10), companies=15, history_days=H),
    "summer-6": GenOptions(seed=22, date=dt.date(2026, 7, 2), companies=6, history_days=H),
    "summer-broken": GenOptions(seed=3, date=dt.date(2026, 7, 14), companies=8, sky="broken", history_days=H),
    "summer-evening-cap": GenOptions(
        seed=21, date=dt.date(2026, 6, 16), companies=8, import_window=("16:00", "20:00"), history_days=H
    ),
    "spring-own-caps": GenOptions(
        seed=11,
        date=dt.date(2026, 5, 5),
        companies=6,
        company_caps=True,
        sharing_key="equal",
        history_days=H,
    ),
    "spring-overcast-morning-cap": GenOptions(
        seed=9,
        date=dt.date(2026, 4, 8),
        companies=10,
        sky="overcast",
        import_window=("06:00", "09:00"),
        history_days=H,
    ),
    "autumn-dst": GenOptions(
        seed=2, date=dt.date(2026, 10, 25), companies=5, sharing_key="priority", history_days=H
    ),
    "winter-evening-cap": GenOptions(
        seed=5, date=dt.date(2026, 1, 20), companies=8, import_window=("16:00", "20:00"), history_days=H
    ),
    "ramp-sep-10": GenOptions(
        seed=31, date=dt.date(2026, 9, 15), companies=10, import_cap="morning-ramp", history_days=H
    ),
    "ramp-jan-8": GenOptions(
        seed=32, date=dt.date(2026, 1, 13), companies=8, import_cap="morning-ramp", history_days=H
    ),
    "ramp-jun-12-broken": GenOptions(
        seed=33,
        date=dt.date(2026, 6, 9),
        companies=12,
        import_cap="morning-ramp",
        sky="broken",
        history_days=H,
    ),
    "ramp-apr-6-overcast": GenOptions(
        seed=34,
        date=dt.date(2026, 4, 21),
        companies=6,
        import_cap="morning-ramp",
        sky="overcast",
        history_days=H,
    ),
    "ramp-oct-14-mixed": GenOptions(
        seed=35,
        date=dt.date(2026, 10, 6),
        companies=14,
        import_cap="morning-ramp",
        sky="mixed",
        history_days=H,
    ),
    "ramp-mar-9-own-caps": GenOptions(
        seed=36,
        date=dt.date(2026, 3, 10),
        companies=9,
        import_cap="morning-ramp",
        company_caps=True,
        sky="mixed",
        history_days=H,
    ),
}
WEEKS: dict[str, GenOptions] = {
    "week-whitsun-10": GenOptions(
        seed=41,
        date=dt.date(2026, 5, 23),  # Saturday; Whit Monday 25 May
        days=7,
        companies=10,
        import_cap="morning-ramp",
        sky="mixed",
        history_days=H,
    ),
    "week-christmas-8": GenOptions(
        seed=42,
        date=dt.date(2026, 12, 21),  # Monday; Christmas 25 and 26 December
        days=7,
        companies=8,
        import_cap="morning-ramp",
        sky="mixed",
        import_window=("16:00", "20:00"),
        history_days=H,
    ),
}


@dataclass(frozen=True)
class Job:
    name: str
    scenario: Path
    out: Path
    history: bool
    week: bool


def run_job(job: Job, shared: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "hubctl.cli", "sim", "--scenario", str(job.scenario), "--out", str(job.out)]
    if not job.history:
        cmd.append("--no-history")
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    score = [
        sys.executable,
        str(shared / "tools" / "score.py"),
        str(job.scenario),
        str(job.out),
        "--lp",
        "--json",
    ]
    if job.week:
        score += ["--lp-res", "300"]
    res = subprocess.run(score, capture_output=True, text=True, check=False)
    parsed: dict[str, Any] = json.loads(
        next(line for line in res.stdout.splitlines() if line.startswith("{"))
    )
    if job.week:
        parsed["days"] = per_day(job, shared)
    # the same bound made to end with the energy the run's batteries ended with (bench/lp_same_end.py)
    same = [sys.executable, str(Path(__file__).with_name("lp_same_end.py")), str(job.scenario), str(job.out)]
    same += ["--json", "--shared", str(shared), "--lp-res", "300" if job.week else "60"]
    out = subprocess.run(same, capture_output=True, text=True, check=True).stdout
    parsed["same_end"] = json.loads(out.strip().splitlines()[-1])
    return parsed


def per_day(job: Job, shared: Path) -> list[dict[str, float]]:
    """Per local day of a week: the run's quarter-hours over, longest run over, curtailed and imported
    kWh, beside the LP schedule's import and curtailment cut at the same midnights."""
    score = load_score(shared)
    sc = score.load_scenario(str(job.scenario))
    prof = score.read_profiles(sc)
    lp = score.lp_bound(sc, prof, res_s=300, series=True)
    g_lp = np.asarray(lp["series"]["grid_kw"])
    head = (job.out / "timeseries.csv").open(encoding="utf-8").readline().strip().split(",")
    ids = [c["id"] for c in sc["companies"]]
    use = [head.index(k) for k in ("park.grid_kw", "park.import_limit_kw", "park.export_limit_kw")]
    use += [head.index(f"{i}.{k}") for i in ids for k in ("pv_available_kw", "pv_kw")]
    data = np.genfromtxt(job.out / "timeseries.csv", delimiter=",", skip_header=1, usecols=use)
    grid, imp, exp = data[:, 0], data[:, 1], data[:, 2]
    imp = np.where(np.isnan(imp), np.inf, imp)
    exp = np.where(np.isnan(exp), np.inf, exp)
    curt = (data[:, 3::2] - data[:, 4::2]).sum(axis=1)
    t = np.arange(len(grid)) * sc["step_s"]
    sod, q = score.clock(sc, t)
    day = np.cumsum(np.r_[0, np.diff(sod) < 0])  # local days: a new one where the second of day wraps
    lp_t = np.arange(len(g_lp)) * 300.0
    lp_sod, _ = score.clock(sc, lp_t)
    lp_day = np.cumsum(np.r_[0, np.diff(lp_sod) < 0])
    h = sc["step_s"] / 3600.0
    over = (grid > imp + 1e-3) | (grid < -exp - 1e-3)
    rows = []
    for d in range(int(day.max()) + 1):
        m = day == d
        quarters = 0
        for qq in np.unique(q[m]):
            mq = m & (q == qq)
            g = grid[mq].mean()
            quarters += int(g > imp[mq].mean() + 1e-3 or g < -exp[mq].mean() - 1e-3)
        run = longest = 0
        for o in over[m]:
            run = run + 1 if o else 0
            longest = max(longest, run)
        lm = lp_day == d
        rows.append(
            {
                "quarters_over": quarters,
                "longest_over_s": longest * sc["step_s"],
                "curtailed_kwh": float(curt[m].sum() * h),
                "import_kwh": float(np.maximum(grid[m], 0).sum() * h),
                "lp_import_kwh": float(np.maximum(g_lp[lm], 0).sum() * 300 / 3600),
            }
        )
    return rows


def verdict(res: dict[str, Any]) -> tuple[bool, list[str], float, float]:
    m, lp = res["metrics"], res["lp"]
    failed = [c["name"] for c in res["checks"] if not c["ok"]]
    allowed = 1.10 * lp["curtailed_kwh"] + 0.02 * m["pv_kwh"]
    ratio = m["park_import_kwh"] / lp["park_import_kwh"]
    ok = (
        not failed
        and m["cap_quarters_over"] == 0
        and m["longest_over_s"] <= 5
        and m["curtailed_kwh"] <= allowed
        and ratio <= 1.05
    )
    return ok, failed, allowed, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--out", type=Path, default=None, help="keep the scenarios and runs here")
    ap.add_argument("--only", nargs="*", default=None, help="run only these names")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--no-weeks", action="store_true", help="the single days only")
    args = ap.parse_args()
    runs = dict(DAYS) if args.no_weeks else {**DAYS, **WEEKS}
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        jobs = []
        for name, opts in runs.items():
            scenario = write_scenario(opts, base / "scenarios" / name)
            for history in (False, True):
                label = f"{name} {'history' if history else 'first day'}"
                out = base / "runs" / f"{name}-{'h' if history else 'n'}"
                jobs.append(Job(label, scenario, out, history, opts.days > 1))
        # the weeks first: the longest runs
        jobs.sort(key=lambda j: not j.week)
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {j.name: pool.submit(run_job, j, args.shared) for j in jobs}
            results = {name: f.result() for name, f in futures.items()}
    head = f"{'run':42s} {'checks':>6s} {'q.over':>6s} {'longest':>7s} {'curt kWh':>9s} {'allowed':>8s} "
    head += f"{'import/LP':>9s} {'meets':>5s} {'end kWh':>8s} {'/LP same end':>12s}"
    print(head)
    met = 0
    for job in sorted(jobs, key=lambda j: (j.week, j.name)):
        res = results[job.name]
        ok, failed, allowed, ratio = verdict(res)
        m = res["metrics"]
        met += ok
        print(
            f"{job.name:42s} {len(failed) or 'ok':>6} {m['cap_quarters_over']:>6d} "
            f"{m['longest_over_s']:>6.0f}s {m['curtailed_kwh']:>9.1f} {allowed:>8.1f} "
            f"{ratio:>9.3f} {'yes' if ok else 'NO':>5s} {res['same_end']['end_kwh']:>8.0f} "
            f"{m['park_import_kwh'] / res['same_end']['bound_same_end_kwh']:>12.3f}"
        )
        for d, row in enumerate(res.get("days", [])):
            print(
                f"    day {d + 1}: q.over {row['quarters_over']}, longest {row['longest_over_s']:.0f} s, "
                f"curtailed {row['curtailed_kwh']:.0f} kWh, import {row['import_kwh']:.0f} kWh "
                f"(LP schedule that day {row['lp_import_kwh']:.0f})"
            )
    print(f"{met} of {len(jobs)} runs meet every target")


if __name__ == "__main__":
    main()
