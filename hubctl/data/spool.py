"""The local durable spool: every point lands here first; a forwarder sends it on and then deletes it.

Of this package it imports only ``points`` (the lines it stores); the writer (``influx.py``)
imports the spool, never the other way round.

API for the gateway service (``hubctl run``)::

    spool = Spool(path, SpoolBounds(...))
    spool.append(points)            # from the control loop: O(1), in memory, never blocks, never raises
    tg.create_task(spool.run())     # commits the queue to SQLite every commit_every_s, in a worker thread
    tg.create_task(forwarder.run()) # hubctl.data.influx.Forwarder: peek -> write -> ack
    ...
    spool.close()                   # commits what is queued

Decisions:

- **SQLite in WAL mode**, ``synchronous=NORMAL``: a commit survives a crash
  of the process; after a power cut the last commits before the most recent
  WAL checkpoint may be lost (``synchronous=FULL`` would fsync every commit,
  which on an SD card or eMMC costs tens of ms and wears the flash). One
  connection, used by worker threads under a lock; WAL lets ``hubctl export``
  read the file from another process while the gateway writes.
- **The control loop never waits for the disk**: :meth:`Spool.append` only
  encodes the points and puts the lines in an in-memory queue; :meth:`run`
  commits the queue every ``commit_every_s`` (0.25 s) in a worker thread. So a
  point is durable at most ``commit_every_s`` after it was appended; a hard
  crash loses at most that much. The queue itself is bounded
  (``max_queue_points``): if the disk stalls for long, the oldest queued
  points are dropped and counted (reason ``queue``).
- **Rows are compressed chunks**, not single points: each commit stores its
  lines as zlib-compressed chunks of up to ``chunk_points`` lines (about
  4x smaller than plain text, and one INSERT per chunk instead of per point).
  The forwarder sends whole chunks and deletes them after a 2xx. Chunk ids
  come from ``AUTOINCREMENT``, so an id is never reused and an acknowledgement
  can never delete a chunk that was added after the batch was read.
- **Idempotent appends for keyed points** (ledger rows, ``Point.key``): a
  keyed point is its own chunk with a UNIQUE key, and keys delivered in the
  last ``delivered_keep_s`` (7 days) are remembered; appending the same key
  again is ignored. The ledger re-appends after a restart whatever it is not
  sure was spooled, and this makes that exactly once.
- **Bounds with an explicit drop policy**: ``max_bytes`` (stored, i.e.
  compressed, bytes), optional ``max_points``, and ``max_age_s`` (points
  older than this are dropped: reason ``age``). When a size bound is exceeded
  the policy decides: ``oldest`` (default) deletes the oldest chunks first, so
  the spool holds the most recent history; ``newest`` refuses new points, so
  it holds a continuous history from the start of the outage. Drops are
  counted per reason in the database (they survive restarts), logged once
  when dropping starts, summarised at most once a minute while it goes on,
  and once when it stops.
- **Without InfluxDB the spool is the local store** (nobody acknowledges):
  the same bounds act as its retention, and ``hubctl export`` dumps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from hubctl.config.resolve import report_state_dir
from hubctl.data.points import encode_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from hubctl.config.site import SiteConfig
    from hubctl.data.points import Point

__all__ = [
    "Batch",
    "DropPolicy",
    "Spool",
    "SpoolBounds",
    "SpoolStats",
    "bounds_from_config",
    "export_lines",
    "storage_dir",
]

log = logging.getLogger("hubctl.spool")  # the name the journal has always shown

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    points INTEGER NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL,
    key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS chunks_last_ms ON chunks (last_ms);
CREATE TABLE IF NOT EXISTS delivered (key TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

COUNTERS = ("appended", "delivered", "rejected", "dropped_size", "dropped_age", "dropped_queue")
_SUMMARY_EVERY_S = 60.0


class DropPolicy(StrEnum):
    """What goes when the spool is full: the oldest points, or the new ones."""

    OLDEST = "oldest"
    NEWEST = "newest"


@dataclass(frozen=True, slots=True)
class SpoolBounds:
    max_bytes: int = 512 * 1024 * 1024
    max_points: int | None = None
    max_age_s: float | None = 30 * 86400.0
    policy: DropPolicy = DropPolicy.OLDEST


@dataclass(frozen=True, slots=True)
class Batch:
    """Chunks read for sending: their ids (for :meth:`Spool.ack`), keys, and lines in spool order."""

    ids: tuple[int, ...]
    keys: tuple[str, ...]
    lines: list[str]


@dataclass(slots=True)
class SpoolStats:
    pending_points: int = 0
    stored_bytes: int = 0
    queued_points: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith("dropped_"))


def _ts_ms(line: str) -> int:
    return int(line[line.rindex(" ") + 1 :])


def _pack(lines: list[str]) -> bytes:
    return zlib.compress("\n".join(lines).encode("utf-8"), 6)


def _unpack(data: bytes) -> list[str]:
    return zlib.decompress(data).decode("utf-8").split("\n")


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Spool:
    """A bounded, durable queue of line-protocol points in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        bounds: SpoolBounds | None = None,
        *,
        commit_every_s: float = 0.25,
        chunk_points: int = 1000,
        max_queue_points: int = 1_000_000,
        delivered_keep_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bounds = bounds or SpoolBounds()
        self.commit_every_s = commit_every_s
        self.chunk_points = chunk_points
        self.max_queue_points = max_queue_points
        self.delivered_keep_s = delivered_keep_s
        self._clock = clock
        self._queue: deque[tuple[str, str | None]] = deque()
        self._queue_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db = _connect(self.path)
        self._db.executescript(_SCHEMA)
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(size), 0) FROM chunks"
        )
        _chunks, self._points, self._bytes = row.fetchone()
        # What readers on other threads see: the totals as of the last finished transaction. The
        # working totals pass above the bounds between an insert and the drop that follows it.
        self._shown = (int(self._points), int(self._bytes))
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._counters.update(dict(self._db.execute("SELECT name, value FROM counters").fetchall()))
        self._pending_drops = dict.fromkeys(COUNTERS, 0)  # counted in memory, persisted at the next commit
        self._dropping_since: float | None = None
        self._episode_drops = 0
        self._last_summary = 0.0
        self._closed = False
        if self._points:
            log.info("spool %s holds %d points (%d bytes) from before", self.path, self._points, self._bytes)

    # --- control loop side ----------------------------------------------------------------------------------

    def append(self, points: Iterable[Point]) -> None:
        """Queue points for the next commit. O(n) in memory; never touches the disk, never blocks on it.

        Raises ``ValueError`` only for a point that cannot be written at all (a
        programming error: a bad name or a non-finite field).
        """
        items = [(encode_line(p), p.key) for p in points]
        with self._queue_lock:
            self._queue.extend(items)
            excess = len(self._queue) - self.max_queue_points
            for _ in range(max(excess, 0)):
                self._queue.popleft()
            if excess > 0:
                self._pending_drops["dropped_queue"] += excess

    @property
    def queued_points(self) -> int:
        return len(self._queue)

    @property
    def pending_points(self) -> int:
        """Points stored and not yet acknowledged, as of the last finished commit (the queue not included)."""
        return self._shown[0]

    @property
    def stored_bytes(self) -> int:
        return self._shown[1]

    # --- commit ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit the queue every ``commit_every_s`` until cancelled (then commit once more)."""
        try:
            while True:
                await asyncio.sleep(self.commit_every_s)
                await asyncio.to_thread(self.commit)
        finally:
            if not self._closed:
                await asyncio.to_thread(self.commit)

    def commit(self) -> int:
        """Write the queue to SQLite in one transaction and enforce the bounds; return the points stored."""
        with self._queue_lock:
            items = list(self._queue)
            self._queue.clear()
        now_ms = round(self._clock() * 1000)
        with self._db_lock:
            drops = dict.fromkeys(COUNTERS, 0)
            for k, v in self._pending_drops.items():
                drops[k] += v
            self._pending_drops = dict.fromkeys(COUNTERS, 0)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                stored = self._insert(items, now_ms)
                self._enforce_bounds(now_ms, drops)
                appended = {"appended": stored}
                self._bump_counters(appended)
                self._bump_counters(drops)
                db.execute("COMMIT")
                self._shown = (int(self._points), int(self._bytes))
            except BaseException:
                db.execute("ROLLBACK")
                with self._queue_lock:  # keep the points for the next attempt
                    self._queue.extendleft(reversed(items))
                self._pending_drops = drops
                self._reload_totals()
                raise
        self._log_drops(drops)
        return stored

    def _insert(self, items: list[tuple[str, str | None]], now_ms: int) -> int:
        db = self._db
        plain = [line for line, key in items if key is None]
        stored = 0
        for i in range(0, len(plain), self.chunk_points):
            chunk = plain[i : i + self.chunk_points]
            stamps = [_ts_ms(line) for line in chunk]
            data = _pack(chunk)
            db.execute(
                "INSERT INTO chunks (first_ms, last_ms, points, size, data) VALUES (?, ?, ?, ?, ?)",
                (min(stamps), max(stamps), len(chunk), len(data), data),
            )
            self._points += len(chunk)
            self._bytes += len(data)
            stored += len(chunk)
        for line, key in items:
            if key is None:
                continue
            if db.execute("SELECT 1 FROM delivered WHERE key = ?", (key,)).fetchone():
                continue
            ts = _ts_ms(line)
            data = _pack([line])
            cur = db.execute(
                "INSERT OR IGNORE INTO chunks (first_ms, last_ms, points, size, data, key) "
                "VALUES (?, ?, 1, ?, ?, ?)",
                (ts, ts, len(data), data, key),
            )
            if cur.rowcount:
                self._points += 1
                self._bytes += len(data)
                stored += 1
        if self.delivered_keep_s is not None:
            db.execute(
                "DELETE FROM delivered WHERE at_ms < ?", (now_ms - round(self.delivered_keep_s * 1000),)
            )
        return stored

    def _enforce_bounds(self, now_ms: int, drops: dict[str, int]) -> None:
        db = self._db
        b = self.bounds
        if b.max_age_s is not None:
            cutoff = now_ms - round(b.max_age_s * 1000)
            row = db.execute(
                "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(size), 0) FROM chunks "
                "WHERE last_ms < ?",
                (cutoff,),
            ).fetchone()
            if row[0]:
                db.execute("DELETE FROM chunks WHERE last_ms < ?", (cutoff,))
                self._points -= row[1]
                self._bytes -= row[2]
                drops["dropped_age"] += row[1]
        order = "ASC" if b.policy is DropPolicy.OLDEST else "DESC"
        while self._over_bounds():
            rows = db.execute(f"SELECT id, points, size FROM chunks ORDER BY id {order} LIMIT 64").fetchall()  # noqa: S608
            if not rows:
                break
            gone: list[int] = []
            for cid, pts, size in rows:
                if not self._over_bounds():
                    break
                gone.append(cid)
                self._points -= pts
                self._bytes -= size
                drops["dropped_size"] += pts
            db.executemany("DELETE FROM chunks WHERE id = ?", [(c,) for c in gone])

    def _over_bounds(self) -> bool:
        b = self.bounds
        return self._bytes > b.max_bytes or (b.max_points is not None and self._points > b.max_points)

    def _bump_counters(self, deltas: dict[str, int]) -> None:
        for name, delta in deltas.items():
            if delta:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, delta),
                )
                self._counters[name] = self._counters.get(name, 0) + delta

    def _reload_totals(self) -> None:
        row = self._db.execute(
            "SELECT coalesce(sum(points), 0), coalesce(sum(size), 0) FROM chunks"
        ).fetchone()
        self._points, self._bytes = row
        self._shown = (int(self._points), int(self._bytes))
        self._counters.update(dict(self._db.execute("SELECT name, value FROM counters").fetchall()))

    def _log_drops(self, drops: dict[str, int]) -> None:
        now = time.monotonic()
        dropped = sum(v for k, v in drops.items() if k.startswith("dropped_"))
        if dropped:
            self._episode_drops += dropped
            if self._dropping_since is None:
                self._dropping_since = now
                self._last_summary = now
                reasons = ", ".join(
                    f"{v} by {k.removeprefix('dropped_')}" for k, v in drops.items() if v and k != "appended"
                )
                log.warning(
                    "spool %s dropping points (%s; bounds: %d bytes, %s points, %s s old, policy %s)",
                    self.path,
                    reasons,
                    self.bounds.max_bytes,
                    self.bounds.max_points,
                    self.bounds.max_age_s,
                    self.bounds.policy.value,
                )
            elif now - self._last_summary >= _SUMMARY_EVERY_S:
                self._last_summary = now
                log.warning(
                    "spool still dropping: %d points so far in this episode, %d in total",
                    self._episode_drops,
                    self.stats().dropped,
                )
        elif self._dropping_since is not None:
            log.warning(
                "spool no longer dropping after %.0f s; %d points dropped in that time",
                now - self._dropping_since,
                self._episode_drops,
            )
            self._dropping_since = None
            self._episode_drops = 0

    # --- forwarder side -------------------------------------------------------------------------------------

    def peek(self, max_points: int) -> Batch:
        """The oldest stored chunks, whole, up to ``max_points`` lines (at least one chunk)."""
        ids: list[int] = []
        keys: list[str] = []
        lines: list[str] = []
        with self._db_lock:
            cur = self._db.execute("SELECT id, points, data, key FROM chunks ORDER BY id")
            for cid, pts, data, key in cur:
                if lines and len(lines) + pts > max_points:
                    break
                ids.append(cid)
                lines.extend(_unpack(data))
                if key is not None:
                    keys.append(key)
            cur.close()
        return Batch(tuple(ids), tuple(keys), lines)

    def ack(self, batch: Batch, rejected: int = 0) -> None:
        """The server accepted the batch (``rejected`` of its lines were refused and are gone too)."""
        if not batch.ids:
            return
        now_ms = round(self._clock() * 1000)
        with self._db_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(batch.ids))
                row = db.execute(
                    "SELECT coalesce(sum(points), 0), coalesce(sum(size), 0) FROM chunks "  # noqa: S608
                    f"WHERE id IN ({marks})",
                    batch.ids,
                ).fetchone()
                db.execute(f"DELETE FROM chunks WHERE id IN ({marks})", batch.ids)  # noqa: S608
                db.executemany(
                    "INSERT OR REPLACE INTO delivered (key, at_ms) VALUES (?, ?)",
                    [(k, now_ms) for k in batch.keys],
                )
                self._bump_counters({"delivered": len(batch.lines) - rejected, "rejected": rejected})
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._reload_totals()
                raise
            self._points -= row[0]
            self._bytes -= row[1]
            self._shown = (int(self._points), int(self._bytes))

    # --- reading and closing --------------------------------------------------------------------------------

    def export(self, from_ms: int | None = None, to_ms: int | None = None) -> Iterator[str]:
        """Stored lines with ``from_ms <= ts < to_ms`` (the in-memory queue is committed first)."""
        self.commit()
        with self._db_lock:
            rows = _chunk_rows(self._db, from_ms, to_ms)
        yield from _filter_lines(rows, from_ms, to_ms)

    def stats(self) -> SpoolStats:
        counters = dict(self._counters)
        for k, v in self._pending_drops.items():
            counters[k] = counters.get(k, 0) + v
        points, size = self._shown
        return SpoolStats(points, size, len(self._queue), counters)

    def close(self) -> None:
        """Commit what is queued and close the file. Idempotent."""
        if self._closed:
            return
        self.commit()
        self._closed = True
        with self._db_lock:
            self._db.close()


