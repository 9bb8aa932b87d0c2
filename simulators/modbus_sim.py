"""Simulated Modbus devices: register maps from drivers/ served by pymodbus, fed by the live park.

Layers (transport -> protocol -> device, as in python-kasa):

- `ModbusEndpoint`: one TCP port. A small Modbus/TCP front end of ours
  accepts the clients and passes each request on to a pymodbus server on an
  internal loopback port, which holds one `SimDevice` per unit id. The front
  end is where the transport faults live (refuse, drop, silent, slow: see
  `simulators.faults`), because pymodbus has no per-connection or per-unit
  hooks for them; it also answers an unknown unit id with exception 0x0B
  (gateway target failed to respond) and a function code other than 3, 4, 6
  and 16 with exception 1, as a gateway would. Two transport habits of real
  devices are there too, from the map's `transport:` block: `single_client`
  (a new connection closes the previous one) and `delay_after_connect_s`
  (requests that soon after the connect are swallowed, never answered).
- `ModbusUnit`: one unit id, i.e. one device. Its pymodbus `SimDevice` has
  an async action callback: on a read it renders the registers from the
  park's latest `StepRecord` (unless the device is `frozen`), on a write it
  validates and applies it (or answers exception 6 when `busy`).
- `MapUnit`: a device described by a register map from drivers/ and its
  `roles:` block. Physical values are encoded with `hubctl.codec.registers.encode`
  using the map's scale and sign, so a client decoding with the same map reads
  the physics' values back in hubctl's sign convention.

Writes (functions 6 and 16) are checked the way a strict device would:
- every register written must belong to a writable (rw) point, and a write
  must cover whole points: else exception 2 (illegal data address);
- each value must decode and lie within the point's write_min..write_max:
  else exception 3 (illegal data value), and nothing of the request is applied.

Values the map has but the physics does not know (voltages, currents,
frequency) get plausible figures from the point name (230 V, 50 Hz, the
current of the power at 230 V per phase); points of roles the device does not
serve read "not implemented". A value outside what a point can hold (an int16
W register on a 400 kW meter) saturates at the largest representable value,
as meters do, rather than failing the read.

Setpoints of a served role (`pv.limit_pct` / `pv.limit_kw`,
`battery.setpoint_kw`) become the park's PV limit or battery setpoint for the
device's company. Their revert time is the point's `revert_s`, or the value of
its `revert_point` (0 = never); a lapsed setpoint gives way to the device's
fallback (`DeviceOptions`). A map's `fallback:` block is honoured as a device
would: its `value` register starts at the installer's fallback (`DeviceOptions`)
and, once written (and switched on by its `enable` register where there is one),
is what the device falls back to; its `watchdog` register (0 = off) is a
communication-loss timer: no request for that long and the device goes to its
fallback until the next request. Quirks data cannot express live in `_QUIRKS`:
the Victron GX ESS regulates the grid power to its grid setpoint (2700, 2703 or
2716-2717) with the battery, starting from Victron's default 50 W; the Huawei
SUN2000 runs its forcible charge/discharge command for the written period.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from hubctl.codec.registers import DataType, Function, WordOrder, decode, encode
from hubctl.codec.regmap import Access, Point, RegisterMap, load_map, role_point_values
from hubctl.drivers import DRIVERS_DIR
from hubctl.errors import DecodeError, EncodeError
from simulators.connections import ConnectionSet
from simulators.faults import ENDPOINT_FAULTS, UNIT_FAULTS, Fault, FaultError, FaultSet
from simulators.live_park import CommWatchdog, Setpoint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from simulators.live_park import BatteryUnit, Park, PvUnit

log = logging.getLogger(__name__)


READ_FUNCTIONS = {3: Function.HOLDING, 4: Function.INPUT}
WRITE_FUNCTIONS = {6, 16}
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_VOLTAGE_KV = 0.23  # phase voltage used for currents: I [A] = P [kW] / 0.23 kV
_BATTERY_VOLTAGE_V = 51.2


@dataclass(frozen=True, slots=True)
class DeviceOptions:
    """How a simulated device behaves when its setpoint lapses or its controller goes quiet."""

    battery_fallback_kw: float = 0.0  # + discharge
    pv_fallback_limit_pct: float | None = None  # None: no limit (full output)
    comm_loss_s: float | None = None  # no request for this long -> fallback; None: never


# --- Register helpers ------------------------------------------------------------------------------------

_RAW_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.ACC32: (0, 2**32 - 1),
    DataType.ACC64: (0, 2**64 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
_FLOAT32_NAN = 0x7FC0_0000


def _split(point: Point, raw: int) -> list[int]:
    words = [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(point.count))]
    return words if point.word_order is WordOrder.BIG else words[::-1]


def not_implemented_words(point: Point) -> list[int]:
    """The words that read as "not implemented" (0 when the point has no such pattern)."""
    if point.sentinels:
        return _split(point, point.sentinels[0])
    return _split(point, _FLOAT32_NAN if point.type is DataType.FLOAT32 else 0)


def _step(point: Point, exponent: int) -> float:
    return point.scale * point.sign * 10.0**exponent


def encode_saturated(point: Point, value: float | None, exponents: Mapping[str, int | None]) -> list[int]:
    """`encode`, but a value beyond what the point holds saturates; None reads as "not implemented"."""
    if value is None or not math.isfinite(value):
        return not_implemented_words(point)
    try:
        return encode(point, value, exponents)
    except EncodeError:
        pass
    exponent = 0 if point.scale_factor is None else exponents.get(point.scale_factor) or 0
    low, high = (-3.0e38, 3.0e38) if point.type is DataType.FLOAT32 else _RAW_RANGE[point.type]
    ends = sorted(((low + 1) * _step(point, exponent), (high - 1) * _step(point, exponent)))
    if point.write_min is not None:
        ends[0] = max(ends[0], point.write_min)
    if point.write_max is not None:
        ends[1] = min(ends[1], point.write_max)
    try:
        return encode(point, min(max(value, ends[0]), ends[1]), exponents)
    except EncodeError:
        return not_implemented_words(point)


def representable(point: Point, value: float) -> bool:
    """Whether `value` encodes without saturating (drivers are picked whose registers fit the park)."""
    try:
        encode(point, value, {point.scale_factor: 0} if point.scale_factor else None)
    except EncodeError:
        return False
    return True


def unit_factor_s(point: Point) -> float:
    """Seconds per unit of a time point (s, min, h)."""
    return {"s": 1.0, "min": 60.0, "h": 3600.0}.get(point.unit, 1.0)


# --- Units -----------------------------------------------------------------------------------------------


class ModbusUnit(abc.ABC):
    """One simulated device on one unit id: renders its registers on read, validates and applies writes."""

    def __init__(
        self, device_id: str, unit_id: int, park: Park, options: DeviceOptions | None = None
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"{device_id}: unit id {unit_id} is outside 0..255")
        self.device_id = device_id
        self.unit_id = unit_id
        self.park = park
        self.options = options or DeviceOptions()
        self.faults = FaultSet()
        self.watchdog = CommWatchdog(self.options.comm_loss_s, park.t_s)
        self.endpoint: ModbusEndpoint | None = None

    # -- what a device type defines
    @abc.abstractmethod
    def segments(self, function: Function) -> list[tuple[int, int]]:
        """(address, count) of the register ranges this device answers, per function space."""

    @abc.abstractmethod
    def render(self, function: Function) -> Iterable[tuple[int, list[int]]]:
        """(address, words) for the registers of `function` as they read now."""

    @abc.abstractmethod
    def write(self, address: int, words: list[int]) -> ExcCodes | None:
        """Validate and apply a write of holding registers; an exception code rejects all of it."""

    # -- pymodbus
    def sim_device(self) -> SimDevice:
        def blocks(function: Function) -> list[SimData]:
            segs = self.segments(function)
            if not segs:
                return [SimData(0, datatype=SimType.INVALID)]
            return [SimData(a, values=[0] * n, datatype=SimType.REGISTERS) for a, n in segs]

        bits = [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        return SimDevice(
            id=self.unit_id,
            simdata=(bits, list(bits), blocks(Function.HOLDING), blocks(Function.INPUT)),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        del count  # every read renders the whole space: a few dozen registers
        self.watchdog.seen(self.park.t_s)
        if Fault.BUSY in self.faults:
            return ExcCodes.DEVICE_BUSY
        if set_values is not None:
            if function_code not in WRITE_FUNCTIONS:
                return ExcCodes.ILLEGAL_FUNCTION
            words = [int(v) for v in set_values]
            refused = self.write(address, words)
            if refused is None:
                log.info("%s: write of %d register(s) at %d applied", self.device_id, len(words), address)
            else:
                log.info("%s: write at %d refused with exception %d", self.device_id, address, refused)
            return refused
        function = READ_FUNCTIONS.get(function_code)
        if function is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if Fault.FROZEN not in self.faults:
            for addr, words in self.render(function):
                registers[addr - start_address : addr - start_address + len(words)] = words
        return None

    # -- faults (the FaultTarget protocol)
    @property
    def supported_faults(self) -> frozenset[Fault]:
        return UNIT_FAULTS | ENDPOINT_FAULTS

    async def inject(self, fault: Fault, delay_s: float | None) -> None:
        if fault in ENDPOINT_FAULTS:
            if self.endpoint is None:
                raise FaultError(f"{self.device_id}: not served on any endpoint")
            await self.endpoint.inject(fault)
        else:
            self.faults.add(fault, delay_s)

    async def clear(self, fault: Fault | None) -> None:
        if self.endpoint is not None and (fault is None or fault in ENDPOINT_FAULTS):
            await self.endpoint.clear(fault)
        if fault is None or fault in UNIT_FAULTS:
            self.faults.discard(fault)

    def fault_names(self) -> list[str]:
        names = set(self.faults.names())
        if self.endpoint is not None:
            names |= set(self.endpoint.faults.names())
        return sorted(names)

    # -- helpers for the subclasses
    @property
    def now_s(self) -> float:
        return self.park.t_s

    def comm_lost(self) -> bool:
        return self.watchdog.expired(self.now_s)


def write_span(points: Sequence[tuple[int, int]], address: int, count: int) -> list[int] | ExcCodes:
    """Indices of the (address, size) entries a write of `count` registers at `address` covers exactly.

    Exception 2 when a register is not part of a listed entry or an entry is cut.
    """
    chosen = []
    at = address
    end = address + count
    starts = {a: i for i, (a, _) in enumerate(points)}
    while at < end:
        i = starts.get(at)
        if i is None:
            return ExcCodes.ILLEGAL_ADDRESS
        size = points[i][1]
        if at + size > end:
            return ExcCodes.ILLEGAL_ADDRESS
        chosen.append(i)
        at += size
    return chosen


@dataclass(frozen=True, slots=True)
class _Quantities:
    """What the physics knows about the scope a device measures (one company, or the park)."""

    grid_kw: float
    pv_kw: float
    battery_kw: float
    load_kw: float
    soc_pct: float | None
    import_kwh: float
    export_kwh: float
    pv_kwh: float


def _per_phase(kw: float) -> float:
    return kw / 3


# Values for points no role names, from the point's name (first match wins).
_PLAUSIBLE: tuple[tuple[re.Pattern[str], Callable[[_Quantities, float], float]], ...] = (
    (re.compile(r"^frequency_hz$"), lambda _q, _p: 50.0),
    (re.compile(r"^voltage_l[123]_v$"), lambda _q, _p: 230.0),
    (re.compile(r"^battery_voltage_v$"), lambda _q, _p: _BATTERY_VOLTAGE_V),
    (re.compile(r"^battery_current_a$"), lambda q, _p: q.battery_kw * 1000.0 / _BATTERY_VOLTAGE_V),
    (re.compile(r"^active_power_l[123]_kw$"), lambda _q, p: _per_phase(p)),
    (re.compile(r"^current_l[123]_a$"), lambda _q, p: _per_phase(abs(p)) / _VOLTAGE_KV),
    (re.compile(r"^apparent_power_kva$"), lambda _q, p: abs(p)),
    (re.compile(r"^reactive_power_kvar$"), lambda _q, _p: 0.0),
    (re.compile(r"^power_factor_ratio$"), lambda _q, p: -1.0 if p < 0 else 1.0),
    (re.compile(r"^energy_active_kwh$"), lambda q, _p: q.import_kwh - q.export_kwh),
    (re.compile(r"^inverter_active_power_kw$"), lambda q, _p: q.pv_kw + q.battery_kw),
    (re.compile(r"^energy_yield_kwh$"), lambda q, _p: q.pv_kwh),
    (re.compile(r"^consumption_l[123]_kw$"), lambda q, _p: _per_phase(q.load_kw)),
)


def _plausible(name: str, q: _Quantities, primary_kw: float) -> float | None:
    """A plausible value for a point no role names; None: leave the register as it is."""
    for pattern, value in _PLAUSIBLE:
        if pattern.match(name):
            return value(q, primary_kw)
    return None


class MapUnit(ModbusUnit):
    """A device served from a register map in drivers/, playing one role for a company or the park."""

    def __init__(
        self,
        device_id: str,
        unit_id: int,
        park: Park,
        register_map: RegisterMap,
        role: str,
        company: str | None,
        *,
        driver: str = "",
        options: DeviceOptions | None = None,
        share: float = 1.0,
    ) -> None:
        super().__init__(device_id, unit_id, park, options)
        keys = register_map.roles.keys(role)
        if keys is None:
            offered = ", ".join(register_map.roles.offered()) or "none"
            raise ValueError(
                f"{device_id}: map {driver or '?'} offers no role {role!r} (it offers {offered})"
            )
        if (role == "park_meter") != (company is None):
            raise ValueError(f"{device_id}: a park_meter has no company, every other role has one")
        self.map = register_map
        self.role = role
        self.company = None if company is None else park.company(company)
        self.driver = driver
        self._keys = keys
        self._role_points = {
            n
            for k in register_map.roles.offered()
            for names in (register_map.roles.keys(k) or {}).values()
            for n in names
        }
        self._served_points = {n for names in keys.values() for n in names}
        self._by_function = {
            f: sorted((p for p in register_map.points if p.function is f), key=lambda p: p.address)
            for f in Function
        }
        self._exponents: dict[str, int | None] = {
            p.scale_factor: 0 for p in register_map.points if p.scale_factor is not None
        }
        limits = set(keys.get("limit_pct", ())) | set(keys.get("limit_kw", ()))
        self._stored: dict[str, float] = {
            p.name: self._initial(p, is_limit=p.name in limits)
            for p in register_map.points
            if p.access is Access.RW
        }
        self._fallback = register_map.fallback.of(role)
        if self._fallback is not None and self._fallback.value is not None:
            self._stored[self._fallback.value] = self._installer_fallback(
                register_map.point(self._fallback.value), park, company
            )
        self.pv_limit = Setpoint()
        self.battery_setpoint = Setpoint()
        quirk = _QUIRKS.get(driver)
        self._quirk = None if quirk is None else quirk()
        self.pv: PvUnit | None = None
        self.battery: BatteryUnit | None = None
        if self.company is not None:
            if role == "pv":
                limited = bool({"limit_pct", "limit_kw"} & set(keys))
                self.pv = park.pv_unit(
                    self.company.id, share=share, limit_kw=self._pv_limit_kw if limited else None
                )
            if role == "battery":
                commanded = "setpoint_kw" in keys or self._quirk is not None
                self.battery = park.battery_unit(
                    self.company.id,
                    share=share,
                    setpoint_kw=self._battery_setpoint_kw if commanded else None,
                )

    def _installer_fallback(self, point: Point, park: Park, company: str | None) -> float:
        """What a fallback value register holds before hubctl writes it: the installer's (`DeviceOptions`)."""
        high = point.write_max if point.write_max is not None else math.inf
        if self.role == "battery":
            return self.options.battery_fallback_kw
        pct = self.options.pv_fallback_limit_pct
        if pct is None:
            return high
        if point.unit == "%":
            return min(pct, high)
        peak = park.company(company).pv_peak_kw if company is not None else None
        return high if peak is None else min(pct / 100.0 * peak, high)

    def _fallback_value(self) -> float | None:
        """The fallback value register's content when it is in force (enabled where it has a switch)."""
        spec = self._fallback
        if spec is None or spec.value is None:
            return None
        if spec.enable is not None and self._stored.get(spec.enable) != 1:
            return None
        return self._stored[spec.value]

    def comm_lost(self) -> bool:
        spec = self._fallback
        if spec is not None and spec.watchdog is not None:
            timer = self.map.point(spec.watchdog)
            timeout = self._stored.get(timer.name, 0.0) * unit_factor_s(timer)
            if timeout > 0 and self.now_s - self.watchdog.last_seen_s > timeout:
                return True
        return super().comm_lost()

    @staticmethod
    def _initial(point: Point, *, is_limit: bool) -> float:
        """What a writable point holds before anyone wrote it: limits wide open, everything else 0.

        A limit that read 0 at start would look like an installer's ceiling of 0 to a careful client.
        """
        low = point.write_min if point.write_min is not None else -math.inf
        high = point.write_max if point.write_max is not None else math.inf
        if (is_limit or "max" in point.name.split("_")) and math.isfinite(high):
            return high
        return min(max(0.0, low), high)

    # -- layout
    def segments(self, function: Function) -> list[tuple[int, int]]:
        """Points of `function`, joined over gaps a client may read across (the map's max_gap_registers)."""
        gap = self.map.transport.max_gap_registers
        segs: list[list[int]] = []
        for p in self._by_function[function]:
            if segs and p.address - segs[-1][1] <= gap:
                segs[-1][1] = max(segs[-1][1], p.end)
            else:
                segs.append([p.address, p.end])
        return [(a, end - a) for a, end in segs]

    # -- values
    def _quantities(self) -> _Quantities:
        r = self.park.record
        if self.company is None:
            pc = self.park.park_counters
            return _Quantities(
                self.park.park_meter_kw,
                float(r.pv_kw.sum()),
                float(r.battery_kw.sum()),
                float(r.load_kw.sum()) + self.park.common_load_kw,
                None,
                pc.import_kwh,
                pc.export_kwh,
                0.0,
            )
        j = self.company.index
        c = self.park.counters[j]
        pv, bat = self.pv, self.battery
        return _Quantities(
            float(r.grid_kw[j]),
            float(r.pv_kw[j]) if pv is None else pv.kw,
            float(r.battery_kw[j]) if bat is None else bat.kw,
            float(r.load_kw[j]),
            float(r.soc_pct[j]) if self.company.battery is not None else None,
            c.import_kwh,
            c.export_kwh,
            c.pv_kwh if pv is None else pv.energy_kwh,
        )

    def _semantic(self, q: _Quantities) -> dict[str, float]:
        if self.role in {"grid_meter", "park_meter"}:
            return {
                "power_kw": q.grid_kw,
                "energy_import_kwh": q.import_kwh,
                "energy_export_kwh": q.export_kwh,
            }
        if self.role == "pv":
            return {"power_kw": q.pv_kw}
        out = {"power_kw": q.battery_kw}
        if q.soc_pct is not None:
            out["soc_pct"] = q.soc_pct
        return out

    def values(self) -> dict[str, float | None]:
        """Every point's value as the device reports it now (None: not implemented)."""
        q = self._quantities()
        semantic = self._semantic(q)
        served = role_point_values(self.map, self.role, semantic)
        primary = semantic["power_kw"]
        out: dict[str, float | None] = {}
        for p in self.map.points:
            if p.name in self._stored:
                out[p.name] = self._stored[p.name]
            elif p.scale_factor is None and p.name in self._exponents:
                out[p.name] = self._exponents[p.name]
            elif p.name in served:
                out[p.name] = served[p.name]
            elif p.name in self._role_points and p.name not in self._served_points:
                out[p.name] = None
            else:
                out[p.name] = _plausible(p.name, q, primary)
        if self._quirk is not None:
            out.update(self._quirk.values(self, out))
        return out

    def render(self, function: Function) -> Iterable[tuple[int, list[int]]]:
        values = self.values()
        for p in self._by_function[function]:
            v = values.get(p.name)
            if v is None and p.name not in self._role_points:
                continue  # nothing known: keep what the register holds (0 at start)
            yield p.address, encode_saturated(p, v, self._exponents)

    def stored(self, name: str) -> float:
        """The value last written to a writable point (its initial value before)."""
        return self._stored.get(name, 0.0)

    # -- writes
    def write(self, address: int, words: list[int]) -> ExcCodes | None:
        holding = self._by_function[Function.HOLDING]
        span = write_span([(p.address, p.count) for p in holding], address, len(words))
        if isinstance(span, ExcCodes):
            return span
        updates: list[tuple[Point, float]] = []
        at = 0
        for i in span:
            p = holding[i]
            chunk = words[at : at + p.count]
            at += p.count
            if p.access is not Access.RW:
                return ExcCodes.ILLEGAL_ADDRESS
            try:
                value = decode(p, chunk, self._exponents)
            except DecodeError:
                return ExcCodes.ILLEGAL_VALUE
            if (
                value is None
                or (p.write_min is not None and value < p.write_min)
                or (p.write_max is not None and value > p.write_max)
            ):
                return ExcCodes.ILLEGAL_VALUE
            updates.append((p, value))
        for p, value in updates:
            self._stored[p.name] = value
            self._apply(p, value)
        return None

    def _revert_s(self, point: Point) -> float | None:
        if point.revert_s is not None:
            return point.revert_s
        if point.revert_point is not None:
            timer = self.map.point(point.revert_point)
            return self._stored.get(timer.name, 0.0) * unit_factor_s(timer) or None
        return None

    def _apply(self, point: Point, value: float) -> None:
        keys = self._keys
        if point.name in keys.get("limit_pct", ()) and self.pv is not None:
            peak = self.pv.peak_kw
            self.pv_limit.write(value / 100.0 * peak, self.now_s, self._revert_s(point))
        elif point.name in keys.get("limit_kw", ()):
            self.pv_limit.write(value, self.now_s, self._revert_s(point))
        elif point.name in keys.get("setpoint_kw", ()):
            self.battery_setpoint.write(value, self.now_s, self._revert_s(point))
        if self._quirk is not None:
            self._quirk.on_write(self, point, value)

    # -- what the park asks
    def _pv_limit_kw(self, now_s: float) -> float | None:
        fallback = self._pv_fallback_kw()
        if self.comm_lost():
            return fallback
        return self.pv_limit.effective(now_s, fallback)

    def _pv_fallback_kw(self) -> float | None:
        if self.pv is None:
            return None
        value = self._fallback_value()
        if value is not None and self._fallback is not None and self._fallback.value is not None:
            point = self.map.point(self._fallback.value)
            unlimited = point.write_max is not None and value >= point.write_max
            if unlimited:
                return None
            return value / 100.0 * self.pv.peak_kw if point.unit == "%" else value
        pct = self.options.pv_fallback_limit_pct
        if pct is None:
            return None
        return pct / 100.0 * self.pv.peak_kw

    def _battery_setpoint_kw(self, now_s: float) -> float | None:
        value = self._fallback_value()
        fallback = self.options.battery_fallback_kw if value is None else value
        if self.comm_lost():
            return fallback
        if self._quirk is not None:
            return self._quirk.battery_setpoint_kw(self, now_s)
        return self.battery_setpoint.effective(now_s, fallback)


