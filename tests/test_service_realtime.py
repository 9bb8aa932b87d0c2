"""`hubctl run` in real time: speed 1, the OS clock, the jobs on APScheduler, as on a gateway.

Every other service test runs accelerated (`--speed`/`--start-utc`), where there is no scheduler
and the control loop closes quarters, settles the ledger and renews the fallbacks itself
(`hubctl.service.jobs`). These tests run `hubctl run` without those options, as a subprocess
against `hubctl simulate --speed 1` over real Modbus TCP, so the quarter-hour close, the ledger's
settlement and the daily fallback renewal run on APScheduler's cron triggers with the OS clock.

To reach a quarter boundary or local midnight without waiting for one, the service runs under
libfaketime (Debian `libfaketime`; `make test` installs it): `LD_PRELOAD` of `libfaketimeMT.so.1`
with `FAKETIME="@2026-06-01 03:14:40"` starts the process's wall clock (`time.time`, `datetime.now`:
what `Clock.utc` and APScheduler read) at that moment, read on the process's own zone (`TZ`; here
09:14:40 CEST), and it runs on at the real rate from there. `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves
`CLOCK_MONOTONIC` alone, so asyncio's loop, `Clock.mono` and APScheduler's `call_later` see the
real monotonic clock (faked too, it also works, at the same rate, but nothing needs it). The MT
build because the service has threads (the spool's commit thread); `FAKETIME_NO_CACHE` is not
needed, as `FAKETIME` never changes during a run. The simulator and this test are not faked: the
devices' values do not depend on the date, and the test reads the service's time from its trace.
The host's zone (`TZ`) is New York, neither UTC nor the site's Europe/Amsterdam, so a journal line
on the host's clock would show.

- The quarter: started 20 s before 09:15 CEST with a mosquitto and a VictoriaMetrics; an operator
  lowers the import cap over MQTT before the boundary. At 09:15:02 the quarter job closes the
  quarter 09:00-09:15: the journal's quarter line (the site's zone, the mean cap of both caps, both
  sources), the ledger's row in the state directory, and its point in VictoriaMetrics say the same.
- Midnight: started 10 s before local midnight with a day schedule for the day that ends (a
  10 kW export cap): the devices' fallback PV limit is that day's at start, still that day's after
  midnight, and renewed by the daily job at 00:00:30 (yesterday's schedule no longer counts), in
  the SunSpec 704 inverter's own register; the journal has the quarter 23:45 and the day's summary.
- A job that raises (in process, the real scheduler): APScheduler logs it at ERROR with the
  traceback (the journal shows apscheduler's warnings and errors), the job stays scheduled, and the
  quarter job still settles the ledger.

Each subprocess run is bounded (about 25 s and 45 s of wall time).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
import yaml
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from support import MOSQUITTO, Mosquitto, TraceTail
from test_service_e2e import (  # pytest puts tests/ on sys.path
    _CHILDREN,
    Park,
    _read_points,
    no_leaks,  # noqa: F401 - autouse fixture: no child, socket or connection left behind
)

from hubctl.config.site import load_config, parse_config
from hubctl.core.failsafe import fallback_pv_limits
from hubctl.core.quarters import ParkStep, QuarterMeter
from hubctl.core.types import CompanyReading, Params, Snapshot, State
from hubctl.data.ledger import Ledger
from hubctl.devices.health import Health
from hubctl.service.clock import Clock
from hubctl.service.cycle import Controller
from hubctl.service.fallbacks import FallbackKeeper, FallbackTargets
from hubctl.service.jobs import Jobs

if TYPE_CHECKING:
    from test_influx import VictoriaMetrics

    from hubctl.core.quarters import QuarterRecord

REPO = Path(__file__).resolve().parents[1]
FAKETIME_LIB = next((str(p) for p in sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), None)
needs_faketime = pytest.mark.skipif(
    FAKETIME_LIB is None, reason="libfaketime not installed (apt-get install libfaketime)"
)
HOST_TZ = "America/New_York"
SITE_TZ = dt.timezone(dt.timedelta(hours=2))  # Europe/Amsterdam in June (CEST)
# little sun, a steady load: the park imports about 120 kW against the contracted 150 kW
PROFILES = "t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw,gamma.load_kw,gamma.pv_kw\n" + "".join(
    f"{t},{60 + (t // 7) % 3},20,{50 + (t // 11) % 2},10,{40 + (t // 5) % 2},0\n" for t in range(0, 7200, 5)
)
# midnight: a little PV export (the simulator's profile is what counts, not the hour), within the 40 kW cap
EXPORTING = "t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw,gamma.load_kw,gamma.pv_kw\n" + "".join(
    f"{t},{10 + (t // 7) % 3},30,{10 + (t // 11) % 2},20,{10 + (t // 5) % 2},10\n" for t in range(0, 7200, 5)
)
OPERATOR_IMPORT_KW = 100.0  # below the contracted 150 kW


def _utc(local: str) -> float:
    """A CEST wall-clock time "2026-06-01 09:15:00" as UTC seconds."""
    return dt.datetime.fromisoformat(local).replace(tzinfo=SITE_TZ).timestamp()


def _faketime(ts_utc: float) -> str:
    """libfaketime's start moment for `ts_utc`: it reads the time on the process's own zone (`TZ`)."""
    return "@" + dt.datetime.fromtimestamp(ts_utc, ZoneInfo(HOST_TZ)).strftime("%Y-%m-%d %H:%M:%S")


class RealTimeService:
    """`hubctl run --config ...` at speed 1 under libfaketime from `start_utc`: the journal (stderr)
    in a file, every cycle and quarter in a JSON-lines trace."""

    def __init__(self, tmp: Path, config: Path, start_utc: float, *extra: str) -> None:
        assert FAKETIME_LIB is not None
        self.trace = tmp / "trace.jsonl"
        self.journal = tmp / "journal.txt"
        env = {
            **os.environ,
            "LD_PRELOAD": FAKETIME_LIB,
            "FAKETIME": _faketime(start_utc),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "TZ": HOST_TZ,
        }
        with self.journal.open("wb") as journal:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubctl.cli", "run", "--config", str(config),
                 "--trace", str(self.trace), *extra],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=journal, env=env,
            )  # fmt: skip
        _CHILDREN.procs.append(self.proc)
        self.tail = TraceTail(self.trace)
        self.records = self.tail.records

    def poll(self) -> list[dict[str, Any]]:
        """New trace records since the last call (also collected in `records`)."""
        return self.tail.poll()

    def wait_for(self, what: str, predicate: Any, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in self.poll():
                if predicate(record):
                    return record
            if self.proc.poll() is not None:
                pytest.fail(f"hubctl run exited {self.proc.returncode} waiting for {what}: {self.log()}")
            time.sleep(0.02)
        pytest.fail(f"no {what} within {timeout_s} s; journal: {self.log()[-3000:]}")

    def cycle_at(self, ts_utc: float, timeout_s: float) -> dict[str, Any]:
        """The first cycle at or after `ts_utc` on the service's clock."""
        return self.wait_for(
            f"a cycle at {ts_utc}", lambda r: r["kind"] == "cycle" and r["ts_utc"] >= ts_utc, timeout_s
        )

    def log(self) -> str:
        return self.journal.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> str:
        """SIGTERM; the journal once it exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        text = self.log()
        assert self.proc.returncode == 0, text[-3000:]
        assert "Traceback" not in text, text
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _edit_config(config: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Merge `sections` into the site config's sections of those names."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    for name, section in sections.items():
        data[name] = {**data.get(name, {}), **section}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")


async def _operator_import_limit(port: int, site: str, kw: float, timeout_s: float) -> dict[str, Any]:
    """Wait for the service's retained `online`, then set the park's import limit; its reply."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"hubctl/{site}/status", qos=1)
        await client.subscribe(f"hubctl/{site}/result", qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if message.topic.matches(f"hubctl/{site}/status") and message.payload == b"online":
                    await client.publish(
                        f"hubctl/{site}/set/import_limit_kw", json.dumps({"value": kw}), qos=1
                    )
                elif message.topic.matches(f"hubctl/{site}/result"):
                    return dict(json.loads(bytes(message.payload)))
    raise AssertionError("unreachable")


@needs_faketime
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
def test_the_quarter_job_closes_the_quarter_on_the_os_clock(tmp_path: Path, vm: VictoriaMetrics) -> None:
    quarter_utc, boundary_utc = _utc("2026-06-01 09:00:00"), _utc("2026-06-01 09:15:00")
    broker = Mosquitto(tmp_path)
    broker.start()
    park = Park(tmp_path, PROFILES, battery_kw=(60, 30), speed=1.0)
    state = tmp_path / "state"
    _edit_config(park.config_path, {"storage": {"dir": str(state), "influx": {"backoff_max_s": 1.0}}})
    service = RealTimeService(
        tmp_path, park.config_path, boundary_utc - 20, "--mqtt-url", broker.url, "--influx-url", vm.url
    )
    try:
        first = service.wait_for("a cycle", lambda r: r["kind"] == "cycle", 15)
        assert boundary_utc - 20 <= first["ts_utc"] < boundary_utc - 5, (
            "the service's clock is not the fake one"
        )
        assert first["import_cap_kw"] == 150.0
        # the operator lowers the park's import cap before the boundary, over the real broker
        reply = asyncio.run(_operator_import_limit(broker.port, park.config.site.id, OPERATOR_IMPORT_KW, 10))
        assert reply["ok"], reply
        lowered = service.wait_for(
            "the operator's cap",
            lambda r: r["kind"] == "cycle" and r["import_cap_kw"] == OPERATOR_IMPORT_KW,
            5,
        )
        assert lowered["ts_utc"] < boundary_utc, "the operator's cap came after the boundary: nothing to see"

        # 09:15:02 on the OS clock: the quarter job closes the quarter 09:00-09:15 and settles the ledger
        closed = service.wait_for(
            "the quarter 09:00", lambda r: r["kind"] == "quarter" and r["start_utc"] == quarter_utc, 30
        )
        cycles = [r for r in service.records if r["kind"] == "cycle"]
        assert cycles[-1]["ts_utc"] >= boundary_utc  # closed after its end, not before
        deadline = time.monotonic() + 5
        while (row := _ledger_quarter(state / "ledger.sqlite", quarter_utc)) is None:
            assert time.monotonic() < deadline, "the ledger never settled the quarter 09:00"
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not (series := vm.export('{__name__=~"quarter_.*"}')):
            assert time.monotonic() < deadline, "the ledger's quarter never reached VictoriaMetrics"
            time.sleep(0.2)
        service.cycle_at(boundary_utc + 4, 5)
        journal = service.stop()
    finally:
        service.kill()
        park.stop()
        broker.stop()

    # the journal's line: the quarter's start on the site's clock (the host is in New York)
    lines = [line for line in journal.splitlines() if " quarter " in line and ": mean " in line]
    assert len(lines) == 1, journal  # one quarter closed: 09:15-09:30 is still open
    found = re.search(
        r"quarter 2026-06-01 09:00 CEST: mean ([\d.]+) kW, mean import cap ([\d.]+) kW \(([^)]*)\)", lines[0]
    )
    assert found is not None, lines[0]
    mean_kw, cap_kw, sources = float(found[1]), float(found[2]), found[3]
    assert OPERATOR_IMPORT_KW < cap_kw < 150.0  # the contract's cap, then the operator's
    assert set(sources.split(" + ")) == {"contract", "operator"}
    # the ledger's row in the state directory: the same quarter, the same mean and caps
    assert row["grid_kw"] == pytest.approx(mean_kw, abs=0.051)
    assert row["grid_kw"] == pytest.approx(closed["mean_kw"], abs=1e-6)
    assert row["import_limit_kw"] == pytest.approx(cap_kw, rel=1e-3)
    assert set(row["import_source"].split(" + ")) == {"contract", "operator"}
    # covered: the cycles from the start (20 s before the boundary) up to it, in real seconds
    first_ts = cycles[0]["ts_utc"]
    assert row["covered_s"] == pytest.approx(boundary_utc - first_ts, abs=2.0)
    # VictoriaMetrics: the quarter's point, at the quarter's start, with the ledger's values
    grid = {labels: values for (name, labels), values in series.items() if name == "quarter_grid_kw"}
    assert len(grid) == 1, series.keys()
    [(labels, values)] = grid.items()
    assert [ts for ts, _ in values] == [int(quarter_utc * 1000)]
    assert values[0][1] == pytest.approx(row["grid_kw"])
    assert dict(labels)["site"] == park.config.site.id
    assert dict(labels)["import_source"] == row["import_source"]


def _ledger_quarter(path: Path, start_utc: float) -> dict[str, Any] | None:
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM quarters WHERE start_utc = ?", (start_utc,)).fetchone()
    except sqlite3.OperationalError:  # the schema not created yet
        return None
    finally:
        db.close()
    return None if found is None else dict(found)


def _fallback_pct(config: Path) -> float | None:
    """The 704 inverter's own fallback limit (% of its rating) as it holds it."""
    return asyncio.run(_read_points(config, "gamma-pv"))["704.WMaxLimPctRvrt"]


@needs_faketime
def test_the_daily_job_renews_the_fallbacks_after_local_midnight(tmp_path: Path) -> None:
    midnight_utc = _utc("2026-06-02 00:00:00")
    park = Park(tmp_path, EXPORTING, (10, 5), gamma_pv_kw=40.0, speed=1.0)
    assert next(d for d in park.config.devices if d.id == "gamma-pv").driver == "sunspec"
    # a day-ahead call for the day that ends: a 10 kW export cap from 12:00 to 14:00 (the contract: 40 kW)
    windows = [{"start": "12:00", "end": "14:00", "export_limit_kw": 10.0}]
    _edit_config(park.config_path, {"park": {"schedules": [{"date": "2026-06-01", "windows": windows}]}})
    params = Params.from_config(load_config(park.config_path))
    before = fallback_pv_limits(params, midnight_utc - 60)[2]
    after = fallback_pv_limits(params, midnight_utc + 60)[2]
    assert before is not None
    assert after is not None
    assert before < after / 2  # tells them apart
    before_pct, after_pct = before / 40.0 * 100, after / 40.0 * 100
    service = RealTimeService(tmp_path, park.config_path, midnight_utc - 10)
    try:
        first = service.wait_for("a cycle", lambda r: r["kind"] == "cycle", 15)
        assert first["ts_utc"] < midnight_utc - 2, "the service started too late to see the old day"
        deadline = time.monotonic() + 10
        while (held := _fallback_pct(park.config_path)) != pytest.approx(before_pct, abs=0.011):
            assert time.monotonic() < deadline, f"the day's fallback never reached the inverter: {held} %"
            time.sleep(0.1)
        # after midnight, before the daily job: the old day's fallback still (nothing else renews it)
        service.cycle_at(midnight_utc + 15, 30)
        assert _fallback_pct(park.config_path) == pytest.approx(before_pct, abs=0.011)
        assert service.records[-1]["ts_utc"] < midnight_utc + 28  # read before the job's 00:00:30
        # 00:00:30 on the OS clock: the daily job renews it without yesterday's schedule
        service.cycle_at(midnight_utc + 30.5, 20)
        deadline = time.monotonic() + 5
        while (held := _fallback_pct(park.config_path)) != pytest.approx(after_pct, abs=0.011):
            assert time.monotonic() < deadline, f"the daily job never renewed the fallback: {held} %"
            time.sleep(0.1)
        journal = service.stop()
    finally:
        service.kill()
        park.stop()
    # the journal: the last quarter of the day on the site's clock, the day's summary, the renewal
    wanted = (
        "quarter 2026-06-01 23:45 CEST: mean",
        "day closed: 1 quarter-hours",
        "gamma-pv: PV falls back to",
    )
    day = [line for line in journal.splitlines() if any(w in line for w in wanted)]
    assert len(day) == 4, journal  # the renewal: once at start, once by the daily job
    assert wanted[2] in day[0]
    assert f"{before_pct:.1f} % of 40 kW" in day[0]
    assert [w in line for w, line in zip(wanted, day[1:], strict=True)] == [True] * 3, day
    assert f"{after_pct:.1f} % of 40 kW" in day[3]


class _Failing:
    """A telemetry sink whose quarter() raises once (a fault of ours in the quarter job)."""

    def __init__(self) -> None:
        self.quarters: list[QuarterRecord] = []
        self.fail = True

    def cycle(self, record: object) -> None:
        pass

    def quarter(self, record: QuarterRecord) -> None:
        if self.fail:
            self.fail = False
            raise RuntimeError("a sink's fault")
        self.quarters.append(record)

    def event(self, name: str, **data: object) -> None:
        pass

    def close(self) -> None:
        pass


CONFIG = {
    "park": {"import_limit_kw": 100, "export_limit_kw": 50},
    "companies": [{"id": "a"}, {"id": "b"}],
}


def test_a_job_that_raises_is_logged_and_stays_scheduled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(CONFIG)
    params = Params.from_config(cfg)
    controller = Controller(params, State.initial(params))
    clock = Clock()  # speed 1: the real wall clock, the scheduler's path
    fallbacks = FallbackTargets(FallbackKeeper(cfg, {}, Health([]), clock), controller, cfg.tz)
    meter = QuarterMeter()
    ledger = Ledger.from_config(tmp_path / "ledger.sqlite", cfg)
    sink = _Failing()
    jobs = Jobs(cfg, clock, controller, meter, [sink], ledger, fallbacks)
    # the last quarter, measured (the cycle's after-steps: the quarter meter and the ledger)
    start = (time.time() // 900 - 1) * 900
    for k in range(900):
        ts = start + k
        decision = controller.decide(
            Snapshot(ts, (CompanyReading(grid_kw=30.0), CompanyReading(grid_kw=20.0)))
        )
        meter.add(ts, 50.0, 1.0, decision)
        ledger.add_step(ts, [30.0, 20.0], 1.0, ParkStep(import_limit_kw=100.0, import_source="contract"))
    assert ledger.quarters() == []  # open until the quarter job settles it
    caplog.set_level(logging.WARNING, logger="apscheduler")  # the level `hubctl run` gives it
    caplog.set_level(logging.INFO)  # (last: it sets the capturing handler's level)

    async def run_now(job_id: str) -> dt.datetime | None:
        """Run the scheduled job now, through the scheduler; when it is due next."""
        scheduler = jobs.scheduler()
        try:
            done = asyncio.Event()
            scheduler.add_listener(lambda _: done.set(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            scheduler.get_job(job_id).modify(next_run_time=dt.datetime.now(cfg.tz))
            async with asyncio.timeout(5):
                await done.wait()
            next_run: dt.datetime | None = scheduler.get_job(job_id).next_run_time
            return next_run
        finally:
            scheduler.shutdown(wait=False)

    next_run = asyncio.run(run_now("quarter-close"))
    # APScheduler logged the fault with its traceback, at a level the journal shows
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert errors[0].name.startswith("apscheduler")
    assert "raised an exception" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "a sink's fault"
    # ... and kept the job: due again at the next quarter's close (hh:mm:02)
    assert next_run is not None
    assert next_run.timestamp() == start + 1800 + 2
    # the quarter's line was logged, and the ledger settled the quarter all the same
    assert any(r.getMessage().startswith("quarter ") for r in caplog.records if r.name == "hubctl.service")
    assert [(q.start_utc, q.covered_s) for q in ledger.quarters()] == [(start, 900.0)]
    ledger.close()
