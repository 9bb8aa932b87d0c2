"""The service's bookkeeping without I/O: the reading store (ages, frozen meters, the residual company),
debounced health, the quarter-hour meter, the devices' fallbacks (`FallbackKeeper`, fake devices), and
the cycle's points as the spool sink writes them (into a real spool file)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

import pytest

from hubctl.config.devices import Device as DeviceConfig
from hubctl.config.devices import DeviceRole
from hubctl.config.site import parse_config
from hubctl.core.control import step
from hubctl.core.failsafe import fallback_pv_limits
from hubctl.core.limits import NO_LIMITS, LimitClock
from hubctl.core.quarters import QuarterMeter
from hubctl.core.types import Decision, Overrides, Params, State
from hubctl.data.spool import Spool, SpoolBounds
from hubctl.devices.base import Device, FallbackResult, Reading, SetpointResult
from hubctl.devices.health import Health
from hubctl.devices.health import State as H
from hubctl.errors import DeviceError, DeviceProtocolError, DeviceUnavailableError
from hubctl.service.clock import Clock
from hubctl.service.cycle import Controller, OperatorSync
from hubctl.service.fallbacks import FallbackKeeper, FallbackTargets
from hubctl.service.sinks import CycleRecord, SpoolSink
from hubctl.service.store import Layout, ReadingStore
from hubctl.service.writer import SetpointWriter

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = {
    "park": {"import_limit_kw": 100, "export_limit_kw": 50},
    "companies": [
        {
            "id": "a",
            "pv": {"peak_kw": 80},
            "battery": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 50},
        },
        {"id": "b"},
    ],
    "devices": [
        {"id": "a-grid", "company": "a", "role": "grid_meter", "driver": "sunspec", "modbus": {"host": "h"}},
        {"id": "a-pv", "company": "a", "role": "pv", "driver": "sunspec", "modbus": {"host": "h", "port": 2}},
        {
            "id": "a-bat",
            "company": "a",
            "role": "battery",
            "driver": "sunspec",
            "modbus": {"host": "h", "port": 3},
        },
        {"id": "park", "role": "park_meter", "driver": "sunspec", "modbus": {"host": "h", "port": 4}},
    ],
}


def reading(device_id: str, role: DeviceRole, at: float, power: float, soc: float | None = None) -> Reading:
    values = {"power_kw": power, "soc_pct": soc}
    return Reading(device_id, role, at, values, {"W": power, "Wh": at}, {})


def test_layout_and_the_residual_company() -> None:
    cfg = parse_config(CONFIG)
    layout = Layout.from_config(cfg)
    assert layout.grid == (("a-grid",), ())
    assert layout.residual == 1  # b has no meter: park meter minus a
    assert layout.unmetered() == []
    store = ReadingStore(layout, stale_after_s=5)
    store.put(reading("a-grid", DeviceRole.GRID_METER, 10.0, -20.0))
    store.put(reading("park", DeviceRole.PARK_METER, 10.5, 30.0))
    store.put(reading("a-pv", DeviceRole.PV, 10.0, 60.0))
    store.put(reading("a-bat", DeviceRole.BATTERY, 2.0, 5.0, 50.0))  # too old to use
    snap = store.snapshot(1e9, 11.0)
    a, b = snap.companies
    assert a.grid_kw == -20.0
    assert a.grid_age_s == pytest.approx(1.0)
    assert b.grid_kw == pytest.approx(50.0)
    assert b.grid_age_s == pytest.approx(1.0)
    assert a.pv_kw == 60.0
    assert a.battery_kw is None  # not available, never 0
    assert a.soc_pct is None


@pytest.mark.parametrize(
    ("battery", "sent_at", "meter_at", "now", "behind"),
    [
        (
            [(10.0, 5.0)],
            10.2,
            10.6,
            11.0,
            True,
        ),  # read, written, then the meter: it may show what the reading does not
        ([(10.0, 5.0), (10.3, 5.0)], 10.2, 10.6, 11.0, True),  # read after the write too, but not moved yet
        ([(10.0, 5.0), (10.3, -40.0)], 10.2, 10.6, 11.0, False),  # moved after the write: it took it
        ([(10.0, 5.0)], 10.2, 10.1, 11.0, False),  # both from before the write
        ([(10.0, 5.0)], None, 10.6, 11.0, False),  # nothing written this run
        (
            [(10.0, 5.0)],
            10.2,
            10.6,
            12.3,
            False,
        ),  # the write is older than answer_s: the reading is the truth
    ],
)
def test_a_battery_reading_behind_its_meter_is_flagged(
    battery: list[tuple[float, float]], sent_at: float | None, meter_at: float, now: float, behind: bool
) -> None:
    store = ReadingStore(Layout.from_config(parse_config(CONFIG)), stale_after_s=5, answer_s=2.0)
    store.put(reading("park", DeviceRole.PARK_METER, 10.0, 40.0))
    for at, kw in battery:
        if sent_at is not None and at > sent_at:
            store.setpoint_written("a-bat", "battery", sent_at)
        store.put(reading("a-bat", DeviceRole.BATTERY, at, kw, 50.0))
    if sent_at is not None:
        store.setpoint_written("a-bat", "battery", sent_at)
        store.setpoint_written("a-pv", "pv_limit", sent_at + 0.2)  # a PV limit is not a battery's
    store.put(reading("a-grid", DeviceRole.GRID_METER, meter_at, -20.0))
    a, b = store.snapshot(1e9, now).companies
    assert a.battery_behind is behind
    assert b.battery_behind is False  # no battery


def test_a_frozen_meter_ages_like_a_silent_one() -> None:
    store = ReadingStore(Layout.from_config(parse_config(CONFIG)), stale_after_s=5)
    frozen = Reading("a-grid", DeviceRole.GRID_METER, 0.0, {"power_kw": 10.0}, {"W": 10.0, "Wh": 1.0}, {})
    for t in range(10):
        store.put(Reading("a-grid", DeviceRole.GRID_METER, float(t), frozen.values, frozen.point_values, {}))
    assert store.snapshot(1e9, 9.0).companies[0].grid_age_s == pytest.approx(9.0)
    params = Params.from_config(parse_config(CONFIG))
    decision, _ = step(store.snapshot(1.78e9, 9.0), State.initial(params), params)
    assert decision.mode == "failsafe"


def test_health_is_debounced_and_logs_transitions_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubctl.health")
    health = Health(["d"], fail_after=3, recover_after=2)
    err = DeviceUnavailableError("no answer")
    assert health.ok("d", 0) is H.OK
    assert health.failed("d", err, 1) is H.DEGRADED
    assert health.failed("d", err, 2) is H.DEGRADED
    assert health.failed("d", err, 3) is H.DOWN
    assert health.failed("d", err, 4) is H.DOWN
    assert health.ok("d", 5) is H.DOWN  # one answer is not a recovery
    assert health.ok("d", 6) is H.OK
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "down" in messages[0]
    assert "recovered after 3 s" in messages[1]
    assert health.failed("d", DeviceProtocolError("wrong map"), 7) is H.DOWN  # no retry can cure it


def test_quarter_meter_closes_with_the_mean_cap_and_its_source() -> None:
    params = Params.from_config(parse_config(CONFIG))
    store = ReadingStore(Layout.from_config(parse_config(CONFIG)), stale_after_s=5)
    meter = QuarterMeter()
    t0 = 900.0 * 1_978_000  # a quarter boundary
    decision, _ = step(store.snapshot(t0, 0.0), State.initial(params), params)
    for k in range(900):
        meter.add(t0 + k, 80.0 if k < 450 else 120.0, 1.0, decision)
    assert meter.close_before(t0 + 899) == []
    (q,) = meter.close_before(t0 + 900)
    assert q.mean_kw == pytest.approx(100.0)
    assert q.import_cap_kw == 100.0
    assert q.import_source == "contract"
    assert not q.over
    assert q.coverage == pytest.approx(1.0)
    meter.add(t0 + 900, None, 1.0, decision)
    (empty,) = meter.close_before(t0 + 1800)
    assert math.isnan(empty.mean_kw)
    assert empty.coverage == 0.0


# --- the devices' fallbacks ---------------------------------------------------------------------------------

NOON = 1782122400.0  # 2026-06-22 12:00 in Amsterdam


class FakeDevice(Device):
    """Records the fallbacks asked for; fails while `fail` is set."""

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.calls: list[float | None] = []
        self.fail: DeviceError | None = None

    async def _read(self) -> Reading:
        raise NotImplementedError

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:
        self.calls.append(pv_limit_kw)
        if self.fail is not None:
            raise self.fail
        return FallbackResult(self.id, configured=True, detail="configured", fallback_kw=pv_limit_kw)


class FakeClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def mono(self) -> float:
        return self.now


def keeper_setup() -> tuple[Any, dict[str, FakeDevice], Health, FakeClock, FallbackKeeper]:
    data = {
        **CONFIG,
        "devices": [
            *CONFIG["devices"],
            {
                "id": "a-pv2",
                "company": "a",
                "role": "pv",
                "driver": "sunspec",
                "modbus": {"host": "h", "port": 5},
            },
        ],
    }
    cfg = parse_config(data)
    devices = {d.id: FakeDevice(d) for d in cfg.devices}
    health = Health([d.id for d in cfg.devices], fail_after=1, recover_after=1)
    clock = FakeClock()
    keeper = FallbackKeeper(cfg, dict[str, Device](devices), health, clock, retry_s=60.0)
    return cfg, devices, health, clock, keeper


def test_fallbacks_are_written_to_batteries_and_inverters_once_they_answer() -> None:
    cfg, devices, health, _, keeper = keeper_setup()
    keeper.update(fallback_pv_limits(Params.from_config(cfg), NOON))  # park export cap 50 kW, margin 3 kW
    assert keeper.wanted == {"a-bat": 0.0, "a-pv": pytest.approx(23.5), "a-pv2": pytest.approx(23.5)}
    asyncio.run(keeper.step())
    assert all(d.calls == [] for d in devices.values())  # nobody answered yet
    for device_id in ("a-bat", "a-pv"):
        health.ok(device_id, 0.0)
    asyncio.run(keeper.step())
    asyncio.run(keeper.step())  # held: not written again
    assert devices["a-bat"].calls == [None]  # a battery's fallback takes no value: always 0 kW
    assert devices["a-pv"].calls == [pytest.approx(23.5)]
    assert devices["a-pv2"].calls == []  # still down at start ...
    assert devices["a-grid"].calls == devices["park"].calls == []  # meters have no fallback
    assert keeper.pending() == ["a-pv2"]
    health.ok("a-pv2", 1.0)  # ... and gets it when it answers
    asyncio.run(keeper.step())
    assert devices["a-pv2"].calls == [pytest.approx(23.5)]
    assert keeper.pending() == []


def test_a_failed_fallback_is_logged_once_and_tried_again_later(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubctl.service")
    _, devices, health, clock, keeper = keeper_setup()
    keeper.update([30.0, None])
    bat = devices["a-bat"]
    bat.fail = DeviceUnavailableError("no answer")
    health.ok("a-bat", 0.0)
    for t in (0.0, 1.0, 59.0, 61.0, 62.0):
        clock.now = t
        asyncio.run(keeper.step())  # never raises
    assert bat.calls == [None, None]  # at 0 s and after the 60 s retry time
    bat.fail = None
    clock.now = 122.0
    asyncio.run(keeper.step())
    assert keeper.pending() == ["a-pv", "a-pv2"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not be configured" in m for m in messages) == 1
    assert sum("configured after all" in m for m in messages) == 1


def test_fallbacks_are_written_again_after_an_outage_and_when_the_limits_change() -> None:
    _, devices, health, clock, keeper = keeper_setup()
    keeper.update([30.0, None])
    for device_id in ("a-bat", "a-pv", "a-pv2"):
        health.ok(device_id, 0.0)
    asyncio.run(keeper.step())
    health.failed("a-bat", DeviceUnavailableError("gone"), 1.0)
    asyncio.run(keeper.step())  # down: it may lose its settings (a power cut)
    health.ok("a-bat", 2.0)
    asyncio.run(keeper.step())
    assert devices["a-bat"].calls == [None, None]
    devices["a-pv"].fail = DeviceUnavailableError("busy")
    keeper.update([20.0, None])
    clock.now = 3.0
    asyncio.run(keeper.step())
    devices["a-pv"].fail = None
    keeper.update([10.0, None])  # a new value is tried at once, whatever the retry time
    asyncio.run(keeper.step())
    assert devices["a-pv"].calls == [15.0, 10.0, 5.0]
    assert devices["a-pv2"].calls == [15.0, 10.0, 5.0]


class FakeApi:
    """What `OperatorSync.apply` (and `Controller.overrides`) ask of the operator API."""

    def __init__(self, cfg: Any, overrides: Overrides) -> None:
        self.cfg = cfg
        self.revision = 1
        self.overrides = overrides

    def limit_clock(self, now: float) -> LimitClock:  # noqa: ARG002
        return LimitClock(self.cfg.park, {c.id: c for c in self.cfg.companies}, self.cfg.tz)

    def sharing(self, now: float) -> None:  # noqa: ARG002
        return None

    def current_overrides(self, now: float) -> Overrides:  # noqa: ARG002
        return self.overrides


def test_an_operators_lower_export_cap_lowers_the_fallbacks() -> None:
    cfg, _, _, _, keeper = keeper_setup()
    params = Params.from_config(cfg)
    controller = Controller(params, State.initial(params))  # as the gateway builds it
    fallbacks = FallbackTargets(keeper, controller, cfg.tz)
    fallbacks.update(NOON)  # what run() does at start
    assert keeper.wanted["a-pv"] == pytest.approx(23.5)  # (50 - 3) / 2
    api = FakeApi(cfg, Overrides(park_export_kw=20.0))  # an operator lowered the export cap over MQTT
    controller.api = api  # type: ignore[assignment]
    sync = OperatorSync(cfg, api, controller, None, fallbacks)  # type: ignore[arg-type]
    sync.apply(NOON)  # the control loop's call
    assert keeper.wanted["a-pv"] == pytest.approx(8.5)  # (20 - 3) / 2
    assert keeper.wanted["a-bat"] == 0.0


# --- the setpoint writer ------------------------------------------------------------------------------------


class LimitRecorder(FakeDevice):
    """Takes every PV limit and battery setpoint, records them."""

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.limits: list[float] = []

    async def _set_pv_limit(self, kw: float) -> SetpointResult:
        self.limits.append(kw)
        return SetpointResult(self.id, "pv_limit", kw, kw, kw)

    async def _set_battery(self, kw: float) -> SetpointResult:
        self.limits.append(kw)
        return SetpointResult(self.id, "battery", kw, kw, kw)


def test_a_lost_inverter_counts_at_its_full_share_against_its_companys_limit() -> None:
    """Company a: 80 kW peak on two inverters of 40 kW. A limit of 50 kW is 25 + 25; with a-pv2 down
    it could still give its 40 kW, so a-pv alone gets 10 kW and the company stays within 50 kW."""
    cfg, _, health, clock, _ = keeper_setup()
    devices = {d.id: LimitRecorder(d) for d in cfg.devices}
    writer = SetpointWriter(cfg, dict[str, Device](devices), health, clock)
    for device_id in devices:
        health.ok(device_id, 0.0)

    def decide(limit_kw: float) -> Decision:
        return Decision((0.0, None), (limit_kw, None), "normal", NO_LIMITS, {}, 0.0, 0.0, "test")

    asyncio.run(writer.apply(decide(50.0)))
    assert devices["a-pv"].limits == devices["a-pv2"].limits == [pytest.approx(25.0)]
    for t in (1.0, 2.0, 3.0):
        health.failed("a-pv2", DeviceUnavailableError("no answer"), t)
    asyncio.run(writer.apply(decide(50.0)))
    assert devices["a-pv"].limits[-1] == pytest.approx(10.0)
    asyncio.run(writer.apply(decide(30.0)))
    assert devices["a-pv"].limits[-1] == pytest.approx(0.0)  # never below 0
    assert devices["a-pv2"].limits == [pytest.approx(25.0)]  # nothing written to the lost one


# --- the cycle's points: the controller's available PV and its flag -----------------------------------------


def test_the_cycle_points_carry_the_available_pv_and_whether_it_is_an_estimate(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    spool = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_age_s=None))
    sink = SpoolSink(spool, cfg)

    def record(available: tuple[float | None, ...], estimated: tuple[bool, ...]) -> CycleRecord:
        return CycleRecord(
            ts_utc=NOON, mode="normal", reason="test", park_grid_kw=-40.0, import_cap_kw=100.0,
            export_cap_kw=50.0, cap_source="", grid_kw=(-50.0, 10.0), pv_kw=(60.0, None),
            battery_kw=(0.0, None), soc_pct=(50.0, None), setpoint_kw=(0.0, None), pv_limit_kw=(60.0, None),
            latency_ms=1.0, writes=0, failed_writes=0, down=(), pv_available_kw=available,
            pv_available_estimated=estimated,
        )  # fmt: skip

    sink.cycle(record((75.0, 0.0), (True, False)))  # a's inverter held back: the clear-sky estimate
    sink.cycle(record((60.0, 0.0), (False, False)))  # free: the reading
    sink.cycle(record((), ()))  # a fail-safe cycle: no estimate at all
    spool.commit()
    lines = spool.peek(1000).lines
    park = [line for line in lines if line.startswith("park,")]
    company_a = [line for line in lines if line.startswith("company,company=a,")]
    assert len(park) == len(company_a) == 3
    assert "pv_available_estimated=1.0,pv_available_kw=75.0" in park[0]
    assert "pv_available_estimated=1.0,pv_available_kw=75.0" in company_a[0]
    assert "pv_available_estimated=0.0,pv_available_kw=60.0" in park[1]
    assert "pv_available" not in park[2]
    assert "pv_available" not in company_a[2]
    company_b = [line for line in lines if line.startswith("company,company=b,")]
    assert "pv_available_estimated=0.0,pv_available_kw=0.0" in company_b[0]  # no PV: 0 kW, never estimated
