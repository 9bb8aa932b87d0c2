"""The sharing ledger: per settlement interval and company, import, export and shared energy, persisted.

API for the gateway service (``hubctl run``), once per control cycle::

    ledger = Ledger.from_config(state_dir / "ledger.sqlite", cfg, spool=spool)
    ledger.add_step(ts_utc, grid_kw_per_company, dt_s, ParkStep(...))  # the step [ts, ts + dt) just measured
    ledger.close_due(now_utc)                                         # settles every interval that has ended

Decisions:

- **The same code as ``hubctl sim``**: energy is accumulated by
  :class:`hubctl.core.sharing.IntervalMeter` and divided by
  :func:`hubctl.core.sharing.allocate_surplus` with the configured
  :class:`~hubctl.core.sharing.SharingRule`; fed the simulator's ``<id>.grid_kw``
  the ledger writes the rows of ``allocations.csv``.
- **Intervals are aligned to local time, DST-aware**: an interval starts at
  ``floor(ts / interval_s) · interval_s`` in UTC epoch seconds, which is a
  local :00/:15/:30/:45 because every real UTC offset is a whole number of
  quarter-hours (:mod:`hubctl.core.quarters`). So a local day has 92 or 100
  quarter-hours on the DST change days, with no gap and no repeat. (A
  ``interval_s`` of one hour is aligned to UTC hours, which are local hours
  wherever the offset is whole hours, as in Europe/Amsterdam.) A step that
  straddles a boundary is split in proportion to time.
- **Park quarter-hours are kept beside the allocations** (always 900 s, the
  imbalance settlement period the grid operator judges caps by): park
  import/export energy, mean grid power, the mean caps it was judged against
  with every source in force during it, PV, load and curtailed energy, and how
  many seconds were measured (``covered_s``: data completeness). The report
  works from these rows. The accumulator and the verdict are the one of
  :mod:`hubctl.core.quarters` (:class:`~hubctl.core.quarters.ParkQuarter`), which
  the journal's quarter lines (``QuarterMeter``), ``hubctl report`` and the sim's
  metrics use as well; steps are cut the same way (``step_pieces``).
- **Curtailed energy says how it was got** (``curtailed_basis``): ``estimated`` on the gateway,
  where no device reports the available PV and the controller's estimate stands in for it (the
  learned clear-sky model of the inverters a limit holds, ``hubctl.core.park.pv_available``:
  ``Σ max(estimate − measured PV, 0)·dt`` while a limit holds an inverter, 0 while none does);
  ``measured`` where the available PV was known (the simulator's, fed to the ledger in tests).
  The column came after the first ledgers: opening an older file adds it (``ALTER TABLE``, in one
  transaction) and marks its existing figures ``measured`` (an older gateway recorded curtailed
  energy only when it was given the available PV); reading an older file read-only (a report
  while an older gateway runs) takes it the same way without changing the file.
- **Idempotent across restarts** (SQLite, WAL): the open interval's
  accumulators and the end of the last step taken are saved with every step
  (one small UPDATE). After a restart the open interval resumes where it
  stood; a step that ends at or before the last one taken is ignored (a
  replay), one that overlaps it is trimmed. An interval is settled in one
  transaction that inserts its rows (primary key: start and company, so never
  twice) and clears the open state (so never lost). The seconds the gateway
  was down are simply not covered: ``covered_s`` tells. A step for an
  interval already settled is late and ignored (counted in ``late_steps``).
- **Written to InfluxDB through the spool**, exactly once: rows carry a key
  (:func:`hubctl.data.points.allocation_point`), are marked ``spooled`` after the
  append, and rows not yet marked are appended again on start (the spool
  ignores keys it holds or delivered).
- **A damaged file never ends the ledger** (issue #13): the file is checked at open; a damaged one
  is moved aside (``ledger.sqlite.damaged-<UTC timestamp>``) with every readable row copied into a
  new one (:mod:`hubctl.data.sqlite_file`; ``salvage`` says what became of it), and the spool
  opens on its own whatever the ledger's state. A saved open interval that cannot be read (not
  JSON, a field missing or of the wrong type) is logged and dropped: that interval's seconds so
  far are simply not covered.
- Restoring the accumulators feeds each company's saved kWh back through
  ``IntervalMeter.add`` (one hour at ``kWh`` kW), which reproduces the value
  to within one unit in the last place.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubctl.core.quarters import (
    CURTAILED_ESTIMATED,
    CURTAILED_MEASURED,
    QUARTER_S,
    ParkQuarter,
    ParkStep,
    QuarterRow,
    local_label,
    step_pieces,
)
from hubctl.core.sharing import Allocation, IntervalMeter, SharingKey, SharingRule, allocate_surplus
from hubctl.data.points import allocation_point, quarter_point
from hubctl.data.sqlite_file import open_store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.config.site import SiteConfig
    from hubctl.data.points import Point
    from hubctl.data.spool import Spool

__all__ = ["IntervalRow", "Ledger", "rule_from_config"]

log = logging.getLogger("hubctl.ledger")  # the name the journal has always shown


_SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    start_utc REAL NOT NULL,
    company TEXT NOT NULL,
    import_kwh REAL NOT NULL,
    export_kwh REAL NOT NULL,
    shared_in_kwh REAL NOT NULL,
    shared_out_kwh REAL NOT NULL,
    covered_s REAL NOT NULL,
    interval_s REAL NOT NULL,
    spooled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (start_utc, company)
);
CREATE TABLE IF NOT EXISTS quarters (
    start_utc REAL PRIMARY KEY,
    import_kwh REAL NOT NULL,
    export_kwh REAL NOT NULL,
    grid_kw REAL,
    import_limit_kw REAL,
    export_limit_kw REAL,
    import_source TEXT NOT NULL,
    export_source TEXT NOT NULL,
    pv_kwh REAL,
    load_kwh REAL,
    curtailed_kwh REAL,
    covered_s REAL NOT NULL,
    over_cap INTEGER NOT NULL,
    spooled INTEGER NOT NULL DEFAULT 0,
    curtailed_basis TEXT,
    filled_s REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS open_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# what a quarter row written before ``curtailed_basis`` existed reads as (the module docstring)
_OLD_BASIS = f"CASE WHEN curtailed_kwh IS NULL THEN NULL ELSE '{CURTAILED_MEASURED}' END"


def _columns(db: sqlite3.Connection) -> set[str]:
    return {r[1] for r in db.execute("PRAGMA table_info(quarters)")}


def _has_basis(db: sqlite3.Connection) -> bool:
    return "curtailed_basis" in _columns(db)


# columns a ledger file of an older hubctl lacks: how each is added, and what its old rows read as
_ADDED = (
    (
        "curtailed_basis",
        "TEXT",
        f"UPDATE quarters SET curtailed_basis = {_OLD_BASIS}",  # noqa: S608 - constants only
        "older quarters: measured",
    ),
    ("filled_s", "REAL NOT NULL DEFAULT 0", None, "older quarters: nothing filled"),
)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a ledger file written by an older hubctl to this schema (the module docstring)."""
    if {name for name, *_ in _ADDED} <= _columns(db):
        return
    added = []
    db.execute("BEGIN IMMEDIATE")
    try:
        have = _columns(db)  # another process may have migrated it meanwhile
        for name, decl, fill, note in _ADDED:
            if name not in have:
                db.execute(f"ALTER TABLE quarters ADD COLUMN {name} {decl}")
                if fill is not None:
                    db.execute(fill)
                added.append(f"{name} ({note})")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.info("ledger %s: added the column(s) %s", path, ", ".join(added))


