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
- **A full disk loses nothing** (issue #13): when SQLite cannot write (``SQLITE_FULL``, an I/O
  error), the commit's points go back to the front of the in-memory queue, within its bound
  (beyond it the oldest are dropped and counted, reason ``queue``), and :meth:`run` tries again
  every ``commit_every_s``; the queue is stored at the first commit that succeeds. SQLite rolls
  a transaction back by itself on such an error, so the ``ROLLBACK`` is issued only while a
  transaction is still open (a failing ``ROLLBACK`` used to replace the error and lose the
  batch). An acknowledgement the disk refuses (the server answered 2xx, the ``DELETE`` could not
  be written) is kept in memory: :meth:`peek` no longer hands out those chunks, and they are
  deleted with the next commit that succeeds; ``ack`` never raises for it, so the forwarder
  neither crashes nor sends them again (only a restart before the disk is back sends them a
  second time: at least once). Logged once when writing fails, at most once a minute while it
  goes on, once when it works again; ``stats().write_failures`` counts the failed writes.
- **A damaged file never ends recording**: the file is checked at open and a damaged one moved
  aside with its readable rows copied over (:mod:`hubctl.data.sqlite_file`; ``salvage`` says
  what became of it); a damaged row met later (NULL where a number belongs, data that does not
  decompress) is skipped by :meth:`peek`, deleted at the next commit and counted
  (``damaged_rows``, in rows); the forwarder never sees it.
- **Drop warnings** (``dropping points``, ``still dropping``, ``no longer dropping``): an episode
  ends only after ``60 s`` without a drop, so a spool at its bound, which drops at every commit
  that brings points and not at the empty ones between, logs once and then once a minute, not
  twice a second.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from hubctl.data.sqlite_file import open_store

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

COUNTERS = (
    "appended",
    "delivered",
    "rejected",
    "dropped_size",
    "dropped_age",
    "dropped_queue",
    "damaged_rows",  # rows, not points: a damaged row's count of points cannot be trusted
)
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
    write_failures: int = 0  # commits and acknowledgements the disk refused since the start
    unsaved_acks: int = 0  # points acknowledged by the server whose deletion the disk has not taken yet

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith("dropped_"))


def _ts_ms(line: str) -> int:
    return int(line[line.rindex(" ") + 1 :])


def _pack(lines: list[str]) -> bytes:
    return zlib.compress("\n".join(lines).encode("utf-8"), 6)


def _unpack(data: bytes) -> list[str]:
    return zlib.decompress(data).decode("utf-8").split("\n")


def _chunk_lines(points: object, data: object) -> list[str] | None:
    """A chunk's lines, or None when the row is damaged (NULL or wrong type, no zlib, wrong count)."""
    if not isinstance(points, int) or not isinstance(data, bytes):
        return None
    try:
        lines = _unpack(data)
    except (zlib.error, UnicodeDecodeError):
        return None
    return lines if len(lines) == points else None


def _row_ok(table: str, row: dict[str, object]) -> bool:
    """For the salvage of a damaged spool: a chunk is kept only if its lines can be read."""
    return table != "chunks" or _chunk_lines(row.get("points"), row.get("data")) is not None


