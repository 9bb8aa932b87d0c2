"""The sharing ledger: DST-aware intervals, restarts, and allocations that follow SCENARIOS.md."""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubctl.core.quarters import CURTAILED_ESTIMATED, CURTAILED_MEASURED, ParkStep, quarter_index_of_day
from hubctl.core.sharing import IntervalMeter, SharingKey, SharingRule, allocate_surplus
from hubctl.data.ledger import IntervalRow, Ledger, open_readonly, read_quarters
from hubctl.data.spool import Spool, SpoolBounds

AMS = ZoneInfo("Europe/Amsterdam")
IDS = ("bakery", "cold-store", "offices")
PRO_RATA = SharingRule(SharingKey.PRO_RATA)


def local_midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=AMS).timestamp()


@pytest.mark.parametrize(
    ("day", "quarters"),
    [(dt.date(2026, 3, 29), 92), (dt.date(2026, 10, 25), 100), (dt.date(2026, 6, 22), 96)],
)
def test_a_local_day_has_92_96_or_100_quarter_hours(tmp_path: Path, day: dt.date, quarters: int) -> None:
    start, end = local_midnight(day), local_midnight(day + dt.timedelta(days=1))
    led = Ledger(tmp_path / "ledger.sqlite", IDS, PRO_RATA)
    t = start
    while t < end:
        led.add_step(t, [10.0, -4.0, 1.0], 60.0, ParkStep(import_limit_kw=900.0, import_source="contract"))
        t += 60.0
    led.close_due(end)
    rows = led.rows()
    qs = led.quarters()
    led.close()
    starts = sorted({r.start_utc for r in rows})
    assert len(starts) == quarters
    assert len(qs) == quarters
    assert len(rows) == quarters * len(IDS)
    assert [quarter_index_of_day(s, AMS) for s in starts] == list(range(quarters))
    assert all(dt.datetime.fromtimestamp(s, AMS).minute % 15 == 0 for s in starts)
    assert dt.datetime.fromtimestamp(starts[0], AMS).time() == dt.time(0, 0)
    assert all(r.covered_s == 900.0 for r in rows)
    # the bakery imports 10 kW all day: 2.5 kWh a quarter, less the 1 kWh share of the cold store's export
    bakery = [r for r in rows if r.company == "bakery"]
    assert sum(r.import_kwh for r in bakery) == pytest.approx(10.0 * 900 * quarters / 3600)
    assert all(r.shared_in_kwh == pytest.approx(4.0 * 10 / 11 * 0.25) for r in bakery)


def _steps(seed: int, n: int, companies: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 50.0, size=(n, companies)).round(3)


T0 = local_midnight(dt.date(2026, 6, 22)) + 8 * 3600  # a local quarter-hour


def _run(
    path: Path, grid: np.ndarray, restart_at: int | None = None, replay: int = 0, *, crash: bool = False
) -> list[IntervalRow]:
    led = Ledger(path, IDS, PRO_RATA)
    k = 0
    while k < len(grid):
        led.add_step(T0 + k, grid[k].tolist(), 1.0)
        k += 1
        if restart_at is not None and k == restart_at:
            if not crash:
                led.close()
            del led  # a crash leaves the file as the last step's commit left it
            led = Ledger(path, IDS, PRO_RATA)
            for j in range(k - replay, k):  # the service may feed the last steps again after a restart
                led.add_step(T0 + j, grid[j].tolist(), 1.0)
            restart_at = None
    led.close_due(T0 + len(grid))
    rows = led.rows()
    led.close()
    return rows


@pytest.mark.parametrize("crash", [False, True])
def test_restart_in_the_middle_of_an_interval_neither_loses_nor_doubles(
    tmp_path: Path, *, crash: bool
) -> None:
    grid = _steps(1, 3 * 900, len(IDS))
    straight = _run(tmp_path / "a.sqlite", grid)
    restarted = _run(tmp_path / "b.sqlite", grid, restart_at=1350, replay=30, crash=crash)
    assert len(straight) == len(restarted) == 3 * len(IDS)
    for a, b in zip(straight, restarted, strict=True):
        assert (a.start_utc, a.company, a.covered_s) == (b.start_utc, b.company, b.covered_s)
        for name in ("import_kwh", "export_kwh", "shared_in_kwh", "shared_out_kwh"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-12, abs=1e-12)


