"""Simulated SunSpec storage devices: `storage-124` and `storage-802`, on pysunspec2's models.

The kinds, their model chains and the common base are `simulators.sunspec_sim`'s.

- `storage-124`: 1, 103 (W: + discharge), 120, 121, 124 basic storage
  controls. `StorCtl_Mod` bit 0 bounds charging to `InWRte` % of `WChaMax`,
  bit 1 bounds discharging to `OutWRte` % of `MaxDisChaRte`; a negative rate
  forces the other direction (the reading of 124 that Fronius and evcc use).
  The battery then runs at the power nearest to 0 kW inside those bounds.
  `InOutWRte_RvrtTms` reverts `StorCtl_Mod` to 0 (and the battery to the
  fallback power); `ChaState` is the state of charge.
- `storage-802`: 1, 103, 120, 121, 802 battery (SoC, W: + discharge), 704
  DER AC controls: `WSetEna`, `WSetMod` (1 = watts, 0 = percent of WMax),
  `WSet` / `WSetPct` (+ discharge), `WSetRvrtTms` with `WSetEnaRvrt`,
  `WSetRvrt` / `WSetPctRvrt` as the reversion power (else the device's
  fallback power), `WSetRvrtRem` counting down.

Scale factors, writes and the baseline (idle, 0 kW) follow `simulators.sunspec_sim`'s decisions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from simulators.live_park import Setpoint
from simulators.sunspec_image import scale_exponent
from simulators.sunspec_sim import ST_MPPT, U16_MAX, U32_MAX, CompanyUnit, Key, SunSpecKind

if TYPE_CHECKING:
    from simulators.live_park import Park

_BATTERY_V = 51.2
_ST_STANDBY = 8  # 103 St
_CHA_EMPTY, _CHA_DISCHARGING, _CHA_CHARGING, _CHA_FULL, _CHA_HOLDING = 2, 3, 4, 5, 6  # ChaSt


class _Storage(CompanyUnit):
    """What both storage kinds share: ratings, 103 as the AC side, the setpoint plumbing."""

    def _attach(self, park: Park, company: str, share: float) -> None:
        if self.owner.battery is None:
            raise ValueError(f"{self.device_id}: company {company} has no battery")
        self.unit = park.battery_unit(self.owner.id, share=share, setpoint_kw=self.battery_setpoint_kw)
        self.battery = battery = self.unit.spec
        self.setpoint = Setpoint()
        rating_w = 1000.0 * max(battery.max_charge_kw, battery.max_discharge_kw)
        self._inverter_ac(rating_w)
        self._nameplate(der_type=82, rating_w=rating_w, settings_w=1000.0 * battery.max_discharge_kw)
        img = self.image
        capacity_wh = battery.capacity_kwh * 1000.0
        self._scale_factors(
            120,
            {
                "WHRtg_SF": scale_exponent(capacity_wh, signed=False),
                "AhrRtg_SF": scale_exponent(capacity_wh / _BATTERY_V, signed=False),
                "MaxChaRte_SF": scale_exponent(rating_w, signed=False),
                "MaxDisChaRte_SF": scale_exponent(rating_w, signed=False),
            },
        )
        img.set_value(120, "WHRtg", capacity_wh)
        img.set_value(120, "AhrRtg", capacity_wh / _BATTERY_V)
        img.set_value(120, "MaxChaRte", 1000.0 * battery.max_charge_kw)
        img.set_value(120, "MaxDisChaRte", 1000.0 * battery.max_discharge_kw)

    def battery_setpoint_kw(self, now_s: float) -> float | None:
        fallback = self.reversion_kw()
        if self.comm_lost():
            return fallback
        return self.setpoint.effective(now_s, fallback)

    def reversion_kw(self) -> float:
        return self.options.battery_fallback_kw

    def live(self) -> tuple[float, float]:
        """(battery_kw, soc_pct) now, and model 103 refreshed."""
        p = self.unit.kw
        self._inverter_live(p, self.unit.discharge_kwh, ST_MPPT if p else _ST_STANDBY)
        self.setpoint.update(self.now_s)
        return p, self.unit.soc_pct

    def charge_status(self, p: float, soc: float) -> int:
        b = self.battery
        if soc <= b.min_soc_pct + 1e-6 and p >= 0:
            return _CHA_EMPTY
        if soc >= b.max_soc_pct - 1e-6 and p <= 0:
            return _CHA_FULL
        return _CHA_CHARGING if p < 0 else _CHA_DISCHARGING if p > 0 else _CHA_HOLDING


class SunSpecStorage124(_Storage):
    """Storage with model 124 (InWRte / OutWRte under StorCtl_Mod)."""

    kind = SunSpecKind.STORAGE_124

    def _configure(self) -> None:
        b = self.battery
        img = self.image
        self._scale_factors(
            124,
            {
                "WChaMax_SF": scale_exponent(1000.0 * b.max_charge_kw, signed=False),
                "WChaDisChaGra_SF": 0,
                "MinRsvPct_SF": -1,
                "ChaState_SF": -1,
                "InBatV_SF": -1,
                "InOutWRte_SF": -2,
            },
        )
        for name, value in (
            ("WChaMax", 1000.0 * b.max_charge_kw),
            ("WChaGra", b.ramp_pct_per_s),
            ("WDisChaGra", b.ramp_pct_per_s),
            ("StorCtl_Mod", 0),
            ("MinRsvPct", b.min_soc_pct),
            ("InBatV", _BATTERY_V),
            ("OutWRte", 100.0),
            ("InWRte", 100.0),
            ("InOutWRte_WinTms", 0),
            ("InOutWRte_RvrtTms", 0),
            ("InOutWRte_RmpTms", 0),
            ("ChaGriSet", 1),
        ):
            img.set_value(124, name, value)
        self.allow_write(124, "WChaMax", 0, 1000.0 * b.max_charge_kw)
        self.allow_write(124, "StorCtl_Mod", 0, 3)
        self.allow_write(124, "OutWRte", -100, 100)
        self.allow_write(124, "InWRte", -100, 100)
        for name in ("InOutWRte_WinTms", "InOutWRte_RvrtTms", "InOutWRte_RmpTms"):
            self.allow_write(124, name, 0, U16_MAX)

    def on_write(self, updates: dict[Key, float]) -> None:
        names = {n for m, n in updates if m == 124}
        if not names & {"StorCtl_Mod", "OutWRte", "InWRte", "WChaMax", "InOutWRte_RvrtTms"}:
            return
        img = self.image
        mode = img.get_raw(124, "StorCtl_Mod") or 0
        if mode == 0:
            self.setpoint.cancel()
            return
        b = self.battery
        low, high = -b.max_charge_kw, b.max_discharge_kw
        if mode & 1:
            low = (
                -(img.get_value(124, "InWRte") or 0.0)
                / 100.0
                * (img.get_value(124, "WChaMax") or 0.0)
                / 1000.0
            )
        if mode & 2:
            high = (img.get_value(124, "OutWRte") or 0.0) / 100.0 * b.max_discharge_kw
        target = min(max(0.0, low), high)
        self.setpoint.write(target, self.now_s, img.get_raw(124, "InOutWRte_RvrtTms"))

    def update(self) -> None:
        p, soc = self.live()
        img = self.image
        img.set_value(124, "ChaState", soc)
        img.set_raw(124, "ChaSt", self.charge_status(p, soc))
        if self.setpoint.value is None:
            img.set_raw(124, "StorCtl_Mod", 0)


class SunSpecStorage802(_Storage):
    """Storage with model 802 (battery) and 704's active power setpoint WSet."""

    kind = SunSpecKind.STORAGE_802

    def _configure(self) -> None:
        b = self.battery
        img = self.image
        rating_w = 1000.0 * max(b.max_charge_kw, b.max_discharge_kw)
        capacity_wh = b.capacity_kwh * 1000.0
        self._scale_factors(
            802,
            {
                "AHRtg_SF": scale_exponent(capacity_wh / _BATTERY_V, signed=False),
                "WHRtg_SF": scale_exponent(capacity_wh, signed=False),
                "WChaDisChaMax_SF": scale_exponent(rating_w, signed=False),
                "SoC_SF": -1,
                "SoH_SF": 0,
                "V_SF": -1,
                "CellV_SF": -3,
                "A_SF": scale_exponent(rating_w / _BATTERY_V, signed=True),
                "AMax_SF": scale_exponent(rating_w / _BATTERY_V, signed=False),
                "W_SF": scale_exponent(rating_w, signed=True),
            },
        )
        for name, value in (
            ("AHRtg", capacity_wh / _BATTERY_V),
            ("WHRtg", capacity_wh),
            ("WChaRteMax", 1000.0 * b.max_charge_kw),
            ("WDisChaRteMax", 1000.0 * b.max_discharge_kw),
            ("SoCMax", b.max_soc_pct),
            ("SoCMin", b.min_soc_pct),
            ("SoH", 100),
            ("LocRemCtl", 0),
            ("AlmRst", 0),
            ("Typ", 4),
            ("State", 3),
            ("Evt1", 0),
            ("Evt2", 0),
            ("EvtVnd1", 0),
            ("EvtVnd2", 0),
            ("V", _BATTERY_V),
            ("SetOp", 1),
            ("SetInvState", 1),
        ):
            img.set_value(802, name, value)
        self._scale_factors(704, {"WSet_SF": 0, "WSetPct_SF": -2})
        for name, value in (
            ("WSetEna", 0),
            ("WSetMod", 1),
            ("WSet", 0),
            ("WSetRvrt", 0),
            ("WSetPct", 0),
            ("WSetPctRvrt", 0),
            ("WSetEnaRvrt", 0),
            ("WSetRvrtTms", 0),
            ("WSetRvrtRem", 0),
        ):
            img.set_value(704, name, value)
        for name in ("WSetEna", "WSetMod", "WSetEnaRvrt"):
            self.allow_write(704, name, 0, 1)
        for name in ("WSet", "WSetRvrt"):
            self.allow_write(704, name, -1000.0 * b.max_charge_kw, 1000.0 * b.max_discharge_kw)
        for name in ("WSetPct", "WSetPctRvrt"):
            self.allow_write(704, name, -100, 100)
        self.allow_write(704, "WSetRvrtTms", 0, U32_MAX)

    def _target_kw(self, watts: str, pct: str) -> float:
        img = self.image
        if img.get_raw(704, "WSetMod") == 1:
            return (img.get_value(704, watts) or 0.0) / 1000.0
        return (img.get_value(704, pct) or 0.0) / 100.0 * self.battery.max_discharge_kw

    def on_write(self, updates: dict[Key, float]) -> None:
        names = {n for m, n in updates if m == 704}
        if not names & {"WSetEna", "WSetMod", "WSet", "WSetPct", "WSetRvrtTms"}:
            return
        img = self.image
        if img.get_raw(704, "WSetEna") == 1:
            self.setpoint.write(
                self._target_kw("WSet", "WSetPct"), self.now_s, img.get_raw(704, "WSetRvrtTms")
            )
        else:
            self.setpoint.cancel()

    def reversion_kw(self) -> float:
        if self.image.get_raw(704, "WSetEnaRvrt") == 1:
            return self._target_kw("WSetRvrt", "WSetPctRvrt")
        return self.options.battery_fallback_kw

    def update(self) -> None:
        p, soc = self.live()
        img = self.image
        w = p * 1000.0
        img.set_value(802, "SoC", soc)
        img.set_value(802, "W", w)
        img.set_value(802, "A", w / _BATTERY_V)
        img.set_raw(802, "ChaSt", self.charge_status(p, soc))
        img.set_raw(704, "WSetEna", 0 if self.setpoint.value is None else 1)
        img.set_value(704, "WSetRvrtRem", math.ceil(self.setpoint.remaining_s(self.now_s)))
