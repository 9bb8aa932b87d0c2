"""The service's bookkeeping without I/O: the reading store (ages, frozen meters, the residual company),
debounced health, the quarter-hour meter."""

from __future__ import annotations

import logging
import math

import pytest

from hubctl.config import parse_config
from hubctl.control import Params, State, step
from hubctl.device_config import DeviceRole
from hubctl.devices import Reading
from hubctl.health import Health
from hubctl.health import State as H
from hubctl.modbus import DeviceProtocolError, DeviceUnavailableError
from hubctl.service import QuarterMeter
from hubctl.store import Layout, ReadingStore

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


def test_quarter_meter_closes_with_the_lowest_cap_and_its_source() -> None:
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
