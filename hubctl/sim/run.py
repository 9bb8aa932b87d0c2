"""`hubctl sim`: the gateway's controller against the park physics model, in simulated time.

Deterministic and as fast as the machine allows. Each step:
the controller sees the physics record of `measurement_delay_s` ago (what a
gateway's meters would show), decides with the same `hubctl.core.control.step`
that `hubctl run` uses, and the physics model applies the decision with the
devices' ramps. Before t = 0 the park is at rest: batteries at 0 kW, PV
unlimited, loads at the profile's first row.

Writes `timeseries.csv`, `allocations.csv` and `summary.json` exactly as
SCENARIOS.md specifies. The simulator knows the available PV, so `curtailed_kwh` is the true
figure, `Σ (pv_available_kw − pv_kw)·dt`, and `summary.json` says so: `curtailed_basis`
`"measured"` (a gateway's ledger has only the controller's estimate: `"estimated"`,
docs/reports.md).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hubctl.core.control import step
from hubctl.core.metrics import CapSeries, summarize
from hubctl.core.quarters import CURTAILED_MEASURED
from hubctl.core.sharing import Allocation, IntervalMeter, SharingKey, SharingRule, allocate_surplus
from hubctl.core.types import CompanyReading, Params, Snapshot, State
from hubctl.data.history_contract import parse_contract
from simulators.physics import CompanySpec, ParkPhysics, Profiles, StepRecord
from simulators.specs import company_specs

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from pathlib import Path

    from hubctl.config.scenario import Scenario
    from hubctl.core.history import History

ProgressFn = Callable[[int, int], None]
# called after every step with the step's time (s since the start), the controller's new state and
# what the physics did: benchmarks look inside the run (bench/forecast_error.py)
StepObserver = Callable[[float, State, StepRecord], None]


def _at_rest(profiles: Profiles, specs: list[CompanySpec], step_s: float) -> StepRecord:
    """The park before t = 0: batteries idle, PV unlimited."""
    load, avail = profiles.at(0.0)
    avail = np.array([a if s.pv else 0.0 for a, s in zip(avail, specs, strict=True)])
    soc = np.array([s.battery.soc_pct if s.battery else 0.0 for s in specs])
    bat = np.zeros(len(specs))
    return StepRecord(-step_s, load, avail, avail.copy(), bat, soc, load - avail)


def scenario_history(scenario: Scenario, params: Params) -> History | None:
    """The scenario's `history.csv` as the controller's history at t = 0, through the same import
    as `hubctl history import` (`hubctl.data.history_contract.parse_contract`); None without one.
    Raises HistoryImportError for a bad file, OSError for an unreadable one."""
    if scenario.history_path is None:
        return None
    text = scenario.history_path.read_text(encoding="utf-8")
    imported = parse_contract(text, scenario.start_utc, params, source=str(scenario.history_path))
    return params.empty_history().with_records(imported.records)


def sharing_rule(scenario: Scenario) -> SharingRule:
    s = scenario.config.sharing
    return SharingRule(SharingKey(s.key.value), dict(s.shares), tuple(s.order))


def run(
    scenario: Scenario,
    out_dir: Path,
    progress: ProgressFn | None = None,
    history: History | None = None,
    observer: StepObserver | None = None,
) -> dict[str, object]:
    """Simulate the scenario and write the three output files; returns the summary.

    `history` is what the controller knows at t = 0; by default the scenario's `history.csv`
    (`scenario_history`), as `hubctl history import` gives it to the gateway."""
    wall0 = time.perf_counter()
    cfg = scenario.config
    ids = [c.id for c in cfg.companies]
    n = len(ids)
    specs = company_specs(scenario)
    profiles = Profiles.from_csv(scenario.profiles_path, ids)
    physics = ParkPhysics(specs, profiles, scenario.step_s)
    params = Params.from_config(cfg)
    state = State.initial(params, history if history is not None else scenario_history(scenario, params))
    steps = scenario.steps
    dt = scenario.step_s
    # the controller sees the record of `delay` steps ago (at least the previous step: it cannot see the
    # step it is deciding)
    delay = max(1, round(scenario.measurement_delay_s / dt))
    rest = _at_rest(profiles, specs, dt)
    seen: deque[StepRecord] = deque([rest] * delay, maxlen=delay)

    cols: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {
        k: np.zeros((steps, n)) for k in ("load", "pav", "pv", "bat", "soc", "grid", "cimp", "cexp")
    }
    park_imp = np.zeros(steps)
    park_exp = np.zeros(steps)
    has_caps = [c.has_caps for c in cfg.companies]
    rule = sharing_rule(scenario)
    interval_steps = max(1, round(cfg.sharing.interval_s / dt))
    meter = IntervalMeter(ids)
    allocations: list[tuple[float, Allocation]] = []
    report_every = max(1, steps // 200)

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _TimeseriesWriter(out_dir / "timeseries.csv", ids)
    sent = 0
    t_all = np.arange(steps) * dt
    with_battery = [s.battery is not None for s in specs]
    capped = [(i, cid) for i, cid in enumerate(ids) if has_caps[i]]
    cols["cimp"][:] = math.inf
    cols["cexp"][:] = math.inf
    try:
        for k in range(steps):
            t = k * dt
            if k - sent >= _BLOCK_STEPS:
                writer.send(_block(t_all, park_imp, park_exp, cols, slice(sent, k)))
                sent = k
            rec = seen[0]
            age = t - rec.t_s
            socs = rec.soc_pct.tolist()
            readings = tuple(
                CompanyReading(g, p, b, socs[i] if with_battery[i] else None, age)
                for i, (g, p, b) in enumerate(
                    zip(rec.grid_kw.tolist(), rec.pv_kw.tolist(), rec.battery_kw.tolist(), strict=True)
                )
            )
            decision, state = step(Snapshot(scenario.start_utc + t, readings), state, params)
            out = physics.step(t, decision.battery_setpoint_kw, decision.pv_limit_kw)
            seen.append(out)
            if observer is not None:
                observer(t, state, out)
            cols["load"][k] = out.load_kw
            cols["pav"][k] = out.pv_available_kw
            cols["pv"][k] = out.pv_kw
            cols["bat"][k] = out.battery_kw
            cols["soc"][k] = out.soc_pct
            cols["grid"][k] = out.grid_kw
            pl = decision.park_limits
            park_imp[k] = math.inf if pl.import_kw is None else pl.import_kw
            park_exp[k] = math.inf if pl.export_kw is None else pl.export_kw
            for i, cid in capped:
                lim = decision.company_limits.get(cid)
                cols["cimp"][k, i] = math.inf if lim is None or lim.import_kw is None else lim.import_kw
                cols["cexp"][k, i] = math.inf if lim is None or lim.export_kw is None else lim.export_kw
            meter.add(out.grid_kw.tolist(), dt)
            if (k + 1) % interval_steps == 0 or k == steps - 1:
                start_s = (k // interval_steps) * interval_steps * dt
                allocations.extend((start_s, a) for a in allocate_surplus(meter.energy(), rule))
                meter.reset()
            if progress is not None and (k % report_every == 0 or k == steps - 1):
                progress(k + 1, steps)
        writer.send(_block(t_all, park_imp, park_exp, cols, slice(sent, steps)))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    sim_wall = time.perf_counter() - wall0

    ts = np.asarray(scenario.start_utc + np.arange(steps) * dt, dtype=np.float64)
    park_grid = cols["grid"].sum(axis=1)
    company_caps = [
        CapSeries(ids[i], cols["grid"][:, i], cols["cimp"][:, i], cols["cexp"][:, i])
        for i in range(n)
        if has_caps[i]
    ]
    summary: dict[str, object] = dict(
        summarize(
            ts,
            dt,
            CapSeries("park", park_grid, park_imp, park_exp),
            company_caps,
            cols["load"],
            cols["pav"],
            cols["pv"],
            cols["bat"],
            sum(a.shared_in_kwh for _, a in allocations),
        )
    )
    _write_allocations(out_dir / "allocations.csv", allocations)
    summary.update(
        curtailed_basis=CURTAILED_MEASURED,  # the simulator's own available PV, not an estimate
        scenario=scenario.name,
        steps=steps,
        companies=n,
        sim_wall_s=round(sim_wall, 3),
        wall_s=round(time.perf_counter() - wall0, 3),
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


_KEYS = ("load", "pav", "pv", "bat", "soc", "grid", "cimp", "cexp")
_COLUMNS = (
    "load_kw",
    "pv_available_kw",
    "pv_kw",
    "battery_kw",
    "soc_pct",
    "grid_kw",
    "import_limit_kw",
    "export_limit_kw",
)
_BLOCK_STEPS = 3600  # rows handed to the writer at a time


def _header(ids: list[str]) -> str:
    head = ["t_s", "park.grid_kw", "park.import_limit_kw", "park.export_limit_kw"]
    for cid in ids:
        head += [f"{cid}.{k}" for k in _COLUMNS]
    return ",".join(head) + "\n"


def _block(
    t_s: np.ndarray,
    park_imp: np.ndarray,
    park_exp: np.ndarray,
    cols: dict[str, np.ndarray],
    rows: slice,
) -> np.ndarray:
    """Rows of timeseries.csv as numbers (limits: inf where none), in the file's column order."""
    n = cols["load"].shape[1]
    block = np.empty((rows.stop - rows.start, 8 * n + 4))
    block[:, 0] = t_s[rows]
    block[:, 1] = cols["grid"][rows].sum(axis=1)
    block[:, 2] = park_imp[rows]
    block[:, 3] = park_exp[rows]
    for j, key in enumerate(_KEYS):
        block[:, 4 + j :: 8] = cols[key][rows]
    return block


