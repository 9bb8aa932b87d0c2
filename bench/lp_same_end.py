"""How much of a run's import above the bound is the energy its batteries end with.

    .venv/bin/python bench/lp_same_end.py SCENARIO.yaml OUT_DIR [--lp-res 60] [--shared ../shared]

`score.py --lp` compares a run with a perfect-foresight bound that has no end-of-day value: the
bound ends every run with its batteries at their minimum, while hubctl's plan (issue #10, item 5)
ends a day holding what tomorrow's ramp needs less what the night can charge. This bench solves the
same kind of bound twice, with the contract's own scenario, profile and limit readers (score.py,
loaded as a module): once as score.py does (no end target; its import is printed beside score's
figure as a check of this formulation), and once with the batteries' stored energy at the end at
least what the run's batteries ended with (the last row of timeseries.csv). The second is the best
any controller could do that ends the run as hubctl did, so

* `import / bound` is the figure of the acceptance (score.py's),
* `import / bound with the same end` is what is left when the end-of-run energy is taken out,
* their difference is the price of the energy the run keeps for after its end.

The formulation is written to be score.py's (`lp_bound`: its docstring, read with its code;
score.py takes no extra constraint, so it is stated again here rather than patched): per company
and block, curtailment in [0, available], charge and discharge with `ch/max + dis/max <= 1`,
energy with efficiency and SoC bounds; park and own caps soft with slacks; lexicographic: cap
violation, then curtailment (paying `score.THR_COST` per kWh of throughput, as score does), then
import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix, vstack

from simulators.contract import load_score


class _Lp:
    """A sparse LP assembled block by block: variables in arrays of n, rows `<=` or `==`."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.nv = 0
        self.bounds: list[np.ndarray] = []
        self.rows: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"ub": [], "eq": []}
        self.rhs: dict[str, list[np.ndarray]] = {"ub": [], "eq": []}
        self.nrows = {"ub": 0, "eq": 0}

    def var(self, lo: Any, hi: Any) -> np.ndarray:
        cols = np.arange(self.nv, self.nv + self.n)
        self.nv += self.n
        self.bounds.append(np.column_stack([np.broadcast_to(lo, self.n), np.broadcast_to(hi, self.n)]))
        return cols

    def add(self, kind: str, terms: list[tuple[np.ndarray, Any]], rhs: Any, mask: Any = True) -> None:
        """Per block where `mask`: sum(coef * x[col]) <= (or ==) rhs; a column < 0 adds no term."""
        m = np.broadcast_to(mask, self.n)
        rid = self.nrows[kind] + np.cumsum(m) - 1
        for cols, coef in terms:
            ok = m & (cols >= 0)
            self.rows[kind].append((rid[ok], cols[ok], np.broadcast_to(coef, self.n)[ok]))
        self.rhs[kind].append(np.broadcast_to(rhs, self.n)[m])
        self.nrows[kind] += int(m.sum())

    def matrix(self, kind: str) -> tuple[csr_matrix, np.ndarray]:
        r = self.rows[kind]
        mat = coo_matrix(
            (
                np.concatenate([x[2] for x in r]),
                (np.concatenate([x[0] for x in r]), np.concatenate([x[1] for x in r])),
            ),
            shape=(self.nrows[kind], self.nv),
        ).tocsr()
        return mat, np.concatenate(self.rhs[kind])


