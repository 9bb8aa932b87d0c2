"""Operability (issue #12, item 9): what the journal and the commands show an operator.

- APScheduler's INFO lines (two per job run, and more at start and stop) stay out of the journal
  of `hubctl run`; its own INFO lines stay in. A real-time run, since only then does the service
  start the scheduler (accelerated runs drive the jobs from the control loop).
- The shutdown count tells the fail-safe writes that succeeded from those that failed: `hubctl
  run` against `hubctl simulate`, a battery's Modbus server gone just before SIGTERM.
- `hubctl export | head` ends quietly: a reader that closes the pipe early gets no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import yaml
from support import REPO
from test_service_e2e import STEP_PROFILES, Park, Service, no_leaks

from hubctl.data.points import park_point
from hubctl.data.spool import Spool

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["no_leaks"]  # the e2e module's leak check (children, sockets, Modbus) for these tests too

_SETTINGS_ENV = ("STATE_DIRECTORY", "HUBCTL_INFLUX_URL", "HUBCTL_MQTT_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC")


def test_the_journal_has_no_apscheduler_info_lines(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump({"park": {"import_limit_kw": 100}, "companies": [{"id": "alpha"}]}), encoding="utf-8"
    )
    log = tmp_path / "journal.log"
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubctl.cli", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # the scheduler starts after the service's start-up lines; two cycles later it has run
        deadline = time.monotonic() + 30
        while "no MQTT broker configured" not in log.read_text(encoding="utf-8"):
            assert proc.poll() is None, log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.1)
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("INFO hubctl.service: stopped: fail-safe setpoints") for line in lines), lines
    assert not [line for line in lines if line.startswith("INFO apscheduler")], lines


def test_the_shutdown_count_tells_failed_writes_from_written(tmp_path: Path) -> None:
    park = Park(tmp_path, STEP_PROFILES, battery_kw=(100, 40))
    service = Service(tmp_path, park)
    try:
        service.wait_for("ready", lambda r: r.get("event") == "ready", 30)
        # alpha's battery stops answering: once it counts as down, nothing is in flight to it, and its
        # fail-safe write at the stop (forced, down or not) fails
        park.request(op="inject", device="alpha-battery", fault="refuse")
        service.wait_for(
            "alpha-battery down", lambda r: r["kind"] == "cycle" and "alpha-battery" in r["down"], 15
        )
        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
        assert service.proc.returncode == 0, err.decode()
        service.poll()
    finally:
        service.close()
        park.stop()
    shutdown = [r for r in service.records if r.get("event") == "shutdown"]
    assert len(shutdown) == 1
    line = next(x for x in err.decode().splitlines() if "stopped: fail-safe setpoints written to" in x)
    match = re.search(r"written to (\d+) device\(s\), (\d+) failed, (\d+) still running", line)
    assert match is not None, line
    written, failed, running = (int(x) for x in match.groups())
    assert failed == 1, line  # alpha-battery
    assert (shutdown[0]["writes"], shutdown[0]["failed"], shutdown[0]["running"]) == (
        written,
        failed,
        running,
    )
    # every setpoint device counted once: two batteries and two PV inverters (alpha, beta; gamma has
    # neither); a Huawei dongle's write may still be running (its pauses between requests)
    assert written + failed + running == 4, line
    assert b"Traceback" not in err


def test_export_into_a_reader_that_closes_early_ends_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, clock=lambda: 1_782_000_000.0)
    # far more than a pipe holds (64 KiB): the export is still writing when the reader goes
    spool.append(park_point("park", 1_782_000_000.0 + i, grid_kw=float(i)) for i in range(20_000))
    spool.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubctl.cli", "export", "--spool", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()  # what `head -1` reads before it exits
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 1
    assert first.startswith(b"park,site=park grid_kw=0.0 ")
    assert b"Traceback" not in err, err.decode()
    assert b"BrokenPipeError" not in err, err.decode()
    assert err == b"", err.decode()
