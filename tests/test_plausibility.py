"""Plausibility of meter readings (`hubctl.core.plausibility`): table tests and hypothesis properties
of the pure screen, then the reading store applying it (a lie goes stale, and the core fail-safe)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubctl.config.devices import DeviceRole
from hubctl.config.site import parse_config
from hubctl.core.control import step
from hubctl.core.plausibility import (
    CommonLoad,
    MeterBounds,
    Screen,
    Verdict,
    bounds_for,
    follow_common,
    meter_bounds,
    screen,
)
from hubctl.core.types import Params, State
from hubctl.devices.base import Reading
from hubctl.service.store import Layout, ReadingStore

B = MeterBounds(-300.0, 400.0, 200.0)  # step 100 kW


def run(values: list[float], witness: list[float | None] | None = None) -> list[Verdict]:
    state, out = Screen(), []
    for k, v in enumerate(values):
        verdict, state = screen(B, state, v, None if witness is None else witness[k], 10.0)
        out.append(verdict)
    return out


T, S, R, C = Verdict.TAKEN, Verdict.SUSPECT, Verdict.OUT_OF_RANGE, Verdict.CONTRADICTED


@pytest.mark.parametrize(
    ("values", "verdicts"),
    [
        ([50, 60, 140, 230], [T, T, T, T]),  # a ramp in steps within 100 kW
        ([50, 400.5, 50], [T, R, T]),  # out of range
        ([50, 1e9, float("nan"), float("inf"), 50], [T, R, R, R, T]),
        ([-300, -301], [T, R]),
        ([50, 300, 50, 55], [T, S, T, T]),  # a spike: never taken, the next reading is
        ([50, 300, 305, 310], [T, S, T, T]),  # a real step: taken at its second reading
        ([50, 300, 180, 185], [T, S, S, T]),  # a suspect that moved on: a new suspect
        ([300], [T]),  # the first reading has nothing to step from
    ],
)
def test_screen_table(values: list[float], verdicts: list[Verdict]) -> None:
    assert run(values) == verdicts


@pytest.mark.parametrize(
    ("values", "witness", "verdicts"),
    [
        ([50, 300], [None, 295], [T, T]),  # the park meter agrees: the step is taken at once
        ([50, 300, 300, 300], [None, 50, 50, 50], [T, C, C, C]),  # it contradicts: never taken
        ([50, 300, 300], [None, 50, None], [T, C, S]),  # the witness gone: a suspect again
        ([50, 60], [None, 400], [T, T]),  # small moves are not judged by the witness
    ],
)
def test_the_park_meter_as_witness(
    values: list[float], witness: list[float | None], verdicts: list[Verdict]
) -> None:
    assert run(values, witness) == verdicts


steady = st.floats(-250, 350)


@given(start=steady, moves=st.lists(st.floats(-99, 99), min_size=1, max_size=30))
def test_moves_within_the_step_are_always_taken(start: float, moves: list[float]) -> None:
    values = [start]
    for m in moves:
        values.append(min(max(values[-1] + m, B.low_kw), B.high_kw))
    assert set(run(values)) == {T}


@given(level=steady, spike=st.floats(-300, 400), after=st.integers(1, 5))
def test_a_single_spike_is_never_taken(level: float, spike: float, after: int) -> None:
    verdicts = run([level, spike] + [level] * after)
    if abs(spike - level) > B.step_kw:
        assert verdicts[1] is not T
    assert verdicts[2:] == [T] * after


@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
def test_nothing_out_of_range_is_ever_taken(values: list[float]) -> None:
    for v, verdict in zip(values, run(values), strict=True):
        if verdict is T:
            assert B.low_kw <= v <= B.high_kw


@given(level=st.floats(-100, 100), beyond=st.floats(0.01, 200), repeats=st.integers(1, 50))
def test_a_step_the_park_meter_contradicts_is_never_taken(level: float, beyond: float, repeats: int) -> None:
    lie = level + B.step_kw + beyond
    verdicts = run([level] + [lie] * repeats, [None] + [level] * repeats)
    assert T not in verdicts[1:]


def test_bounds_from_the_connection_and_the_devices() -> None:
    assert bounds_for([500.0, 200.0], 300.0, 100.0) == MeterBounds(-2800.0, 2600.0, 500.0)
    assert bounds_for([100.0], 900.0, 400.0) == MeterBounds(-7400.0, 6900.0, 1300.0)
    assert bounds_for([], 0.0, 0.0) is None  # nothing tells the size: not screened


CFG: dict[str, Any] = {
    "park": {"import_limit_kw": 500, "export_limit_kw": 200},
    "companies": [
        {"id": "a", "pv": {"peak_kw": 300}, "import_limit_kw": 150},
        {"id": "b", "battery": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 60}},
    ],
    "devices": [
        {"id": "a-grid", "company": "a", "role": "grid_meter", "driver": "sunspec", "modbus": {"host": "h"}},
        {"id": "b-grid", "company": "b", "role": "grid_meter", "driver": "sunspec", "modbus": {"host": "h"}},
        {"id": "pm", "role": "park_meter", "driver": "sunspec", "modbus": {"host": "h"}},
    ],
}


def test_meter_bounds_per_device() -> None:
    bounds = meter_bounds(parse_config(CFG))
    assert bounds["a-grid"] == MeterBounds(-2800.0, 2500.0, 500.0)  # the park's caps, its PV
    assert bounds["b-grid"] == MeterBounds(-2560.0, 2550.0, 500.0)
    assert bounds["pm"] == MeterBounds(-2860.0, 2550.0, 500.0)


def meter(device_id: str, at: float, power: float) -> Reading:
    role = DeviceRole.PARK_METER if device_id == "pm" else DeviceRole.GRID_METER
    return Reading(device_id, role, at, {"power_kw": power}, {"W": power, "Wh": at}, {})


def test_a_lying_meter_goes_stale_and_the_core_fail_safe(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubctl.service")
    group = {**CFG, "devices": CFG["devices"][:2]}  # no park meter: no witness
    cfg = parse_config(group)
    params = Params.from_config(cfg)
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    for t in range(3):
        store.put(meter("a-grid", t, -40.0 - t))
        store.put(meter("b-grid", t, 20.0 + t))
    for t in range(3, 12):  # a-grid now reads +10^9 kW
        store.put(meter("a-grid", t, 1e9 + t))
        store.put(meter("b-grid", t, 20.0 + t))
    snap = store.snapshot(1.78e9, 11.0)
    assert snap.companies[0].grid_kw == pytest.approx(-42.0)  # the last plausible one, now 9 s old
    assert snap.companies[0].grid_age_s == pytest.approx(9.0)
    decision, _ = step(snap, State.initial(params), params)
    assert decision.mode == "failsafe"
    assert "a" in decision.reason
    assert store.rejected == {"a-grid": 9}
    warnings = [r for r in caplog.records if "implausible" in r.getMessage()]
    assert len(warnings) == 1  # once per episode
    assert "out of range" in warnings[0].getMessage()
    store.put(meter("a-grid", 12.0, -41.0))
    assert store.snapshot(1.78e9, 12.0).companies[0].grid_age_s == 0.0
    assert any("plausible again" in r.getMessage() for r in caplog.records)


def test_the_park_meter_contradicts_a_sub_meter_s_jump_for_good() -> None:
    cfg = parse_config(CFG)
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    for t in range(3):  # a -40, b +20, the park meter +10 (a 30 kW common load)
        store.put(meter("pm", t, 10.0))
        store.put(meter("a-grid", t, -40.0))
        store.put(meter("b-grid", t, 20.0))
        store.snapshot(1.78e9, t)
    for t in range(3, 10):  # a-grid jumps to +400; the park meter shows no such thing
        store.put(meter("pm", t, 10.0 + 0.1 * t))
        store.put(meter("a-grid", t, 400.0 + 0.1 * t))
        store.put(meter("b-grid", t, 20.0 + 0.1 * t))
    snap = store.snapshot(1.78e9, 9.0)
    assert store.latest["a-grid"].values["power_kw"] == -40.0  # never taken: a-grid is stale
    # the fresh park meter stands in for it: the park meter less b and the common load
    assert snap.companies[0].grid_from_park_meter
    assert snap.companies[0].grid_kw == pytest.approx(10.9 - 20.9 - 30.0)
    # a real step, which the park meter shows too, is taken at once
    store.put(meter("pm", 10.0, 420.0))
    store.put(meter("a-grid", 10.0, 370.0))
    assert store.snapshot(1.78e9, 10.0).companies[0].grid_kw == 370.0


def follow(measured: list[float | None]) -> list[float | None]:
    """The common load in use after each measurement, one a second, tolerance 5 kW, hold 5 s."""
    state, out = CommonLoad(), []
    for t, m in enumerate(measured):
        state = follow_common(state, m, float(t), 5.0, 5.0)
        out.append(state.kw)
    return out


@pytest.mark.parametrize(
    ("measured", "in_use"),
    [
        ([40, 42, 39, 44], [40, 42, 39, 44]),  # drift within the tolerance: followed at once
        ([40, 240, 40, 40], [40, 40, 40, 40]),  # one measurement that straddled a step: not adopted
        ([40, 240, 240, 240, 240, 240, 240], [40, 40, 40, 40, 40, 40, 240]),  # a jump that held 5 s
        ([40, 240, 242, 238, 241, 239, 240], [40, 40, 40, 40, 40, 40, 240]),  # with noise
        ([40, 240, 240, None, 240, 240, 240, 240], [40] * 8),  # a doubted meter restarts the hold
        ([40, 240, 140, 240, 240], [40] * 5),  # a new level restarts it
        ([None, 70, 90], [None, 70, 70]),  # the first measurement is taken as it is
    ],
)
def test_the_common_load_in_use(measured: list[float | None], in_use: list[float | None]) -> None:
    assert follow(measured) == in_use


@given(
    level=st.floats(-100, 100),
    noise=st.lists(st.floats(-5, 5), min_size=1, max_size=30),
    glitches=st.sets(st.integers(1, 29)),
    jump=st.floats(5.01, 500) | st.floats(-500, -5.01),
)
def test_a_jump_shorter_than_the_hold_is_never_adopted(
    level: float, noise: list[float], glitches: set[int], jump: float
) -> None:
    """Isolated measurements off by more than the tolerance (each shorter than the hold, separated
    by a measurement near the level) never move the common load in use away from the level."""
    measured: list[float | None] = [level + n for n in noise]
    for k in glitches:
        if k < len(measured) and k - 1 not in glitches:
            measured[k] = level + jump
    for kw in follow(measured):
        assert kw is not None
        assert abs(kw - level) <= 10.0 + 1e-9  # the first noisy measurement + drift within 5 kW


def test_a_step_the_park_meter_saw_first_is_taken_when_the_sub_meter_shows_it() -> None:
    """The meters are polled one by one: the park meter read just after a's step, a-grid just
    before it. That one measurement makes the park meter less the companies 300 kW larger; it must
    not become the common load the witness subtracts, or a-grid's step, read a moment later, is
    contradicted for good and a-grid goes stale (the shared-connection test's fail-safe, one start
    in four). b's large battery makes the park's rating twice a's: the step is a suspect on a-grid
    only, as it was on that test's hall."""
    big_b = {"id": "b", "battery": {"capacity_kwh": 800, "max_charge_kw": 400, "max_discharge_kw": 400}}
    cfg = parse_config({**CFG, "companies": [CFG["companies"][0], big_b]})
    assert meter_bounds(cfg)["pm"].step_kw > 300 > meter_bounds(cfg)["a-grid"].step_kw
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    for t in range(3):  # a -40, b +20, the park meter +10: a 30 kW common load
        store.put(meter("pm", t, 10.0))
        store.put(meter("a-grid", t, -40.0))
        store.put(meter("b-grid", t, 20.0))
        store.snapshot(1.78e9, t)
    store.put(meter("pm", 3.0, 310.0))  # after a's step of +300 kW
    store.put(meter("a-grid", 3.0, -40.1))  # before it
    store.put(meter("b-grid", 3.0, 20.0))
    store.snapshot(1.78e9, 3.0)
    for t in range(4, 8):
        store.put(meter("pm", t, 310.0 + 0.1 * t))
        store.put(meter("a-grid", t, 260.0 + 0.1 * t))
        store.put(meter("b-grid", t, 20.0))
        snap = store.snapshot(1.78e9, t)
        assert snap.companies[0].grid_kw == pytest.approx(260.0 + 0.1 * t)
        assert snap.companies[0].grid_age_s == 0.0
    assert store.rejected == {}


