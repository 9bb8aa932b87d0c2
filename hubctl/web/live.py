"""What the control loop leaves for the park page after every cycle: `Live`.

The gateway's after-cycle step "web page" calls `Live.cycle` with what the cycle saw; it only
stores: the cycle's counters, the quarter-hour in progress (its running mean against its mean
caps) and the current minute's sums for the 24 h chart, each O(1). Building documents, JSON and
HTTP all happen later in the page's own task (`hubctl.web.server`), at most once a second.

**The quarter in progress** is the gateway's own `QuarterMeter` (`hubctl.core.quarters`), the one
verdict the journal, the ledger and `hubctl report` use: the page reads its open quarter
(`QuarterMeter.open_row`) and its last closed one, so a gap filled from energy counters or a step
not covered shows here exactly as there.

**The 24 h chart** has a point a minute: the park's power, its import and export caps, each
company's grid power (minute means of the cycles; a minute without a reading is a gap). At start
the hours before come from the spool (`seed_from_spool`, in a worker thread: the spool file read
through `hubctl.data.spool.export_lines`, only the `park`, `company` and park-level `limit` lines
parsed). Points the forwarder has delivered to InfluxDB are gone from the spool, so with
forwarding the chart starts where the spool does.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubctl.core.quarters import QUARTER_S
from hubctl.data.points import parse_line
from hubctl.data.spool import export_lines

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from hubctl.core.quarters import QuarterMeter, QuarterRow
    from hubctl.core.types import Decision

__all__ = [
    "CHART_S",
    "COMPANY_SERIES",
    "LATENCY_BUCKETS_S",
    "MINUTE_S",
    "PARK_SERIES",
    "Live",
    "Minute",
    "QuarterNow",
    "seed_from_spool",
]

MINUTE_S = 60
CHART_S = 24 * 3600
# the series of one chart point, in this order (then one grid series per company)
PARK_SERIES = ("park_kw", "import_cap_kw", "export_cap_kw")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COMPANY_SERIES = "company:"  # + the company id: its grid power


@dataclass(slots=True)
class Minute:
    """The sums of one minute of the chart: series name -> (sum, count)."""

    start: int
    sums: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        acc = self.sums.get(name)
        if acc is None:
            self.sums[name] = [value, 1.0]
        else:
            acc[0] += value
            acc[1] += 1.0

    def means(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self.sums.items()}


@dataclass(frozen=True, slots=True)
class QuarterNow:
    """The quarter-hour in progress (or the last one closed), as the page shows it."""

    start_utc: float
    covered_s: float
    mean_kw: float | None
    import_cap_kw: float | None
    export_cap_kw: float | None
    import_source: str
    export_source: str
    over_cap: bool


class Live:
    """The page's view of the control loop, fed by the after-cycle step (module docstring)."""

    def __init__(self, companies: Sequence[str], quarters: QuarterMeter) -> None:
        self.companies = tuple(companies)
        self.quarters = quarters  # the gateway's: the page shows its verdict, it does not keep its own
        self.revision = 0  # moves with every cycle: the page pushes when it moved
        self.cycles = 0
        self.mode = "normal"
        self.park_kw: float | None = None
        self.import_cap_kw: float | None = None
        self.export_cap_kw: float | None = None
        self.import_source = "none"
        self.export_source = "none"
        self.last_latency_ms: float | None = None
        # the cycle latency histogram of /metrics: counts per bucket of LATENCY_BUCKETS_S (+Inf last)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0
        self._minute: Minute | None = None
        self._minutes: deque[tuple[int, dict[str, float]]] = deque(maxlen=CHART_S // MINUTE_S)
        self._seeded: list[tuple[int, dict[str, float]]] = []

    # --- the after-cycle step (the control loop's task: O(1), never raises on data) -----------------------

    def cycle(
        self,
        ts_utc: float,
        park_kw: float | None,
        decision: Decision,
        grid_kw: Sequence[float | None],
        latency_ms: float,
    ) -> None:
        """One control cycle: `park_kw` as the caps judge it (the quarter is the gateway's meter's)."""
        lim = decision.park_limits
        self.revision += 1
        self.cycles += 1
        self.mode = decision.mode
        self.park_kw = park_kw
        self.import_cap_kw, self.export_cap_kw = lim.import_kw, lim.export_kw
        self.import_source, self.export_source = lim.import_source, lim.export_source
        self.last_latency_ms = latency_ms
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_ms / 1000)] += 1
        self.latency_sum_s += latency_ms / 1000
        start = int(ts_utc // MINUTE_S) * MINUTE_S
        minute = self._minute
        if minute is None or minute.start != start:
            if minute is not None:
                self._minutes.append((minute.start, minute.means()))
            minute = self._minute = Minute(start)
        minute.add("park_kw", park_kw)
        minute.add("import_cap_kw", lim.import_kw)
        minute.add("export_cap_kw", lim.export_kw)
        for company, kw in zip(self.companies, grid_kw, strict=False):
            minute.add(COMPANY_SERIES + company, kw)

    # --- read by the page's task ---------------------------------------------------------------------------

    def quarter(self) -> QuarterNow | None:
        """The quarter-hour in progress (None before the first cycle)."""
        row = self.quarters.open_row()
        return None if row is None else _quarter_now(row)

    @property
    def closed(self) -> QuarterNow | None:
        """The last quarter-hour closed (None before the first close)."""
        q = self.quarters.last_closed
        if q is None:
            return None
        return QuarterNow(
            start_utc=q.start_utc,
            covered_s=q.coverage * QUARTER_S,
            mean_kw=q.mean_kw if math.isfinite(q.mean_kw) else None,
            import_cap_kw=q.import_cap_kw,
            export_cap_kw=q.export_cap_kw,
            import_source=q.import_source,
            export_source=q.export_source,
            over_cap=q.over,
        )

    @property
    def quarters_over(self) -> int:
        """Quarter-hours closed over a cap since start."""
        return self.quarters.over_total

    def seed(self, minutes: Iterable[tuple[int, dict[str, float]]]) -> None:
        """The chart's minutes from before this run (`seed_from_spool`); those the run has are left out."""
        first = self._minutes[0][0] if self._minutes else (self._minute.start if self._minute else None)
        self._seeded = [m for m in minutes if first is None or m[0] < first]

    def chart(self, now_utc: float) -> list[tuple[int, dict[str, float]]]:
        """The last 24 h, a point a minute (the minute in progress last)."""
        lo = now_utc - CHART_S
        points = [m for m in self._seeded if m[0] >= lo]
        points += [m for m in self._minutes if m[0] >= lo]
        if self._minute is not None:
            points.append((self._minute.start, self._minute.means()))
        return points


def _quarter_now(row: QuarterRow) -> QuarterNow:
    return QuarterNow(
        start_utc=row.start_utc,
        covered_s=row.covered_s,
        mean_kw=row.grid_kw,
        import_cap_kw=row.import_limit_kw,
        export_cap_kw=row.export_limit_kw,
        import_source=row.import_source,
        export_source=row.export_source,
        over_cap=row.over_cap,
    )


def seed_from_spool(path: Path, from_utc: float, to_utc: float) -> list[tuple[int, dict[str, float]]]:
    """Minute means of the park's power and caps and each company's grid power from a spool file
    (read-only, safe while the gateway writes it); [] when there is no spool yet. Blocking: run it in a
    worker thread."""
    if not path.is_file():
        return []
    minutes: dict[int, Minute] = {}
    for line in export_lines(path, round(from_utc * 1000), round(to_utc * 1000)):
        if line.startswith("park,"):
            kind = "park"
        elif line.startswith("company,"):
            kind = "company"
        elif line.startswith("limit,") and ",company=" not in line:
            kind = "limit"
        else:
            continue
        p = parse_line(line)
        start = int(p.ts_ms // (MINUTE_S * 1000)) * MINUTE_S
        minute = minutes.get(start)
        if minute is None:
            minute = minutes[start] = Minute(start)
        fields: Mapping[str, object] = p.fields
        if kind == "park":
            minute.add("park_kw", _num(fields.get("grid_kw")))
        elif kind == "limit":
            minute.add("import_cap_kw", _num(fields.get("import_limit_kw")))
            minute.add("export_cap_kw", _num(fields.get("export_limit_kw")))
        else:
            minute.add(COMPANY_SERIES + p.tags.get("company", ""), _num(fields.get("grid_kw")))
    return [(start, minutes[start].means()) for start in sorted(minutes)]


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