def bound(score: Any, sc: dict[str, Any], prof: Any, res_s: float, held: dict[float, float]) -> float:
    """Park import (kWh) of the perfect-foresight bound; `held`: the least energy (kWh) the batteries
    must hold together at these seconds from the start (the run's duration: its end; empty: no
    target, as score.py)."""
    dt = float(sc["step_s"])
    t = np.arange(round(sc["duration_s"] / dt)) * dt
    blk = (t // res_s).astype(int)
    cnt = np.bincount(blk)
    n = len(cnt)
    hb = cnt * dt / 3600.0

    def mean(a: Any) -> np.ndarray:
        return np.asarray(np.bincount(blk, np.broadcast_to(a, t.shape)) / cnt)

    sod, _ = score.clock(sc, t)
    pa = score.profile_at(sc, prof, t)
    lp = _Lp(n)
    viol: list[np.ndarray] = []
    curt: list[np.ndarray] = []
    thr: list[np.ndarray] = []
    stored: list[np.ndarray] = []  # each battery's energy at the end of each block

    def soft_caps(terms: list[tuple[np.ndarray, float]], net: np.ndarray, lims: tuple[Any, Any]) -> None:
        for sign, lim in ((1.0, lims[0]), (-1.0, lims[1])):
            fin = np.isfinite(lim)
            if fin.any():
                s = lp.var(0, np.inf)
                viol.append(s)
                rhs = np.where(fin, np.where(fin, lim, 0) - sign * net, 0)
                lp.add("ub", [(v, sign * k) for v, k in terms] + [(s, -1.0)], rhs, fin)

    park_net = np.zeros(n)
    park_terms: list[tuple[np.ndarray, float]] = []
    for c in sc["companies"]:
        load, avail = (mean(a) for a in pa[c["id"]])
        terms: list[tuple[np.ndarray, float]] = []
        if avail.max() > 0:
            cv = lp.var(0, avail)
            terms.append((cv, 1.0))
            curt.append(cv)
        b = c["bat"]
        if b:
            cap, eff = float(b["capacity_kwh"]), float(b.get("efficiency", 1))
            mc, md = float(b["max_charge_kw"]), float(b["max_discharge_kw"])
            ch, dis = lp.var(0, mc), lp.var(0, md)
            e = lp.var(
                cap * float(b.get("min_soc_pct", 0)) / 100, cap * float(b.get("max_soc_pct", 100)) / 100
            )
            e0 = np.zeros(n)
            e0[0] = cap * float(b["soc_pct"]) / 100
            prev = np.concatenate([[-1], e[:-1]])
            lp.add("eq", [(e, 1.0), (prev, -1.0), (ch, -eff * hb), (dis, hb / eff)], e0)
            lp.add("ub", [(ch, 1 / mc), (dis, 1 / md)], 1.0)
            terms += [(ch, 1.0), (dis, -1.0)]
            thr += [ch, dis]
            stored.append(e)
        soft_caps(terms, load - avail, tuple(mean(a) for a in score.limits_in_force(c, sod)))  # type: ignore[arg-type]
        park_net += load - avail
        park_terms += terms
    soft_caps(park_terms, park_net, tuple(mean(a) for a in score.limits_in_force(sc["park"], sod)))  # type: ignore[arg-type]
    u = lp.var(0, np.inf)
    lp.add("ub", [*park_terms, (u, -1.0)], -park_net)
    a_ub, b_ub = lp.matrix("ub")
    a_eq, b_eq = lp.matrix("eq")
    bounds = np.concatenate(lp.bounds)
    extra_a: list[csr_matrix] = []
    extra_b: list[float] = []
    for at_s, kwh in held.items():  # -sum(E at the end of the block before at_s) <= -kwh
        k = min(n, max(1, round(at_s / res_s))) - 1
        row = np.zeros(lp.nv)
        for e in stored:
            row[e[k]] = -1.0
        extra_a.append(csr_matrix(row[None, :]))
        extra_b.append(-kwh)

    def vec(groups: list[np.ndarray], weight: np.ndarray | None = None) -> np.ndarray:
        v = np.zeros(lp.nv)
        for cols in groups:
            v[cols] = hb if weight is None else weight
        return v

    throughput = vec(thr)
    stages = [
        (vec(viol), vec(viol)),
        (vec(curt) + score.THR_COST * throughput, vec(curt)),
        (vec([u]) + 1e-4 * throughput, vec([u])),
    ]
    value = 0.0
    for cost, keep in stages:
        res = linprog(
            cost,
            A_ub=vstack([a_ub, *extra_a]).tocsr(),
            b_ub=np.concatenate([b_ub, extra_b]),
            A_eq=a_eq,
            b_eq=b_eq,
            bounds=bounds,
            method="highs",
        )
        if res.status != 0:
            raise RuntimeError(f"LP: {res.message}")
        value = float(keep @ res.x)
        extra_a.append(csr_matrix(keep[None, :]))
        extra_b.append(value * (1 + 1e-7) + 1e-6)
    return value


def run_stored_kwh(sc: dict[str, Any], out: Path) -> np.ndarray:
    """What the run's batteries held together in each row of timeseries.csv (kWh)."""
    head = (out / "timeseries.csv").open(encoding="utf-8").readline().strip().split(",")
    bats = [c for c in sc["companies"] if c["bat"]]
    if not bats:
        return np.zeros(1)
    cols = [head.index(f"{c['id']}.soc_pct") for c in bats]
    soc = np.genfromtxt(out / "timeseries.csv", delimiter=",", skip_header=1, usecols=cols)
    caps = np.array([float(c["bat"]["capacity_kwh"]) for c in bats])
    return np.asarray(soc.reshape(len(soc), -1) @ caps / 100)


def run_import_kwh(out: Path, step_s: float) -> float:
    head = (out / "timeseries.csv").open(encoding="utf-8").readline().strip().split(",")
    grid = np.genfromtxt(
        out / "timeseries.csv", delimiter=",", skip_header=1, usecols=[head.index("park.grid_kw")]
    )
    return float(np.maximum(grid, 0).sum() * step_s / 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", type=Path)
    ap.add_argument("out", type=Path, help="the run's output directory (hubctl sim --out)")
    ap.add_argument("--lp-res", type=float, default=60.0)
    ap.add_argument(
        "--hold",
        action="append",
        default=[],
        metavar="HH:MM",
        help="also a bound that holds at least the run's stored energy at this local time of every day "
        "(e.g. 06:00: the energy a first day keeps for its ramp hours); repeatable",
    )
    ap.add_argument(
        "--json", action="store_true", help="one line of JSON (bench/controller_days.py reads it)"
    )
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    score = load_score(args.shared)
    sc = score.load_scenario(str(args.scenario))
    prof = score.read_profiles(sc)
    step = float(sc["step_s"])
    stored = run_stored_kwh(sc, args.out)
    duration = float(sc["duration_s"])
    imported = run_import_kwh(args.out, step)
    free = bound(score, sc, prof, args.lp_res, {})
    held = {duration: float(stored[-1])}
    same = bound(score, sc, prof, args.lp_res, held)
    if args.json:
        fig = {
            "import_kwh": imported,
            "bound_kwh": free,
            "bound_same_end_kwh": same,
            "end_kwh": float(stored[-1]),
        }
        print(json.dumps(fig))
        return
    print(
        f"{args.scenario.parent.name}: batteries {stored[0]:.0f} kWh at the start, "
        f"{stored[-1]:.0f} at the end"
    )
    print(f"  run import {imported:.1f} kWh")
    print(f"  bound, no end target (as score.py): {free:.1f} kWh, import / bound {imported / free:.3f}")
    print(
        f"  bound ending with the run's {stored[-1]:.0f} kWh: {same:.1f} kWh, "
        f"import / bound {imported / same:.3f}"
    )
    if args.hold:
        t = np.arange(len(stored)) * step
        sod, _ = score.clock(sc, t)
        for hhmm in args.hold:
            hh, mm = (int(x) for x in hhmm.split(":"))
            at = np.flatnonzero((sod >= hh * 3600 + mm * 60) & (sod < hh * 3600 + mm * 60 + step))
            held.update({float(t[i]): float(stored[i]) for i in at})
        kept = ", ".join(f"{float(stored[int(k // step)]):.0f}" for k in sorted(held) if k < duration)
        also = bound(score, sc, prof, args.lp_res, held)
        print(
            f"  ... and holding the run's energy at {', '.join(args.hold)} ({kept} kWh): {also:.1f} kWh, "
            f"import / bound {imported / also:.3f}"
        )


if __name__ == "__main__":
    main()
