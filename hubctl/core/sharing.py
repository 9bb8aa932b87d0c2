"""Sharing surplus energy between the companies of a park, one interval at a time.

This module implements the contract in SCENARIOS.md, section "Sharing surplus
between companies" (and the metric ``shared_kwh = Σ shared_in_kwh`` from
"Metrics"). It is pure: no I/O, no clock, no logging, plain Python floats.

Per sharing interval (900 s by default, counted from t_s = 0) and company i,
from the company's grid power ``grid_kw`` held for ``dt`` seconds per step::

    import_i = Σ max(grid_kw, 0) · dt / 3600            [kWh]
    export_i = Σ max(-grid_kw, 0) · dt / 3600           [kWh]

(:class:`IntervalMeter` accumulates these). Each company is netted within the
interval first::

    demand_i = max(import_i − export_i, 0)
    supply_i = max(export_i − import_i, 0)
    P = Σ supply        (the pool)          D = Σ demand

The sharing key decides ``shared_in_i`` (see :func:`allocate_surplus`):

- ``pro_rata``: ``shared_in_i = demand_i · min(P, D) / D``  (0 when D = 0).
- ``static``:   ``shared_in_i = min(demand_i, share_i · P)``; a share a company
  does not use is *not* passed on to the others. Companies without a share
  get 0; shares of ids that are not in the park are ignored.
- ``equal``:    water filling, ``shared_in_i = min(demand_i, λ)`` with λ such
  that ``Σ shared_in = min(P, D)``.
- ``priority``: companies listed in ``order`` (ids not in the park ignored,
  repeats ignored), then the rest in config order, each take
  ``min(demand_i, what is left of P)`` in turn.

Suppliers are always paid pro rata::

    S = Σ shared_in        shared_out_j = supply_j · S / P   (0 when P = 0)

so ``Σ shared_in = Σ shared_out = S ≤ min(P, D)``, ``shared_in_i ≤ demand_i``
and ``shared_out_j ≤ supply_j``.

Numerics: sums over companies use :func:`math.fsum` (correctly rounded), so
the pool, the demand and S do not depend on the order in which companies
are listed; the pro-rata, static and equal keys give bit-identical results
for any permutation of the input. ``S / P`` is clamped to 1 so that rounding
in the last bit can never pay a supplier more than it supplied (S ≤ P holds
exactly in real arithmetic; the clamp only guards the floating point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Allocation", "IntervalMeter", "SharingKey", "SharingRule", "allocate_surplus"]

_SHARE_SUM_TOL = 1e-9  # static shares may sum to 1 + this (rounding in YAML fractions)


class SharingKey(StrEnum):
    """How the pool of surplus energy is divided among companies with demand."""

    PRO_RATA = "pro_rata"
    STATIC = "static"
    EQUAL = "equal"
    PRIORITY = "priority"


@dataclass(frozen=True, slots=True)
class SharingRule:
    """A sharing key with its parameters.

    ``shares``: static only, fraction of the pool per company id (each in
    [0, 1], summing to at most 1). ``order``: priority only, company ids,
    first served first.
    """

    key: SharingKey
    shares: Mapping[str, float] = field(default_factory=dict)
    order: Sequence[str] = ()

    def __post_init__(self) -> None:
        # Accept the plain string from a config file; reject an unknown key early.
        object.__setattr__(self, "key", SharingKey(self.key))
        shares = {str(k): float(v) for k, v in self.shares.items()}
        for cid, share in shares.items():
            if not (math.isfinite(share) and 0.0 <= share <= 1.0):
                raise ValueError(f"static share of {cid!r} must be in [0, 1], got {share}")
        if math.fsum(shares.values()) > 1.0 + _SHARE_SUM_TOL:
            raise ValueError(f"static shares sum to more than 1: {math.fsum(shares.values())}")
        if isinstance(self.order, str):
            raise TypeError("order must be a sequence of company ids, not one string")
        object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "order", tuple(self.order))


@dataclass(frozen=True, slots=True)
class Allocation:
    """One company's energy in one sharing interval, all in kWh and ≥ 0."""

    company: str
    import_kwh: float
    export_kwh: float
    shared_in_kwh: float
    shared_out_kwh: float


def _water_level(demand: Sequence[float], amount: float) -> float:
    """λ such that Σ min(demand_i, λ) = amount, for 0 ≤ amount ≤ Σ demand.

    Walk the demands in ascending order: while the smallest remaining demand
    times the number of companies still in play is below what is left, that
    company is served in full; otherwise the rest share what is left equally.
    """
    left = amount
    level = 0.0
    ordered = sorted(demand)
    n = len(ordered)
    for k, d in enumerate(ordered):
        if d * (n - k) >= left:
            return left / (n - k)
        left -= d
        level = d
    return level  # amount == Σ demand: everyone is served in full


