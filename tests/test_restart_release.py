"""A routine restart: what the stop left on the devices is hubctl's own and is lifted (#13 items 4, 5).

Two `hubctl run`s in a row against one `hubctl simulate` (accelerated, as test_service_e2e.py,
whose helpers this reuses), with one state directory and a SIGTERM between. The park imports
(its loads exceed its PV), so the controller's decision for every inverter is "no limit". The
SIGTERM writes the fail-safe: every inverter limited so that export stays within the 40 kW cap
at zero load. Then

- beta's Huawei SUN2000 keeps that derating (40125 is persistent). Before #13 item 4 the second
  run read it back as an installer's limit ("installer limit ... found; hubctl will not exceed
  it") and beta's PV stayed at it for the whole run. Now the state directory's record says the
  value is hubctl's own, the installer had none, and the second run restores 100 %.
- gamma's SunSpec inverter with 704 lets hubctl's fail-safe limit lapse after its revert time
  and sits on its reversion limit (the fallback PV limit hubctl configured). Before #13 item 5 a
  decision of "no limit" wrote nothing to an inverter hubctl did not hold yet, so gamma's PV
  stayed at its fallback for the whole run. Now the first decision releases it (`WMaxLimPctEna`
  0 ends the fallback).

Both are checked where they show: the registers between the runs (read directly: the Huawei
dongle serves one client, so not while a run holds it), the PV output each company's inverter
reports in the second run's trace, and the journal.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING, Any

import yaml
from test_service_e2e import (  # pytest puts tests/ on sys.path
    Park,
    Service,
    _cycle,
    _read_points,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)

if TYPE_CHECKING:
    from pathlib import Path

BETA_PV_KW, GAMMA_PV_KW = 50.0, 40.0  # the sun each has (beta's peak is 60 kW, gamma's 40 kW)
# the park imports about 100 kW (loads 270 kW, PV 170 kW): no PV limit is needed; rows wobble so
# that every meter's reading keeps changing, as real meters' do
IMPORTING = "t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw,gamma.load_kw,gamma.pv_kw\n" + "".join(
    f"{t},{120 + (t // 7) % 3},80,{80 + (t // 11) % 2},{BETA_PV_KW:g},{70 + (t // 5) % 2},{GAMMA_PV_KW:g}\n"
    for t in range(0, 7200, 5)
)


def _stop(service: Service) -> str:
    service.proc.send_signal(signal.SIGTERM)
    _, err = service.proc.communicate(timeout=10)
    service.close()
    assert service.proc.returncode == 0, err.decode()
    return err.decode()


def _run(tmp: Path, park: Park, name: str) -> Service:
    directory = tmp / name
    directory.mkdir()
    return Service(directory, park)


def test_a_restart_takes_no_fail_safe_for_the_installers_and_lifts_what_the_stop_left(tmp_path: Path) -> None:
    park = Park(tmp_path, IMPORTING, (100.0, 40.0), gamma_pv_kw=GAMMA_PV_KW)
    data = yaml.safe_load(park.config_path.read_text(encoding="utf-8"))
    data["storage"] = {"dir": str(tmp_path / "state")}
    park.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    drivers = {d["id"]: d["driver"] for d in data["devices"]}
    assert drivers["beta-pv"] == "huawei-sun2000"
    assert drivers["gamma-pv"] == "sunspec"
    services: list[Service] = []
    try:
        first = _run(tmp_path, park, "run1")
        services.append(first)
        ready = first.wait_for("ready", lambda r: r.get("event") == "ready", 30)
        first.wait_for("normal, no PV limit", lambda r: _full_output(r, ready), 30)
        journal1 = _stop(first)
        assert "installer limit" not in journal1, journal1  # the installer set none

        # what the stop left: beta's derating (persistent), gamma's fail-safe limit lapsing to its
        # reversion limit (revert_s 10 s, 0.5 s at the park's speed)
        beta = asyncio.run(_read_points(park.config_path, "beta-pv"))
        left_pct = beta["active_power_derating_pct"]
        assert left_pct is not None
        assert left_pct < 100.0
        deadline = time.monotonic() + 10
        while True:
            gamma = asyncio.run(_read_points(park.config_path, "gamma-pv"))
            power, rvrt_pct = gamma["role.power_kw"], gamma["704.WMaxLimPctRvrt"]
            assert power is not None
            assert rvrt_pct is not None
            if power <= rvrt_pct / 100 * GAMMA_PV_KW + 0.5:  # on its reversion limit
                break
            assert time.monotonic() < deadline, gamma
            time.sleep(0.2)
        assert gamma["704.WMaxLimPctEnaRvrt"] == 1
        assert rvrt_pct / 100 * GAMMA_PV_KW < 0.5 * GAMMA_PV_KW

        second = _run(tmp_path, park, "run2")
        services.append(second)
        start = second.wait_for("the first cycle", _cycle, 30)
        assert start["pv_limit_kw"][1:] == [None, None], start  # the first decision: no PV limit
        # within the first cycles (the PV ramps at 10 % of its peak per second): full output; gamma
        # from the first cycle on, beta from its first reading (a Huawei dongle is slow to answer
        # after a connect: 1 s of quiet time, 20 s of the park's)
        gamma_full = second.wait_for("gamma at full output", lambda r: _full_output(r, start, 2), 30)
        assert gamma_full["ts_utc"] - start["ts_utc"] < 15.0, (start, gamma_full)
        seen = second.wait_for("beta's PV read", lambda r: _cycle(r) and r["pv_kw"][1] is not None, 30)
        assert seen["pv_kw"][1] < BETA_PV_KW - 10, seen  # at the derating the stop left
        beta_full = second.wait_for("beta at full output", lambda r: _full_output(r, seen, 1), 30)
        assert beta_full["ts_utc"] - seen["ts_utc"] < 20.0, (seen, beta_full)
        journal2 = _stop(second)
    finally:
        for service in services:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.communicate()
                service.close()
        park.stop()
    assert "beta-pv: installer limit" not in journal2, journal2
    assert f"beta-pv: active_power_derating_pct {left_pct:g} % is hubctl's own" in journal2, journal2
    assert "Traceback" not in journal2


def _full_output(record: dict[str, Any], after: dict[str, Any], company: int | None = None) -> bool:
    """A cycle after `after`, in normal mode, with beta's and gamma's PV (or `company`'s: 1 beta, 2
    gamma) near the sun they have."""
    if not _cycle(record) or record["ts_utc"] <= after["ts_utc"] or record["mode"] != "normal":
        return False
    sun = {1: BETA_PV_KW, 2: GAMMA_PV_KW}
    return all(
        (kw := record["pv_kw"][j]) is not None and kw > sun[j] - 2
        for j in ((1, 2) if company is None else (company,))
    )
