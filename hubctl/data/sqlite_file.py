"""Opening the gateway's SQLite files (the spool, the ledger) so that a damaged one never ends recording.

What it is: :func:`open_store`, which the spool and the ledger open their file with. A file that
SQLite cannot read as a database (a garbage header: ``SQLITE_NOTADB``), one it finds damaged
(``SQLITE_CORRUPT``: a file cut short, a page overwritten) and one that fails ``PRAGMA
quick_check`` (a torn last page leaves rows with NULL in NOT NULL columns, rowids out of order)
is moved aside and a new one is started in its place, with every row that could still be read
copied over. Imports only the standard library.

Decisions:

- **Checked at every open** with ``PRAGMA quick_check`` (the b-trees, the NOT NULL constraints;
  not the indexes against their tables): 45 ms for a 200 MB spool with a warm cache, once at
  start. Only damage moves a file aside: an error of the environment (the disk full, an I/O
  error, a locked or unwritable file: ``SQLITE_FULL``, ``SQLITE_IOERR``, ``SQLITE_CANTOPEN``, ...)
  is raised as it is, for the caller to log; a file is never moved aside because the disk was
  briefly unreadable.
- **Moved aside, never deleted**: ``<name>.damaged-<UTC timestamp>`` beside it (the host's
  clock, ``20261202T145800Z``; its ``-wal`` and ``-shm`` renamed alike, so the copy opens as it
  was), and one log line at ERROR naming the file, the damage, where it went and the rows kept
  and skipped. An operator can run ``sqlite3 <file> .recover`` on it later.
- **What could be read is kept**: every table of the new file's schema is copied from the damaged
  file, the columns both have, row by row in rowid order. A stretch SQLite cannot read is
  stepped over (rowids after it, doubling the step until a read succeeds, then back down to the
  first readable rowid after the stretch), so one bad page costs the rows on it, not the rest. A
  row the caller's ``check_row`` refuses (a spool chunk that does not decompress) or the new
  schema refuses (NULL in a NOT NULL column) is skipped and counted. The copy keeps rowids (a
  spool's chunk ids, ``AUTOINCREMENT``, stay unique).
- The same for every store, so that each opens on its own: a damaged ledger does not keep the
  spool from opening, nor the other way round (``hubctl.service.storage``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

__all__ = ["Salvage", "is_damage", "open_store"]

log = logging.getLogger("hubctl.storage")

# SQLite's primary result codes that mean "this file is damaged" (sqlite3.h)
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_DAMAGE_CODES = {_SQLITE_CORRUPT, _SQLITE_NOTADB}
_MAX_ROWID = 2**63 - 1


class DamagedFileError(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged (its first problem is the message)."""


