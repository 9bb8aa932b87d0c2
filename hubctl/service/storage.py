"""The gateway's storage: the spool, the ledger and the forwarder to InfluxDB, in the state directory.

What it is: `Storage.open`, which opens `<state dir>/spool.sqlite` (`SpoolSink` appends every
cycle's points to it, in memory; the spool's own task commits), `<state dir>/ledger.sqlite` (the
ledger takes every cycle with all grid meters read and settles its intervals from the
quarter-hour job) and, when an InfluxDB URL is set, a `Forwarder` that drains the spool to it.
Without a state directory there is no storage (`hubctl run` refuses an InfluxDB URL then: exit
78, `hubctl.config.resolve.gateway_problems`).

Each store opens on its own (issue #13): a damaged file is moved aside and started anew by the
store itself, with what could be read copied over (`hubctl.data.sqlite_file`), so damage never
keeps a store closed. A ledger that cannot be opened for another reason (an I/O error, a full
disk at start) is logged and the service runs with the spool and the forwarder but without the
ledger; a spool that cannot be opened leaves no storage at all (the cycle's points, the
ledger's rows and the forwarder all go through it), logged the same way.

A database that accepts connections and never answers must not hold up the stop (#13 item 9):
the forwarder's HTTP request blocks a thread until `storage.influx.timeout_s` (10 s by default),
and `asyncio.run` joins the default executor's threads at its end, so the exit waited for it
(6 to 30 s against systemd's 5 s). `DetachedInfluxWriter` makes each request in a daemon thread
of its own and waits for it from the forwarder's worker thread; `Storage.abandon_forwarding`
(the gateway's stop, after the batch in flight had its second) ends that wait at once with
`InfluxUnavailableError`: the batch stays in the spool (sent again at the next start: at least
once, as after any timeout), the daemon thread is left to its timeout and never joined.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from hubctl.data.influx import Forwarder, InfluxWriter
from hubctl.data.ledger import Ledger
from hubctl.data.spool import Spool, bounds_from_config
from hubctl.errors import InfluxUnavailableError
from hubctl.service.sinks import SpoolSink

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from pathlib import Path

    from hubctl.config.resolve import InfluxSettings
    from hubctl.config.site import SiteConfig
    from hubctl.service.clock import Clock

log = logging.getLogger("hubctl.service")  # the name the journal has always shown

_POLL_S = 0.05  # how often a forwarder's worker looks whether the stop abandoned its request


class DetachedInfluxWriter(InfluxWriter):
    """An `InfluxWriter` whose requests run in daemon threads the stop can walk away from.

    `write` (called by the forwarder in a worker thread) starts the request in a daemon thread and
    waits for it; after `abandon()` it raises `InfluxUnavailableError` at once instead (within
    `_POLL_S`), for a request in flight and for every later one. See the module docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._abandoned = threading.Event()

    def abandon(self) -> None:
        """Stop waiting for the server: the request in flight and all later ones fail at once."""
        self._abandoned.set()

    def write(self, lines: Sequence[str]) -> None:
        if self._abandoned.is_set():
            raise InfluxUnavailableError("the service is stopping")
        done = threading.Event()
        failure: list[BaseException] = []

        def request() -> None:
            try:
                InfluxWriter.write(self, lines)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=request, name="influx-request", daemon=True).start()
        while not done.wait(_POLL_S):
            if self._abandoned.is_set():
                raise InfluxUnavailableError(
                    "the service is stopping: the request in flight is abandoned, its batch stays spooled"
                )
        if failure:
            raise failure[0]


class Storage:
    """The open spool (with its sink), ledger and optional forwarder; see the module docstring."""

    def __init__(
        self, spool: Spool, sink: SpoolSink, ledger: Ledger | None, forwarder: Forwarder | None
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.ledger = ledger
        self.forwarder = forwarder

    @classmethod
    def open(
        cls, cfg: SiteConfig, directory: Path | None, influx: InfluxSettings | None, clock: Clock
    ) -> Storage | None:
        """Spool, ledger and (with an InfluxDB URL) forwarder in the state directory; None: no storage."""
        if directory is None:  # with an InfluxDB URL `hubctl run` refused to start (gateway_problems)
            log.info("no state directory: no spool and no ledger")
            return None
        try:
            # the service's wall clock: under --start-utc the points' age is judged in simulated time
            spool = Spool(directory / "spool.sqlite", bounds_from_config(cfg), clock=clock.utc)
        except (OSError, sqlite3.Error) as exc:
            log.error(  # noqa: TRY400 - the disk's state, not a bug of ours
                "cannot open the spool in %s (%s): running without the spool, the ledger and the forwarder",
                directory,
                exc,
            )
            return None
        ledger: Ledger | None = None
        try:
            ledger = Ledger.from_config(directory / "ledger.sqlite", cfg, spool=spool)
        except (OSError, sqlite3.Error) as exc:
            log.error(  # noqa: TRY400
                "cannot open the ledger in %s (%s): running without it (the spool records on)", directory, exc
            )
        forwarder = None
        if influx:
            target = influx.target
            writer = DetachedInfluxWriter(
                influx.url, target.bucket, target.org, token=influx.token, timeout_s=target.timeout_s
            )
            forwarder = Forwarder(
                spool, writer, batch_points=target.batch_points, backoff_max_s=target.backoff_max_s
            )
            log.info("forwarding the spool %s to %s", spool.path, influx.url)
        return cls(spool, SpoolSink(spool, cfg), ledger, forwarder)

    def jobs(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """The tasks storage runs beside control: the spool's commits and the forwarder."""
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {"spool": self.spool.run}
        if self.forwarder is not None:
            jobs["forwarder"] = self.forwarder.run
        return jobs

    def abandon_forwarding(self) -> None:
        """The stop: no more waiting for the database (a request in flight is left to its timeout)."""
        if self.forwarder is not None and isinstance(self.forwarder.writer, DetachedInfluxWriter):
            self.forwarder.writer.abandon()

    def close(self) -> None:
        if self.ledger is not None:
            with contextlib.suppress(sqlite3.Error):
                self.ledger.close()
        try:
            self.spool.close()
        except sqlite3.Error:
            log.exception("the spool could not be closed cleanly")
        if self.forwarder is not None:
            self.forwarder.writer.close()
