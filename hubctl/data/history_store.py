"""The controller's load history on disk: `<state dir>/history.sqlite`.

API (the gateway at start, every completed quarter-hour and at stop; `hubctl history`)::

    store = HistoryStore(state_dir / "history.sqlite", params)  # opens; a damaged file is moved aside
    history = store.load()          # a History for the current config
    store.save(history)             # only the days whose record changed since the last save
    store.merge(records)            # an import: merged with the stored days (merge_day), saved
    store.close()

Decisions:

- **One row per local day** (`days`): its date, day type, the company ids of its
  columns, and the load, PV (96 x companies) and peak (96) arrays as little-endian
  float32 blobs with their shape and dtype (`<f4`; `<f8` is read too). float32 keeps
  7 digits, far more than a meter's quarter-hour mean has, and halves the file: 400
  days of 50 companies are about 15 MB. NaN (not measured) is stored as NaN.
- **Companies by id**: each row names its columns, so a config that gains a company
  reads NaN for it in the old days, and a company removed from the config is dropped
  from what is loaded (the rows keep it until the day is written again).
- **Incremental and bounded**: `save` writes only the days whose `DayRecord` object is
  not the one last saved or loaded (History is immutable, so a changed day is a new
  object: a completed quarter-hour rewrites one row), deletes the days the History
  dropped, and keeps at most `params.history_max_days` days on disk (the newest), all in
  one transaction. A failed save leaves the file as it was and the next save writes the
  same days again.
- **SQLite in WAL mode**, `synchronous=NORMAL`, like the spool and the ledger: a commit
  survives a crash of the process; a power cut may lose the last commits, never the file.
  `PRAGMA user_version` holds the schema version (`SCHEMA_VERSION`).
- **A damaged file never keeps the service from starting**: a file that is not SQLite, is
  corrupt, has another schema version, or holds a row that does not decode, is moved aside
  to `history.sqlite.damaged-<UTC time>` (with its `-wal`), logged once, and the store
  starts empty. Errors that say nothing about the file (a directory that cannot be written,
  a full disk, a lock held too long) are raised as `sqlite3.Error` / `OSError`: the caller
  runs without persistence and tries again later; the file is left alone.
- `read_history` reads a store read-only for `hubctl history show` and never moves a
  file: a damaged one raises `HistoryStoreError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hubctl.core.history import QUARTER_S, SLOTS, DayRecord, DayType, History, LocalQuarters, frozen
from hubctl.data.history_common import merge_day
from hubctl.errors import HistoryStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from zoneinfo import ZoneInfo

    from hubctl.core.history import FloatArray
    from hubctl.core.types import Params

log = logging.getLogger("hubctl.history_store")  # the name the journal has always shown

SCHEMA_VERSION = 1
FILE_NAME = "history.sqlite"
_DTYPE = "<f4"
_READABLE_DTYPES = {"<f4", "<f8"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS days (
    date TEXT PRIMARY KEY,          -- local date, ISO
    day_type TEXT NOT NULL,         -- working | saturday | sunday | holiday
    companies TEXT NOT NULL,        -- JSON list of the company ids of the columns
    dtype TEXT NOT NULL,            -- numpy dtype of the blobs: '<f4' or '<f8'
    slots INTEGER NOT NULL,         -- rows of load and pv, length of peak (96)
    columns INTEGER NOT NULL,       -- columns of load and pv (companies)
    load BLOB NOT NULL,
    pv BLOB NOT NULL,
    peak BLOB NOT NULL,
    measured INTEGER NOT NULL,      -- slots with a park load (for summaries without decoding)
    saved_utc REAL NOT NULL
);
"""


class _DamagedError(HistoryStoreError):
    pass


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the file itself is bad (not the directory, the disk or a lock)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT"):
        return True
    text = str(exc).lower()
    return "file is not a database" in text or "malformed" in text