class _Quirk(abc.ABC):
    """Behaviour of one device model that its register map cannot express (one instance per device)."""

    @abc.abstractmethod
    def values(self, unit: MapUnit, values: Mapping[str, float | None]) -> dict[str, float | None]: ...

    @abc.abstractmethod
    def on_write(self, unit: MapUnit, point: Point, value: float) -> None: ...

    @abc.abstractmethod
    def battery_setpoint_kw(self, unit: MapUnit, now_s: float) -> float | None: ...


class _VictronEss(_Quirk):
    """ESS mode 2: the Multi drives the battery so that the grid power meets the grid setpoint.

    The three setpoint registers are views of one persistent setting (no
    revert timer, DOMAIN.md); the battery target is `load - pv - grid setpoint`
    of the last step, which the physics then follows at its ramp rate.
    """

    DEFAULT_KW = 0.05  # Victron's default grid setpoint, 50 W
    POINTS: ClassVar[tuple[str, ...]] = (
        "grid_setpoint_kw",
        "grid_setpoint_legacy_kw",
        "grid_setpoint_coarse_kw",
    )

    def __init__(self) -> None:
        self.grid_setpoint_kw = self.DEFAULT_KW

    def values(self, unit: MapUnit, values: Mapping[str, float | None]) -> dict[str, float | None]:
        del unit
        return {name: self.grid_setpoint_kw for name in self.POINTS if name in values}

    def on_write(self, unit: MapUnit, point: Point, value: float) -> None:
        del unit
        if point.name in self.POINTS:
            self.grid_setpoint_kw = value

    def battery_setpoint_kw(self, unit: MapUnit, now_s: float) -> float | None:
        del now_s
        if unit.company is None or unit.battery is None:
            return None
        r = unit.park.record
        j = unit.company.index
        return (float(r.load_kw[j] - r.pv_kw[j]) - self.grid_setpoint_kw) * unit.battery.share


