"""The control core's plain data: parameters, the snapshot a cycle sees, its decision and state.

What it is: `Params` (and its `BatteryParams`, `CompanyParams`, built from a `SiteConfig`), what
operators set (`Overrides`, `BatteryOverride`, `BatteryMode`), what the gateway measured
(`Snapshot`, `CompanyReading`), what `hubctl.core.control.step` decides (`Decision`, with the
controller's view of the available PV, `PvAvailable`) and carries to the next cycle (`State`,
`QuarterBudget`, `BandMode`), and `cap_less_margin`, a cap less its safety margin.
Frozen dataclasses, no I/O (the rules of `hubctl.core`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from hubctl.core.forecast import PvIndex, RecentLoad
from hubctl.core.history import Calendar, History
from hubctl.core.limits import LimitClock

if TYPE_CHECKING:
    from collections.abc import Mapping
    from zoneinfo import ZoneInfo

    from hubctl.config.site import SiteConfig
    from hubctl.core.limits import LimitsInForce
    from hubctl.core.plan import Plan


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    min_soc_pct: float
    max_soc_pct: float
    efficiency: float
    reserve_soc_pct: float
    e_min_kwh: float = field(init=False)  # at min_soc_pct (kept as fields: read every cycle)
    e_max_kwh: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "e_min_kwh", self.capacity_kwh * self.min_soc_pct / 100.0)
        object.__setattr__(self, "e_max_kwh", self.capacity_kwh * self.max_soc_pct / 100.0)


@dataclass(frozen=True, slots=True)
class CompanyParams:
    id: str
    pv_peak_kw: float  # 0: no PV
    battery: BatteryParams | None
    has_caps: bool
    pv_ramp_kw_per_s: float = math.inf  # how fast its inverters follow a lower limit (config: ramp_pct_per_s)


@dataclass(frozen=True)
class Params:
    companies: tuple[CompanyParams, ...]
    limits: LimitClock = field(compare=False)
    lat: float
    lon: float
    margin_pct: float
    margin_min_kw: float
    stale_after_s: float
    plan_every_s: float
    plan_step_s: float
    horizon_h: float
    deadband_kw: float
    pv_prior_k: float
    contract_import_kw: float | None
    tz: ZoneInfo = field(compare=False)
    calendar: Calendar = field(compare=False)
    ramp_windows: tuple[tuple[int, int], ...] = ()  # local [start, end) s of day; see hubctl.core.forecast
    history_half_life_days: float = 21.0
    history_max_days: int = 400
    pv_peaks_kw: tuple[float, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pv_peaks_kw", tuple(c.pv_peak_kw for c in self.companies))

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Params:
        ctl = cfg.control
        companies = []
        for c in cfg.companies:
            bat = None
            if c.battery is not None:
                b = c.battery
                reserve = b.reserve_soc_pct if b.reserve_soc_pct is not None else ctl.default_reserve_soc_pct
                reserve = min(max(reserve, b.min_soc_pct), b.max_soc_pct)
                bat = BatteryParams(
                    b.capacity_kwh,
                    b.max_charge_kw,
                    b.max_discharge_kw,
                    b.min_soc_pct,
                    b.max_soc_pct,
                    b.efficiency,
                    reserve,
                )
            ramp = c.pv.peak_kw * c.pv.ramp_pct_per_s / 100.0 if c.pv else math.inf
            companies.append(CompanyParams(c.id, c.pv.peak_kw if c.pv else 0.0, bat, c.has_caps, ramp))
        limits = LimitClock(cfg.park, {c.id: c for c in cfg.companies}, cfg.tz)
        return cls(
            tuple(companies),
            limits,
            cfg.site.location.lat,
            cfg.site.location.lon,
            ctl.margin_pct,
            ctl.margin_min_kw,
            ctl.stale_after_s,
            ctl.plan_every_s,
            ctl.plan_step_s,
            ctl.horizon_h,
            ctl.deadband_kw,
            ctl.pv_clear_sky_ratio,
            cfg.park.import_limit_kw,
            cfg.tz,
            Calendar(ctl.holidays_country, ctl.holidays_subdivision, ctl.closed_dates),
            tuple((w.start_s, w.end_s) for w in ctl.ramp_windows),
            ctl.history_half_life_days,
            ctl.history_max_days,
        )

    def empty_history(self) -> History:
        return History.empty(
            [c.id for c in self.companies],
            self.tz,
            self.calendar,
            half_life_days=self.history_half_life_days,
            max_days=self.history_max_days,
        )

    def margin(self, cap_kw: float) -> float:
        return max(cap_kw * self.margin_pct / 100.0, self.margin_min_kw)


@dataclass(frozen=True, slots=True)
class CompanyReading:
    """What the gateway knows of one company; None = not available (never 0)."""

    grid_kw: float | None
    pv_kw: float | None = None
    battery_kw: float | None = None
    soc_pct: float | None = None
    grid_age_s: float = 0.0
    # the battery reading has not moved since hubctl's last setpoint write to the battery and the
    # grid meter changed after it: the meter may show the new setpoint that the battery reading does
    # not yet (a gateway polls its devices at different moments, a device takes a setpoint at its
    # next step). The core then takes the battery power the
    # meter saw as anywhere between the reading and that setpoint (`hubctl.core.park.predict_net`).
    # False: both from the same moment, or both from before the write (`hubctl sim`)
    battery_behind: bool = False
    # a shared connection whose park meter stands in for this company's stale grid meter: `grid_kw`
    # is the park meter less the other companies and the common load (`hubctl.service.store`)
    grid_from_park_meter: bool = False


class BandMode(StrEnum):
    """What the batteries do about the plan's energy band, carried from cycle to cycle (hysteresis)."""

    CHARGE = "charge"  # below the floor: charge towards it
    DRAIN = "drain"  # above the ceiling: make room for the solar excess ahead
    FREE = "free"  # inside the band: self-consumption


