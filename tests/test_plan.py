"""The rolling-horizon plan: energy bands from forecasts and limits (pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from hubctl.core.forecast import Forecast
from hubctl.core.plan import BatteryPool, make_plan

STEP_S = 900.0
POOL = BatteryPool(
    e_min_kwh=20, e_max_kwh=380, charge_kw=200, discharge_kw=200, efficiency=0.95, reserve_kwh=200
)


def fc(load: list[float], pv: list[float], covered: bool = True) -> Forecast:
    return Forecast(
        load_kw=load,
        load_low_kw=load,
        load_high_kw=load,
        load_peak_kw=max(load),
        covered=[covered] * len(load),
        pv_clear_kw=pv,
        pv_low_kw=pv,
    )


def test_floor_rises_before_an_import_cap_and_falls_after() -> None:
    n = 24
    load = [300.0] * n
    imp = [math.inf] * n
    for j in range(16, 20):  # four quarter-hours at 150 kW above a lower cap
        imp[j] = 150.0
    plan = make_plan(0, STEP_S, fc(load, [0.0] * n), imp, [math.inf] * n, [False] * n, math.inf, POOL)
    need = 4 * 150 * 0.25 / 0.95
    assert plan.floor_kwh[16] >= POOL.e_min_kwh + need - 1e-6
    assert plan.floor_kwh[20] == POOL.e_min_kwh
    assert plan.floor_kwh[0] < plan.floor_kwh[15]  # charged as late as the credited rate allows
    assert not plan.reserve_used


def test_ceiling_leaves_room_for_the_solar_excess() -> None:
    n = 24
    pv = [0.0] * n
    for j in range(10, 14):
        pv[j] = 500.0  # 300 kW of surplus above a 100 kW export cap... minus load 100
    plan = make_plan(0, STEP_S, fc([100.0] * n, pv), [math.inf] * n, [100.0] * n, [False] * n, math.inf, POOL)
    room = 4 * min(200, 500 - 100 - 100) * 0.25 * 0.95
    assert plan.ceiling_kwh[10] <= POOL.e_max_kwh - room + 1e-6
    assert plan.ceiling_kwh[14] == POOL.e_max_kwh


def test_without_history_the_reserve_is_kept_but_yields_to_solar_room() -> None:
    n = 96
    pv = [0.0] * n
    pv[40:52] = [900.0] * 12
    plan = make_plan(
        0,
        STEP_S,
        fc([100.0] * n, pv, covered=False),
        [math.inf] * n,
        [100.0] * n,
        [False] * n,
        math.inf,
        POOL,
    )
    assert plan.reserve_used
    assert plan.floor_kwh[0] == POOL.reserve_kwh or plan.floor_kwh[0] == plan.ceiling_kwh[0]
    assert plan.floor_kwh[39] <= plan.ceiling_kwh[39]
    assert plan.ceiling_kwh[39] < POOL.reserve_kwh  # room for the midday excess beats the guess


def test_announced_lower_cap_without_history_is_planned_for_the_contract_load() -> None:
    n = 32
    imp = [800.0] * n
    reduced = [False] * n
    for j in range(24, 28):
        imp[j] = 400.0
        reduced[j] = True
    plan = make_plan(
        0, STEP_S, fc([200.0] * n, [0.0] * n, covered=False), imp, [math.inf] * n, reduced, 800.0, POOL
    )
    # (800 - 400) kW is more than the batteries give: plan the full discharge power for the hour
    assert plan.floor_kwh[24] == POOL.e_min_kwh + 4 * 200 * 0.25 / 0.95
    assert plan.floor_kwh[28] == POOL.reserve_kwh  # no history: the default reserve


@given(
    st.lists(st.floats(0, 1000), min_size=4, max_size=48),
    st.lists(st.floats(0, 1000), min_size=48, max_size=48),
    st.floats(10, 2000),
    st.floats(10, 2000),
    st.booleans(),
)
def test_bands_are_ordered_and_bounded(
    load: list[float], pv: list[float], imp: float, exp: float, covered: bool
) -> None:
    n = len(load)
    plan = make_plan(0, STEP_S, fc(load, pv[:n], covered), [imp] * n, [exp] * n, [False] * n, math.inf, POOL)
    for f, c in zip(plan.floor_kwh, plan.ceiling_kwh, strict=True):
        assert POOL.e_min_kwh - 1e-9 <= f <= POOL.e_max_kwh + 1e-9
        assert POOL.e_min_kwh - 1e-9 <= c <= POOL.e_max_kwh + 1e-9
        assert f <= c + 1e-9
