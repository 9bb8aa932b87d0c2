"""Telemetry sinks: where every control cycle and every closed quarter-hour is handed on.

What it is: `CycleRecord` (what one cycle saw and did), the `TelemetrySink` protocol, the
`--trace FILE` sink (`JsonLinesSink`, JSON lines: the demo and the tests read it) and `SpoolSink`
(every cycle as InfluxDB points into the durable spool, and the operator API's command audit).
A sink gets every cycle and every closed quarter (`hubctl.core.quarters.QuarterRecord`) and must
only enqueue: it never blocks the cycle.

They stay in the service (not `hubctl.data`) because they take the service's records and the
operator API's audit records.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hubctl.data.points import (
    command_point,
    company_point,
    health_point,
    limit_point,
    park_point,
    setpoint_point,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from hubctl.config.site import SiteConfig
    from hubctl.core.quarters import QuarterRecord
    from hubctl.data.points import Point
    from hubctl.data.spool import Spool
    from hubctl.service.operator_document import AuditRecord

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """What one control cycle saw and did (the trace, the demo's view, the future Influx points)."""

    ts_utc: float
    mode: str
    reason: str
    park_grid_kw: float | None
    import_cap_kw: float | None
    export_cap_kw: float | None
    cap_source: str
    grid_kw: tuple[float | None, ...]
    pv_kw: tuple[float | None, ...]
    battery_kw: tuple[float | None, ...]
    soc_pct: tuple[float | None, ...]
    setpoint_kw: tuple[float | None, ...]
    pv_limit_kw: tuple[float | None, ...]
    latency_ms: float
    writes: int
    failed_writes: int
    down: tuple[str, ...]
    import_source: str = "none"
    export_source: str = "none"
    common_kw: float | None = None  # a shared connection: park meter less the companies' meters
    meters_disagree: bool = False  # ... beyond the tolerance (`hubctl.service.cycle.MeterCheck`)
    # the controller's available PV per company (`Decision.pv_available`; empty: none this cycle)
    # and whether it is the clear-sky estimate of an inverter held by its limit
    pv_available_kw: tuple[float | None, ...] = ()
    pv_available_estimated: tuple[bool, ...] = ()
    # per company: its grid is the park meter less the others, standing in for its stale meter
    grid_from_park_meter: tuple[bool, ...] = ()


class TelemetrySink(Protocol):
    """Receives cycles and quarters. Must not block: enqueue, and forward elsewhere (issue #6)."""

    def cycle(self, record: CycleRecord) -> None: ...

    def quarter(self, record: QuarterRecord) -> None: ...

    def event(self, name: str, **data: Any) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """Every record as one JSON line (`--trace FILE`); flushed per line so that a reader can follow it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        self._file.write(json.dumps({"kind": kind, **data}, separators=(",", ":")) + "\n")
        self._file.flush()

    def cycle(self, record: CycleRecord) -> None:
        self._write("cycle", asdict(record))

    def quarter(self, record: QuarterRecord) -> None:
        self._write("quarter", asdict(record))

    def event(self, name: str, **data: Any) -> None:
        self._write("event", {"event": name, **data})

    def close(self) -> None:
        self._file.close()


def total(values: Sequence[float | None]) -> float | None:
    """The sum, or None when any part is unknown (a missing field, never a partial sum)."""
    return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)


def _flag(value: float | None, flag: bool) -> float | None:
    """A 0/1 field that says something about `value`: absent when `value` is."""
    return None if value is None else float(flag)


def _known(**fields: float | None) -> bool:
    return any(v is not None and math.isfinite(v) for v in fields.values())


class SpoolSink:
    """Every cycle as points (docs/influxdb.md) into the durable spool: `Spool.append` only queues in memory.

    Quarter-hours reach the spool through the ledger (keyed, exactly once), so
    `quarter()` adds nothing here.
    """

    def __init__(self, spool: Spool, cfg: SiteConfig) -> None:
        self.spool = spool
        self.site = cfg.site.id
        self.companies = [c.id for c in cfg.companies]
        self._failed = False

    def append(self, points: Iterable[Point | None]) -> None:
        try:
            self.spool.append(p for p in points if p is not None)
        except ValueError:
            if not self._failed:
                log.exception("a point could not be encoded; dropped (logged once)")
            self._failed = True

    def cycle(self, record: CycleRecord) -> None:
        site, ts = self.site, record.ts_utc
        points: list[Point | None] = []
        available = record.pv_available_kw
        park_available = total(available) if available else None
        park = {
            "grid_kw": record.park_grid_kw,
            "pv_kw": total(record.pv_kw),
            "pv_available_kw": park_available,
            "pv_available_estimated": _flag(park_available, any(record.pv_available_estimated)),
            "battery_kw": total(record.battery_kw),
            "common_kw": record.common_kw,
        }
        if _known(**park):
            points.append(park_point(site, ts, **park))
        points.append(
            limit_point(
                site,
                None,
                ts,
                record.import_cap_kw,
                record.import_source,
                record.export_cap_kw,
                record.export_source,
            )
        )
        for i, company in enumerate(self.companies):
            company_available = available[i] if available else None
            fields = {
                "grid_kw": record.grid_kw[i],
                "pv_kw": record.pv_kw[i],
                "pv_available_kw": company_available,
                "pv_available_estimated": _flag(
                    company_available, bool(available) and record.pv_available_estimated[i]
                ),
                "battery_kw": record.battery_kw[i],
                "soc_pct": record.soc_pct[i],
            }
            if _known(**fields):
                points.append(company_point(site, company, ts, **fields))
            points.append(
                setpoint_point(
                    site, company, ts, record.setpoint_kw[i], record.pv_limit_kw[i], mode=record.mode
                )
            )
        self.append(points)

    def quarter(self, record: QuarterRecord) -> None:
        pass

    def event(self, name: str, **data: Any) -> None:
        if name == "mode" and isinstance(data.get("ts_utc"), float):
            state = 1.0 if data.get("mode") == "failsafe" else 0.0
            self.append([health_point(self.site, data["ts_utc"], "failsafe", state)])

    def audit(self, record: AuditRecord) -> None:
        """The operator API's `audit_sink`: every command, accepted or not, as a `command` point."""
        value = record.value
        number = (
            float(value)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            else None
        )
        result = "accepted" if record.ok else "rejected"
        self.append(
            [command_point(self.site, record.ts_utc, record.key, record.client_id or "mqtt", result, number)]
        )

    def close(self) -> None:
        pass
