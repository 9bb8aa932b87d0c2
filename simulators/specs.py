"""The simulated park's physical specs from a scenario's site config.

Used by `hubctl sim` and by the live park behind `hubctl simulate`; the physics lives in
`simulators.physics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.physics import BatterySpec, CompanySpec, PvSpec

if TYPE_CHECKING:
    from hubctl.config.scenario import Scenario


def company_specs(scenario: Scenario) -> list[CompanySpec]:
    """One physical spec per company, in config order: its PV and battery as configured."""
    specs = []
    for c in scenario.config.companies:
        pv = PvSpec(c.pv.peak_kw, c.pv.ramp_pct_per_s) if c.pv else None
        bat = None
        if c.battery:
            b = c.battery
            bat = BatterySpec(
                b.capacity_kwh,
                b.max_charge_kw,
                b.max_discharge_kw,
                b.soc_pct,
                b.min_soc_pct,
                b.max_soc_pct,
                b.efficiency,
                b.ramp_pct_per_s,
            )
        specs.append(CompanySpec(c.id, pv, bat))
    return specs
