"""A whole simulated park: devices for every company on loopback ports, and a site config pointing at them.

`plan_devices` decides which device model plays which role for which company
(pure: scenario in, plans out). `SimulatedPark` builds and runs them: the live
park and its clock, one `ModbusEndpoint` per device plus one gateway port with
several unit ids, optionally an MQTT meter, and the fault control channel.
`site_config_data` is the hubctl site config for the running park.

Driver assignment (decisions):
- Each company gets a grid meter; a company with PV a PV inverter; one with a
  battery a battery system. Models rotate through candidates per
  role (the k-th PV inverter starts at the k-th candidate), so that a park of a
  few companies exercises every map:
  grid meters eastron-sdm630, janitza-umg96rm, carlo-gavazzi-em24, SunSpec 203;
  PV SunSpec inverter (123), huawei-sun2000, SunSpec inverter with 704 (no
  123: its reversion limit takes hubctl's fallback PV limit; last, so that
  the first two PV companies keep 123 and Huawei); batteries SunSpec storage
  124, SunSpec storage 802 + 704, victron-gx-ess. Not huawei-sun2000 or
  victron-vebus-ess3 as a battery (yet): both take battery setpoints (a forcible
  charge/discharge, `hubctl/devices/huawei.py`; the ESS Mode 3 AC-input setpoint)
  and are tested on their own (tests/test_vendor_battery_setpoints.py); adding
  them here would change the parks the end-to-end runs were measured on.
  (victron-gx-ess has no battery setpoint: ESS regulates a grid setpoint. It
  stays a candidate for now and only fits batteries up to 32.7 kW.)
- A candidate is skipped when its registers cannot hold the company's range
  (a Victron GX reports battery power as int16 W: 32.7 kW at most), so the
  simulator never hands out a device that would saturate in normal operation.
- The RS485 meters (every map-based grid meter) sit behind one gateway port,
  unit ids 1, 2, ... in company order, as behind a real RS485-to-TCP gateway;
  every other device has a port of its own and its map's default unit id
  (SunSpec devices: 1).
- With `mqtt_url`, the last company's grid meter is an MQTT meter instead.
- A park meter (SunSpec 203 on the park's connection) only when asked for:
  under a group transport agreement there is no physical park meter.
- Device ids are `<company>-grid`, `-pv`, `-battery` and `park-meter`,
  stable across runs of the same scenario.
- `pv_units` / `battery_units` > 1 split each company's PV (battery) over
  that many identical devices, `-pv1`, `-pv2`, ..., each for an equal share
  of the plant (`live_park.Park.pv_unit`), as on a roof with several
  inverters; each unit picks its model in turn like any other device, and is
  sized for its share. This is how `bench/gateway.py` reaches 200 devices on
  50 companies.
- A device with a port of its own keeps its map's transport habits (a Huawei
  dongle serves one client and swallows requests in the first second after a
  connect); the gateway has none, as an RS485 gateway would.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from hubctl.config.site import parse_config
from simulators.faults import ControlServer, FaultControl
from simulators.live_park import Park, ParkClock
from simulators.modbus_sim import (
    DeviceOptions,
    MapUnit,
    ModbusEndpoint,
    ModbusUnit,
    load_driver,
    representable,
)
from simulators.mqtt_sim import MqttMeter
from simulators.physics import Profiles
from simulators.specs import company_specs
from simulators.sunspec_sim import SunSpecInverter, SunSpecInverter704, SunSpecKind, SunSpecMeter
from simulators.sunspec_storage import SunSpecStorage124, SunSpecStorage802

if TYPE_CHECKING:
    from hubctl.codec.regmap import RegisterMap
    from hubctl.config.scenario import Scenario

log = logging.getLogger(__name__)

GRID_CANDIDATES = ("eastron-sdm630", "janitza-umg96rm", "carlo-gavazzi-em24", "sunspec:meter")
PV_CANDIDATES = ("sunspec:inverter", "huawei-sun2000", "sunspec:inverter-704")
BATTERY_CANDIDATES = ("sunspec:storage-124", "sunspec:storage-802", "victron-gx-ess")
_MARGIN = 1.2  # headroom over the largest power the scenario can produce


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One simulated device: what it is, whose, and where it sits."""

    device_id: str
    role: str  # grid_meter | park_meter | pv | battery (hubctl.config.devices.DeviceRole)
    company: str | None
    driver: str  # a map in drivers/, "sunspec" or "mqtt"
    sunspec_kind: SunSpecKind | None
    gateway: bool
    unit_id: int
    range_kw: float  # largest |power| the device must report
    share: float = 1.0  # of the company's PV or battery, when several devices split it