def _format_block(block: np.ndarray) -> str:
    """CSV text of a block: one %-format per row, formatting in C rather than per value in Python."""
    width = block.shape[1]
    n = (width - 4) // 8
    row_fmt = "%s,%.4f,%s,%s" + ",%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%s,%s" * n + "\n"
    num = np.empty(block.shape, dtype=object)
    num[:, 0] = [f"{x:g}" for x in block[:, 0].tolist()]
    limits = [2, 3] + [c for i in range(n) for c in (4 + 8 * i + 6, 4 + 8 * i + 7)]
    values = [c for c in range(1, width) if c not in set(limits)]
    num[:, values] = np.round(block[:, values], 4) + 0.0  # + 0.0: no "-0.0000"
    for c in limits:
        num[:, c] = _limit_strings(block[:, c])
    return "".join(row_fmt % tuple(row) for row in num.tolist())


def _writer_main(conn: Connection, path: str, header: str, width: int) -> None:
    """The writer process: format the blocks it receives into `path` until an empty message."""
    with open(path, "w", encoding="utf-8", newline="") as f:  # noqa: PTH123 - a plain path string
        f.write(header)
        while True:
            data = conn.recv_bytes()
            if not data:
                break
            f.write(_format_block(np.frombuffer(data, dtype=np.float64).reshape(-1, width)))
    conn.close()