class BatteryMode(StrEnum):
    AUTO = "auto"
    HOLD = "hold"
    CHARGE = "charge"
    DISCHARGE = "discharge"


@dataclass(frozen=True, slots=True)
class BatteryOverride:
    """An operator's manual battery mode. The caps still win: a manual charge that would take the
    park or the company over an import cap is reduced, a manual discharge over an export cap too."""

    mode: BatteryMode
    power_kw: float = 0.0  # >= 0, for charge and discharge


@dataclass(frozen=True, slots=True)
class Overrides:
    """What operators set (over MQTT), already validated and not expired. Limits may only lower a cap."""

    park_import_kw: float | None = None
    park_export_kw: float | None = None
    company_import_kw: Mapping[str, float] = field(default_factory=dict)
    company_export_kw: Mapping[str, float] = field(default_factory=dict)
    battery: Mapping[str, BatteryOverride] = field(default_factory=dict)  # by company id
    reserve_soc_pct: Mapping[str, float] = field(default_factory=dict)  # by company id


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class ParkMeterReading:
    """The meter of a shared park connection, the one the grid operator reads (+ import); None: not
    available. Only a park on one shared connection has one (`park.connection: shared`)."""

    grid_kw: float | None
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    ts_utc: float  # wall-clock time of the cycle (limits, sun, quarter-hours)
    companies: tuple[CompanyReading, ...]  # in config order
    overrides: Overrides = NO_OVERRIDES
    # a shared connection's meter: the park caps are held on it, the companies' meters split it. None:
    # a group contract over the companies' own connections, whose caps are on the netted sum
    park_meter: ParkMeterReading | None = None

    def park_grid_kw(self) -> float | None:
        """The park's grid power as the caps judge it: the park meter where there is one, else the
        companies' sum; None when that is not known (a meter missing or not finite)."""
        if self.park_meter is not None:
            g = self.park_meter.grid_kw
            return g if g is not None and math.isfinite(g) else None
        grids = [r.grid_kw for r in self.companies]
        if any(g is None or not math.isfinite(g) for g in grids):
            return None
        return math.fsum(g for g in grids if g is not None)

    def common_kw(self) -> float | None:
        """What the park meter shows beyond the companies' meters (common loads and losses at the
        connection, + import): 0 without a park meter; None when either side is not known."""
        if self.park_meter is None:
            return 0.0
        park = self.park_grid_kw()
        grids = [r.grid_kw for r in self.companies]
        if park is None or any(g is None or not math.isfinite(g) for g in grids):
            return None
        return park - math.fsum(g for g in grids if g is not None)