def test_downtime_is_not_covered_and_a_settled_interval_is_never_settled_again(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path, IDS, PRO_RATA)
    for k in range(300):  # the first 300 s of an interval, then the gateway is down
        led.add_step(T0 + k, [1.0, -1.0, 0.0], 1.0)
    led.close()
    led = Ledger(path, IDS, PRO_RATA)
    led.add_step(T0 + 1000, [1.0, -1.0, 0.0], 1.0)  # back in the next interval: the open one is settled
    led.add_step(T0 + 500, [5.0, 5.0, 5.0], 1.0)  # a late step for it is ignored
    assert led.late_steps == 0  # (it is before the last step taken: a replay, not even late)
    led.close_due(T0 + 1800)
    rows = led.rows()
    led.close()
    first = [r for r in rows if r.start_utc == T0]
    assert [r.covered_s for r in first] == [300.0] * 3
    assert first[0].import_kwh == pytest.approx(300 / 3600)
    assert len(rows) == 6


def test_a_step_across_a_boundary_is_split(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.sqlite", IDS, PRO_RATA)
    led.add_step(T0 + 890, [36.0, 0.0, 0.0], 20.0)  # 10 s in each interval
    led.close_due(T0 + 1800)
    rows = led.rows()
    led.close()
    assert [r.import_kwh for r in rows if r.company == "bakery"] == pytest.approx([0.1, 0.1])


def test_quarter_rows_keep_caps_sources_and_over_cap(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.sqlite", IDS, PRO_RATA)
    for k in range(900):
        window = k >= 600
        park = ParkStep(
            load_kw=700.0,
            pv_kw=40.0,
            pv_available_kw=50.0,
            import_limit_kw=600.0 if window else 900.0,
            import_source="window 16:00-20:00" if window else "contract",
            export_limit_kw=500.0,
            export_source="contract",
        )
        led.add_step(T0 + k, [300.0, 300.0, 60.0], 1.0, park)
    led.close_due(T0 + 900)
    (q,) = led.quarters()
    led.close()
    assert q.grid_kw == pytest.approx(660.0)
    assert q.import_limit_kw == pytest.approx(800.0)  # the mean cap: the one verdict (core/quarters)
    assert q.import_source == "contract + window 16:00-20:00"  # every source in force, in order
    assert not q.over_cap
    assert q.curtailed_kwh == pytest.approx(2.5)
    assert q.pv_kwh == pytest.approx(10.0)
    assert q.load_kwh == pytest.approx(175.0)


def test_a_cap_not_in_force_all_quarter_is_not_judged_and_the_line_is_local(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The contract counts no cap as an infinite one: a window cap from minute 10 alone has no mean."""
    led = Ledger(tmp_path / "ledger.sqlite", IDS, PRO_RATA, tz=AMS)
    for k in range(1800):
        lim = 400.0 if k >= 600 else None
        park = ParkStep(import_limit_kw=lim, import_source="none" if lim is None else "window 16:10-20:00")
        led.add_step(T0 + k, [450.0, 0.0, 0.0], 1.0, park)
    led.close_due(T0 + 1800)
    first, second = led.quarters()
    led.close()
    assert (first.import_limit_kw, first.import_source, first.over_cap) == (
        None,
        "none + window 16:10-20:00",
        False,
    )
    assert (second.import_limit_kw, second.over_cap) == (400.0, True)
    local = dt.datetime.fromtimestamp(T0 + 900, AMS).strftime("%Y-%m-%d %H:%M %Z")
    assert [r.getMessage().split(" over")[0] for r in caplog.records if "over the cap" in r.getMessage()] == [
        f"quarter-hour {local}"
    ]


def test_rows_reach_the_spool_exactly_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_age_s=None))  # T0 lies in the past
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path, IDS, PRO_RATA, site="p", spool=spool)
    for k in range(1800):
        led.add_step(T0 + k, [2.0, -3.0, 0.5], 1.0)
    led.close_due(T0 + 1800)
    led.close()
    assert spool.pending_points == 2 * len(IDS) + 2  # allocation rows and park quarters
    # a crash between settling and marking: the rows look unspooled on the next start
    with sqlite3.connect(path) as db:
        db.execute("UPDATE allocations SET spooled = 0")
        db.execute("UPDATE quarters SET spooled = 0")
    Ledger(path, IDS, PRO_RATA, site="p", spool=spool).close()
    assert spool.pending_points == 2 * len(IDS) + 2
    spool.ack(spool.peek(1000))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE allocations SET spooled = 0")
    Ledger(path, IDS, PRO_RATA, site="p", spool=spool).close()  # delivered keys are remembered too
    assert spool.pending_points == 0
    spool.close()


# --- properties: the ledger's allocations are those of SCENARIOS.md, computed by hubctl.core.sharing -----

_companies = st.integers(min_value=2, max_value=5)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list[str], SharingRule, list[list[float]]]:
    n = draw(_companies)
    ids = [f"c{i}" for i in range(n)]
    key = draw(st.sampled_from(list(SharingKey)))
    shares: dict[str, float] = {}
    order: list[str] = []
    if key is SharingKey.STATIC:
        raw = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
        total = sum(raw) or 1.0
        shares = {cid: r / total * 0.999 for cid, r in zip(ids, raw, strict=True)}
    if key is SharingKey.PRIORITY:
        order = draw(st.permutations(ids))
    steps = draw(
        st.lists(
            st.lists(
                st.floats(-500, 500, allow_nan=False).map(lambda x: round(x, 2)), min_size=n, max_size=n
            ),
            min_size=6,
            max_size=6,
        )
    )
    return ids, SharingRule(key, shares, order), steps


@settings(max_examples=60, deadline=None)
@given(case=_cases())
def test_allocations_follow_the_contract(case: tuple[list[str], SharingRule, list[list[float]]]) -> None:
    ids, rule, steps = case
    dt_s = 300.0  # three steps per interval, two intervals
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(Path(tmp) / "ledger.sqlite", ids, rule)
        for k, grid in enumerate(steps):
            led.add_step(T0 + k * dt_s, grid, dt_s)
        led.close_due(T0 + len(steps) * dt_s)
        rows = led.rows()
        led.close()
    assert len(rows) == 2 * len(ids)
    for q in range(2):
        got = [r for r in rows if r.start_utc == T0 + 900 * q]
        meter = IntervalMeter(ids)
        for grid in steps[3 * q : 3 * q + 3]:
            meter.add(grid, dt_s)
        want = allocate_surplus(meter.energy(), rule)
        assert [(r.company, r.import_kwh, r.export_kwh, r.shared_in_kwh, r.shared_out_kwh) for r in got] == [
            (a.company, a.import_kwh, a.export_kwh, a.shared_in_kwh, a.shared_out_kwh) for a in want
        ]
        # SCENARIOS.md, "Sharing surplus between companies"
        for r, grid_col in zip(got, zip(*steps[3 * q : 3 * q + 3], strict=True), strict=True):
            assert r.import_kwh == pytest.approx(math.fsum(max(g, 0) * dt_s / 3600 for g in grid_col))
            assert r.export_kwh == pytest.approx(math.fsum(max(-g, 0) * dt_s / 3600 for g in grid_col))
        demand = [max(r.import_kwh - r.export_kwh, 0.0) for r in got]
        supply = [max(r.export_kwh - r.import_kwh, 0.0) for r in got]
        pool, need = math.fsum(supply), math.fsum(demand)
        s_in = math.fsum(r.shared_in_kwh for r in got)
        s_out = math.fsum(r.shared_out_kwh for r in got)
        assert s_in == pytest.approx(s_out, abs=1e-9)
        assert s_in <= min(pool, need) + 1e-9
        assert all(r.shared_in_kwh <= d + 1e-12 for r, d in zip(got, demand, strict=True))
        assert all(r.shared_out_kwh <= s + 1e-12 for r, s in zip(got, supply, strict=True))
        if rule.key is SharingKey.PRO_RATA and need > 0:
            for r, d in zip(got, demand, strict=True):
                assert r.shared_in_kwh == pytest.approx(d * min(pool, need) / need)
        if pool > 0:
            for r, s in zip(got, supply, strict=True):
                assert r.shared_out_kwh == pytest.approx(s * s_in / pool, abs=1e-9)


# --- curtailed energy and its basis; a ledger file of an older hubctl (before curtailed_basis) -------------

# the quarters table as hubctl wrote it before curtailed_basis (git dbb9c9c, hubctl/data/ledger.py)
OLD_SCHEMA = """
CREATE TABLE allocations (
    start_utc REAL NOT NULL, company TEXT NOT NULL, import_kwh REAL NOT NULL, export_kwh REAL NOT NULL,
    shared_in_kwh REAL NOT NULL, shared_out_kwh REAL NOT NULL, covered_s REAL NOT NULL,
    interval_s REAL NOT NULL, spooled INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (start_utc, company)
);
CREATE TABLE quarters (
    start_utc REAL PRIMARY KEY, import_kwh REAL NOT NULL, export_kwh REAL NOT NULL, grid_kw REAL,
    import_limit_kw REAL, export_limit_kw REAL, import_source TEXT NOT NULL, export_source TEXT NOT NULL,
    pv_kwh REAL, load_kwh REAL, curtailed_kwh REAL, covered_s REAL NOT NULL, over_cap INTEGER NOT NULL,
    spooled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE open_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _old_ledger(path: Path) -> None:
    """A ledger an older hubctl left: two settled quarters (one with a curtailed figure) and an open one."""
    quarter = {  # the open quarter's accumulator as ParkQuarter.to_json wrote it then
        "start": T0 + 1800, "covered_s": 60.0, "import_kwh": 0.0, "export_kwh": 0.5, "grid_kws": -1800.0,
        "imp_lim_kws": 0.0, "imp_lim_s": 0.0, "exp_lim_kws": 0.0, "exp_lim_s": 0.0, "imp_src_s": {},
        "exp_src_s": {}, "pv_kwh": 1.0, "load_kwh": 0.5, "curtailed_kwh": None,
    }  # fmt: skip
    state = {
        "ids": list(IDS), "interval_s": 900.0, "last_end": T0 + 1860, "alloc_start": T0 + 1800,
        "alloc_covered": 60.0, "import_kwh": [0.0, 0.0, 0.0], "export_kwh": [0.5, 0.0, 0.0],
        "quarter": quarter,
    }  # fmt: skip
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.executemany(
            "INSERT INTO quarters VALUES "
            "(?, 1.0, 0.0, 4.0, NULL, NULL, 'none', 'none', 2.0, 3.0, ?, 900.0, 0, 1)",
            [(T0, 2.5), (T0 + 900, None)],
        )
        db.execute("INSERT INTO open_state VALUES (1, ?)", (json.dumps(state),))
    db.close()


def test_an_old_ledger_opens_gains_the_basis_and_records_estimates(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _old_ledger(path)
    led = Ledger(path, IDS, PRO_RATA)  # migrates: the column is added, older figures are measured
    old_measured, old_none = led.quarters()
    assert (old_measured.curtailed_kwh, old_measured.curtailed_basis) == (2.5, CURTAILED_MEASURED)
    assert (old_none.curtailed_kwh, old_none.curtailed_basis) == (None, None)
    # the open quarter resumes; the gateway's steps carry the controller's estimate
    for k in range(60, 900):
        led.add_step(
            T0 + 1800 + k,
            [-30.0, 0.0, 0.0],
            1.0,
            ParkStep(pv_kw=70.0, curtailed_kw=36.0, curtailed_estimated=True),
        )
    led.close_due(T0 + 2700)
    led.close()
    led = Ledger(path, IDS, PRO_RATA)  # a second open: nothing to migrate
    *_, new = led.quarters()
    led.close()
    assert new.covered_s == pytest.approx(900.0)
    assert new.curtailed_kwh == pytest.approx(36.0 * 840 / 3600)
    assert new.curtailed_basis == CURTAILED_ESTIMATED
    assert new.pv_kwh == pytest.approx(1.0 + 70.0 * 840 / 3600)


def test_a_report_reads_an_old_ledger_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _old_ledger(path)
    db = open_readonly(path)
    try:
        rows = read_quarters(db)
    finally:
        db.close()
    assert [(q.curtailed_kwh, q.curtailed_basis) for q in rows] == [(2.5, CURTAILED_MEASURED), (None, None)]
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(quarters)")]
    db.close()
    assert "curtailed_basis" not in columns  # read-only: the gateway's file is not touched


def test_the_quarter_point_says_whether_curtailment_is_an_estimate(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_age_s=None))
    led = Ledger(tmp_path / "ledger.sqlite", IDS, PRO_RATA, site="p", spool=spool)
    for k in range(1800):
        estimated = k < 900
        step_info = ParkStep(pv_kw=70.0, curtailed_kw=10.0, curtailed_estimated=True) if estimated else None
        led.add_step(T0 + k, [-10.0, 0.0, 0.0], 1.0, step_info)
    led.close_due(T0 + 1800)
    led.close()
    lines = [line for line in spool.peek(1000).lines if line.startswith("quarter,")]
    assert len(lines) == 2
    assert "curtailed_estimated=1.0" in lines[0]
    assert "curtailed_kwh=2.49999" in lines[0]  # 10 kW for 900 s
    assert "curtailed" not in lines[1]  # no figure: neither field