class _TimeseriesWriter:
    """timeseries.csv written by a child process while the simulation runs: on a machine with a second
    core the formatting (the larger part of writing a week of 1 s rows) costs no wall time."""

    def __init__(self, path: Path, ids: list[str]) -> None:
        self.width = 8 * len(ids) + 4
        fork = "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if fork else None)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_writer_main, args=(child, str(path), _header(ids), self.width), daemon=True
        )
        self._proc.start()
        child.close()

    def send(self, block: np.ndarray) -> None:
        self._conn.send_bytes(np.ascontiguousarray(block, dtype=np.float64).tobytes())

    def abort(self) -> None:
        """Stop the writer without waiting for it (the run failed)."""
        self._conn.close()
        self._proc.terminate()
        self._proc.join()

    def close(self) -> None:
        self._conn.send_bytes(b"")
        self._conn.close()
        self._proc.join()
        if self._proc.exitcode != 0:
            raise RuntimeError(f"the timeseries writer failed (exit code {self._proc.exitcode})")


def _limit_strings(values: np.ndarray) -> list[str]:
    """Limits as CSV cells: empty where there is no cap; few distinct values, so cache them."""
    cache: dict[float, str] = {}
    out = []
    for v in values.tolist():
        cell = cache.get(v)
        if cell is None:
            cell = cache[v] = "" if math.isinf(v) else f"{v:.4f}"
        out.append(cell)
    return out


def _write_allocations(path: Path, allocations: list[tuple[float, Allocation]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("interval_start_s,company,import_kwh,export_kwh,shared_in_kwh,shared_out_kwh\n")
        for start, a in allocations:
            f.write(
                f"{start:g},{a.company},{a.import_kwh:.6f},{a.export_kwh:.6f},"
                f"{a.shared_in_kwh:.6f},{a.shared_out_kwh:.6f}\n"
            )
