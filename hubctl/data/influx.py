"""The InfluxDB writer and the forwarder that drains the spool into it.

What it is: the I/O half of the time-series layer. The points and their line protocol are
``points.py`` (pure); the spool (``spool.py``) keeps the lines on disk; here they leave it.
Imports ``points`` and ``spool`` of this package, never the other way round.

Decisions:

- **One wire format, the InfluxDB v2 write API** (``POST /api/v2/write``),
  through influxdb-client's *synchronous* ``WriteApi``. InfluxDB 2.x and 3.x
  accept it, 1.8+ does in compatibility mode (token ``user:password``, org
  ``-``, bucket ``database/retention-policy``) and VictoriaMetrics does as
  well (it ignores org and bucket). The batching ``WriteApi`` is not used: it
  drops a batch once its retries run out, and the async client does not retry
  at all (DOMAIN.md). Here the client makes exactly one attempt per call
  (``retries=False``); the :class:`Forwarder` owns retry and backoff, and a
  batch leaves the spool only after the server answered 2xx.
- **Precision is explicit: milliseconds** (``WritePrecision.MS``) on every
  request, and every line carries its timestamp. A 1 s control cycle needs no
  more; VictoriaMetrics keeps milliseconds anyway.
- **Delivery is at least once, and duplicates are harmless in InfluxDB**: a
  point is identified by measurement, tags and timestamp, and InfluxDB
  overwrites an identical point. A duplicate can only arise when the server
  stored a batch but its answer was lost (a timeout); VictoriaMetrics keeps
  such a duplicate unless started with ``-dedup.minScrapeInterval=1ms``
  (docs/influxdb.md). A server that is simply down or refuses connections
  causes no duplicate: nothing was stored, the batch stays in the spool.
- Errors are mapped once, here: :class:`InfluxUnavailableError` (retry:
  network errors, timeouts, 5xx, 429, and 401/403/404, which an operator
  fixes without the data being wrong) and :class:`InfluxRejectedError`
  (400, 413, 422: the data itself; the forwarder bisects the batch to find
  the bad lines and drops only those, counted and logged).
- **The spool's faults never end the forwarder** (issue #13): a damaged row is skipped by
  ``Spool.peek`` (counted there, never sent); an acknowledgement the disk refuses after a 2xx is
  kept in memory by ``Spool.ack``, which does not raise, so the batch is neither lost nor sent
  again; a read the disk refuses (``sqlite3.OperationalError`` from ``peek``) is logged once and
  retried with the same backoff as an unreachable server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubctl.errors import InfluxRejectedError, InfluxUnavailableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.data.spool import Spool

__all__ = [
    "Forwarder",
    "InfluxRejectedError",
    "InfluxUnavailableError",
    "InfluxWriter",
]

log = logging.getLogger("hubctl.influx")  # the name the journal has always shown

PRECISION = "ms"


# --- Writer -------------------------------------------------------------------------------------------------


_RETRY_STATUSES = {401, 403, 404, 408, 425, 429}
_REJECT_STATUSES = {400, 413, 422}


class InfluxWriter:
    """Writes lines of line protocol through influxdb-client's synchronous WriteApi, one attempt per call.

    Blocking (it is meant for ``asyncio.to_thread``). ``url`` is the server's
    base URL (``http://host:8086`` for InfluxDB, ``http://host:8428`` for
    VictoriaMetrics).
    """

    def __init__(
        self, url: str, bucket: str, org: str = "-", token: str = "", timeout_s: float = 10.0
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415 - heavy, only when used
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415

        self.url = url
        self.bucket = bucket
        self.org = org
        self._precision: Any = WritePrecision.MS  # the stubs type the enum's members as str
        self._client = InfluxDBClient(
            url=url, token=token, org=org, timeout=int(timeout_s * 1000), retries=False
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> None:
        """POST the lines; return on 2xx, else raise InfluxUnavailableError or InfluxRejectedError."""
        from influxdb_client.rest import ApiException  # noqa: PLC0415
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        try:
            self._api.write(bucket=self.bucket, org=self.org, record=body, write_precision=self._precision)
        except ApiException as exc:
            status = int(exc.status or 0)
            msg = _api_message(exc)
            if status in _REJECT_STATUSES:
                raise InfluxRejectedError(status, msg) from exc
            raise InfluxUnavailableError(f"HTTP {status}: {msg}") from exc
        except (HTTPError, OSError) as exc:
            raise InfluxUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return str(body or getattr(exc, "reason", "") or "")[:300]


# --- Forwarder ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ForwarderStats:
    sent_points: int = 0
    sent_batches: int = 0
    rejected_points: int = 0
    failures: int = 0
    last_error: str | None = None
    down_since: float | None = None  # monotonic s, while the server is unreachable


class Forwarder:
    """Drains the spool into InfluxDB: batches leave the spool only once the server accepted them.

    ``await forwarder.run()`` as a task; ``await forwarder.stop()`` ends it
    after the batch in flight (so a batch is never left half-acknowledged).
    While the server is away it backs off exponentially with full jitter
    between ``backoff_min_s`` and ``backoff_max_s``; the spool keeps
    everything meanwhile (within its bounds). The blocking parts (SQLite, HTTP)
    run in worker threads, so the event loop, and the control loop on it, never
    wait for the server or the disk.
    """

    def __init__(
        self,
        spool: Spool,
        writer: InfluxWriter,
        batch_points: int = 5000,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        idle_s: float = 0.5,
    ) -> None:
        self.spool = spool
        self.writer = writer
        self.batch_points = batch_points
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.idle_s = idle_s
        self.stats = ForwarderStats()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._wake = asyncio.Event()
        self._spool_error: str | None = None  # while the spool cannot be read

    def wake(self) -> None:
        """Skip the idle wait (e.g. after a large append); harmless at any time."""
        self._wake.set()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await self._done.wait()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._stop.is_set():
            return
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self) -> None:
        backoff = self.backoff_min_s
        try:
            while not self._stop.is_set():
                try:
                    batch = await asyncio.to_thread(self.spool.peek, self.batch_points)
                except sqlite3.OperationalError as exc:  # the disk, not the data: try again later
                    self._spool_unreadable(str(exc))
                    delay = random.uniform(self.backoff_min_s, backoff)  # noqa: S311 - jitter, not crypto
                    backoff = min(backoff * 2, self.backoff_max_s)
                    await self._sleep(delay)
                    continue
                if self._spool_error is not None:
                    log.warning("the spool %s can be read again", self.spool.path)
                    self._spool_error = None
                if not batch.lines:
                    await self._sleep(self.idle_s)
                    continue
                try:
                    rejected = await asyncio.to_thread(self._send, batch.lines)
                except InfluxUnavailableError as exc:
                    self._down(str(exc))
                    delay = random.uniform(self.backoff_min_s, backoff)  # noqa: S311 - jitter, not crypto
                    backoff = min(backoff * 2, self.backoff_max_s)
                    await self._sleep(delay)
                    continue
                await asyncio.to_thread(self.spool.ack, batch, rejected)
                self._up(len(batch.lines) - rejected)
                backoff = self.backoff_min_s
        finally:
            self._done.set()

    def _send(self, lines: Sequence[str]) -> int:
        """Write the lines; bisect a rejected batch to drop only the bad lines; return how many were."""
        try:
            self.writer.write(lines)
        except InfluxRejectedError as exc:
            if len(lines) == 1:
                log.error("InfluxDB rejected a point, dropped: %s: %s", exc, lines[0][:200])  # noqa: TRY400
                self.stats.rejected_points += 1
                return 1
            mid = len(lines) // 2
            return self._send(lines[:mid]) + self._send(lines[mid:])
        return 0

    def _spool_unreadable(self, error: str) -> None:
        self.stats.failures += 1
        if self._spool_error is None:
            log.error("the spool %s cannot be read (%s): retrying", self.spool.path, error)
        self._spool_error = error

    def _down(self, error: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = error
        if self.stats.down_since is None:
            self.stats.down_since = time.monotonic()
            log.warning("InfluxDB at %s unavailable (%s): spooling until it is back", self.writer.url, error)

    def _up(self, points: int) -> None:
        self.stats.sent_points += points
        self.stats.sent_batches += 1
        if self.stats.down_since is not None:
            log.warning(
                "InfluxDB at %s back after %.0f s; %d points waiting in the spool",
                self.writer.url,
                time.monotonic() - self.stats.down_since,
                self.spool.pending_points,
            )
            self.stats.down_since = None
