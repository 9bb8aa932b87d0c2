"""How the service tells the outside world how it is doing: mode changes, READY, the watchdog.

What it is: `Status`, three after-cycle steps. `mode` logs a change of the core's mode (fail-safe
as a warning, the way back as info), sets systemd's status line and sends a `mode` event to the
sinks; `ready` sends READY once, after the first cycle in normal mode or after
`service.ready_grace_s` in fail-safe (the service then holds the fail-safe rather than restart);
`watchdog` pings systemd's watchdog every cycle.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hubctl.config.site import SiteConfig
    from hubctl.service.clock import Clock
    from hubctl.service.cycle import CycleFacts
    from hubctl.service.notify import Notifier
    from hubctl.service.sinks import TelemetrySink

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


class Status:
    """The service's mode and readiness as systemd, the journal and the sinks see them."""

    def __init__(
        self, cfg: SiteConfig, clock: Clock, notifier: Notifier, sinks: Sequence[TelemetrySink]
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.notifier = notifier
        self.sinks = sinks
        self.mode = "starting"
        self.ready = False

    def mode_step(self, facts: CycleFacts) -> None:
        decision = facts.decision
        if decision.mode == self.mode:
            return
        if decision.mode == "failsafe":
            log.warning("fail-safe: %s", decision.reason)
        elif self.mode == "failsafe":
            log.info("control resumed: every grid meter reads again")
        self.notifier.status(f"{decision.mode}: {decision.reason}")
        for sink in self.sinks:
            sink.event("mode", mode=decision.mode, reason=decision.reason, ts_utc=facts.ts)
        self.mode = decision.mode

    def ready_step(self, facts: CycleFacts) -> None:
        decision = facts.decision
        if self.ready or not (
            decision.mode == "normal" or self.clock.mono() - facts.started >= self.cfg.service.ready_grace_s
        ):
            return
        self.ready = True
        status = "controlling" if decision.mode == "normal" else f"fail-safe: {decision.reason}"
        self.notifier.ready(status)
        log.info(
            "ready: %s (%d companies, %d devices)", status, len(facts.snap.companies), len(self.cfg.devices)
        )
        for sink in self.sinks:
            sink.event("ready", mode=decision.mode, ts_utc=facts.ts)

    def watchdog_step(self, facts: CycleFacts) -> None:  # noqa: ARG002 - every step takes the facts
        self.notifier.watchdog()