@dataclass(slots=True)
class Salvage:
    """A damaged file moved aside: where to, why, and per table the rows copied and skipped."""

    moved_to: Path
    reason: str
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def kept_rows(self) -> int:
        return sum(self.kept.values())

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not the disk full, an I/O error, a lock)."""
    if isinstance(exc, DamagedFileError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in _DAMAGE_CODES
    text = str(exc)
    return "malformed" in text or "not a database" in text


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection as the gateway uses one: autocommit (explicit BEGIN), WAL, NORMAL."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def _check(db: sqlite3.Connection) -> None:
    problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        raise DamagedFileError("; ".join(p.replace("\n", " ") for p in problems)[:300])


def open_store(
    path: Path,
    schema: str,
    *,
    what: str,
    check_row: Callable[[str, dict[str, Any]], bool] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[sqlite3.Connection, Salvage | None]:
    """Open (or create) ``path`` with ``schema``; a damaged file is moved aside and salvaged.

    Returns the connection and, when the file was damaged, what became of it. Raises
    ``sqlite3.Error`` or ``OSError`` for anything else (the disk full, permissions).
    ``check_row(table, row)`` may refuse a row of the damaged file that SQLite could read.
    """
    db: sqlite3.Connection | None = None
    try:
        db = connect(path)
        _check(db)
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        if not is_damage(exc):
            raise
        return _salvage(path, schema, what, str(exc), check_row, clock)
    return db, None


def _aside(path: Path, clock: Callable[[], float]) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def _salvage(
    path: Path,
    schema: str,
    what: str,
    reason: str,
    check_row: Callable[[str, dict[str, Any]], bool] | None,
    clock: Callable[[], float],
) -> tuple[sqlite3.Connection, Salvage]:
    moved = _aside(path, clock)
    salvage = Salvage(moved, reason)
    db = connect(path)
    try:
        db.executescript(schema)
        _copy_readable(moved, db, salvage, check_row)
    except BaseException:
        db.close()
        raise
    log.error(
        "%s %s is damaged (%s): moved aside to %s and started anew with what could be read "
        "(rows kept: %s; damaged rows skipped: %d)",
        what,
        path,
        reason,
        moved.name,
        ", ".join(f"{t} {n}" for t, n in salvage.kept.items() if n) or "none",
        salvage.skipped_rows,
    )
    return db, salvage


def _copy_readable(
    source: Path,
    db: sqlite3.Connection,
    salvage: Salvage,
    check_row: Callable[[str, dict[str, Any]], bool] | None,
) -> None:
    sides = [source.with_name(source.name + suffix) for suffix in ("-wal", "-shm")]
    made = [side for side in sides if not side.exists()]  # a read-only open of a WAL file makes them
    try:  # read-only, so that closing it does not checkpoint its WAL into the damaged file
        old = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        # a file cut short has its schema's root pages beyond its end: read the schema regardless
        old.execute("PRAGMA writable_schema=ON")
        tables = [
            str(r[0])
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        db.execute("BEGIN IMMEDIATE")
        for table in tables:
            _copy_table(old, db, table, salvage, check_row)
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if not is_damage(exc):
            raise
        # the damaged file's schema itself cannot be read: nothing to keep
    finally:
        old.close()
        for side in made:
            with contextlib.suppress(OSError):
                if side.name.endswith("-shm") or side.stat().st_size == 0:
                    side.unlink()


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})").fetchall()]


def _copy_table(
    old: sqlite3.Connection,
    db: sqlite3.Connection,
    table: str,
    salvage: Salvage,
    check_row: Callable[[str, dict[str, Any]], bool] | None,
) -> None:
    try:
        old_cols = set(_columns(old, table))
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return
    cols = [c for c in _columns(db, table) if c in old_cols]
    if not cols:
        return
    names = ", ".join(cols)
    insert = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})"  # noqa: S608
    kept = skipped = 0
    for values in _readable_rows(old, table, names):
        row = dict(zip(cols, values, strict=True))
        if check_row is not None and not check_row(table, row):
            skipped += 1
            continue
        try:
            cur = db.execute(insert, values)
        except sqlite3.IntegrityError:  # NULL in a NOT NULL column, a CHECK: a damaged row
            skipped += 1
            continue
        kept += cur.rowcount
    salvage.kept[table] = kept
    salvage.skipped[table] = skipped


def _readable_rows(old: sqlite3.Connection, table: str, names: str) -> Iterator[tuple[Any, ...]]:
    """Every row SQLite can still read, in rowid order, stepping over stretches it cannot."""
    scan = f"SELECT rowid, {names} FROM {table} WHERE rowid > ? ORDER BY rowid"  # noqa: S608
    seek = f"SELECT rowid, {names} FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1"  # noqa: S608
    back = f"SELECT rowid, {names} FROM {table} WHERE rowid > ? AND rowid < ? ORDER BY rowid DESC"  # noqa: S608
    last = -_MAX_ROWID - 1  # the last rowid read or stepped over: every pass starts after it
    while True:
        try:
            for row in old.execute(scan, (last,)):
                if not isinstance(row[0], int) or row[0] <= last:  # out of order on a damaged page
                    continue
                last = row[0]
                yield row[1:]
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
        else:
            return
        # a stretch after `last` cannot be read: seek past it, doubling the step until a read succeeds
        step = 1
        while True:
            probe = max(last, 0) + step
            if probe > _MAX_ROWID:
                return
            try:
                found = old.execute(seek, (probe,)).fetchone()
            except sqlite3.DatabaseError as exc:
                if not is_damage(exc):
                    raise
                step *= 2
                continue
            if found is not None and found[0] <= last:  # a damaged page answered with a rowid behind
                step *= 2
                continue
            break
        if found is None:  # nothing readable after the damage
            return
        # the step may have passed readable rows: back down from the one found to the damage
        between: list[tuple[Any, ...]] = []
        with contextlib.suppress(sqlite3.DatabaseError):
            between.extend(old.execute(back, (last, found[0])))
        for row in reversed(between):
            if isinstance(row[0], int) and last < row[0] < found[0]:
                last = row[0]
                yield row[1:]
        yield found[1:]
        last = found[0]
