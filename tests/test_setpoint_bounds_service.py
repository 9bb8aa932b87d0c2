"""`hubctl run` against `hubctl simulate` with a site config that promises more than a battery takes.

The simulated alpha battery takes ±50 kW; the site config says 80 kW and lowers the import cap
to 100 kW, so that after the load step (the park would import 170 kW) the core asks alpha for
more than 50 kW (the simulator's battery is SunSpec 124: its bounds are WChaMax and 120
MaxDisChaRte). The service warns at start, naming the device, the config value and the
device's bound; it writes 50 kW (clamped) and keeps controlling the battery: never "no longer
dispatches", its state of charge stays in the picture. (Accelerated, as test_service_e2e.py,
whose helpers this reuses.)
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import yaml
from test_service_e2e import (  # pytest puts tests/ on sys.path
    STEP_PROFILES,
    Park,
    Service,
    _cycle,
    _read_points,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)

if TYPE_CHECKING:
    from pathlib import Path

DEVICE_KW, PROMISED_KW = 50.0, 80.0


def test_a_battery_promised_more_than_it_takes_is_reported_at_start_and_clamped(tmp_path: Path) -> None:
    park = Park(tmp_path, STEP_PROFILES, battery_kw=(DEVICE_KW, 10.0))
    data = yaml.safe_load(park.config_path.read_text(encoding="utf-8"))
    data["park"]["import_limit_kw"] = 100.0
    alpha = next(c for c in data["companies"] if c["id"] == "alpha")
    alpha["battery"]["max_charge_kw"] = alpha["battery"]["max_discharge_kw"] = PROMISED_KW
    park.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    service = Service(tmp_path, park)
    try:
        asked = service.wait_for(
            "alpha asked beyond its 50 kW", lambda r: _cycle(r) and r["setpoint_kw"][0] > DEVICE_KW + 1, 40
        )
        later = service.wait_for("5 s later", lambda r: _cycle(r) and r["ts_utc"] > asked["ts_utc"] + 5, 10)
        points = asyncio.run(_read_points(park.config_path, "alpha-battery"))
        assert later["soc_pct"][0] is not None  # still seen by the core, so still dispatched
        # the simulator's 124 storage: discharge bound OutWRte in % of its 50 kW, never beyond 100 %
        assert points["124.StorCtl_Mod"] == 3  # hubctl's setpoint in force
        assert points["124.OutWRte"] is not None
        assert 0 < points["124.OutWRte"] <= 100.0
        assert points["role.power_kw"] is not None
        assert points["role.power_kw"] <= DEVICE_KW + 0.5
        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
        assert service.proc.returncode == 0, err.decode()
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.communicate()
        service.close()
        park.stop()
    journal = err.decode()
    assert (
        f"alpha-battery: the site config promises {PROMISED_KW:g} kW"
        " (companies.alpha.battery.max_discharge_kw, this device's share),"
        f" beyond the device's own bound of {DEVICE_KW:g} kW"
    ) in journal
    assert f"kW written: the device takes -{DEVICE_KW:g}..{DEVICE_KW:g} kW" in journal
    assert "no longer dispatches" not in journal