@dataclass(frozen=True, slots=True)
class PvAvailable:
    """The controller's view of the available PV of one cycle, per company in config order (kW).

    An inverter that no limit holds back gives what it can: its available PV is its reading
    (``estimated`` False). One a limit holds back (``hubctl.core.park.pv_available``) does not
    show what it could give: its available PV is the controller's estimate, the learned
    clear-sky model ``peak * clear-sky shape * k_clear`` (``hubctl.core.forecast.PvIndex``) kept
    between the reading and the peak (``estimated`` True). ``curtailed_kw`` is the rule of
    ``hubctl.core.park.curtailed_pv_kw``: ``max(available - reading, 0)`` while held back, 0
    otherwise. ``None``: not known (the inverter was not read). A company without PV: 0 kW.
    """

    available_kw: tuple[float | None, ...]
    estimated: tuple[bool, ...]
    curtailed_kw: tuple[float | None, ...]

    @property
    def park_available_kw(self) -> float | None:
        """The park's available PV; None when any company's is unknown."""
        return _sum_known(self.available_kw)

    @property
    def park_curtailed_kw(self) -> float | None:
        """The park's curtailed PV; None when any company's is unknown."""
        return _sum_known(self.curtailed_kw)

    @property
    def any_estimated(self) -> bool:
        """Some inverter was held by its limit: the park's available PV is (partly) an estimate."""
        return any(self.estimated)


def _sum_known(values: tuple[float | None, ...]) -> float | None:
    return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)


@dataclass(frozen=True, slots=True)
class Decision:
    battery_setpoint_kw: tuple[float | None, ...]  # None: company has no battery
    pv_limit_kw: tuple[float | None, ...]  # None: no limit
    mode: str  # "normal" | "failsafe"
    park_limits: LimitsInForce
    company_limits: dict[str, LimitsInForce]
    floor_kwh: float
    ceiling_kwh: float
    reason: str  # why the batteries/PV do what they do, for operators
    # the available PV as the controller sees it (None: not observed, the fail-safe decides blind)
    pv_available: PvAvailable | None = None


@dataclass(frozen=True, slots=True)
class QuarterBudget:
    quarter: int  # UTC quarter number (ts // 900); real UTC offsets are whole quarters
    import_excess_kwh: float  # integral of (grid - import cap) so far, may be negative
    export_excess_kwh: float  # integral of (-grid - export cap) so far


@dataclass(frozen=True, slots=True)
class State:
    battery_kw: tuple[float, ...]  # last setpoints (0 where no battery)
    pv_limit_kw: tuple[float | None, ...]
    history: History  # quarter-hours per company and local day (persisted by the gateway)
    recent: RecentLoad  # the park's last day in 5-minute buckets
    pv_index: PvIndex
    plan: Plan | None
    budget: QuarterBudget
    last_ts: float | None
    band_mode: BandMode
    last_net_kw: tuple[float, ...] | None  # per company load - uncurtailed PV, last cycle (for the trend)
    last_slope_kw_per_s: float = 0.0
    # cycles in a row a battery gave clearly less than its setpoint (charging, discharging): a device-side
    # limit (a BMS SoC window, a derating) that the configuration does not know
    short_charge: tuple[int, ...] = ()
    short_discharge: tuple[int, ...] = ()
    # inverters that gave their limit last cycle (`Observation.curtailed`): one below its limit now is
    # climbing out of it (`hubctl.core.park.pv_available`)
    pv_at_limit: tuple[bool, ...] = ()

    @classmethod
    def initial(cls, params: Params, history: History | None = None) -> State:
        """The state of a controller that starts now, knowing `history` (an import, a reload)."""
        n = len(params.companies)
        return cls(
            (0.0,) * n,
            (None,) * n,
            history if history is not None else params.empty_history(),
            RecentLoad.empty(),
            PvIndex.prior(n, params.pv_prior_k),
            None,
            QuarterBudget(-1, 0.0, 0.0),
            None,
            BandMode.FREE,
            None,
        )


def cap_less_margin(v: float | None, params: Params) -> float:
    """A cap (kW; None: no cap) less its safety margin (`Params.margin`), never below 0."""
    return math.inf if v is None else max(0.0, v - params.margin(v))