def _device_id(company: str, suffix: str) -> str:
    return f"{company[: 63 - len(suffix)]}-{suffix}"


def _ranges(scenario: Scenario, profiles: Profiles) -> dict[str, dict[str, float]]:
    """Largest |power| per company and role: for picking drivers and sizing SunSpec scale factors."""
    out: dict[str, dict[str, float]] = {}
    for j, c in enumerate(scenario.config.companies):
        load = profiles.load_kw[:, j]
        pv = c.pv.peak_kw if c.pv else 0.0
        charge = c.battery.max_charge_kw if c.battery else 0.0
        discharge = c.battery.max_discharge_kw if c.battery else 0.0
        grid = max(float(load.max()) + charge, pv + discharge - float(load.min()), 1.0)
        out[c.id] = {"grid_meter": grid * _MARGIN, "pv": pv, "battery": max(charge, discharge)}
    return out


def _map_fits(register_map: RegisterMap, role: str, range_kw: float) -> bool:
    keys = register_map.roles.keys(role)
    if keys is None:
        return False
    names = keys["power_kw"]
    per_point = range_kw / len(names)
    points = [register_map.point(n) for n in names]
    if role == "pv":
        return all(representable(p, per_point) for p in points)
    return all(representable(p, per_point) and representable(p, -per_point) for p in points)


def plan_devices(
    scenario: Scenario,
    profiles: Profiles,
    *,
    mqtt: bool = False,
    park_meter: bool = False,
    maps: dict[str, RegisterMap] | None = None,
    pv_units: int = 1,
    battery_units: int = 1,
) -> list[DevicePlan]:
    """Which device plays which role where (see the module docstring)."""
    if pv_units < 1 or battery_units < 1:
        raise ValueError("pv_units and battery_units must be at least 1")
    maps = {} if maps is None else maps
    units = {"grid_meter": 1, "pv": pv_units, "battery": battery_units}
    ranges = _ranges(scenario, profiles)
    plans: list[DevicePlan] = []
    gateway_units = 0
    turn = dict.fromkeys(
        ("grid_meter", "pv", "battery"), 0
    )  # the k-th device of a role starts at candidate k
    companies = scenario.config.companies
    for j, c in enumerate(companies):
        wanted: list[tuple[str, tuple[str, ...], str]] = [("grid_meter", GRID_CANDIDATES, "grid")]
        if c.pv:
            wanted.append(("pv", PV_CANDIDATES, "pv"))
        if c.battery:
            wanted.append(("battery", BATTERY_CANDIDATES, "battery"))
        every = [(r, cands, base, k) for r, cands, base in wanted for k in range(units[r])]
        for role, candidates, base_suffix, k_unit in every:
            n_units = units[role]
            share = 1.0 / n_units
            suffix = base_suffix if n_units == 1 else f"{base_suffix}{k_unit + 1}"
            device_id = _device_id(c.id, suffix)
            range_kw = ranges[c.id][role] * share
            if role == "grid_meter" and mqtt and j == len(companies) - 1:
                plans.append(
                    DevicePlan(
                        device_id, role, c.id, "mqtt", None, gateway=False, unit_id=0, range_kw=range_kw
                    )
                )
                continue
            first = turn[role]
            turn[role] += 1
            for k in range(len(candidates)):
                name = candidates[(first + k) % len(candidates)]
                if name.startswith("sunspec:"):
                    kind = SunSpecKind(name.removeprefix("sunspec:"))
                    plans.append(
                        DevicePlan(
                            device_id,
                            role,
                            c.id,
                            "sunspec",
                            kind,
                            gateway=False,
                            unit_id=1,
                            range_kw=range_kw,
                            share=share,
                        )
                    )
                    break
                register_map = maps.get(name) or load_driver(name)
                maps[name] = register_map
                if not _map_fits(register_map, role, range_kw):
                    continue
                on_gateway = role == "grid_meter"
                gateway_units += on_gateway
                unit_id = gateway_units if on_gateway else register_map.default_unit_id
                plans.append(
                    DevicePlan(device_id, role, c.id, name, None, on_gateway, unit_id, range_kw, share)
                )
                break
            else:
                raise ValueError(f"{c.id}: no {role} model fits {range_kw:.0f} kW")
    if park_meter:
        total = sum(r["grid_meter"] for r in ranges.values())
        plans.append(
            DevicePlan(
                "park-meter",
                "park_meter",
                None,
                "sunspec",
                SunSpecKind.METER,
                gateway=False,
                unit_id=1,
                range_kw=total,
            )
        )
    return plans


