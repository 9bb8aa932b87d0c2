"""`/metrics` for Prometheus on the park page's listener (docs/web.md, "/metrics"): `GatewayCollector`.

Every value is read when Prometheus scrapes, from what is already there: the page's `Live`
(cycles, the latency histogram, mode, the park's power and caps, the quarter-hour in progress),
the devices' health (`Health.summary`), the spool's `stats()` and the page's own counters. Nothing
is added to the control path beyond `Live.cycle`'s counting. A private registry: only these
`hubctl_*` series (no process or Python collectors that would describe the page's thread as if
it were the gateway's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from hubctl.web.live import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from hubctl.data.spool import SpoolStats
    from hubctl.web.live import Live

__all__ = ["GatewayCollector", "registry"]

_UP = frozenset({"ok", "degraded"})  # `Health` states of a device that answers (not down, not unknown yet)


class GatewayCollector(Collector):
    """The gateway's figures at scrape time (module docstring)."""

    def __init__(
        self,
        site: str,
        live: Live,
        devices: Callable[[], Mapping[str, str]],
        spool: Callable[[], SpoolStats | None],
        clients: Callable[[], int],
        auth_failures: Callable[[], int],
    ) -> None:
        self.site = site
        self.live = live
        self.devices = devices
        self.spool = spool
        self.clients = clients
        self.auth_failures = auth_failures

    def collect(self) -> Iterator[Metric]:
        live = self.live
        info = GaugeMetricFamily("hubctl_site_info", "the site this gateway controls", labels=["site"])
        info.add_metric([self.site], 1.0)
        yield info
        yield from self._cycles(live)
        mode = GaugeMetricFamily("hubctl_mode", "1 for the mode the controller is in", labels=["mode"])
        for name in ("normal", "failsafe"):
            mode.add_metric([name], 1.0 if live.mode == name else 0.0)
        yield mode
        yield from self._park(live)
        health = self.devices()
        up = GaugeMetricFamily(
            "hubctl_device_up",
            "1: the device answers; 0: it is down or has not answered yet",
            labels=["device"],
        )
        for device, state in sorted(health.items()):
            up.add_metric([device], 1.0 if state in _UP else 0.0)
        yield up
        yield GaugeMetricFamily(
            "hubctl_devices_up", "devices that answer", value=sum(s in _UP for s in health.values())
        )
        yield GaugeMetricFamily("hubctl_devices", "devices in the site config", value=len(health))
        yield from self._spool()
        yield GaugeMetricFamily(
            "hubctl_web_clients", "park pages connected (server-sent events)", value=self.clients()
        )
        yield CounterMetricFamily(
            "hubctl_web_auth_failures",
            "wrong credentials presented to the park page",
            value=self.auth_failures(),
        )

    def _cycles(self, live: Live) -> Iterator[Metric]:
        yield CounterMetricFamily("hubctl_cycles", "control cycles run", value=live.cycles)
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), live.latency_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        yield HistogramMetricFamily(
            "hubctl_cycle_latency_seconds",
            "control cycle latency: snapshot to setpoints written",
            buckets=buckets,
            sum_value=live.latency_sum_s,
        )

    def _park(self, live: Live) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)

        yield from gauge("hubctl_park_power_kw", "the park's grid power, + import", live.park_kw)
        yield from gauge("hubctl_park_import_cap_kw", "the import cap in force", live.import_cap_kw)
        yield from gauge("hubctl_park_export_cap_kw", "the export cap in force", live.export_cap_kw)
        q = live.quarter()
        if q is not None:
            yield from gauge("hubctl_quarter_mean_kw", "the quarter-hour in progress: mean power", q.mean_kw)
            yield from gauge(
                "hubctl_quarter_import_cap_kw",
                "the quarter-hour in progress: mean import cap",
                q.import_cap_kw,
            )
            yield from gauge(
                "hubctl_quarter_export_cap_kw",
                "the quarter-hour in progress: mean export cap",
                q.export_cap_kw,
            )
            yield GaugeMetricFamily(
                "hubctl_quarter_covered_seconds",
                "the quarter-hour in progress: seconds measured",
                value=q.covered_s,
            )
        yield CounterMetricFamily(
            "hubctl_quarters_over_cap",
            "closed quarter-hours over a cap since the start",
            value=live.quarters_over,
        )

    def _spool(self) -> Iterator[Metric]:
        stats = self.spool()
        if stats is None:
            return
        yield GaugeMetricFamily(
            "hubctl_spool_points", "points in the spool not yet delivered", value=stats.pending_points
        )
        yield GaugeMetricFamily(
            "hubctl_spool_queued_points", "points in memory, not yet committed", value=stats.queued_points
        )
        yield GaugeMetricFamily(
            "hubctl_spool_bytes", "stored (compressed) size of the spool", value=stats.stored_bytes
        )
        drops = CounterMetricFamily(
            "hubctl_spool_dropped_points", "points the spool dropped", labels=["reason"]
        )
        for reason in ("size", "age", "queue"):
            drops.add_metric([reason], float(stats.counters.get(f"dropped_{reason}", 0)))
        yield drops
        yield CounterMetricFamily(
            "hubctl_spool_write_failures",
            "commits the disk refused since the start",
            value=stats.write_failures,
        )


def registry(collector: GatewayCollector) -> CollectorRegistry:
    """A private registry holding only the gateway's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
