"""What each role sees of the park page's data: pure functions of plain data (docs/web.md, "Access").

The park manager sees everything. A company sees its own row of the state document (grid, PV,
battery, state of charge, setpoints, its own caps), its own devices, the mode (normal or
fail-safe), its own grid power in the chart and its own statement; never the park's power, the
quarter-hour, the park's caps, another company's anything, or the park's KPIs (the park's total
less its own would be the others' sum). Each function builds the view from the whole and keeps
what the role may see, so a field added to the state document later stays with the manager
unless it is added to a company's view here on purpose.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from hubctl.web.live import COMPANY_SERIES, PARK_SERIES

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hubctl.data.report import MonthReport
    from hubctl.web.access import Role
    from hubctl.web.live import QuarterNow

__all__ = ["chart_view", "month_view", "state_view"]

# what a company may see of its own row in the state document
_COMPANY_FIELDS = (
    "power_kw",
    "pv_kw",
    "battery_kw",
    "soc_pct",
    "grid_age_s",
    "power_from_park_meter",
    "battery_setpoint_kw",
    "pv_limit_kw",
    "limits",
)


def state_view(
    doc: Mapping[str, Any],
    role: Role,
    quarter: QuarterNow | None,
    device_company: Mapping[str, str | None],
) -> dict[str, Any]:
    """The state document (`hubctl.service.operator_document.state_document`) as `role` may see it,
    with the quarter-hour in progress for the manager. `device_company`: device id -> its company."""
    devices: Mapping[str, Any] = doc.get("devices") or {}
    companies: Mapping[str, Any] = doc.get("companies") or {}
    if role.company is None:
        out = dict(doc)
        out["quarter"] = None if quarter is None else dataclasses.asdict(quarter)
        out["down"] = sorted(d for d, v in devices.items() if v.get("health") == "down")
        out["role"] = {"manager": True, "company": None}
        return out
    own = role.company
    row = companies.get(own)
    mine = {d: dict(v) for d, v in devices.items() if device_company.get(d) == own}
    return {
        "ts": doc.get("ts"),
        "site": doc.get("site"),
        "mode": doc.get("mode"),
        "companies": {} if row is None else {own: {k: row.get(k) for k in _COMPANY_FIELDS}},
        "devices": mine,
        "down": sorted(d for d, v in mine.items() if v.get("health") == "down"),
        "role": {"manager": False, "company": own},
    }


def chart_view(
    points: Sequence[tuple[int, Mapping[str, float]]], role: Role, companies: Sequence[str]
) -> dict[str, Any]:
    """The 24 h chart as columns (uPlot's shape): `t` (UTC s) and one list per series (None: a gap)."""
    if role.company is None:
        names = [*PARK_SERIES, *(COMPANY_SERIES + c for c in companies)]
    else:
        names = [COMPANY_SERIES + role.company]
    return {
        "t": [t for t, _ in points],
        "series": {name: [p.get(name) for _, p in points] for name in names},
    }


def month_view(month: MonthReport, role: Role) -> dict[str, Any]:
    """One month's statements (a company: only its own) and, for the manager, the park's KPIs."""
    rows = [dataclasses.asdict(s) for s in month.statements if role.company in {None, s.company}]
    out: dict[str, Any] = {"month": month.month, "statements": rows}
    if role.company is None:
        kpis = dataclasses.asdict(month.kpis)
        kpis["quarters_over"] = len(month.kpis.quarters_over)
        out["kpis"] = kpis
    return out
