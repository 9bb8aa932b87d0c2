"""Park physics: what loads, PV inverters and batteries do, one step at a time.

The reference semantics are those of `SCENARIOS.md` ("Physics (the reference
semantics)" and "profiles.csv", in the shared folder next to this repository);
`tools/score.py` checks a run against them. Pure Python and numpy: no clock,
no asyncio, no logging; the only I/O is `Profiles.from_csv`.

Signs and units (SCENARIOS.md): grid power + import / - export, battery power
+ discharge / - charge, PV power >= 0; kW, kWh, percent, seconds. Per company
`grid_kw = load_kw - pv_kw - battery_kw`.

Profiles
    `load_kw(t)` and the *available* PV `pv_available_kw(t)` are linear in time
    between the rows of `profiles.csv`; the last row holds after it and the
    first row before it. A company without a `pv` block has no PV whatever its
    column says; a missing column reads as zeros.

Step `k` covers `[t, t + step_s)` with `t = k * step_s`; the setpoints and
limits passed to `ParkPhysics.step` are those in force during that step, and the
record's values are held over it (`soc_pct` is the state at the *start*).

PV (ramp `r = ramp_pct_per_s / 100 * peak_kw * step_s` kW per step)
    `target = min(available(t), limit)` (`None` or NaN: no limit; never below 0).
    Ramps slow the following of a *limit*, not natural changes:
    - rising (`target >= previous output`): if the previous output sat at the
      previous available power (within 1e-9 kW) it jumps straight to the target
      (the sun came out, or a limit was raised while not binding); otherwise it
      rises by at most `r`;
    - falling: `max(target, previous - r)`, but never above `available(t)`
      (a cloud edge drops the output at once).
    So `0 <= pv_kw <= pv_available_kw` always. Before t = 0 PV limits are off:
    the previous output of step 0 is the available power at t = 0.

Battery (ramp `r = ramp_pct_per_s / 100 * max(max_charge_kw, max_discharge_kw) * step_s`)
    The power moves toward the setpoint (`None` or NaN: 0 kW) by at most `r`,
    within `[-max_charge_kw, max_discharge_kw]`. The stored energy follows
    `E += (charge_kw * efficiency - discharge_kw / efficiency) * step_s / 3600`
    with `charge_kw = max(-p, 0)`, `discharge_kw = max(p, 0)`. Where a step would
    carry `E` past the energy at `min_soc_pct` / `max_soc_pct`, its power is cut
    so that `E` lands exactly on that limit (the battery stops at once); the
    power delivered is what the record reports and what the next step ramps
    from. Before t = 0 batteries are at 0 kW. `soc_pct = 100 * E / capacity_kwh`.

A company without PV reports PV 0, one without a battery battery 0 kW and SoC 0.
A battery that starts outside its SoC window may only move back into it.

`ParkPhysics.step` refuses a `t_s` other than the next step's start (within
1e-3 step) and setpoint lists of the wrong length; `StepRecord` arrays are
read-only and shared with no internal state.

Speed: `step` does O(companies) plain-float work plus a handful of small numpy
operations (a full day at 1 s is 86400 steps); `Profiles.at` finds its row by
bisection on a list of row times.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

FloatArray = npt.NDArray[np.float64]

_FOLLOW_TOL_KW = 1e-9  # "the previous output sat at the previous available power"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _readonly(a: FloatArray) -> FloatArray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True)
class PvSpec:
    """A PV installation: `peak_kw` sets the scale of the ramp toward a new limit."""

    peak_kw: float
    ramp_pct_per_s: float = 100.0

    def __post_init__(self) -> None:
        _require(math.isfinite(self.peak_kw) and self.peak_kw >= 0, "peak_kw must be finite and >= 0")
        _require(
            math.isfinite(self.ramp_pct_per_s) and self.ramp_pct_per_s > 0,
            "ramp_pct_per_s must be finite and > 0",
        )


@dataclass(frozen=True, slots=True)
class BatterySpec:
    """A battery; `soc_pct` is the state at t = 0, `efficiency` is one way."""

    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_pct: float
    min_soc_pct: float = 0.0
    max_soc_pct: float = 100.0
    efficiency: float = 1.0
    ramp_pct_per_s: float = 100.0

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.capacity_kwh) and self.capacity_kwh > 0, "capacity_kwh must be finite and > 0"
        )
        for name in ("max_charge_kw", "max_discharge_kw"):
            v = getattr(self, name)
            _require(math.isfinite(v) and v >= 0, f"{name} must be finite and >= 0")
        _require(
            0 <= self.min_soc_pct <= self.max_soc_pct <= 100, "need 0 <= min_soc_pct <= max_soc_pct <= 100"
        )
        _require(0 <= self.soc_pct <= 100, "soc_pct must lie in [0, 100]")
        _require(0 < self.efficiency <= 1, "efficiency must lie in (0, 1]")
        _require(
            math.isfinite(self.ramp_pct_per_s) and self.ramp_pct_per_s > 0,
            "ramp_pct_per_s must be finite and > 0",
        )


@dataclass(frozen=True, slots=True)
class CompanySpec:
    """One company behind the park's connection, with its optional PV and battery."""

    id: str
    pv: PvSpec | None = None
    battery: BatterySpec | None = None


