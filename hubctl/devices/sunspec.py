# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Devices found by SunSpec discovery (`SunSpecDevice`), decoded with pysunspec2's model definitions.

Discovery and decoding are the codec's (`hubctl.codec.sunspec`); this module
reads the role's models over Modbus TCP and turns setpoints into writes of
the SunSpec control models.

Decisions:

- **Which unit id and timeout**: the site config's, when it sets them
  explicitly; otherwise unit 1 and 3 s.
- **Installer limits are never loosened.** `start()` reads 123/704: a limit
  that is enabled, below 100 % and has no revert time is the ceiling for every
  later PV limit (hubctl always writes a revert time, so a limit with one may
  be hubctl's own from before a restart and is not taken as a ceiling). A
  larger request is applied as the ceiling and the result says so
  (`limited_by`). Under such a ceiling hubctl's own limits are static too
  (123) or lapse into the reversion limit (704), so with the service's
  `LimitRecord` each value hubctl writes then is recorded before it is
  written; at start a value hubctl wrote gives the installer's limit
  recorded when hubctl first saw the device (`hubctl.devices.base`, #13
  item 4), never itself.
- **Revert timers**: hubctl writes `*_RvrtTms` (`revert_s`, default 60 s) with
  the setpoint and re-writes it after a third of it. Exception: 123 with an
  installer's static limit. Its revert would fall back to "no limit", looser
  than the installer's, so hubctl then writes without a revert time (a dead
  controller leaves hubctl's limit, which is at most the installer's) and
  `release()` restores the installer's value. With 704 the revert value
  itself is at most the installer's limit instead.
