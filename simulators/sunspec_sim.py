"""Simulated SunSpec devices: the kinds, their common base, two kinds of PV inverter and a meter.

Model chains (from 40000, ending 0xFFFF):

- `inverter`: 1 common, 103 three-phase inverter, 120 nameplate, 121 settings,
  123 immediate controls. The PV limit is `WMaxLimPct` (percent of `WMax`,
  which is the scenario's `peak_kw`) while `WMaxLim_Ena` = 1. A write of
  `WMaxLimPct`, `WMaxLimPct_RvrtTms` or `WMaxLim_Ena` (re)arms the revert timer
  `WMaxLimPct_RvrtTms` (seconds, 0 = never); when it runs out `WMaxLim_Ena`
  reads 0 again and the output follows the fallback: the installer's fallback
  limit (`DeviceOptions.pv_fallback_limit_pct`), else no limit (123 has no
  reversion limit a client could set). `Conn` = 0 disconnects (0 kW).
  `WMaxLimPct_WinTms` and `_RmpTms` are accepted and stored but not applied:
  the scenario's PV ramp is the ramp.
- `inverter-704`: 1, 103, 120, 121, 704 DER AC controls (no 123), the PV limit
  as inverters with 704 have it: `WMaxLimPct` (percent of `WMax`) while
  `WMaxLimPctEna` = 1. A write of `WMaxLimPct`, `WMaxLimPctEna` or
  `WMaxLimPctRvrtTms` (re)arms the revert timer `WMaxLimPctRvrtTms` (seconds,
  0 = never) when `WMaxLimPctEna` = 1; `WMaxLimPctRvrtRem` counts down. When
  the timer runs out `WMaxLimPctEna` reads 0 again and the output falls back to
  the reversion limit `WMaxLimPctRvrt` when `WMaxLimPctEnaRvrt` = 1 (what
  hubctl configures), else to the installer's fallback limit
  (`DeviceOptions.pv_fallback_limit_pct`), else to no limit. The reversion
  points are read when the fallback applies: a write to them during a
  fallback moves it.
- Both inverters: a write of the limit or its timer while the limit is off
  (never enabled, switched off, or lapsed: the enable point reads 0) only
  stores the value; writing the enable point 0 switches the limit off (and
  ends a fallback). After a communication loss (`DeviceOptions.comm_loss_s`)
  the output follows the same fallback as after a lapse, limit or not.
- `storage-124` and `storage-802`: the storage kinds, in `simulators.sunspec_storage`.
- `meter`: 1, 203 wye meter for a company's connection or the park's:
  `W` is + import / - export (SunSpec meters report power flowing from the grid
  into the site as positive), `TotWhImp` / `TotWhExp` accumulate.

Decisions:
- Scale factors are chosen per device from its rating so that the largest
  value fits an int16 (W_SF = 2 for a 420 kW inverter: 100 W steps), as real
  devices do; a client must apply them, never assume 0.
- Only the points listed in `_writable` take writes; any other register in a
  write answers exception 2, a value outside its bounds exception 3 (SunSpec
  percentages 0..100 for WMaxLimPct, -100..100 for rates, powers within the
  rating). Points the simulator does not fill read "not implemented".
- Baseline without commands: batteries idle (0 kW), PV unlimited, as in the
  physics (SCENARIOS.md), not a vendor's self-consumption mode.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from pymodbus.constants import ExcCodes

from hubctl.codec.registers import Function
from simulators.live_park import Setpoint
from simulators.modbus_sim import ModbusUnit, write_span
from simulators.sunspec_image import BASE_ADDRESS, SunSpecImage, scale_exponent

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hubctl.codec.sunspec import SunSpecPoint
    from simulators.live_park import CompanyInfo, Park
    from simulators.modbus_sim import DeviceOptions

_PHASE_KV = 0.23
_ST_SLEEPING, ST_MPPT, _ST_THROTTLED = 2, 4, 5  # 103 St: operating states
U16_MAX = 65534  # 0xFFFF is "not implemented"
U32_MAX = 2**32 - 2


class SunSpecKind(StrEnum):
    INVERTER = "inverter"
    INVERTER_704 = "inverter-704"
    STORAGE_124 = "storage-124"
    STORAGE_802 = "storage-802"
    METER = "meter"


MODELS: dict[SunSpecKind, tuple[int, ...]] = {
    SunSpecKind.INVERTER: (1, 103, 120, 121, 123),
    SunSpecKind.INVERTER_704: (1, 103, 120, 121, 704),
    SunSpecKind.STORAGE_124: (1, 103, 120, 121, 124),
    SunSpecKind.STORAGE_802: (1, 103, 120, 121, 802, 704),
    SunSpecKind.METER: (1, 203),
}
ROLE_OF_KIND = {
    SunSpecKind.INVERTER: "pv",
    SunSpecKind.INVERTER_704: "pv",
    SunSpecKind.STORAGE_124: "battery",
    SunSpecKind.STORAGE_802: "battery",
    SunSpecKind.METER: "grid_meter",
}

Key = tuple[int, str]


class SunSpecUnit(ModbusUnit):
    """A SunSpec device: a register image from 40000, refreshed from the park on every read."""

    kind: SunSpecKind

    def __init__(
        self,
        device_id: str,
        unit_id: int,
        park: Park,
        company: str | None,
        options: DeviceOptions | None = None,
    ) -> None:
        super().__init__(device_id, unit_id, park, options)
        self.company = None if company is None else park.company(company)
        self.image = SunSpecImage(MODELS[self.kind])
        self._writable: dict[Key, tuple[float, float]] = {}
        self._write_order: list[SunSpecPoint] = []
        self._common()

    # -- layout and the ModbusUnit contract
    def segments(self, function: Function) -> list[tuple[int, int]]:
        return [(BASE_ADDRESS, len(self.image.words))] if function is Function.HOLDING else []

    def render(self, function: Function) -> Iterable[tuple[int, list[int]]]:
        if function is Function.HOLDING:
            self.update()
            yield BASE_ADDRESS, list(self.image.words)

    def write(self, address: int, words: list[int]) -> ExcCodes | None:
        span = write_span([(p.address, p.size) for p in self._write_order], address, len(words))
        if isinstance(span, ExcCodes):
            return span
        updates: dict[Key, float] = {}
        at = 0
        for i in span:
            p = self._write_order[i]
            value = self.image.decode_value(p, words[at : at + p.size])
            at += p.size
            low, high = self._writable[(p.model_id, p.name)]
            if value is None or not low <= value <= high:
                return ExcCodes.ILLEGAL_VALUE
            updates[(p.model_id, p.name)] = value
        for (mid, name), value in updates.items():
            self.image.set_value(mid, name, value)
        self.on_write(updates)
        return None

    def _owner(self) -> CompanyInfo:
        if self.company is None:
            raise ValueError(f"{self.device_id}: a {self.kind.value} belongs to a company")
        return self.company

    # -- what a kind defines
    def update(self) -> None:
        """Refresh the dynamic points from the park."""

    def on_write(self, updates: dict[Key, float]) -> None:
        """Apply accepted writes (already stored in the image)."""

    # -- helpers
    def allow_write(self, model_id: int, name: str, low: float, high: float) -> None:
        if not self.image.point(model_id, name).writable:
            raise ValueError(f"{model_id}.{name} is read-only in the SunSpec model")
        self._writable[(model_id, name)] = (low, high)
        self._write_order = sorted(
            (self.image.point(m, n) for m, n in self._writable), key=lambda q: q.address
        )

    def _common(self) -> None:
        img = self.image
        img.set_string(1, "Mn", "hubctl")
        img.set_string(1, "Md", f"simulated {self.kind.value}")
        img.set_string(1, "Opt", "sim")
        img.set_string(1, "Vr", "0.1.0")
        img.set_string(1, "SN", self.device_id)
        img.set_raw(1, "DA", self.unit_id)
        img.set_raw(1, "Pad", 0)

    def _scale_factors(self, model_id: int, exponents: dict[str, int]) -> None:
        for name, exponent in exponents.items():
            self.image.set_raw(model_id, name, exponent)

    def _inverter_ac(self, rating_w: float) -> None:
        """Static part of model 103: scale factors and the points that do not move."""
        img = self.image
        self._scale_factors(
            103,
            {
                "A_SF": scale_exponent(rating_w / 230.0, signed=False, minimum=-1),
                "V_SF": -1,
                "W_SF": scale_exponent(rating_w, signed=True),
                "Hz_SF": -2,
                "VA_SF": scale_exponent(rating_w, signed=True),
                "VAr_SF": scale_exponent(rating_w, signed=True),
                "PF_SF": 0,
                "WH_SF": 0,
                "Tmp_SF": -1,
            },
        )
        for name in ("PhVphA", "PhVphB", "PhVphC"):
            img.set_value(103, name, 230.0)
        for name in ("PPVphAB", "PPVphBC", "PPVphCA"):
            img.set_value(103, name, 398.4)
        img.set_value(103, "Hz", 50.0)
        img.set_value(103, "VAr", 0.0)
        img.set_value(103, "TmpCab", 35.0)
        img.set_raw(103, "Evt1", 0)
        img.set_raw(103, "Evt2", 0)

    def _inverter_live(self, power_kw: float, energy_kwh: float, status: int) -> None:
        img = self.image
        w = power_kw * 1000.0
        amps = abs(power_kw) / _PHASE_KV / 3
        img.set_value(103, "W", w)
        img.set_value(103, "VA", abs(w))
        img.set_value(103, "PF", 100.0 if w >= 0 else -100.0)
        img.set_value(103, "A", 3 * amps)
        for name in ("AphA", "AphB", "AphC"):
            img.set_value(103, name, amps)
        img.set_value(103, "WH", energy_kwh * 1000.0)
        img.set_raw(103, "St", status)

    def _nameplate(self, *, der_type: int, rating_w: float, settings_w: float) -> None:
        img = self.image
        self._scale_factors(
            120,
            {
                "WRtg_SF": scale_exponent(rating_w, signed=False),
                "VARtg_SF": scale_exponent(rating_w, signed=False),
                "VArRtg_SF": scale_exponent(rating_w, signed=True),
                "ARtg_SF": scale_exponent(rating_w / 230.0, signed=False, minimum=-1),
                "PFRtg_SF": -2,
            },
        )
        img.set_raw(120, "DERTyp", der_type)
        img.set_value(120, "WRtg", rating_w)
        img.set_value(120, "VARtg", rating_w)
        for name, sign in (("VArRtgQ1", 1), ("VArRtgQ2", 1), ("VArRtgQ3", -1), ("VArRtgQ4", -1)):
            img.set_value(120, name, sign * 0.44 * rating_w)
        img.set_value(120, "ARtg", rating_w / 230.0 / 3)
        for name, pf in (("PFRtgQ1", 0.9), ("PFRtgQ2", -0.9), ("PFRtgQ3", -0.9), ("PFRtgQ4", 0.9)):
            img.set_value(120, name, pf)
        img.set_raw(120, "Pad", 0)
        self._scale_factors(
            121, {"WMax_SF": scale_exponent(settings_w, signed=False), "VRef_SF": 0, "VRefOfs_SF": 0}
        )
        img.set_value(121, "WMax", settings_w)
        img.set_value(121, "VRef", 230.0)
        img.set_value(121, "VRefOfs", 0.0)


class CompanyUnit(SunSpecUnit):
    """A device of a company's PV plant or battery, holding `share` of it: an inverter or a storage.

    Construction: the common model, the owner, then `_attach` (the family's park unit and static
    points: `_Inverter`, `sunspec_storage._Storage`), then `_configure` (the kind's own points).
    """

    def __init__(
        self,
        device_id: str,
        unit_id: int,
        park: Park,
        company: str,
        options: DeviceOptions | None = None,
        share: float = 1.0,
    ) -> None:
        super().__init__(device_id, unit_id, park, company, options)
        self.owner = self._owner()
        self._attach(park, company, share)
        self._configure()

    def _attach(self, park: Park, company: str, share: float) -> None:
        """Take this device's share of the company's plant and set the points its family shares."""
        raise NotImplementedError

    def _configure(self) -> None:
        """The kind's own points (called at the end of construction)."""


class _Inverter(CompanyUnit):
    """What both inverter kinds share: ratings, 103, the PV unit, and the limit `WMaxLimPct` (percent
    of WMax) under an enable point with a revert timer, held as a `Setpoint` (see the module docstring).
    """

    control: ClassVar[int]  # the model with the limit
    enable: ClassVar[str]  # its enable point
    timer: ClassVar[str]  # its revert timer (seconds)

    def _attach(self, park: Park, company: str, share: float) -> None:
        if self.owner.pv_peak_kw is None:
            raise ValueError(f"{self.device_id}: company {company} has no PV")
        self.unit = park.pv_unit(self.owner.id, share=share, limit_kw=self.pv_limit_kw)
        peak_kw = self.peak_kw = self.unit.peak_kw
        self.limit_pct = Setpoint()
        self._inverter_ac(peak_kw * 1000.0)
        self._nameplate(der_type=4, rating_w=peak_kw * 1000.0, settings_w=peak_kw * 1000.0)

    def on_write(self, updates: dict[Key, float]) -> None:
        m = self.control
        if not {(m, "WMaxLimPct"), (m, self.timer), (m, self.enable)} & updates.keys():
            return
        img = self.image
        enabled = updates.get((m, self.enable))
        if enabled == 0:
            self.limit_pct.cancel()
            return
        if enabled is None:
            self.limit_pct.update(self.now_s)
            if self.limit_pct.value is None:  # off or lapsed: the enable point reads 0, the value is stored
                img.set_raw(m, self.enable, 0)
                return
        pct = img.get_value(m, "WMaxLimPct") or 0.0
        self.limit_pct.write(pct, self.now_s, img.get_raw(m, self.timer))

    def connected(self) -> bool:
        return True

    def reversion_pct(self) -> float | None:
        """The limit (% of WMax) after a lapse or a communication loss; None: no limit."""
        return self.options.pv_fallback_limit_pct

    def pv_limit_kw(self, now_s: float) -> float | None:
        if not self.connected():
            return 0.0
        fallback_pct = self.reversion_pct()
        pct = fallback_pct if self.comm_lost() else self.limit_pct.effective(now_s, fallback_pct)
        return None if pct is None else pct / 100.0 * self.peak_kw

    def update(self) -> None:
        pv, avail = self.unit.kw, self.unit.available_kw
        status = _ST_SLEEPING if pv <= 0 else _ST_THROTTLED if pv < avail - 1e-6 else ST_MPPT
        self._inverter_live(pv, self.unit.energy_kwh, status)
        self.limit_pct.update(self.now_s)
        self.image.set_raw(self.control, self.enable, 0 if self.limit_pct.value is None else 1)


class SunSpecInverter(_Inverter):
    """PV inverter with model 123's WMaxLimPct (see the module docstring)."""

    kind = SunSpecKind.INVERTER
    control, enable, timer = 123, "WMaxLim_Ena", "WMaxLimPct_RvrtTms"

    def _configure(self) -> None:
        img = self.image
        self._scale_factors(123, {"WMaxLimPct_SF": -2, "OutPFSet_SF": -3})
        for name, value in (
            ("Conn", 1),
            ("WMaxLimPct", 100.0),
            ("WMaxLimPct_WinTms", 0),
            ("WMaxLimPct_RvrtTms", 0),
            ("WMaxLimPct_RmpTms", 0),
            ("WMaxLim_Ena", 0),
            ("OutPFSet", 1.0),
            ("OutPFSet_Ena", 0),
            ("VArPct_Ena", 0),
        ):
            img.set_value(123, name, value)
        self.allow_write(123, "Conn", 0, 1)
        self.allow_write(123, "WMaxLimPct", 0, 100)
        for name in ("WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms"):
            self.allow_write(123, name, 0, U16_MAX)
        self.allow_write(123, "WMaxLim_Ena", 0, 1)

    def connected(self) -> bool:
        return self.image.get_raw(123, "Conn") != 0


class SunSpecInverter704(_Inverter):
    """PV inverter whose limit is model 704's WMaxLimPct, with a reversion limit (module docstring)."""

    kind = SunSpecKind.INVERTER_704
    control, enable, timer = 704, "WMaxLimPctEna", "WMaxLimPctRvrtTms"

    def _configure(self) -> None:
        img = self.image
        self._scale_factors(704, {"WMaxLimPct_SF": -2})
        for name, value in (
            ("WMaxLimPctEna", 0),
            ("WMaxLimPct", 100.0),
            ("WMaxLimPctRvrt", 100.0),
            ("WMaxLimPctEnaRvrt", 0),
            ("WMaxLimPctRvrtTms", 0),
            ("WMaxLimPctRvrtRem", 0),
        ):
            img.set_value(704, name, value)
        for name in ("WMaxLimPctEna", "WMaxLimPctEnaRvrt"):
            self.allow_write(704, name, 0, 1)
        for name in ("WMaxLimPct", "WMaxLimPctRvrt"):
            self.allow_write(704, name, 0, 100)
        self.allow_write(704, "WMaxLimPctRvrtTms", 0, U32_MAX)

    def reversion_pct(self) -> float | None:
        if self.image.get_raw(704, "WMaxLimPctEnaRvrt") == 1:
            return self.image.get_value(704, "WMaxLimPctRvrt")
        return super().reversion_pct()

    def update(self) -> None:
        super().update()
        self.image.set_value(704, "WMaxLimPctRvrtRem", math.ceil(self.limit_pct.remaining_s(self.now_s)))


class SunSpecMeter(SunSpecUnit):
    """Model 203 wye meter at a company's connection (company given) or the park's (company None)."""

    kind = SunSpecKind.METER

    def __init__(
        self,
        device_id: str,
        unit_id: int,
        park: Park,
        company: str | None,
        range_kw: float,
        options: DeviceOptions | None = None,
    ) -> None:
        super().__init__(device_id, unit_id, park, company, options)
        img = self.image
        range_w = 1000.0 * range_kw
        self._scale_factors(
            203,
            {
                "A_SF": scale_exponent(range_w / 230.0, signed=True, minimum=-1),
                "V_SF": -1,
                "Hz_SF": -2,
                "W_SF": scale_exponent(range_w, signed=True),
                "VA_SF": scale_exponent(range_w, signed=True),
                "VAR_SF": scale_exponent(range_w, signed=True),
                "PF_SF": 0,
                "TotWh_SF": 0,
            },
        )
        for name in ("PhV", "PhVphA", "PhVphB", "PhVphC"):
            img.set_value(203, name, 230.0)
        for name in ("PPV", "PhVphAB", "PhVphBC", "PhVphCA"):
            img.set_value(203, name, 398.4)
        img.set_value(203, "Hz", 50.0)
        for name in ("VAR", "VARphA", "VARphB", "VARphC"):
            img.set_value(203, name, 0.0)
        img.set_raw(203, "Evt", 0)

    def update(self) -> None:
        if self.company is None:
            grid = self.park.park_meter_kw
            counters = self.park.park_counters
        else:
            grid = float(self.park.record.grid_kw[self.company.index])
            counters = self.park.counters[self.company.index]
        img = self.image
        w = grid * 1000.0
        amps = abs(grid) / _PHASE_KV / 3
        img.set_value(203, "W", w)
        img.set_value(203, "VA", abs(w))
        img.set_value(203, "A", 3 * amps)
        pf = 100.0 if w >= 0 else -100.0
        img.set_value(203, "PF", pf)
        for phase in ("A", "B", "C"):
            img.set_value(203, f"Aph{phase}", amps)
            img.set_value(203, f"Wph{phase}", w / 3)
            img.set_value(203, f"VAph{phase}", abs(w) / 3)
            img.set_value(203, f"PFph{phase}", pf)
        img.set_value(203, "TotWhImp", counters.import_kwh * 1000.0)
        img.set_value(203, "TotWhExp", counters.export_kwh * 1000.0)