def rule_from_config(cfg: SiteConfig) -> SharingRule:
    """The configured sharing key, built exactly as ``hubctl.sim.sharing_rule`` builds it."""
    s = cfg.sharing
    return SharingRule(SharingKey(s.key.value), dict(s.shares), tuple(s.order))


@dataclass(frozen=True, slots=True)
class IntervalRow:
    start_utc: float
    company: str
    import_kwh: float
    export_kwh: float
    shared_in_kwh: float
    shared_out_kwh: float
    covered_s: float
    interval_s: float


class Ledger:
    """Settles each interval's surplus sharing and keeps the rows in SQLite (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        company_ids: Sequence[str],
        rule: SharingRule,
        *,
        site: str = "park",
        interval_s: float = 900.0,
        spool: Spool | None = None,
        tz: tzinfo = UTC,
    ) -> None:
        if not (900 % interval_s == 0 or interval_s % 900 == 0):
            raise ValueError("interval_s must divide or be a multiple of 900 s")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ids = tuple(company_ids)
        self.rule = rule
        self.site = site
        self.interval_s = float(interval_s)
        self.spool = spool
        self.tz = tz  # the site's zone, for the quarter log line
        self.late_steps = 0
        self._grid_s = min(self.interval_s, float(QUARTER_S))  # every boundary of either grid is on this grid
        self._db, self.salvage = open_store(self.path, _SCHEMA, what="ledger")
        _migrate(self._db, self.path)
        self._meter = IntervalMeter(self.ids)
        self._alloc_start: float | None = None
        self._alloc_covered = 0.0
        self._quarter: ParkQuarter | None = None
        # settled in memory, not yet written: the disk refused them (full, an I/O error); written in
        # order, before anything newer, as soon as it takes them (`_flush`). Lost on a restart before
        # that, as the open interval's seconds since the last save are.
        self._unwritten: list[tuple[float, list[tuple[str, float, float]], float, float] | QuarterRow] = []
        self._refused = False  # the disk's refusal was logged (once per episode)
        self._last_end: float | None = None
        self._restore()
        self._respool()

    @classmethod
    def from_config(cls, path: Path | str, cfg: SiteConfig, spool: Spool | None = None) -> Ledger:
        return cls(
            path,
            [c.id for c in cfg.companies],
            rule_from_config(cfg),
            site=cfg.site.id,
            interval_s=cfg.sharing.interval_s,
            spool=spool,
            tz=cfg.tz,
        )

    # --- persistence of the open interval -------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        energy = self._meter.energy()
        return {
            "ids": list(self.ids),
            "interval_s": self.interval_s,
            "last_end": self._last_end,
            "alloc_start": self._alloc_start,
            "alloc_covered": self._alloc_covered,
            "import_kwh": [e[1] for e in energy],
            "export_kwh": [e[2] for e in energy],
            "quarter": None if self._quarter is None else self._quarter.to_json(),
        }

    def _save(self) -> None:
        self._db.execute(
            "INSERT INTO open_state (id, state) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            (json.dumps(self._state()),),
        )

    def _restore(self) -> None:
        row = self._db.execute("SELECT state FROM open_state WHERE id = 1").fetchone()
        if row is None:
            return
        try:
            self._restore_state(row[0])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error(  # noqa: TRY400 - damaged data, not a bug: the line says what was lost
                "ledger %s: the saved open interval cannot be read (%s: %s): dropped; its seconds so "
                "far are not covered",
                self.path,
                type(exc).__name__,
                exc,
            )
            self._meter.reset()
            self._alloc_start = None
            self._alloc_covered = 0.0
            self._quarter = None
            self._last_end = None
            self._db.execute("DELETE FROM open_state WHERE id = 1")

    def _restore_state(self, text: object) -> None:
        if not isinstance(text, str):
            raise TypeError(f"state is {type(text).__name__}, not text")
        st = json.loads(text)
        if not isinstance(st, dict):
            raise TypeError(f"state is {type(st).__name__}, not an object")
        if st["last_end"] is not None and not isinstance(st["last_end"], (int, float)):
            raise TypeError(f"last_end is {st['last_end']!r}")
        self._last_end = st["last_end"]
        if st["quarter"] is not None:
            self._quarter = ParkQuarter.from_json(st["quarter"])
        if st["alloc_start"] is None:
            return
        meter = IntervalMeter(st["ids"]) if st["ids"] != list(self.ids) else self._meter
        meter.add(st["import_kwh"], 3600.0)  # kWh back through the same accumulator: 1 h at kWh kW
        meter.add([-e for e in st["export_kwh"]], 3600.0)
        if meter is not self._meter or st["interval_s"] != self.interval_s:
            # the park changed while we were down: settle what was open with the companies it was measured for
            log.warning(
                "ledger: companies or interval changed since the last run; settling the open interval"
            )
            self._write_alloc(st["alloc_start"], meter.energy(), st["alloc_covered"], st["interval_s"])
            self._meter.reset()
            return
        self._alloc_start = st["alloc_start"]
        self._alloc_covered = st["alloc_covered"]
        log.info(
            "ledger %s: resuming interval %s (%.0f s measured)",
            self.path,
            self._alloc_start,
            self._alloc_covered,
        )

    # --- steps ----------------------------------------------------------------------------------------------

    def add_step(
        self,
        ts_utc: float,
        grid_kw: Sequence[float],
        dt_s: float,
        park: ParkStep | None = None,
        *,
        park_kw: float | None = None,
    ) -> list[IntervalRow]:
        """Take the step ``[ts_utc, ts_utc + dt_s)`` with each company's grid power (config order).

        `park_kw` is the park's grid power where it is measured on its own (a shared connection's park
        meter, which also shows the common loads): the park's quarter-hour (its verdict, import and
        export) is judged on it. Without it, the companies' sum. The companies' allocation is always
        from their own meters.

        Settles (and returns the rows of) intervals that ended before this step
        began. Raises ``ValueError`` for a wrong number of powers or a
        non-finite value (nothing is taken then).
        """
        if len(grid_kw) != len(self.ids):
            raise ValueError(f"expected {len(self.ids)} grid powers, got {len(grid_kw)}")
        if not (math.isfinite(ts_utc) and math.isfinite(dt_s) and dt_s >= 0):
            raise ValueError(f"bad step: ts {ts_utc}, dt {dt_s}")
        if not all(math.isfinite(g) for g in grid_kw):
            raise ValueError(f"grid powers must be finite, got {list(grid_kw)}")
        if park_kw is not None and not math.isfinite(park_kw):
            raise ValueError(f"the park's grid power must be finite, got {park_kw}")
        end = ts_utc + dt_s
        if self._last_end is not None and end <= self._last_end:
            return []  # a replay of what we already took
        settled: list[IntervalRow] = []
        park_grid = math.fsum(grid_kw) if park_kw is None else park_kw
        for start, dt in step_pieces(ts_utc, end, self._last_end, self._grid_s):
            settled += self._add_piece(start, grid_kw, park_grid, dt, park)
        self._last_end = max(self._last_end or end, end)
        self._save()
        return settled

    def _add_piece(
        self, ts: float, grid_kw: Sequence[float], park_grid: float, dt: float, park: ParkStep | None
    ) -> list[IntervalRow]:
        settled: list[IntervalRow] = []
        a_start = math.floor(ts / self.interval_s) * self.interval_s
        q_start = math.floor(ts / QUARTER_S) * float(QUARTER_S)
        if self._alloc_start is not None and a_start > self._alloc_start:
            settled += self._settle_alloc()
        if self._quarter is not None and q_start > self._quarter.start:
            self._settle_quarter()
        if self._alloc_start is not None and a_start < self._alloc_start:
            self.late_steps += 1
            return settled
        if self._alloc_start is None:
            if self._settled(a_start):
                self.late_steps += 1
                return settled
            self._alloc_start = a_start
        if self._quarter is None:
            self._quarter = ParkQuarter(q_start)
        self._meter.add(grid_kw, dt)
        self._alloc_covered += dt
        self._quarter.add(park_grid, dt, park)
        return settled

    def _settled(self, start: float) -> bool:
        return (
            self._db.execute("SELECT 1 FROM allocations WHERE start_utc = ? LIMIT 1", (start,)).fetchone()
            is not None
        )

    def close_due(self, now_utc: float) -> list[IntervalRow]:
        """Settle the open interval (and park quarter) if it ended at or before ``now_utc``."""
        settled: list[IntervalRow] = self._flush()
        if self._alloc_start is not None and self._alloc_start + self.interval_s <= now_utc:
            settled += self._settle_alloc()
        if self._quarter is not None and self._quarter.start + QUARTER_S <= now_utc:
            self._settle_quarter()
        if settled:
            self._save()
        return settled

    # --- settling -------------------------------------------------------------------------------------------

    def _settle_alloc(self) -> list[IntervalRow]:
        assert self._alloc_start is not None
        start, covered, energy = self._alloc_start, self._alloc_covered, self._meter.energy()
        self._meter.reset()
        self._alloc_start = None
        self._alloc_covered = 0.0
        self._unwritten.append((start, energy, covered, self.interval_s))
        return self._flush()

    @property
    def unwritten(self) -> int:
        """Settled intervals and quarters kept in memory because the disk refused them."""
        return len(self._unwritten)

    def _flush(self) -> list[IntervalRow]:
        """Write what was settled and not yet written, oldest first; stop at the first refusal (the
        disk full, an I/O error: logged once per episode, kept for the next try)."""
        written: list[IntervalRow] = []
        while self._unwritten:
            item = self._unwritten[0]
            try:
                if isinstance(item, QuarterRow):
                    self._write_quarter(item)
                else:
                    written += self._write_alloc(*item)
            except sqlite3.OperationalError as exc:
                if not self._refused:
                    log.error(  # noqa: TRY400 - the disk, not a bug: the line says what is kept
                        "ledger %s: the disk refused a settlement (%s); %d kept in memory and written "
                        "as soon as it takes them",
                        self.path,
                        exc,
                        len(self._unwritten),
                    )
                self._refused = True
                break
            self._unwritten.pop(0)
        else:
            if self._refused:
                log.info("ledger %s: the disk takes the settlements again; all written", self.path)
            self._refused = False
        return written

    def _write_alloc(
        self, start: float, energy: list[tuple[str, float, float]], covered_s: float, interval_s: float
    ) -> list[IntervalRow]:
        """Allocate and insert one interval, clearing the saved open state in the same transaction."""
        allocations: list[Allocation] = allocate_surplus(energy, self.rule)
        rows = [
            IntervalRow(
                start,
                a.company,
                a.import_kwh,
                a.export_kwh,
                a.shared_in_kwh,
                a.shared_out_kwh,
                covered_s,
                interval_s,
            )
            for a in allocations
        ]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.executemany(
                "INSERT OR IGNORE INTO allocations (start_utc, company, import_kwh, export_kwh, "
                "shared_in_kwh, "
                "shared_out_kwh, covered_s, interval_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.start_utc,
                        r.company,
                        r.import_kwh,
                        r.export_kwh,
                        r.shared_in_kwh,
                        r.shared_out_kwh,
                        r.covered_s,
                        r.interval_s,
                    )
                    for r in rows
                ],
            )
            if cur.rowcount != len(rows):
                log.error("ledger: interval %s was already settled; kept the first settlement", start)
            self._save()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT on a full disk has rolled back already
                db.execute("ROLLBACK")
            raise
        self._spool_allocations(rows)
        return rows

    def _settle_quarter(self) -> None:
        assert self._quarter is not None
        self._unwritten.append(self._quarter.row())
        self._quarter = None
        self._flush()

    def _write_quarter(self, q: QuarterRow) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR IGNORE INTO quarters (start_utc, import_kwh, export_kwh, grid_kw, "
                "import_limit_kw, export_limit_kw, import_source, export_source, pv_kwh, load_kwh, "
                "curtailed_kwh, covered_s, over_cap, curtailed_basis, filled_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    q.start_utc,
                    q.import_kwh,
                    q.export_kwh,
                    q.grid_kw,
                    q.import_limit_kw,
                    q.export_limit_kw,
                    q.import_source,
                    q.export_source,
                    q.pv_kwh,
                    q.load_kwh,
                    q.curtailed_kwh,
                    q.covered_s,
                    int(q.over_cap),
                    q.curtailed_basis,
                    q.filled_s,
                ),
            )
            self._save()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if q.over_cap:
            log.warning(
                "quarter-hour %s over the cap: mean %.1f kW, mean caps %s/%s kW (%s, %s)",
                local_label(q.start_utc, self.tz),
                q.grid_kw or 0.0,
                q.import_limit_kw,
                q.export_limit_kw,
                q.import_source,
                q.export_source,
            )
        self._spool_quarters([q])

    # --- spooling -------------------------------------------------------------------------------------------

    def _spool_allocations(self, rows: Sequence[IntervalRow]) -> None:
        if self.spool is None or not rows:
            return
        self.spool.append(_allocation_points(self.site, rows))
        self.spool.commit()  # durable in the spool before the rows are marked (keys make a repeat harmless)
        self._db.executemany(
            "UPDATE allocations SET spooled = 1 WHERE start_utc = ? AND company = ?",
            [(r.start_utc, r.company) for r in rows],
        )

    def _spool_quarters(self, rows: Sequence[QuarterRow]) -> None:
        if self.spool is None or not rows:
            return
        self.spool.append(_quarter_points(self.site, rows))
        self.spool.commit()
        self._db.executemany(
            "UPDATE quarters SET spooled = 1 WHERE start_utc = ?", [(q.start_utc,) for q in rows]
        )

    def _respool(self) -> None:
        """Append rows settled but not known to be spooled (a crash between settling and marking)."""
        if self.spool is None:
            return
        try:
            self._spool_allocations(self.rows(spooled=False))
            self._spool_quarters(self.quarters(spooled=False))
        except sqlite3.OperationalError as exc:  # the disk full at start: the rows wait in the spool's memory
            log.warning(
                "ledger %s: settled rows not yet marked as spooled (%s); they are queued in the spool "
                "and appended again at the next start (their keys make that harmless)",
                self.path,
                exc,
            )

    # --- reading --------------------------------------------------------------------------------------------

    def rows(
        self, from_utc: float | None = None, to_utc: float | None = None, *, spooled: bool | None = None
    ) -> list[IntervalRow]:
        """Settled rows with ``from_utc <= start < to_utc``, by start then company."""
        return read_allocations(self._db, from_utc, to_utc, spooled=spooled)

    def quarters(
        self, from_utc: float | None = None, to_utc: float | None = None, *, spooled: bool | None = None
    ) -> list[QuarterRow]:
        return read_quarters(self._db, from_utc, to_utc, spooled=spooled)

    def close(self) -> None:
        """Save the open interval and close the file; the next Ledger on this file resumes it."""
        self._save()
        self._db.close()


def _where(from_utc: float | None, to_utc: float | None, spooled: bool | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if from_utc is not None:
        clauses.append("start_utc >= ?")
        args.append(from_utc)
    if to_utc is not None:
        clauses.append("start_utc < ?")
        args.append(to_utc)
    if spooled is not None:
        clauses.append("spooled = ?")
        args.append(int(spooled))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def read_allocations(
    db: sqlite3.Connection,
    from_utc: float | None = None,
    to_utc: float | None = None,
    *,
    spooled: bool | None = None,
) -> list[IntervalRow]:
    where, args = _where(from_utc, to_utc, spooled)
    cur = db.execute(
        "SELECT start_utc, company, import_kwh, export_kwh, shared_in_kwh, shared_out_kwh, covered_s, "  # noqa: S608
        f"interval_s FROM allocations{where} ORDER BY start_utc, rowid",
        args,
    )
    return [IntervalRow(*r) for r in cur.fetchall()]


def read_quarters(
    db: sqlite3.Connection,
    from_utc: float | None = None,
    to_utc: float | None = None,
    *,
    spooled: bool | None = None,
) -> list[QuarterRow]:
    """Settled park quarters with ``from_utc <= start < to_utc``; a file of an older hubctl reads too."""
    where, args = _where(from_utc, to_utc, spooled)
    columns = _columns(db)
    basis = "curtailed_basis" if "curtailed_basis" in columns else _OLD_BASIS
    filled = "filled_s" if "filled_s" in columns else "0"
    cur = db.execute(
        "SELECT start_utc, import_kwh, export_kwh, grid_kw, import_limit_kw, export_limit_kw, "  # noqa: S608
        f"import_source, export_source, pv_kwh, load_kwh, curtailed_kwh, covered_s, over_cap, {basis}, "
        f"{filled} FROM quarters{where} ORDER BY start_utc",
        args,
    )
    return [
        QuarterRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
            over_cap=bool(r[12]),
            curtailed_basis=r[13],
            filled_s=r[14],
        )
        for r in cur.fetchall()
    ]


def open_readonly(path: Path) -> sqlite3.Connection:
    """The ledger file for reading (reports), safe while the gateway writes to it."""
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _allocation_points(site: str, rows: Sequence[IntervalRow]) -> list[Point]:
    return [
        allocation_point(
            site,
            r.company,
            r.start_utc,
            r.import_kwh,
            r.export_kwh,
            r.shared_in_kwh,
            r.shared_out_kwh,
            r.covered_s,
        )
        for r in rows
    ]


def _quarter_points(site: str, rows: Sequence[QuarterRow]) -> list[Point]:
    return [
        quarter_point(
            site,
            q.start_utc,
            grid_kw=q.grid_kw,
            import_kwh=q.import_kwh,
            export_kwh=q.export_kwh,
            import_limit_kw=q.import_limit_kw,
            export_limit_kw=q.export_limit_kw,
            import_source=q.import_source,
            export_source=q.export_source,
            over_cap=1.0 if q.over_cap else 0.0,
            pv_kwh=q.pv_kwh,
            load_kwh=q.load_kwh,
            curtailed_kwh=q.curtailed_kwh,
            curtailed_estimated=None
            if q.curtailed_basis is None
            else float(q.curtailed_basis == CURTAILED_ESTIMATED),
            covered_s=q.covered_s,
        )
        for q in rows
    ]
