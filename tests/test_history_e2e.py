"""The gateway keeps its load history across a restart: `hubctl run` against `hubctl simulate` at 60x
over real Modbus TCP, with a state directory.

Two quarter-hours complete and are in `history.sqlite` while the service runs; SIGTERM; the second
start says what it loaded (the two quarters), and a third quarter joins them on the same day;
`hubctl history show` then counts three.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import Children, leak_fixture, read_until

from hubctl.config.site import load_config
from hubctl.core.types import Params
from hubctl.data.history_store import FILE_NAME, read_history
from hubctl.errors import HistoryStoreError
from simulators.faults import control_request

pytestmark = pytest.mark.slow  # about 50 s: three simulated quarter-hours at 60x

REPO = Path(__file__).resolve().parents[1]
SPEED = 60.0  # a quarter-hour in 15 s
START_UTC = dt.datetime(2026, 6, 22, 12, 14, tzinfo=dt.timezone(dt.timedelta(hours=2))).timestamp()
DAY = dt.date(2026, 6, 22)
SCENARIO = """\
name: history-e2e
start: "2026-06-22T12:14:00+02:00"
timezone: Europe/Amsterdam
duration_s: 7200
step_s: 1
profiles: profiles.csv
park: {import_limit_kw: 400, export_limit_kw: 200}
companies:
  - id: alpha
    pv: {peak_kw: 60, ramp_pct_per_s: 10}
    battery: {capacity_kwh: 100, max_charge_kw: 30, max_discharge_kw: 30, soc_pct: 50, ramp_pct_per_s: 50}
  - id: beta
sharing: {key: pro_rata, interval_s: 900}
"""
# loads that wobble a little, so that every meter's reading keeps changing, as real meters' do
PROFILES = "t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw\n" + "".join(
    f"{t},{40 + (t // 7) % 3},30,{25 + (t // 11) % 2},0\n" for t in range(0, 7200, 5)
)

_CHILDREN = Children()
no_leaks = leak_fixture(_CHILDREN)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return _CHILDREN.hubctl(*args)


def _start_service(config: Path, simulated_utc: float) -> subprocess.Popen[bytes]:
    start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(simulated_utc))
    return _spawn("run", "--config", str(config), "--speed", str(SPEED), "--start-utc", start)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    return err.decode()


def _quarters(path: Path, params: Params) -> list[int]:
    """The slots of DAY the store holds for the park (every company measured)."""
    try:
        history, _ = read_history(path, params)
    except (FileNotFoundError, HistoryStoreError):
        return []  # not written yet
    rec = history.days.get(DAY)
    if rec is None:
        return []
    return [s for s, v in enumerate(rec.park_load_kw()) if not math.isnan(v)]


def _wait_for_quarters(
    proc: subprocess.Popen[bytes], path: Path, params: Params, count: int, timeout_s: float
) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        slots = _quarters(path, params)
        if len(slots) >= count:
            return slots
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"hubctl run exited {proc.returncode}: {err.decode()}")
        time.sleep(0.25)
    pytest.fail(f"history.sqlite did not hold {count} quarter-hours within {timeout_s} s: {slots}")


def test_the_history_survives_a_restart_and_grows(tmp_path: Path) -> None:
    (tmp_path / "profiles.csv").write_text(PROFILES, encoding="utf-8")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    config = tmp_path / "site.yaml"
    state = tmp_path / "state"
    park = _spawn(
        "simulate", "--scenario", str(scenario), "--speed", str(SPEED), "--write-config", str(config)
    )
    try:
        lines = read_until(park, "ready", 30)
        control_port = int(next(x for x in lines if x.startswith("control")).split()[1].rsplit(":", 1)[1])
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        data["service"] = {"revert_s": 10.0, "ready_grace_s": 60.0}
        data["storage"] = {"dir": str(state)}
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        params = Params.from_config(load_config(config))
        path = state / FILE_NAME

        def park_now() -> float:  # the park's wall clock: the scenario start plus its simulated seconds
            answer = asyncio.run(control_request("127.0.0.1", control_port, {"op": "status"}))
            return START_UTC + float(answer["t_s"])

        service = _start_service(config, park_now())
        first = _wait_for_quarters(service, path, params, 2, 45)
        err = _stop(service)
        assert f"load history: nothing stored in {path} yet" in err
        assert "Traceback" not in err
        stored = _quarters(path, params)
        assert len(stored) >= 2
        assert stored[:2] == first[:2]
        assert stored[1] == stored[0] + 1  # two quarter-hours in a row of the same day

        # the second start loads them and adds a third to the same day
        service = _start_service(config, park_now())
        grown = _wait_for_quarters(service, path, params, len(stored) + 1, 30)
        err = _stop(service)
        assert (
            f"load history: 1 day(s) loaded from {path}, {DAY} to {DAY}, {len(stored)} quarter-hours; "
            "days with at least half of them: working 0, saturday 0, sunday 0, holiday 0" in err
        ), err
        assert "Traceback" not in err
        assert grown[: len(stored)] == stored
        final = _quarters(path, params)
        shown = subprocess.run(
            [sys.executable, "-m", "hubctl.cli", "history", "show", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"  1 day, {DAY} to {DAY} (local dates, Europe/Amsterdam)" in shown.stdout
        assert f"  {len(final)} quarter-hours measured" in shown.stdout
        assert len(final) >= 3
    finally:
        park.send_signal(signal.SIGTERM)
        park.communicate(timeout=10)