def _connect_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bounds = bounds or SpoolBounds()
        self.commit_every_s = commit_every_s
        self.chunk_points = chunk_points
        self.max_queue_points = max_queue_points
        self.delivered_keep_s = delivered_keep_s
        self._clock = clock
        self._mono = monotonic
        self._queue: deque[tuple[str, str | None]] = deque()
        self._queue_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db, self.salvage = open_store(self.path, _SCHEMA, what="spool", check_row=_row_ok)
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
        if self.salvage is not None and self.salvage.skipped_rows:
            self._pending_drops["damaged_rows"] += self.salvage.skipped_rows
        # acknowledged by the server, not yet deleted (the disk refused): never handed out again
        self._acks: list[tuple[Batch, int]] = []
        self._acked_ids: set[int] = set()
        self._acked_keys: set[str] = set()
        self._acked_points = 0
        self._damaged: set[int] = set()  # damaged rows found by peek, deleted at the next commit
        self._dropping_since: float | None = None
        self._last_drop = 0.0
        self._episode_drops = 0
        self._last_summary = 0.0
        self._failing_since: float | None = None
        self._last_failure_log = 0.0
        self._write_failures = 0
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
        return self._shown[0] - self._acked_points

    @property
    def stored_bytes(self) -> int:
        return self._shown[1]

    # --- commit ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit the queue every ``commit_every_s`` until cancelled (then commit once more).

        A commit the disk refuses keeps its points queued (logged by :meth:`commit`) and is
        tried again at the next tick: a full disk never ends this task.
        """
        try:
            while True:
                await asyncio.sleep(self.commit_every_s)
                with contextlib.suppress(sqlite3.OperationalError):
                    await asyncio.to_thread(self.commit)
        finally:
            if not self._closed:
                with contextlib.suppress(sqlite3.OperationalError):
                    await asyncio.to_thread(self.commit)

    def commit(self) -> int:
        """Write the queue to SQLite in one transaction and enforce the bounds; return the points stored.

        Raises ``sqlite3.OperationalError`` when the disk refuses the write (full, an I/O error);
        the points are queued again then (see the module docstring) and the failure is logged.
        """
        with self._queue_lock:
            items = list(self._queue)
            self._queue.clear()
            queued_drops = self._pending_drops
            self._pending_drops = dict.fromkeys(COUNTERS, 0)
        now_ms = round(self._clock() * 1000)
        with self._db_lock:
            drops = dict(queued_drops)
            saved = (self._points, self._bytes)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                delivered = self._delete_acked(drops, now_ms)
                stored = self._insert(items, now_ms)
                self._enforce_bounds(now_ms, drops)
                counted = {**delivered, "appended": stored}
                for k, v in drops.items():
                    counted[k] = counted.get(k, 0) + v
                self._write_counters(counted)
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                self._points, self._bytes = saved
                self._requeue(items, queued_drops)
                if isinstance(exc, sqlite3.OperationalError):
                    self._write_failed(exc)
                raise
            self._acked_done()
            self._count(counted)
            self._shown = (int(self._points), int(self._bytes))
        self._write_ok()
        self._log_drops(drops)
        return stored

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not done so itself (it does on SQLITE_FULL)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _requeue(self, items: list[tuple[str, str | None]], drops: dict[str, int]) -> None:
        """A failed commit's points back to the front of the queue, within its bound (the oldest go)."""
        with self._queue_lock:
            self._queue.extendleft(reversed(items))
            excess = len(self._queue) - self.max_queue_points
            for _ in range(max(excess, 0)):
                self._queue.popleft()
            for k, v in drops.items():
                self._pending_drops[k] += v
            if excess > 0:
                self._pending_drops["dropped_queue"] += excess

    def _write_failed(self, exc: sqlite3.Error) -> None:
        self._write_failures += 1
        now = self._mono()
        if self._failing_since is None:
            self._failing_since = self._last_failure_log = now
            log.error(
                "spool %s cannot be written (%s): keeping %d points in memory (at most %d, then the "
                "oldest are dropped and counted) until the disk takes them again",
                self.path,
                exc,
                len(self._queue),
                self.max_queue_points,
            )
        elif now - self._last_failure_log >= _SUMMARY_EVERY_S:
            self._last_failure_log = now
            log.error(
                "spool %s still cannot be written after %.0f s (%s): %d points in memory, %d dropped so far",
                self.path,
                now - self._failing_since,
                exc,
                len(self._queue),
                self.stats().dropped,
            )

    def _write_ok(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "spool %s written again after %.0f s: the points kept in memory are stored",
                self.path,
                self._mono() - self._failing_since,
            )
            self._failing_since = None

    def _delete_acked(self, drops: dict[str, int], now_ms: int) -> dict[str, int]:
        """Inside a transaction: delete the chunks acknowledged earlier and the damaged ones found."""
        counted: dict[str, int] = {}
        if self._damaged:
            damaged = sorted(self._damaged)
            self._delete_chunks(damaged)
            drops["damaged_rows"] += len(damaged)
        if self._acks:
            self._delete_chunks(sorted(self._acked_ids))
            self._db.executemany(
                "INSERT OR REPLACE INTO delivered (key, at_ms) VALUES (?, ?)",
                [(k, now_ms) for k in sorted(self._acked_keys)],
            )
            counted["delivered"] = sum(len(b.lines) - rejected for b, rejected in self._acks)
            counted["rejected"] = sum(rejected for _, rejected in self._acks)
        return counted

    def _delete_chunks(self, ids: list[int]) -> None:
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            row = self._db.execute(
                "SELECT coalesce(sum(points), 0), coalesce(sum(size), 0) FROM chunks "  # noqa: S608
                f"WHERE id IN ({marks})",
                part,
            ).fetchone()
            self._db.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)  # noqa: S608
            self._points -= int(row[0])
            self._bytes -= int(row[1])

    def _acked_done(self) -> None:
        """After a successful commit: the acknowledged and damaged chunks are gone from the file."""
        self._acks.clear()
        self._acked_ids.clear()
        self._acked_keys.clear()
        self._acked_points = 0
        self._damaged.clear()

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
            if key in self._acked_keys:
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
                self._points -= pts or 0
                self._bytes -= size or 0
                drops["dropped_size"] += pts or 0
            db.executemany("DELETE FROM chunks WHERE id = ?", [(c,) for c in gone])

    def _over_bounds(self) -> bool:
        b = self.bounds
        return self._bytes > b.max_bytes or (b.max_points is not None and self._points > b.max_points)

    def _write_counters(self, deltas: dict[str, int]) -> None:
        """Inside a transaction: add the deltas to the counters in the file."""
        for name, delta in deltas.items():
            if delta:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, delta),
                )

    def _count(self, deltas: dict[str, int]) -> None:
        """After the commit: the same deltas to the counters in memory."""
        for name, delta in deltas.items():
            if delta:
                self._counters[name] = self._counters.get(name, 0) + delta

    def _log_drops(self, drops: dict[str, int]) -> None:
        """Once when dropping starts, at most once a minute while it goes on, once after 60 s without."""
        now = self._mono()
        dropped = sum(v for k, v in drops.items() if k.startswith("dropped_"))
        if dropped:
            self._episode_drops += dropped
            self._last_drop = now
            if self._dropping_since is None:
                self._dropping_since = now
                self._last_summary = now
                reasons = ", ".join(
                    f"{v} by {k.removeprefix('dropped_')}"
                    for k, v in drops.items()
                    if v and k.startswith("dropped_")
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
        elif self._dropping_since is not None and now - self._last_drop >= _SUMMARY_EVERY_S:
            log.warning(
                "spool no longer dropping after %.0f s; %d points dropped in that time",
                self._last_drop - self._dropping_since,
                self._episode_drops,
            )
            self._dropping_since = None
            self._episode_drops = 0

    # --- forwarder side -------------------------------------------------------------------------------------

    def peek(self, max_points: int) -> Batch:
        """The oldest stored chunks, whole, up to ``max_points`` lines (at least one chunk).

        Skips chunks acknowledged already (their deletion waits for the disk) and damaged rows
        (logged, deleted at the next commit and counted as ``damaged_rows``).
        """
        ids: list[int] = []
        keys: list[str] = []
        lines: list[str] = []
        with self._db_lock:
            cur = self._db.execute("SELECT id, points, data, key FROM chunks ORDER BY id")
            for cid, pts, data, key in cur:
                if cid in self._acked_ids or cid in self._damaged:
                    continue
                chunk = _chunk_lines(pts, data)
                if chunk is None:
                    self._damaged.add(cid)
                    log.error(
                        "spool %s: chunk %d is damaged (points %r, %s): skipped and deleted",
                        self.path,
                        cid,
                        pts,
                        "no data" if data is None else f"{len(data) if isinstance(data, bytes) else data!r}",
                    )
                    continue
                if lines and len(lines) + len(chunk) > max_points:
                    break
                ids.append(cid)
                lines.extend(chunk)
                if isinstance(key, str):
                    keys.append(key)
            cur.close()
        return Batch(tuple(ids), tuple(keys), lines)

    def ack(self, batch: Batch, rejected: int = 0) -> None:
        """The server accepted the batch (``rejected`` of its lines were refused and are gone too).

        Never raises for a disk that refuses the deletion: the acknowledgement is then kept in
        memory (the chunks are not handed out again) and written with the next commit.
        """
        if not batch.ids:
            return
        now_ms = round(self._clock() * 1000)
        with self._db_lock:
            if self._acked_ids.intersection(batch.ids):  # a repeated acknowledgement
                return
            self._acks.append((batch, rejected))
            self._acked_ids.update(batch.ids)
            self._acked_keys.update(batch.keys)
            self._acked_points += len(batch.lines)
            saved = (self._points, self._bytes)
            counted: dict[str, int] = {"damaged_rows": 0}
            try:
                self._db.execute("BEGIN IMMEDIATE")
                counted.update(self._delete_acked(counted, now_ms))
                self._write_counters(counted)
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                self._points, self._bytes = saved
                self._write_failed(exc)
                return
            except BaseException:
                self._rollback()
                self._points, self._bytes = saved
                raise
            self._acked_done()
            self._count(counted)
            self._shown = (int(self._points), int(self._bytes))
        self._write_ok()

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
        return SpoolStats(
            points - self._acked_points,
            size,
            len(self._queue),
            counters,
            self._write_failures,
            self._acked_points,
        )

    def close(self) -> None:
        """Commit what is queued and close the file. Idempotent.

        Raises ``sqlite3.OperationalError`` when the disk refuses the last commit: what was
        queued is lost then (logged here with its count).
        """
        if self._closed:
            return
        try:
            self.commit()
        except sqlite3.OperationalError:
            log.error(  # noqa: TRY400
                "spool %s closed with %d points the disk did not take: lost", self.path, len(self._queue)
            )
            raise
        finally:
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
    db = _connect_readonly(path)
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
