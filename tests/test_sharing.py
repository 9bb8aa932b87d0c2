"""Tests for hubctl.core.sharing against SCENARIOS.md, "Sharing surplus between companies"."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubctl.core.sharing import Allocation, IntervalMeter, SharingKey, SharingRule, allocate_surplus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

Energy = list[tuple[str, float, float]]

REL = 1e-9
ABS = 1e-9


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


def by_company(allocs: Sequence[Allocation]) -> dict[str, Allocation]:
    return {a.company: a for a in allocs}


def shared(allocs: Sequence[Allocation]) -> dict[str, tuple[float, float]]:
    return {a.company: (a.shared_in_kwh, a.shared_out_kwh) for a in allocs}


# ----------------------------------------------------------------- table tests
PRO_RATA = SharingRule(SharingKey.PRO_RATA)
EQUAL = SharingRule(SharingKey.EQUAL)


@pytest.mark.parametrize(
    ("energy", "rule", "expected"),
    [
        pytest.param(
            [("a", 10.0, 0.0), ("b", 30.0, 0.0), ("s", 0.0, 20.0)],
            PRO_RATA,
            {"a": (5.0, 0.0), "b": (15.0, 0.0), "s": (0.0, 20.0)},
            id="pro_rata-pool-short",
        ),
        pytest.param(
            [("a", 10.0, 0.0), ("s", 0.0, 30.0)],
            PRO_RATA,
            {"a": (10.0, 0.0), "s": (0.0, 10.0)},
            id="pro_rata-pool-ample",
        ),
        pytest.param(
            [("a", 5.0, 3.0), ("b", 1.0, 4.0), ("c", 2.0, 2.0)],
            PRO_RATA,
            {"a": (2.0, 0.0), "b": (0.0, 2.0), "c": (0.0, 0.0)},
            id="pro_rata-netting-within-interval",
        ),
        pytest.param(
            [("a", 0.0, 0.0), ("s1", 0.0, 10.0), ("s2", 0.0, 30.0), ("d", 20.0, 0.0)],
            PRO_RATA,
            {"a": (0.0, 0.0), "s1": (0.0, 5.0), "s2": (0.0, 15.0), "d": (20.0, 0.0)},
            id="suppliers-paid-pro-rata",
        ),
        pytest.param(
            [("a", 2.0, 0.0), ("b", 20.0, 0.0), ("s", 0.0, 10.0)],
            SharingRule(SharingKey.STATIC, shares={"a": 0.5, "b": 0.5}),
            {"a": (2.0, 0.0), "b": (5.0, 0.0), "s": (0.0, 7.0)},
            id="static-unused-share-not-passed-on",
        ),
        pytest.param(
            [("a", 20.0, 0.0), ("b", 20.0, 0.0), ("s", 0.0, 10.0)],
            SharingRule(SharingKey.STATIC, shares={"a": 0.3, "ghost": 0.7}),
            {"a": (3.0, 0.0), "b": (0.0, 0.0), "s": (0.0, 3.0)},
            id="static-no-share-gets-nothing-unknown-ignored",
        ),
        pytest.param(
            [("a", 1.0, 0.0), ("b", 10.0, 0.0), ("c", 10.0, 0.0), ("s", 0.0, 13.0)],
            EQUAL,
            {"a": (1.0, 0.0), "b": (6.0, 0.0), "c": (6.0, 0.0), "s": (0.0, 13.0)},
            id="equal-water-filling-one-small-demand",
        ),
        pytest.param(
            [("a", 4.0, 0.0), ("b", 8.0, 0.0), ("s", 0.0, 6.0)],
            EQUAL,
            {"a": (3.0, 0.0), "b": (3.0, 0.0), "s": (0.0, 6.0)},
            id="equal-level-below-every-demand",
        ),
        pytest.param(
            [("a", 1.0, 0.0), ("b", 2.0, 0.0), ("s", 0.0, 6.0)],
            EQUAL,
            {"a": (1.0, 0.0), "b": (2.0, 0.0), "s": (0.0, 3.0)},
            id="equal-pool-ample",
        ),
        pytest.param(
            [("a", 5.0, 0.0), ("b", 5.0, 0.0), ("c", 5.0, 0.0), ("s", 0.0, 8.0)],
            SharingRule(SharingKey.PRIORITY, order=["ghost", "c", "a"]),
            {"a": (3.0, 0.0), "b": (0.0, 0.0), "c": (5.0, 0.0), "s": (0.0, 8.0)},
            id="priority-order-unknown-ids-ignored",
        ),
        pytest.param(
            [("a", 5.0, 0.0), ("b", 5.0, 0.0), ("c", 5.0, 0.0), ("s", 0.0, 8.0)],
            SharingRule(SharingKey.PRIORITY, order=["c"]),
            {"a": (3.0, 0.0), "b": (0.0, 0.0), "c": (5.0, 0.0), "s": (0.0, 8.0)},
            id="priority-rest-in-config-order",
        ),
        pytest.param(
            [("a", 5.0, 0.0), ("b", 5.0, 0.0), ("s", 0.0, 7.0)],
            SharingRule(SharingKey.PRIORITY, order=["b", "b", "a"]),
            {"a": (2.0, 0.0), "b": (5.0, 0.0), "s": (0.0, 7.0)},
            id="priority-repeated-id-served-once",
        ),
        pytest.param(
            [("a", 5.0, 0.0), ("s", 0.0, 2.0)],
            SharingRule(SharingKey.PRIORITY),
            {"a": (2.0, 0.0), "s": (0.0, 2.0)},
            id="priority-no-order",
        ),
    ],
)
def test_table(energy: Energy, rule: SharingRule, expected: Mapping[str, tuple[float, float]]) -> None:
    allocs = allocate_surplus(energy, rule)
    assert [a.company for a in allocs] == [cid for cid, _, _ in energy]
    assert [(a.import_kwh, a.export_kwh) for a in allocs] == [(i, e) for _, i, e in energy]
    got = shared(allocs)
    for cid, (s_in, s_out) in expected.items():
        assert close(got[cid][0], s_in), (cid, got[cid], s_in)
        assert close(got[cid][1], s_out), (cid, got[cid], s_out)


@pytest.mark.parametrize("key", list(SharingKey))
@pytest.mark.parametrize(
    "energy",
    [
        pytest.param([("a", 0.0, 5.0), ("b", 0.0, 3.0)], id="no-demand"),
        pytest.param([("a", 5.0, 0.0), ("b", 3.0, 0.0)], id="no-pool"),
        pytest.param([("a", 0.0, 0.0), ("b", 2.0, 2.0)], id="nothing"),
    ],
)
def test_zero_pool_or_demand(key: SharingKey, energy: Energy) -> None:
    rule = SharingRule(key, shares={"a": 0.5, "b": 0.5}, order=["b"])
    for a in allocate_surplus(energy, rule):
        assert a.shared_in_kwh == 0.0
        assert a.shared_out_kwh == 0.0


@pytest.mark.parametrize("key", list(SharingKey))
def test_empty_park(key: SharingKey) -> None:
    assert allocate_surplus([], SharingRule(key)) == []


def test_rule_accepts_string_key_and_copies_parameters() -> None:
    shares = {"a": 0.5}
    order = ["a"]
    rule = SharingRule("static", shares=shares, order=order)  # type: ignore[arg-type]
    assert rule.key is SharingKey.STATIC
    shares["a"] = 1.0
    order.append("b")
    assert rule.shares == {"a": 0.5}
    assert rule.order == ("a",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": "fair"},
        {"key": SharingKey.STATIC, "shares": {"a": 0.6, "b": 0.5}},
        {"key": SharingKey.STATIC, "shares": {"a": -0.1}},
        {"key": SharingKey.STATIC, "shares": {"a": math.nan}},
    ],
)
def test_rule_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SharingRule(**kwargs)  # type: ignore[arg-type]


def test_rule_rejects_order_as_string() -> None:
    with pytest.raises(TypeError):
        SharingRule(SharingKey.PRIORITY, order="abc")


def test_static_shares_summing_to_one_with_rounding() -> None:
    rule = SharingRule(SharingKey.STATIC, shares={"a": 0.1, "b": 0.2, "c": 0.7})
    allocs = allocate_surplus([("a", 50.0, 0.0), ("b", 50.0, 0.0), ("c", 50.0, 0.0), ("s", 0.0, 10.0)], rule)
    got = by_company(allocs)
    assert got["s"].shared_out_kwh <= got["s"].export_kwh
    assert close(sum(a.shared_in_kwh for a in allocs), 10.0)


@pytest.mark.parametrize(
    "energy",
    [
        [("a", 1.0, 0.0), ("a", 0.0, 1.0)],
        [("a", -1.0, 0.0)],
        [("a", 0.0, -1.0)],
        [("a", math.nan, 0.0)],
        [("a", 0.0, math.inf)],
    ],
)
def test_allocate_rejects_bad_input(energy: Energy) -> None:
    with pytest.raises(ValueError):
        allocate_surplus(energy, PRO_RATA)


# ----------------------------------------------------------------- IntervalMeter
def test_meter_accumulates_import_and_export_separately() -> None:
    meter = IntervalMeter(["a", "b"])
    assert meter.company_ids == ("a", "b")
    for _ in range(450):
        meter.add([100.0, -40.0], 1.0)
    for _ in range(450):
        meter.add([-20.0, 0.0], 1.0)
    (a, a_imp, a_exp), (b, b_imp, b_exp) = meter.energy()
    assert (a, b) == ("a", "b")
    assert close(a_imp, 100.0 * 450 / 3600)
    assert close(a_exp, 20.0 * 450 / 3600)
    assert b_imp == 0.0
    assert close(b_exp, 40.0 * 450 / 3600)
    meter.reset()
    assert meter.energy() == [("a", 0.0, 0.0), ("b", 0.0, 0.0)]


def test_meter_feeds_allocation() -> None:
    meter = IntervalMeter(["bakery", "garage"])
    meter.add([-360.0, 720.0], 10.0)  # 1 kWh exported, 2 kWh imported
    allocs = by_company(allocate_surplus(meter.energy(), PRO_RATA))
    assert close(allocs["garage"].shared_in_kwh, 1.0)
    assert close(allocs["bakery"].shared_out_kwh, 1.0)


@pytest.mark.parametrize(
    ("grid", "dt"),
    [
        ([1.0], 1.0),
        ([1.0, 2.0, 3.0], 1.0),
        ([1.0, 2.0], -1.0),
        ([1.0, math.nan], 1.0),
        ([1.0, 2.0], math.inf),
    ],
)
def test_meter_rejects_bad_step(grid: list[float], dt: float) -> None:
    meter = IntervalMeter(["a", "b"])
    with pytest.raises(ValueError):
        meter.add(grid, dt)
    assert meter.energy() == [("a", 0.0, 0.0), ("b", 0.0, 0.0)]


def test_meter_rejects_bad_ids() -> None:
    with pytest.raises(ValueError):
        IntervalMeter(["a", "a"])
    with pytest.raises(TypeError):
        IntervalMeter("ab")


@given(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), max_size=50), st.floats(0.1, 60.0))
def test_meter_matches_formula(steps: list[list[float]], dt: float) -> None:
    meter = IntervalMeter(["a", "b", "c"])
    for grid in steps:
        meter.add(grid, dt)
    for i, (_, imp, exp) in enumerate(meter.energy()):
        assert close(imp, math.fsum(max(g[i], 0.0) * dt / 3600 for g in steps))
        assert close(exp, math.fsum(max(-g[i], 0.0) * dt / 3600 for g in steps))


# ----------------------------------------------------------------- properties
kwh = st.one_of(st.just(0.0), st.floats(0.0, 1e3), st.floats(0.0, 1e-3), st.sampled_from([1.0, 2.0, 5.0]))


@st.composite
def parks(draw: st.DrawFn) -> Energy:
    n = draw(st.integers(0, 8))
    return [(f"c{i}", draw(kwh), draw(kwh)) for i in range(n)]


@st.composite
def rules(draw: st.DrawFn, ids: Sequence[str], keys: Sequence[SharingKey] = tuple(SharingKey)) -> SharingRule:
    key = draw(st.sampled_from(list(keys)))
    candidates = [*ids, "ghost", "other"]
    weights = {cid: draw(st.floats(0.0, 1.0)) for cid in draw(st.lists(st.sampled_from(candidates)))}
    scale = draw(st.floats(0.0, 1.0))
    total = math.fsum(weights.values())
    shares = {cid: w / total * scale for cid, w in weights.items()} if total > 0 else {}
    order = draw(st.lists(st.sampled_from(candidates)))
    return SharingRule(key, shares=shares, order=order)


def demand_supply(energy: Energy) -> tuple[list[float], list[float]]:
    return [max(i - e, 0.0) for _, i, e in energy], [max(e - i, 0.0) for _, i, e in energy]


@given(st.data())
def test_invariants(data: st.DataObject) -> None:
    energy = data.draw(parks())
    rule = data.draw(rules([cid for cid, _, _ in energy]))
    allocs = allocate_surplus(energy, rule)
    demand, supply = demand_supply(energy)
    pool, total_demand = math.fsum(supply), math.fsum(demand)
    total_in = math.fsum(a.shared_in_kwh for a in allocs)
    total_out = math.fsum(a.shared_out_kwh for a in allocs)

    assert [a.company for a in allocs] == [cid for cid, _, _ in energy]
    assert close(total_in, total_out)
    assert total_in <= min(pool, total_demand) * (1 + REL) + 1e-12
    for a, d, s in zip(allocs, demand, supply, strict=True):
        assert 0.0 <= a.shared_in_kwh <= d
        assert 0.0 <= a.shared_out_kwh <= s
    if rule.key is not SharingKey.STATIC:  # these keys hand out all they can
        assert close(total_in, min(pool, total_demand))


PERMUTABLE = (SharingKey.PRO_RATA, SharingKey.EQUAL, SharingKey.STATIC)


@given(st.data())
def test_independent_of_company_order(data: st.DataObject) -> None:
    energy = data.draw(parks())
    rule = data.draw(rules([cid for cid, _, _ in energy], keys=PERMUTABLE))
    permuted = data.draw(st.permutations(energy))
    first = shared(allocate_surplus(energy, rule))
    second = shared(allocate_surplus(permuted, rule))
    assert first.keys() == second.keys()
    for cid, (s_in, s_out) in first.items():
        assert close(second[cid][0], s_in)
        assert close(second[cid][1], s_out)


@given(st.data())
def test_priority_respects_order(data: st.DataObject) -> None:
    energy = data.draw(parks())
    ids = [cid for cid, _, _ in energy]
    rule = data.draw(rules(ids, keys=[SharingKey.PRIORITY]))
    allocs = by_company(allocate_surplus(energy, rule))
    served: list[str] = []
    for cid in [*rule.order, *ids]:
        if cid in allocs and cid not in served:
            served.append(cid)
    assert sorted(served) == sorted(ids)
    for k, cid in enumerate(served):
        a = allocs[cid]
        if a.shared_in_kwh > 0.0:  # everyone before it is served in full
            for earlier in served[:k]:
                e = allocs[earlier]
                assert e.shared_in_kwh == max(e.import_kwh - e.export_kwh, 0.0)


# ----------------------------------------------------------------- reference
def reference(energy: Energy, rule: SharingRule) -> dict[str, tuple[float, float]]:
    """Straightforward re-implementation of the contract, written from SCENARIOS.md."""
    ids = [cid for cid, _, _ in energy]
    demand = {cid: max(i - e, 0.0) for cid, i, e in energy}
    supply = {cid: max(e - i, 0.0) for cid, i, e in energy}
    pool = sum(supply.values())
    total = sum(demand.values())
    give = min(pool, total)
    got = dict.fromkeys(ids, 0.0)
    if rule.key is SharingKey.PRO_RATA:
        for cid in ids:
            got[cid] = demand[cid] * give / total if total > 0 else 0.0
    elif rule.key is SharingKey.STATIC:
        for cid in ids:
            got[cid] = min(demand[cid], rule.shares.get(cid, 0.0) * pool)
    elif rule.key is SharingKey.EQUAL:
        # Repeatedly split what is left equally among the unserved; whoever needs
        # less than the split is served in full and leaves the queue.
        open_ = {cid for cid in ids if demand[cid] > 0}
        left = give
        while open_:
            level = left / len(open_)
            small = {cid for cid in open_ if demand[cid] <= level}
            if not small:
                for cid in open_:
                    got[cid] = level
                break
            for cid in small:
                got[cid] = demand[cid]
                left -= demand[cid]
            open_ -= small
    else:
        queue = [cid for cid in rule.order if cid in demand]
        queue += [cid for cid in ids if cid not in queue]
        left = pool
        for cid in dict.fromkeys(queue):
            got[cid] = min(demand[cid], left)
            left -= got[cid]
    total_in = sum(got.values())
    return {cid: (got[cid], supply[cid] * total_in / pool if pool > 0 else 0.0) for cid in ids}


@given(st.data())
def test_matches_reference(data: st.DataObject) -> None:
    energy = data.draw(parks())
    rule = data.draw(rules([cid for cid, _, _ in energy]))
    scale = max([1.0, *(x for _, i, e in energy for x in (i, e))])
    got = shared(allocate_surplus(energy, rule))
    want = reference(energy, rule)
    assert got.keys() == want.keys()
    for cid, (s_in, s_out) in want.items():
        assert math.isclose(got[cid][0], s_in, rel_tol=1e-9, abs_tol=1e-9 * scale), (cid, got[cid], s_in)
        assert math.isclose(got[cid][1], s_out, rel_tol=1e-9, abs_tol=1e-9 * scale), (cid, got[cid], s_out)