class _HuaweiForcible(_Quirk):
    """Forcible charge/discharge: command 1 charges at the forcible charge power, 2 discharges, 0 stops.

    The period (minutes, armed by each write of the command) ends the forced
    mode on the device: the command reads 0 again and the battery goes to the
    fallback power. Setting mode 1 (by target SoC) runs without a period.
    """

    COMMAND = "forcible_command_code"
    INPUTS: ClassVar[frozenset[str]] = frozenset(
        {COMMAND, "forcible_charge_power_kw", "forcible_discharge_power_kw", "forcible_period_min"}
    )

    def __init__(self) -> None:
        self.forced = Setpoint()

    def values(self, unit: MapUnit, values: Mapping[str, float | None]) -> dict[str, float | None]:
        self.forced.update(unit.now_s)
        if self.COMMAND in values and self.forced.value is None:
            return {self.COMMAND: 0.0}
        return {}

    def _target_kw(self, unit: MapUnit) -> float | None:
        command = unit.stored(self.COMMAND)
        if command == 1:
            return -unit.stored("forcible_charge_power_kw")
        if command == 2:  # Huawei: 1 charge, 2 discharge
            return unit.stored("forcible_discharge_power_kw")
        return None

    def on_write(self, unit: MapUnit, point: Point, value: float) -> None:
        del value
        if point.name not in self.INPUTS:
            return
        target = self._target_kw(unit)
        if target is None:
            self.forced.cancel()
        elif point.name == self.COMMAND:
            by_duration = unit.stored("forcible_setting_mode_code") == 0
            period_s = 60.0 * unit.stored("forcible_period_min") if by_duration else None
            self.forced.write(target, unit.now_s, period_s)
        elif self.forced.value is not None:
            self.forced.value = target  # a new power for the running period

    def battery_setpoint_kw(self, unit: MapUnit, now_s: float) -> float | None:
        return self.forced.effective(now_s, unit.options.battery_fallback_kw)


