"""The wall-clock jobs: the quarter-hour close, the limit-change log and the daily job.

What it is: `Jobs` and its two drivers. APScheduler (`AsyncIOScheduler`, explicit
`misfire_grace_time`, `coalesce`, `max_instances`: its default grace of 1 s would skip a late job
silently) runs them on the wall clock: the quarter-hour close (evidence per quarter: the mean
power, the mean cap it was judged against and every source in force, by the one verdict of
`hubctl.core.quarters`, which the ledger, `hubctl report` and the sim's metrics share; the line
shows the quarter's start on the site's clock, `site.timezone`, never the host's; and the ledger
settles its intervals), the limit-change log at window boundaries, and the daily job (summary; the
devices' fallback limits renewed, since the day schedules that count change). The scheduler needs
the real wall clock, so with an accelerated clock there is none and the control loop drives
`accelerated` after every cycle instead: quarters closed, the limits log, the fallback renewal of
a new day (not the daily summary).

A job that raises is logged by APScheduler (logger `apscheduler.executors.default`, ERROR, with
the traceback: `hubctl run` keeps apscheduler's warnings and errors in the journal) and stays
scheduled for its next run; the quarter job settles the ledger even when closing the quarters (the
journal line, the sinks) failed. In accelerated mode the same fault is an after-cycle step's error
that no step names, which stops the service (`hubctl.service.cycle`).
tests/test_service_realtime.py runs these jobs on the scheduler and the OS clock (under libfaketime).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import TYPE_CHECKING, Any

from hubctl.core.quarters import local_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.config.site import SiteConfig
    from hubctl.core.quarters import QuarterMeter
    from hubctl.data.ledger import Ledger
    from hubctl.service.clock import Clock
    from hubctl.service.cycle import Controller
    from hubctl.service.fallbacks import FallbackTargets
    from hubctl.service.sinks import TelemetrySink

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


class Jobs:
    """The quarter-hour close, the limits log and the daily job (module docstring)."""

    def __init__(
        self,
        cfg: SiteConfig,
        clock: Clock,
        controller: Controller,
        quarters: QuarterMeter,
        sinks: Sequence[TelemetrySink],
        ledger: Ledger | None,
        fallbacks: FallbackTargets,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.controller = controller
        self.quarters = quarters
        self.sinks = sinks
        self.ledger = ledger
        self.fallbacks = fallbacks
        self._limits_seen: tuple[float | None, float | None, str, str] | None = None

    # -- the drivers
    def scheduler(self) -> Any:
        """APScheduler for the wall-clock jobs; None in accelerated mode (the control loop does them)."""
        if self.clock.accelerated:
            return None
        from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: PLC0415 - heavy import

        scheduler = AsyncIOScheduler(
            timezone=self.cfg.tz,
            job_defaults={"misfire_grace_time": 120, "coalesce": True, "max_instances": 1},
        )
        scheduler.add_job(self.quarter_job, "cron", minute="0,15,30,45", second=2, id="quarter-close")
        scheduler.add_job(self.limits_job, "cron", second=1, id="limits")
        scheduler.add_job(self.daily_job, "cron", hour=0, minute=0, second=30, id="daily")
        scheduler.start()
        return scheduler

    def accelerated(self, ts: float) -> None:
        """The control loop's copy of the jobs in accelerated mode (the ledger settles in its own step)."""
        self.close_quarters(ts)
        self.check_limits(ts)
        if self.fallbacks.new_day(ts):
            self.fallbacks.update(ts)  # the daily job's part

    # -- the jobs
    async def quarter_job(self) -> None:
        now = self.clock.utc()
        try:
            self.close_quarters(now)
        finally:  # the settlement never waits on the journal line or the sinks (a fault there is logged)
            if self.ledger is not None:
                try:
                    self.ledger.close_due(now)
                except sqlite3.Error:
                    log.exception("the ledger could not settle its interval")

    async def limits_job(self) -> None:
        self.check_limits(self.clock.utc())

    async def daily_job(self) -> None:
        self.fallbacks.update(self.clock.utc())  # schedules of past days no longer count
        quarters = self.quarters.closed
        if not quarters:
            return
        peak = max((q.mean_kw for q in quarters if math.isfinite(q.mean_kw)), default=math.nan)
        over = sum(q.over for q in quarters)
        log.info(
            "day closed: %d quarter-hours, highest mean %.1f kW, %d over a cap", len(quarters), peak, over
        )
        for sink in self.sinks:
            sink.event("day", quarters=len(quarters), kwmax=peak, over=over)
        self.quarters.closed = []

    def close_quarters(self, ts: float) -> None:
        for q in self.quarters.close_before(ts):
            level = logging.WARNING if q.over else logging.INFO
            log.log(
                level,
                "quarter %s: mean %.1f kW, mean import cap %s (%s), mean export cap %s (%s), "
                "coverage %.0f %%%s%s",
                local_label(q.start_utc, self.cfg.tz),
                q.mean_kw,
                "-" if q.import_cap_kw is None else f"{q.import_cap_kw:g} kW",
                q.import_source,
                "-" if q.export_cap_kw is None else f"{q.export_cap_kw:g} kW",
                q.export_source,
                q.coverage * 100,
                f" ({q.filled_s:.0f} s filled from energy counters)" if q.filled_s > 0 else "",
                ": OVER THE CAP" if q.over else "",
            )
            for sink in self.sinks:
                sink.quarter(q)

    def check_limits(self, ts: float) -> None:
        park, _ = self.controller.params.limits.at(ts)
        seen = (park.import_kw, park.export_kw, park.import_source, park.export_source)
        if seen != self._limits_seen:
            if self._limits_seen is not None:
                log.info(
                    "park caps now: import %s (%s), export %s (%s)",
                    park.import_kw,
                    park.import_source,
                    park.export_kw,
                    park.export_source,
                )
            self._limits_seen = seen
