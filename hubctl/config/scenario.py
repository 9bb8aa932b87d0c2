"""Scenarios (SCENARIOS.md) as site configurations.

A scenario describes a park day for simulation: its caps, companies, PV and
batteries, and profiles of load and available PV. `load_scenario` turns it
into the same `SiteConfig` the gateway runs on, plus what only the
simulation needs (start time, duration, step, measurement delay, profiles),
so that `hubctl sim` runs exactly the gateway's controller.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hubctl.config.base import load_yaml
from hubctl.config.site import SiteConfig, parse_config
from hubctl.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


class _Sim(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    start: dt.datetime
    duration_s: float = Field(gt=0)
    step_s: float = Field(default=1.0, gt=0)
    profiles: str = "profiles.csv"
    history: str | None = None
    measurement_delay_s: float = Field(default=0.0, ge=0)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    config: SiteConfig
    start_utc: float
    duration_s: float
    step_s: float
    measurement_delay_s: float
    profiles_path: Path
    history_path: Path | None = None  # what was measured before t = 0 (SCENARIOS.md), if any

    @property
    def steps(self) -> int:
        return round(self.duration_s / self.step_s)


_CONTRACT_BATTERY_DEFAULTS = {
    "min_soc_pct": 0.0,
    "max_soc_pct": 100.0,
    "efficiency": 1.0,
    "ramp_pct_per_s": 100.0,
}


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:64] or "park"


def scenario_to_config_data(data: dict[str, Any]) -> dict[str, Any]:
    """The site-config part of a scenario as plain data (same field names where the contract has them)."""
    companies = []
    for c in data.get("companies") or []:
        comp = {
            k: v
            for k, v in c.items()
            if k in {"id", "import_limit_kw", "export_limit_kw", "windows", "pv", "battery"}
        }
        # the contract's defaults, which differ from a gateway config's (SCENARIOS.md physics)
        if isinstance(comp.get("pv"), dict):
            comp["pv"] = {"ramp_pct_per_s": 100.0, **comp["pv"]}
        if isinstance(comp.get("battery"), dict):
            comp["battery"] = {**_CONTRACT_BATTERY_DEFAULTS, **comp["battery"]}
        companies.append(comp)
    site: dict[str, Any] = {"id": _slug(str(data.get("name", "park"))), "name": data.get("name")}
    if "timezone" in data:
        site["timezone"] = data["timezone"]
    if "location" in data:
        site["location"] = data["location"]
    out: dict[str, Any] = {"site": site, "park": data.get("park") or {}, "companies": companies}
    if "sharing" in data:
        out["sharing"] = data["sharing"]
    if "control" in data:  # not in the contract; lets a scenario carry control parameters
        out["control"] = data["control"]
    return out


def load_scenario(path: Path) -> Scenario:
    """Read scenario.yaml; raise ConfigError naming each bad field."""
    data = load_yaml(path, ConfigError)  # the site config's reading: duplicate keys, depth, encoding
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["(top level): expected a mapping"])
    try:
        sim = _Sim.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            str(path), [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from exc
    if sim.start.tzinfo is None:
        raise ConfigError(str(path), ["start: needs a UTC offset, e.g. 2026-06-22T00:00:00+02:00"])
    config = parse_config(scenario_to_config_data(data), str(path))
    return Scenario(
        name=str(data.get("name", path.parent.name)),
        config=config,
        start_utc=sim.start.timestamp(),
        duration_s=sim.duration_s,
        step_s=sim.step_s,
        measurement_delay_s=sim.measurement_delay_s,
        profiles_path=(path.parent / sim.profiles),
        history_path=None if sim.history is None else path.parent / sim.history,
    )