_QUIRKS: dict[str, Callable[[], _Quirk]] = {"victron-gx-ess": _VictronEss, "huawei-sun2000": _HuaweiForcible}


def load_driver(name: str, drivers_dir: Path = DRIVERS_DIR) -> RegisterMap:
    """The register map drivers/<name>.yaml."""
    return load_map(drivers_dir / f"{name}.yaml")


# --- Endpoint --------------------------------------------------------------------------------------------


def _exception_frame(header: bytes, function_code: int, code: ExcCodes) -> bytes:
    tid, _, _, unit = _MBAP.unpack(header)
    return _MBAP.pack(tid, 0, 3, unit) + bytes([function_code | 0x80, int(code)])


class ModbusEndpoint:
    """One TCP port serving one or more units (a device, or a gateway with several unit ids)."""

    def __init__(
        self,
        name: str,
        units: Sequence[ModbusUnit],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        single_client: bool = False,
        quiet_after_connect_s: float = 0.0,
    ) -> None:
        if not units:
            raise ValueError(f"endpoint {name}: no units")
        self.name = name
        self.units: dict[int, ModbusUnit] = {}
        for u in units:
            if u.unit_id in self.units:
                raise ValueError(f"endpoint {name}: unit id {u.unit_id} used twice")
            self.units[u.unit_id] = u
            u.endpoint = self
        self.host = host
        self._port = port
        self.single_client = single_client
        self.quiet_after_connect_s = quiet_after_connect_s
        self.faults = FaultSet()
        self._front: asyncio.Server | None = None
        self._backend: ModbusTcpServer | None = None
        self._backend_port = 0
        self._connections = ConnectionSet(self._session)

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        backend = ModbusTcpServer([u.sim_device() for u in self.units.values()], address=("127.0.0.1", 0))
        await backend.serve_forever(background=True)
        self._backend = backend
        listener = backend.transport
        if not isinstance(listener, asyncio.Server):
            await self.stop()
            raise TypeError("pymodbus did not listen on a TCP socket")
        self._backend_port = int(listener.sockets[0].getsockname()[1])
        await self._listen()

    async def _listen(self) -> None:
        self._front = await asyncio.start_server(self._connections.serve, self.host, self._port)
        self._port = int(self._front.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        if self._front is not None:
            self._front.close()
            await self._front.wait_closed()
            self._front = None

    async def stop(self) -> None:
        await self._unlisten()
        await self._connections.drop_all()
        if self._backend is not None:
            await self._backend.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            self._backend = None

    async def inject(self, fault: Fault) -> None:
        self.faults.add(fault)
        if fault is Fault.REFUSE:
            await self._unlisten()
        await self._connections.drop_all()

    async def clear(self, fault: Fault | None) -> None:
        refused = Fault.REFUSE in self.faults
        self.faults.discard(fault)
        if refused and Fault.REFUSE not in self.faults and self._backend is not None:
            await self._listen()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if self.single_client:
            await self._connections.drop_others()
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + self.quiet_after_connect_s
        try:
            while Fault.REFUSE not in self.faults:
                header = await reader.readexactly(_MBAP.size)
                _, protocol, length, unit_id = _MBAP.unpack(header)
                if protocol != 0 or not 2 <= length <= 254:
                    return  # not Modbus/TCP: hang up
                pdu = await reader.readexactly(length - 1)
                if Fault.DROP in self.faults:
                    return
                if loop.time() < quiet_until:
                    continue  # too soon after the connect: swallowed, as Huawei's dongle does
                answer = await self._answer(header, pdu, unit_id, backend)
                if answer is None:
                    continue
                frame, backend = answer
                writer.write(frame)
                await writer.drain()
        finally:
            if backend is not None:
                backend[1].close()

    async def _answer(
        self,
        header: bytes,
        pdu: bytes,
        unit_id: int,
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] | None:
        """The answer frame to one request, or None for no answer at all."""
        unit = self.units.get(unit_id)
        if unit is None:
            return _exception_frame(header, pdu[0], ExcCodes.GATEWAY_NO_RESPONSE), backend
        if pdu[0] not in READ_FUNCTIONS and pdu[0] not in WRITE_FUNCTIONS:
            return _exception_frame(header, pdu[0], ExcCodes.ILLEGAL_FUNCTION), backend
        if Fault.SILENT in unit.faults:
            return None
        if Fault.SLOW in unit.faults:
            await asyncio.sleep(unit.faults.delay_s)
        if backend is None:
            backend = await asyncio.open_connection("127.0.0.1", self._backend_port)
        backend[1].write(header + pdu)
        await backend[1].drain()
        reply_header = await backend[0].readexactly(_MBAP.size)
        length = _MBAP.unpack(reply_header)[2]
        body = await backend[0].readexactly(length - 1)
        return reply_header + body, backend