- **`release()` lifts any PV limit, held or not** (#13 item 5): 123/704 get
  the installer's static limit back (limit, no revert time, enabled) or the
  limit switched off (`WMaxLim_Ena` / `WMaxLimPctEna` = 0, which also ends a
  704's fallback to its reversion limit). The service releases every
  inverter whose first decision is "no limit", so a limit or a fallback a
  previous run left is lifted within the first cycle.
- **Fallback values**: 704 battery: `WSetRvrt` = 0 W (and `WSetPctRvrt` = 0
  where implemented), `WSetEnaRvrt` = 1: always 0 kW, the fail-safe's rule.
  704 PV (no 123): `WMaxLimPctRvrt` = the given limit in % of the rating,
  rounded a register step down and never above the installer's ceiling,
  `WMaxLimPctEnaRvrt` = 1. Nothing is written for 123 (it reverts to no
  limit) or 124 (it reverts to the device's own mode and power): the result
  says so, with the revert timer hubctl keeps refreshed (every third of
  `revert_s`), and `fallback_summary` (`hubctl read`) says it from the models.
- **Battery setpoints**: 704 `WSet` (W, + discharge) with `WSetRvrtTms`; else
  124: `StorCtl_Mod` = 3 with the charge bound `InWRte` (% of WChaMax) and the
  discharge bound `OutWRte` (% of 120 MaxDisChaRte) both set to the wanted
  power, a negative rate forcing the other direction (the reading of 124 that
  Fronius and evcc use), with `InOutWRte_RvrtTms`. `release()` disables them
  (WSetEna = 0, StorCtl_Mod = 0).
- **Bounds** (`setpoint_bounds_kw`, read by `start()` and again with every
  setpoint): PV 0..the rating (121 WMax, 120 WRtg, 702); battery the 702/802
  charge and discharge ratings (704), WChaMax and MaxDisChaRte (124). A value
  outside raises SetpointOutOfBoundsError; no rating or no control model
  raises SetpointUnsupportedError.
- **Writes** go in as few requests as the register layout allows; settings
  the device already holds are not written again (`_write_points`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

from hubctl.codec import sunspec
from hubctl.codec.registers import Function
from hubctl.config.devices import DeviceRole
from hubctl.devices.base import (
    DEFAULT_REVERT_S,
    Device,
    FallbackResult,
    Reading,
    SetpointResult,
    confirmed,
    unit_and_timeout,
)
from hubctl.errors import (
    CommandNotConfirmedError,
    CommandRejectedError,
    DeviceProtocolError,
    SetpointUnsupportedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.transport.modbus import ModbusConnection

log = logging.getLogger("hubctl.devices")  # the name the journal has always shown


class SunSpecDevice(Device):
    """A device found by SunSpec discovery; decoded with pysunspec2's model definitions."""

    def __init__(
        self,
        config: DeviceConfig,
        connection: ModbusConnection,
        *,
        revert_s: float = DEFAULT_REVERT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock=clock)
        self.connection = connection
        self.revert_s = revert_s
        self.unit_id, self.timeout_s = unit_and_timeout(config, 1, 3.0)
        self.headers: list[sunspec.ModelHeader] | None = None
        self._role_headers: list[sunspec.ModelHeader] = []
        self._ceiling_pct: float | None = None
        self._fallback_pct: float | None = None  # 704 WMaxLimPctRvrt hubctl configured and read back
        self._started = False
        self._recent: dict[int, tuple[float, sunspec.DecodedModel]] = {}  # model id -> (read at, model)

    async def _read_words(self, address: int, count: int) -> list[int]:
        return await self.connection.read(
            Function.HOLDING, address, count, self.unit_id, timeout_s=self.timeout_s
        )

    async def _write_words(self, address: int, words: Sequence[int]) -> None:
        await self.connection.write(address, words, self.unit_id, timeout_s=self.timeout_s)

    async def discover(self) -> list[sunspec.ModelHeader]:
        if self.headers is None:
            headers = await sunspec.discover(self._read_words)
            wanted = sunspec.ROLE_MODELS[self.role.value]
            self._role_headers = []
            seen: set[int] = set()
            for header in headers:
                if header.model_id in wanted and header.model_id not in seen:
                    self._role_headers.append(header)
                    seen.add(header.model_id)
            self.headers = headers
        return self.headers

    async def models(self, model_ids: Iterable[int] | None = None) -> dict[int, sunspec.DecodedModel]:
        """Read and decode the role's models (or `model_ids`)."""
        await self.discover()
        if model_ids is None:
            headers = self._role_headers
        else:
            ids = set(model_ids)
            headers = [h for h in self.headers or [] if h.model_id in ids]
        try:
            decoded = await sunspec.read_models(self._read_words, headers)
        except DeviceProtocolError:
            self.headers = None  # the chain may have changed (firmware update): discover again next time
            self._recent.clear()
            raise
        at = self.clock()
        for model_id, model in decoded.items():
            self._recent[model_id] = (at, model)
        return decoded

    async def _read(self) -> Reading:
        models = await self.models()
        at = self.clock()
        values = sunspec.role_values(self.role.value, models)
        point_values: dict[str, float | None] = {}
        units: dict[str, str] = {}
        for model_id, model in models.items():
            for name, value in model.values.items():
                point_values[f"{model_id}.{name}"] = value
                units[f"{model_id}.{name}"] = model.points[name].units
        return Reading(
            device_id=self.id,
            role=self.role,
            read_at_s=at,
            values=values,
            point_values=point_values,
            units=units,
        )

    async def start(self) -> None:
        if self._started:
            return
        models = await self.models()
        sunspec.role_values(self.role.value, models)  # raises DeviceIdentityError when a model is missing
        if self.role is DeviceRole.PV:
            for model_id, enable, timer in (
                (123, "WMaxLim_Ena", "WMaxLimPct_RvrtTms"),
                (704, "WMaxLimPctEna", "WMaxLimPctRvrtTms"),
            ):
                model = models.get(model_id)
                if model is None:
                    continue
                pct = model.values.get("WMaxLimPct")
                static = not model.values.get(timer)
                limited = model.values.get(enable) == 1 and pct is not None and pct < 100 and static
                step = 10.0 ** (model.exponent(model.points["WMaxLimPct"]) or 0)
                point = f"{model_id}.WMaxLimPct"
                installer, own = self._recall_limit(point, "%", pct, step, pct if limited else None)
                if own:
                    log.info(
                        "%s: %s %g %% is hubctl's own (written before the restart), not an installer's;"
                        " the installer's: %s",
                        self.id,
                        point,
                        pct,
                        "none" if installer is None else f"{installer:g} %",
                    )
                if installer is not None:
                    self._ceiling_pct = installer
                    log.info(
                        "%s: installer limit %g %% (model %d) found; hubctl will not exceed it",
                        self.id,
                        installer,
                        model_id,
                    )
                break
        kind = self.setpoint_kind
        if kind is not None:
            wanted = [h.model_id for h in self._role_headers] if kind == "pv_limit" else _BATTERY_MODELS
            models = await self._current(wanted)
            with contextlib.suppress(SetpointUnsupportedError):  # said when such a setpoint is asked for
                self._bounds[kind] = self._setpoint_bounds(kind, models)
        self._started = True

    def _setpoint_bounds(self, kind: str, models: Mapping[int, sunspec.DecodedModel]) -> tuple[float, float]:
        """`kind`'s bounds in kW from the device's ratings; SetpointUnsupportedError where it has none."""
        if kind == "pv_limit":
            rating = sunspec.rated_kw(models)
            if rating is None:
                raise SetpointUnsupportedError(
                    f"{self.id}: no power rating (121 WMax, 120 WRtg, 702) to express kW in %"
                )
            return 0.0, rating
        if 704 in models:
            charge_kw, discharge_kw = _battery_limits_kw(models)
            if charge_kw is None or discharge_kw is None:
                raise SetpointUnsupportedError(f"{self.id}: no charge/discharge rating to bound the setpoint")
            return -charge_kw, discharge_kw
        if 124 in models:
            charge_w = models[124].values.get("WChaMax")
            discharge_w = models[120].values.get("MaxDisChaRte") if 120 in models else None
            discharge_w = discharge_w or charge_w
            if not charge_w or not discharge_w:
                raise SetpointUnsupportedError(
                    f"{self.id}: no charge/discharge rating (124 WChaMax, 120 MaxDisChaRte)"
                )
            return -charge_w / 1000, discharge_w / 1000
        raise SetpointUnsupportedError(
            f"{self.id}: no SunSpec model 704 (WSet) or 124 for a battery setpoint"
        )

    async def _set_pv_limit(self, kw: float) -> SetpointResult:
        await self.start()
        models = await self._current(h.model_id for h in self._role_headers)
        _, rating = self._setpoint_bounds("pv_limit", models)
        self._check_bounds("pv_limit", kw, 0.0, rating)
        pct = kw / rating * 100
        applied, limited_by = pct, None
        if self._ceiling_pct is not None and pct > self._ceiling_pct:
            applied, limited_by = self._ceiling_pct, f"installer limit {self._ceiling_pct:g} %"
        if 123 in models:
            control = models[123]
            timer = 0.0 if self._ceiling_pct is not None else self.revert_s
            writes = [("WMaxLimPct", applied), ("WMaxLimPct_RvrtTms", timer), ("WMaxLim_Ena", 1)]
        elif 704 in models:
            control = models[704]
            timer = self.revert_s
            # in 704's register order: enable and limit in one request, the timer after (when it changed)
            writes = [("WMaxLimPctEna", 1), ("WMaxLimPct", applied), ("WMaxLimPctRvrtTms", timer)]
            if self._ceiling_pct is not None and self._fallback_pct is None:
                # no fallback configured (yet): the installer's limit is the reversion value at least
                writes = [("WMaxLimPctRvrt", self._ceiling_pct), ("WMaxLimPctEnaRvrt", 1), *writes]
        else:
            raise SetpointUnsupportedError(
                f"{self.id}: no SunSpec control model (123 or 704) for a power limit"
            )
        recorded = self._ceiling_pct is not None  # hubctl's limit could pass for the installer's
        if recorded:
            self._note_limit_writing(applied)
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = await self.models([control.header.model_id])
        read_back = sunspec.pv_limit_pct(check)
        step = 10.0 ** (control.exponent(control.points["WMaxLimPct"]) or 0)
        if read_back is None or not confirmed(applied, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WMaxLimPct {applied:g} %, reads back {read_back}"
            )
        if recorded:
            self._note_limit_written(applied)
        return SetpointResult(
            device_id=self.id,
            kind="pv_limit",
            requested_kw=kw,
            applied_kw=applied * rating / 100,
            confirmed_kw=read_back * rating / 100,
            limited_by=limited_by,
            refresh_every_s=timer / 3 if timer > 0 else None,
        )

    async def _configure_fallback(self, pv_limit_kw: float | None) -> FallbackResult:
        await self.start()
        if self.role is DeviceRole.BATTERY:
            return await self._battery_fallback()
        if self.role is DeviceRole.PV:
            return await self._pv_fallback(pv_limit_kw)
        return await super()._configure_fallback(pv_limit_kw)

    async def _battery_fallback(self) -> FallbackResult:
        """704: reversion power 0 W (WSetRvrt, and WSetPctRvrt where implemented), WSetEnaRvrt = 1."""
        models = await self.models([124, 704])
        if 704 not in models:
            if 124 in models:
                return self._no_fallback(
                    f"model 124 has no reversion power: once hubctl stops, its setpoint lapses"
                    f" {self.revert_s:g} s after the last write (InOutWRte_RvrtTms, re-written every"
                    f" {self.revert_s / 3:g} s) and the battery returns to its own mode and power"
                )
            return self._no_fallback("no SunSpec model 704; the battery falls back to its own configuration")
        control = models[704]
        writes: list[tuple[str, float]] = [
            (name, 0.0) for name in ("WSetRvrt", "WSetPctRvrt") if control.values.get(name) is not None
        ]
        if not writes or control.values.get("WSetEnaRvrt") is None:
            return self._no_fallback("model 704 without WSetRvrt/WSetPctRvrt and WSetEnaRvrt")
        await self._write_points(control, [*writes, ("WSetEnaRvrt", 1)])
        check = (await self.models([704]))[704]
        for name, _ in writes:
            value = check.values.get(name)
            step = 10.0 ** (control.exponent(control.points[name]) or 0)
            if value is None or not confirmed(0.0, value, step):
                raise CommandNotConfirmedError(f"{self.id}: wrote {name} 0, reads back {value}")
        if check.values.get("WSetEnaRvrt") != 1:
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WSetEnaRvrt 1, reads back {check.values.get('WSetEnaRvrt')}"
            )
        watts = check.values.get("WSetRvrt")
        names = ", ".join(name for name, _ in writes)
        return FallbackResult(
            self.id,
            configured=True,
            detail=f"battery falls back to 0 kW (704 {names} 0, WSetEnaRvrt 1)",
            fallback_kw=0.0,
            confirmed_kw=0.0 if watts is None else watts / 1000,
        )

    async def _pv_fallback(self, kw: float | None) -> FallbackResult:
        """704 (the limit's control model): WMaxLimPctRvrt = the fallback limit, WMaxLimPctEnaRvrt = 1."""
        models = await self.models()
        if 123 in models:
            if self._ceiling_pct is not None:
                return self._no_fallback(
                    f"model 123 has no reversion limit; with the installer's static limit"
                    f" {self._ceiling_pct:g} % hubctl writes no revert timer: a dead controller leaves"
                    " hubctl's last limit, at most the installer's"
                )
            return self._no_fallback(
                f"model 123 has no reversion limit; the inverter reverts to no limit (full output, full"
                f" export) {self.revert_s:g} s after hubctl's last write (WMaxLimPct_RvrtTms, re-written"
                f" every {self.revert_s / 3:g} s)"
            )
        if 704 not in models:
            return self._no_fallback("no SunSpec model 704; the inverter keeps its own fallback")
        control = models[704]
        if control.values.get("WMaxLimPctEnaRvrt") is None:
            return self._no_fallback("model 704 without WMaxLimPctEnaRvrt")
        _, rating = self._setpoint_bounds("pv_limit", models)
        step = 10.0 ** (control.exponent(control.points["WMaxLimPctRvrt"]) or 0)
        pct = 100.0 if kw is None else min(100.0, kw / rating * 100)
        pct = math.floor(pct / step + 1e-9) * step  # a register step down, never up
        if self._ceiling_pct is not None:
            pct = min(pct, self._ceiling_pct)
        await self._write_points(control, [("WMaxLimPctRvrt", pct), ("WMaxLimPctEnaRvrt", 1)])
        check = (await self.models([704]))[704]
        read_back, enabled = check.values.get("WMaxLimPctRvrt"), check.values.get("WMaxLimPctEnaRvrt")
        if read_back is None or enabled != 1 or not confirmed(pct, read_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote WMaxLimPctRvrt {pct:g} % enabled, reads back {read_back} % ({enabled})"
            )
        self._fallback_pct = read_back
        limited = " (installer limit)" if self._ceiling_pct is not None and pct == self._ceiling_pct else ""
        return FallbackResult(
            self.id,
            configured=True,
            detail=f"PV falls back to {read_back:g} % of {rating:g} kW{limited} (704 WMaxLimPctRvrt)",
            fallback_kw=None if read_back >= 100 else pct * rating / 100,
            confirmed_kw=read_back * rating / 100,
        )

    def fallback_summary(self, reading: Reading | None = None) -> str | None:
        """From the models as read: 704's reversion values where it has them, else what 123/124 do."""
        if self.setpoint_kind is None:
            return None
        values = {} if reading is None else reading.point_values
        if self.role is DeviceRole.PV:
            return self._pv_summary(values)
        return self._battery_summary(values)

    def _pv_summary(self, values: Mapping[str, float | None]) -> str:
        def seconds(name: str) -> str:
            timer = values.get(name)
            return f"{timer or self.revert_s:g} s"  # before hubctl wrote it: what it will write

        if "123.WMaxLimPct" in values:
            pct = values.get("123.WMaxLimPct")
            static = values.get("123.WMaxLim_Ena") == 1 and pct is not None and pct < 100
            if self._ceiling_pct is not None or (static and not values.get("123.WMaxLimPct_RvrtTms")):
                return "none: keeps hubctl's last limit, at most the installer's static limit (123)"
            return (
                "none configurable (123 has no reversion limit): the limit lapses"
                f" {seconds('123.WMaxLimPct_RvrtTms')} after hubctl's last write, then no limit"
                " (full export)"
            )
        if "704.WMaxLimPct" in values:
            lapse = f"the limit lapses {seconds('704.WMaxLimPctRvrtTms')} after hubctl's last write"
            pct = values.get("704.WMaxLimPctRvrt")
            if values.get("704.WMaxLimPctEnaRvrt") == 1 and pct is not None:
                return f"falls back to {pct:g} % (704 WMaxLimPctRvrt, enabled); {lapse}"
            return f"704 reversion not enabled (hubctl sets it at start): {lapse}, then no limit"
        return "none: no SunSpec control model (123 or 704)"

    def _battery_summary(self, values: Mapping[str, float | None]) -> str:
        def seconds(name: str) -> str:
            timer = values.get(name)
            return f"{timer or self.revert_s:g} s"  # before hubctl wrote it: what it will write

        if "704.WSet" in values:
            lapse = f"the setpoint lapses {seconds('704.WSetRvrtTms')} after hubctl's last write"
            watts = values.get("704.WSetRvrt")
            if values.get("704.WSetEnaRvrt") == 1 and watts is not None:
                return f"falls back to {watts / 1000:g} kW (704 WSetRvrt, enabled); {lapse}"
            return f"704 reversion not enabled (hubctl sets 0 kW at start): {lapse}, then the battery's own"
        if "124.StorCtl_Mod" in values:
            return (
                "none configurable (124 has no reversion power): the setpoint lapses"
                f" {seconds('124.InOutWRte_RvrtTms')} after hubctl's last write, then the battery's own"
                " mode and power"
            )
        return "none: no SunSpec model 704 or 124"

    async def _set_battery(self, kw: float) -> SetpointResult:
        await self.start()
        models = await self._current(_BATTERY_MODELS)
        low, high = self._setpoint_bounds("battery", models)
        self._check_bounds("battery", kw, low, high)
        if 704 in models:
            return await self._set_battery_704(kw, models)
        return await self._set_battery_124(kw, models, charge_w=-low * 1000, discharge_w=high * 1000)

    async def _set_battery_704(self, kw: float, models: Mapping[int, sunspec.DecodedModel]) -> SetpointResult:
        control = models[704]
        writes: list[tuple[str, float]] = [
            ("WSetEna", 1),
            ("WSet", kw * 1000),
            ("WSetRvrtTms", self.revert_s),
        ]
        if control.values.get("WSetMod") is not None:
            writes.insert(1, ("WSetMod", 1))  # 1 = WATTS; in the registers between WSetEna and WSet
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = await self.models([704])
        watts = check[704].values.get("WSet")
        step = 10.0 ** (control.exponent(control.points["WSet"]) or 0)
        if watts is None or not confirmed(kw * 1000, watts, step):
            raise CommandNotConfirmedError(f"{self.id}: wrote WSet {kw * 1000:g} W, reads back {watts}")
        return SetpointResult(
            device_id=self.id,
            kind="battery",
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=watts / 1000,
            refresh_every_s=self.revert_s / 3,
        )

    async def _set_battery_124(
        self, kw: float, models: Mapping[int, sunspec.DecodedModel], *, charge_w: float, discharge_w: float
    ) -> SetpointResult:
        """Model 124: pin the power between the charge bound (InWRte) and the discharge bound (OutWRte).

        With StorCtl_Mod = 3 both bounds apply: charging is limited to InWRte %
        of WChaMax, discharging to OutWRte % of 120 MaxDisChaRte (else WChaMax);
        a negative rate forces the other direction (the reading of 124 that
        Fronius and evcc use). Both bounds at kw make the battery run at kw.
        """
        control = models[124]
        in_pct = -kw * 1000 / charge_w * 100  # > 0 bounds charging, < 0 forces discharging
        out_pct = kw * 1000 / discharge_w * 100  # > 0 bounds discharging, < 0 forces charging
        writes = [
            ("OutWRte", out_pct),
            ("InWRte", in_pct),
            ("InOutWRte_RvrtTms", self.revert_s),
            ("StorCtl_Mod", 3),
        ]
        await self._write_points(control, writes, unless_set=_SETTINGS)
        check = (await self.models([124]))[124]
        mode, in_back, out_back = (check.values.get(n) for n in ("StorCtl_Mod", "InWRte", "OutWRte"))
        step = 10.0 ** (control.exponent(control.points["InWRte"]) or 0)
        if mode != 3 or in_back is None or out_back is None or not confirmed(out_pct, out_back, step):
            raise CommandNotConfirmedError(
                f"{self.id}: wrote StorCtl_Mod 3, OutWRte {out_pct:.2f} %, reads back {mode}, {out_back}"
            )
        return SetpointResult(
            device_id=self.id,
            kind="battery",
            requested_kw=kw,
            applied_kw=kw,
            confirmed_kw=out_back / 100 * discharge_w / 1000,
            refresh_every_s=self.revert_s / 3,
        )

    async def _write_points(
        self,
        model: sunspec.DecodedModel,
        writes: Sequence[tuple[str, float]],
        *,
        unless_set: frozenset[str] = frozenset(),
    ) -> None:
        """Write points in the order given, in as few requests as the register layout allows.

        Points named in `unless_set` are skipped when `model` shows them already at the value (a
        revert time, a control mode: settings, not commands). Writes that follow each other in
        `writes` and in the registers go in one request; a gap of at most `_MAX_FILL_REGISTERS`
        between them is filled with what `model` shows its writable points hold (123's window
        and ramp times between the limit and its enable point), so one request re-arms a control.
        """
        items: list[tuple[sunspec.SunSpecPoint, list[int]]] = []
        held: dict[int, list[int]] = {}  # settings the device holds already: not written, but may fill a gap
        for name, value in writes:
            point = model.points.get(name)
            if point is None or not point.writable:
                raise SetpointUnsupportedError(
                    f"{self.id}: model {model.header.model_id} has no writable {name}"
                )
            words = sunspec.encode_value(point, value, model.exponent(point))
            if name in unless_set and model.values.get(name) == value:
                held[point.address] = words
                continue
            items.append((point, words))
        requests: list[tuple[int, list[int]]] = []
        end = -1
        for point, words in items:
            fill = _gap_words(model, end, point.address, held) if requests else None
            if fill is not None:
                requests[-1][1].extend([*fill, *words])
            else:
                requests.append((point.address, list(words)))
            end = point.address + len(words)
        for address, words in requests:
            await self._write_words(address, words)

    async def _current(self, model_ids: Iterable[int]) -> dict[int, sunspec.DecodedModel]:
        """The models as last read if that was within `_RECENT_S` (the poller reads every cycle), else read.

        A setpoint needs the device's ratings, scale factors and settings: reading them again before
        every write doubled the requests of a cycle that moves every battery of a park.
        """
        headers = await self.discover()
        ids = {h.model_id for h in headers} & set(model_ids)
        now = self.clock()
        recent = {i: self._recent[i] for i in ids if i in self._recent}
        if len(recent) == len(ids) and all(now - at <= _RECENT_S for at, _ in recent.values()):
            return {i: m for i, (_, m) in recent.items()}
        return await self.models(ids)

    async def release(self) -> None:
        """Stop holding setpoints: a held battery setpoint disabled; a PV limit lifted, held or not
        (the installer's static limit back, or none: the module docstring)."""
        held = set(self._held)
        await super().release()
        if "battery" in held:
            await self._release_battery()
        if self.role is not DeviceRole.PV:
            return
        await self.start()
        models = await self.models([123, 704])
        ceiling = self._ceiling_pct
        if 123 in models:
            if ceiling is not None:
                writes = [("WMaxLimPct", ceiling), ("WMaxLimPct_RvrtTms", 0.0), ("WMaxLim_Ena", 1)]
                await self._write_points(models[123], writes)
            else:
                await self._write_points(models[123], [("WMaxLim_Ena", 0)])
        elif 704 in models:
            if ceiling is not None:
                writes = [("WMaxLimPctEna", 1), ("WMaxLimPct", ceiling), ("WMaxLimPctRvrtTms", 0.0)]
                await self._write_points(models[704], writes)
            else:
                await self._write_points(models[704], [("WMaxLimPctEna", 0)])
        else:
            return
        self._note_limit_released()

    async def _release_battery(self) -> None:
        models = await self.models([124, 704])
        if 704 in models:
            await self._write_points(models[704], [("WSetEna", 0)])
        elif 124 in models:
            await self._write_points(models[124], [("StorCtl_Mod", 0)])


# Settings a setpoint write leaves alone when the device already holds them (see `_write_points`).
_SETTINGS = frozenset(
    {"WMaxLimPct_RvrtTms", "WMaxLimPctRvrtTms", "WSetRvrtTms", "WSetMod", "InOutWRte_RvrtTms", "StorCtl_Mod"}
)
_BATTERY_MODELS = (*sunspec.ROLE_MODELS["battery"], 120)  # 120: MaxDisChaRte for 124
_MAX_FILL_REGISTERS = 4
_RECENT_S = 2.0


def _gap_words(
    model: sunspec.DecodedModel, start: int, end: int, held: Mapping[int, list[int]]
) -> list[int] | None:
    """The words filling registers [start, end): a setting of this write that the device holds
    already (`held`, by address), or a control's window or ramp time (`*WinTms`, `*RmpTms`, which
    hubctl never sets) as `model` shows it. None if the gap is too wide, runs backwards or holds
    anything else. Never a reversion value: `model` may be older than the fallback
    `configure_fallback` wrote, and writing it back would undo that."""
    if end < start or end - start > _MAX_FILL_REGISTERS:
        return None
    words: list[int] = []
    at = start
    by_address = {p.address: p for p in model.points.values()}
    while at < end:
        if at in held:
            if at + len(held[at]) > end:
                return None
            words.extend(held[at])
            at += len(held[at])
            continue
        point = by_address.get(at)
        value = None if point is None else model.values.get(point.name)
        if point is None or not point.writable or value is None or at + point.size > end:
            return None
        if not point.name.endswith(("WinTms", "RmpTms")):
            return None
        try:
            words.extend(sunspec.encode_value(point, value, model.exponent(point)))
        except CommandRejectedError:
            return None
        at += point.size
    return words


def _battery_limits_kw(models: Mapping[int, sunspec.DecodedModel]) -> tuple[float | None, float | None]:
    """(max charge, max discharge) in kW from 702 (settings, then ratings) or 802."""

    def first(*where: tuple[int, str]) -> float | None:
        for model_id, name in where:
            model = models.get(model_id)
            watts = None if model is None else model.values.get(name)
            if watts is not None and watts > 0:
                return watts / 1000
        return None

    charge = first((702, "WChaRteMax"), (702, "WChaRteMaxRtg"), (802, "WChaRteMax"), (702, "WMaxRtg"))
    discharge = first(
        (702, "WDisChaRteMax"), (702, "WDisChaRteMaxRtg"), (802, "WDisChaRteMax"), (702, "WMaxRtg")
    )
    return charge, discharge