class Profiles:
    """Load and available-PV profiles: linear in time between rows, the last row holds (and the first row holds before it)."""  # noqa: E501 - the brief's wording

    __slots__ = ("_slope", "_t_list", "_t_s", "_values", "_width")

    def __init__(self, t_s: npt.ArrayLike, load_kw: npt.ArrayLike, pv_kw: npt.ArrayLike) -> None:
        """`t_s`: row times, strictly increasing; `load_kw`, `pv_kw`: shape (rows, companies)."""
        t = np.array(t_s, dtype=np.float64)
        load = np.array(load_kw, dtype=np.float64)
        pv = np.array(pv_kw, dtype=np.float64)
        _require(t.ndim == 1 and len(t) >= 1, "t_s must be a non-empty 1-D array")
        _require(
            load.ndim == 2 and load.shape[0] == len(t) and pv.shape == load.shape,
            "load_kw and pv_kw must both have shape (rows, companies)",
        )
        _require(bool(np.all(np.isfinite(t))), "t_s must be finite")
        _require(bool(np.all(np.diff(t) > 0)), "t_s must be strictly increasing")
        _require(bool(np.all(np.isfinite(load)) and np.all(np.isfinite(pv))), "profiles must be finite")
        _require(bool(np.all(pv >= 0)), "available PV must be >= 0")
        # load and PV side by side, so one interpolation serves both
        values = np.concatenate([load, pv], axis=1)
        self._t_s = _readonly(t)
        self._t_list: list[float] = t.tolist()
        self._values = _readonly(values)
        self._slope = _readonly(np.diff(values, axis=0) / np.diff(t)[:, None])
        self._width = int(load.shape[1])

    @classmethod
    def from_csv(cls, path: Path, company_ids: Sequence[str]) -> Profiles:
        """Read `profiles.csv` (header `t_s,<id>.load_kw,<id>.pv_kw,...`); a missing column reads as zeros."""
        lines = path.read_text(encoding="utf-8").splitlines()
        _require(bool(lines), f"{path}: empty file")
        header = [h.strip() for h in lines[0].split(",")]
        _require("t_s" in header, f"{path}: no t_s column")
        rows = [line for line in lines[1:] if line.strip()]
        _require(bool(rows), f"{path}: no rows")
        data = np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float64)
        _require(data.shape[1] == len(header), f"{path}: {data.shape[1]} values per row, {len(header)} names")
        col = {name: j for j, name in enumerate(header)}
        load = np.zeros((len(data), len(company_ids)))
        pv = np.zeros_like(load)
        for k, cid in enumerate(company_ids):
            for out, name in ((load, f"{cid}.load_kw"), (pv, f"{cid}.pv_kw")):
                if name in col:
                    out[:, k] = data[:, col[name]]
        return cls(data[:, col["t_s"]], load, pv)

    @property
    def t_s(self) -> FloatArray:
        """Row times (read-only)."""
        return self._t_s

    @property
    def load_kw(self) -> FloatArray:
        """Load per row and company (read-only view)."""
        return self._values[:, : self._width]

    @property
    def pv_kw(self) -> FloatArray:
        """Available PV per row and company (read-only view)."""
        return self._values[:, self._width :]

    @property
    def company_count(self) -> int:
        return self._width

    def at(self, t_s: float) -> tuple[FloatArray, FloatArray]:
        """(load_kw, pv_available_kw) per company at `t_s`; O(companies + log rows)."""
        i = bisect.bisect_right(self._t_list, t_s) - 1
        if i < 0:
            v = self._values[0].copy()
        elif i >= len(self._t_list) - 1:
            v = self._values[-1].copy()
        else:
            v = self._values[i] + (t_s - self._t_list[i]) * self._slope[i]
        return v[: self._width], v[self._width :]

    def sample(self, t_s: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """`at` for many times at once: two arrays of shape (len(t_s), companies)."""
        t = np.asarray(t_s, dtype=np.float64).reshape(-1)
        rows = len(self._t_s)
        if rows == 1:
            v = np.broadcast_to(self._values[0], (len(t), self._values.shape[1])).copy()
        else:
            i = np.clip(np.searchsorted(self._t_s, t, side="right") - 1, 0, rows - 2)
            dt = np.clip(t - self._t_s[i], 0.0, self._t_s[i + 1] - self._t_s[i])
            v = self._values[i] + dt[:, None] * self._slope[i]
            v[t >= self._t_s[-1]] = self._values[-1]  # exact hold, as in `at`
        return v[:, : self._width], v[:, self._width :]


@dataclass(frozen=True, slots=True, eq=False)
class StepRecord:
    """One step: values held over `[t_s, t_s + step_s)`; `soc_pct` is the state at the start of the step.

    Arrays are per company in config order, read-only.
    """

    t_s: float
    load_kw: FloatArray
    pv_available_kw: FloatArray
    pv_kw: FloatArray
    battery_kw: FloatArray
    soc_pct: FloatArray
    grid_kw: FloatArray

    @property
    def park_grid_kw(self) -> float:
        """Park grid power: the sum over companies (+ import)."""
        return float(sum(self.grid_kw.tolist()))  # faster than numpy for a few companies


@dataclass(slots=True)
class _Battery:
    """Constants and state of one battery, as plain floats for a fast step."""

    index: int
    ramp_kw: float
    max_charge_kw: float
    max_discharge_kw: float
    capacity_kwh: float
    min_kwh: float
    max_kwh: float
    efficiency: float
    energy_kwh: float
    power_kw: float = 0.0  # before t = 0 batteries are at 0 kW


class ParkPhysics:
    """The park, stepped at t = 0, step_s, 2 step_s, ... (see the module docstring)."""

    __slots__ = (
        "_batteries",
        "_hours",
        "_n",
        "_profiles",
        "_pv_avail",
        "_pv_kw",
        "_pv_ramp",
        "_step_s",
        "_steps",
    )

    def __init__(self, companies: Sequence[CompanySpec], profiles: Profiles, step_s: float = 1.0) -> None:
        n = len(companies)
        _require(math.isfinite(step_s) and step_s > 0, "step_s must be finite and > 0")
        _require(profiles.company_count == n, f"profiles hold {profiles.company_count} companies, config {n}")
        has_pv = np.array([c.pv is not None for c in companies], dtype=np.float64)
        # a company without PV has none, whatever its column says
        self._profiles = Profiles(profiles.t_s, profiles.load_kw, profiles.pv_kw * has_pv)
        self._n = n
        self._step_s = float(step_s)
        self._hours = self._step_s / 3600.0
        self._steps = 0
        self._pv_ramp = [
            0.0 if c.pv is None else c.pv.ramp_pct_per_s / 100 * c.pv.peak_kw * step_s for c in companies
        ]
        # before t = 0 PV limits are off: output = available
        self._pv_avail: list[float] = self._profiles.at(0.0)[1].tolist()
        self._pv_kw = list(self._pv_avail)
        self._batteries = [
            _Battery(
                index=j,
                ramp_kw=b.ramp_pct_per_s / 100 * max(b.max_charge_kw, b.max_discharge_kw) * step_s,
                max_charge_kw=b.max_charge_kw,
                max_discharge_kw=b.max_discharge_kw,
                capacity_kwh=b.capacity_kwh,
                min_kwh=b.capacity_kwh * b.min_soc_pct / 100,
                max_kwh=b.capacity_kwh * b.max_soc_pct / 100,
                efficiency=b.efficiency,
                energy_kwh=b.capacity_kwh * b.soc_pct / 100,
            )
            for j, c in enumerate(companies)
            if (b := c.battery) is not None
        ]

    @property
    def step_s(self) -> float:
        return self._step_s

    def step(
        self,
        t_s: float,
        battery_setpoint_kw: Sequence[float | None],
        pv_limit_kw: Sequence[float | None],
    ) -> StepRecord:
        """Advance one step from `t_s` (the next step's start) with the setpoints and limits in force.

        `battery_setpoint_kw[j]`: None means 0 kW (ignored for a company without a
        battery); `pv_limit_kw[j]`: None means no limit.
        """
        n = self._n
        _require(
            len(battery_setpoint_kw) == n and len(pv_limit_kw) == n,
            f"need {n} battery setpoints and {n} PV limits",
        )
        expected = self._steps * self._step_s
        _require(
            abs(t_s - expected) <= 1e-3 * self._step_s, f"step at t_s={t_s}; the next step is {expected}"
        )
        load, avail = self._profiles.at(t_s)
        avail_l: list[float] = avail.tolist()
        pv_out = self._step_pv(avail_l, pv_limit_kw)
        battery = [0.0] * n
        soc = [0.0] * n
        for b in self._batteries:
            soc[b.index] = 100.0 * b.energy_kwh / b.capacity_kwh
            battery[b.index] = self._step_battery(b, battery_setpoint_kw[b.index])
        self._pv_avail = avail_l
        self._pv_kw = pv_out
        self._steps += 1
        pv_a = np.array(pv_out)
        bat_a = np.array(battery)
        return StepRecord(
            t_s=float(t_s),
            load_kw=_readonly(load),
            pv_available_kw=_readonly(avail),
            pv_kw=_readonly(pv_a),
            battery_kw=_readonly(bat_a),
            soc_pct=_readonly(np.array(soc)),
            grid_kw=_readonly(load - pv_a - bat_a),
        )

    def _step_pv(self, avail: list[float], limits: Sequence[float | None]) -> list[float]:
        # plain floats and comparisons, no min()/max() calls: this runs per company per step
        out: list[float] = []
        put = out.append
        for a, lim, prev, prev_a, r in zip(
            avail, limits, self._pv_kw, self._pv_avail, self._pv_ramp, strict=True
        ):
            if lim is None or not lim < a:  # `not lim < a` also reads NaN as "no limit"
                target = a
            elif lim > 0.0:
                target = lim
            else:
                target = 0.0
            if target >= prev:  # rising: jump if following availability, else ramp
                following = -_FOLLOW_TOL_KW <= prev - prev_a <= _FOLLOW_TOL_KW
                put(target if following or target <= prev + r else prev + r)
            else:  # falling: ramp toward the target, but never above availability
                down = prev - r
                if down <= target:
                    put(target)
                elif down < a:
                    put(down)
                else:  # a cloud edge: at once
                    put(a)
        return out

    def _step_battery(self, b: _Battery, setpoint: float | None) -> float:
        sp = 0.0 if setpoint is None or math.isnan(setpoint) else setpoint
        prev = b.power_kw
        ramp = b.ramp_kw
        if sp > prev + ramp:
            p = prev + ramp
        elif sp < prev - ramp:
            p = prev - ramp
        else:
            p = sp
        if p > b.max_discharge_kw:
            p = b.max_discharge_kw
        elif p < -b.max_charge_kw:
            p = -b.max_charge_kw
        # compare energies, not powers, so that E never crosses a limit by a rounding error
        e = b.energy_kwh
        if p > 0.0:
            e_next = e - p / b.efficiency * self._hours
            if e_next > b.min_kwh:
                e = e_next
            elif e > b.min_kwh:  # stop exactly at min: the discharge that empties to min
                p, e = (e - b.min_kwh) * b.efficiency / self._hours, b.min_kwh
            else:
                p = 0.0
        elif p < 0.0:
            e_next = e - p * b.efficiency * self._hours
            if e_next < b.max_kwh:
                e = e_next
            elif e < b.max_kwh:  # stop exactly at max: the charge that fills to max
                p, e = -(b.max_kwh - e) / b.efficiency / self._hours, b.max_kwh
            else:
                p = 0.0
        b.power_kw = p
        b.energy_kwh = e
        return p