def _connect(path: Path, *, readonly: bool = False, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={round(busy_timeout_s * 1000)}")
    except BaseException:
        db.close()
        raise
    return db


def _check(db: sqlite3.Connection) -> bool:
    """Whether the file is new (an empty database); raise _DamagedError unless it is new or a history
    of our schema. Reads only: a file that is not ours is left as it was."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = _tables(db)
    if version == 0 and not tables:
        return True
    if version != SCHEMA_VERSION:
        raise _DamagedError(f"schema version {version}, this hubctl reads {SCHEMA_VERSION}")
    if "days" not in tables:
        raise _DamagedError("no table days")
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise _DamagedError(f"quick_check: {result}")
    return False


def _prepare(db: sqlite3.Connection, *, new: bool) -> None:
    """WAL, like the spool and the ledger; the schema in a new file."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if new:
        db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")


_MAGIC = b"SQLite format 3\x00"


def _looks_like_sqlite(path: Path) -> bool:
    """An absent or empty file (SQLite makes it a database), or one with SQLite's header."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_MAGIC))
    except FileNotFoundError:
        return True
    return head in {b"", _MAGIC}


def _blob(a: FloatArray) -> bytes:
    return np.ascontiguousarray(a, dtype=_DTYPE).tobytes()


def _array(blob: bytes, dtype: str, shape: tuple[int, ...]) -> FloatArray:
    if dtype not in _READABLE_DTYPES:
        raise _DamagedError(f"unknown dtype {dtype!r}")
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if len(blob) != size:
        raise _DamagedError(f"a blob of {len(blob)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape).astype(np.float64)


@dataclass(frozen=True, slots=True)
class _Row:
    date: dt.date
    day_type: DayType
    companies: tuple[str, ...]
    load_kw: FloatArray
    pv_kw: FloatArray
    peak_kw: FloatArray


def _decode(row: Sequence[object]) -> _Row:
    date_text, type_text, companies_text, dtype, slots, columns, load, pv, peak = row
    try:
        date = dt.date.fromisoformat(str(date_text))
        day_type = DayType(str(type_text))
        companies = json.loads(str(companies_text))
    except ValueError as exc:
        raise _DamagedError(f"day {date_text}: {exc}") from exc
    if not (isinstance(companies, list) and all(isinstance(c, str) for c in companies)):
        raise _DamagedError(f"day {date_text}: companies is not a list of ids")
    if not (isinstance(slots, int) and isinstance(columns, int) and isinstance(dtype, str)):
        raise _DamagedError(f"day {date_text}: bad shape or dtype")
    if slots != SLOTS or columns != len(companies):
        raise _DamagedError(f"day {date_text}: shape ({slots}, {columns}) for {len(companies)} companies")
    if not (isinstance(load, bytes) and isinstance(pv, bytes) and isinstance(peak, bytes)):
        raise _DamagedError(f"day {date_text}: arrays are not blobs")
    return _Row(
        date,
        day_type,
        tuple(companies),
        _array(load, dtype, (slots, columns)),
        _array(pv, dtype, (slots, columns)),
        _array(peak, dtype, (slots,)),
    )


def _read_rows(db: sqlite3.Connection) -> list[_Row]:
    cur = db.execute(
        "SELECT date, day_type, companies, dtype, slots, columns, load, pv, peak FROM days ORDER BY date"
    )
    return [_decode(r) for r in cur]


def _record(row: _Row, ids: Sequence[str]) -> DayRecord:
    """The stored day with the columns of `ids`: a company not stored is NaN, one not in `ids` dropped."""
    if row.companies == tuple(ids):
        load, pv = row.load_kw, row.pv_kw
    else:
        where = {cid: k for k, cid in enumerate(row.companies)}
        load = np.full((SLOTS, len(ids)), np.nan)
        pv = np.full((SLOTS, len(ids)), np.nan)
        for j, cid in enumerate(ids):
            k = where.get(cid)
            if k is not None:
                load[:, j] = row.load_kw[:, k]
                pv[:, j] = row.pv_kw[:, k]
    return DayRecord(row.date, row.day_type, frozen(load), frozen(pv), frozen(row.peak_kw))


def _history(rows: Iterable[_Row], params: Params) -> History:
    ids = [c.id for c in params.companies]
    return params.empty_history().with_records(_record(r, ids) for r in rows)


def read_history(path: Path, params: Params) -> tuple[History, tuple[str, ...]]:
    """The stored history (read-only, nothing is moved or written) and the company ids stored that
    the config does not have. Raises HistoryStoreError for a damaged file, FileNotFoundError when
    there is none."""
    if not path.exists():
        raise FileNotFoundError(path)
    if not _looks_like_sqlite(path):
        raise HistoryStoreError("not an SQLite file")
    try:
        db = _connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise HistoryStoreError(str(exc)) from exc
    try:
        rows = [] if _check(db) else _read_rows(db)
    except sqlite3.Error as exc:
        if _is_damage(exc):
            raise HistoryStoreError(str(exc)) from exc
        raise
    finally:
        db.close()
    ids = {c.id for c in params.companies}
    stored = sorted({c for r in rows for c in r.companies} - ids)
    return _history(rows, params), tuple(stored)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def store_size_bytes(path: Path) -> int:
    """The file and its write-ahead log on disk."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


class HistoryStore:
    """`history.sqlite` of one state directory (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        params: Params,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        """`busy_timeout_s`: how long a write waits for another writer (`hubctl history import`)."""
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.params = params
        self._clock = clock
        self.moved_to: Path | None = None  # where a damaged file went
        self._saved: dict[dt.date, DayRecord] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    # -- opening, and the damaged-file rule
    def _open(self) -> sqlite3.Connection:
        if not _looks_like_sqlite(self.path):
            return self._move_aside("not an SQLite file", None)  # before SQLite touches its -wal
        db = _connect(self.path, busy_timeout_s=self.busy_timeout_s)
        try:
            new = _check(db)
        except _DamagedError as exc:
            return self._move_aside(str(exc), db)
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                db.close()
                raise
            return self._move_aside(str(exc), db)
        try:
            _prepare(db, new=new)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, reason: str, db: sqlite3.Connection | None) -> sqlite3.Connection:
        """Rename the file (and its -wal, -shm) to `<name>.damaged-<UTC>`, log once, open a new one.
        The files are renamed before `db` closes: a closing connection deletes a WAL it cannot use."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        k = 1
        while target.exists():
            k += 1
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{k}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(target.with_name(target.name + suffix))
        finally:
            if db is not None:
                db.close()
        self.moved_to = target
        log.error(
            "the load history %s is damaged (%s): moved aside to %s; starting with an empty history",
            self.path,
            reason,
            target.name,
        )
        db = _connect(self.path, busy_timeout_s=self.busy_timeout_s)
        try:
            _prepare(db, new=_check(db))
        except BaseException:
            db.close()
            raise
        return db

    # -- reading
    def load(self) -> History:
        """The stored days as a History for the current config (companies mapped by id), at most
        `history_max_days` of them (older ones are deleted from the file too)."""
        try:
            rows = _read_rows(self._db)
        except _DamagedError as exc:
            self._db = self._move_aside(str(exc), self._db)
            rows = []
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                raise
            self._db = self._move_aside(str(exc), self._db)
            rows = []
        history = _history(rows, self.params)
        self._saved = dict(history.days)
        if len(rows) > len(history.days):
            self._bound()
        return history

    # -- writing
    def save(self, history: History) -> int:
        """Write the days that changed since the last save or load, drop the ones `history` no longer
        has, keep the newest `history_max_days`; one transaction. Returns the days written."""
        changed = [r for d, r in history.days.items() if self._saved.get(d) is not r]
        dropped = [d for d in self._saved if d not in history.days]
        if not changed and not dropped:
            return 0
        now = self._clock()
        companies = json.dumps(list(history.companies))
        rows = [
            (
                r.date.isoformat(),
                r.day_type.value,
                companies,
                _DTYPE,
                SLOTS,
                len(history.companies),
                _blob(r.load_kw),
                _blob(r.pv_kw),
                _blob(r.peak_kw),
                r.slots_measured,
                now,
            )
            for r in changed
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO days (date, day_type, companies, dtype, slots, columns, load, pv,"
                " peak, measured, saved_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("DELETE FROM days WHERE date = ?", [(d.isoformat(),) for d in dropped])
            self._delete_beyond_bound(db)
        self._saved = dict(history.days)
        return len(changed)

    def merge(self, records: Iterable[DayRecord]) -> tuple[History, int]:
        """An import: each record merged with the stored day of its date (`merge_day`: the file's values
        where it has them), saved in one transaction. Returns the new history and how many of the
        records met a stored day."""
        history = self.load()
        merged = []
        met = 0
        for r in records:
            stored = history.days.get(r.date)
            met += stored is not None
            merged.append(merge_day(stored, r))
        history = history.with_records(merged)
        self.save(history)
        return history, met

    def _delete_beyond_bound(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM days WHERE date NOT IN (SELECT date FROM days ORDER BY date DESC LIMIT ?)",
            (self.params.history_max_days,),
        )

    def _bound(self) -> None:
        with self._transaction() as db:
            self._delete_beyond_bound(db)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; a failure rolls back (a rollback SQLite already did is fine)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def size_bytes(self) -> int:
        return store_size_bytes(self.path)

    def close(self) -> None:
        self._db.close()


# --- what the controller knows, in numbers (hubctl history show, the service's start log) ------------------


@dataclass(frozen=True, slots=True)
class HistorySummary:
    """Days and quarter-hours of a History. A day counts for a day type when at least half of its
    slots are measured: for the park (every company) and per company."""

    days: int
    first_date: dt.date | None
    last_date: dt.date | None
    quarters: int  # park quarter-hours measured
    missing: int  # park quarter-hours not measured between the first and the last measured one
    last_complete: dt.date | None  # the newest day with every one of its quarter-hours
    by_type: Mapping[DayType, int]  # days with at least half of the slots, park
    stored_by_type: Mapping[DayType, int]  # every day stored
    company_by_type: Mapping[str, Mapping[DayType, int]]

    def types_text(self, counts: Mapping[DayType, int] | None = None) -> str:
        counts = self.by_type if counts is None else counts
        return ", ".join(f"{t.value} {counts.get(t, 0)}" for t in DayType)

    def as_dict(self) -> dict[str, object]:
        return {
            "days": self.days,
            "first_date": None if self.first_date is None else self.first_date.isoformat(),
            "last_date": None if self.last_date is None else self.last_date.isoformat(),
            "quarters": self.quarters,
            "missing_quarters": self.missing,
            "last_complete_day": None if self.last_complete is None else self.last_complete.isoformat(),
            "days_by_type": {t.value: self.by_type.get(t, 0) for t in DayType},
        }


def day_slots(date: dt.date, tz: ZoneInfo) -> frozenset[int]:
    """The slots that exist on a local date: 92 on the spring DST day, else all 96."""
    start = dt.datetime(date.year, date.month, date.day, tzinfo=tz).timestamp()
    nxt = date + dt.timedelta(days=1)
    end = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
    if end - start >= SLOTS * QUARTER_S:
        return _ALL_SLOTS  # an ordinary day, or the autumn one (its repeated hour fills slots twice)
    quarters = LocalQuarters(tz)
    return frozenset(quarters.of(q)[1] for q in range(int(start // QUARTER_S), int(end // QUARTER_S)))


_ALL_SLOTS = frozenset(range(SLOTS))


BoolArray = np.ndarray[tuple[int], np.dtype[np.bool_]]


def _missing(measured: Mapping[dt.date, BoolArray], tz: ZoneInfo) -> int:
    """Slots without a park value from the first measured slot to the last (days not stored count whole)."""
    dates = [d for d, m in measured.items() if m.any()]
    if not dates:
        return 0
    first, last = min(dates), max(dates)
    missing = 0
    date = first
    while date <= last:
        park = measured.get(date)
        lo = int(np.argmax(park)) if date == first and park is not None else 0
        hi = SLOTS - 1 - int(np.argmax(park[::-1])) if date == last and park is not None else SLOTS - 1
        missing += sum(1 for s in day_slots(date, tz) if lo <= s <= hi and (park is None or not park[s]))
        date += dt.timedelta(days=1)
    return missing


def summarize(history: History) -> HistorySummary:
    """Days per type (park and per company), quarter-hours, gaps and the last complete day."""
    tz = history.quarters.tz
    days = sorted(history.days.items())
    half = SLOTS // 2
    stored_by_type = dict.fromkeys(DayType, 0)
    company_by_type = {cid: dict.fromkeys(DayType, 0) for cid in history.companies}
    quarters = 0
    last_complete = None
    measured: dict[dt.date, BoolArray] = {}
    for date, rec in days:
        stored_by_type[rec.day_type] += 1
        per_company = (~np.isnan(rec.load_kw)).sum(axis=0)
        for cid, count in zip(history.companies, per_company, strict=True):
            if count >= half:
                company_by_type[cid][rec.day_type] += 1
        park = ~np.isnan(rec.park_load_kw())
        measured[date] = park
        quarters += int(park.sum())
        if all(park[s] for s in day_slots(date, tz)):
            last_complete = date
    return HistorySummary(
        len(days),
        days[0][0] if days else None,
        days[-1][0] if days else None,
        quarters,
        _missing(measured, tz),
        last_complete,
        history.days_by_type(),
        stored_by_type,
        company_by_type,
    )