def test_a_step_met_by_a_ramping_battery_is_not_contradicted() -> None:
    """a steps +300 kW; b's battery answers at 80 kW/s. The park meter is read half a second
    before b's meter, so the witness for a is off by 40 kW (more than the 25 kW tolerance) while b
    ramps: it moved by more than that since a's last reading, and the step is taken at once."""
    big_b = {"id": "b", "battery": {"capacity_kwh": 800, "max_charge_kw": 400, "max_discharge_kw": 400}}
    cfg = parse_config({**CFG, "companies": [CFG["companies"][0], big_b]})
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)

    def b_true(t: float) -> float:
        return 20.0 - 80.0 * min(max(t - 2.5, 0.0), 5.0)

    for t in range(10):
        a_true = -40.0 if t < 3 else 260.0
        store.put(meter("pm", t, a_true + b_true(t - 0.5) + 30.0))
        store.put(meter("b-grid", t, b_true(t)))
        store.put(meter("a-grid", t, a_true))
        snap = store.snapshot(1.78e9, t)
        assert snap.companies[0].grid_kw == a_true
    assert store.rejected == {}


def test_a_common_load_that_steps_for_real_is_adopted_after_the_hold() -> None:
    """Street lighting switches on: the park meter 60 kW up, no company meter moves. After the
    hold the witness subtracts the new common load: a's real step is taken at once."""
    cfg = parse_config(CFG)
    store = ReadingStore(Layout.from_config(cfg), stale_after_s=5)
    for t in range(12):
        store.put(meter("pm", t, 10.0 if t < 3 else 70.0))
        store.put(meter("a-grid", t, -40.0))
        store.put(meter("b-grid", t, 20.0))
        store.snapshot(1.78e9, t)
    store.put(meter("pm", 12.0, 370.0))
    store.put(meter("a-grid", 12.0, 260.0))  # +300 kW: the witness (370 - 20 - 90) agrees
    assert store.snapshot(1.78e9, 12.0).companies[0].grid_kw == 260.0


def test_a_step_is_confirmed_by_a_new_measurement_not_by_the_same_one_read_twice() -> None:
    group = {**CFG, "devices": CFG["devices"][:2]}
    store = ReadingStore(Layout.from_config(parse_config(group)), stale_after_s=5)
    store.put(meter("a-grid", 0.0, 30.0))
    spike = Reading("a-grid", DeviceRole.GRID_METER, 1.0, {"power_kw": 400.0}, {"W": 400.0}, {})
    store.put(spike)
    store.put(Reading("a-grid", DeviceRole.GRID_METER, 2.0, spike.values, spike.point_values, {}))  # again
    assert store.latest["a-grid"].values["power_kw"] == 30.0  # not confirmed by itself
    store.put(meter("a-grid", 3.0, 30.5))  # the glitch is gone
    assert store.latest["a-grid"].values["power_kw"] == 30.5
    store.put(meter("a-grid", 4.0, 400.0))  # a real step: two measurements of it
    store.put(meter("a-grid", 5.0, 401.0))
    assert store.latest["a-grid"].values["power_kw"] == 401.0
    assert store.rejected == {"a-grid": 2}  # measurements: the glitch (read twice) and the step's first