def _chunk_rows(db: sqlite3.Connection, from_ms: int | None, to_ms: int | None) -> list[tuple[bytes]]:
    lo = from_ms if from_ms is not None else -(2**62)
    hi = to_ms if to_ms is not None else 2**62
    return db.execute(
        "SELECT data FROM chunks WHERE last_ms >= ? AND first_ms < ? ORDER BY first_ms, id", (lo, hi)
    ).fetchall()


def _filter_lines(rows: list[tuple[bytes]], from_ms: int | None, to_ms: int | None) -> Iterator[str]:
    for (data,) in rows:
        for line in _unpack(data):
            ts = _ts_ms(line)
            if (from_ms is None or ts >= from_ms) and (to_ms is None or ts < to_ms):
                yield line


def export_lines(path: Path, from_ms: int | None = None, to_ms: int | None = None) -> Iterator[str]:
    """Lines of a spool file, read-only (safe while the gateway writes to it), ``from_ms <= ts < to_ms``."""
    if not path.is_file():
        raise FileNotFoundError(f"no spool at {path}")
    db = _connect(path, readonly=True)
    try:
        rows = _chunk_rows(db, from_ms, to_ms)
    finally:
        db.close()
    yield from _filter_lines(rows, from_ms, to_ms)


def storage_dir(cfg: SiteConfig) -> Path:
    """Where the spool and the ledger live: ``storage.dir``, else ``service.state_dir``, else
    ``$STATE_DIRECTORY`` (systemd's StateDirectory=), else /var/lib/hubctl."""
    return report_state_dir(cfg, os.environ)


def bounds_from_config(cfg: SiteConfig) -> SpoolBounds:
    st = cfg.storage
    return SpoolBounds(
        max_bytes=round(st.spool_max_mb * 1024 * 1024),
        max_points=st.spool_max_points,
        max_age_s=None if st.spool_max_age_days is None else st.spool_max_age_days * 86400.0,
        policy=DropPolicy(st.drop_policy),
    )