def _mqtt_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
        raise ValueError(f"--mqtt-url {url!r}: expected mqtt://HOST[:PORT]")
    return parts.hostname, parts.port or 1883


class SimulatedPark:
    """The running park: build with a scenario, then `async with` (or start/stop) it."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        speed: float = 1.0,
        start_s: float = 0.0,
        host: str = "127.0.0.1",
        mqtt_url: str | None = None,
        park_meter: bool = False,
        control_port: int = 0,
        options: DeviceOptions | None = None,
        pv_units: int = 1,
        battery_units: int = 1,
    ) -> None:
        self.scenario = scenario
        specs = company_specs(scenario)
        profiles = Profiles.from_csv(scenario.profiles_path, [c.id for c in specs])
        self.park = Park(specs, profiles, scenario.step_s, start_s=start_s)
        self.clock = ParkClock(self.park, speed)
        self.host = host
        self.options = options or DeviceOptions()
        self.maps: dict[str, RegisterMap] = {}
        self.plans = plan_devices(
            scenario,
            profiles,
            mqtt=mqtt_url is not None,
            park_meter=park_meter,
            maps=self.maps,
            pv_units=pv_units,
            battery_units=battery_units,
        )
        self.control = FaultControl()
        self.control_server = ControlServer(self.control, host, control_port)
        self.units: dict[str, ModbusUnit] = {}
        self.endpoints: dict[str, ModbusEndpoint] = {}
        self.mqtt: MqttMeter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._mqtt_task: asyncio.Task[None] | None = None
        gateway: list[ModbusUnit] = []
        for plan in self.plans:
            if plan.driver == "mqtt":
                if mqtt_url is None:
                    raise AssertionError("an mqtt plan without --mqtt-url")
                mqtt_host, mqtt_port = _mqtt_address(mqtt_url)
                self.mqtt = MqttMeter(
                    plan.device_id,
                    self.park,
                    plan.company,
                    mqtt_host,
                    mqtt_port,
                    publish_s=1.0,
                    start_utc=scenario.start_utc,
                    tz=scenario.config.tz,
                )
                self.control.register(self.mqtt)
                continue
            unit = self._unit(plan)
            self.units[plan.device_id] = unit
            self.control.register(unit)
            if plan.gateway:
                gateway.append(unit)
            elif plan.driver in self.maps:
                transport = self.maps[plan.driver].transport
                self.endpoints[plan.device_id] = ModbusEndpoint(
                    plan.device_id,
                    [unit],
                    host,
                    single_client=transport.single_client,
                    quiet_after_connect_s=transport.delay_after_connect_s,
                )
            else:
                self.endpoints[plan.device_id] = ModbusEndpoint(plan.device_id, [unit], host)
        if gateway:
            self.endpoints["gateway"] = ModbusEndpoint("gateway", gateway, host)
        self.control.set_status_extra(self.status)

    def _unit(self, plan: DevicePlan) -> ModbusUnit:
        owned = {
            SunSpecKind.INVERTER: SunSpecInverter,
            SunSpecKind.INVERTER_704: SunSpecInverter704,
            SunSpecKind.STORAGE_124: SunSpecStorage124,
            SunSpecKind.STORAGE_802: SunSpecStorage802,
        }
        if plan.sunspec_kind in owned and plan.company is not None:
            cls = owned[plan.sunspec_kind]
            return cls(plan.device_id, plan.unit_id, self.park, plan.company, self.options, plan.share)
        if plan.sunspec_kind is SunSpecKind.METER:
            return SunSpecMeter(
                plan.device_id, plan.unit_id, self.park, plan.company, plan.range_kw, self.options
            )
        return MapUnit(
            plan.device_id,
            plan.unit_id,
            self.park,
            self.maps[plan.driver],
            plan.role,
            plan.company,
            driver=plan.driver,
            options=self.options,
            share=plan.share,
        )

    # -- running
    async def start(self) -> None:
        try:
            for endpoint in self.endpoints.values():
                await endpoint.start()
            await self.control_server.start()
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(self.clock.run(), name="park-clock"))
        if self.mqtt is not None:
            self._mqtt_task = asyncio.create_task(self.mqtt.run(), name=f"mqtt-{self.mqtt.device_id}")
            self._tasks.append(self._mqtt_task)

    async def stop(self) -> None:
        """Stop everything started; the MQTT meter first says "Offline"."""
        if self.mqtt is not None:
            self.mqtt.stop()
        for task in self._tasks:
            if task is not self._mqtt_task:
                task.cancel()
        if self._tasks:
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            except TimeoutError:
                log.warning("simulator tasks did not stop within 5 s; cancelling")
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.control_server.stop()
        for endpoint in self.endpoints.values():
            await endpoint.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what it tells
    def address(self, device_id: str) -> tuple[str, int, int]:
        """(host, port, unit id) where a Modbus device answers."""
        unit = self.units[device_id]
        if unit.endpoint is None:
            raise KeyError(device_id)
        return unit.endpoint.host, unit.endpoint.port, unit.unit_id

    def status(self) -> dict[str, Any]:
        control_host, control_port = self.control_server.address
        return {
            "t_s": self.park.t_s,
            "speed": self.clock.speed,
            # energy up to t_s per company: PV given and PV the sun offered (the truth of curtailment)
            "energy_kwh": {
                c.id: {"pv": k.pv_kwh, "pv_available": k.pv_available_kwh}
                for c, k in zip(self.park.companies, self.park.counters, strict=True)
            },
            "control": {"host": control_host, "port": control_port},
            "endpoints": {
                name: {
                    "host": e.host,
                    "port": e.port,
                    "units": {u.unit_id: u.device_id for u in e.units.values()},
                }
                for name, e in self.endpoints.items()
            },
            "mqtt": None
            if self.mqtt is None
            else {
                "device": self.mqtt.device_id,
                "broker": f"{self.mqtt.host}:{self.mqtt.port}",
                "topic": self.mqtt.topic,
            },
        }

    def describe(self) -> list[str]:
        """Human-readable lines: where everything listens."""
        host, port = self.control_server.address
        lines = [
            (
                f"scenario {self.scenario.name}: {len(self.park.companies)} companies, "
                f"t = {self.park.t_s:g} s, speed {self.clock.speed:g}x"
            ),
            f'control  {host}:{port}  (JSON lines, e.g. {{"op": "status"}})',
        ]
        for plan in self.plans:
            where: str
            if plan.driver == "mqtt" and self.mqtt is not None:
                where = f"mqtt://{self.mqtt.host}:{self.mqtt.port}  topic {self.mqtt.topic}"
            else:
                h, p, unit_id = self.address(plan.device_id)
                where = f"{h}:{p} unit {unit_id}" + ("  (gateway)" if plan.gateway else "")
            model = plan.driver if plan.sunspec_kind is None else f"sunspec {plan.sunspec_kind.value}"
            lines.append(f"device   {plan.device_id:<28} {plan.role:<10} {model:<22} {where}")
        return lines

    def devices_config(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for plan in self.plans:
            entry: dict[str, Any] = {"id": plan.device_id, "role": plan.role, "driver": plan.driver}
            if plan.company is not None:
                entry["company"] = plan.company
            if plan.driver == "mqtt" and self.mqtt is not None:
                entry["mqtt"] = self.mqtt.device_config()
            else:
                h, p, unit_id = self.address(plan.device_id)
                entry["modbus"] = {"host": h, "port": p, "unit_id": unit_id}
            out.append(entry)
        return out

    def site_config_data(self) -> dict[str, Any]:
        """The scenario's site config with the simulated devices; validated before it is returned."""
        data: dict[str, Any] = self.scenario.config.model_dump(mode="json", exclude_defaults=True)
        data["devices"] = self.devices_config()
        parse_config(data, "<hubctl simulate config>")  # raises ConfigError listing every problem
        return data
