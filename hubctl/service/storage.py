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
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from hubctl.data.influx import Forwarder, InfluxWriter
from hubctl.data.ledger import Ledger
from hubctl.data.spool import Spool, bounds_from_config
from hubctl.service.sinks import SpoolSink

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path

    from hubctl.config.resolve import InfluxSettings
    from hubctl.config.site import SiteConfig
    from hubctl.service.clock import Clock

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


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
            writer = InfluxWriter(
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