def _priority_order(ids: Sequence[str], order: Sequence[str]) -> list[int]:
    """Indices into ``ids``: ``order`` first (unknown ids and repeats ignored), then config order."""
    index = {cid: j for j, cid in enumerate(ids)}
    seen: set[int] = set()
    out: list[int] = []
    for cid in (*order, *ids):
        j = index.get(cid)
        if j is not None and j not in seen:
            seen.add(j)
            out.append(j)
    return out


def allocate_surplus(energy: Sequence[tuple[str, float, float]], rule: SharingRule) -> list[Allocation]:
    """Share one interval's surplus according to ``rule`` (formulas: module docstring).

    ``energy`` holds ``(company id, import_kwh, export_kwh)`` for one interval,
    in config order. Returns one :class:`Allocation` per company, in the same
    order. Raises ``ValueError`` for repeated ids or negative / non-finite energy.
    """
    ids = [cid for cid, _, _ in energy]
    if len(set(ids)) != len(ids):
        raise ValueError(f"company ids must be unique, got {ids}")
    for cid, imp, exp in energy:
        if not (math.isfinite(imp) and math.isfinite(exp) and imp >= 0.0 and exp >= 0.0):
            raise ValueError(f"{cid}: import/export energy must be finite and ≥ 0, got {imp}, {exp}")

    demand = [max(imp - exp, 0.0) for _, imp, exp in energy]
    supply = [max(exp - imp, 0.0) for _, imp, exp in energy]
    pool = math.fsum(supply)
    total_demand = math.fsum(demand)
    available = min(pool, total_demand)

    key = rule.key
    if key is SharingKey.PRO_RATA:
        ratio = available / total_demand if total_demand > 0.0 else 0.0
        shared_in = [d * ratio for d in demand]
    elif key is SharingKey.STATIC:
        shared_in = [min(d, rule.shares.get(cid, 0.0) * pool) for cid, d in zip(ids, demand, strict=True)]
    elif key is SharingKey.EQUAL:
        level = _water_level(demand, available)
        shared_in = [min(d, level) for d in demand]
    elif key is SharingKey.PRIORITY:
        shared_in = [0.0] * len(ids)
        left = pool
        for j in _priority_order(ids, rule.order):
            take = min(demand[j], left)
            shared_in[j] = take
            left -= take
    else:  # pragma: no cover - SharingRule validates the key
        raise ValueError(f"unknown sharing key {key!r}")

    total_in = math.fsum(shared_in)
    pay = min(total_in / pool, 1.0) if pool > 0.0 else 0.0
    return [
        Allocation(company=cid, import_kwh=imp, export_kwh=exp, shared_in_kwh=s_in, shared_out_kwh=s * pay)
        for (cid, imp, exp), s_in, s in zip(energy, shared_in, supply, strict=True)
    ]


class IntervalMeter:
    """Accumulates each company's import and export energy over one sharing interval.

    Feed it every control step with the companies' grid power (kW, + import,
    − export, in the order of ``company_ids``) held for ``dt_s`` seconds;
    read :meth:`energy` at the end of the interval (the input of
    :func:`allocate_surplus`) and :meth:`reset` for the next one.
    ``import += max(grid_kw, 0) · dt / 3600``, ``export += max(-grid_kw, 0) · dt / 3600``.
    """

    __slots__ = ("_export", "_ids", "_import")

    def __init__(self, company_ids: Sequence[str]) -> None:
        if isinstance(company_ids, str):
            raise TypeError("company_ids must be a sequence of ids, not one string")
        ids = tuple(company_ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f"company ids must be unique, got {list(ids)}")
        self._ids = ids
        self._import = [0.0] * len(ids)
        self._export = [0.0] * len(ids)

    @property
    def company_ids(self) -> tuple[str, ...]:
        """The company ids, in the order :meth:`add` expects."""
        return self._ids

    def add(self, grid_kw: Sequence[float], dt_s: float) -> None:
        """Add one step: ``grid_kw[i]`` held for ``dt_s`` seconds.

        Raises ``ValueError`` (and adds nothing) on a length mismatch, a
        negative or non-finite ``dt_s`` or a non-finite power.
        """
        if len(grid_kw) != len(self._ids):
            raise ValueError(f"expected {len(self._ids)} grid powers, got {len(grid_kw)}")
        if not (math.isfinite(dt_s) and dt_s >= 0.0):
            raise ValueError(f"dt_s must be finite and ≥ 0, got {dt_s}")
        if not all(math.isfinite(g) for g in grid_kw):
            raise ValueError(f"grid powers must be finite, got {list(grid_kw)}")
        for i, g in enumerate(grid_kw):
            if g > 0.0:
                self._import[i] += g * dt_s / 3600
            elif g < 0.0:
                self._export[i] += -g * dt_s / 3600

    def energy(self) -> list[tuple[str, float, float]]:
        """``(company id, import_kwh, export_kwh)`` so far in this interval, in config order."""
        return list(zip(self._ids, self._import, self._export, strict=True))

    def reset(self) -> None:
        """Start a new interval: all energies back to zero."""
        self._import = [0.0] * len(self._ids)
        self._export = [0.0] * len(self._ids)
